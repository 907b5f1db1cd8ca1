"""The SageMaker backend: each training job is one SageMaker training job, run by boto3.

A staged job's container runs ``remote.staged_command``: the staging wrapper gives the command
a local output directory and uploads ``job.log``, the Pipes ``messages.jsonl`` and, on a
non-zero exit, ``failure.json`` to the spec's ``output_uri``, which must be ``s3://`` (the asset
layer builds it from the backend's ``storage_root`` with ``remote.output_location``; this backend
uses it as given). An unstaged job (``staged=False``) runs ``spec.command`` as it is, with
``ML_ASSETS_OUTPUT_URI`` = ``output_uri`` in its environment, and writes there itself. SageMaker
itself is asked only for the job's state.

Request (``build_training_job_request``, a pure function):

* ``TrainingJobName`` is ``spec.job_name``, derived from the idempotency key, so submitting a
  key twice, from any process, meets SageMaker's "name already exists" (``ResourceInUse``)
  and returns the existing job instead of starting another.
* ``AlgorithmSpecification.TrainingImage`` is ``spec.image``, else the ``image_uri`` setting.
  SageMaker has no working-directory field: ``spec.working_dir`` is ignored and the image's
  WORKDIR applies.
* ``ContainerEntrypoint`` is the staged command, or ``spec.command`` for an unstaged job.
  SageMaker caps it at 100 items of 256 characters; a longer command (``python -c`` programs, a
  trainer's JSON arguments) is sent as JSON in 512-character ``ML_ASSETS_ENTRYPOINT_<i>``
  environment variables that a short ``python -c`` bootstrap joins and ``exec``s, so the
  container runs the same argv (this needs a ``python`` in the image).
* ``Environment`` is ``spec.env`` (never credentials: the job uses the role ``role_arn``), plus
  ``ML_ASSETS_OUTPUT_URI`` for an unstaged job.
* ``Tags``: ``spec.labels`` plus ``ml-assets-team``, ``ml-assets-model``,
  ``ml-assets-key-sha256`` and ``ml-assets-idempotency-key`` (the key only when it fits a tag
  value: at most 256 letters, digits, spaces and ``_.:/=+-@``).
* ``ResourceConfig.InstanceType`` from ``INSTANCE_SHAPES``: the first shape, in this order,
  with exactly ``gpu_count`` GPUs of ``gpu_type`` (or none) and at least ``cpu`` vCPUs and
  ``memory_gb`` GiB. ``node_selector`` and ``tolerations`` do not apply to SageMaker.

=====================  ============  ============================================================
``gpu_type``           GPUs          instance types, smallest first (vCPUs / GiB)
=====================  ============  ============================================================
(no GPU)               0             ml.m5.large (2/8), ml.m5.xlarge (4/16), ml.m5.2xlarge
                                     (8/32), ml.m5.4xlarge (16/64), ml.m5.12xlarge (48/192),
                                     ml.m5.24xlarge (96/384)
``nvidia-tesla-t4``    1             ml.g4dn.xlarge (4/16), ml.g4dn.2xlarge (8/32),
                                     ml.g4dn.4xlarge (16/64), ml.g4dn.8xlarge (32/128),
                                     ml.g4dn.16xlarge (64/256)
                       4             ml.g4dn.12xlarge (48/192)
``nvidia-a10g``        1             ml.g5.xlarge (4/16), ml.g5.2xlarge (8/32), ml.g5.4xlarge
                                     (16/64), ml.g5.8xlarge (32/128), ml.g5.16xlarge (64/256)
                       4             ml.g5.12xlarge (48/192), ml.g5.24xlarge (96/384)
                       8             ml.g5.48xlarge (192/768)
``nvidia-l4``          1             ml.g6.xlarge (4/16), ml.g6.2xlarge (8/32), ml.g6.4xlarge
                                     (16/64), ml.g6.8xlarge (32/128), ml.g6.16xlarge (64/256)
                       4             ml.g6.12xlarge (48/192), ml.g6.24xlarge (96/384)
                       8             ml.g6.48xlarge (192/768)
``nvidia-l40s``        1             ml.g6e.xlarge (4/32), ml.g6e.2xlarge (8/64),
                                     ml.g6e.4xlarge (16/128), ml.g6e.8xlarge (32/256),
                                     ml.g6e.16xlarge (64/512)
                       4             ml.g6e.12xlarge (48/384), ml.g6e.24xlarge (96/768)
                       8             ml.g6e.48xlarge (192/1536)
``nvidia-tesla-v100``  1             ml.p3.2xlarge (8/61)
                       4             ml.p3.8xlarge (32/244)
                       8             ml.p3.16xlarge (64/488), ml.p3dn.24xlarge (96/768)
``nvidia-tesla-a100``  8             ml.p4d.24xlarge (96/1152)
``nvidia-a100-80gb``   8             ml.p4de.24xlarge (96/1152)
``nvidia-h100-80gb``   1             ml.p5.4xlarge (16/256)
                       8             ml.p5.48xlarge (192/2048)
=====================  ============  ============================================================

Polling is batched: one paginated ``ListTrainingJobs`` per team-model name stem (filtered by
``NameContains`` and ``CreationTimeAfter`` the earliest handle's creation time, stopping once
every handle is found), then ``DescribeTrainingJob`` only for a job that newly ``Failed`` (its
``FailureReason``) or that the list did not show. Finished statuses are kept in memory, so a
finished job costs no further call. States: ``InProgress`` is queued while the secondary
status is before the container runs (Pending, Starting, LaunchingMLInstances,
PreparingTrainingStack, Downloading, DownloadingTrainingImage) and running after;
``Stopping`` is running; ``Completed`` succeeded (``result_uri`` = its ``output_uri``, whose
Pipes messages say what it produced); ``Failed`` failed (``FailureReason`` + the staged
``failure.json``); ``Stopped`` cancelled, or failed when SageMaker stopped it for exceeding its
maximum runtime or wait time.

``cancel`` is ``StopTrainingJob``; stopping a job that has ended is a no-op. ``logs`` reads
the staged ``job.log``. boto3 is imported only when a backend is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.resource import BackendResource

NAME = "sagemaker"


@dataclass(frozen=True)
class InstanceShape:
    """One SageMaker training instance type: its GPUs (type and count), vCPUs and memory."""

    instance_type: str
    vcpus: int
    memory_gib: int
    gpu_type: str | None = None
    gpus: int = 0


def _family(
    prefix: str, gpu_type: str | None, rows: list[tuple[str, int, int, int]]
) -> list[InstanceShape]:
    return [
        InstanceShape(f"ml.{prefix}.{size}", vcpus, memory, gpu_type, gpus)
        for size, gpus, vcpus, memory in rows
    ]


# (size, GPUs, vCPUs, GiB), smallest first within each GPU count: the order of choice.
_G_SIZES = [
    ("xlarge", 1, 4, 16),
    ("2xlarge", 1, 8, 32),
    ("4xlarge", 1, 16, 64),
    ("8xlarge", 1, 32, 128),
    ("16xlarge", 1, 64, 256),
    ("12xlarge", 4, 48, 192),
    ("24xlarge", 4, 96, 384),
    ("48xlarge", 8, 192, 768),
]

INSTANCE_SHAPES: tuple[InstanceShape, ...] = (
    *_family(
        "m5",
        None,
        [
            ("large", 0, 2, 8),
            ("xlarge", 0, 4, 16),
            ("2xlarge", 0, 8, 32),
            ("4xlarge", 0, 16, 64),
            ("12xlarge", 0, 48, 192),
            ("24xlarge", 0, 96, 384),
        ],
    ),
    *_family("g4dn", "nvidia-tesla-t4", _G_SIZES[:6]),
    *_family("g5", "nvidia-a10g", _G_SIZES),
    *_family("g6", "nvidia-l4", _G_SIZES),
    *_family("g6e", "nvidia-l40s", [(s, g, c, m * 2) for s, g, c, m in _G_SIZES]),
    *_family(
        "p3",
        "nvidia-tesla-v100",
        [("2xlarge", 1, 8, 61), ("8xlarge", 4, 32, 244), ("16xlarge", 8, 64, 488)],
    ),
    *_family("p3dn", "nvidia-tesla-v100", [("24xlarge", 8, 96, 768)]),
    *_family("p4d", "nvidia-tesla-a100", [("24xlarge", 8, 96, 1152)]),
    *_family("p4de", "nvidia-a100-80gb", [("24xlarge", 8, 96, 1152)]),
    *_family("p5", "nvidia-h100-80gb", [("4xlarge", 1, 16, 256), ("48xlarge", 8, 192, 2048)]),
)

GPU_TYPES: tuple[str, ...] = tuple(
    dict.fromkeys(shape.gpu_type for shape in INSTANCE_SHAPES if shape.gpu_type)
)


def instance_type_for(resources: Resources) -> str:
    """The smallest SageMaker instance type that meets ``resources`` (see ``INSTANCE_SHAPES``).

    Raises ``ValueError`` for an unknown GPU type, a GPU count SageMaker does not offer for
    that type, or a request larger than every matching instance.
    """
    gpu_type, gpus = resources.gpu_type, resources.gpu_count
    known = ", ".join(GPU_TYPES)
    if gpus and not gpu_type:
        raise ValueError(f"gpu_count={gpus} needs a gpu_type on SageMaker; one of: {known}")
    if gpu_type and gpu_type not in GPU_TYPES:
        raise ValueError(f"unknown gpu_type {gpu_type!r} for SageMaker; known types: {known}")
    if gpu_type and not gpus:
        raise ValueError(f"gpu_type {gpu_type!r} is set but gpu_count is 0; set gpu_count")
    of_type = [s for s in INSTANCE_SHAPES if s.gpu_type == (gpu_type if gpus else None)]
    counted = [s for s in of_type if s.gpus == gpus]
    if not counted:
        counts = ", ".join(str(n) for n in sorted({s.gpus for s in of_type}))
        raise ValueError(
            f"SageMaker offers {gpu_type} in counts of {counts} GPUs per instance, "
            f"not gpu_count={gpus}"
        )
    for shape in counted:
        if shape.vcpus >= resources.cpu and shape.memory_gib >= resources.memory_gb:
            return shape.instance_type
    largest = counted[-1]
    raise ValueError(
        f"no SageMaker instance with {gpus} x {gpu_type or 'no GPU'} has {resources.cpu:g} "
        f"vCPUs and {resources.memory_gb:g} GiB; the largest is {largest.instance_type} "
        f"({largest.vcpus} vCPUs, {largest.memory_gib} GiB)"
    )


# --- the request --------------------------------------------------------------------------------

_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*")
_MAX_ENTRYPOINT_ITEMS, _MAX_ENTRYPOINT_CHARS = 100, 256
_MAX_ENV_ITEMS, _MAX_ENV_VALUE_CHARS = 100, 512
_MAX_TAGS, _MAX_TAG_KEY_CHARS, _MAX_TAG_VALUE_CHARS = 50, 128, 256
ENTRYPOINT_ENV_PREFIX = "ML_ASSETS_ENTRYPOINT_"
# Joins the command's JSON from the numbered variables and execs it: a leading ``python`` or
# ``python3`` as the container's own Python, anything else from the PATH. Under 256 characters.
_BOOTSTRAP = (
    "import json,os,sys\n"
    f"p=sorted((int(k[{len(ENTRYPOINT_ENV_PREFIX)}:]),v) for k,v in os.environ.items() "
    f"if k.startswith({ENTRYPOINT_ENV_PREFIX!r}))\n"
    "a=json.loads(''.join(v for _,v in p))\n"
    "if a[0] in('python','python3'):a[0]=sys.executable\n"
    "os.execvp(a[0],a)"
)


@dataclass(frozen=True)
class TrainingJobSettings:
    """The per-backend parts of every CreateTrainingJob request."""

    role_arn: str
    image_uri: str  # the default image, for jobs that name none
    volume_size_gb: int = 50
    max_runtime_seconds: int = 86_400
    sync_seconds: float = 10.0


def training_job_name(spec: JobSpec) -> str:
    """``spec.job_name``, checked against SageMaker's name rule (``[a-zA-Z0-9-]``, 1-63)."""
    name = spec.job_name
    if not _JOB_NAME.fullmatch(name):
        raise ValueError(
            f"job name {name!r} (team {spec.team!r}, model {spec.model!r}) is not a valid "
            "SageMaker training job name: letters, digits and '-', starting and ending with a "
            "letter or digit, at most 63 characters"
        )
    return name


def container_command(spec: JobSpec, sync_seconds: float) -> tuple[list[str], dict[str, str]]:
    """The ``ContainerEntrypoint`` and the extra environment it needs (see module docstring)."""
    command = remote.container_command(spec, sync_seconds)
    if len(command) <= _MAX_ENTRYPOINT_ITEMS and all(
        len(item) <= _MAX_ENTRYPOINT_CHARS for item in command
    ):
        return command, {}
    encoded = json.dumps(command)
    step = _MAX_ENV_VALUE_CHARS
    parts = [encoded[start : start + step] for start in range(0, len(encoded), step)]
    return ["python", "-c", _BOOTSTRAP], {
        f"{ENTRYPOINT_ENV_PREFIX}{index}": part for index, part in enumerate(parts)
    }


def _tag_fits(text: str, limit: int) -> bool:
    return len(text) <= limit and _TAG_TEXT.fullmatch(text) is not None


def training_job_tags(spec: JobSpec) -> list[dict[str, str]]:
    """The job's tags: its labels, team, model, the key's SHA-256 and the key if it fits."""
    tags = {
        **spec.labels,
        "ml-assets-team": spec.team,
        "ml-assets-model": spec.model,
        "ml-assets-key-sha256": hashlib.sha256(spec.idempotency_key.encode()).hexdigest(),
    }
    if _tag_fits(spec.idempotency_key, _MAX_TAG_VALUE_CHARS):
        tags["ml-assets-idempotency-key"] = spec.idempotency_key
    for key, value in tags.items():
        if not key or key.lower().startswith("aws:") or not _tag_fits(key, _MAX_TAG_KEY_CHARS):
            raise ValueError(f"{key!r} is not a valid SageMaker tag key (from the job's labels)")
        if not _tag_fits(value, _MAX_TAG_VALUE_CHARS):
            raise ValueError(
                f"tag {key}={value!r} is not a valid SageMaker tag value: at most 256 letters, "
                "digits, spaces and _.:/=+-@"
            )
    if len(tags) > _MAX_TAGS:
        raise ValueError(f"{len(tags)} tags is more than SageMaker's {_MAX_TAGS}; drop labels")
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def build_training_job_request(spec: JobSpec, settings: TrainingJobSettings) -> dict[str, Any]:
    """The ``CreateTrainingJob`` arguments for ``spec``; no network, no SDK."""
    if transport.scheme_of(spec.output_uri) != "s3":
        raise ValueError(
            f"the SageMaker backend needs an s3:// output_uri, got {spec.output_uri!r}; build it "
            "from the backend's storage_root with remote.output_location"
        )
    clashing = sorted(key for key in spec.env if key.startswith(ENTRYPOINT_ENV_PREFIX))
    if clashing:
        raise ValueError(
            f"env names starting with {ENTRYPOINT_ENV_PREFIX} are reserved: {clashing}"
        )
    entrypoint, command_env = container_command(spec, settings.sync_seconds)
    environment = {**remote.container_env(spec), **command_env}
    if len(environment) > _MAX_ENV_ITEMS:
        raise ValueError(
            f"the job needs {len(environment)} environment variables ({len(command_env)} of them "
            f"for its {sum(map(len, spec.command))}-character command); SageMaker allows "
            f"{_MAX_ENV_ITEMS}"
        )
    return {
        "TrainingJobName": training_job_name(spec),
        "AlgorithmSpecification": {
            "TrainingImage": spec.image or settings.image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": entrypoint,
        },
        "RoleArn": settings.role_arn,
        "OutputDataConfig": {"S3OutputPath": spec.output_uri},
        "ResourceConfig": {
            "InstanceType": instance_type_for(spec.resources),
            "InstanceCount": 1,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        "Environment": environment,
        "Tags": training_job_tags(spec),
    }


# --- states -------------------------------------------------------------------------------------

_BEFORE_CONTAINER = frozenset(
    {
        "Pending",
        "Starting",
        "LaunchingMLInstances",
        "PreparingTrainingStack",
        "Downloading",
        "DownloadingTrainingImage",
    }
)
# Why SageMaker stopped a job on its own; such a stop is a failure, not a cancellation.
_STOPPED_BY_LIMIT = {
    "MaxRuntimeExceeded": "SageMaker stopped the job: it ran longer than MaxRuntimeInSeconds",
    "MaxWaitTimeExceeded": "SageMaker stopped the job: it waited longer than MaxWaitTimeInSeconds",
}


def training_job_state(status: str, secondary: str = "") -> JobState:
    """Our state for SageMaker's ``TrainingJobStatus`` and ``SecondaryStatus``."""
    if status == "InProgress":
        return JobState.QUEUED if secondary in _BEFORE_CONTAINER else JobState.RUNNING
    if status == "Stopping":
        return JobState.RUNNING
    if status == "Completed":
        return JobState.SUCCEEDED
    if status == "Stopped":
        return JobState.FAILED if secondary in _STOPPED_BY_LIMIT else JobState.CANCELLED
    # Failed, and Deleting (a job being deleted will never report a result).
    return JobState.FAILED


def _stem(job_name: str) -> str:
    """The team-model part of a job name (``job_name_for`` appends ``-<key digest>``)."""
    return job_name.rsplit("-", 1)[0]


class SageMakerBackend:
    """Runs each training job as a SageMaker training job; see the module docstring.

    Args:
        client: a boto3 ``sagemaker`` client (its retry configuration absorbs throttling,
            5xx and dropped connections).
        settings: what every request carries (role, image, volume, runtime limit, sync).
        page_size: ``MaxResults`` of each ``ListTrainingJobs`` page (1-100).
    """

    name: str = NAME

    def __init__(self, client: Any, settings: TrainingJobSettings, page_size: int = 100) -> None:
        self._client = client
        self.settings = settings
        self.page_size = page_size
        self._finished: dict[str, JobStatus] = {}
        self._lock = threading.Lock()

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Create the training job named after the key, or return the one that already exists."""
        request = build_training_job_request(spec, self.settings)
        # ResourceInUse: the name exists, created before (by anyone, or by a retry of this very
        # call whose first answer was lost), so re-attach to it below.
        with contextlib.suppress(self._client.exceptions.ResourceInUse):
            self._client.create_training_job(**request)
        description = self._client.describe_training_job(TrainingJobName=request["TrainingJobName"])
        return JobHandle.for_spec(
            self.name,
            spec,
            {
                "arn": description["TrainingJobArn"],
                "created_at": description["CreationTime"].timestamp(),
            },
            job_id=description["TrainingJobName"],
        )

    # -- poll -----------------------------------------------------------------------------------

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Every handle's status from one paginated list per name stem; see module docstring."""
        for handle in handles:
            self._check(handle)
        with self._lock:
            known = {
                h.job_id: self._finished[h.job_id] for h in handles if h.job_id in self._finished
            }
        open_handles = {h.job_id: h for h in handles if h.job_id not in known}
        summaries = self._list(list(open_handles.values()))
        statuses = dict(known)
        for job_id, handle in open_handles.items():
            summary = summaries.get(job_id) or self._describe(job_id)
            status = self._status(handle, summary)
            if status.state.is_terminal:
                with self._lock:
                    self._finished[job_id] = status
            statuses[job_id] = status
        return {handle.job_id: statuses[handle.job_id] for handle in handles}

    def _list(self, handles: list[JobHandle]) -> dict[str, dict[str, Any]]:
        """Summaries of the given jobs, from ``ListTrainingJobs`` filtered per name stem."""
        by_stem: dict[str, dict[str, float]] = {}
        for handle in handles:
            created = handle.details.get("created_at")
            if isinstance(created, int | float):  # else: described on its own
                by_stem.setdefault(_stem(handle.job_id), {})[handle.job_id] = float(created)
        found: dict[str, dict[str, Any]] = {}
        for stem, wanted in by_stem.items():
            request: dict[str, Any] = {
                # "After" is exclusive and clocks round: a second of slack keeps the first job.
                "CreationTimeAfter": datetime.fromtimestamp(min(wanted.values()) - 1.0, tz=UTC),
                "SortBy": "CreationTime",
                "SortOrder": "Ascending",
                "MaxResults": self.page_size,
            }
            if stem:
                request["NameContains"] = stem
            while True:
                page = self._client.list_training_jobs(**request)
                for summary in page.get("TrainingJobSummaries", []):
                    if summary["TrainingJobName"] in wanted:
                        found[summary["TrainingJobName"]] = summary
                token = page.get("NextToken")
                if not token or wanted.keys() <= found.keys():
                    break
                request["NextToken"] = token
        return found

    def _describe(self, job_id: str) -> dict[str, Any] | None:
        try:
            description: dict[str, Any] = self._client.describe_training_job(TrainingJobName=job_id)
        except self._client.exceptions.ClientError as error:
            if _not_found(error):
                return None
            raise
        return description

    def _status(self, handle: JobHandle, summary: dict[str, Any] | None) -> JobStatus:
        if summary is None:
            return JobStatus(
                job_id=handle.job_id,
                state=JobState.FAILED,
                message=f"SageMaker has no training job {handle.job_id} in this account and region",
            )
        status, secondary = summary["TrainingJobStatus"], summary.get("SecondaryStatus", "")
        state = training_job_state(status, secondary)
        if not state.is_terminal:
            return JobStatus(job_id=handle.job_id, state=state, message=secondary or status)
        if state == JobState.CANCELLED:
            return JobStatus(job_id=handle.job_id, state=state, message="stopped")
        if status == "Completed":
            reason = ""
        elif status == "Failed":
            # The list's summaries carry no FailureReason: one describe, once per job.
            reason = summary.get("FailureReason") or (self._describe(handle.job_id) or {}).get(
                "FailureReason", ""
            )
        else:
            reason = _STOPPED_BY_LIMIT.get(secondary, f"SageMaker reports the job {status}")
        return remote.finished_status(handle.job_id, state, handle.output_uri, reason)

    # -- cancel and logs ------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        """``StopTrainingJob``; a job that has ended (or is unknown) is left as it is."""
        self._check(handle)
        try:
            self._client.stop_training_job(TrainingJobName=handle.job_id)
        except self._client.exceptions.ClientError as error:
            if _not_found(error):
                return
            description = self._describe(handle.job_id)
            if description is None or description["TrainingJobStatus"] != "InProgress":
                return  # already ended or stopping: nothing left to stop
            raise

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's staged ``job.log`` ('' before the first upload)."""
        self._check(handle)
        return remote.read_log(handle.output_uri, tail)

    def _check(self, handle: JobHandle) -> None:
        if handle.backend != self.name:
            raise ValueError(
                f"job {handle.job_id} belongs to backend {handle.backend!r}, not {self.name!r}"
            )


def _not_found(error: Any) -> bool:
    """SageMaker answers an unknown name with ResourceNotFound or a 'not found' validation."""
    details = error.response.get("Error", {})
    code, message = details.get("Code", ""), str(details.get("Message", ""))
    return code == "ResourceNotFound" or (
        code == "ValidationException" and "not found" in message.lower()
    )


class SageMakerBackendResource(BackendResource):
    """Settings of the SageMaker backend, from a team's ``backends: {sagemaker: {...}}``.

    The AWS connection fields are those of dagster-aws's ``ResourceWithBoto3Configuration``
    (same names, defaults and meaning), declared here rather than inherited because importing
    ``dagster_aws`` imports boto3, and team locations import this module when they load.
    Credentials come from boto3's default chain (role, profile, environment), or from the
    ``aws_*`` fields when a team fills them with ``{env: NAME}``; they are used only by the
    client that submits and polls, never passed to jobs, tags or handles.
    """

    region_name: str | None = Field(default=None, description="AWS region of the jobs.")
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per API call, the first included (botocore)."
    )
    retry_mode: Literal["standard", "adaptive"] = Field(
        default="standard", description="botocore retry mode; adaptive also rate-limits."
    )
    profile_name: str | None = Field(default=None, description="AWS profile to use.")
    use_ssl: bool = Field(default=True, description="Whether to use SSL.")
    endpoint_url: str | None = Field(
        default=None, description="Another SageMaker endpoint (VPC endpoint, test fake)."
    )
    verify: bool | None = Field(default=True, description="Whether to verify SSL certificates.")
    aws_access_key_id: str | None = Field(default=None, description="Use {env: NAME}.")
    aws_secret_access_key: str | None = Field(default=None, description="Use {env: NAME}.")
    aws_session_token: str | None = Field(default=None, description="Use {env: NAME}.")
    role_arn: str = Field(description="IAM role the training jobs run as.")
    image_uri: str = Field(
        description="Default training image (ECR URI, with ml_assets) for jobs that name none."
    )
    storage_root: str = Field(
        description="s3://bucket/prefix under which jobs read inputs and write outputs."
    )
    volume_size_gb: int = Field(default=50, ge=1, description="ML storage volume per job.")
    max_runtime_seconds: int = Field(
        default=86_400, ge=1, le=28 * 86_400, description="Stop (and fail) a job after this."
    )
    sync_seconds: float = Field(
        default=10.0, gt=0, description="How often a running staged job uploads log and messages."
    )
    page_size: int = Field(
        default=100, ge=1, le=100, description="MaxResults per ListTrainingJobs page."
    )

    @field_validator("storage_root")
    @classmethod
    def _s3_root(cls, value: str) -> str:
        if not value.startswith("s3://") or not value.removeprefix("s3://").strip("/"):
            raise ValueError(f"storage_root must be s3://bucket[/prefix], got {value!r}")
        return value

    def training_settings(self) -> TrainingJobSettings:
        return TrainingJobSettings(
            role_arn=self.role_arn,
            image_uri=self.image_uri,
            volume_size_gb=self.volume_size_gb,
            max_runtime_seconds=self.max_runtime_seconds,
            sync_seconds=self.sync_seconds,
        )

    def get_backend(self) -> SageMakerBackend:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            region_name=self.region_name,
            profile_name=self.profile_name,
        )
        client = session.client(
            "sagemaker",
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            # total_max_attempts counts the first call; botocore's max_attempts would not.
            config=Config(
                retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts}
            ),
        )
        return SageMakerBackend(client, self.training_settings(), page_size=self.page_size)
