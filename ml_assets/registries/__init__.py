"""Model registries behind one protocol; implementations are imported only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_assets.registries.base import ModelRegistry

REGISTRIES: dict[str, str] = {
    "local": "ml_assets.registries.local:LocalRegistry",
    "mlflow": "ml_assets.registries.mlflow:MlflowRegistry",
}


def load_registry(kind: str, **settings: Any) -> ModelRegistry:
    """Instantiate the registry registered under ``kind`` with its settings."""
    try:
        target = REGISTRIES[kind]
    except KeyError:
        raise ValueError(
            f"unknown registry {kind!r}; choose one of: {', '.join(REGISTRIES)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    registry: ModelRegistry = getattr(importlib.import_module(module_name), class_name)(**settings)
    return registry
