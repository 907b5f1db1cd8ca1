"""The built-in trainers' hyperparameter table: checked when a location loads, and kept equal to
the estimators it describes (scikit-learn's ``_parameter_constraints``, the torch MLP's checks)."""

from __future__ import annotations

import importlib
import math
import numbers
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_assets.teams.spec import TeamSpecError, load_team_spec
from ml_assets.training.builtin import (
    BOOLEAN,
    BUILTIN_ESTIMATORS,
    BUILTIN_TRAINERS,
    INTEGER,
    LIST,
    MAPPING,
    NONE,
    RANDOM_STATE,
    STRING,
    VERBOSE,
    Constraint,
    Estimator,
    HyperparameterError,
    Interval,
    Options,
    check_builtin_hyperparameters,
    satisfies,
)

TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"
ESTIMATORS = [e for estimators in BUILTIN_ESTIMATORS.values() for e in estimators]
SKLEARN = [e for e in ESTIMATORS if e.target.startswith("sklearn.")]
# Values a YAML file can hold, to probe the table against the estimators' own checks.
PROBES: list[Any] = [
    *(-5, -1, 0, 1, 2, 31, 255, 256, 2**32 - 1, 2**32),
    *(-0.1, 0.0, 0.3, 0.5, 1.0, 1.5, float("nan"), float("inf")),
    *(True, False, None, "", "auto", "sqrt", "balanced", "log_loss", "gini", "squared_error"),
    *([], [1, 2], [0, 1], [16, 0], {"a": 1}),
]


def _import(target: str) -> Any:
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _id(estimator: Estimator) -> str:
    return estimator.name


# --- what a team writes ------------------------------------------------------------------------


def test_every_builtin_has_a_table() -> None:
    assert set(BUILTIN_ESTIMATORS) == set(BUILTIN_TRAINERS)


@pytest.mark.parametrize("team", sorted(p.parent.name for p in TEAMS.glob("*/team.yaml")))
def test_the_shipped_teams_hyperparameters_are_accepted(team: str) -> None:
    spec = load_team_spec(TEAMS / team / "team.yaml")  # checks them, and would raise
    for model in spec.models.values():
        if model.trainer.function in BUILTIN_TRAINERS:
            check_builtin_hyperparameters(
                model.trainer.function, model.task, model.trainer.hyperparameters
            )


def test_the_shipped_teams_use_builtins() -> None:
    used = {
        model.trainer.function
        for path in TEAMS.glob("*/team.yaml")
        for model in load_team_spec(path).models.values()
    }
    assert {"logistic_regression", "hist_gradient_boosting", "torch_mlp"} <= used


GOOD: list[tuple[str, str, dict[str, Any]]] = [
    ("logistic_regression", "multiclass", {"C": 0.5, "penalty": None, "class_weight": "balanced"}),
    ("hist_gradient_boosting", "regression", {"loss": "quantile", "quantile": 0.9}),
    ("hist_gradient_boosting", "binary", {"early_stopping": True, "validation_fraction": 0.2}),
    ("random_forest", "binary", {"n_estimators": 50, "max_features": "sqrt", "max_depth": None}),
    ("random_forest", "regression", {"min_samples_leaf": 0.1, "criterion": "absolute_error"}),
    ("torch_mlp", "binary", {"hidden_sizes": [], "epochs": 1, "lr": 0.5, "device": "cpu"}),
]


@pytest.mark.parametrize(("function", "task", "hyperparameters"), GOOD)
def test_valid_hyperparameters_pass(
    function: str, task: str, hyperparameters: dict[str, Any]
) -> None:
    check_builtin_hyperparameters(function, task, hyperparameters)


def _load_with(tmp_path: Path, function: str, task: str, hyperparameters: dict[str, Any]) -> str:
    """The fraud team with the given trainer: the TeamSpecError its load raises, as text."""
    spec = yaml.safe_load((TEAMS / "fraud" / "team.yaml").read_text())
    model = spec["models"]["fraud_detector"]
    model["task"] = task
    model["trainer"] = {"function": function, "hyperparameters": hyperparameters}
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(TeamSpecError) as raised:
        load_team_spec(path)
    message = str(raised.value)
    assert message.startswith(f"{path}, line ")
    return message


def _line(path: Path, key: str) -> int:
    return next(i for i, row in enumerate(path.read_text().splitlines(), 1) if f"{key}:" in row)


BAD: list[tuple[str, str, str, Any, str]] = [
    ("logistic_regression", "binary", "max_iter", -5, "an integer >= 0"),
    ("logistic_regression", "binary", "C", 0, "a number > 0"),
    ("logistic_regression", "multiclass", "solver", "adam", "one of 'lbfgs'"),
    ("hist_gradient_boosting", "binary", "max_iter", -5, "an integer >= 1"),
    ("hist_gradient_boosting", "binary", "learning_rate", 0.0, "a number > 0"),
    ("hist_gradient_boosting", "regression", "loss", "log_loss", "'squared_error'"),
    ("hist_gradient_boosting", "binary", "max_bins", 256, "an integer in [2, 255]"),
    ("random_forest", "multiclass", "n_estimators", 0, "an integer >= 1"),
    ("random_forest", "regression", "criterion", "gini", "'squared_error'"),
    ("random_forest", "binary", "max_depth", 2.5, "an integer >= 1 or null"),
    ("torch_mlp", "binary", "epochs", 0, "an integer >= 1"),
    ("torch_mlp", "binary", "lr", -0.1, "a number > 0"),
    ("torch_mlp", "binary", "hidden_sizes", [16, 0], "a list of integer >= 1s"),
    ("torch_mlp", "binary", "device", "tpu", "'auto', 'cpu', 'cuda'"),
]


@pytest.mark.parametrize(("function", "task", "name", "value", "expected"), BAD)
def test_a_bad_value_fails_the_load_with_file_line_and_field(
    tmp_path: Path, function: str, task: str, name: str, value: Any, expected: str
) -> None:
    message = _load_with(tmp_path, function, task, {name: value})
    line = _line(tmp_path / "team.yaml", name)
    field = f"models.fraud_detector.trainer.hyperparameters.{name}"
    assert f", line {line}: {field}: must be " in message
    assert expected in message and repr(value) in message


@pytest.mark.parametrize(("function", "task"), sorted({(f, t) for f, t, *_ in BAD}))
def test_an_unknown_name_fails_the_load_and_suggests_the_right_one(
    tmp_path: Path, function: str, task: str
) -> None:
    known = sorted(builtin_parameters(function, task))[0]
    message = _load_with(tmp_path, function, task, {known + "x": 1})
    line = _line(tmp_path / "team.yaml", known + "x")
    assert f", line {line}: models.fraud_detector.trainer.hyperparameters.{known}x: " in message
    assert f"has no hyperparameter '{known}x'; did you mean '{known}'?" in message


def builtin_parameters(function: str, task: str) -> set[str]:
    [estimator] = [e for e in BUILTIN_ESTIMATORS[function] if task in e.tasks]
    return set(estimator.parameters)


@pytest.mark.parametrize(
    ("function", "task"), [("logistic_regression", "regression"), ("torch_mlp", "multiclass")]
)
def test_a_task_the_builtin_cannot_train_fails_the_load(
    tmp_path: Path, function: str, task: str
) -> None:
    message = _load_with(tmp_path, function, task, {})
    assert "models.fraud_detector.trainer.function: " in message
    assert f"the built-in trainer '{function}' trains" in message and f"not {task}" in message


def test_a_team_function_is_not_checked() -> None:
    check_builtin_hyperparameters("ml_assets.teams.wine.train:fit", "binary", {"whatever": -5})
    with pytest.raises(HyperparameterError):
        check_builtin_hyperparameters("random_forest", "binary", {"whatever": -5})


# --- the table agrees with the estimators ------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=_id)
def test_the_table_names_every_parameter_of_the_estimator(estimator: Estimator) -> None:
    assert set(estimator.parameters) == set(_import(estimator.target)().get_params())


def _from_sklearn(constraint: Any) -> Constraint | None:
    """One of scikit-learn's constraints in the table's terms; None for what YAML cannot write."""
    from sklearn.utils._param_validation import Hidden, RealNotInt, StrOptions
    from sklearn.utils._param_validation import Interval as SkInterval

    if isinstance(constraint, Hidden) or constraint is callable:
        return None
    if isinstance(constraint, SkInterval):
        kinds: dict[type, Any] = {
            numbers.Integral: "int",
            numbers.Real: "real",
            RealNotInt: "real_not_int",
        }
        kind = kinds[constraint.type]
        return Interval(kind, constraint.left, constraint.right, constraint.closed)
    if isinstance(constraint, StrOptions):
        return Options(frozenset(constraint.options))
    simple = {"boolean": BOOLEAN, "random_state": RANDOM_STATE, "verbose": VERBOSE}
    if isinstance(constraint, str) and constraint in simple:
        return simple[constraint]
    if constraint == "array-like" or constraint in (list, tuple):
        return LIST
    types = {type(None): NONE, dict: MAPPING, str: STRING, numbers.Integral: INTEGER}
    if constraint is None or constraint in types:
        return types[type(None) if constraint is None else constraint]
    if isinstance(constraint, type):
        return None  # an object such as a loss or criterion class
    raise AssertionError(f"a constraint the table cannot express yet: {constraint!r}")


@pytest.mark.parametrize("estimator", SKLEARN, ids=_id)
def test_the_table_has_scikit_learns_constraints(estimator: Estimator) -> None:
    documented = _import(estimator.target)._parameter_constraints
    for name, constraints in documented.items():
        expected = {c for c in map(_from_sklearn, constraints) if c is not None}
        assert set(estimator.parameters[name]) == expected, name


@pytest.mark.parametrize("estimator", SKLEARN, ids=_id)
def test_whatever_the_table_accepts_scikit_learn_accepts(estimator: Estimator) -> None:
    from sklearn.utils._param_validation import (
        InvalidParameterError,
        validate_parameter_constraints,
    )

    documented = _import(estimator.target)._parameter_constraints
    accepted = 0
    for name, constraints in estimator.parameters.items():
        for value in PROBES:
            if not any(satisfies(c, value) for c in constraints):
                continue
            accepted += 1
            try:
                validate_parameter_constraints(
                    {name: documented[name]}, {name: value}, estimator.name
                )
            except InvalidParameterError as exc:
                pytest.fail(f"the table accepts {name}={value!r}, scikit-learn does not: {exc}")
    assert accepted > len(estimator.parameters)


def test_the_torch_mlp_rules_are_the_classifiers_own() -> None:
    from ml_assets.training.torch_mlp import DEVICES, TorchMLPClassifier

    [estimator] = BUILTIN_ESTIMATORS["torch_mlp"]
    assert estimator.parameters["device"] == (Options(frozenset(DEVICES)),)
    for name, constraints in estimator.parameters.items():
        if name == "device":
            continue
        for value in PROBES:
            table = any(satisfies(c, value) for c in constraints)
            try:
                TorchMLPClassifier(**{name: value})._check_hyperparameters()
            except ValueError:
                classifier = False
            else:
                classifier = True
            # Equal, except that the table also turns away an infinite learning rate or decay.
            infinite = isinstance(value, float) and math.isinf(value)
            assert table == classifier or (infinite and not table), (name, value)


def test_nan_and_bools_are_not_numbers() -> None:
    assert not Interval("real", 0, None, "left").accepts(math.nan)
    assert not Interval("int", 1, None, "left").accepts(True)
    assert Interval("real", 0, 1, "both").accepts(1)
    assert not Interval("real_not_int", 0, 1, "right").accepts(1)
