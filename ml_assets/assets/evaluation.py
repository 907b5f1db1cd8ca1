"""The evaluation asset: scores the trained model on its own holdout rows.

It runs automatically whenever the reconciler records a new trained model, renders a ROC curve
and confusion matrix into the asset's metadata, and carries a blocking check that the team's
thresholds are met, so a model below them never reaches the registry.
"""

import base64

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata

EVALUATION_LOGIC_VERSION = "1"
THRESHOLD_CHECK = "meets_thresholds"


def build_evaluation_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_evaluation`` asset and its blocking threshold check."""
    spec, keys = model.spec, model.keys
    thresholds = spec.evaluation.thresholds

    @dg.asset(
        key=keys.evaluation,
        deps=[keys.trained],
        description=(
            "Holdout metrics of the latest trained model, with its ROC curve and confusion "
            f"matrix. Thresholds: {thresholds or 'none'}."
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
        code_version=code_version(EVALUATION_LOGIC_VERSION, spec.evaluation.model_dump()),
        **model.asset_settings("scikit-learn", "matplotlib"),
    )
    def evaluation(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        import pandas as pd

        from ml_assets.evaluation import (
            check_thresholds,
            evaluate,
            load_model,
            predict_scores,
            render_evaluation_png,
        )

        trained = latest_metadata(context.instance, keys.trained)
        with (
            transport.local_copy(trained["features_uri"]) as features_path,
            transport.local_copy(trained["artifact"]) as artifact_path,
        ):
            frame = pd.read_parquet(features_path)
            holdout = frame[frame["split"] == "holdout"]
            scores = predict_scores(load_model(artifact_path), holdout)
        result = evaluate(
            holdout["label"].to_numpy(),
            scores,
            decision_threshold=spec.evaluation.decision_threshold,
        )
        failures = check_thresholds(result.metrics, thresholds)
        png = render_evaluation_png(result, title=f"{model.team.team}/{model.name} — holdout")
        plot_path = storage.asset_file(
            storage.home(context.instance), keys.evaluation.path, context.run_id, ".png"
        )
        plot_path.write_bytes(png)
        metrics = {name: float(value) for name, value in result.metrics.items()}
        verdict = "all thresholds met" if not failures else "; ".join(failures)
        context.log.info(f"holdout metrics {metrics}: {verdict}")
        return dg.MaterializeResult(
            metadata={
                "plot": dg.MetadataValue.md(
                    f"![ROC curve and confusion matrix](data:image/png;base64,"
                    f"{base64.b64encode(png).decode()})"
                ),
                "plot_path": dg.MetadataValue.path(str(plot_path)),
                "confusion_matrix": dg.MetadataValue.md(_confusion_table(result.confusion_matrix)),
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
                        **{name: metrics[name] for name in _checked_metrics(thresholds)},
                    },
                )
            ],
        )

    return evaluation


def _checked_metrics(thresholds: dict[str, float]) -> list[str]:
    return [key.split("_", 1)[1] for key in thresholds]


def _confusion_table(matrix: list[list[int]]) -> str:
    (tn, fp), (fn, tp) = matrix
    return (
        "| | predicted 0 | predicted 1 |\n|---|---|---|\n"
        f"| **actual 0** | {tn} | {fp} |\n| **actual 1** | {fn} | {tp} |"
    )
