"""Where ml_assets keeps its files: datasets, features, job outputs and the local registry.

One root for everything, so that the platform location, the team locations, the training jobs
and the reconciling sensor all agree without passing paths around. ``ML_ASSETS_HOME`` wins;
otherwise the files live beside the Dagster instance that records them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOME_ENV = "ML_ASSETS_HOME"


def home(instance: Any | None = None) -> Path:
    """The storage root: ``$ML_ASSETS_HOME``, else ``<instance root>/ml_assets``.

    Without an instance (a command-line tool), the instance root is ``$DAGSTER_HOME``.
    """
    configured = os.environ.get(HOME_ENV)
    if configured:
        root = Path(configured).expanduser()
    elif instance is not None:
        root = Path(instance.root_directory) / "ml_assets"
    elif os.environ.get("DAGSTER_HOME"):
        root = Path(os.environ["DAGSTER_HOME"]).expanduser() / "ml_assets"
    else:
        root = Path.cwd() / ".ml_assets"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def asset_file(root: Path, key_path: Sequence[str], run_id: str, suffix: str = ".parquet") -> Path:
    """A per-run file for one asset, so a job reading an older version never sees it change."""
    directory = root.joinpath(*key_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{run_id}{suffix}"
