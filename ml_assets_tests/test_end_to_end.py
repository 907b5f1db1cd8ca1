"""From raw data to a registered model, for every team, on a real instance.

Runs execute in process, training runs as real detached subprocesses on the local backend, the
reconciler and the automation conditions tick for real, and the registry (files, or MLflow's
local store) is read back at the end.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import dagster as dg
import pytest
from ml_assets_testing.pipeline import admission
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.evaluation import THRESHOLD_CHECK
from ml_assets.assets.registration import registry_for
from ml_assets.location import team_definitions
from ml_assets.platform_data.definitions import defs as platform_defs
from ml_assets.tables import file_sha256
from ml_assets.teams.spec import load_team_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TEAMS_DIR = Path(__file__).parents[1] / "ml_assets" / "teams"
TEAMS = {"fraud": "fraud_detector", "clinical": "tumor_classifier", "vision": "digit_classifier"}


def _values(event: dg.AssetMaterialization) -> dict[str, object]:
    return {name: value.value for name, value in event.metadata.items()}


def _run_of(instance: dg.DagsterInstance, key: dg.AssetKey) -> str:
    event = instance.get_latest_materialization_event(key)
    assert event is not None
    return event.run_id


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None, key
    return event.asset_materialization


@pytest.mark.parametrize("team", sorted(TEAMS))
def test_pipeline_ends_with_an_evaluated_registered_model(
    team: str, instance: dg.DagsterInstance, ml_home: Path
) -> None:
    defs: dg.Definitions = importlib.import_module(f"ml_assets.teams.{team}.definitions").defs
    keys = ModelKeys(team, TEAMS[team])
    platform_job = platform_defs.resolve_implicit_global_asset_job_def()
    raw = platform_job.execute_in_process(
        instance=instance,
        run_config={"ops": {"platform__raw_card_transactions": {"config": {"rows": 20_000}}}},
    )
    assert raw.success

    # What "Materialize all" submits: the run ends once training is submitted.
    team_job = defs.resolve_implicit_global_asset_job_def()
    submitted = team_job.execute_in_process(
        instance=instance, asset_selection=[keys.dataset, keys.features, keys.trained]
    )
    assert submitted.success
    assert instance.get_latest_materialization_event(keys.trained) is None
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert automation.total_requested == 0  # nothing to evaluate before the model exists

    reconciler = SensorDriver.of(instance, defs, f"{team}_training_reconciler")
    reconciler.tick_until(
        lambda: instance.get_latest_materialization_event(keys.trained),
        120,
        also=[admission(instance)],
    )
    trained = _values(_latest(instance, keys.trained))
    features = _values(_latest(instance, keys.features))
    features_version = file_sha256(str(features["path"]))
    assert trained["input_data_versions"] == {keys.features.to_user_string(): features_version}
    # Dagster's own provenance agrees, so the UI does not flag the model as stale.
    provenance = dg.DataProvenance.from_tags(_latest(instance, keys.trained).tags or {})
    assert provenance is not None and provenance.has_input_asset(keys.features)
    assert provenance.input_data_versions[keys.features] == dg.DataVersion(features_version)
    code_versions = defs.resolve_asset_graph().get(keys.trained).code_version
    assert provenance.code_version == code_versions

    # The automation sensor's next tick asks for the rest of the chain, once.
    automation = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=automation.cursor
    )
    chain = (keys.evaluation, keys.registered, keys.promoted, keys.serving)
    requested = {k for k in chain if automation.get_num_requested(k)}
    assert requested == set(chain)
    assert team_job.execute_in_process(instance=instance, asset_selection=list(requested)).success
    again = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=automation.cursor
    )
    assert again.total_requested == 0

    evaluation = _values(_latest(instance, keys.evaluation))
    assert evaluation["passed"] is True
    assert evaluation["model_job_id"] == trained["job_id"]
    assert str(evaluation["plot"]).startswith("![ROC curve and confusion matrix](data:image/png")
    assert 0.85 < float(evaluation["roc_auc"]) <= 1.0  # type: ignore[arg-type]
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(keys.evaluation, THRESHOLD_CHECK)]
    )[dg.AssetCheckKey(keys.evaluation, THRESHOLD_CHECK)]
    assert check.status.value == "SUCCEEDED"

    registered = _values(_latest(instance, keys.registered))
    spec = load_team_spec(TEAMS_DIR / team / "team.yaml")
    registry = registry_for(spec, instance)
    [version] = registry.list_versions(f"{team}.{TEAMS[team]}")
    assert version.registry == spec.registry.kind
    assert version.version == registered["version"]
    assert version.job_id == trained["job_id"]
    assert version.lineage["features"]["data_version"] == features_version
    assert version.lineage["dataset"]["data_version"] == features["dataset_data_version"]
    assert version.lineage["training"]["job_id"] == trained["job_id"]
    assert version.lineage["evaluation"]["run_id"] == _run_of(instance, keys.evaluation)
    assert version.metrics["holdout_roc_auc"] == pytest.approx(evaluation["roc_auc"])

    # The first version has no champion to beat: it is promoted and its serving spec is ready.
    promoted = _values(_latest(instance, keys.promoted))
    assert promoted["decision"] == "promoted" and promoted["version"] == version.version
    assert version.aliases == ["production"]
    assert version.notes["promotion"]["decision"] == "promoted"
    serving = _values(_latest(instance, keys.serving))
    assert serving["ready"] is True and serving["version"] == version.version
    document = json.loads(Path(str(serving["spec"])).read_text())
    assert document["kserve"]["manifest"]["kind"] == "InferenceService"
    assert Path(document["model_dir"], "model.joblib").exists()
    assert ("mlflow" in document) == (spec.registry.kind == "mlflow")


def test_a_model_below_its_thresholds_is_never_registered(
    instance: dg.DagsterInstance, ml_home: Path, tmp_path: Path
) -> None:
    spec_text = (TEAMS_DIR / "clinical" / "team.yaml").read_text()
    strict = tmp_path / "team.yaml"
    strict.write_text(spec_text.replace("min_roc_auc: 0.95", "min_roc_auc: 0.9999"))
    defs = team_definitions(strict)
    keys = ModelKeys("clinical", "tumor_classifier")
    raw = platform_defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(["platform", "raw_breast_cancer"])]
    )
    assert raw.success
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(
        instance=instance, asset_selection=[keys.dataset, keys.features, keys.trained]
    ).success
    reconciler = SensorDriver.of(instance, defs, "clinical_training_reconciler")
    reconciler.tick_until(lambda: instance.get_latest_materialization_event(keys.trained), 120)

    # Evaluation and registration in one run, as the automation sensor launches them.
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[keys.evaluation, keys.registered],
        raise_on_error=False,
    )
    assert not result.success
    evaluation = _values(_latest(instance, keys.evaluation))
    assert evaluation["passed"] is False
    assert "roc_auc" in str(evaluation["verdict"]) and "< min 0.9999" in str(evaluation["verdict"])
    assert instance.get_latest_materialization_event(keys.registered) is None
    registry = registry_for(load_team_spec(strict), instance)
    assert registry.list_versions("clinical.tumor_classifier") == []

    # Registration alone, as a later automation tick might try, refuses too.
    alone = job.execute_in_process(
        instance=instance, asset_selection=[keys.registered], raise_on_error=False
    )
    assert not alone.success
    assert registry.list_versions("clinical.tumor_classifier") == []
