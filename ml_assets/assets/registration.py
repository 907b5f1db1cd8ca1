"""The registered-model asset: hands an evaluated model to the team's registry.

Only a model whose evaluation met every threshold is registered, and the version carries its
lineage: the training job, the exact data versions it read, the runs and the code versions.
"""

import json
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata, record_values
from ml_assets.files import pack_directory
from ml_assets.registries import team_registry
from ml_assets.registries.base import CHALLENGER, PRODUCTION, ModelRegistry, RegistrationRequest
from ml_assets.teams.spec import TeamSpec

REGISTRATION_LOGIC_VERSION = "2"


REGISTRY_RESOURCE = "registry"


def registry_for(team: TeamSpec, instance: dg.DagsterInstance | None) -> ModelRegistry:
    """The registry a team's YAML selects, with local storage under ML_ASSETS_HOME by default."""
    return team_registry(
        team.registry.kind, team.registry.settings, team.team, storage.home(instance)
    )


class RegistryResource(dg.ConfigurableResource):
    """A team's model registry as a Dagster resource, so that a deployment or a test swaps the
    registry of every asset and job of a location in one place (``resources={"registry": ...}``).

    ``settings`` is the YAML's JSON: each registry kind takes its own settings.
    """

    team: str
    kind: str = "local"
    settings: str = "{}"

    @classmethod
    def for_team(cls, team: TeamSpec) -> "RegistryResource":
        return cls(
            team=team.team,
            kind=team.registry.kind,
            settings=json.dumps(team.registry.settings, sort_keys=True, default=str),
        )

    def open(self, instance: dg.DagsterInstance | None) -> ModelRegistry:
        """The registry, its local stores under the instance's ML_ASSETS_HOME."""
        return team_registry(
            self.kind, json.loads(self.settings), self.team, storage.home(instance)
        )


def resource_registry(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> ModelRegistry:
    """The registry of the ``registry`` resource of the running asset or op."""
    resource: RegistryResource = getattr(context.resources, REGISTRY_RESOURCE)
    return resource.open(context.instance)


def build_registration_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_registered`` asset."""
    keys, team = model.keys, model.team

    @dg.asset(
        key=keys.registered,
        deps=[keys.evaluation],
        description=f"{model.name} registered in the team's {team.registry.kind} registry.",
        automation_condition=dg.AutomationCondition.eager(),
        required_resource_keys={REGISTRY_RESOURCE},
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
        lineage = build_lineage(instance, model, trained, evaluation, context.run_id)
        lineage["registration"]["code_version"] = context.assets_def.code_versions_by_key.get(
            keys.registered
        )
        metric_names = list(_metrics(evaluation))
        from ml_assets.tables import file_sha256

        registry = resource_registry(context)
        with (
            transport.local_copy(str(trained["artifact"])) as local_artifact,
            tempfile.TemporaryDirectory(prefix="ml_assets_pack_") as scratch,
        ):
            # A registry stores one file; an artifact that is a folder is stored as a tar.
            artifact_path = (
                pack_directory(local_artifact, Path(scratch) / f"{local_artifact.name}.tar")
                if local_artifact.is_dir()
                else local_artifact
            )
            lineage["training"]["artifact_sha256"] = file_sha256(artifact_path)
            version = registry.register(
                RegistrationRequest(
                    model_name=keys.registry_name,
                    artifact_path=str(artifact_path),
                    job_id=str(trained["job_id"]),
                    flavour=str(trained.get("flavour") or "file"),
                    metrics={f"holdout_{k}": float(evaluation[k]) for k in metric_names},
                    params=dict(trained["hyperparameters"]),
                    lineage=lineage,
                )
            )
        production = registry.get_by_alias(keys.registry_name, PRODUCTION)
        if production is None or production.version != version.version:
            registry.set_alias(keys.registry_name, version.version, CHALLENGER)
        context.log.info(
            f"registered {version.model_name} version {version.version} ({version.uri}) as "
            f"{CHALLENGER}; {model.name}_promoted decides whether it goes to {PRODUCTION}"
        )
        return dg.MaterializeResult(
            metadata={
                "registry": version.registry,
                "registered_model": version.model_name,
                "version": version.version,
                "model_uri": version.uri,
                "job_id": version.job_id,
                "lineage": dg.MetadataValue.json(version.lineage),
            }
        )

    return registered


def build_lineage(
    instance: dg.DagsterInstance,
    model: ModelContext,
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    run_id: str,
) -> dict[str, Any]:
    """Everything needed to trace a version back to the exact data and code that made it.

    One entry per step of the chain, each with its data version or job, its Dagster run and
    its code version, so the audit trail reads from the version alone.
    """
    keys = model.keys
    features_version = dict(trained["input_data_versions"])[keys.features.to_user_string()]
    features = _materialization_with_version(instance, keys.features, features_version) or {}
    dataset_version = features.get("dataset_data_version")
    dataset = (
        _materialization_with_version(instance, keys.dataset, str(dataset_version))
        if dataset_version
        else None
    ) or {}
    return {
        "dataset": {
            "asset": keys.dataset.to_user_string(),
            "data_version": dataset_version,
            "path": dataset.get("path"),
            "run_id": dataset.get("__run_id__"),
            "code_version": dataset.get("__code_version__"),
        },
        "features": {
            "asset": keys.features.to_user_string(),
            "data_version": features_version,
            "path": features.get("path"),
            "uri": trained["features_uri"],
            "run_id": features.get("__run_id__"),
            "code_version": features.get("__code_version__"),
        },
        "training": {
            "asset": keys.trained.to_user_string(),
            "job_id": trained["job_id"],
            "backend": trained["backend"],
            "trainer": trained["trainer"],
            "hyperparameters": dict(trained["hyperparameters"]),
            "attempt": trained.get("attempt"),
            "artifact_uri": trained["artifact"],
            "flavour": trained.get("flavour", ""),
            "device": trained.get("device", ""),
            "submitted_by_run": trained["submitted_by_run"],
            "code_version": trained.get("code_version") or trained.get("__code_version__"),
        },
        "evaluation": {
            "asset": keys.evaluation.to_user_string(),
            "run_id": evaluation["__run_id__"],
            "metrics": _metrics(evaluation),
            "thresholds": dict(model.spec.evaluation.thresholds),
            "verdict": evaluation.get("verdict"),
            "passed": evaluation.get("passed"),
            "code_version": evaluation.get("__code_version__"),
        },
        "registration": {"run_id": run_id, "code_version": None},
    }


def _metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The evaluation's numeric results (not the record's own bookkeeping values)."""
    return {k: v for k, v in evaluation.items() if isinstance(v, float) and not k.startswith("__")}


def _materialization_with_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, version: str, search: int = 200
) -> dict[str, Any] | None:
    records = instance.fetch_materializations(key, limit=search).records
    matches = (record_values(r) for r in records if r.asset_materialization is not None)
    return next((values for values in matches if values.get("data_version") == version), None)
