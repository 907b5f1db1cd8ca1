"""Tests for ml_assets.evaluation on binary models: metrics against hand-computed cases, gates,
the PNG, and loading the runner's bundle. Multiclass, regression, a team's predict function and
extra metric functions are in test_evaluation_tasks.py."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from ml_assets.evaluation import (
    BINARY_METRICS,
    LOWER_IS_BETTER,
    MULTICLASS_METRICS,
    REGRESSION_METRICS,
    ROC_CURVE_MAX_POINTS,
    TASK_METRICS,
    TASKS,
    check_thresholds,
    default_primary_metric,
    evaluate,
    load_model,
    lower_is_better,
    predict,
    predict_scores,
    render_evaluation_png,
    threshold_key_is_valid,
)

# Six rows: scores thresholded at 0.5 give predictions [0, 1, 0, 1, 0, 1].
Y_TRUE = [0, 0, 0, 1, 1, 1]
Y_SCORE = [0.1, 0.6, 0.3, 0.7, 0.4, 0.9]


def test_metric_names() -> None:
    assert TASKS == ("binary", "multiclass", "regression")
    assert set(BINARY_METRICS) == {
        "roc_auc", "average_precision", "accuracy", "precision", "recall", "f1", "log_loss",
        "brier_score",
    }  # fmt: skip
    assert set(MULTICLASS_METRICS) == {
        "accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
        "balanced_accuracy", "log_loss",
    }  # fmt: skip
    assert set(REGRESSION_METRICS) == {"rmse", "mae", "r2", "max_error"}
    assert TASK_METRICS == {
        "binary": BINARY_METRICS,
        "multiclass": MULTICLASS_METRICS,
        "regression": REGRESSION_METRICS,
    }
    assert set(LOWER_IS_BETTER) == {"log_loss", "brier_score", "rmse", "mae", "max_error"}


def test_default_primary_metric_and_direction() -> None:
    assert [default_primary_metric(t) for t in TASKS] == ["roc_auc", "macro_f1", "rmse"]
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        default_primary_metric("ranking")
    for metric in ("log_loss", "rmse", "max_error", "train/loss", "calibration_error"):
        assert lower_is_better(metric), metric
    for metric in ("roc_auc", "macro_f1", "r2", "train/accuracy", "recall_cat"):
        assert not lower_is_better(metric), metric


def test_perfect_scorer() -> None:
    result = evaluate("binary", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert result.metrics["roc_auc"] == 1.0
    assert result.metrics["average_precision"] == 1.0
    assert result.metrics["accuracy"] == 1.0
    assert result.confusion_matrix == [[2, 0], [0, 2]]
    assert (result.fpr[0], result.tpr[0]) == (0.0, 0.0)
    assert (result.fpr[-1], result.tpr[-1]) == (1.0, 1.0)


def test_hand_computed_case() -> None:
    result = evaluate("binary", Y_TRUE, Y_SCORE)
    m = result.metrics
    assert set(BINARY_METRICS) | {"n", "positive_rate"} == set(m)
    assert result.task == "binary" and result.classes == [0, 1]
    assert result.confusion_matrix == [[2, 1], [1, 2]]  # tn fp / fn tp
    assert m["n"] == 6 and m["positive_rate"] == 0.5
    tp, fp, fn, tn = 2, 1, 1, 2  # counted from the predictions in the comment at the top
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert m["accuracy"] == pytest.approx((tp + tn) / 6)
    assert m["precision"] == pytest.approx(precision)
    assert m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    # Positive/negative pairs ranked correctly: 0.7 beats 3, 0.4 beats 2, 0.9 beats 3 -> 8/9.
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["brier_score"] == pytest.approx((0.01 + 0.36 + 0.09 + 0.09 + 0.36 + 0.01) / 6)
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.7, 0.7, 0.4, 0.9]))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    json.dumps(result.to_dict())  # metadata must be JSON-serialisable


def test_decision_threshold_moves_the_confusion_matrix() -> None:
    result = evaluate("binary", Y_TRUE, Y_SCORE, decision_threshold=0.65)
    assert result.confusion_matrix == [[3, 0], [1, 2]]
    assert result.metrics["precision"] == 1.0
    assert result.decision_threshold == 0.65
    # Ranking metrics do not depend on the threshold.
    assert result.metrics["roc_auc"] == pytest.approx(8 / 9)


def test_nothing_predicted_positive_gives_zero_precision() -> None:
    result = evaluate("binary", [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert result.confusion_matrix == [[2, 0], [2, 0]]
    assert result.metrics["precision"] == 0.0 and result.metrics["f1"] == 0.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_is_an_error(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="single class"):
        evaluate("binary", labels, [0.2, 0.5, 0.7])


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 2], [0.1, 0.5, 0.9], "labels 0/1"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
        ([0, 1], [0.1, float("nan")], r"\[0, 1\]"),
        ([0, 1, 1], [0.1, 0.5], "equal length"),
        ([], [], "zero rows"),
    ],
)
def test_bad_inputs_are_errors(labels: list[int], scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate("binary", labels, scores)


def test_roc_curve_is_downsampled_and_monotone() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    result = evaluate("binary", labels, scores)
    assert 50 < len(result.fpr) <= ROC_CURVE_MAX_POINTS and len(result.fpr) == len(result.tpr)
    assert np.all(np.diff(result.fpr) >= 0) and np.all(np.diff(result.tpr) >= 0)
    assert (result.fpr[0], result.tpr[0], result.fpr[-1], result.tpr[-1]) == (0, 0, 1, 1)
    # Trapezoid area of the kept points stays close to the exact AUC.
    assert np.trapezoid(result.tpr, result.fpr) == pytest.approx(
        result.metrics["roc_auc"], abs=0.01
    )


def test_check_thresholds_messages() -> None:
    metrics = {"roc_auc": 0.712, "log_loss": 0.512, "recall": 0.9}
    assert check_thresholds(metrics, {"min_roc_auc": 0.7, "max_log_loss": 0.6}) == []
    assert check_thresholds(metrics, {"min_roc_auc": 0.9, "max_log_loss": 0.4}) == [
        "roc_auc 0.712 < min 0.9",
        "log_loss 0.512 > max 0.4",
    ]
    assert (
        check_thresholds(metrics, {"min_recall": 0.9, "max_recall": 0.9}) == []
    )  # bounds inclusive
    assert check_thresholds({"roc_auc": math.nan}, {"min_roc_auc": 0.5}) == [
        "roc_auc nan < min 0.5"
    ]


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"min_auc": 0.9}, "min_auc refers to metric 'auc', which was not computed"),
        ({"roc_auc": 0.9}, "unknown threshold 'roc_auc'"),
        ({"min_f1": "high"}, "must be a number"),
        ({"min_f1": 0.5}, "not computed"),
        ({"min_train/accuracy": 0.5}, r"'train/accuracy', which was not computed"),
    ],
)
def test_check_thresholds_rejects_what_it_cannot_check(
    thresholds: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_thresholds({"roc_auc": 0.8}, thresholds)


def test_threshold_key_is_valid_for_any_metric_name() -> None:
    metrics = [*BINARY_METRICS, *MULTICLASS_METRICS, *REGRESSION_METRICS, "n"]
    assert all(threshold_key_is_valid(f"{b}_{m}") for b in ("min", "max") for m in metrics)
    for key in ("min_train/accuracy", "max_my_metric", "min_recall_class_2", "max_max_error"):
        assert threshold_key_is_valid(key), key
    for key in (
        "roc_auc",
        "min_",
        "minimum_roc_auc",
        "MIN_ROC_AUC",
        "min_Roc",
        "min_a b",
        "min_/x",
    ):
        assert not threshold_key_is_valid(key), key


def test_png_has_expected_size_and_does_not_leak_figures() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = evaluate("binary", Y_TRUE, Y_SCORE)
    before = plt.get_fignums()
    images = [render_evaluation_png(result, "fraud / hist_gradient_boosting") for _ in range(3)]
    assert plt.get_fignums() == before
    png = images[0]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR comes first
    assert (width, height) == (900, 400)
    assert len(png) > 10_000


def test_load_model_and_predict_use_saved_column_order(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    label = (train["a"] - 2 * train["b"] > 0).astype(int)
    estimator = LogisticRegression().fit(train[["b", "a"]], label)
    path = tmp_path / "model.joblib"
    joblib.dump({"estimator": estimator, "feature_columns": ["b", "a"]}, path)

    model = load_model(path)
    assert model.feature_columns == ("b", "a")
    scrambled = train[["a", "b"]].assign(row_id=np.arange(200), label=label, split="holdout")
    scores = predict_scores(model, scrambled)
    np.testing.assert_allclose(scores, estimator.predict_proba(train[["b", "a"]])[:, 1])
    assert load_model(f"file://{path}").feature_columns == ("b", "a")
    np.testing.assert_array_equal(predict(model, scrambled, "binary"), scores)
    with pytest.raises(ValueError, match="missing model columns: b"):
        predict_scores(model, train[["a"]])
    # Labels 1/2: there is a class 1, but labels 0/1 were not what it was fitted on either.
    shifted = LogisticRegression().fit(train[["b", "a"]], label + 2)
    joblib.dump({"estimator": shifted, "feature_columns": ["b", "a"]}, path)
    with pytest.raises(ValueError, match=r"no positive class 1 \(classes: \[2, 3\]\)"):
        predict(load_model(path), scrambled, "binary")


def test_load_model_rejects_other_pickles(tmp_path: Path) -> None:
    path = tmp_path / "other.joblib"
    joblib.dump([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"not a model bundle.*give `predict: module:function`"):
        load_model(path)


def test_an_artifact_that_is_no_bundle_needs_a_predict_function(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    np.save(folder / "w.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"is a folder, not a model\.joblib bundle.*`predict: "):
        load_model(folder)
    with pytest.raises(ValueError, match=r"is a file, not a model\.joblib bundle"):
        load_model(folder / "w.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.joblib")
