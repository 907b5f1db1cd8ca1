"""The registered-model asset: hands an evaluated model to the team's registry.

Only a model whose evaluation met every threshold is registered, and the version carries its
lineage: the training job, the exact data versions it read, the runs and the code versions.
"""

from typing import Any

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata, record_values
from ml_assets.registries import load_registry
from ml_assets.registries.base import ModelRegistry, RegistrationRequest
from ml_assets.teams.spec import TeamSpec

REGISTRATION_LOGIC_VERSION = "1"


def registry_for(team: TeamSpec, instance: dg.DagsterInstance) -> ModelRegistry:
    """The registry a team's YAML selects, with local storage under ML_ASSETS_HOME by default."""
    root = storage.home(instance)
    if team.registry.kind == "mlflow":
        mlflow_dir = root / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        return load_registry(
            "mlflow",
            tracking_uri=team.registry.tracking_uri or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            artifact_root=mlflow_dir / "artifacts",
        )
    return load_registry("local", root=root / "registry")


def build_registration_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_registered`` asset."""
    keys, team = model.keys, model.team

    @dg.asset(
        key=keys.registered,
        deps=[keys.evaluation],
        description=f"{model.name} registered in the team's {team.registry.kind} registry.",
        automation_condition=dg.AutomationCondition.eager(),
        code_version=code_version(REGISTRATION_LOGIC_VERSION, team.registry.model_dump()),
        **model.asset_settings(team.registry.kind if team.registry.kind != "local" else "python"),
    )
    def registered(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        instance = context.instance
        evaluation = latest_metadata(instance, keys.evaluation, prefer_run=context.run_id)
        trained = latest_metadata(instance, keys.trained)
        if not evaluation["passed"]:
            raise dg.Failure(
                description=f"Not registered: the evaluation failed its thresholds "
                f"({evaluation['verdict']}).",
                metadata={"model_job_id": evaluation["model_job_id"]},
            )
        if evaluation["model_job_id"] != trained["job_id"]:
            raise dg.Failure(
                description=(
                    f"Not registered: the latest evaluation is of job {evaluation['model_job_id']}"
                    f" but the latest trained model is job {trained['job_id']}; the evaluation "
                    "of the newer model will trigger registration."
                )
            )
        lineage = _lineage(instance, model, trained, evaluation)
        metric_names = [k for k, v in evaluation.items() if isinstance(v, float)]
        with transport.local_copy(str(trained["artifact"])) as artifact_path:
            version = registry_for(team, instance).register(
                RegistrationRequest(
                    model_name=f"{team.team}.{model.name}",
                    artifact_path=str(artifact_path),
                    job_id=str(trained["job_id"]),
                    metrics={f"holdout_{k}": float(evaluation[k]) for k in metric_names},
                    params=dict(trained["hyperparameters"]),
                    lineage=lineage,
                )
            )
        context.log.info(
            f"registered {version.model_name} version {version.version} ({version.uri})"
        )
        return dg.MaterializeResult(
            metadata={
                "registry": version.registry,
                "registered_model": version.model_name,
                "version": version.version,
                "model_uri": version.uri,
                "job_id": version.job_id,
                "lineage": dg.MetadataValue.json(lineage),
            }
        )

    return registered


def _lineage(
    instance: dg.DagsterInstance,
    model: ModelContext,
    trained: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Everything needed to trace this version back to the exact data that trained it."""
    keys = model.keys
    features_version = dict(trained["input_data_versions"])[keys.features.to_user_string()]
    features = _materialization_with_version(instance, keys.features, features_version)
    dataset_version = features.get("dataset_data_version") if features else None
    return {
        "job_id": trained["job_id"],
        "backend": trained["backend"],
        "trainer": trained["trainer"],
        "features_data_version": features_version,
        "features_uri": trained["features_uri"],
        "dataset_data_version": dataset_version,
        "training_submitted_by_run": trained["submitted_by_run"],
        "evaluation_run": evaluation["__run_id__"],
        "features_run": features["__run_id__"] if features else None,
    }


def _materialization_with_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, version: str, search: int = 200
) -> dict[str, Any] | None:
    records = instance.fetch_materializations(key, limit=search).records
    matches = (record_values(r) for r in records if r.asset_materialization is not None)
    return next((values for values in matches if values.get("data_version") == version), None)
