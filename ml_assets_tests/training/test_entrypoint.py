"""Tests for the training entrypoint, run both in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ml_assets.datasets import file_sha256, load_breast_cancer
from ml_assets.evaluation import load_model, predict_scores
from ml_assets.features import build_features, feature_columns
from ml_assets.training.entrypoint import RESULT_FILE, main, parse_job, run_job

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_KEYS = {
    "metrics",
    "artifact_uri",
    "data_version",
    "features_uri",
    "trainer",
    "hyperparameters",
    "seed",
    "feature_columns",
    "rows_train",
    "rows_holdout",
    "duration_seconds",
}


def _python(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )


def _job(
    features: Path, output: Path, trainer: str = "logistic_regression", **extra: object
) -> dict:
    return {
        "trainer": trainer,
        "hyperparameters": {"C": 0.5},
        "features_uri": str(features),
        "output_uri": str(output),
        "seed": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def features_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("features") / "features.parquet"
    build_features("clinical_measurements", load_breast_cancer(), 0.2, seed=0).to_parquet(path)
    return path


def test_subprocess_run_writes_model_result_and_progress(
    features_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "nested"
    completed = _python(
        "-m", "ml_assets.training.entrypoint", "--job", json.dumps(_job(features_path, output))
    )
    assert completed.returncode == 0, completed.stderr
    assert "100%" in completed.stdout and "loaded" in completed.stdout

    result = json.loads((output / RESULT_FILE).read_text())
    assert set(result) == RESULT_KEYS
    assert result["data_version"] == file_sha256(features_path)
    assert result["artifact_uri"] == str(output / "model.joblib")
    assert (result["trainer"], result["hyperparameters"], result["seed"]) == (
        "logistic_regression", {"C": 0.5}, 1,
    )  # fmt: skip
    frame = pd.read_parquet(features_path)
    assert result["rows_train"] == int((frame["split"] == "train").sum())
    assert result["rows_holdout"] == int((frame["split"] == "holdout").sum())
    assert result["feature_columns"] == feature_columns(frame)
    assert set(result["metrics"]) == {"train_roc_auc", "train_accuracy", "train_log_loss"}
    assert 0.95 < result["metrics"]["train_roc_auc"] <= 1.0
    assert 0.0 < result["metrics"]["train_log_loss"] < 0.3
    assert result["duration_seconds"] >= 0

    progress = json.loads((output / "progress.json").read_text())
    assert progress["fraction"] == 1.0 and progress["message"].startswith("done")
    assert [p.name for p in output.iterdir() if p.name.startswith(".")] == []  # no temp files

    model = load_model(result["artifact_uri"])
    holdout = frame[frame["split"] == "holdout"]
    scores = predict_scores(model, holdout)
    assert ((scores >= 0.5) == holdout["label"].to_numpy()).mean() > 0.9


def test_subprocess_invalid_hyperparameter_fails_without_result(
    features_path: Path, tmp_path: Path
) -> None:
    job = _job(
        features_path, tmp_path, trainer="hist_gradient_boosting", hyperparameters={"max_iter": -1}
    )
    completed = _python("-m", "ml_assets.training.entrypoint", "--job", json.dumps(job))
    assert completed.returncode != 0
    assert "InvalidParameterError" in completed.stderr and "'max_iter'" in completed.stderr
    assert not (tmp_path / RESULT_FILE).exists()
    assert json.loads((tmp_path / "progress.json").read_text())["message"].startswith("failed")


def test_run_job_in_process_is_reproducible(features_path: Path, tmp_path: Path) -> None:
    job = _job(
        features_path, tmp_path / "a", trainer="random_forest", hyperparameters={"n_estimators": 8}
    )
    first = run_job(job)
    assert first == json.loads((tmp_path / "a" / RESULT_FILE).read_text())
    second = run_job({**job, "output_uri": str(tmp_path / "b")})
    assert first["metrics"] == second["metrics"]
    third = run_job({**job, "output_uri": str(tmp_path / "c"), "seed": 2})
    assert third["metrics"] != first["metrics"]


def test_failed_retry_removes_earlier_result(features_path: Path, tmp_path: Path) -> None:
    assert main(["--job", json.dumps(_job(features_path, tmp_path))]) == 0
    assert (tmp_path / RESULT_FILE).exists()
    failing = _job(features_path, tmp_path, hyperparameters={"C": -1.0})
    assert main(["--job", json.dumps(failing)]) == 1
    assert not (tmp_path / RESULT_FILE).exists()


def test_single_class_training_rows_are_an_error(tmp_path: Path) -> None:
    frame = build_features("clinical_measurements", load_breast_cancer())
    path = tmp_path / "benign.parquet"
    frame[frame["label"] == 0].to_parquet(path)
    with pytest.raises(ValueError, match="both classes"):
        run_job(_job(path, tmp_path / "out"))
    assert not (tmp_path / "out" / RESULT_FILE).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hyperparameter": {}}, "unknown keys: hyperparameter"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"hyperparameters": [1]}, "hyperparameters must be an object"),
        ({"output_uri": "s3://bucket/out"}, "not a local path"),
    ],
)
def test_bad_job_documents(tmp_path: Path, change: dict, message: str) -> None:
    job = {**_job(tmp_path / "features.parquet", tmp_path / "out"), **change}
    with pytest.raises(ValueError, match=message):
        run_job(job)


def test_missing_keys_and_non_object_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ML_ASSETS_OUTPUT_URI", raising=False)
    with pytest.raises(ValueError, match="missing required keys: features_uri, output_uri"):
        parse_job({"trainer": "random_forest"})
    with pytest.raises(ValueError, match="JSON object"):
        parse_job(["trainer"])
    assert parse_job({"trainer": "t", "features_uri": "/f", "output_uri": "/o"})["seed"] == 0
    monkeypatch.setenv("ML_ASSETS_OUTPUT_URI", "/from/backend")
    assert parse_job({"trainer": "t", "features_uri": "/f"})["output_uri"] == "/from/backend"
    explicit = {"trainer": "t", "features_uri": "/f", "output_uri": "/o"}
    assert parse_job(explicit)["output_uri"] == "/o"


def test_main_rejects_malformed_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--job", "{not json"]) == 1
    assert "JSONDecodeError" in capsys.readouterr().err
