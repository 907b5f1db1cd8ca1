"""Tests for ml_assets.training.trainers: estimator construction by name."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from ml_assets.training.trainers import TRAINERS, build_estimator


def test_trainer_names() -> None:
    assert TRAINERS == (
        "logistic_regression", "hist_gradient_boosting", "random_forest", "torch_mlp",
    )  # fmt: skip


def test_logistic_regression_is_scaled_pipeline() -> None:
    estimator = build_estimator("logistic_regression", {"C": 0.25}, seed=4)
    assert isinstance(estimator, Pipeline)
    assert isinstance(estimator.named_steps["scale"], StandardScaler)
    model = estimator.named_steps["model"]
    assert isinstance(model, LogisticRegression)
    assert (model.C, model.random_state) == (0.25, 4)


def test_hyperparameters_pass_through_and_seed_sets_random_state() -> None:
    boosting = build_estimator("hist_gradient_boosting", {"max_iter": 17, "learning_rate": 0.3}, 9)
    assert isinstance(boosting, HistGradientBoostingClassifier)
    assert (boosting.max_iter, boosting.learning_rate, boosting.random_state) == (17, 0.3, 9)
    forest = build_estimator("random_forest", {"n_estimators": 5, "random_state": 123}, 9)
    assert isinstance(forest, RandomForestClassifier)
    assert (forest.n_estimators, forest.random_state) == (5, 123)  # explicit value wins


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_fits_and_predicts_probabilities(name: str) -> None:
    if name == "torch_mlp":
        pytest.importorskip("torch", reason="torch is not installed; torch_mlp needs it to train")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 4))
    labels = (features[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    hyperparameters = {"n_estimators": 10} if name == "random_forest" else {}
    estimator = build_estimator(name, hyperparameters, seed=0).fit(features, labels)
    probabilities = estimator.predict_proba(features)
    assert probabilities.shape == (300, 2)
    assert ((probabilities[:, 1] > 0.5) == labels).mean() > 0.75


def test_same_seed_same_model() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 3))
    labels = (features[:, 1] > 0).astype(int)
    first = build_estimator("random_forest", {"n_estimators": 5}, 3).fit(features, labels)
    second = build_estimator("random_forest", {"n_estimators": 5}, 3).fit(features, labels)
    np.testing.assert_array_equal(first.predict_proba(features), second.predict_proba(features))


def test_unknown_trainer_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match="logistic_regression, hist_gradient_boosting, random_forest"
    ):
        build_estimator("xgboost", {}, seed=0)


def test_invalid_hyperparameters_fail_with_sklearn_errors() -> None:
    with pytest.raises(TypeError, match="not_a_parameter"):
        build_estimator("random_forest", {"not_a_parameter": 1}, seed=0)
    estimator = build_estimator("hist_gradient_boosting", {"max_iter": -1}, seed=0)
    with pytest.raises(InvalidParameterError, match="max_iter"):
        estimator.fit(np.zeros((4, 1)), [0, 1, 0, 1])
