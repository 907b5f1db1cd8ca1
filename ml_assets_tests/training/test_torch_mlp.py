"""Tests for the torch_mlp trainer: it learns the digits task to the vision team's gate, is
reproducible, picks its device as documented, and its artifact scores without torch.

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
import pytest
import yaml
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ml_assets.datasets import DIGIT_PIXEL_COLUMNS, file_sha256, load_digits
from ml_assets.evaluation import check_thresholds, evaluate, load_model, predict_scores
from ml_assets.features import build_features, feature_columns
from ml_assets.training.entrypoint import RESULT_FILE
from ml_assets.training.torch_mlp import TorchMLPClassifier, resolve_device
from ml_assets.training.trainers import build_estimator

REPO_ROOT = Path(__file__).resolve().parents[2]
VISION = yaml.safe_load((REPO_ROOT / "ml_assets/teams/vision/team.yaml").read_text())
DIGITS = VISION["models"]["digit_classifier"]
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


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    spec = DIGITS["features"]
    return build_features(spec["feature_set"], load_digits(), spec["holdout_fraction"], seed=0)


@pytest.fixture(scope="module")
def split(features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    train = features[features["split"] == "train"]
    holdout = features[features["split"] == "holdout"]
    return train, holdout, feature_columns(features)


@pytest.fixture(scope="module")
def fitted(torch: Any, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]) -> TorchMLPClassifier:
    """The vision team's model, as its team.yaml configures it."""
    train, _, columns = split
    estimator = build_estimator("torch_mlp", DIGITS["trainer"]["hyperparameters"], seed=0)
    return estimator.fit(train[columns], train["label"].to_numpy())


def _small_fit(split: tuple[pd.DataFrame, pd.DataFrame, list[str]], **hyperparameters: Any) -> Any:
    train, _, columns = split
    estimator = build_estimator("torch_mlp", {"epochs": 3, **hyperparameters}, seed=0)
    return estimator.fit(train[columns], train["label"].to_numpy())


def test_holdout_roc_auc_passes_the_vision_team_gate(
    fitted: TorchMLPClassifier, split: tuple[pd.DataFrame, pd.DataFrame, list[str]]
) -> None:
    _, holdout, columns = split
    scores = fitted.predict_proba(holdout[columns])[:, 1]
    metrics = evaluate(holdout["label"], scores).metrics
    assert metrics["roc_auc"] > 0.99, metrics
    assert check_thresholds(metrics, DIGITS["evaluation"]["thresholds"]) == []
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


def test_build_estimator_passes_the_job_seed_unless_hyperparameters_set_it() -> None:
    estimator = build_estimator("torch_mlp", {"hidden_sizes": [8], "lr": 0.01}, seed=7)
    assert isinstance(estimator, TorchMLPClassifier)
    assert (estimator.hidden_sizes, estimator.lr, estimator.seed) == ([8], 0.01, 7)
    assert build_estimator("torch_mlp", {"seed": 11}, seed=7).seed == 11
    assert clone(estimator).get_params() == estimator.get_params()
    with pytest.raises(TypeError, match="hidden_layers"):
        build_estimator("torch_mlp", {"hidden_layers": [8]}, seed=0)


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
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert _small_fit(split, device="auto").device_ == expected


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
    estimator = build_estimator("torch_mlp", hyperparameters, seed=0)
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
    joblib.dump({"estimator": fitted, "feature_columns": columns, "trainer": "torch_mlp"}, artifact)
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
        from ml_assets.training.trainers import build_estimator

        estimator = build_estimator("torch_mlp", {}, seed=0)
        try:
            estimator.fit(np.zeros((4, 2)), [0, 1, 0, 1])
        except ImportError as error:
            print("ImportError:", error)
        """
    )
    completed = _python(code)
    assert completed.returncode == 0, completed.stderr
    assert "ImportError: the torch_mlp trainer needs PyTorch to train" in completed.stdout


def test_training_entrypoint_trains_the_digits_model_end_to_end(
    torch: Any, features: pd.DataFrame, tmp_path: Path
) -> None:
    features_path, output = tmp_path / "features.parquet", tmp_path / "out"
    features.to_parquet(features_path, index=False)
    hyperparameters = DIGITS["trainer"]["hyperparameters"]
    job = {
        "trainer": "torch_mlp",
        "hyperparameters": hyperparameters,
        "features_uri": str(features_path),
        "output_uri": str(output),
        "seed": 0,
    }
    code = (
        "import sys\nfrom ml_assets.training.entrypoint import main\n"
        f"sys.exit(main(['--job', {json.dumps(job)!r}]))"
    )
    completed = _python(code)
    assert completed.returncode == 0, completed.stderr
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"[ml_assets.torch_mlp] training on {device}" in completed.stdout
    assert "epoch 30/30 loss" in completed.stdout and "100% done" in completed.stdout

    result = json.loads((output / RESULT_FILE).read_text())
    assert result["artifact_uri"] == str(output / "model.joblib")
    assert result["data_version"] == file_sha256(features_path)
    assert (result["trainer"], result["hyperparameters"], result["seed"]) == (
        "torch_mlp", hyperparameters, 0,
    )  # fmt: skip
    assert result["feature_columns"] == list(DIGIT_PIXEL_COLUMNS)
    assert result["rows_train"] + result["rows_holdout"] == 1797
    assert result["rows_holdout"] == int((features["split"] == "holdout").sum())
    assert result["metrics"]["train_roc_auc"] > 0.99

    model = load_model(result["artifact_uri"])
    assert isinstance(model.estimator, TorchMLPClassifier)
    assert model.estimator.device_ == device
    holdout = features[features["split"] == "holdout"]
    metrics = evaluate(holdout["label"], predict_scores(model, holdout)).metrics
    assert check_thresholds(metrics, DIGITS["evaluation"]["thresholds"]) == []
