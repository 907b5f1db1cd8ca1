"""The registry contract: where a trained, evaluated model is handed off.

Registration is idempotent on the training job that produced the model: registering the same
job's model again returns the version already there instead of adding a duplicate.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class RegistrationRequest(BaseModel):
    """A model to register: its artifact file plus everything needed to audit it later."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    artifact_path: str
    job_id: str
    flavour: str = Field(
        "joblib",
        description="What the artifact is: joblib (a bundle the runner saved), file, or folder "
        "(a tar of it); a non-joblib artifact is scored through the team's predict function.",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)


class ModelVersion(BaseModel):
    """One registered version of a model."""

    model_config = ConfigDict(frozen=True)

    registry: str
    model_name: str
    version: str
    uri: str
    job_id: str
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    notes: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON values added after registration with ``annotate`` (e.g. the "
        "promotion decision), keyed by name.",
    )


# The aliases the promotion flow moves. A registry without aliases maps them to its own notion
# of stage (e.g. SageMaker's approval status for PRODUCTION).
CHALLENGER = "challenger"
PRODUCTION = "production"
ARCHIVED = "archived"


@runtime_checkable
class ModelRegistry(Protocol):
    """Register versions, point aliases (``challenger``, ``production``...) at them, read back.

    - ``register`` is idempotent on ``request.job_id``.
    - ``list_versions`` returns versions oldest first; versions are numbered "1", "2"...
    - An alias names at most one version of a model; ``set_alias`` moves it.
    - ``annotate`` merges ``notes`` into a version's notes (a later value for a name wins).
    """

    name: str

    def register(self, request: RegistrationRequest) -> ModelVersion: ...

    def list_versions(self, model_name: str) -> list[ModelVersion]: ...

    def get_version(self, model_name: str, version: str) -> ModelVersion | None: ...

    def set_alias(self, model_name: str, version: str, alias: str) -> None: ...

    def delete_alias(self, model_name: str, alias: str) -> None: ...

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None: ...

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None: ...
