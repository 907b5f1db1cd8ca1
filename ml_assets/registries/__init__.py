"""Model registries behind one protocol; implementations are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_assets.plugins import load_plugin

if TYPE_CHECKING:
    from ml_assets.registries.base import ModelRegistry

REGISTRIES: dict[str, str] = {
    "local": "ml_assets.registries.local:LocalRegistry",
    "mlflow": "ml_assets.registries.mlflow:MlflowRegistry",
}


def load_registry(kind: str, **settings: Any) -> ModelRegistry:
    """Instantiate the registry registered under ``kind`` with its settings."""
    registry: ModelRegistry = load_plugin(REGISTRIES, kind, "registry", **settings)
    return registry
