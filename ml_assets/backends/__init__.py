"""Compute backends: one module per backend behind the ``Backend`` protocol in ``base``.

``BACKENDS`` maps the name a team writes in its YAML to the ``BackendResource`` that holds the
backend's typed settings and builds it. Modules are imported only when a backend is used, and
each SDK only inside its backend, so a team location never pays for SDKs it does not use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_assets.plugins import plugin_class

if TYPE_CHECKING:
    from ml_assets.backends.base import Backend
    from ml_assets.backends.resource import BackendResource

BACKENDS: dict[str, str] = {
    "local": "ml_assets.backends.resource:LocalBackendResource",
    "kubernetes": "ml_assets.backends.kubernetes:KubernetesBackendResource",
    "sagemaker": "ml_assets.backends.sagemaker:SageMakerBackendResource",
    "vertex": "ml_assets.backends.vertex:VertexBackendResource",
    "databricks": "ml_assets.backends.databricks:DatabricksBackendResource",
}


def backend_resource(name: str, settings: dict[str, Any] | None = None) -> BackendResource:
    """The resource for backend ``name`` from its YAML settings (``{env: X}`` → ``EnvVar``).

    Raises pydantic's ``ValidationError`` for settings that do not fit the backend.
    """
    from ml_assets.backends.resource import with_env_vars

    cls = plugin_class(BACKENDS, name, "backend")
    resource: BackendResource = cls(**with_env_vars(settings or {}))
    return resource


def backend_resource_key(name: str) -> str:
    """The resource key under which a location holds backend ``name``."""
    return f"{name}_backend"


def resource_backend(resources: Any, name: str) -> Backend:
    """Backend ``name`` built from a Dagster context's ``<name>_backend`` resource."""
    key = backend_resource_key(name)
    resource: BackendResource | None = getattr(resources, key, None)
    if resource is None:
        raise KeyError(f"no {key} resource here: the team may not use the {name} backend")
    return resource.get_backend()


def load_backend(name: str, settings: dict[str, Any] | None = None) -> Backend:
    """The ready-to-use backend ``name``, its ``{env: X}`` settings read from the environment."""
    return configured_resource(name, settings).get_backend()


def configured_resource(name: str, settings: dict[str, Any] | None = None) -> BackendResource:
    """The resource for backend ``name`` with environment variables already read."""
    from ml_assets.backends.resource import with_env_values

    cls = plugin_class(BACKENDS, name, "backend")
    resource: BackendResource = cls(**with_env_values(settings or {}, f"backends.{name}"))
    return resource
