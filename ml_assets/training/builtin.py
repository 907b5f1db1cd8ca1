"""The trainers that ship with ml_assets, as plain functions a team names in its YAML.

A team writes ``trainer: {function: hist_gradient_boosting}`` for one of these, or
``function: mypkg.train:fit`` for its own; the runner calls both the same way,
``fit(train, hyperparameters, context)``, inside the job. Each returns an unfitted-then-fitted
scikit-learn-style estimator, which the runner saves with its feature columns.

Only the standard library is imported at module level: the YAML validator reads
:data:`BUILTIN_TRAINERS` when a location loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ml_assets.training.runner import TrainContext

BUILTIN_TRAINERS: dict[str, str] = {
    name: f"ml_assets.training.builtin:{name}"
    for name in ("logistic_regression", "hist_gradient_boosting", "random_forest", "torch_mlp")
}


def _xy(train: pd.DataFrame, context: TrainContext) -> tuple[Any, Any]:
    return train[list(context.feature_columns)], train[context.label_column]


def logistic_regression(
    train: pd.DataFrame, hyperparameters: dict[str, Any], context: TrainContext
) -> Any:
    """Standardised features, then logistic regression (binary or multiclass)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    _regression_unsupported("logistic_regression", context)
    parameters = {"max_iter": 1000, "random_state": context.seed, **hyperparameters}
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(**parameters))])
    return model.fit(*_xy(train, context))


def hist_gradient_boosting(
    train: pd.DataFrame, hyperparameters: dict[str, Any], context: TrainContext
) -> Any:
    """scikit-learn's histogram gradient boosting: a classifier, or a regressor for regression.

    Reports each boosting iteration's training loss as it goes, so the UI shows a curve.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    estimator = (
        HistGradientBoostingRegressor
        if context.task == "regression"
        else HistGradientBoostingClassifier
    )
    parameters = {"random_state": context.seed, **hyperparameters}
    model = estimator(**parameters)
    x, y = _xy(train, context)
    model.fit(x, y)
    losses = list(getattr(model, "train_score_", []))
    # train_score_ holds the negative loss per iteration; report a thinned curve.
    step = max(1, len(losses) // 50)
    for iteration in range(0, len(losses), step):
        context.report(
            step=iteration,
            metrics={"train_loss": -float(losses[iteration])},
            progress=0.2 + 0.6 * (iteration + 1) / max(1, len(losses)),
        )
    return model


def random_forest(
    train: pd.DataFrame, hyperparameters: dict[str, Any], context: TrainContext
) -> Any:
    """A random forest on the job's cores: a classifier, or a regressor for regression."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    estimator = RandomForestRegressor if context.task == "regression" else RandomForestClassifier
    parameters = {"n_jobs": -1, "random_state": context.seed, **hyperparameters}
    return estimator(**parameters).fit(*_xy(train, context))


def torch_mlp(train: pd.DataFrame, hyperparameters: dict[str, Any], context: TrainContext) -> Any:
    """A PyTorch multilayer perceptron classifier (binary) that trains on a GPU when it sees
    one; it reports each epoch's loss, and the device it used."""
    from ml_assets.training.torch_mlp import TorchMLPClassifier

    _regression_unsupported("torch_mlp", context)
    parameters = {"seed": context.seed, **hyperparameters}
    model = TorchMLPClassifier(**parameters)
    model.fit(*_xy(train, context), epoch_callback=context.epoch_callback())
    context.set_device(getattr(model, "device_", "cpu"))
    return model


def _regression_unsupported(name: str, context: TrainContext) -> None:
    if context.task == "regression":
        raise ValueError(f"the built-in trainer {name!r} is a classifier; the task is regression")
