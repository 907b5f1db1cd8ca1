"""Compute backends: one module per backend behind the ``Backend`` protocol in ``base``.

``BACKENDS`` maps the name a team writes in its YAML to the ``BackendSettings`` class that
validates the backend's settings and builds it; a location holds each backend as a
``BackendResource`` (``<name>_backend``). Modules are imported only when a backend is used, and
each SDK only inside its backend, so a team location never pays for SDKs it does not use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_assets.plugins import plugin_class

if TYPE_CHECKING:
    from ml_assets.backends.base import Backend
    from ml_assets.backends.resource import BackendResource
    from ml_assets.backends.settings import BackendSettings

BACKENDS: dict[str, str] = {
    "local": "ml_assets.backends.settings:LocalSettings",
    "kubernetes": "ml_assets.backends.kubernetes:KubernetesSettings",
    "sagemaker": "ml_assets.backends.sagemaker:SageMakerSettings",
    "vertex": "ml_assets.backends.vertex:VertexSettings",
    "databricks": "ml_assets.backends.databricks:DatabricksSettings",
}


def backend_settings(name: str, settings: dict[str, Any] | None = None) -> BackendSettings:
    """Backend ``name``'s settings from its YAML, checked without reading the environment: an
    ``{env: X}`` value stands as the name ``X``.

    Raises pydantic's ``ValidationError`` for settings that do not fit the backend.
    """
    from ml_assets.backends.settings import with_env_refs

    cls = plugin_class(BACKENDS, name, "backend")
    checked: BackendSettings = cls(**with_env_refs(settings or {}))
    return checked


def configured_settings(name: str, settings: dict[str, Any] | None = None) -> BackendSettings:
    """Backend ``name``'s settings with every ``{env: X}`` read from the environment."""
    from ml_assets.backends.settings import with_env_values

    cls = plugin_class(BACKENDS, name, "backend")
    configured: BackendSettings = cls(**with_env_values(settings or {}, f"backends.{name}"))
    return configured


def backend_resource(name: str, settings: dict[str, Any] | None = None) -> BackendResource:
    """The Dagster resource of backend ``name``, holding its YAML settings as written."""
    from ml_assets.backends.resource import BackendResource

    return BackendResource(backend=name, settings=dict(settings or {}))


def backend_resource_key(name: str) -> str:
    """The resource key under which a location holds backend ``name``."""
    return f"{name}_backend"


def backend_resource_keys(names: list[str]) -> set[str]:
    """The resource keys of backends ``names``: what a step or sensor that may use any of them
    requires."""
    return {backend_resource_key(name) for name in names}


def resource_backend(resources: Any, name: str) -> Backend:
    """Backend ``name`` built from a Dagster context's ``<name>_backend`` resource."""
    key = backend_resource_key(name)
    resource: BackendResource | None = getattr(resources, key, None)
    if resource is None:
        raise KeyError(f"no {key} resource here: the team may not use the {name} backend")
    return resource.get_backend()


def load_backend(name: str, settings: dict[str, Any] | None = None) -> Backend:
    """The ready-to-use backend ``name``, its ``{env: X}`` settings read from the environment."""
    return configured_settings(name, settings).get_backend()
