"""The trainers that ship with ml_assets, as plain functions a team names in its YAML.

A team writes ``trainer: {function: hist_gradient_boosting}`` for one of these, or
``function: mypkg.train:fit`` for its own; the runner calls both the same way,
``fit(train, hyperparameters, context)``, inside the job. Each returns an unfitted-then-fitted
scikit-learn-style estimator, which the runner saves with its feature columns.

Only the standard library is imported at module level: the YAML validator reads
:data:`BUILTIN_TRAINERS` when a location loads.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

    from ml_assets.training.runner import TrainContext

BUILTIN_TRAINERS: dict[str, str] = {
    name: f"ml_assets.training.builtin:{name}"
    for name in ("logistic_regression", "hist_gradient_boosting", "random_forest", "torch_mlp")
}


# --- The hyperparameters each built-in takes, checked when a location loads -------------------
#
# A plain-data copy of each estimator's documented constraints (scikit-learn's
# ``_parameter_constraints``), so a value that can never work fails the location, with the file,
# line and field, instead of failing at ``fit`` on every attempt. Only what YAML can express is
# listed (no callables or loss objects). ``ml_assets_tests/training/test_builtin.py`` compares
# this table with the installed estimators, so it cannot drift from them unnoticed.


Closed = Literal["left", "right", "both", "neither"]


@dataclass(frozen=True)
class Interval:
    """A number in a range, as scikit-learn's ``Interval``: ``kind`` is ``int`` (no bools),
    ``real`` (int or float) or ``real_not_int`` (a float); ``closed`` says which bounds count."""

    kind: Literal["int", "real", "real_not_int"]
    low: float | None
    high: float | None
    closed: Closed

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if self.kind == "real_not_int" and isinstance(value, int):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        # As scikit-learn: a missing bound is infinity, closed or open like the other.
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        above = value >= low if self.closed in ("left", "both") else value > low
        below = value <= high if self.closed in ("right", "both") else value < high
        return above and below

    def describe(self) -> str:
        noun = {"int": "an integer", "real": "a number", "real_not_int": "a float"}[self.kind]
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("left", "both") else "("
            right = "]" if self.closed in ("right", "both") else ")"
            return f"{noun} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{noun} {'>=' if self.closed in ('left', 'both') else '>'} {_num(self.low)}"
        if self.high is not None:
            return f"{noun} {'<=' if self.closed in ('right', 'both') else '<'} {_num(self.high)}"
        return noun


@dataclass(frozen=True)
class Options:
    """One of these strings."""

    values: frozenset[str]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in sorted(self.values))


@dataclass(frozen=True)
class ListOf:
    """A YAML list whose items all satisfy ``item``."""

    item: Interval

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list) and all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        return f"a list of {self.item.describe().removeprefix('an ').removeprefix('a ')}s"


# The simple kinds, as scikit-learn names them where it has a name.
NONE, BOOLEAN, INTEGER, STRING, MAPPING, LIST = "none", "boolean", "int", "str", "dict", "list"
RANDOM_STATE, VERBOSE = "random_state", "verbose"
Constraint = Interval | Options | ListOf | str
_SIMPLE: dict[str, tuple[str, Any]] = {
    NONE: ("null", lambda v: v is None),
    BOOLEAN: ("true or false", lambda v: isinstance(v, bool)),
    INTEGER: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    STRING: ("a string", lambda v: isinstance(v, str)),
    MAPPING: ("a mapping", lambda v: isinstance(v, dict)),
    LIST: ("a list", lambda v: isinstance(v, list)),
    # As scikit-learn's "random_state" and "verbose", less the objects YAML cannot write.
    RANDOM_STATE: (
        "an integer in [0, 4294967295] or null",
        lambda v: v is None or Interval("int", 0, 2**32 - 1, "both").accepts(v),
    ),
    VERBOSE: (
        "an integer >= 0 or true/false",
        lambda v: isinstance(v, bool) or Interval("int", 0, None, "left").accepts(v),
    ),
}


@dataclass(frozen=True)
class Estimator:
    """What a built-in trainer builds for some tasks, and the hyperparameters it takes."""

    target: str  # "package.module.Class", imported by the drift test only
    tasks: tuple[str, ...]
    parameters: Mapping[str, tuple[Constraint, ...]]

    @property
    def name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


def _int(low: float | None, high: float | None = None, closed: Closed = "left") -> Interval:
    return Interval("int", low, high, closed)


def _real(low: float | None, high: float | None = None, closed: Closed = "left") -> Interval:
    return Interval("real", low, high, closed)


def _fraction(low: float, high: float, closed: Closed) -> Interval:
    return Interval("real_not_int", low, high, closed)


CLASSIFICATION, REGRESSION = ("binary", "multiclass"), ("regression",)
_LOGISTIC_REGRESSION: dict[str, tuple[Constraint, ...]] = {
    "penalty": (Options(frozenset({"l1", "l2", "elasticnet"})), NONE),
    "C": (_real(0, None, "right"),),
    "l1_ratio": (_real(0, 1, "both"), NONE),
    "dual": (BOOLEAN,),
    "tol": (_real(0),),
    "fit_intercept": (BOOLEAN,),
    "intercept_scaling": (_real(0, None, "neither"),),
    "class_weight": (MAPPING, Options(frozenset({"balanced"})), NONE),
    "random_state": (RANDOM_STATE,),
    "solver": (
        Options(frozenset({"lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"})),
    ),
    "max_iter": (_int(0),),
    "verbose": (VERBOSE,),
    "warm_start": (BOOLEAN,),
    "n_jobs": (NONE, INTEGER),
}
_HIST_GRADIENT_BOOSTING: dict[str, tuple[Constraint, ...]] = {
    "learning_rate": (_real(0, None, "neither"),),
    "max_iter": (_int(1),),
    "max_leaf_nodes": (_int(2), NONE),
    "max_depth": (_int(1), NONE),
    "min_samples_leaf": (_int(1),),
    "l2_regularization": (_real(0),),
    "max_features": (_fraction(0, 1, "right"),),
    "monotonic_cst": (LIST, MAPPING, NONE),
    "interaction_cst": (LIST, Options(frozenset({"pairwise", "no_interactions"})), NONE),
    "n_iter_no_change": (_int(1),),
    "validation_fraction": (_fraction(0, 1, "neither"), _int(1), NONE),
    "tol": (_real(0),),
    "max_bins": (_int(2, 255, "both"),),
    "categorical_features": (LIST, Options(frozenset({"from_dtype"})), NONE),
    "warm_start": (BOOLEAN,),
    "early_stopping": (Options(frozenset({"auto"})), BOOLEAN),
    "scoring": (STRING, NONE),
    "verbose": (VERBOSE,),
    "random_state": (RANDOM_STATE,),
}
_RANDOM_FOREST: dict[str, tuple[Constraint, ...]] = {
    "n_estimators": (_int(1),),
    "bootstrap": (BOOLEAN,),
    "oob_score": (BOOLEAN,),
    "n_jobs": (INTEGER, NONE),
    "random_state": (RANDOM_STATE,),
    "verbose": (VERBOSE,),
    "warm_start": (BOOLEAN,),
    "max_samples": (NONE, Interval("real_not_int", 0.0, None, "neither"), _int(1)),
    "max_depth": (_int(1), NONE),
    "min_samples_split": (_int(2), _fraction(0.0, 1.0, "right")),
    "min_samples_leaf": (_int(1), _fraction(0.0, 1.0, "neither")),
    "min_weight_fraction_leaf": (_real(0.0, 0.5, "both"),),
    "max_features": (
        _int(1),
        _fraction(0.0, 1.0, "right"),
        Options(frozenset({"sqrt", "log2"})),
        NONE,
    ),
    "max_leaf_nodes": (_int(2), NONE),
    "min_impurity_decrease": (_real(0.0),),
    "ccp_alpha": (_real(0.0),),
    "monotonic_cst": (LIST, NONE),
}
# TorchMLPClassifier checks these in fit; the same rules, and its device names.
_TORCH_MLP: dict[str, tuple[Constraint, ...]] = {
    "hidden_sizes": (ListOf(_int(1)),),
    "epochs": (_int(1),),
    "lr": (_real(0, None, "neither"),),
    "batch_size": (_int(1),),
    "weight_decay": (_real(0),),
    "seed": (INTEGER,),
    "device": (Options(frozenset({"auto", "cpu", "cuda"})),),
}

BUILTIN_ESTIMATORS: dict[str, tuple[Estimator, ...]] = {
    "logistic_regression": (
        Estimator("sklearn.linear_model.LogisticRegression", CLASSIFICATION, _LOGISTIC_REGRESSION),
    ),
    "hist_gradient_boosting": (
        Estimator(
            "sklearn.ensemble.HistGradientBoostingClassifier",
            CLASSIFICATION,
            {
                **_HIST_GRADIENT_BOOSTING,
                "loss": (Options(frozenset({"log_loss"})),),
                "class_weight": (MAPPING, Options(frozenset({"balanced"})), NONE),
            },
        ),
        Estimator(
            "sklearn.ensemble.HistGradientBoostingRegressor",
            REGRESSION,
            {
                **_HIST_GRADIENT_BOOSTING,
                "loss": (
                    Options(
                        frozenset(
                            {"squared_error", "absolute_error", "gamma", "poisson", "quantile"}
                        )
                    ),
                ),
                "quantile": (_real(0, 1, "both"), NONE),
            },
        ),
    ),
    "random_forest": (
        Estimator(
            "sklearn.ensemble.RandomForestClassifier",
            CLASSIFICATION,
            {
                **_RANDOM_FOREST,
                "criterion": (Options(frozenset({"gini", "entropy", "log_loss"})),),
                "class_weight": (
                    Options(frozenset({"balanced", "balanced_subsample"})),
                    MAPPING,
                    LIST,
                    NONE,
                ),
            },
        ),
        Estimator(
            "sklearn.ensemble.RandomForestRegressor",
            REGRESSION,
            {
                **_RANDOM_FOREST,
                "criterion": (Options(frozenset({"squared_error", "absolute_error", "poisson"})),),
            },
        ),
    ),
    "torch_mlp": (
        Estimator("ml_assets.training.torch_mlp.TorchMLPClassifier", ("binary",), _TORCH_MLP),
    ),
}


class HyperparameterError(ValueError):
    """A built-in trainer's hyperparameter, or task, that can never work; ``field`` is where it
    is in the trainer's YAML (``("hyperparameters", "max_iter")``, ``("function",)``)."""

    def __init__(self, field: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def builtin_estimator(function: str, task: str) -> Estimator:
    """What the built-in trainer ``function`` builds for ``task``; HyperparameterError if it
    cannot train that task."""
    for estimator in BUILTIN_ESTIMATORS[function]:
        if task in estimator.tasks:
            return estimator
    tasks = sorted({t for e in BUILTIN_ESTIMATORS[function] for t in e.tasks})
    raise HyperparameterError(
        ("function",),
        f"the built-in trainer {function!r} trains {' and '.join(tasks)} models, "
        f"not {task}; choose another trainer or task",
    )


def check_builtin_hyperparameters(
    function: str, task: str, hyperparameters: Mapping[str, Any]
) -> None:
    """Check a built-in trainer's YAML hyperparameters without importing its library.

    Raises HyperparameterError for a task the trainer cannot train, an unknown name or a value
    outside the estimator's documented constraints. Other trainers are not checked.
    """
    if function not in BUILTIN_ESTIMATORS:
        return
    estimator = builtin_estimator(function, task)
    for name, value in hyperparameters.items():
        constraints = estimator.parameters.get(name)
        if constraints is None:
            close = difflib.get_close_matches(name, estimator.parameters, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise HyperparameterError(
                ("hyperparameters", name),
                f"{estimator.name} has no hyperparameter {name!r}; {hint}it takes: "
                + ", ".join(sorted(estimator.parameters)),
            )
        if not any(satisfies(c, value) for c in constraints):
            raise HyperparameterError(
                ("hyperparameters", name),
                f"must be {' or '.join(_describe(c) for c in constraints)} for "
                f"{estimator.name}, got {value!r}",
            )


def satisfies(constraint: Constraint, value: Any) -> bool:
    if isinstance(constraint, str):
        return bool(_SIMPLE[constraint][1](value))
    return constraint.accepts(value)


def _describe(constraint: Constraint) -> str:
    return _SIMPLE[constraint][0] if isinstance(constraint, str) else constraint.describe()


def _num(value: float) -> str:
    return f"{value:g}"


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
