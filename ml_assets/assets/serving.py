"""The serving-spec asset: what a deploy of the production version needs, once it is proven.

For each version that becomes production (by promotion or rollback) it writes, under
``<ML_ASSETS_HOME>/serving/<team>/<model>/<version>/``:

* ``model/model.joblib``: the bare estimator, the layout KServe's scikit-learn runtime loads;
* ``inferenceservice.yaml``: a KServe ``InferenceService`` manifest for that directory;
* ``serving.json``: everything below in one document.

With an MLflow registry it also names the ``models:/`` URI for ``mlflow models serve``; when the
team's YAML has ``serving.sagemaker``, it creates a SageMaker model and endpoint config through
boto3. Before any of this, the ``smoke_test`` check loads the artifact (verifying its sha256
against the one registered), scores a sample of holdout rows and requires finite probabilities;
a version that fails is never marked ready.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version
from ml_assets.assets.registration import registry_for
from ml_assets.registries.base import PRODUCTION, ModelVersion

SERVING_LOGIC_VERSION = "1"
SMOKE_TEST = "smoke_test"
SAMPLE_ROWS = 64


def smoke_test(version: ModelVersion, out_dir: Path) -> dict[str, Any]:
    """Load the version's artifact, check its hash, score a sample; write the bare estimator.

    Raises ``ValueError`` with the reason when the artifact is not the one registered or does
    not score.
    """
    import joblib
    import numpy as np
    import pandas as pd

    from ml_assets.datasets import file_sha256
    from ml_assets.evaluation import load_model, predict_scores

    training = version.lineage.get("training", {})
    features = version.lineage.get("features", {})
    with transport.local_copy(str(training["artifact_uri"])) as artifact_path:
        digest = file_sha256(artifact_path)
        expected = training.get("artifact_sha256")
        if expected and digest != expected:
            raise ValueError(
                f"artifact {training['artifact_uri']} has sha256 {digest}, but version "
                f"{version.version} was registered with {expected}"
            )
        model = load_model(artifact_path)
    with transport.local_copy(str(features["uri"])) as features_path:
        frame = pd.read_parquet(features_path)
    sample = frame[frame["split"] == "holdout"].head(SAMPLE_ROWS)
    scores = predict_scores(model, sample)
    if len(scores) != len(sample) or not np.all(np.isfinite(scores)):
        raise ValueError(f"the model gave {len(scores)} scores for {len(sample)} rows, or NaNs")
    if np.any((scores < 0) | (scores > 1)):
        raise ValueError("the model gave scores outside [0, 1]")
    (out_dir / "model").mkdir(parents=True, exist_ok=True)
    joblib.dump(model.estimator, out_dir / "model" / "model.joblib")
    return {
        "rows_scored": len(sample),
        "score_min": round(float(scores.min()), 6),
        "score_max": round(float(scores.max()), 6),
        "score_mean": round(float(scores.mean()), 6),
        "artifact_sha256": digest,
    }


def serving_spec(
    model: ModelContext, version: ModelVersion, out_dir: Path, smoke: dict[str, Any]
) -> dict[str, Any]:
    """The deploy document for ``version`` (and the manifest file beside it)."""
    import yaml

    from ml_assets.serving.kserve import inference_service

    team, name = model.team, version.model_name
    prefix = team.serving.kserve_storage_uri_prefix
    storage_uri = (
        transport.join(prefix, team.team, model.name, version.version, "model")
        if prefix
        else (out_dir / "model").as_uri()
    )
    manifest = inference_service(
        name,
        version.version,
        storage_uri,
        namespace=team.serving.kserve_namespace,
        labels={"ml-assets/team": team.team},
    )
    (out_dir / "inferenceservice.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    spec: dict[str, Any] = {
        "model": name,
        "version": version.version,
        "registry": version.registry,
        "model_uri": version.uri,
        "job_id": version.job_id,
        "artifact_sha256": smoke["artifact_sha256"],
        "model_dir": str(out_dir / "model"),
        "kserve": {"manifest": manifest, "file": str(out_dir / "inferenceservice.yaml")},
    }
    if version.registry == "mlflow":
        spec["mlflow"] = {
            "model_uri": f"models:/{name}/{version.version}",
            "alias_uri": f"models:/{name}@{PRODUCTION}",
            "serve": f"mlflow models serve -m models:/{name}/{version.version} --env-manager local",
        }
    if team.serving.sagemaker:
        from ml_assets.serving.sagemaker import sagemaker_endpoint_spec

        spec["sagemaker"] = sagemaker_endpoint_spec(version, **team.serving.sagemaker)
    return spec


def build_serving_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_serving`` asset and its blocking smoke test."""
    keys, team = model.keys, model.team

    @dg.asset(
        key=keys.serving,
        deps=[keys.promoted],
        output_required=False,
        description=(
            f"Serving spec of the production {model.name}: KServe manifest, model directory"
            + (", MLflow model URI" if team.registry.kind == "mlflow" else "")
            + (", SageMaker model and endpoint config" if team.serving.sagemaker else "")
            + ". Ready only after the smoke test scores a holdout sample."
        ),
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                SMOKE_TEST,
                asset=keys.serving,
                blocking=True,
                description="The production artifact loads, matches its registered hash and "
                f"scores {SAMPLE_ROWS} holdout rows.",
            )
        ],
        code_version=code_version(SERVING_LOGIC_VERSION, team.serving.model_dump()),
        **model.asset_settings("kubernetes", *(["sagemaker"] if team.serving.sagemaker else [])),
    )
    def serving(context: dg.AssetExecutionContext) -> Iterator[Any]:
        registry = registry_for(team, context.instance)
        version = registry.get_by_alias(keys.registry_name, PRODUCTION)
        if version is None:
            raise dg.Failure(f"{keys.registry_name} has no {PRODUCTION} version to serve yet")
        out_dir = storage.home(context.instance).joinpath(
            "serving", team.team, model.name, version.version
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            smoke = smoke_test(version, out_dir)
        except Exception as error:
            yield dg.AssetCheckResult(
                check_name=SMOKE_TEST,
                passed=False,
                description=f"version {version.version}: {type(error).__name__}: {error}",
                metadata={"version": version.version},
            )
            return
        spec = serving_spec(model, version, out_dir, smoke)
        (out_dir / "serving.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        registry.annotate(
            keys.registry_name,
            version.version,
            {"serving": {"ready": True, "spec": str(out_dir / "serving.json"), **smoke}},
        )
        context.log.info(f"version {version.version} is ready to serve: {out_dir}")
        manifest = (out_dir / "inferenceservice.yaml").read_text()
        yield dg.MaterializeResult(
            metadata={
                "ready": True,
                "version": version.version,
                "model_uri": version.uri,
                "spec": dg.MetadataValue.path(str(out_dir / "serving.json")),
                "kserve_manifest": dg.MetadataValue.md(f"```yaml\n{manifest}```"),
                **({"mlflow_model_uri": spec["mlflow"]["model_uri"]} if "mlflow" in spec else {}),
                "serving": dg.MetadataValue.json(spec),
            }
        )
        yield dg.AssetCheckResult(
            check_name=SMOKE_TEST,
            passed=True,
            description=f"version {version.version} scored {smoke['rows_scored']} rows",
            metadata={"version": version.version, **smoke},
        )

    return serving
