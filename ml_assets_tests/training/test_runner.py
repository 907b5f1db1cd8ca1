"""The library's job runner (``python -m ml_assets.training.runner``), run for real.

Each test starts the runner as a subprocess with the Dagster Pipes environment a backend gives
a job (``pipes_env`` over ``pipes_context`` and ``messages_params``) on a small features file,
then reads back what the job reported through Pipes, as the reconciling sensor does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_assets.evaluation import load_model, predict
from ml_assets.features import assign_split
from ml_assets.tables import file_sha256
from ml_assets.training.messages import (
    JobReport,
    fold,
    messages_location,
    messages_params,
    pipes_context,
    pipes_env,
    read_new,
)
from ml_assets.training.runner import ARTIFACT_DIR, MODEL_FILE, OUTPUT_ENV

ASSET_KEY = ["team_x", "model_y"]


@dataclass
class RunnerResult:
    """A finished runner: its exit status, output folder, Pipes report and output streams."""

    returncode: int
    output: Path
    report: JobReport
    messages: list[dict[str, Any]]
    stdout: str
    stderr: str

    @property
    def metadata(self) -> dict[str, Any]:
        assert self.report.materialization is not None, self.stderr
        metadata: dict[str, Any] = self.report.materialization["metadata"]
        return metadata

    @property
    def methods(self) -> list[str]:
        return [str(message["method"]) for message in self.messages]


def run_runner(
    features_path: Path,
    output: Path,
    trainer: str,
    *,
    task: str = "binary",
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
    pythonpath: Sequence[Path] = (),
    timeout: float = 300,
) -> RunnerResult:
    """Run the runner on ``features_path`` as a backend would, writing to ``output``."""
    extras = {
        "trainer": trainer,
        "hyperparameters": hyperparameters or {},
        "seed": seed,
        "task": task,
        "features_uri": str(features_path),
        "features_data_version": file_sha256(features_path),
        "label": "label",
    }
    context = pipes_context(ASSET_KEY, "run-123", 0, extras, code_version="7")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DAGSTER_PIPES_") and key != OUTPUT_ENV
    }
    env.update(pipes_env(context, messages_params(str(output), staged=False)))
    env[OUTPUT_ENV] = str(output)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [*(str(p) for p in pythonpath), env.get("PYTHONPATH", "")]
        )
    completed = subprocess.run(
        [sys.executable, "-m", "ml_assets.training.runner"],
        capture_output=True,
        text=True,
        env=env,
        cwd=output.parent,
        timeout=timeout,
    )
    batch = read_new(messages_location(str(output), False), 0, final=True)
    assert batch.problems == [], batch.problems
    return RunnerResult(
        returncode=completed.returncode,
        output=output,
        report=fold(None, batch.messages),
        messages=batch.messages,
        stdout=completed.stdout,
        stderr=completed.stderr,
    )


def write_features(
    path: Path, labels: np.ndarray, features: np.ndarray, holdout_fraction: float = 0.25
) -> pd.DataFrame:
    """A features file as the features asset writes it: row_id, features, label, split."""
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    frame.insert(0, "row_id", np.arange(100, 100 + len(frame), dtype=np.int64))
    frame["label"] = labels
    frame["split"] = assign_split(frame["row_id"], holdout_fraction, seed=0).to_numpy()
    frame.to_parquet(path, index=False)
    return frame


@pytest.fixture
def binary_features(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    labels = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(np.int8)
    path = tmp_path / "features.parquet"
    return path, write_features(path, labels, x)


@pytest.fixture
def multiclass_features(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    classes = rng.integers(0, 3, size=300)
    x = centres[classes] + rng.normal(scale=0.6, size=(300, 2))
    labels = np.array(["north", "east", "west"], dtype=object)[classes]
    path = tmp_path / "features.parquet"
    return path, write_features(path, labels, x)


TEAM_CODE = textwrap.dedent(
    '''
    """A team's own training code, as it would ship in the team's package."""

    import json
    from pathlib import Path

    import numpy as np


    def fit_with_progress(train, hyperparameters, context):
        from sklearn.linear_model import SGDClassifier

        x = train[list(context.feature_columns)]
        y = train[context.label_column].to_numpy()
        model = SGDClassifier(loss="log_loss", random_state=context.seed)
        steps = int(hyperparameters["steps"])
        context.log(f"columns={','.join(context.feature_columns)} classes={context.classes}")
        for step in range(1, steps + 1):
            model.partial_fit(x, y, classes=np.asarray(context.classes))
            context.report(
                step=step,
                progress=step / steps,
                metrics={"accuracy": float((model.predict(x) == y).mean()), "seen": step},
            )
        context.log(f"done after {steps} steps with seed {context.seed}")
        return model


    def fit_own_artifact(train, hyperparameters, context):
        weights = {"mean": train[list(context.feature_columns)].mean().tolist()}
        (context.artifact_dir / "weights.json").write_text(json.dumps(weights))
        (context.artifact_dir / "README").write_text("a team's own format")
        context.report(progress=0.5, message="weights written")
        return None


    def fit_to_a_file(train, hyperparameters, context):
        path = context.output_dir / "model.bin"
        path.write_bytes(b"model")
        return str(path)


    def fit_outside(train, hyperparameters, context):
        path = Path(hyperparameters["elsewhere"])
        path.write_bytes(b"model")
        return path


    def fit_nothing(train, hyperparameters, context):
        return None


    def fit_fails(train, hyperparameters, context):
        context.report(progress=0.3, metrics={"loss": 1.5}, step=1)
        raise RuntimeError(f"the team's trainer broke on {len(train)} rows")
    '''
)


@pytest.fixture
def team_code(tmp_path: Path) -> Path:
    """A folder holding the team's module ``team_trainers``, for PYTHONPATH."""
    folder = tmp_path / "team_code"
    folder.mkdir()
    (folder / "team_trainers.py").write_text(TEAM_CODE)
    return folder


def test_a_builtin_trainer_saves_a_bundle_and_reports_a_materialization(
    binary_features: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    path, frame = binary_features
    result = run_runner(
        path,
        tmp_path / "out",
        "ml_assets.training.builtin:logistic_regression",
        hyperparameters={"C": 0.5},
        seed=3,
    )
    assert result.returncode == 0, result.stderr
    assert result.methods[0] == "opened" and result.methods[-1] == "closed"
    report = result.report
    assert report.closed and report.exception is None and report.problems == []
    assert report.materializations == 1
    assert report.materialization is not None
    assert report.materialization["data_version"] == file_sha256(path)

    metadata = result.metadata
    assert metadata["artifact"] == MODEL_FILE and metadata["flavour"] == "joblib"
    assert (result.output / MODEL_FILE).is_file()
    assert metadata["trainer"] == "ml_assets.training.builtin:logistic_regression"
    assert "hyperparameters" not in metadata  # Dagster knows them from the job's extras
    assert metadata["device"] == "cpu"
    holdout = int((frame["split"] == "holdout").sum())
    assert (metadata["rows_train"], metadata["rows_holdout"]) == (len(frame) - holdout, holdout)
    assert metadata["duration_seconds"] >= 0
    assert 0.8 < metadata["roc_auc"] <= 1.0
    assert {"accuracy", "log_loss", "brier_score"} <= set(metadata)

    assert report.progress == 1.0 and report.message == "done"
    assert any(
        f"{len(frame) - holdout} train / {holdout} holdout rows" in line for line in report.logs
    )

    model = load_model(result.output / MODEL_FILE)
    assert model.feature_columns == ("f0", "f1", "f2")
    assert model.task == "binary" and model.classes == (0, 1)
    assert model.estimator.get_params()["model__C"] == 0.5
    assert model.estimator.get_params()["model__random_state"] == 3
    scores = predict(model, frame, "binary")
    assert scores.shape == (len(frame),) and ((scores >= 0) & (scores <= 1)).all()


def test_a_team_function_reports_progress_and_metrics_per_step(
    multiclass_features: tuple[Path, pd.DataFrame], tmp_path: Path, team_code: Path
) -> None:
    path, frame = multiclass_features
    result = run_runner(
        path,
        tmp_path / "out",
        "team_trainers:fit_with_progress",
        task="multiclass",
        hyperparameters={"steps": 5},
        seed=2,
        pythonpath=[team_code],
    )
    assert result.returncode == 0, result.stderr
    report = result.report
    assert report.exception is None and report.materializations == 1
    steps = [entry for entry in report.history if "accuracy" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4, 5]
    assert [entry["seen"] for entry in steps] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(0.0 <= entry["accuracy"] <= 1.0 for entry in steps)
    assert steps[-1]["accuracy"] > 0.8
    assert report.metrics["seen"] == 5.0 and report.step == 5
    assert "INFO columns=f0,f1 classes=('east', 'north', 'west')" in report.logs
    assert "INFO done after 5 steps with seed 2" in report.logs
    assert "[ml_assets.runner] done after 5 steps with seed 2" in result.stdout

    metadata = result.metadata
    assert metadata["artifact"] == MODEL_FILE and metadata["trainer"] == (
        "team_trainers:fit_with_progress"
    )
    assert metadata["macro_f1"] > 0.8 and metadata["accuracy"] > 0.8
    assert {"weighted_f1", "balanced_accuracy", "log_loss"} <= set(metadata)
    assert {"recall_east", "recall_north", "recall_west"} <= set(metadata)
    assert report.materialization is not None
    assert report.materialization["data_version"] == file_sha256(path)

    # The bundle names its classes; scoring it needs the team's code no more than sklearn.
    model = load_model(result.output / MODEL_FILE)
    assert model.task == "multiclass" and model.classes == ("east", "north", "west")
    probabilities = predict(model, frame, "multiclass")
    assert probabilities.shape == (len(frame), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_a_function_that_writes_its_own_artifact_and_returns_none(
    binary_features: tuple[Path, pd.DataFrame], tmp_path: Path, team_code: Path
) -> None:
    path, _ = binary_features
    result = run_runner(
        path, tmp_path / "out", "team_trainers:fit_own_artifact", pythonpath=[team_code]
    )
    assert result.returncode == 0, result.stderr
    metadata = result.metadata
    assert metadata["artifact"] == ARTIFACT_DIR and metadata["flavour"] == "folder"
    artifact = result.output / ARTIFACT_DIR
    assert sorted(p.name for p in artifact.iterdir()) == ["README", "weights.json"]
    assert not (result.output / MODEL_FILE).exists()
    # The runner cannot score an artifact it does not know; evaluation uses the team's predict.
    assert "roc_auc" not in metadata and "accuracy" not in metadata
    assert result.report.materialization is not None
    assert result.report.materialization["data_version"] == file_sha256(path)
    assert result.report.history == []  # progress and a message, no metrics
    assert result.report.progress == 1.0


def test_a_function_may_return_the_path_of_a_file_it_wrote(
    binary_features: tuple[Path, pd.DataFrame], tmp_path: Path, team_code: Path
) -> None:
    path, _ = binary_features
    result = run_runner(
        path, tmp_path / "out", "team_trainers:fit_to_a_file", pythonpath=[team_code]
    )
    assert result.returncode == 0, result.stderr
    assert (result.metadata["artifact"], result.metadata["flavour"]) == ("model.bin", "file")
    assert (result.output / "model.bin").read_bytes() == b"model"


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("team_trainers:fit_nothing", "returned None but wrote nothing to context.artifact_dir"),
        ("team_trainers:fit_outside", "which is not inside"),
        ("team_trainers:no_such_function", "has no attribute 'no_such_function'"),
    ],
)
def test_an_unusable_result_fails_the_job_with_the_reason(
    binary_features: tuple[Path, pd.DataFrame],
    tmp_path: Path,
    team_code: Path,
    trainer: str,
    message: str,
) -> None:
    path, _ = binary_features
    elsewhere = tmp_path / "elsewhere.bin"
    result = run_runner(
        path,
        tmp_path / "out",
        trainer,
        hyperparameters={"elsewhere": str(elsewhere)},
        pythonpath=[team_code],
    )
    assert result.returncode == 1
    assert result.report.closed and result.report.materialization is None
    assert result.report.exception is not None and message in result.report.exception


def test_a_function_that_raises_fails_the_job_and_reports_the_exception(
    binary_features: tuple[Path, pd.DataFrame], tmp_path: Path, team_code: Path
) -> None:
    path, frame = binary_features
    result = run_runner(path, tmp_path / "out", "team_trainers:fit_fails", pythonpath=[team_code])
    assert result.returncode == 1
    assert "report_asset_materialization" not in result.methods
    assert result.methods[-1] == "closed"
    closed = result.messages[-1]["params"]
    assert closed["exception"]["name"] == "RuntimeError"
    train_rows = int((frame["split"] == "train").sum())
    assert f"the team's trainer broke on {train_rows} rows" in closed["exception"]["message"]

    report = result.report
    assert report.closed and report.materialization is None and report.materializations == 0
    assert report.exception is not None
    assert report.exception.startswith(f"RuntimeError: the team's trainer broke on {train_rows}")
    assert "fit_fails" in report.exception  # the last frames point at the team's code
    # What was reported before the failure stays: the UI shows how far the job got.
    assert report.history == [{"step": 1, "loss": 1.5}]
    assert report.progress == 0.3
    assert "RuntimeError" in result.stderr
    assert not (result.output / MODEL_FILE).exists()


def test_a_features_file_without_a_split_fails_before_training(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    pd.DataFrame({"row_id": [1, 2], "f0": [0.0, 1.0], "label": [0, 1]}).to_parquet(path)
    result = run_runner(path, tmp_path / "out", "ml_assets.training.builtin:logistic_regression")
    assert result.returncode == 1
    assert result.report.exception is not None
    assert "has no 'split' column" in result.report.exception
