"""The training-job contract shared by every compute backend.

A backend runs one training job per ``JobSpec`` and describes it afterwards with nothing but a
small JSON-serialisable ``JobHandle``. Everything the reconciling sensor knows about a job in
flight is that handle, so any process (a restarted daemon, a fresh code server) can pick the
job up again from it.

This module imports no dagster and no cloud SDK.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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


# Kubernetes object syntax (the API reference's "Object Names and IDs" and "Labels" pages): a
# label key is an optional DNS-subdomain prefix and a name; a label value is at most 63 characters.
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is no valid Kubernetes label key (``[prefix/]name``), or ``None``."""
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"{key!r} is not a valid label key: its name must be at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"{key!r} is not a valid label key: its prefix must be a DNS subdomain"
    return None


def label_problems(labels: dict[str, str]) -> str | None:
    """Every problem of a mapping of Kubernetes labels (keys and values), or ``None``."""
    problems = [
        problem
        for key, label in labels.items()
        for problem in (label_key_problem(key), label_value_problem(label))
        if problem
    ]
    return "; ".join(problems) or None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is no valid Kubernetes label value, or ``None``."""
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            f"{value!r} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


class Toleration(_Frozen):
    """A Kubernetes pod toleration, checked by the API server's rules when a team YAML loads.

    ``operator`` is ``Equal`` (the default) or ``Exists``; ``Exists`` matches any value, so it
    takes none, and an empty ``key`` (every taint) needs it. ``effect`` is empty (every effect),
    ``NoSchedule``, ``PreferNoSchedule`` or ``NoExecute``; ``tolerationSeconds`` applies only
    to ``NoExecute``.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    key: str = Field("", description="Taint key; empty: every key (needs operator Exists).")
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = Field("", description="Taint value for Equal; must be empty for Exists.")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = Field(
        None, alias="tolerationSeconds", description="How long a NoExecute taint is tolerated."
    )

    @model_validator(mode="after")
    def _api_rules(self) -> Self:
        problems = []
        if self.key and (problem := label_key_problem(self.key)):
            problems.append(f"key: {problem}")
        if not self.key and self.operator != "Exists":
            problems.append("operator: must be 'Exists' when key is empty")
        if self.operator == "Exists" and self.value:
            problems.append(f"value: must be empty when operator is 'Exists', not {self.value!r}")
        if self.operator == "Equal" and (problem := label_value_problem(self.value)):
            problems.append(f"value: {problem}")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            problems.append(
                f"tolerationSeconds: only allowed with effect 'NoExecute', not {self.effect!r}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def manifest(self) -> dict[str, Any]:
        """The toleration as it goes into a pod spec (empty fields left out)."""
        fields = {
            "key": self.key,
            "operator": self.operator,
            "value": self.value,
            "effect": self.effect,
            "tolerationSeconds": self.toleration_seconds,
        }
        return {name: value for name, value in fields.items() if value not in ("", None)}


class Resources(_Frozen):
    """What one job asks of its backend. Backends map this to their own request shapes."""

    cpu: float = Field(1.0, gt=0, description="CPU cores.")
    memory_gb: float = Field(2.0, gt=0, description="Memory in GiB.")
    gpu_count: int = Field(0, ge=0, description="Number of GPUs.")
    gpu_type: str | None = Field(
        None, description="GPU model by its short name, e.g. 't4' (or 'nvidia-tesla-t4')."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes node labels the job's pod must run on."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Kubernetes tolerations of the job's pod."
    )

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems = label_problems(value)
        if problems:
            raise ValueError(problems)
        return value


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
        cls,
        backend: str,
        spec: JobSpec,
        details: dict[str, Any] | HandleDetails,
        job_id: str | None = None,
    ) -> JobHandle:
        """The handle of ``spec``'s job on ``backend`` (its id defaults to ``spec.job_name``)."""
        if isinstance(details, HandleDetails):
            details = details.encode()
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


class InvalidHandle(ValueError):
    """A handle that does not belong to a backend, or whose details do not fit it."""


def check_backend(handle: JobHandle, backend: str) -> None:
    """Raise ``InvalidHandle`` unless ``handle`` was made by the backend named ``backend``."""
    if handle.backend != backend:
        raise InvalidHandle(
            f"job {handle.job_id} belongs to backend {handle.backend!r}, not {backend!r}"
        )


class HandleDetails(_Frozen):
    """The typed ``JobHandle.details`` of one backend: a subclass per backend names its fields.

    ``encode`` gives the JSON-ready mapping stored in the handle; ``decode`` checks that the
    handle is the backend's and validates its details, with an error naming the job and field.
    """

    def encode(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def decode(cls, handle: JobHandle, backend: str) -> Self:
        check_backend(handle, backend)
        try:
            return cls.model_validate(handle.details)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'details'}: {item['msg']}"
                for item in error.errors()
            )
            raise InvalidHandle(
                f"the handle of job {handle.job_id} does not fit the {backend} backend "
                f"({cls.__name__}): {problems}"
            ) from None


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
