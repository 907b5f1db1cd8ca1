"""The W&B registry under the shared contract, in offline mode: every run lands in ``tmp_path``.

W&B's own files (cache, staging, settings) are pointed at ``tmp_path`` too, and an API key in
the environment is hidden, so nothing here can reach the network or the user's W&B state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_assets.registries.base import ModelRegistry


@pytest.fixture
def wandb_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    # Imported here: the contract's conftest adopts every module-level name ending in _registry.
    from ml_assets.registries import load_registry

    home = tmp_path / "wandb-home"
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return load_registry("wandb", project="ml-assets-tests", mode="offline", dir=tmp_path / "wandb")
