"""What every remote backend shares: the ``RemoteBackend`` template (submit, poll, cancel and logs
over a few hooks, one ``RetryPolicy``, typed handle details), the container's command and env,
and a finished job's status.

Adding a backend is one module: a ``HandleDetails`` subclass, a ``RemoteSettings`` (or
``MachineSettings``) subclass for its settings, and a ``RemoteBackend`` subclass with its
``states`` table and the hooks ``prepare``, ``find``, ``create``, ``list_jobs``, ``get_job``,
``stop`` and ``is_transient``; then a line in ``BACKENDS`` and a loopback fake for its tests.

A job runs in one of two shapes (``JobSpec.staged``):

* **staged** (the default): the container runs ``ml_assets.training.stage``, which gives the real
  command a local output directory and uploads it to the job's ``output_uri`` in object storage
  (see ``ml_assets.transport``): ``job.log`` and the Pipes ``messages.jsonl`` as it goes,
  everything at the end, plus ``failure.json`` on a non-zero exit. The image needs ml_assets.
* **unstaged**: the container runs ``spec.command`` as it is, with ``ML_ASSETS_OUTPUT_URI`` set
  to ``output_uri``; the job writes there itself (boto3, a ``dagster_pipes`` blob-store writer,
  ...). For images that do not contain ml_assets.

Either way the job reports through Dagster Pipes messages in its output, and the reconciler,
not the backend, reads them: a job whose service says it ended well is ``SUCCEEDED`` with
``result_uri`` = its output location, and whether it produced a model is for its messages to
say. A backend needs its service only for the job's state; a failure's message adds the staged
``failure.json`` (the exit status and last log lines) to the service's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from ml_assets import transport
from ml_assets.backends.base import HandleDetails, JobHandle, JobSpec, JobState, JobStatus

STAGE_MODULE = "ml_assets.training.stage"
OUTPUT_URI_ENV = "ML_ASSETS_OUTPUT_URI"
FAILURE_FILE = "failure.json"
LOG_FILE = "job.log"


def staged_command(spec: JobSpec, sync_seconds: float = 10.0) -> list[str]:
    """The container command that runs ``spec.command`` and ships its output to ``output_uri``."""
    return [
        "python",
        "-m",
        STAGE_MODULE,
        "--output-uri",
        spec.output_uri,
        "--sync-seconds",
        f"{sync_seconds:g}",
        "--",
        *spec.command,
    ]


def container_command(spec: JobSpec, sync_seconds: float = 10.0) -> list[str]:
    """What the container runs: the staged command, or ``spec.command`` as it is if unstaged."""
    if not spec.command:
        raise ValueError("a JobSpec needs a non-empty command")
    return staged_command(spec, sync_seconds) if spec.staged else list(spec.command)


def container_env(spec: JobSpec) -> dict[str, str]:
    """The job's environment: ``spec.env``, plus ``ML_ASSETS_OUTPUT_URI`` for an unstaged job.

    (A staged job's wrapper sets ``ML_ASSETS_OUTPUT_URI`` itself, to its local directory.)
    """
    env = dict(spec.env)
    if not spec.staged:
        env[OUTPUT_URI_ENV] = spec.output_uri
    return env


def output_location(storage_root: str, spec: JobSpec) -> str:
    """Where a remote job writes: ``<storage_root>/jobs/<team>/<model>/<job name>``."""
    return transport.join(storage_root, "jobs", spec.team, spec.model, spec.job_name)


def _read_json(uri: str) -> Any:
    with contextlib.suppress(transport.ObjectNotFound):
        return transport.read_json(uri)
    return None


def finished_status(
    job_id: str, state: JobState, output_uri: str, service_message: str = ""
) -> JobStatus:
    """The status of a job its service reports as ended (``state`` terminal).

    Success is the service's word alone: ``result_uri`` is the job's output location, where
    its Pipes messages and artifacts are. A failure's message is the service's own plus the
    staged ``failure.json`` (the command's exit status and last log lines), if there is one.
    """
    if state == JobState.SUCCEEDED:
        return JobStatus(job_id=job_id, state=state, message=service_message, result_uri=output_uri)
    if state == JobState.FAILED:
        failure = _read_json(transport.join(output_uri, FAILURE_FILE))
        staged = failure.get("message", "") if isinstance(failure, dict) else ""
        message = "; ".join(part for part in (service_message, staged) if part)
        return JobStatus(job_id=job_id, state=state, message=message or "the job failed")
    return JobStatus(job_id=job_id, state=state, message=service_message)


def log_tail(text: str, tail: int) -> str:
    """The last ``tail`` lines of ``text``."""
    lines = text.splitlines()
    return "\n".join(lines[-tail:]) if tail > 0 else ""


def read_log(output_uri: str, tail: int) -> str:
    """The last lines of the staged ``job.log`` (empty before the first upload, or unstaged)."""
    with contextlib.suppress(transport.ObjectNotFound):
        return log_tail(
            transport.read_bytes(transport.join(output_uri, LOG_FILE)).decode(errors="replace"),
            tail,
        )
    return ""


# --- the template every remote backend fills in ---------------------------------------------------

T = TypeVar("T")
D = TypeVar("D", bound=HandleDetails)


# HTTP answers that may differ on another try: throttling and the server-side 5xx.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def key_hash(key: str) -> str:
    """A label-safe stand-in for an idempotency key (keys themselves may not be label values)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


class JobExists(Exception):
    """A create hook's answer when the service already holds a job under the spec's name."""


class KeyConflict(RuntimeError):
    """The job under a spec's name, or its output location, belongs to another idempotency key."""


@dataclass(frozen=True)
class RetryPolicy:
    """How every remote backend retries a call its service may answer differently next time.

    A call is tried at most ``max_attempts`` times (the first included), waiting
    ``backoff_seconds`` before the second try and twice as long before each later one (at most
    ``max_backoff_seconds``), and never past ``timeout_seconds`` after the first. Which errors
    are worth another try is the backend's word (``RemoteBackend.is_transient``).
    """

    max_attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 120.0

    def run(
        self,
        call: Callable[[], T],
        transient: Callable[[Exception], bool],
        recover: Callable[[], T | None] | None = None,
    ) -> T:
        """``call()``, tried again after a transient error.

        After each transient error ``recover()`` (when given) may end the loop with a value:
        a create whose answer was lost, say, is found rather than made a second time.
        """
        deadline = time.monotonic() + self.timeout_seconds
        attempt = 1
        while True:
            try:
                return call()
            except Exception as error:
                if not transient(error):
                    raise
                found = recover() if recover is not None else None
                if found is not None:
                    return found
                delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
                if attempt >= self.max_attempts or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class NativeJob:
    """A job as its service describes it: its own state name, a message, and the idempotency key
    the service records for it (``None`` where it records none).

    ``state`` is looked up in the backend's ``states`` table, first whole, then up to its
    first ``/`` (so ``"InProgress/Starting"`` can differ from ``"InProgress"``).
    """

    state: str
    message: str = ""
    key: str | None = None


Listed = list[tuple[JobHandle, D]]


class RemoteBackend(Generic[D]):
    """The ``Backend`` protocol for a service that runs jobs elsewhere, as a template.

    The base owns the flow: ``submit`` is idempotent by key (find the key's job, else create
    it; a create whose answer was lost, or that meets the name taken, finds the job instead of
    making another), ``poll`` is one batched list plus a look-up only for jobs the list did not
    show, with finished statuses remembered, ``cancel`` leaves a finished or gone job alone,
    every call runs under one ``RetryPolicy``, and handles carry typed details. A backend
    supplies the hooks below; its module stays about its service.

    Hooks: ``prepare`` (the pure request), ``find``, ``create``, ``list_jobs``, ``get_job``,
    ``stop``, ``is_transient``; and where the default does not fit, ``job_id``, ``gone`` and
    ``job_logs``. Class attributes: ``name``, ``service`` (its name in messages),
    ``details_type`` (the ``HandleDetails`` subclass), ``states`` (native state -> ``JobState``;
    an unknown state counts as running) and ``lists_every_job`` (a job the list does not show
    is gone, without a look-up).
    """

    name: str
    service: str
    details_type: ClassVar[type[HandleDetails]]
    states: ClassVar[Mapping[str, JobState]]
    lists_every_job: ClassVar[bool] = False

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self._finished: dict[tuple[str, str], JobStatus] = {}
        self._finished_lock = threading.Lock()

    # -- hooks ----------------------------------------------------------------------------------

    def prepare(self, spec: JobSpec) -> Any:
        """The service's request for ``spec``; no network. Raises ``ValueError`` for a spec the
        service cannot run, before anything is sent."""
        raise NotImplementedError

    def find(self, spec: JobSpec) -> D | None:
        """The details of the job of ``spec``'s idempotency key, if the service has one.

        Raises ``KeyConflict`` when the job under its name belongs to another key.
        """
        raise NotImplementedError

    def create(self, spec: JobSpec, request: Any) -> D:
        """Start the job and return its details; raise ``JobExists`` if the name is taken.

        The base retries the create as a whole; any other call the hook makes (a look-up
        before or after it) goes through ``self.call``, so that its fault costs one retry of
        that call, not an attempt of the create."""
        raise NotImplementedError

    def list_jobs(self, jobs: Listed[D]) -> dict[str, NativeJob]:
        """As many of ``jobs`` as the service's list calls show, by job id."""
        raise NotImplementedError

    def get_job(self, handle: JobHandle, details: D) -> NativeJob | None:
        """One job, or ``None`` if the service does not know it."""
        raise NotImplementedError

    def stop(self, handle: JobHandle, details: D) -> None:
        """Ask the service to stop a job in flight."""
        raise NotImplementedError

    def is_transient(self, error: Exception) -> bool:
        """Whether ``error`` (throttling, a 5xx, a lost connection) is worth another try."""
        raise NotImplementedError

    def job_id(self, spec: JobSpec, details: D) -> str:
        return spec.job_name

    def gone(self, handle: JobHandle, details: D) -> JobStatus:
        """The status of a job the service no longer knows."""
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.FAILED,
            message=f"{self.service} has no job {handle.job_id} (deleted?)",
        )

    def job_logs(self, handle: JobHandle, details: D, tail: int) -> str:
        """The last ``tail`` lines of the job's output: by default its staged ``job.log``."""
        return read_log(handle.output_uri, tail)

    # -- the template ---------------------------------------------------------------------------

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` under the retry policy."""
        return self.retry.run(lambda: function(*args), self.is_transient)

    def details(self, handle: JobHandle) -> D:
        """The handle's typed details; ``InvalidHandle`` if it is not this backend's."""
        return cast(D, self.details_type.decode(handle, self.name))

    @classmethod
    def state_of(cls, native: str) -> JobState:
        """The ``JobState`` of a native state name (an unknown one counts as running)."""
        state = cls.states.get(native) or cls.states.get(native.split("/", 1)[0])
        return state or JobState.RUNNING

    def check_owner(self, job_id: str, job: NativeJob, key: str) -> None:
        if job.key is not None and job.key != key:
            raise KeyConflict(
                f"{self.service} job {job_id} belongs to idempotency key {job.key!r}, not "
                f"{key!r}; delete it or use another key"
            )

    def submit(self, spec: JobSpec) -> JobHandle:
        """Start ``spec``'s job unless its key has one; return the handle either way."""
        request = self.prepare(spec)
        details = self.call(self.find, spec)
        if details is None:
            details = self.retry.run(
                lambda: self.create(spec, request),
                lambda error: isinstance(error, JobExists) or self.is_transient(error),
                recover=lambda: self.call(self.find, spec),
            )
        return JobHandle.for_spec(self.name, spec, details, job_id=self.job_id(spec, details))

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Every handle's status, by job id, from the service's list calls."""
        jobs = [(handle, self.details(handle)) for handle in handles]
        statuses: dict[str, JobStatus] = {}
        with self._finished_lock:
            for handle, _ in jobs:
                known = self._finished.get((handle.job_id, handle.idempotency_key))
                if known is not None:
                    statuses[handle.job_id] = known
        open_jobs = [(h, d) for h, d in jobs if h.job_id not in statuses]
        listed = self.call(self.list_jobs, open_jobs) if open_jobs else {}
        for handle, details in open_jobs:
            native = listed.get(handle.job_id)
            if native is None and not self.lists_every_job:
                native = self.call(self.get_job, handle, details)
            status = self.status(handle, details, native)
            if status.state.is_terminal:
                with self._finished_lock:
                    self._finished[(handle.job_id, handle.idempotency_key)] = status
            statuses[handle.job_id] = status
        return statuses

    def status(self, handle: JobHandle, details: D, job: NativeJob | None) -> JobStatus:
        """What ``job``, as the service describes it, means for ``handle``."""
        if job is None:
            return self.gone(handle, details)
        if job.key is not None and job.key != handle.idempotency_key:
            return JobStatus(
                job_id=handle.job_id,
                state=JobState.FAILED,
                message=f"job {handle.job_id} now belongs to idempotency key {job.key!r}",
            )
        state = self.state_of(job.state)
        if state.is_terminal:
            return finished_status(handle.job_id, state, handle.output_uri, job.message)
        return JobStatus(job_id=handle.job_id, state=state, message=job.message)

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job; a finished or gone job is left as it is (idempotent)."""
        details = self.details(handle)
        job = self.call(self.get_job, handle, details)
        if job is None or self.state_of(job.state).is_terminal:
            return
        self.check_owner(handle.job_id, job, handle.idempotency_key)
        try:
            self.call(self.stop, handle, details)
        except Exception:
            # The service may refuse to stop a job that ended meanwhile: that is success.
            job = self.call(self.get_job, handle, details)
            if job is not None and not self.state_of(job.state).is_terminal:
                raise

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's output."""
        details = self.details(handle)
        return self.job_logs(handle, details, tail) if tail > 0 else ""
