"""Compute backends: one module per backend behind the ``Backend`` protocol in ``base``.

``BACKENDS`` maps the name a team writes in its YAML to the class that implements it. Classes
are imported only when a backend is actually used, so a team location never pays for SDKs it
does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_assets.backends.base import Backend

BACKENDS: dict[str, str] = {
    "local": "ml_assets.backends.local:LocalBackend",
}


def load_backend(name: str, **settings: Any) -> Backend:
    """Instantiate the backend registered under ``name`` with its settings."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class(**settings)
    return backend
