"""The SageMaker backend: each training job is one SageMaker training job, run by boto3.

The job's output is the spec's ``output_uri``, which must be ``s3://``; SageMaker itself is asked
only for the job's state. Request (``build_training_job_request``, a pure function):

* ``TrainingJobName`` is ``spec.job_name``, derived from the idempotency key, so a second submit
  of a key, from any process, finds the job (``DescribeTrainingJob``) or meets SageMaker's
  "name already exists" (``ResourceInUse``) instead of starting another.
* ``AlgorithmSpecification.TrainingImage`` is ``spec.image``, else the ``image_uri`` setting.
  SageMaker has no working-directory field: ``spec.working_dir`` is ignored.
* ``ContainerEntrypoint`` is the staged command, or ``spec.command`` for an unstaged job.
  SageMaker caps it at 100 items of 256 characters; a longer command is sent as JSON in
  512-character ``ML_ASSETS_ENTRYPOINT_<i>`` environment variables that a short ``python -c``
  bootstrap joins and ``exec``s, so the container runs the same argv.
* ``Environment`` is ``spec.env`` (never credentials: the job uses the role ``role_arn``), plus
  ``ML_ASSETS_OUTPUT_URI`` for an unstaged job.
* ``Tags``: ``spec.labels`` plus ``ml-assets-team``, ``ml-assets-model``,
  ``ml-assets-key-sha256`` and ``ml-assets-idempotency-key`` (the key only when it fits a tag
  value: at most 256 letters, digits, spaces and ``_.:/=+-@``, per AWS's tag pattern).
* ``ResourceConfig.InstanceType``: ``shapes.smallest_fit`` over ``INSTANCE_SHAPES`` (GPU types
  by their short names; ``machine_types`` overrides):

==============  ==========================================================================
``gpu_type``    instance types (GPUs: vCPUs / GiB)
==============  ==========================================================================
(no GPU)        ml.m5.large (2/8), ml.m5.xlarge (4/16), ml.m5.2xlarge (8/32),
                ml.m5.4xlarge (16/64), ml.m5.12xlarge (48/192), ml.m5.24xlarge (96/384)
``t4``          1: ml.g4dn.xlarge (4/16), ml.g4dn.2xlarge (8/32), ml.g4dn.4xlarge (16/64),
                ml.g4dn.8xlarge (32/128), ml.g4dn.16xlarge (64/256); 4: ml.g4dn.12xlarge (48/192)
``a10g``        1: ml.g5.xlarge (4/16), ml.g5.2xlarge (8/32), ml.g5.4xlarge (16/64),
                ml.g5.8xlarge (32/128), ml.g5.16xlarge (64/256); 4: ml.g5.12xlarge (48/192),
                ml.g5.24xlarge (96/384); 8: ml.g5.48xlarge (192/768)
``l4``          1: ml.g6.xlarge (4/16), ml.g6.2xlarge (8/32), ml.g6.4xlarge (16/64),
                ml.g6.8xlarge (32/128), ml.g6.16xlarge (64/256); 4: ml.g6.12xlarge (48/192),
                ml.g6.24xlarge (96/384); 8: ml.g6.48xlarge (192/768)
``l40s``        1: ml.g6e.xlarge (4/32), ml.g6e.2xlarge (8/64), ml.g6e.4xlarge (16/128),
                ml.g6e.8xlarge (32/256), ml.g6e.16xlarge (64/512); 4: ml.g6e.12xlarge (48/384),
                ml.g6e.24xlarge (96/768); 8: ml.g6e.48xlarge (192/1536)
``v100``        1: ml.p3.2xlarge (8/61); 4: ml.p3.8xlarge (32/244); 8: ml.p3.16xlarge (64/488),
                ml.p3dn.24xlarge (96/768)
``a100``        8: ml.p4d.24xlarge (96/1152)
``a100-80gb``   8: ml.p4de.24xlarge (96/1152)
``h100-80gb``   1: ml.p5.4xlarge (16/256); 8: ml.p5.48xlarge (192/2048)
==============  ==========================================================================

Polling is one paginated ``ListTrainingJobs`` per team-model name stem (filtered by
``NameContains`` and ``CreationTimeAfter`` the earliest handle's creation time, stopping once
every handle is found), then ``DescribeTrainingJob`` only for a job that newly ``Failed`` (its
``FailureReason``) or that the list did not show. States: ``InProgress`` is queued while the
secondary status is before the container runs and running after; ``Stopping`` is running;
``Completed`` succeeded; ``Failed`` failed; ``Stopped`` cancelled, or failed when SageMaker
stopped it for exceeding its maximum runtime or wait time. ``cancel`` is ``StopTrainingJob``;
``logs`` reads the staged ``job.log``. boto3 is imported only when a backend is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import HandleDetails, JobHandle, JobSpec, JobState, JobStatus
from ml_assets.backends.remote import JobExists, NativeJob, RemoteBackend
from ml_assets.backends.settings import MachineSettings
from ml_assets.backends.shapes import MachineShape, family, known_gpu_types

NAME = "sagemaker"

# (size, GPUs, vCPUs, GiB) of the G families, smallest first within each GPU count.
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


def _sized(prefix: str, gpu_type: str | None, rows: list[tuple[str, int, int, int]]) -> list[Any]:
    return family(gpu_type, [(f"ml.{prefix}.{size}", g, c, m) for size, g, c, m in rows])


INSTANCE_SHAPES: tuple[MachineShape, ...] = (
    *_sized(
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
    *_sized("g4dn", "t4", _G_SIZES[:6]),
    *_sized("g5", "a10g", _G_SIZES),
    *_sized("g6", "l4", _G_SIZES),
    *_sized("g6e", "l40s", [(s, g, c, m * 2) for s, g, c, m in _G_SIZES]),
    *_sized(
        "p3", "v100", [("2xlarge", 1, 8, 61), ("8xlarge", 4, 32, 244), ("16xlarge", 8, 64, 488)]
    ),
    *_sized("p3dn", "v100", [("24xlarge", 8, 96, 768)]),
    *_sized("p4d", "a100", [("24xlarge", 8, 96, 1152)]),
    *_sized("p4de", "a100-80gb", [("24xlarge", 8, 96, 1152)]),
    *_sized("p5", "h100-80gb", [("4xlarge", 1, 16, 256), ("48xlarge", 8, 192, 2048)]),
)

GPU_TYPES: tuple[str, ...] = tuple(known_gpu_types(INSTANCE_SHAPES, {}))

# --- the request --------------------------------------------------------------------------------

_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
# AWS's tag pattern ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$: letters, separators (spaces, not tabs or
# newlines), numbers and a few signs.
_TAG_TEXT = re.compile(
    r"[^\W_]|[ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000_.:/=+\-@]"
)
_MAX_ENTRYPOINT_ITEMS, _MAX_ENTRYPOINT_CHARS = 100, 256
_MAX_ENV_ITEMS, _MAX_ENV_VALUE_CHARS = 100, 512
_MAX_TAGS, _MAX_TAG_KEY_CHARS, _MAX_TAG_VALUE_CHARS = 50, 128, 256
ENTRYPOINT_ENV_PREFIX = "ML_ASSETS_ENTRYPOINT_"
# Joins the command's JSON from the numbered variables and execs it: a leading ``python`` or
# ``python3`` as the container's own Python, anything else from the PATH. One line (an
# entrypoint item must match ``.*``) of under 256 characters.
_BOOTSTRAP = (
    "import json,os,sys;"
    f"p=sorted((int(k[{len(ENTRYPOINT_ENV_PREFIX)}:]),v) for k,v in os.environ.items() "
    f"if k.startswith({ENTRYPOINT_ENV_PREFIX!r}));"
    "a=json.loads(''.join(v for _,v in p));"
    "a[0]=sys.executable if a[0] in('python','python3') else a[0];"
    "os.execvp(a[0],a)"
)


class SageMakerSettings(MachineSettings):
    """Settings of the SageMaker backend, from a team's ``backends: {sagemaker: {...}}``.

    The AWS connection fields are those of dagster-aws's ``ResourceWithBoto3Configuration``
    (same names, defaults and meaning), declared here rather than inherited because importing
    ``dagster_aws`` imports boto3. ``max_attempts`` is the backend's retry policy, shared with
    every backend; ``retry_mode: adaptive`` adds botocore's client-side rate limiting.
    Credentials come from boto3's default chain, or from the ``aws_*`` fields written as
    ``{env: NAME}``; they are used only by the client, never passed to jobs, tags or handles.
    """

    region_name: str | None = Field(default=None, description="AWS region of the jobs.")
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
    page_size: int = Field(
        default=100, ge=1, le=100, description="MaxResults per ListTrainingJobs page."
    )

    @field_validator("storage_root")
    @classmethod
    def _s3_root(cls, value: str) -> str:
        if not value.startswith("s3://") or not value.removeprefix("s3://").strip("/"):
            raise ValueError(f"storage_root must be s3://bucket[/prefix], got {value!r}")
        return value

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
            # One try per call in botocore: the backend's retry policy decides on more.
            config=Config(
                retries={"mode": self.retry_mode, "total_max_attempts": 1},
                connect_timeout=self.request_timeout_seconds,
                read_timeout=self.request_timeout_seconds,
            ),
        )
        return SageMakerBackend(self, client)


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
    return len(text) <= limit and all(_TAG_TEXT.fullmatch(char) for char in text)


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


def build_training_job_request(spec: JobSpec, settings: SageMakerSettings) -> dict[str, Any]:
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
    instance_type = settings.machine(INSTANCE_SHAPES, spec.resources, "SageMaker").name
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
            "InstanceType": instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        "Environment": environment,
        "Tags": training_job_tags(spec),
    }


# --- the backend --------------------------------------------------------------------------------

_BEFORE_CONTAINER = (
    "Pending",
    "Starting",
    "LaunchingMLInstances",
    "PreparingTrainingStack",
    "Downloading",
    "DownloadingTrainingImage",
)
# Why SageMaker stopped a job on its own; such a stop is a failure, not a cancellation.
_STOPPED_BY_LIMIT = {
    "MaxRuntimeExceeded": "SageMaker stopped the job: it ran longer than MaxRuntimeInSeconds",
    "MaxWaitTimeExceeded": "SageMaker stopped the job: it waited longer than MaxWaitTimeInSeconds",
}
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class SageMakerDetails(HandleDetails):
    """A training job's handle details: its ARN and creation time (epoch seconds)."""

    arn: str
    created_at: float | None = None


def _stem(job_name: str) -> str:
    """The team-model part of a job name (``job_name_for`` appends ``-<key digest>``)."""
    return job_name.rsplit("-", 1)[0]


def _not_found(error: Any) -> bool:
    """SageMaker answers an unknown name with ResourceNotFound or a 'not found' validation."""
    details = error.response.get("Error", {})
    code, message = details.get("Code", ""), str(details.get("Message", ""))
    return code == "ResourceNotFound" or (
        code == "ValidationException" and "not found" in message.lower()
    )


class SageMakerBackend(RemoteBackend[SageMakerDetails]):
    """Runs each training job as a SageMaker training job; see the module docstring.

    ``client`` is a boto3 ``sagemaker`` client whose own retries are off.
    """

    name = NAME
    service = "SageMaker"
    details_type = SageMakerDetails
    states: ClassVar[Mapping[str, JobState]] = {
        "InProgress": JobState.RUNNING,
        **{f"InProgress/{secondary}": JobState.QUEUED for secondary in _BEFORE_CONTAINER},
        "Stopping": JobState.RUNNING,
        "Completed": JobState.SUCCEEDED,
        "Failed": JobState.FAILED,
        "Deleting": JobState.FAILED,  # a job being deleted will never report a result
        "Stopped": JobState.CANCELLED,
        **{f"Stopped/{reason}": JobState.FAILED for reason in _STOPPED_BY_LIMIT},
    }

    def __init__(self, settings: SageMakerSettings, client: Any) -> None:
        super().__init__(settings.retry_policy())
        self.settings = settings
        self._client = client

    def is_transient(self, error: Exception) -> bool:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(error, ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.response.get("Error", {}).get("Code", "")
            return status in remote.TRANSIENT_STATUSES or code in _THROTTLED
        return isinstance(error, BotoConnectionError | HTTPClientError)

    def prepare(self, spec: JobSpec) -> dict[str, Any]:
        return build_training_job_request(spec, self.settings)

    def find(self, spec: JobSpec) -> SageMakerDetails | None:
        description = self._describe(spec.job_name)
        if description is None:
            return None
        return SageMakerDetails(
            arn=description["TrainingJobArn"],
            created_at=description["CreationTime"].timestamp(),
        )

    def create(self, spec: JobSpec, request: dict[str, Any]) -> SageMakerDetails:
        try:
            self._client.create_training_job(**request)
        except self._client.exceptions.ResourceInUse as error:
            raise JobExists(f"training job {spec.job_name} exists") from error
        found = self.call(self.find, spec)
        if found is None:
            raise RuntimeError(f"SageMaker created training job {spec.job_name} but cannot find it")
        return found

    def list_jobs(self, jobs: remote.Listed[SageMakerDetails]) -> dict[str, NativeJob]:
        """One paginated list per name stem, since the earliest creation time."""
        by_stem: dict[str, dict[str, float]] = {}
        for handle, details in jobs:
            if details.created_at is not None:  # else: described on its own
                by_stem.setdefault(_stem(handle.job_id), {})[handle.job_id] = details.created_at
        found: dict[str, NativeJob] = {}
        for stem, wanted in by_stem.items():
            request: dict[str, Any] = {
                # "After" is exclusive and clocks round: a second of slack keeps the first job.
                "CreationTimeAfter": datetime.fromtimestamp(min(wanted.values()) - 1.0, tz=UTC),
                "SortBy": "CreationTime",
                "SortOrder": "Ascending",
                "MaxResults": self.settings.page_size,
            }
            if stem:
                request["NameContains"] = stem
            while True:
                page = self._client.list_training_jobs(**request)
                for summary in page.get("TrainingJobSummaries", []):
                    if summary["TrainingJobName"] in wanted:
                        found[summary["TrainingJobName"]] = self._native(summary)
                token = page.get("NextToken")
                if not token or wanted.keys() <= found.keys():
                    break
                request["NextToken"] = token
        return found

    def get_job(self, handle: JobHandle, details: SageMakerDetails) -> NativeJob | None:
        description = self._describe(handle.job_id)
        return None if description is None else self._native(description)

    def stop(self, handle: JobHandle, details: SageMakerDetails) -> None:
        self._client.stop_training_job(TrainingJobName=handle.job_id)

    def gone(self, handle: JobHandle, details: SageMakerDetails) -> JobStatus:
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.FAILED,
            message=f"SageMaker has no training job {handle.job_id} in this account and region",
        )

    def _native(self, summary: dict[str, Any]) -> NativeJob:
        status, secondary = summary["TrainingJobStatus"], summary.get("SecondaryStatus", "")
        native = f"{status}/{secondary}"
        state = self.state_of(native)
        if not state.is_terminal:
            return NativeJob(native, secondary or status)
        if state == JobState.CANCELLED:
            return NativeJob(native, "stopped")
        if status == "Failed":
            # The list's summaries carry no FailureReason: one describe, once per job.
            reason = summary.get("FailureReason")
            if reason is None:
                reason = (self._describe(summary["TrainingJobName"]) or {}).get("FailureReason")
            return NativeJob(native, reason or "")
        if status == "Completed":
            return NativeJob(native)
        return NativeJob(native, _STOPPED_BY_LIMIT.get(secondary, f"SageMaker reports {status}"))

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            description: dict[str, Any] = self._client.describe_training_job(TrainingJobName=name)
        except self._client.exceptions.ClientError as error:
            if _not_found(error):
                return None
            raise
        return description


def training_job_state(status: str, secondary: str = "") -> JobState:
    """Our state for SageMaker's ``TrainingJobStatus`` and ``SecondaryStatus``."""
    return SageMakerBackend.state_of(f"{status}/{secondary}")
