"""Model evaluation, as pure functions: predictions, metrics, quality gates and a summary picture.

Three task types are known (:data:`TASKS`):

* ``binary``: labels 0/1, predictions are positive-class probabilities;
* ``multiclass``: any int or string labels, predictions are an (n, k) probability matrix whose
  columns follow the sorted class labels;
* ``regression``: float targets and float predictions.

A model is either the ``model.joblib`` bundle the library's runner writes (a dict with
``estimator`` and ``feature_columns``) or any other file or folder together with a team's
``predict(artifact_path, features) -> array-like`` function, named ``module:function``.

Only the standard library is imported at module level (Dagster code locations and the YAML
validator import this module); numpy, scikit-learn, joblib and matplotlib are imported inside
the functions that need them.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_assets.transport import local_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")

BINARY_METRICS: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "log_loss",
    "brier_score",
)
MULTICLASS_METRICS: tuple[str, ...] = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "balanced_accuracy",
    "log_loss",
)
REGRESSION_METRICS: tuple[str, ...] = ("rmse", "mae", "r2", "max_error")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": BINARY_METRICS,
    "multiclass": MULTICLASS_METRICS,
    "regression": REGRESSION_METRICS,
}
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier_score", "rmse", "mae", "max_error"})
DEFAULT_PRIMARY_METRIC: dict[str, str] = {
    "binary": "roc_auc",
    "multiclass": "macro_f1",
    "regression": "rmse",
}
ROC_CURVE_MAX_POINTS = 200
SCATTER_MAX_POINTS = 500
RESIDUAL_BINS = 30
# Multiclass probability rows may be off from 1 by float32 rounding, not by more.
_ROW_SUM_TOLERANCE = 1e-3

_THRESHOLD_KEY = re.compile(r"^(min|max)_([a-z0-9][a-z0-9_/]*)$")


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return task


def default_primary_metric(task: str) -> str:
    """The metric champion and challenger are compared on when the team names none."""
    return DEFAULT_PRIMARY_METRIC[_check_task(task)]


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better.

    True for :data:`LOWER_IS_BETTER` and for any name ending in ``loss`` or ``error`` (a team's
    own ``calibration_error``, a training job's ``train/loss``); other metrics are taken to be
    better when higher.
    """
    base = metric.rsplit("/", 1)[-1]
    return base in LOWER_IS_BETTER or base.endswith(("loss", "error"))


def metric_functions(references: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """Import a team's extra metric functions, keyed by each function's ``__name__``.

    A reference that cannot be imported raises the error of :func:`ml_assets.references.resolve`,
    which names the module and the attribute.
    """
    from ml_assets.references import resolve

    found: dict[str, Callable[..., Any]] = {}
    for reference in references:
        function = resolve(reference)
        name = str(getattr(function, "__name__", reference.rsplit(":", 1)[-1]))
        if name in found:
            raise ValueError(f"two metric functions are named {name!r} ({reference})")
        found[name] = function
    return found


# --- loading and predicting -------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model: the runner's bundle, or an artifact scored by the team's function.

    For a bundle, ``estimator`` is the fitted object and ``feature_columns`` its input columns
    in training order; ``task`` and ``classes`` are what the runner recorded, if anything. With
    ``predict_function`` set (the team's ``predict``), it scores the artifact at ``artifact``
    and ``estimator`` is None.
    """

    estimator: Any
    feature_columns: tuple[str, ...] | None
    task: str | None = None
    classes: tuple[Any, ...] | None = None
    artifact: Path | None = None
    predict_function: Callable[..., Any] | None = field(default=None, compare=False)
    predict_reference: str | None = None

    @property
    def is_bundle(self) -> bool:
        """Whether the artifact is a ``model.joblib`` bundle holding an estimator."""
        return self.estimator is not None


def load_model(artifact_uri: str | os.PathLike[str], predict: str | None = None) -> TrainedModel:
    """Load a model artifact (a local path or file:// URI) for :func:`predict`.

    Without ``predict`` the artifact must be a ``.joblib`` bundle written by the library's
    runner. With ``predict`` (``"module:function"``), any file or folder works: the function
    is imported now (an ImportError names the module or attribute that is missing) and later
    called as ``function(artifact_path, features)``; the artifact is not opened here.

    Only load bundles this project's jobs wrote: joblib files are pickles and run code when
    loaded.
    """
    path = local_path(os.fspath(artifact_uri))
    if not path.exists():
        raise FileNotFoundError(f"model artifact {artifact_uri} does not exist")
    if predict:
        from ml_assets.references import resolve

        return TrainedModel(
            estimator=None,
            feature_columns=None,
            artifact=path,
            predict_function=resolve(predict),
            predict_reference=predict,
        )
    hint = "give `predict: module:function` in the team YAML to score it"
    if not path.is_file() or path.suffix != ".joblib":
        kind = "folder" if path.is_dir() else "file"
        raise ValueError(
            f"{artifact_uri} is a {kind}, not a model.joblib bundle written by the library's "
            f"runner; {hint}"
        )
    import joblib

    bundle = joblib.load(path)
    if not isinstance(bundle, dict) or not {"estimator", "feature_columns"} <= set(bundle):
        raise ValueError(
            f"{artifact_uri} is not a model bundle: expected a dict with 'estimator' and "
            f"'feature_columns'; {hint}"
        )
    classes = bundle.get("classes")
    return TrainedModel(
        estimator=bundle["estimator"],
        feature_columns=tuple(str(c) for c in bundle["feature_columns"]),
        task=bundle.get("task"),
        classes=tuple(_plain(c) for c in classes) if classes is not None else None,
        artifact=path,
    )


def class_labels(labels: Any) -> list[Any]:
    """The sorted distinct labels of a column, as plain Python values (the class order)."""
    import numpy as np

    values = np.asarray(labels)
    if values.dtype == object:
        present = {_plain(v) for v in values.tolist()}
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in present):
            raise ValueError("labels must not be missing")
        try:
            return sorted(present)
        except TypeError as error:
            raise ValueError(f"labels mix types that do not sort: {error}") from None
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ValueError("labels must not be missing")
    return [_plain(v) for v in np.unique(values).tolist()]


def predict(
    model: TrainedModel,
    features: pd.DataFrame,
    task: str,
    classes: Sequence[Any] | None = None,
) -> np.ndarray:
    """What ``task`` needs from ``model`` for each row of ``features``, as float64.

    * binary: 1-D probabilities of class 1;
    * multiclass: (n, k) probabilities, column j for ``classes[j]`` (the sorted labels of the
      features table; by default the bundle's recorded classes). An estimator's ``classes_``
      are reordered to match; a class it never saw gets probability 0;
    * regression: 1-D predictions.

    An estimator sees its training columns, selected by name in training order, so extra
    columns (``row_id``, ``label``, ``split``) are fine and a missing one is a ValueError naming
    it. A team's predict function gets the artifact path and the feature columns.
    """
    import numpy as np

    _check_task(task)
    if model.task and model.task != task:
        raise ValueError(f"the model was trained for task {model.task!r}, not {task!r}")
    wanted = [_plain(c) for c in classes] if classes is not None else None
    if wanted is None and model.classes is not None:
        wanted = list(model.classes)
    if task == "multiclass" and not wanted:
        raise ValueError("multiclass predictions need the class labels (the sorted labels)")
    columns = _input_columns(model, features)
    inputs = features[columns]
    if model.predict_function is not None:
        source = f"predict function {model.predict_reference}"
        raw = model.predict_function(model.artifact, inputs)
        try:
            output = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{source} returned {type(raw).__name__}, not numbers: {error}"
            ) from None
    else:
        source = f"estimator {type(model.estimator).__name__}"
        output = _estimator_output(model.estimator, inputs, task, wanted)
    return _conform(task, output, len(features), len(wanted or ()), source)


def predict_scores(model: TrainedModel, features: pd.DataFrame) -> np.ndarray:
    """Positive-class (label 1) probabilities: :func:`predict` for a binary model."""
    return predict(model, features, "binary")


def _input_columns(model: TrainedModel, features: pd.DataFrame) -> list[str]:
    if model.feature_columns is None:
        from ml_assets.features import feature_columns

        return feature_columns(features)
    missing = [c for c in model.feature_columns if c not in features.columns]
    if missing:
        raise ValueError(f"features are missing model columns: {', '.join(missing)}")
    return list(model.feature_columns)


def _estimator_output(
    estimator: Any, inputs: pd.DataFrame, task: str, classes: list[Any] | None
) -> np.ndarray:
    import numpy as np

    name = type(estimator).__name__
    if task == "regression":
        if not hasattr(estimator, "predict"):
            raise ValueError(f"estimator {name} has no predict method")
        return np.asarray(estimator.predict(inputs), dtype=np.float64)
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(
            f"estimator {name} has no predict_proba; a {task} classifier must give class "
            "probabilities"
        )
    known = [_plain(c) for c in np.asarray(getattr(estimator, "classes_", [])).tolist()]
    probabilities = np.asarray(estimator.predict_proba(inputs), dtype=np.float64)
    if task == "binary":
        if 1 not in known:
            raise ValueError(f"model has no positive class 1 (classes: {known})")
        return probabilities[:, known.index(1)]  # type: ignore[no-any-return]
    assert classes is not None
    unknown = [c for c in known if c not in classes]
    if unknown:
        raise ValueError(
            f"estimator {name} predicts classes {unknown} that the features' labels "
            f"{classes} do not have"
        )
    if probabilities.ndim != 2 or probabilities.shape[1] != len(known):
        raise ValueError(
            f"estimator {name} gave probabilities of shape {probabilities.shape} for "
            f"{len(known)} classes"
        )
    aligned = np.zeros((len(inputs), len(classes)), dtype=np.float64)
    for column, label in enumerate(known):
        aligned[:, classes.index(label)] = probabilities[:, column]
    return aligned


def _conform(task: str, output: np.ndarray, rows: int, k: int, source: str) -> np.ndarray:
    if task == "binary" and output.ndim == 2 and output.shape[1] == 2:
        output = output[:, 1]
    elif task != "multiclass" and output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    expected: tuple[int, ...] = (rows, k) if task == "multiclass" else (rows,)
    if output.shape != expected:
        wanted = {
            "binary": f"({rows},) positive-class probabilities or ({rows}, 2)",
            "multiclass": f"({rows}, {k}) probabilities, one column per class",
            "regression": f"({rows},) predictions",
        }[task]
        raise ValueError(f"{source} gave shape {output.shape}; {task} needs {wanted}")
    return output


def check_predictions(task: str, y_pred: Any) -> None:
    """Raise ValueError unless ``y_pred`` is valid output for ``task`` (see :func:`predict`).

    Binary: finite, in [0, 1]. Multiclass: finite, in [0, 1], rows summing to 1. Regression:
    finite.
    """
    import numpy as np

    values = np.asarray(y_pred, dtype=np.float64)
    if task == "regression":
        if not np.all(np.isfinite(values)):
            raise ValueError("regression predictions must be finite (found NaN or infinity)")
        return
    what = "y_score" if task == "binary" else "class probabilities"
    if not np.all(np.isfinite(values)) or (values.size and (values.min() < 0 or values.max() > 1)):
        raise ValueError(f"{what} must be finite probabilities in [0, 1]")
    if task == "multiclass":
        if values.ndim != 2:
            raise ValueError(f"class probabilities must be 2-D (rows, classes), got {values.shape}")
        sums = values.sum(axis=1)
        off = np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE
        if off.any():
            row = int(np.argmax(off))
            raise ValueError(
                f"class probabilities must sum to 1 per row; row {row} sums to {sums[row]:.6g}"
            )


# --- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate`.

    ``metrics`` holds the task's metrics (:data:`TASK_METRICS`), ``n`` (rows), per task extras
    (binary ``positive_rate``; multiclass ``recall_<class>`` per class present) and the team's
    own metrics. ``confusion_matrix`` has true labels as rows and predicted labels as columns,
    in the order of ``classes`` (binary: ``[[tn, fp], [fn, tp]]`` at ``decision_threshold``;
    regression: empty). ``fpr``/``tpr`` are binary ROC points, at most
    :data:`ROC_CURVE_MAX_POINTS`, from (0, 0) to (1, 1); ``points`` are regression
    ``[actual, predicted]`` pairs, at most :data:`SCATTER_MAX_POINTS`, and
    ``residual_edges``/``residual_counts`` a histogram of all residuals (predicted - actual).
    """

    metrics: dict[str, float]
    confusion_matrix: list[list[int]]
    fpr: list[float]
    tpr: list[float]
    decision_threshold: float | None
    task: str = "binary"
    classes: list[Any] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    residual_edges: list[float] = field(default_factory=list)
    residual_counts: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, e.g. for asset metadata or a registry."""
        return asdict(self)


def evaluate(
    task: str,
    y_true: Any,
    y_pred: Any,
    *,
    classes: Sequence[Any] | None = None,
    decision_threshold: float = 0.5,
    extra_metrics: Mapping[str, Callable[..., Any]] | None = None,
) -> Evaluation:
    """Score predictions for ``task`` (see :func:`predict` for what ``y_pred`` holds).

    * binary: every metric in :data:`BINARY_METRICS`, ``n``, ``positive_rate``, the 2x2
      confusion matrix at ``decision_threshold`` (a row is positive when its score is ``>=``
      it) and the ROC curve. Ranking metrics use the scores, log loss and Brier score the
      probabilities, the rest the thresholded predictions; precision and F1 are 0.0 when nothing
      is predicted positive. A single class in ``y_true`` is a ValueError: ROC AUC and average
      precision would be undefined.
    * multiclass: :data:`MULTICLASS_METRICS`, ``n`` and ``recall_<class>`` for each class present
      in ``y_true``; the predicted class is the most probable one. ``classes`` (default: the
      sorted labels of ``y_true``) orders the probability columns and the NxN confusion matrix.
      Macro and weighted averages run over the classes that occur in ``y_true`` or the
      predictions (scikit-learn's default), with 0 for an undefined precision or recall.
      ``balanced_accuracy`` is the mean recall over the classes in ``y_true``.
    * regression: :data:`REGRESSION_METRICS` and ``n``, sample points for a scatter plot and a
      residual histogram. A constant ``y_true`` is a ValueError (R² is undefined).

    Each ``extra_metrics`` function is called as ``function(y_true, y_pred)`` with the labels
    and the predictions given here as numpy arrays; its number is reported under its key.
    """
    _check_task(task)
    if task == "binary":
        result = _evaluate_binary(y_true, y_pred, decision_threshold)
    elif task == "multiclass":
        result = _evaluate_multiclass(y_true, y_pred, classes)
    else:
        result = _evaluate_regression(y_true, y_pred)
    if extra_metrics:
        result.metrics.update(_extra_metrics(extra_metrics, y_true, y_pred, result.metrics))
    return result


def _labels_and_predictions(y_true: Any, y_pred: Any, ndim: int) -> tuple[Any, Any]:
    import numpy as np

    labels = np.asarray(y_true)
    try:
        predictions = np.asarray(y_pred, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"predictions must be numbers: {error}") from None
    name = "y_score" if ndim == 1 else "y_pred"
    if labels.ndim != 1 or predictions.ndim != ndim or len(labels) != len(predictions):
        raise ValueError(
            f"y_true must be 1-D and {name} {ndim}-D, of equal length; got shapes "
            f"{labels.shape} and {predictions.shape}"
        )
    if len(labels) == 0:
        raise ValueError("cannot evaluate zero rows")
    return labels, predictions


def _evaluate_binary(y_true: Any, y_score: Any, decision_threshold: float) -> Evaluation:
    import numpy as np
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
        roc_curve,
    )

    labels, scores = _labels_and_predictions(y_true, y_score, 1)
    present = set(np.unique(labels).tolist())
    if not present <= {0, 1}:
        raise ValueError(f"y_true must hold labels 0/1, found {sorted(present, key=str)}")
    if len(present) == 1:
        raise ValueError(
            f"y_true contains a single class ({present.pop()}) in {len(labels)} rows; ROC AUC "
            "and average precision are undefined, so nothing is reported"
        )
    check_predictions("binary", scores)
    if not 0.0 <= decision_threshold <= 1.0:
        raise ValueError(f"decision_threshold must be in [0, 1], got {decision_threshold}")

    labels = labels.astype(np.int64)
    predicted = (scores >= decision_threshold).astype(np.int64)
    metrics: dict[str, float] = {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0.0)),
        "recall": float(recall_score(labels, predicted, zero_division=0.0)),
        "f1": float(f1_score(labels, predicted, zero_division=0.0)),
        "log_loss": float(log_loss(labels, scores, labels=[0, 1])),
        "brier_score": float(brier_score_loss(labels, scores)),
        "n": len(labels),
        "positive_rate": float(labels.mean()),
    }
    matrix = confusion_matrix(labels, predicted, labels=[0, 1])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
    fpr_points, tpr_points = _downsample(fpr, tpr, ROC_CURVE_MAX_POINTS)
    return Evaluation(
        metrics=metrics,
        confusion_matrix=[[int(v) for v in row] for row in matrix.tolist()],
        fpr=fpr_points,
        tpr=tpr_points,
        decision_threshold=float(decision_threshold),
        task="binary",
        classes=[0, 1],
    )


def _downsample(fpr: Any, tpr: Any, max_points: int) -> tuple[list[float], list[float]]:
    if len(fpr) > max_points:
        keep = _spread(len(fpr), max_points)
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(v), 6) for v in fpr], [round(float(v), 6) for v in tpr]


def _spread(length: int, count: int) -> Any:
    """At most ``count`` indices evenly spaced over ``range(length)``, both ends kept."""
    import numpy as np

    return np.unique(np.round(np.linspace(0, length - 1, count)).astype(np.int64))


def _evaluate_multiclass(y_true: Any, y_pred: Any, classes: Sequence[Any] | None) -> Evaluation:
    import numpy as np
    from sklearn.metrics import f1_score, log_loss, precision_score, recall_score

    labels, probabilities = _labels_and_predictions(y_true, y_pred, 2)
    order = [_plain(c) for c in classes] if classes is not None else class_labels(labels)
    if len(set(order)) != len(order):
        raise ValueError(f"classes must be distinct, got {order}")
    if len(order) < 2:
        raise ValueError(f"multiclass evaluation needs at least 2 classes, got {order}")
    if probabilities.shape[1] != len(order):
        raise ValueError(
            f"y_pred has {probabilities.shape[1]} columns for {len(order)} classes {order}"
        )
    index = {label: i for i, label in enumerate(order)}
    unknown = sorted({str(v) for v in map(_plain, labels.tolist()) if v not in index})
    if unknown:
        raise ValueError(f"y_true has labels {unknown} that are not among the classes {order}")
    check_predictions("multiclass", probabilities)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)

    truth = np.array([index[_plain(v)] for v in labels.tolist()], dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    k = len(order)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    support = matrix.sum(axis=1)
    recalls = {i: matrix[i, i] / support[i] for i in range(k) if support[i]}
    averaged = sorted(set(truth.tolist()) | set(predicted.tolist()))

    def average(score: Callable[..., Any], how: str) -> float:
        return float(score(truth, predicted, labels=averaged, average=how, zero_division=0.0))

    metrics: dict[str, float] = {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": average(f1_score, "macro"),
        "weighted_f1": average(f1_score, "weighted"),
        "macro_precision": average(precision_score, "macro"),
        "macro_recall": average(recall_score, "macro"),
        "balanced_accuracy": float(np.mean(list(recalls.values()))),
        "log_loss": float(log_loss(truth, probabilities, labels=list(range(k)))),
        "n": len(truth),
    }
    for name, i in _recall_names(order).items():
        if i in recalls:
            metrics[name] = float(recalls[i])
    return Evaluation(
        metrics=metrics,
        confusion_matrix=matrix.tolist(),
        fpr=[],
        tpr=[],
        decision_threshold=None,
        task="multiclass",
        classes=order,
    )


def recall_metric_name(label: Any) -> str:
    """``recall_<label>``, the label lower-cased with anything but [a-z0-9_] as ``_``."""
    return "recall_" + re.sub(r"[^a-z0-9_]", "_", str(label).lower())


def _recall_names(classes: list[Any]) -> dict[str, int]:
    """Per-class recall metric names; labels that clash once cleaned get ``_2``, ``_3``..."""
    names: dict[str, int] = {}
    for i, label in enumerate(classes):
        name, suffix = recall_metric_name(label), 2
        while name in names:
            name, suffix = f"{recall_metric_name(label)}_{suffix}", suffix + 1
        names[name] = i
    return names


def _evaluate_regression(y_true: Any, y_pred: Any) -> Evaluation:
    import numpy as np

    labels, predictions = _labels_and_predictions(y_true, y_pred, 1)
    try:
        actual = labels.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"regression targets must be numbers: {error}") from None
    if not np.all(np.isfinite(actual)):
        raise ValueError("regression targets must be finite (found NaN or infinity)")
    check_predictions("regression", predictions)
    if np.all(actual == actual[0]):
        raise ValueError(
            f"y_true is constant ({actual[0]:g}) in {len(actual)} rows; R² is undefined, so "
            "nothing is reported"
        )
    residuals = predictions - actual
    total = float(np.sum((actual - actual.mean()) ** 2))
    metrics: dict[str, float] = {
        "rmse": float(np.sqrt(np.mean(residuals**2))),
        "mae": float(np.mean(np.abs(residuals))),
        "r2": 1.0 - float(np.sum(residuals**2)) / total,
        "max_error": float(np.max(np.abs(residuals))),
        "n": len(actual),
    }
    keep = _spread(len(actual), SCATTER_MAX_POINTS)
    counts, edges = np.histogram(residuals, bins=RESIDUAL_BINS)
    return Evaluation(
        metrics=metrics,
        confusion_matrix=[],
        fpr=[],
        tpr=[],
        decision_threshold=None,
        task="regression",
        points=[
            [_short(a), _short(p)] for a, p in zip(actual[keep], predictions[keep], strict=True)
        ],
        residual_edges=[_short(v) for v in edges],
        residual_counts=[int(v) for v in counts],
    )


def _extra_metrics(
    functions: Mapping[str, Callable[..., Any]],
    y_true: Any,
    y_pred: Any,
    computed: dict[str, float],
) -> dict[str, float]:
    import numpy as np

    labels, predictions = np.asarray(y_true), np.asarray(y_pred, dtype=np.float64)
    found: dict[str, float] = {}
    for name, function in functions.items():
        if name in computed:
            raise ValueError(f"metric function {name!r} has the name of a built-in metric")
        try:
            value = function(labels, predictions)
        except Exception as error:
            raise ValueError(
                f"metric function {name!r} failed: {type(error).__name__}: {error}"
            ) from error
        number = _number(value)
        if number is None:
            raise ValueError(f"metric function {name!r} returned {value!r}, not a number")
        found[name] = number
    return found


def _number(value: Any) -> float | None:
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (labels compare and serialise as such)."""
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def _short(value: Any) -> float:
    return float(f"{float(value):.6g}")


# --- quality gates ------------------------------------------------------------------------


def _parse_threshold_key(key: Any) -> tuple[str, str] | None:
    match = _THRESHOLD_KEY.match(key) if isinstance(key, str) else None
    return (match.group(1), match.group(2)) if match else None


def threshold_key_is_valid(key: str) -> bool:
    """Whether ``key`` is ``min_<metric>`` or ``max_<metric>``, the metric made of [a-z0-9_/].

    Any metric name is accepted (a team may gate on its own metric functions or on what its
    training job reported, e.g. ``min_train/accuracy``); :func:`check_thresholds` fails if the
    metric was not computed.
    """
    return _parse_threshold_key(key) is not None


def check_thresholds(metrics: Mapping[str, float], thresholds: Mapping[str, float]) -> list[str]:
    """Compare metrics with quality gates; return one message per failed gate, [] if all pass.

    Gate keys are ``min_<metric>`` (metric must be >= limit) or ``max_<metric>`` (<= limit),
    e.g. ``{"min_roc_auc": 0.9, "max_log_loss": 0.4}``. Failures read like
    ``"roc_auc 0.712 < min 0.9"`` or ``"log_loss 0.512 > max 0.4"``; a NaN metric always
    fails. A malformed key, a non-numeric limit or a gate on a metric absent from ``metrics``
    raises ValueError, since a gate that cannot be checked must not pass silently.
    """
    failures: list[str] = []
    for key, limit in thresholds.items():
        parsed = _parse_threshold_key(key)
        if parsed is None:
            raise ValueError(
                f"unknown threshold {key!r}; thresholds are min_<metric> or max_<metric>"
            )
        bound, metric = parsed
        if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or math.isnan(limit):
            raise ValueError(f"threshold {key} must be a number, got {limit!r}")
        if metric not in metrics:
            computed = ", ".join(sorted(metrics)) or "none"
            raise ValueError(
                f"threshold {key} refers to metric {metric!r}, which was not computed "
                f"(computed: {computed})"
            )
        value = float(metrics[metric])
        if bound == "min" and not value >= limit:
            failures.append(f"{metric} {value:.4g} < min {limit:.4g}")
        elif bound == "max" and not value <= limit:
            failures.append(f"{metric} {value:.4g} > max {limit:.4g}")
    return failures


# --- the picture ----------------------------------------------------------------------------


def render_evaluation_png(evaluation: Evaluation, title: str) -> bytes:
    """Render a PNG summary of ``evaluation``, by task.

    * binary (900x400 px): the ROC curve (AUC in the legend) beside the confusion matrix;
    * multiclass (1000x450 px): the NxN confusion matrix (counts, labelled axes) beside the
      recall of each class;
    * regression (900x400 px): predicted against actual with the identity line, beside the
      histogram of residuals.

    Uses matplotlib's object-oriented Figure with the Agg canvas, never pyplot, so nothing is
    registered globally, no GUI backend is touched and repeated calls do not accumulate figures.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = (10.0, 4.5) if evaluation.task == "multiclass" else (9.0, 4.0)
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    figure.suptitle(title, fontsize=12)
    if evaluation.task == "binary":
        _draw_roc(left, evaluation)
        _draw_confusion(
            right,
            evaluation.confusion_matrix,
            ["0 (negative)", "1 (positive)"],
            f"Confusion matrix (threshold {evaluation.decision_threshold:.2f})",
        )
    elif evaluation.task == "multiclass":
        labels = [str(c) for c in evaluation.classes]
        _draw_confusion(left, evaluation.confusion_matrix, labels, "Confusion matrix")
        _draw_class_recall(right, evaluation.confusion_matrix, labels)
    else:
        _draw_scatter(left, evaluation)
        _draw_residuals(right, evaluation)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_roc(axes: Any, evaluation: Evaluation) -> None:
    auc = evaluation.metrics.get("roc_auc", float("nan"))
    axes.plot(evaluation.fpr, evaluation.tpr, color="tab:blue", lw=2, label=f"AUC = {auc:.3f}")
    axes.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)


def _draw_confusion(axes: Any, counts: list[list[int]], labels: list[str], title: str) -> None:
    k = len(counts)
    axes.imshow(counts, cmap="Blues", vmin=0)
    peak = max(max(row) for row in counts) or 1
    if k <= 20:  # beyond that the numbers would not fit; the colours still tell
        fontsize = 13 if k <= 3 else max(6, 13 - k // 2)
        for row, values in enumerate(counts):
            for column, count in enumerate(values):
                axes.text(
                    column,
                    row,
                    f"{count:,}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if count > peak / 2 else "black",
                )
    ticks = list(range(k))
    axes.set_xticks(ticks, labels=labels, rotation=45 if k > 6 else 0)
    axes.set_yticks(ticks, labels=labels)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)


def _draw_class_recall(axes: Any, counts: list[list[int]], labels: list[str]) -> None:
    recalls = [row[i] / sum(row) if sum(row) else 0.0 for i, row in enumerate(counts)]
    positions = list(range(len(labels)))
    axes.barh(positions, recalls, color="tab:blue")
    for position, (recall, row) in enumerate(zip(recalls, counts, strict=True)):
        text = f"{recall:.2f}" if sum(row) else "no rows"
        inside = recall > 0.85  # no room right of the bar: write on it
        axes.text(
            recall - 0.01 if inside else recall + 0.01,
            position,
            text,
            va="center",
            ha="right" if inside else "left",
            color="white" if inside else "black",
            fontsize=9,
        )
    axes.set_yticks(positions, labels=labels)
    axes.invert_yaxis()  # the first class on top, as in the matrix
    axes.set(xlim=(0, 1), title="Recall per class")
    axes.set_xlabel("Recall (share of the class's rows predicted as it)")
    axes.grid(axis="x", alpha=0.3)


def _draw_scatter(axes: Any, evaluation: Evaluation) -> None:
    actual = [p[0] for p in evaluation.points]
    predicted = [p[1] for p in evaluation.points]
    low, high = min(actual + predicted), max(actual + predicted)
    axes.scatter(actual, predicted, s=10, alpha=0.6, color="tab:blue")
    axes.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="predicted = actual")
    rmse, r2 = evaluation.metrics.get("rmse", math.nan), evaluation.metrics.get("r2", math.nan)
    axes.set_title(f"Predicted vs actual (RMSE {rmse:.4g}, R² {r2:.3f})")
    axes.set_xlabel("Actual")
    axes.set_ylabel("Predicted")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)


def _draw_residuals(axes: Any, evaluation: Evaluation) -> None:
    axes.stairs(evaluation.residual_counts, evaluation.residual_edges, fill=True, alpha=0.7)
    axes.axvline(0.0, color="grey", lw=1, ls="--")
    axes.set_title("Residuals (predicted - actual)")
    axes.set_xlabel("Residual")
    axes.set_ylabel("Rows")
    axes.grid(alpha=0.3)
