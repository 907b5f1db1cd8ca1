"""The estimators a team can train, by name: scikit-learn classifiers and a PyTorch network.

Only the standard library is imported at module level, so Dagster code locations and the YAML
validator can read :data:`TRAINERS` without importing scikit-learn or torch.
"""

from __future__ import annotations

from typing import Any

TRAINERS: tuple[str, ...] = (
    "logistic_regression",
    "hist_gradient_boosting",
    "random_forest",
    "torch_mlp",
)

# Defaults applied under the caller's hyperparameters (the caller always wins). Logistic
# regression on a few dozen features needs more than sklearn's 100 lbfgs iterations to converge,
# and a forest in a job should use the cores the job was given.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"max_iter": 1000},
    "hist_gradient_boosting": {},
    "random_forest": {"n_jobs": -1},
    "torch_mlp": {},
}
# The keyword that takes the job's seed; scikit-learn calls it random_state.
_SEED_PARAMETER: dict[str, str] = {"torch_mlp": "seed"}


def build_estimator(name: str, hyperparameters: dict[str, Any], seed: int) -> Any:
    """Return an unfitted scikit-learn-style classifier for trainer ``name``.

    ``logistic_regression`` is a Pipeline of StandardScaler then LogisticRegression (the step
    names are ``scale`` and ``model``); ``hist_gradient_boosting`` is a
    HistGradientBoostingClassifier; ``random_forest`` is a RandomForestClassifier;
    ``torch_mlp`` is a :class:`ml_assets.training.torch_mlp.TorchMLPClassifier`, which needs
    torch to fit but not to predict. ``hyperparameters`` go to the classifier unchanged, over a
    few defaults, so an unknown name fails with Python's TypeError here and a bad value fails at
    ``fit`` with the estimator's own error (scikit-learn's InvalidParameterError, or
    ValueError for torch_mlp): the user sees that message, not a paraphrase. ``seed`` becomes
    ``random_state`` (``seed`` for torch_mlp) unless the hyperparameters set it themselves.
    """
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; valid trainers: {', '.join(TRAINERS)}")
    seed_parameter = _SEED_PARAMETER.get(name, "random_state")
    parameters: dict[str, Any] = {seed_parameter: seed, **_DEFAULTS[name], **hyperparameters}
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(**parameters))])
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**parameters)
    if name == "torch_mlp":
        from ml_assets.training.torch_mlp import TorchMLPClassifier

        return TorchMLPClassifier(**parameters)
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**parameters)
