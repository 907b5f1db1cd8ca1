"""The screening team's training script is standalone: it imports no ml_assets (nor dagster),
only the standard library, dagster_pipes, numpy and pyarrow, and keeps the job contract alone.

Checked twice: statically, every import statement in the file; and at run time, with
``python -X importtime``, every module the running script loaded, which also catches an import
made indirectly by one of its dependencies.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.teams.screening.predict import malignancy_probability
from ml_assets.training.messages import (
    JobReport,
    MessagesLocation,
    fold,
    pipes_context,
    pipes_env,
    read_new,
)

FOLDER = Path(__file__).parents[2] / "ml_assets" / "teams" / "screening"
SCRIPT = FOLDER / "train.py"
ALLOWED = {"dagster_pipes", "numpy", "pyarrow"}
EPOCHS = 25


def _imported_modules(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            assert node.module is not None
            found.add(node.module)
    return found


def test_every_import_in_the_script_is_stdlib_dagster_pipes_numpy_or_pyarrow() -> None:
    modules = _imported_modules(ast.parse(SCRIPT.read_text()))
    tops = {name.split(".")[0] for name in modules}
    assert {"dagster_pipes", "numpy", "pyarrow"} <= tops
    foreign = sorted(t for t in tops - ALLOWED if t not in sys.stdlib_module_names)
    assert foreign == [], f"train.py imports {foreign}"


def _features(tmp_path: Path) -> tuple[Path, str, pa.Table]:
    """A small features file as the platform writes them: row_id, features, label, split."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(240, 3))
    label = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=240) > 0).astype(np.int8)
    table = pa.table(
        {
            "row_id": np.arange(240, dtype=np.int64),
            "radius": x[:, 0] * 3 + 14,
            "texture": x[:, 1] * 4 + 19,
            "noise": x[:, 2],
            "label": label,
            "split": ["holdout" if i % 4 == 0 else "train" for i in range(240)],
        }
    )
    path = tmp_path / "features.parquet"
    pq.write_table(table, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), table


def _run(
    tmp_path: Path, features: Path, data_version: str
) -> tuple[subprocess.CompletedProcess[str], JobReport, Path]:
    """The script run as the local backend runs it: ``python train.py`` in the team folder,
    with the Pipes context, the messages file and the output folder in its environment."""
    output = tmp_path / "output"
    output.mkdir()
    extras = {
        "trainer": None,
        "hyperparameters": {"epochs": EPOCHS, "batch_size": 32},
        "seed": 3,
        "task": "binary",
        "features_uri": str(features),
        "features_data_version": data_version,
        "label": "label",
    }
    context = pipes_context(["screening", "malignancy_screen"], "run-1", 0, extras)
    messages = output / "messages.jsonl"
    env = {
        **pipes_env(context, {"path": str(messages)}),
        "ML_ASSETS_OUTPUT_URI": str(output),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "train.py"],
        cwd=FOLDER,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    batch = read_new(MessagesLocation("file", str(messages)), 0, final=True)
    return done, fold(None, batch.messages), output


def test_the_script_trains_reports_and_writes_its_artifact_without_ml_assets(
    tmp_path: Path,
) -> None:
    features, version, table = _features(tmp_path)
    done, report, output = _run(tmp_path, features, version)
    assert done.returncode == 0, done.stderr[-3000:]

    # Nothing from ml_assets or dagster was loaded in the running script.
    loaded = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "numpy" in loaded and "dagster_pipes" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("ml_assets", "dagster")) == []

    # What the platform reads: progress per epoch, the device, logs, one materialization.
    assert report.closed and report.exception is None and report.problems == []
    assert [entry["step"] for entry in report.history] == list(range(1, EPOCHS + 1))
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert report.progress == pytest.approx(0.95) and report.device == "cpu"
    assert any("training rows" in line for line in report.logs)
    assert report.materializations == 1 and report.materialization is not None
    assert report.materialization["data_version"] == version
    metadata = report.materialization["metadata"]
    assert metadata["artifact"] == "model.npz" and metadata["device"] == "cpu"
    for name in ("loss", "accuracy", "roc_auc"):
        assert isinstance(metadata[name], float), name
    assert metadata["roc_auc"] > 0.9

    # The artifact scores without the script: the team's predict function reads it alone.
    artifact = output / "model.npz"
    with np.load(artifact, allow_pickle=False) as saved:
        assert list(saved["columns"]) == ["radius", "texture", "noise"]
    frame = table.to_pandas()
    holdout = frame[frame["split"] == "holdout"]
    scores = malignancy_probability(artifact, holdout.drop(columns=["label", "split", "row_id"]))
    assert scores.shape == (len(holdout),) and ((scores >= 0) & (scores <= 1)).all()
    assert ((scores >= 0.5) == (holdout["label"] == 1)).mean() > 0.85
    with pytest.raises(ValueError, match="missing model columns: noise"):
        malignancy_probability(artifact, holdout[["radius", "texture"]])


def test_the_script_refuses_features_that_are_not_the_version_it_was_given(
    tmp_path: Path,
) -> None:
    features, version, _ = _features(tmp_path)
    done, report, output = _run(tmp_path, features, "0" * 64)
    assert done.returncode != 0
    assert report.closed and report.exception is not None
    assert f"has sha256 {version}, not the version {'0' * 64}" in report.exception
    assert report.materialization is None and not (output / "model.npz").exists()
