"""Compute backends: one module per backend behind the ``Backend`` protocol in ``base``.

``BACKENDS`` maps the name a team writes in its YAML to the class that implements it. Classes
are imported only when a backend is actually used, so a team location never pays for SDKs it
does not use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_assets.plugins import load_plugin

if TYPE_CHECKING:
    from ml_assets.backends.base import Backend

BACKENDS: dict[str, str] = {
    "local": "ml_assets.backends.local:LocalBackend",
}


def load_backend(name: str, **settings: Any) -> Backend:
    """Instantiate the backend registered under ``name`` with its settings."""
    backend: Backend = load_plugin(BACKENDS, name, "backend", **settings)
    return backend
