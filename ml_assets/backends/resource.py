"""A compute backend as a Dagster resource: ``<name>_backend`` in a team's location.

The resource holds the backend's name and its settings as the team's YAML writes them, an
``{env: NAME}`` value included as written: the UI shows which variable a setting reads, never
its value. The settings are validated by the backend's ``BackendSettings`` class when the spec
loads, and the environment is read only when a step or sensor builds the backend
(``get_backend``), by ``with_env_values``, the one reader of ``{env:}`` values.

A test or a deployment swaps a backend by giving the location another resource under the same
key: any resource with ``get_backend()`` (and ``storage_root``) serves.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, model_validator

from ml_assets.backends.base import Backend


class BackendResource(dg.ConfigurableResource):
    """One compute backend: its name in ``ml_assets.backends.BACKENDS`` and its settings."""

    backend: str = Field(description="The backend's name, e.g. kubernetes.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The team's backends.<name> section as written; {env: NAME} is read when "
        "the backend is built.",
    )

    @model_validator(mode="after")
    def _settings_fit(self) -> BackendResource:
        from ml_assets.backends import backend_settings

        backend_settings(self.backend, self.settings)  # a ValidationError naming the setting
        return self

    def get_backend(self) -> Backend:
        from ml_assets.backends import configured_settings

        return configured_settings(self.backend, self.settings).get_backend()

    @property
    def storage_root(self) -> str | None:
        """Where the backend keeps job inputs and outputs, if it has object storage."""
        from ml_assets.backends import configured_settings

        root = getattr(configured_settings(self.backend, self.settings), "storage_root", None)
        return str(root) if root else None
