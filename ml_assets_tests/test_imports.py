"""What each module pulls in at import, checked in a fresh interpreter.

Dagster re-imports a code location for every run and step, so locations and the modules they
load must not import ML or cloud SDKs; the training entrypoint runs inside compute jobs, which
have no dagster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ML_LIBRARIES = ["numpy", "pandas", "pyarrow", "sklearn", "matplotlib", "joblib", "mlflow", "torch"]
# google-cloud-aiplatform installs a .pth that imports the empty `google.cloud` namespace at
# start-up, so the SDKs themselves are named.
CLOUD_SDKS = [
    "boto3",
    "kubernetes",
    "google.cloud.storage",
    "google.cloud.aiplatform",
    "databricks.sdk",
    "wandb",
]


def imported(module: str, candidates: list[str]) -> list[str]:
    """Which of ``candidates`` are in ``sys.modules`` after importing ``module`` afresh."""
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps([m for m in {candidates!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    found: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize(
    "module",
    [
        "ml_assets.datasets",
        "ml_assets.features",
        "ml_assets.evaluation",
        "ml_assets.training.trainers",
        "ml_assets.backends.base",
        "ml_assets.backends.local",
    ],
)
def test_light_modules_import_neither_ml_libraries_nor_dagster(module: str) -> None:
    assert imported(module, [*ML_LIBRARIES, "dagster", *CLOUD_SDKS]) == []


def test_the_training_entrypoint_imports_no_dagster_and_no_cloud_sdk() -> None:
    assert imported("ml_assets.training.entrypoint", ["dagster", *CLOUD_SDKS]) == []


@pytest.mark.parametrize(
    "module",
    [
        "ml_assets.platform_data.definitions",
        "ml_assets.teams.fraud.definitions",
        "ml_assets.teams.clinical.definitions",
        "ml_assets.teams.vision.definitions",
    ],
)
def test_code_locations_import_no_ml_library_or_sdk(module: str) -> None:
    assert imported(module, [*ML_LIBRARIES, *CLOUD_SDKS]) == []
