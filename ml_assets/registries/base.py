"""The registry contract: where a trained, evaluated model is handed off.

Registration is idempotent on the training job that produced the model: registering the same
job's model again returns the version already there instead of adding a duplicate.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

JOB_ID_TAG = "ml_assets.job_id"


class RegistrationRequest(BaseModel):
    """A model to register: its artifact file plus everything needed to audit it later."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    artifact_path: str
    job_id: str
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


@runtime_checkable
class ModelRegistry(Protocol):
    """Register versions, point aliases (e.g. ``champion``) at them and read them back."""

    name: str

    def register(self, request: RegistrationRequest) -> ModelVersion: ...

    def list_versions(self, model_name: str) -> list[ModelVersion]: ...

    def set_alias(self, model_name: str, version: str, alias: str) -> None: ...

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None: ...
