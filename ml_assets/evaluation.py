"""Model evaluation, as pure functions: scores, metrics, quality gates and a summary picture.

Only the standard library is imported at module level (Dagster code locations and the YAML
validator import this module); numpy, scikit-learn, joblib and matplotlib are imported inside
the functions that need them.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ml_assets.transport import local_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

METRICS: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "log_loss",
    "brier_score",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier_score"})
ROC_CURVE_MAX_POINTS = 200

_THRESHOLD_PREFIXES = ("min_", "max_")


@dataclass(frozen=True)
class TrainedModel:
    """A fitted estimator and the feature columns it was trained on, in training order."""

    estimator: Any
    feature_columns: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate`.

    ``metrics`` holds every name in :data:`METRICS` plus ``n`` (rows) and ``positive_rate``
    (share of label 1); ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` at
    ``decision_threshold``; ``fpr``/``tpr`` are ROC curve points, at most
    :data:`ROC_CURVE_MAX_POINTS`, from (0, 0) to (1, 1).
    """

    metrics: dict[str, float]
    confusion_matrix: list[list[int]]
    fpr: list[float]
    tpr: list[float]
    decision_threshold: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, e.g. for asset metadata or a registry."""
        return asdict(self)


def load_model(artifact_uri: str | os.PathLike[str]) -> TrainedModel:
    """Load a ``model.joblib`` written by the training entrypoint (a local path or file:// URI).

    Only load artifacts this project wrote: joblib files are pickles and run code when loaded.
    """
    import joblib

    bundle = joblib.load(local_path(os.fspath(artifact_uri)))
    if not isinstance(bundle, dict) or not {"estimator", "feature_columns"} <= set(bundle):
        raise ValueError(
            f"{artifact_uri} is not a model bundle: expected a dict with 'estimator' and "
            "'feature_columns'"
        )
    return TrainedModel(
        estimator=bundle["estimator"],
        feature_columns=tuple(str(c) for c in bundle["feature_columns"]),
    )


def predict_scores(model: TrainedModel, features: pd.DataFrame) -> np.ndarray:
    """Positive-class (label 1) probabilities for each row of ``features``, as float64.

    Columns are selected by name in the order the model was trained with, so extra columns
    (``row_id``, ``label``, ``split``) and a different column order in ``features`` are fine;
    a missing feature column is a ValueError naming it.
    """
    import numpy as np

    missing = [c for c in model.feature_columns if c not in features.columns]
    if missing:
        raise ValueError(f"features are missing model columns: {', '.join(missing)}")
    classes = list(getattr(model.estimator, "classes_", []))
    if 1 not in classes:
        raise ValueError(f"model has no positive class 1 (classes: {classes})")
    probabilities = model.estimator.predict_proba(features[list(model.feature_columns)])
    return np.asarray(probabilities[:, classes.index(1)], dtype=np.float64)


def _downsample(fpr: Any, tpr: Any, max_points: int) -> tuple[list[float], list[float]]:
    import numpy as np

    if len(fpr) > max_points:
        # Evenly spaced over the curve's vertices, always keeping both end points.
        keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(v), 6) for v in fpr], [round(float(v), 6) for v in tpr]


def evaluate(y_true: Any, y_score: Any, decision_threshold: float = 0.5) -> Evaluation:
    """Score binary predictions: every metric in :data:`METRICS`, the confusion matrix, ROC.

    ``y_true`` holds labels 0/1 (bools work), ``y_score`` positive-class probabilities in
    [0, 1]; a row is predicted positive when its score is ``>= decision_threshold``. Ranking
    metrics (ROC AUC, average precision) use the scores; the others use the thresholded
    predictions, except log loss and Brier score, which use the probabilities. Precision and F1
    are 0.0 when nothing is predicted positive (scikit-learn's ``zero_division=0``).

    Raises ValueError when ``y_true`` has a single class, because ROC AUC and average precision
    are then undefined and any number reported for them would be invented.
    """
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

    labels = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or len(labels) != len(scores):
        raise ValueError(
            f"y_true and y_score must be 1-D and of equal length, got shapes "
            f"{labels.shape} and {scores.shape}"
        )
    if len(labels) == 0:
        raise ValueError("cannot evaluate zero rows")
    present = set(np.unique(labels).tolist())
    if not present <= {0, 1}:
        raise ValueError(f"y_true must hold labels 0/1, found {sorted(present, key=str)}")
    if len(present) == 1:
        raise ValueError(
            f"y_true contains a single class ({present.pop()}) in {len(labels)} rows; ROC AUC "
            "and average precision are undefined, so nothing is reported"
        )
    if not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError("y_score must be finite probabilities in [0, 1]")
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
    )


def _parse_threshold_key(key: str) -> tuple[str, str] | None:
    for prefix in _THRESHOLD_PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in METRICS:
            return prefix[:-1], key[len(prefix) :]
    return None


def threshold_key_is_valid(key: str) -> bool:
    """Whether ``key`` is ``min_<metric>`` or ``max_<metric>`` for a metric in :data:`METRICS`."""
    return isinstance(key, str) and _parse_threshold_key(key) is not None


def check_thresholds(metrics: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Compare metrics with quality gates; return one message per failed gate, [] if all pass.

    Gate keys are ``min_<metric>`` (metric must be >= limit) or ``max_<metric>`` (<= limit),
    e.g. ``{"min_roc_auc": 0.9, "max_log_loss": 0.4}``. Failures read like
    ``"roc_auc 0.712 < min 0.9"`` or ``"log_loss 0.512 > max 0.4"``; a NaN metric always
    fails. An unknown key, a non-numeric limit or a gate on a metric absent from ``metrics``
    raises ValueError, since a gate that cannot be checked must not pass silently.
    """
    failures: list[str] = []
    for key, limit in thresholds.items():
        parsed = _parse_threshold_key(key) if isinstance(key, str) else None
        if parsed is None:
            valid = ", ".join(f"min_{m}/max_{m}" for m in METRICS)
            raise ValueError(f"unknown threshold {key!r}; valid thresholds: {valid}")
        bound, metric = parsed
        if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or math.isnan(limit):
            raise ValueError(f"threshold {key} must be a number, got {limit!r}")
        if metric not in metrics:
            raise ValueError(f"threshold {key} refers to metric {metric!r}, which was not computed")
        value = float(metrics[metric])
        if bound == "min" and not value >= limit:
            failures.append(f"{metric} {value:.4g} < min {limit:.4g}")
        elif bound == "max" and not value <= limit:
            failures.append(f"{metric} {value:.4g} > max {limit:.4g}")
    return failures


def render_evaluation_png(evaluation: Evaluation, title: str) -> bytes:
    """Render a 900x400 px PNG: the ROC curve (AUC in the legend) beside the confusion matrix.

    Uses matplotlib's object-oriented Figure with the Agg canvas, never pyplot, so nothing is
    registered globally, no GUI backend is touched and repeated calls do not accumulate figures.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    roc_axes, matrix_axes = figure.subplots(1, 2)
    figure.suptitle(title, fontsize=12)

    auc = evaluation.metrics.get("roc_auc", float("nan"))
    roc_axes.plot(evaluation.fpr, evaluation.tpr, color="tab:blue", lw=2, label=f"AUC = {auc:.3f}")
    roc_axes.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    roc_axes.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    roc_axes.set_xlabel("False positive rate")
    roc_axes.set_ylabel("True positive rate")
    roc_axes.legend(loc="lower right")
    roc_axes.grid(alpha=0.3)

    counts = evaluation.confusion_matrix
    matrix_axes.imshow(counts, cmap="Blues", vmin=0)
    peak = max(max(row) for row in counts) or 1
    for row, values in enumerate(counts):
        for column, count in enumerate(values):
            matrix_axes.text(
                column,
                row,
                f"{count:,}",
                ha="center",
                va="center",
                fontsize=13,
                color="white" if count > peak / 2 else "black",
            )
    matrix_axes.set_xticks([0, 1], labels=["0 (negative)", "1 (positive)"])
    matrix_axes.set_yticks([0, 1], labels=["0 (negative)", "1 (positive)"])
    matrix_axes.set_xlabel("Predicted label")
    matrix_axes.set_ylabel("True label")
    matrix_axes.set_title(f"Confusion matrix (threshold {evaluation.decision_threshold:.2f})")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
