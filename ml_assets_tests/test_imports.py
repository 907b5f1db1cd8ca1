"""What each module pulls in at import, checked in a fresh interpreter.

Dagster re-imports a code location for every run and step, so locations and the modules they
load must not import ML or cloud SDKs; the job runner runs inside compute jobs, which have no
dagster (only ``dagster_pipes``) and need no cloud SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_assets.training.messages import messages_params, pipes_context, pipes_env
from ml_assets.training.runner import OUTPUT_ENV

ROOT = Path(__file__).parents[1]
ML_LIBRARIES = [
    "numpy",
    "pandas",
    "pyarrow",
    "polars",
    "sklearn",
    "matplotlib",
    "joblib",
    "mlflow",
    "torch",
]
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
LOCATIONS = [
    "ml_assets.platform_data.definitions",
    *(
        f"ml_assets.teams.{folder.name}.definitions"
        for folder in sorted((ROOT / "ml_assets" / "teams").iterdir())
        if (folder / "definitions.py").exists() and (folder / "team.yaml").exists()
    ),
]


def imported(
    module: str, candidates: list[str], env: dict[str, str] | None = None, then: str = ""
) -> list[str]:
    """Which of ``candidates`` are in ``sys.modules`` after importing ``module`` afresh (and
    running ``then``)."""
    code = (
        f"import json, sys, {module}\n{then}\n"
        f"print(json.dumps([m for m in {candidates!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    found: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize(
    "module",
    [
        "ml_assets.features",
        "ml_assets.tables",
        "ml_assets.references",
        "ml_assets.evaluation",
        "ml_assets.platform_data.sources",
        "ml_assets.teams.spec",
        "ml_assets.training.builtin",
        "ml_assets.training.runner",
        "ml_assets.training.messages",
        "ml_assets.backends.base",
        "ml_assets.backends.local",
    ],
)
def test_light_modules_import_neither_ml_libraries_nor_dagster(module: str) -> None:
    assert imported(module, [*ML_LIBRARIES, "dagster", *CLOUD_SDKS]) == []


@pytest.mark.parametrize("module", ["ml_assets.training.runner", "ml_assets.training.messages"])
def test_the_job_side_modules_import_no_dagster_and_no_cloud_sdk(module: str) -> None:
    assert imported(module, ["dagster", *CLOUD_SDKS]) == []


def test_a_whole_training_run_imports_no_dagster_and_no_cloud_sdk(tmp_path: Path) -> None:
    features = tmp_path / "features.parquet"
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    pd.DataFrame(
        {
            "row_id": np.arange(60, dtype=np.int64),
            "x": x,
            "label": (x > 0).astype(np.int8),
            "split": ["holdout" if i % 4 == 0 else "train" for i in range(60)],
        }
    ).to_parquet(features, index=False)
    output = tmp_path / "out"
    extras = {
        "trainer": "ml_assets.training.builtin:logistic_regression",
        "task": "binary",
        "features_uri": str(features),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES_")}
    env.update(
        pipes_env(pipes_context(["t", "m"], "r", 0, extras), messages_params(str(output), False))
    )
    env[OUTPUT_ENV] = str(output)
    found = imported(
        "ml_assets.training.runner",
        ["dagster", *CLOUD_SDKS, "sklearn", "dagster_pipes"],
        env=env,
        then="assert ml_assets.training.runner.main() == 0",
    )
    # The run needs scikit-learn and dagster_pipes, and nothing of Dagster or any cloud.
    assert found == ["sklearn", "dagster_pipes"]
    assert (output / "model.joblib").is_file()


@pytest.mark.parametrize("module", LOCATIONS)
def test_code_locations_import_no_ml_library_or_sdk(module: str) -> None:
    assert imported(module, [*ML_LIBRARIES, *CLOUD_SDKS]) == []


def test_every_shipped_location_is_checked() -> None:
    assert {
        "ml_assets.platform_data.definitions",
        "ml_assets.teams.clinical.definitions",
        "ml_assets.teams.fraud.definitions",
        "ml_assets.teams.vision.definitions",
        "ml_assets.teams.wine.definitions",
    } <= set(LOCATIONS)


DEV_ONLY = ["ml_assets_testing", "moto", "gcp_storage_emulator", "pytest", "playwright"]


def test_no_shipped_module_imports_a_dev_only_package() -> None:
    """Every module of the wheel, imported together, pulls in nothing of the testing kit."""
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "ml_assets").rglob("*.py")
    )
    assert "ml_assets.backends.kubernetes" in modules and len(modules) > 40
    then = "\n".join(f"import {module}" for module in modules)
    assert imported("ml_assets", DEV_ONLY, then=then) == []


def test_the_wheel_holds_neither_the_testing_kit_nor_the_tests() -> None:
    import tomllib

    import setuptools

    rules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = setuptools.find_packages(str(ROOT), **rules["packages"]["find"])
    assert "ml_assets.backends" in found
    assert not [
        name for name in found if not (name == "ml_assets" or name.startswith("ml_assets."))
    ]
