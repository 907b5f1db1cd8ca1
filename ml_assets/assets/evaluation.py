"""The evaluation asset: scores the trained model on its own holdout rows.

It runs automatically whenever the reconciler records a new trained model. The model is scored
for its task (binary, multiclass or regression; see :mod:`ml_assets.evaluation`), through the
team's ``predict`` function when its artifact is not the runner's ``model.joblib`` bundle, and
the team's own metric functions are added. A picture for the task (ROC curve and confusion
matrix; NxN confusion matrix and per-class recall; predicted against actual and residuals) goes
into the asset's metadata, and a blocking check that the team's thresholds are met keeps a model
below them out of the registry. Thresholds may also gate on what the training job reported, by
the name the trained model's metadata gives it (``train/<name>``).
"""

import base64
from dataclasses import asdict, dataclass
from typing import Any, Self

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata
from ml_assets.teams.spec import ModelSpec

EVALUATION_LOGIC_VERSION = "2"
THRESHOLD_CHECK = "meets_thresholds"
TRAINING_METRIC_PREFIX = "train/"

_PLOT_ALT = {
    "binary": "ROC curve and confusion matrix",
    "multiclass": "Confusion matrix and recall per class",
    "regression": "Predicted vs actual and residuals",
}


@dataclass(frozen=True)
class Scoring:
    """How a model of a team is scored: its task, its predict function, its extra metrics."""

    task: str = "binary"
    predict: str | None = None
    metrics: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: ModelSpec) -> Self:
        """The scoring a model's spec declares (``task``, ``predict``, ``evaluation.metrics``)."""
        return cls(task=spec.task, predict=spec.predict, metrics=tuple(spec.evaluation.metrics))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_metrics(trained: dict[str, Any]) -> dict[str, float]:
    """The metrics the training job reported, as recorded on the trained model (``train/...``)."""
    return {
        name: float(value)
        for name, value in trained.items()
        if name.startswith(TRAINING_METRIC_PREFIX)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def build_evaluation_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_evaluation`` asset and its blocking threshold check."""
    spec, keys = model.spec, model.keys
    thresholds = spec.evaluation.thresholds
    scoring = Scoring.of(spec)

    @dg.asset(
        key=keys.evaluation,
        deps=[keys.trained],
        description=(
            f"Holdout metrics of the latest trained {scoring.task} model, with "
            f"{_PLOT_ALT[scoring.task].lower()}. Thresholds: {thresholds or 'none'}."
        ),
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                THRESHOLD_CHECK,
                asset=keys.evaluation,
                blocking=True,
                description=f"Holdout metrics meet the team's thresholds {thresholds}.",
            )
        ],
        code_version=code_version(
            EVALUATION_LOGIC_VERSION, spec.evaluation.model_dump(), scoring.as_dict()
        ),
        **model.asset_settings("scikit-learn", "matplotlib"),
    )
    def evaluation(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        import pandas as pd

        from ml_assets.evaluation import (
            check_thresholds,
            class_labels,
            evaluate,
            load_model,
            metric_functions,
            predict,
            render_evaluation_png,
        )

        trained = latest_metadata(context.instance, keys.trained)
        task = scoring.task
        extra = metric_functions(scoring.metrics)
        with (
            transport.local_copy(trained["features_uri"]) as features_path,
            transport.local_copy(trained["artifact"]) as artifact_path,
        ):
            frame = pd.read_parquet(features_path)
            holdout = frame[frame["split"] == "holdout"]
            classes = class_labels(frame["label"]) if task == "multiclass" else None
            loaded = load_model(artifact_path, predict=scoring.predict)
            predictions = predict(loaded, holdout, task, classes)
        result = evaluate(
            task,
            holdout["label"].to_numpy(),
            predictions,
            classes=classes,
            decision_threshold=spec.evaluation.decision_threshold,
            extra_metrics=extra,
        )
        metrics = {name: float(value) for name, value in result.metrics.items()}
        from_training = training_metrics(trained)
        try:
            failures = check_thresholds({**metrics, **from_training}, thresholds)
        except ValueError as error:
            raise dg.Failure(
                description=f"cannot check the thresholds: {error}",
                metadata={"thresholds": dg.MetadataValue.json(dict(thresholds)), **metrics},
            ) from None
        png = render_evaluation_png(result, title=f"{model.team.team}/{model.name} — holdout")
        plot_path = storage.asset_file(
            storage.home(context.instance), keys.evaluation.path, context.run_id, ".png"
        )
        plot_path.write_bytes(png)
        verdict = "all thresholds met" if not failures else "; ".join(failures)
        context.log.info(f"holdout metrics {metrics}: {verdict}")
        gated = {**metrics, **from_training}
        extras: dict[str, Any] = {}
        if result.confusion_matrix:
            extras["confusion_matrix"] = dg.MetadataValue.md(
                _confusion_table(result.confusion_matrix, result.classes)
            )
        if task == "multiclass":
            extras["classes"] = dg.MetadataValue.json(list(result.classes))
        if from_training:
            # JSON, not floats: the registry records the evaluation's floats as holdout metrics.
            extras["training_metrics"] = dg.MetadataValue.json(from_training)
        return dg.MaterializeResult(
            metadata={
                "plot": dg.MetadataValue.md(
                    f"![{_PLOT_ALT[task]}](data:image/png;base64,{base64.b64encode(png).decode()})"
                ),
                "plot_path": dg.MetadataValue.path(str(plot_path)),
                "task": task,
                **extras,
                "model_job_id": str(trained["job_id"]),
                "passed": not failures,
                "verdict": verdict,
                "thresholds": dg.MetadataValue.json(dict(thresholds)),
                **metrics,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=THRESHOLD_CHECK,
                    passed=not failures,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=verdict,
                    metadata={
                        "thresholds": dg.MetadataValue.json(dict(thresholds)),
                        **{name: gated[name] for name in _checked_metrics(thresholds)},
                    },
                )
            ],
        )

    return evaluation


def _checked_metrics(thresholds: dict[str, float]) -> list[str]:
    return list(dict.fromkeys(key.split("_", 1)[1] for key in thresholds))


def _confusion_table(matrix: list[list[int]], classes: list[Any]) -> str:
    """The confusion matrix as a markdown table: a row per true class, a column per predicted."""
    names = [str(label).replace("|", "\\|") for label in classes]
    header = "| | " + " | ".join(f"predicted {name}" for name in names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    rows = [
        f"| **actual {name}** | " + " | ".join(str(count) for count in counts) + " |"
        for name, counts in zip(names, matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])
