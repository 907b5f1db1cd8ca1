"""Databricks: each training job is one one-time run (Jobs API ``runs/submit``) on a new cluster.

The run has one task, whose shape follows ``JobSpec.staged``:

* staged (the default): a ``python_wheel_task``, package ``ml_assets``, entry point
  ``ml-assets-job`` (``ml_assets.training.stage:main``), whose parameters are the staged
  command's arguments. The cluster installs the ml_assets wheel named by the ``wheel`` setting
  (a ``libraries`` entry): a Unity Catalog volume path ``/Volumes/<catalog>/<schema>/<volume>/
  <file>.whl`` (the default is ``DEFAULT_WHEEL``, upload the wheel there) or a workspace file
  ``/Workspace/.../<file>.whl``; ``null`` when the cluster image already has ml_assets. A
  ``dbfs:/`` wheel is refused: libraries from the DBFS root are disabled by default from
  Databricks Runtime 15, which the default runtimes below are.
* unstaged (``staged=False``): Databricks runs no arbitrary argv, so the command must be
  ``python <file> [arguments...]``; it becomes a ``spark_python_task`` run by the cluster's own
  Python, with no wheel installed. The script writes to ``ML_ASSETS_OUTPUT_URI`` itself.

The job's environment (the cluster's ``spark_env_vars``) is ``spec.env``, plus
``ML_ASSETS_OUTPUT_URI`` for an unstaged job. ``spec.image`` runs the cluster in that Docker
image (Databricks Container Services) on ``container_spark_version``, a standard runtime, since
the ML runtimes do not support custom containers; ``spec.working_dir`` is ignored. The job writes
to the spec's ``output_uri`` as given (normally ``dbfs:/...``). Credentials: ``host`` and
``token`` (as ``{env: DATABRICKS_TOKEN}``), else the SDK's default chain; the token goes into no
request body, tag, handle or log.

The cluster is single-node on ``container_spark_version`` for a job with an image, else
``gpu_spark_version`` when GPUs are asked for, else ``spark_version``. Its node type is
``shapes.smallest_fit`` over ``NODE_TYPES`` (AWS node types; ``machine_types`` overrides them,
e.g. for Azure or GCP workspaces):

==============  =========================================================================
``gpu_type``    node types (GPUs / vCPUs / GiB)
==============  =========================================================================
(no GPU)        m5.xlarge 4/16, i3.xlarge 4/30.5, m5.2xlarge 8/32, i3.2xlarge 8/61, ...
                up to m5.16xlarge 64/256 and i3.16xlarge 64/488
t4              g4dn.xlarge 1/4/16, g4dn.4xlarge 1/16/64, g4dn.12xlarge 4/48/192,
                g4dn.metal 8/96/384
a10g            g5.xlarge 1/4/16, g5.4xlarge 1/16/64, g5.12xlarge 4/48/192,
                g5.48xlarge 8/192/768
v100            p3.2xlarge 1/8/61, p3.8xlarge 4/32/244, p3.16xlarge 8/64/488
a100            p4d.24xlarge 8/96/1152
a100-80gb       p4de.24xlarge 8/96/1152
h100-80gb       p5.48xlarge 8/192/2048
==============  =========================================================================

Idempotency: ``runs/submit`` carries ``idempotency_token`` = SHA-256 of team, model and key, so
every submission of one key, from any process, returns the same run, and a create retried after
a lost answer never starts a second one. Poll: ``runs/list`` of submit runs since the earliest
handle's start time, ``page_size`` runs a page (at most 25), stopping once every handle's run is
seen; ``runs/get`` only for a run the list did not show. Cancel: ``runs/cancel``. Logs:
``runs/get-output`` of the task run, else the staged ``job.log``.

Retries: every call runs under the backend's retry policy (500 and 504 among the errors it
retries). databricks-sdk also runs a loop of its own for 429, 503 and lost connections, which it
offers no way to switch off; its budget is the policy's ``retry_timeout_seconds``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ml_assets.backends import remote
from ml_assets.backends.base import HandleDetails, JobHandle, JobSpec, JobState
from ml_assets.backends.remote import NativeJob, RemoteBackend
from ml_assets.backends.settings import MachineSettings
from ml_assets.backends.shapes import MachineShape, family
from ml_assets.tags import RESOURCE_JOB_TAG, RESOURCE_KEY_TAG, RESOURCE_MODEL_TAG, RESOURCE_TEAM_TAG

PACKAGE_NAME = "ml_assets"
ENTRY_POINT = "ml-assets-job"
TASK_KEY = "train"
MAX_PAGE_SIZE = 25
SINGLE_NODE_CONF = {
    "spark.databricks.cluster.profile": "singleNode",
    "spark.master": "local[*, 4]",
}
DEFAULT_WHEEL = "/Volumes/main/ml_assets/wheels/ml_assets-py3-none-any.whl"
_WHEEL = re.compile(r"(/Volumes/[^/]+/[^/]+/[^/]+/|/Workspace/|(s3|gs|abfss)://).+\.whl")

NODE_TYPES: tuple[MachineShape, ...] = (
    *(
        MachineShape(f"{kind}.{size}", cpu, per_cpu * cpu)
        for size, cpu in (("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32))
        for kind, per_cpu in (("m5", 4.0), ("i3", 7.625))
    ),
    MachineShape("m5.16xlarge", 64, 256),
    MachineShape("i3.16xlarge", 64, 488),
    *family(
        "t4",
        [
            ("g4dn.xlarge", 1, 4, 16),
            ("g4dn.4xlarge", 1, 16, 64),
            ("g4dn.12xlarge", 4, 48, 192),
            ("g4dn.metal", 8, 96, 384),
        ],
    ),
    *family(
        "a10g",
        [
            ("g5.xlarge", 1, 4, 16),
            ("g5.4xlarge", 1, 16, 64),
            ("g5.12xlarge", 4, 48, 192),
            ("g5.48xlarge", 8, 192, 768),
        ],
    ),
    *family(
        "v100", [("p3.2xlarge", 1, 8, 61), ("p3.8xlarge", 4, 32, 244), ("p3.16xlarge", 8, 64, 488)]
    ),
    *family("a100", [("p4d.24xlarge", 8, 96, 1152)]),
    *family("a100-80gb", [("p4de.24xlarge", 8, 96, 1152)]),
    *family("h100-80gb", [("p5.48xlarge", 8, 192, 2048)]),
)


class DatabricksSettings(MachineSettings):
    """Settings of the Databricks backend (a team YAML's ``backends: {databricks: {...}}``)."""

    host: str | None = Field(
        default=None,
        description="Workspace URL; unset: the SDK's default chain (DATABRICKS_HOST, ...).",
    )
    token: str | None = Field(
        default=None,
        description="Personal access token, as {env: DATABRICKS_TOKEN}; unset: the SDK's "
        "default auth chain.",
    )
    storage_root: str = Field(
        default="dbfs:/ml_assets",
        description="Where jobs write (dbfs:/...): <root>/jobs/<team>/<model>/<job>.",
    )
    wheel: str | None = Field(
        default=DEFAULT_WHEEL,
        description="The ml_assets wheel the job cluster installs: a Unity Catalog volume "
        "(/Volumes/<catalog>/<schema>/<volume>/...whl) or workspace (/Workspace/...whl) path; "
        "null if the cluster image already has ml_assets. Not dbfs:/ (disabled from runtime 15).",
    )
    spark_version: str = Field(
        default="15.4.x-cpu-ml-scala2.12", description="Databricks runtime of CPU-only jobs."
    )
    gpu_spark_version: str = Field(
        default="15.4.x-gpu-ml-scala2.12",
        description="Databricks runtime of jobs that ask for GPUs.",
    )
    container_spark_version: str = Field(
        default="15.4.x-scala2.12",
        description="Databricks runtime of jobs that name their own image (a standard runtime: "
        "the ML runtimes do not support Databricks Container Services).",
    )
    page_size: int = Field(
        default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Runs per runs/list page."
    )
    max_runtime_seconds: int = Field(
        default=0, ge=0, description="Databricks ends a run after this many seconds; 0: no limit."
    )

    @field_validator("wheel")
    @classmethod
    def _wheel_source(cls, value: str | None) -> str | None:
        if value is not None and not _WHEEL.fullmatch(value):
            raise ValueError(
                f"wheel {value!r} is not a Unity Catalog volume path (/Volumes/<catalog>/<schema>/"
                "<volume>/<file>.whl), a workspace path (/Workspace/.../<file>.whl) or a cloud "
                "storage URI; libraries from the DBFS root (dbfs:/) are disabled by default from "
                "Databricks Runtime 15"
            )
        return value

    def get_backend(self) -> DatabricksBackend:
        return DatabricksBackend(self)


# --- the pure request builder -----------------------------------------------------------------


def idempotency_token(spec: JobSpec) -> str:
    """The run's ``idempotency_token``: 64 hex characters, the same for every submit of a key."""
    identity = f"ml_assets\0{spec.team}\0{spec.model}\0{spec.idempotency_key}"
    return hashlib.sha256(identity.encode()).hexdigest()


def stage_parameters(spec: JobSpec, sync_seconds: float) -> list[str]:
    """The entry point's arguments: the staged command without its ``python -m <module>``."""
    command = remote.staged_command(spec, sync_seconds)
    if command[:3] != ["python", "-m", remote.STAGE_MODULE]:
        raise RuntimeError(f"unexpected staged command {command[:3]}")
    return command[3:]


_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")


def spark_python_task(spec: JobSpec) -> dict[str, Any]:
    """The ``spark_python_task`` of an unstaged job: ``python <file> [arguments...]``.

    Raises ``ValueError`` for any other command, naming what Databricks can run.
    """
    command = spec.command
    if (
        len(command) < 2
        or not _PYTHON.fullmatch(PurePosixPath(command[0]).name)
        or command[1].startswith("-")
    ):
        raise ValueError(
            f"Databricks cannot run the unstaged command {command[:3]!r}...: an unstaged job "
            "runs as a spark_python_task, so its command must be `python <file> [arguments...]`, "
            "the file a workspace path, a Unity Catalog volume path or a dbfs:/, s3://, gs:// or "
            "abfss:// URI; or run it staged (staged: true) in an image with ml_assets"
        )
    task: dict[str, Any] = {"python_file": command[1]}
    if command[2:]:
        task["parameters"] = list(command[2:])
    return task


def build_submit_request(spec: JobSpec, settings: DatabricksSettings) -> dict[str, Any]:
    """The ``runs/submit`` body for ``spec``: one task on a new single-node cluster (see the
    module docstring for the task's shape)."""
    resources = spec.resources
    token = idempotency_token(spec)
    tags = {
        **spec.labels,
        RESOURCE_TEAM_TAG: spec.team,
        RESOURCE_MODEL_TAG: spec.model,
        RESOURCE_JOB_TAG: spec.job_name,
        RESOURCE_KEY_TAG: token,
        "ResourceClass": "SingleNode",
    }
    if spec.image:
        spark_version = settings.container_spark_version
    elif resources.gpu_count:
        spark_version = settings.gpu_spark_version
    else:
        spark_version = settings.spark_version
    cluster: dict[str, Any] = {
        "spark_version": spark_version,
        "node_type_id": settings.machine(NODE_TYPES, resources, "Databricks").name,
        "num_workers": 0,
        "spark_conf": dict(SINGLE_NODE_CONF),
        "custom_tags": tags,
    }
    if spec.image:
        cluster["docker_image"] = {"url": spec.image}
    env = remote.container_env(spec)
    if env:
        cluster["spark_env_vars"] = env
    task: dict[str, Any] = {"task_key": TASK_KEY}
    if spec.staged:
        task["python_wheel_task"] = {
            "package_name": PACKAGE_NAME,
            "entry_point": ENTRY_POINT,
            "parameters": stage_parameters(spec, settings.sync_seconds),
        }
    else:
        task["spark_python_task"] = spark_python_task(spec)
    task["new_cluster"] = cluster
    if settings.wheel and spec.staged:
        task["libraries"] = [{"whl": settings.wheel}]
    request: dict[str, Any] = {
        "run_name": spec.job_name,
        "idempotency_token": token,
        "tasks": [task],
    }
    if settings.max_runtime_seconds:
        request["timeout_seconds"] = settings.max_runtime_seconds
    return request


# --- the backend ------------------------------------------------------------------------------


class DatabricksDetails(HandleDetails):
    """A run's handle details, as the service reports them (so equal keys give equal handles)."""

    run_id: int
    task_run_id: int | None = None
    start_time: int | None = None
    run_name: str | None = None


def _gone_errors() -> tuple[type[Exception], ...]:
    """What the Jobs API answers for a run id it does not know (deleted, or expired)."""
    from databricks.sdk.errors import InvalidParameterValue, NotFound

    return (NotFound, InvalidParameterValue)


class DatabricksBackend(RemoteBackend[DatabricksDetails]):
    """Runs each training job as a Databricks one-time run; see the module docstring."""

    name = "databricks"
    service = "Databricks"
    details_type = DatabricksDetails
    # "<life cycle state>/<result state>"; a state this SDK version does not know runs on.
    states: ClassVar[Mapping[str, JobState]] = {
        **dict.fromkeys(("QUEUED", "PENDING", "BLOCKED", "WAITING_FOR_RETRY"), JobState.QUEUED),
        **dict.fromkeys(("RUNNING", "TERMINATING"), JobState.RUNNING),
        **dict.fromkeys(("TERMINATED", "SKIPPED", "INTERNAL_ERROR"), JobState.FAILED),
        "TERMINATED/SUCCESS": JobState.SUCCEEDED,
        "TERMINATED/CANCELED": JobState.CANCELLED,
    }

    def __init__(self, settings: DatabricksSettings) -> None:
        super().__init__(settings.retry_policy())
        self.settings = settings

    @cached_property
    def _jobs(self) -> Any:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        config = Config(
            host=self.settings.host,
            token=self.settings.token,
            retry_timeout_seconds=max(1, round(self.settings.retry_timeout_seconds)),
            http_timeout_seconds=self.settings.request_timeout_seconds,
        )
        return WorkspaceClient(config=config).jobs

    def is_transient(self, error: Exception) -> bool:
        import requests
        from databricks.sdk import errors

        return isinstance(
            error,
            errors.InternalError
            | errors.DeadlineExceeded
            | errors.TooManyRequests
            | errors.TemporarilyUnavailable
            | requests.ConnectionError
            | requests.Timeout,
        )

    def prepare(self, spec: JobSpec) -> dict[str, Any]:
        return build_submit_request(spec, self.settings)

    def find(self, spec: JobSpec) -> DatabricksDetails | None:
        # The idempotency token makes runs/submit itself find the key's run.
        return None

    def create(self, spec: JobSpec, request: dict[str, Any]) -> DatabricksDetails:
        from databricks.sdk.service.jobs import SubmitTask

        tasks = [SubmitTask.from_dict(task) for task in request["tasks"]]
        run_id = int(self._jobs.submit(**{**request, "tasks": tasks}).run_id)
        run = self.call(self._jobs.get_run, run_id)
        task_run_ids = [task.run_id for task in run.tasks or [] if task.run_id]
        return DatabricksDetails(
            run_id=run_id,
            task_run_id=task_run_ids[0] if task_run_ids else None,
            start_time=run.start_time,
            run_name=spec.job_name,
        )

    def job_id(self, spec: JobSpec, details: DatabricksDetails) -> str:
        return str(details.run_id)

    def list_jobs(self, jobs: remote.Listed[DatabricksDetails]) -> dict[str, NativeJob]:
        from databricks.sdk.service.jobs import RunType

        starts = {d.run_id: d.start_time for _, d in jobs if d.start_time is not None}
        ids = {details.run_id: handle.job_id for handle, details in jobs}
        found: dict[str, NativeJob] = {}
        if not starts:
            return found
        for run in self._jobs.list_runs(
            run_type=RunType.SUBMIT_RUN,
            start_time_from=min(starts.values()),
            limit=self.settings.page_size,
        ):
            if run.run_id in starts:
                found[ids[run.run_id]] = _native(run)
                if len(found) == len(starts):
                    break
        return found

    def get_job(self, handle: JobHandle, details: DatabricksDetails) -> NativeJob | None:
        try:
            return _native(self._jobs.get_run(details.run_id))
        except _gone_errors():
            return None

    def stop(self, handle: JobHandle, details: DatabricksDetails) -> None:
        try:
            self._jobs.cancel_run(details.run_id)
        except _gone_errors():
            return

    def job_logs(self, handle: JobHandle, details: DatabricksDetails, tail: int) -> str:
        """The task's output as ``runs/get-output`` gives it (plus its error), else the staged
        ``job.log``, else the service's error."""
        output = self.call(self._output, details)
        logs = (output.logs or "") if output else ""
        error = (output.error or "") if output else ""
        if logs.strip():
            text = logs if error in logs else f"{logs.rstrip()}\n{error}"
            return remote.log_tail(text, tail)
        staged = remote.read_log(handle.output_uri, tail)
        if staged.strip() or not output:
            return staged
        return remote.log_tail(output.error_trace or error, tail)

    def _output(self, details: DatabricksDetails) -> Any:
        """The task run's ``runs/get-output``, or None if Databricks does not know the run."""
        task_run_id = details.task_run_id
        try:
            if task_run_id is None:
                run = self._jobs.get_run(details.run_id)
                task_run_id = next((task.run_id for task in run.tasks or [] if task.run_id), None)
            return None if task_run_id is None else self._jobs.get_run_output(task_run_id)
        except _gone_errors():
            return None


def _native(run: Any) -> NativeJob:
    """A run's ``<life cycle>/<result>`` state and its message."""
    state = run.state
    life = state.life_cycle_state.value if state and state.life_cycle_state else "UNKNOWN"
    result = state.result_state.value if state and state.result_state else ""
    message = (state.state_message if state else None) or ""
    native = f"{life}/{result}" if result else life
    outcome = DatabricksBackend.state_of(native)
    if outcome == JobState.SUCCEEDED:
        return NativeJob(native)
    if outcome == JobState.CANCELLED:
        return NativeJob(native, message or "cancelled")
    if outcome == JobState.FAILED:
        reason = result if life == "TERMINATED" and result else life
        return NativeJob(native, f"{reason}: {message}" if message else reason)
    if life not in DatabricksBackend.states:
        return NativeJob(native, message or f"state {life} not recognised by databricks-sdk")
    return NativeJob(native, message or life)
