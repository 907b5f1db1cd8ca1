"""Databricks: each training job is one one-time run (Jobs API ``runs/submit``) on a new cluster.

The run has one task, whose shape follows ``JobSpec.staged``:

* staged (the default): a ``python_wheel_task``, package ``ml_assets``, entry point
  ``ml-assets-job`` (``ml_assets.training.stage:main``), whose parameters are the staged
  command's arguments (``remote.staged_command(spec)[3:]``: ``--output-uri URI --sync-seconds S
  -- <command>``). The ``wheel`` setting names the ml_assets wheel the cluster installs (a
  ``libraries`` entry). The wrapper uploads ``job.log``, the Pipes ``messages.jsonl`` and, on a
  non-zero exit, ``failure.json``.
* unstaged (``staged=False``): Databricks runs no arbitrary argv, only tasks of its own kinds, so
  the command must be ``python <file> [arguments...]``. It becomes a ``spark_python_task`` with
  ``python_file`` = ``<file>`` (a workspace path, a Unity Catalog volume path, or a ``dbfs:/``,
  ``s3://``... URI, as Databricks reads it) and ``parameters`` = the arguments, run by the
  cluster's own Python; any other command is a ``ValueError`` at submit. No wheel is installed:
  the cluster (its image) must provide what the script imports, ``dagster-pipes`` included. The
  script writes to ``ML_ASSETS_OUTPUT_URI`` itself.

The job's environment (the cluster's ``spark_env_vars``) is ``spec.env``, plus
``ML_ASSETS_OUTPUT_URI`` = ``output_uri`` for an unstaged job. ``spec.image`` runs the cluster in
that Docker image (Databricks Container Services, ``new_cluster.docker_image.url``; the workspace
must allow it) on ``container_spark_version``, a standard runtime, since the ML runtimes do not
support custom containers. ``spec.working_dir`` does not apply to Databricks tasks and is
ignored. The job writes to the spec's ``output_uri`` as given (normally ``dbfs:/...``; the asset
layer builds it with ``remote.output_location(storage_root, spec)``), with the runtime's own DBFS
credentials. All calls go through ``databricks-sdk``'s ``WorkspaceClient``.

Credentials: ``host`` and ``token`` when set (write the token as ``{env: DATABRICKS_TOKEN}``),
else the SDK's default chain (``DATABRICKS_HOST``/``DATABRICKS_TOKEN``, ``~/.databrickscfg``,
OAuth, Azure CLI, ...). The token goes into no request body, tag, handle or log.

The cluster is single-node (``num_workers`` 0 with the single-node ``spark_conf`` and
``ResourceClass`` tag) on ``container_spark_version`` for a job with an image, else on
``gpu_spark_version`` (an ML GPU runtime) when GPUs are asked for, else ``spark_version``. Its node
type is the smallest shape of ``NODE_TYPES`` (AWS node types; by GPU count, then vCPUs, then memory)
with at least the requested GPUs, vCPUs and memory:

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

GPU types are matched case-insensitively without an ``nvidia-``/``tesla-`` prefix, so
``nvidia-tesla-t4`` is ``t4``; a job with ``gpu_count`` but no ``gpu_type`` gets
``default_gpu_type``. The ``node_types`` setting overrides the table (for Azure or GCP workspaces,
or other shapes): key ``"cpu"`` for every CPU-only job, ``"<gpu_type>:<count>"`` for GPU jobs (the
smallest listed count that is at least the requested one). Anything else raises ``ValueError``
naming the known types.

Idempotency: ``runs/submit`` carries ``idempotency_token`` = SHA-256 of team, model and key (64
hex characters), so every submission of one key, from any process, returns the same run, and a
retried submit never starts a second one. The handle records the run's id, its task run's id and
its ``start_time`` as the service reports them (``runs/get``), so equal keys give equal handles.

Poll: ``runs/list`` with ``run_type=SUBMIT_RUN`` and ``start_time_from`` = the earliest handle's
start time, ``page_size`` runs a page (the API allows at most 25: one poll of 1,000 in-flight jobs
takes 40 list calls), stopping once every handle's run is seen; ``runs/get`` only for a run the
list did not show. A run that ended in ``SUCCESS`` succeeded (``result_uri`` = its
``output_uri``, whose Pipes messages say what it produced); a failed one's message is the
service's plus the staged ``failure.json``. Cancel:
``runs/cancel`` (an ended run stays as it ended). Logs: ``runs/get-output`` of the task run
(stdout/stderr and the error), else the staged ``job.log`` (``remote.read_log``).

Retries: the SDK retries 429 and 503 (after ``Retry-After``) and lost connections and timeouts
for up to ``retry_timeout_s``; it does not retry 500 or 504, so every call here retries those a
few times itself. All calls are safe to repeat (submit through its token).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, TypeVar

from pydantic import Field

from ml_assets.backends import remote
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.resource import BackendResource
from ml_assets.backends.shapes import normalize_gpu_type
from ml_assets.tags import RESOURCE_JOB_TAG, RESOURCE_KEY_TAG, RESOURCE_MODEL_TAG, RESOURCE_TEAM_TAG

PACKAGE_NAME = "ml_assets"
ENTRY_POINT = "ml-assets-job"
TASK_KEY = "train"
MAX_PAGE_SIZE = 25
SINGLE_NODE_CONF = {
    "spark.databricks.cluster.profile": "singleNode",
    "spark.master": "local[*, 4]",
}
# Tags on the run's cluster, so a run (and its cost) can be traced back to its team and key.

# 500 and 504 answers, which the SDK raises at once, are retried this often, backing off.
_SERVER_ERROR_ATTEMPTS = 4
_SERVER_ERROR_BACKOFF_S = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class NodeShape:
    """One Databricks node type: its GPUs (count and normalized type), vCPUs and memory."""

    node_type_id: str
    cpu: float
    memory_gb: float
    gpu_count: int = 0
    gpu_type: str | None = None


def _gpu_shapes(gpu_type: str, rows: Iterable[tuple[str, int, float, float]]) -> list[NodeShape]:
    return [NodeShape(name, cpu, memory, gpus, gpu_type) for name, gpus, cpu, memory in rows]


NODE_TYPES: tuple[NodeShape, ...] = (
    *(
        NodeShape(f"{family}.{size}", cpu, per_cpu * cpu)
        for size, cpu in (("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32))
        for family, per_cpu in (("m5", 4.0), ("i3", 7.625))
    ),
    NodeShape("m5.16xlarge", 64, 256),
    NodeShape("i3.16xlarge", 64, 488),
    *_gpu_shapes(
        "t4",
        (
            ("g4dn.xlarge", 1, 4, 16),
            ("g4dn.4xlarge", 1, 16, 64),
            ("g4dn.12xlarge", 4, 48, 192),
            ("g4dn.metal", 8, 96, 384),
        ),
    ),
    *_gpu_shapes(
        "a10g",
        (
            ("g5.xlarge", 1, 4, 16),
            ("g5.4xlarge", 1, 16, 64),
            ("g5.12xlarge", 4, 48, 192),
            ("g5.48xlarge", 8, 192, 768),
        ),
    ),
    *_gpu_shapes(
        "v100",
        (("p3.2xlarge", 1, 8, 61), ("p3.8xlarge", 4, 32, 244), ("p3.16xlarge", 8, 64, 488)),
    ),
    *_gpu_shapes("a100", (("p4d.24xlarge", 8, 96, 1152),)),
    *_gpu_shapes("a100-80gb", (("p4de.24xlarge", 8, 96, 1152),)),
    *_gpu_shapes("h100-80gb", (("p5.48xlarge", 8, 192, 2048),)),
)


def _known_gpu_types(overrides: dict[str, str]) -> list[str]:
    listed = {shape.gpu_type for shape in NODE_TYPES if shape.gpu_type}
    listed |= {normalize_gpu_type(key.rpartition(":")[0]) for key in overrides if ":" in key}
    return sorted(listed)


def _override(resources: Resources, gpu_type: str | None, overrides: dict[str, str]) -> str | None:
    """The ``node_types`` setting's node type for this request, if it has one."""
    if gpu_type is None:
        return overrides.get("cpu")
    counts = []
    for key, node_type in overrides.items():
        name, _, count = key.rpartition(":")
        if name and normalize_gpu_type(name) == gpu_type and count.isdigit():
            counts.append((int(count), node_type))
    fitting = sorted(item for item in counts if item[0] >= resources.gpu_count)
    return fitting[0][1] if fitting else None


def node_type_for(
    resources: Resources, overrides: dict[str, str] | None = None, default_gpu_type: str = "t4"
) -> str:
    """The node type of a job asking for ``resources``; see the module docstring for the rule.

    Raises ``ValueError`` for an unknown GPU type (naming the known ones) and for a request
    larger than every node of its kind.
    """
    overrides = overrides or {}
    gpu_type = None
    if resources.gpu_count:
        gpu_type = normalize_gpu_type(resources.gpu_type or default_gpu_type)
        known = _known_gpu_types(overrides)
        if gpu_type not in known:
            raise ValueError(
                f"unknown GPU type {resources.gpu_type or default_gpu_type!r} for Databricks; "
                f"known types: {', '.join(known)} (an 'nvidia-'/'tesla-' prefix is optional), "
                f"or add '<gpu_type>:<count>' to the backend's node_types setting"
            )
    chosen = _override(resources, gpu_type, overrides)
    if chosen:
        return chosen
    fits = [
        shape
        for shape in NODE_TYPES
        if shape.gpu_type == gpu_type
        and shape.gpu_count >= resources.gpu_count
        and shape.cpu >= resources.cpu
        and shape.memory_gb >= resources.memory_gb
    ]
    if not fits:
        what = f"{resources.gpu_count} x {gpu_type} GPUs, " if gpu_type else ""
        raise ValueError(
            f"no Databricks node type offers {what}{resources.cpu:g} vCPUs and "
            f"{resources.memory_gb:g} GiB; ask for less, or name a node type in the backend's "
            f"node_types setting"
        )
    best = min(fits, key=lambda shape: (shape.gpu_count, shape.cpu, shape.memory_gb))
    return best.node_type_id


class DatabricksBackendResource(BackendResource):
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
        default=None,
        description="The ml_assets wheel the job cluster installs (dbfs:/, /Volumes/ or "
        "/Workspace/ path); unset if the cluster already has ml_assets.",
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
    node_types: dict[str, str] = Field(
        default_factory=dict,
        description="Node type overrides: 'cpu' or '<gpu_type>:<count>' -> node type id.",
    )
    default_gpu_type: str = Field(
        default="nvidia-tesla-t4",
        description="GPU type of a job that asks for GPUs but names none.",
    )
    sync_seconds: float = Field(
        default=10.0, gt=0, description="How often a running staged job uploads log and messages."
    )
    page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Runs per runs/list page in poll.",
    )
    run_timeout_s: int = Field(
        default=0, ge=0, description="Databricks ends a run after this many seconds; 0: no limit."
    )
    retry_timeout_s: int = Field(
        default=300, gt=0, description="How long the SDK retries 429, 503 and lost connections."
    )
    request_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one HTTP request.")

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


def build_submit_request(spec: JobSpec, settings: DatabricksBackendResource) -> dict[str, Any]:
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
        "node_type_id": node_type_for(resources, settings.node_types, settings.default_gpu_type),
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
    if settings.run_timeout_s:
        request["timeout_seconds"] = settings.run_timeout_s
    return request


# --- the backend ------------------------------------------------------------------------------


def _retrying(call: Callable[[], T]) -> T:
    """``call()``, repeated on the 500/504 answers that the SDK does not retry itself."""
    from databricks.sdk.errors import DeadlineExceeded, InternalError

    attempt = 1
    while True:
        try:
            return call()
        except (InternalError, DeadlineExceeded):
            if attempt >= _SERVER_ERROR_ATTEMPTS:
                raise
            time.sleep(_SERVER_ERROR_BACKOFF_S * 2 ** (attempt - 1))
            attempt += 1


def _gone_errors() -> tuple[type[Exception], ...]:
    """What the Jobs API answers for a run id it does not know (deleted, or expired)."""
    from databricks.sdk.errors import InvalidParameterValue, NotFound

    return (NotFound, InvalidParameterValue)


class DatabricksBackend:
    """Runs each training job as a Databricks one-time run; see the module docstring."""

    name: str = "databricks"

    def __init__(self, settings: DatabricksBackendResource) -> None:
        self.settings = settings

    @cached_property
    def _jobs(self) -> Any:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        config = Config(
            host=self.settings.host,
            token=self.settings.token,
            retry_timeout_seconds=self.settings.retry_timeout_s,
            http_timeout_seconds=self.settings.request_timeout_s,
        )
        return WorkspaceClient(config=config).jobs

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Submit the run of ``spec`` (or find the one its idempotency token already started)."""
        from databricks.sdk.service.jobs import SubmitTask

        request = build_submit_request(spec, self.settings)
        tasks = [SubmitTask.from_dict(task) for task in request["tasks"]]
        waiter = _retrying(lambda: self._jobs.submit(**{**request, "tasks": tasks}))
        run_id = int(waiter.run_id)
        run = _retrying(lambda: self._jobs.get_run(run_id))
        task_run_ids = [task.run_id for task in run.tasks or [] if task.run_id]
        return JobHandle.for_spec(
            self.name,
            spec,
            {
                "run_id": run_id,
                "task_run_id": task_run_ids[0] if task_run_ids else None,
                "start_time": run.start_time,
                "run_name": spec.job_name,
            },
            job_id=str(run_id),
        )

    # -- poll -----------------------------------------------------------------------------------

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Statuses keyed by job id from one paginated ``runs/list``; ``runs/get`` only for a
        run the list did not show (a handle without a start time, or a deleted run)."""
        if not handles:
            return {}
        run_ids = {handle.job_id: self._run_id(handle) for handle in handles}
        starts = {
            run_ids[handle.job_id]: handle.details["start_time"]
            for handle in handles
            if isinstance(handle.details.get("start_time"), int)
        }
        runs: dict[int, Any] = {}
        if starts:
            runs = _retrying(lambda: self._list_runs(set(starts), min(starts.values())))
        statuses = {}
        for handle in handles:
            run_id = run_ids[handle.job_id]
            if run_id not in runs:
                runs[run_id] = self._get_run(run_id)
            statuses[handle.job_id] = self._status(handle, runs[run_id])
        return statuses

    def _list_runs(self, wanted: set[int], since: int) -> dict[int, Any]:
        from databricks.sdk.service.jobs import RunType

        found: dict[int, Any] = {}
        for run in self._jobs.list_runs(
            run_type=RunType.SUBMIT_RUN, start_time_from=since, limit=self.settings.page_size
        ):
            if run.run_id in wanted:
                found[run.run_id] = run
                if len(found) == len(wanted):
                    break
        return found

    def _get_run(self, run_id: int) -> Any:
        """The run, or the error that says Databricks does not know it."""
        try:
            return _retrying(lambda: self._jobs.get_run(run_id))
        except _gone_errors() as error:
            return error

    def _status(self, handle: JobHandle, run: Any) -> JobStatus:
        from databricks.sdk.service.jobs import RunLifeCycleState as Life
        from databricks.sdk.service.jobs import RunResultState as Result

        def status(state: JobState, message: str) -> JobStatus:
            return JobStatus(job_id=handle.job_id, state=state, message=message)

        if isinstance(run, Exception):
            return status(JobState.FAILED, f"Databricks does not know run {handle.job_id}: {run}")
        life = run.state.life_cycle_state if run.state else None
        result = run.state.result_state if run.state else None
        message = (run.state.state_message if run.state else None) or ""
        if life in (Life.QUEUED, Life.PENDING, Life.BLOCKED, Life.WAITING_FOR_RETRY):
            return status(JobState.QUEUED, message or life.value)
        if life in (Life.RUNNING, Life.TERMINATING):
            return status(JobState.RUNNING, message or life.value)
        if life == Life.TERMINATED and result == Result.SUCCESS:
            return remote.finished_status(handle.job_id, JobState.SUCCEEDED, handle.output_uri)
        if life == Life.TERMINATED and result == Result.CANCELED:
            return status(JobState.CANCELLED, message or "cancelled")
        if life in (Life.TERMINATED, Life.SKIPPED, Life.INTERNAL_ERROR):
            reason = result.value if life == Life.TERMINATED and result else life.value
            service = f"{reason}: {message}" if message else reason
            return remote.finished_status(
                handle.job_id, JobState.FAILED, handle.output_uri, service
            )
        # A state this SDK version does not know: report it as in flight rather than guess.
        return status(JobState.RUNNING, message or "state not recognised by databricks-sdk")

    def _run_id(self, handle: JobHandle) -> int:
        if handle.backend != self.name:
            raise ValueError(
                f"job {handle.job_id} belongs to backend {handle.backend!r}, not {self.name!r}"
            )
        return int(handle.details.get("run_id") or handle.job_id)

    # -- cancel and logs ------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        """``runs/cancel``; idempotent: an ended run stays as it ended, an unknown one is left."""
        run_id = self._run_id(handle)
        try:
            _retrying(lambda: self._jobs.cancel_run(run_id))
        except _gone_errors():
            return

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the task's output as ``runs/get-output`` gives it (plus its
        error), else of the staged ``job.log``, else the service's error."""
        output = self._output(handle)
        logs = (output.logs or "") if output else ""
        error = (output.error or "") if output else ""
        if logs.strip():
            text = logs if error in logs else f"{logs.rstrip()}\n{error}"
            return remote.log_tail(text, tail)
        staged = remote.read_log(handle.output_uri, tail)
        if staged.strip() or not output:
            return staged
        return remote.log_tail(output.error_trace or error, tail)

    def _output(self, handle: JobHandle) -> Any:
        """The task run's ``runs/get-output``, or None if Databricks does not know the run."""
        task_run_id = handle.details.get("task_run_id")
        try:
            if not isinstance(task_run_id, int):
                run = _retrying(lambda: self._jobs.get_run(self._run_id(handle)))
                task_run_id = next((task.run_id for task in run.tasks or [] if task.run_id), None)
            if task_run_id is None:
                return None
            return _retrying(lambda: self._jobs.get_run_output(task_run_id))
        except _gone_errors():
            return None
