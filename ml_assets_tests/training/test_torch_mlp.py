"""Tests for the torch_mlp trainer: it learns the vision team's task to the team's gate, is
reproducible, picks its device as documented, reports each epoch, and its artifact scores
without torch.

Tests that train need torch and skip with the reason when it is not installed; the checks of
data, hyperparameters and device choice, and the torch-free loading, run either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ml_assets.assets.data import build_feature_table
from ml_assets.evaluation import check_thresholds, evaluate, load_model, predict_scores
from ml_assets.features import feature_columns
from ml_assets.platform_data.sources import DIGIT_PIXEL_COLUMNS, load_digits
from ml_assets.tables import file_sha256
from ml_assets.teams.spec import load_team_spec
from ml_assets.teams.vision.features import digit_pixels
from ml_assets.training import builtin
from ml_assets.training.runner import MODEL_FILE, TrainContext
from ml_assets.training.torch_mlp import TorchMLPClassifier, resolve_device
from ml_assets_tests.training.test_runner import run_runner

REPO_ROOT = Path(__file__).resolve().parents[2]
VISION = load_team_spec(REPO_ROOT / "ml_assets/teams/vision/team.yaml")
MODEL = VISION.models["digit_classifier"]
HYPERPARAMETERS = MODEL.trainer.hyperparameters
THRESHOLDS = MODEL.evaluation.thresholds
# Run first in a subprocess, this makes torch look uninstalled: every `import torch` raises
# ModuleNotFoundError. (Setting sys.modules["torch"] = None would too, but scipy then finds a
# "torch" entry and fails on it, which no environment without torch would do.)
NO_TORCH = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTorch())
    """
)


def _python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip(
        "torch", reason="torch is not installed; the torch_mlp trainer needs it to train"
    )


class FakePipes:
    """What a TrainContext talks to: records custom messages and log lines."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.log = self

    def report_custom_message(self, payload: dict[str, Any]) -> None:
        self.payloads.append(payload)

    def info(self, message: str) -> None:
        self.lines.append(message)


def _context(columns: list[str], seed: int = 0, pipes: Any = None) -> TrainContext:
    return TrainContext(
        seed=seed,
        task="binary",
        output_dir=Path("."),
        feature_columns=tuple(columns),
        classes=(0, 1),
        _pipes=pipes,
    )


def _expected_device(torch: Any) -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return "cpu"


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    """The vision team's features table, built as its features asset builds it."""
    raw = pa.Table.from_pandas(load_digits(), preserve_index=False)
    table = build_feature_table(MODEL.features, MODEL.task, raw).to_pandas()
    table["split"] = table["split"].astype(str)
    return table


@pytest.fixture(scope="module")
def split(features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    train = features[features["split"] == "train"]
    holdout = features[features["split"] == "holdout"]
    return train, holdout, feature_columns(features)


@pytest.fixture(scope="module")
def fitted(torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]) -> TorchMLPClassifier:
    """The vision team's model, trained by the built-in trainer as its team.yaml configures it."""
    train, _, columns = split
    model = builtin.torch_mlp(train, dict(HYPERPARAMETERS), _context(columns))
    assert isinstance(model, TorchMLPClassifier)
    return model


def _small_fit(split: tuple[pd.DataFrame, pd.DataFrame, list[str]], **hyperparameters: Any) -> Any:
    train, _, columns = split
    estimator = TorchMLPClassifier(**{"epochs": 3, **hyperparameters})
    return estimator.fit(train[columns], train["label"].to_numpy())


def test_the_features_are_the_vision_team_pixels(features: pd.DataFrame) -> None:
    assert feature_columns(features) == list(DIGIT_PIXEL_COLUMNS)
    assert features["label"].tolist() == digit_pixels(load_digits(), {})["label"].tolist()


def test_holdout_roc_auc_passes_the_team_gate(
    fitted: TorchMLPClassifier, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    _, holdout, columns = split
    scores = fitted.predict_proba(holdout[columns])[:, 1]
    metrics = evaluate("binary", holdout["label"], scores).metrics
    assert metrics["roc_auc"] > 0.99, metrics
    assert check_thresholds(metrics, THRESHOLDS) == []
    # A constant score has ROC AUC 0.5 on this balanced label; the network learnt something.
    assert 0.4 < metrics["positive_rate"] < 0.6
    assert fitted.loss_curve_[-1] < fitted.loss_curve_[0] / 3


def test_predict_proba_is_a_probability_table(
    fitted: TorchMLPClassifier, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    _, holdout, columns = split
    probabilities = fitted.predict_proba(holdout[columns])
    assert probabilities.shape == (len(holdout), 2) and probabilities.dtype == np.float64
    assert list(fitted.classes_) == [0, 1]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        fitted.predict(holdout[columns]), (probabilities[:, 1] >= 0.5).astype(np.int64)
    )
    with pytest.raises(ValueError, match="64 feature columns"):
        fitted.predict_proba(holdout[columns[:10]])


def test_numpy_forward_pass_matches_the_torch_network(
    torch: Any, fitted: TorchMLPClassifier, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    _, holdout, columns = split
    layers: list[Any] = []
    for weights, bias in zip(fitted.coefs_, fitted.intercepts_, strict=True):
        linear = torch.nn.Linear(*weights.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weights.T))
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, torch.nn.ReLU()]
    network = torch.nn.Sequential(*layers[:-1])
    values = holdout[columns].to_numpy(np.float32)
    inputs = torch.from_numpy((values - fitted.input_mean_) / fitted.input_scale_)
    with torch.no_grad():
        expected = torch.sigmoid(network(inputs)).squeeze(1).numpy()
    assert [w.shape for w in fitted.coefs_] == [(64, 64), (64, 32), (32, 1)]
    np.testing.assert_allclose(fitted.predict_proba(holdout[columns])[:, 1], expected, atol=1e-5)


def test_same_seed_same_model_other_seed_other_model(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    _, holdout, columns = split
    first = _small_fit(split, seed=3).predict_proba(holdout[columns])
    again = _small_fit(split, seed=3).predict_proba(holdout[columns])
    other = _small_fit(split, seed=4).predict_proba(holdout[columns])
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_the_builtin_passes_the_job_seed_unless_hyperparameters_set_it(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    train, _, columns = split
    small = {"hidden_sizes": [8], "lr": 0.01, "epochs": 1}
    model = builtin.torch_mlp(train, small, _context(columns, seed=7))
    assert (model.hidden_sizes, model.lr, model.seed) == ([8], 0.01, 7)
    assert builtin.torch_mlp(train, {**small, "seed": 11}, _context(columns, seed=7)).seed == 11
    assert clone(model).get_params() == model.get_params()


def test_an_unknown_hyperparameter_fails_before_training(
    split: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    train, _, columns = split
    with pytest.raises(TypeError, match="hidden_layers"):
        builtin.torch_mlp(train, {"hidden_layers": [8]}, _context(columns))


def test_the_builtin_refuses_a_regression_task(
    split: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    train, _, columns = split
    context = _context(columns)
    context.task = "regression"
    with pytest.raises(ValueError, match="classifier; the task is regression"):
        builtin.torch_mlp(train, {}, context)


def test_the_builtin_reports_every_epoch_and_the_device(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    train, _, columns = split
    pipes = FakePipes()
    context = _context(columns, pipes=pipes)
    model = builtin.torch_mlp(train, {"epochs": 4, "device": "cpu"}, context)
    epochs = [p for p in pipes.payloads if "metrics" in p]
    assert [p["step"] for p in epochs] == [1, 2, 3, 4]
    assert [p["metrics"]["train_loss"] for p in epochs] == pytest.approx(model.loss_curve_)
    assert [p["progress"] for p in epochs] == pytest.approx([0.3, 0.5, 0.7, 0.9])
    assert context.device == model.device_ == "cpu"
    assert {"device": "cpu"} in pipes.payloads
    assert {"message": "training on cpu"} in pipes.payloads


def test_fit_calls_the_epoch_callback_after_each_epoch(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    train, _, columns = split
    calls: list[tuple[int, int, float]] = []
    model = TorchMLPClassifier(epochs=3, device="cpu").fit(
        train[columns], train["label"], epoch_callback=lambda *call: calls.append(call)
    )
    assert [(epoch, epochs) for epoch, epochs, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert [loss for _, _, loss in calls] == model.loss_curve_


def test_device_cpu_trains_on_the_cpu_and_says_so(
    torch: Any,
    split: tuple[pd.DataFrame, pd.DataFrame, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _small_fit(split, device="cpu")
    assert model.device_ == "cpu"
    out = capsys.readouterr().out
    assert "[ml_assets.torch_mlp] training on cpu" in out
    assert "trained 3 epochs" in out and "on cpu" in out


def test_auto_device_takes_cuda_only_when_it_is_available(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    assert _small_fit(split, device="auto").device_ == _expected_device(torch)


def test_device_cuda_without_a_gpu_fails_instead_of_training_on_the_cpu(
    torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here, so device='cuda' is satisfiable")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        _small_fit(split, device="cuda")


@pytest.mark.parametrize(
    ("requested", "cuda_available", "device"),
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
    ],
)
def test_resolve_device(requested: str, cuda_available: bool, device: str) -> None:
    assert resolve_device(requested, cuda_available) == device


def test_resolve_device_rejects_unknown_and_unavailable_devices() -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu", True)
    with pytest.raises(RuntimeError, match="device: auto or cpu"):
        resolve_device("cuda", False)


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"hidden_sizes": [16, 0]}, "hidden_sizes"),
        ({"hidden_sizes": "64"}, "hidden_sizes"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_bad_hyperparameters_fail_at_fit(hyperparameters: dict[str, Any], message: str) -> None:
    estimator = TorchMLPClassifier(**hyperparameters)
    with pytest.raises(ValueError, match=message):
        estimator.fit(np.zeros((4, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((4, 2)), [0, 0, 0, 0], "both labels 0 and 1"),
        (np.zeros((4, 2)), [0, 1, 2, 1], "both labels 0 and 1"),
        (np.zeros((4, 2)), [0, 1, 0], "4 rows but y has 3"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), [0, 1], "finite"),
        (np.zeros(4), [0, 1, 0, 1], "2-D"),
    ],
)
def test_bad_training_data_is_rejected(features: Any, labels: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TorchMLPClassifier().fit(features, labels)


def test_predicting_before_fit_is_an_error() -> None:
    with pytest.raises(NotFittedError, match="call fit first"):
        TorchMLPClassifier().predict_proba(np.zeros((1, 64)))


def test_artifact_loads_and_scores_in_a_process_without_torch(
    fitted: TorchMLPClassifier,
    split: tuple[pd.DataFrame, pd.DataFrame, list[str]],
    tmp_path: Path,
) -> None:
    _, holdout, columns = split
    artifact, rows, scores = tmp_path / "model.joblib", tmp_path / "holdout.parquet", tmp_path / "s"
    bundle = {
        "estimator": fitted,
        "feature_columns": columns,
        "task": "binary",
        "classes": [0, 1],
        "trainer": "ml_assets.training.builtin:torch_mlp",
    }
    joblib.dump(bundle, artifact)
    holdout.to_parquet(rows)
    code = NO_TORCH + textwrap.dedent(
        f"""
        import json
        import numpy as np
        import pandas as pd
        from ml_assets.evaluation import load_model, predict_scores

        model = load_model({str(artifact)!r})
        np.save({str(scores)!r}, predict_scores(model, pd.read_parquet({str(rows)!r})))
        print(json.dumps({{
            "estimator": type(model.estimator).__name__,
            "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
        }}))
        """
    )
    completed = _python(code)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"estimator": "TorchMLPClassifier", "torch": []}
    expected = predict_scores(load_model(artifact), holdout)
    np.testing.assert_array_equal(np.load(f"{scores}.npy"), expected)


def test_without_torch_the_trainer_imports_but_fit_names_the_fix() -> None:
    code = NO_TORCH + textwrap.dedent(
        """
        import numpy as np
        from ml_assets.training.builtin import BUILTIN_TRAINERS
        from ml_assets.training.torch_mlp import TorchMLPClassifier

        assert "torch_mlp" in BUILTIN_TRAINERS
        estimator = TorchMLPClassifier()
        try:
            estimator.fit(np.zeros((4, 2)), [0, 1, 0, 1])
        except ImportError as error:
            print("ImportError:", error)
        """
    )
    completed = _python(code)
    assert completed.returncode == 0, completed.stderr
    assert "ImportError: the torch_mlp trainer needs PyTorch to train" in completed.stdout


def test_the_runner_trains_the_vision_model_end_to_end(
    torch: Any, features: pd.DataFrame, tmp_path: Path
) -> None:
    features_path, output = tmp_path / "features.parquet", tmp_path / "out"
    features.to_parquet(features_path, index=False)
    result = run_runner(
        features_path,
        output,
        MODEL.trainer.reference or "",
        task=MODEL.task,
        hyperparameters=HYPERPARAMETERS,
        seed=MODEL.trainer.seed,
    )
    assert result.returncode == 0, result.stderr
    device = _expected_device(torch)
    assert f"[ml_assets.torch_mlp] training on {device}" in result.stdout
    assert "epoch 30/30 loss" in result.stdout

    report = result.report
    assert report.exception is None and report.device == device
    epochs = [entry for entry in report.history if "train_loss" in entry]
    assert [entry["step"] for entry in epochs] == list(range(1, 31))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 3
    assert report.progress == 1.0

    metadata = result.metadata
    assert report.materialization is not None
    assert report.materialization["data_version"] == file_sha256(features_path)
    assert metadata["artifact"] == MODEL_FILE and metadata["device"] == device
    assert metadata["trainer"] == "ml_assets.training.builtin:torch_mlp"
    assert metadata["rows_train"] + metadata["rows_holdout"] == 1797
    assert metadata["rows_holdout"] == int((features["split"] == "holdout").sum())
    assert metadata["roc_auc"] > 0.99

    model = load_model(output / MODEL_FILE)
    assert isinstance(model.estimator, TorchMLPClassifier)
    assert model.feature_columns == DIGIT_PIXEL_COLUMNS
    assert model.estimator.device_ == device
    holdout = features[features["split"] == "holdout"]
    metrics = evaluate("binary", holdout["label"], predict_scores(model, holdout)).metrics
    assert check_thresholds(metrics, THRESHOLDS) == []
