"""Tests for ml_assets.evaluation: metrics against hand-computed cases, gates and the PNG."""

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
    LOWER_IS_BETTER,
    METRICS,
    ROC_CURVE_MAX_POINTS,
    check_thresholds,
    evaluate,
    load_model,
    predict_scores,
    render_evaluation_png,
    threshold_key_is_valid,
)

# Six rows: scores thresholded at 0.5 give predictions [0, 1, 0, 1, 0, 1].
Y_TRUE = [0, 0, 0, 1, 1, 1]
Y_SCORE = [0.1, 0.6, 0.3, 0.7, 0.4, 0.9]


def test_metric_names() -> None:
    assert set(METRICS) == {
        "roc_auc", "average_precision", "accuracy", "precision", "recall", "f1", "log_loss",
        "brier_score",
    }  # fmt: skip
    assert set(LOWER_IS_BETTER) == {"log_loss", "brier_score"}


def test_perfect_scorer() -> None:
    result = evaluate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert result.metrics["roc_auc"] == 1.0
    assert result.metrics["average_precision"] == 1.0
    assert result.metrics["accuracy"] == 1.0
    assert result.confusion_matrix == [[2, 0], [0, 2]]
    assert (result.fpr[0], result.tpr[0]) == (0.0, 0.0)
    assert (result.fpr[-1], result.tpr[-1]) == (1.0, 1.0)


def test_hand_computed_case() -> None:
    result = evaluate(Y_TRUE, Y_SCORE)
    m = result.metrics
    assert set(METRICS) | {"n", "positive_rate"} == set(m)
    assert result.confusion_matrix == [[2, 1], [1, 2]]  # tn fp / fn tp
    assert m["n"] == 6 and m["positive_rate"] == 0.5
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # Positive/negative pairs ranked correctly: 0.7 beats 3, 0.4 beats 2, 0.9 beats 3 -> 8/9.
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["brier_score"] == pytest.approx((0.01 + 0.36 + 0.09 + 0.09 + 0.36 + 0.01) / 6)
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.7, 0.7, 0.4, 0.9]))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    json.dumps(result.to_dict())  # metadata must be JSON-serialisable


def test_decision_threshold_moves_the_confusion_matrix() -> None:
    result = evaluate(Y_TRUE, Y_SCORE, decision_threshold=0.65)
    assert result.confusion_matrix == [[3, 0], [1, 2]]
    assert result.metrics["precision"] == 1.0
    assert result.decision_threshold == 0.65
    # Ranking metrics do not depend on the threshold.
    assert result.metrics["roc_auc"] == pytest.approx(8 / 9)


def test_nothing_predicted_positive_gives_zero_precision() -> None:
    result = evaluate([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert result.confusion_matrix == [[2, 0], [2, 0]]
    assert result.metrics["precision"] == 0.0 and result.metrics["f1"] == 0.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_is_an_error(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="single class"):
        evaluate(labels, [0.2, 0.5, 0.7])


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
        evaluate(labels, scores)


def test_roc_curve_is_downsampled_and_monotone() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    result = evaluate(labels, scores)
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
        ({"min_auc": 0.9}, "min_auc"),
        ({"roc_auc": 0.9}, "'roc_auc'"),
        ({"min_f1": "high"}, "must be a number"),
        ({"min_f1": 0.5}, "not computed"),
    ],
)
def test_check_thresholds_rejects_what_it_cannot_check(
    thresholds: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_thresholds({"roc_auc": 0.8}, thresholds)


def test_threshold_key_is_valid() -> None:
    assert all(threshold_key_is_valid(f"{b}_{m}") for b in ("min", "max") for m in METRICS)
    for key in ("roc_auc", "min_", "min_auc", "minimum_roc_auc", "max_n", "MIN_ROC_AUC"):
        assert not threshold_key_is_valid(key), key


def test_png_has_expected_size_and_does_not_leak_figures() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = evaluate(Y_TRUE, Y_SCORE)
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
    with pytest.raises(ValueError, match="missing model columns: b"):
        predict_scores(model, train[["a"]])


def test_load_model_rejects_other_pickles(tmp_path: Path) -> None:
    path = tmp_path / "other.joblib"
    joblib.dump([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a model bundle"):
        load_model(path)
