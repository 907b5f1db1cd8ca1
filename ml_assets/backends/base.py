"""The training-job contract shared by every compute backend.

A backend runs one training job per ``JobSpec`` and describes it afterwards with nothing but a
small JSON-serialisable ``JobHandle``. Everything the reconciling sensor knows about a job in
flight is that handle, so any process (a restarted daemon, a fresh code server) can pick the
job up again from it.

This module imports no dagster and no cloud SDK.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    """Lifecycle of a remote job, mapped from each backend's own vocabulary."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Frozen):
    """What one job asks of its backend. Backends map this to their own request shapes."""

    cpu: float = Field(1.0, gt=0, description="CPU cores.")
    memory_gb: float = Field(2.0, gt=0, description="Memory in GiB.")
    gpu_count: int = Field(0, ge=0, description="Number of GPUs.")
    gpu_type: str | None = Field(None, description="GPU model, e.g. 'nvidia-tesla-t4'.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(default_factory=list)


class JobSpec(_Frozen):
    """Everything a backend needs to start one training job.

    ``command`` is the process to run (argv); for ml_assets' own trainers it is
    ``python -m ml_assets.training.runner``, and a team's own script for an image trainer.
    ``output_uri`` is where the job writes its artifact and its Dagster Pipes messages (and where
    the local backend keeps its log). ``env`` carries the Pipes context and message parameters.
    """

    team: str
    model: str
    command: list[str]
    output_uri: str
    idempotency_key: str
    backend: str = "local"
    resources: Resources = Field(default_factory=Resources)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    image: str | None = Field(
        None, description="The container image to run, over the backend's own default image."
    )
    staged: bool = Field(
        True,
        description="Run the command under ``ml_assets.training.stage`` (which needs ml_assets "
        "in the image). False runs it as it is: it writes to ``ML_ASSETS_OUTPUT_URI`` itself.",
    )
    working_dir: str | None = Field(
        None, description="The command's working directory (a container's workingDir)."
    )

    @property
    def job_name(self) -> str:
        """A deterministic, DNS-safe name derived from the idempotency key."""
        return job_name_for(self.team, self.model, self.idempotency_key)


class JobHandle(_Frozen):
    """A JSON-serialisable reference to a submitted job: enough to poll, cancel or re-attach."""

    backend: str
    job_id: str
    idempotency_key: str
    output_uri: str
    team: str = ""
    model: str = ""
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_spec(
        cls, backend: str, spec: JobSpec, details: dict[str, Any], job_id: str | None = None
    ) -> JobHandle:
        """The handle of ``spec``'s job on ``backend`` (its id defaults to ``spec.job_name``)."""
        return cls(
            backend=backend,
            job_id=job_id or spec.job_name,
            idempotency_key=spec.idempotency_key,
            output_uri=spec.output_uri,
            team=spec.team,
            model=spec.model,
            details=details,
        )

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str) -> JobHandle:
        return cls.model_validate_json(raw)


class JobStatus(_Frozen):
    """A point-in-time view of one job."""

    job_id: str
    state: JobState
    message: str = ""
    progress: float | None = Field(None, ge=0.0, le=1.0)
    result_uri: str | None = None


@runtime_checkable
class Backend(Protocol):
    """The contract every compute backend implements.

    - ``submit`` is idempotent: a job whose idempotency key is already known is returned, never
      started twice.
    - ``poll`` answers for many jobs at once, using the backend's list APIs rather than one call
      per job. Every handle passed in gets a status in the answer.
    - ``cancel`` is idempotent: cancelling a finished or already-cancelled job does nothing.
    - ``logs`` returns the last ``tail`` lines of the job's output.
    """

    name: str

    def submit(self, spec: JobSpec) -> JobHandle: ...

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]: ...

    def cancel(self, handle: JobHandle) -> None: ...

    def logs(self, handle: JobHandle, tail: int = 100) -> str: ...


def idempotency_key(team: str, model: str, run_id: str, attempt: int) -> str:
    """The key that makes a submission repeatable: the same run and attempt give the same job."""
    return f"{team}/{model}/{run_id}/{attempt}"


def job_name_for(team: str, model: str, key: str) -> str:
    """A short, deterministic, DNS-1123 name (lower case, digits, '-'; at most 63 characters)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = f"{team}-{model}".lower().replace("_", "-")
    stem = "".join(c for c in stem if c.isalnum() or c == "-").strip("-")[:48]
    return f"{stem}-{digest}"
