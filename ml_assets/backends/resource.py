"""Backends as Dagster resources: typed settings from a team's YAML, secrets only via EnvVar.

A team's ``backends:`` section holds one mapping per backend; each is validated by that
backend's ``BackendResource`` subclass when the location loads, and a value written as
``{env: NAME}`` becomes ``dg.EnvVar("NAME")``, read from the environment only when the backend
is built, so it never appears in the YAML, the UI or metadata.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ml_assets.backends.base import Backend


class BackendResource(dg.ConfigurableResource):
    """Settings of one compute backend. ``get_backend`` builds the ``Backend`` object."""

    def get_backend(self) -> Backend:
        raise NotImplementedError


class LocalBackendResource(BackendResource):
    """Jobs as detached processes on the machine that runs the Dagster step."""

    python_executable: str | None = None
    start_timeout_s: float = 10.0
    cancel_grace_s: float = 5.0

    def get_backend(self) -> Backend:
        from ml_assets.backends.local import LocalBackend

        return LocalBackend(
            python_executable=self.python_executable,
            start_timeout_s=self.start_timeout_s,
            cancel_grace_s=self.cancel_grace_s,
        )


def with_env_vars(value: Any) -> Any:
    """Turn every ``{env: NAME}`` mapping in a YAML value into ``dg.EnvVar("NAME")``."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return dg.EnvVar(value["env"])
        return {key: with_env_vars(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_env_vars(item) for item in value]
    return value


def initialized(resource: BackendResource) -> BackendResource:
    """The resource with its EnvVar fields read from the environment."""
    ready: BackendResource = resource.process_config_and_initialize()
    return ready
