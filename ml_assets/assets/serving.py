"""The serving-spec asset: what a deploy of the production version needs, once it is proven.

For each version that becomes production (by promotion or rollback) it writes, under
``<ML_ASSETS_HOME>/serving/<team>/<model>/<version>/``:

* ``model/model.joblib``: the bare estimator, the layout KServe's scikit-learn runtime loads,
  and ``inferenceservice.yaml``, a KServe ``InferenceService`` manifest for that directory, when
  the artifact is the runner's ``model.joblib`` bundle of a scikit-learn-style estimator. Any
  other artifact (a torch state dict, an ONNX file, a folder) needs a custom predictor around
  the team's ``predict`` function; the spec says so and names the artifact;
* ``serving.json``: everything below in one document.

With an MLflow registry it also names the ``models:/`` URI for ``mlflow models serve``; when the
team's YAML has ``serving.sagemaker``, it creates a SageMaker model and endpoint config through
boto3. Before any of this, the ``smoke_test`` check loads the artifact (verifying its sha256
against the one registered) the way evaluation does, scores a sample of holdout rows for the
model's task and requires valid output (probabilities in [0, 1], class probabilities summing to
1 per row, finite regression predictions); a version that fails is never marked ready.
"""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version
from ml_assets.assets.evaluation import Scoring
from ml_assets.assets.registration import REGISTRY_RESOURCE, resource_registry
from ml_assets.registries.base import PRODUCTION, ModelVersion
from ml_assets.tags import KUBERNETES_TEAM_LABEL

SERVING_LOGIC_VERSION = "2"
SMOKE_TEST = "smoke_test"
SAMPLE_ROWS = 64


def artifact_sha256(path: Path) -> str:
    """Hex SHA-256 of an artifact as registration computes it: a file's bytes, or for a folder
    the bytes of its deterministic tar (:func:`ml_assets.files.pack_directory`)."""
    from ml_assets.files import pack_directory
    from ml_assets.tables import file_sha256

    if not path.is_dir():
        return file_sha256(path)
    with tempfile.TemporaryDirectory(prefix="ml_assets_pack_") as scratch:
        return file_sha256(pack_directory(path, Path(scratch) / f"{path.name}.tar"))


def sklearn_style(estimator: Any, task: str) -> bool:
    """Whether KServe's scikit-learn runtime can serve ``estimator``: the estimator API
    (``get_params``, ``predict``) and, for a classifier, ``predict_proba``."""
    needed = ("get_params", "predict", *(("predict_proba",) if task != "regression" else ()))
    return estimator is not None and all(callable(getattr(estimator, n, None)) for n in needed)


def _foreign_modules(estimator: Any) -> list[str]:
    """Top-level packages besides scikit-learn the pickled estimator needs to load."""
    found = {type(estimator).__module__.split(".")[0]}
    try:
        params = estimator.get_params(deep=True)
    except Exception:
        params = {}
    found |= {
        type(value).__module__.split(".")[0]
        for value in params.values()
        if callable(getattr(value, "get_params", None))
    }
    return sorted(found - {"sklearn", "builtins"})


def smoke_test(
    version: ModelVersion, out_dir: Path, scoring: Scoring | None = None
) -> dict[str, Any]:
    """Load the version's artifact, check its hash, score a sample; write the bare estimator.

    The bare estimator goes to ``out_dir/model/model.joblib`` only when the artifact is a bundle
    of a scikit-learn-style estimator (``kserve_sklearn`` in the result says which). Raises
    ``ValueError`` with the reason when the artifact is not the one registered or does not
    score.
    """
    import joblib
    import numpy as np
    import pandas as pd

    from ml_assets.evaluation import check_predictions, class_labels, load_model, predict

    scoring = scoring or Scoring()
    task = scoring.task
    training = version.lineage.get("training", {})
    features = version.lineage.get("features", {})
    with transport.local_copy(str(features["uri"])) as features_path:
        frame = pd.read_parquet(features_path)
    sample = frame[frame["split"] == "holdout"].head(SAMPLE_ROWS)
    if sample.empty:
        raise ValueError(f"the features at {features['uri']} have no holdout rows to score")
    classes = class_labels(frame["label"]) if task == "multiclass" else None
    with transport.local_copy(str(training["artifact_uri"])) as artifact_path:
        digest = artifact_sha256(artifact_path)
        expected = training.get("artifact_sha256")
        if expected and digest != expected:
            raise ValueError(
                f"artifact {training['artifact_uri']} has sha256 {digest}, but version "
                f"{version.version} was registered with {expected}"
            )
        model = load_model(artifact_path, predict=scoring.predict)
        predictions = predict(model, sample, task, classes)
    check_predictions(task, predictions)
    # One number per row to summarise: the positive-class probability, the most likely class's
    # probability, or the prediction.
    scores = predictions.max(axis=1) if task == "multiclass" else predictions
    kserve = model.is_bundle and sklearn_style(model.estimator, task)
    needs = ", ".join(_foreign_modules(model.estimator)) if kserve else ""
    if kserve:
        (out_dir / "model").mkdir(parents=True, exist_ok=True)
        joblib.dump(model.estimator, out_dir / "model" / "model.joblib")
    return {
        "task": task,
        "rows_scored": len(sample),
        "score_min": round(float(np.min(scores)), 6),
        "score_max": round(float(np.max(scores)), 6),
        "score_mean": round(float(np.mean(scores)), 6),
        "artifact_sha256": digest,
        "kserve_sklearn": kserve,
        **({"estimator_needs": needs} if needs else {}),
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
    spec: dict[str, Any] = {
        "model": name,
        "version": version.version,
        "registry": version.registry,
        "model_uri": version.uri,
        "job_id": version.job_id,
        "task": smoke.get("task", "binary"),
        "artifact_uri": version.lineage.get("training", {}).get("artifact_uri"),
        "artifact_sha256": smoke["artifact_sha256"],
    }
    if smoke.get("kserve_sklearn", True):
        manifest = inference_service(
            name,
            version.version,
            storage_uri,
            namespace=team.serving.kserve_namespace,
            labels={KUBERNETES_TEAM_LABEL: team.team},
        )
        (out_dir / "inferenceservice.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        spec["model_dir"] = str(out_dir / "model")
        spec["kserve"] = {"manifest": manifest, "file": str(out_dir / "inferenceservice.yaml")}
        if smoke.get("estimator_needs"):
            spec["kserve"]["runtime_needs"] = (
                f"the estimator's pickle imports {smoke['estimator_needs']}: the sklearn "
                "runtime image must have it installed"
            )
    else:
        spec["custom_predictor"] = {
            "needed": True,
            "reason": "the artifact is not a model.joblib bundle of a scikit-learn-style "
            "estimator, so KServe's sklearn runtime cannot load it; serve it with a custom "
            "predictor that calls the team's predict function",
            "predict": model.spec.predict,
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
    scoring = Scoring.of(model.spec)

    @dg.asset(
        key=keys.serving,
        deps=[keys.promoted],
        output_required=False,
        description=(
            f"Serving spec of the production {model.name}: KServe manifest and model directory "
            "(or a note that the artifact needs a custom predictor)"
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
        required_resource_keys={REGISTRY_RESOURCE},
        code_version=code_version(
            SERVING_LOGIC_VERSION, team.serving.model_dump(), scoring.as_dict()
        ),
        **model.asset_settings("kubernetes", *(["sagemaker"] if team.serving.sagemaker else [])),
    )
    def serving(context: dg.AssetExecutionContext) -> Iterator[Any]:
        registry = resource_registry(context)
        version = registry.get_by_alias(keys.registry_name, PRODUCTION)
        if version is None:
            raise dg.Failure(f"{keys.registry_name} has no {PRODUCTION} version to serve yet")
        out_dir = storage.home(context.instance).joinpath(
            "serving", team.team, model.name, version.version
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            smoke = smoke_test(version, out_dir, scoring)
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
        if "kserve" in spec:
            manifest = (out_dir / "inferenceservice.yaml").read_text()
            deploy = {"kserve_manifest": dg.MetadataValue.md(f"```yaml\n{manifest}```")}
        else:
            deploy = {"custom_predictor_needed": spec["custom_predictor"]["reason"]}
        yield dg.MaterializeResult(
            metadata={
                "ready": True,
                "version": version.version,
                "model_uri": version.uri,
                "spec": dg.MetadataValue.path(str(out_dir / "serving.json")),
                **deploy,
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
