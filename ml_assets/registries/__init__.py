"""Model registries behind one protocol; implementations are imported only when used."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_assets.plugins import load_plugin, plugin_class

if TYPE_CHECKING:
    from ml_assets.registries.base import ModelRegistry

REGISTRIES: dict[str, str] = {
    "local": "ml_assets.registries.local:LocalRegistry",
    "mlflow": "ml_assets.registries.mlflow:MlflowRegistry",
    "wandb": "ml_assets.registries.wandb:WandbRegistry",
    "sagemaker": "ml_assets.registries.sagemaker:SageMakerRegistry",
}


def load_registry(kind: str, **settings: Any) -> ModelRegistry:
    """Instantiate the registry registered under ``kind`` with its settings."""
    registry: ModelRegistry = load_plugin(REGISTRIES, kind, "registry", **settings)
    return registry


def setting_names(kind: str) -> list[str]:
    """The keyword settings registry ``kind`` accepts (for validating a team's YAML)."""
    parameters = inspect.signature(plugin_class(REGISTRIES, kind, "registry")).parameters
    return [name for name in parameters if name != "self"]


def default_settings(kind: str, team: str, home: Path) -> dict[str, Any]:
    """Settings a team gets without writing them: local stores under ``home``."""
    if kind == "local":
        return {"root": home / "registry"}
    if kind == "mlflow":
        mlflow_dir = home / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        return {
            "tracking_uri": f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "artifact_root": mlflow_dir / "artifacts",
        }
    if kind == "wandb":
        return {"project": f"ml-assets-{team}", "dir": home / "wandb"}
    return {}


def team_registry(kind: str, settings: dict[str, Any], team: str, home: Path) -> ModelRegistry:
    """A team's registry: the YAML's settings over the defaults for ``kind``."""
    merged = {**default_settings(kind, team, home), **settings}
    if kind == "mlflow" and "tracking_uri" in settings and "artifact_root" not in settings:
        merged.pop("artifact_root")  # a server or its own store decides where artifacts go
    return load_registry(kind, **merged)
