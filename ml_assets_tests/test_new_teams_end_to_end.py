"""The teams declared only as a folder, from raw data to a served model, on a real instance.

``wine`` (multiclass, team trainer function), ``diabetes`` (regression, team trainer function)
and ``screening`` (binary, a standalone container script that reports through dagster-pipes and
imports no ml_assets). Each runs as the UI would: "Materialize all" submits the training job
and ends; the job runs as a real detached process on the local backend; the team's reconciler
ticks until it records the trained model; then evaluation, registration, promotion and serving
run in one run, as the automation sensor launches them. Everything is asserted from the
instance's event log, the registry and the files the assets name.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from ml_assets_testing.pipeline import build_raw, run_chain
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.evaluation import THRESHOLD_CHECK
from ml_assets.assets.registration import registry_for
from ml_assets.assets.training import SUBMITTED
from ml_assets.backends._local_runner import EXIT_FILE, RUNNER_FILE
from ml_assets.evaluation import TASK_METRICS
from ml_assets.registries.base import PRODUCTION
from ml_assets.sensors.reconciler import MATERIALIZED, PROGRESS
from ml_assets.tables import file_sha256
from ml_assets.tags import EVENT_TAG
from ml_assets.teams.spec import load_team_spec
from ml_assets.training.messages import MESSAGES_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
TEAMS_DIR = Path(__file__).parents[1] / "ml_assets" / "teams"


@dataclass(frozen=True)
class Team:
    model: str
    raw: str | None  # the platform table to build first
    artifact: str  # the artifact's file name
    train_metrics: tuple[str, ...]  # what the job reports, as the trained model records it
    plot: str  # the evaluation plot's alt text


TEAMS = {
    "wine": Team(
        "cultivar_classifier",
        None,
        "model.joblib",
        ("train/loss", "train/accuracy", "train/macro_f1"),
        "Confusion matrix and recall per class",
    ),
    "diabetes": Team(
        "progression_regressor",
        None,
        "model.joblib",
        ("train/train_rmse", "train/rmse", "train/mae", "train/r2"),
        "Predicted vs actual and residuals",
    ),
    "screening": Team(
        "malignancy_screen",
        "breast_cancer",
        "model.npz",
        ("train/loss", "train/accuracy", "train/roc_auc"),
        "ROC curve and confusion matrix",
    ),
}


def _values(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None, key
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def _observations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.AssetObservation]:
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=10_000)
    return [
        record.asset_event
        for record in records.records
        if isinstance(record.asset_event, dg.AssetObservation)
    ]


def _progress_reported(job_dir: Path) -> bool:
    """Whether the job has written a Pipes custom message with progress or a step above 0."""
    try:
        lines = (job_dir / MESSAGES_FILE).read_bytes().split(b"\n")[:-1]  # complete lines only
    except FileNotFoundError:
        return False
    for line in lines:
        message = json.loads(line)
        payload = (message.get("params") or {}).get("payload")
        if message.get("method") != "report_custom_message" or not isinstance(payload, dict):
            continue
        if (payload.get("progress") or 0) > 0 or (payload.get("step") or 0) > 0:
            return True
    return False


def _tick_mid_run(reconciler: SensorDriver, job_dir: Path, timeout: float = 60.0) -> None:
    """One reconciler tick while the job is certainly mid-run.

    These jobs train for one to a few seconds, and the reconciler's ticks (every 10 s under the
    daemon, every 0.2 s here) may or may not land while one runs: a test that just ticked and
    hoped to see progress would be flaky, and one that only read the messages after the job
    ended would not show that the reconciler records progress *while* the job runs. So the test
    waits until the real job has reported progress, freezes the job's process group (SIGSTOP),
    ticks once, and lets it go on (SIGCONT). The job is really running and mid-training when the
    tick reads it; nothing in the team's code waits for the test.
    """
    deadline = time.monotonic() + timeout
    while not _progress_reported(job_dir):
        if (job_dir / EXIT_FILE).exists():
            pytest.fail(f"the job in {job_dir} ended before it reported any progress")
        if time.monotonic() > deadline:
            pytest.fail(f"the job in {job_dir} reported no progress in {timeout:.0f} s")
        time.sleep(0.01)
    group = int(json.loads((job_dir / RUNNER_FILE).read_text())["child_pid"])
    try:
        os.killpg(group, signal.SIGSTOP)
    except ProcessLookupError:
        pytest.fail(f"the job in {job_dir} ended before it could be held mid-run")
    try:
        if (job_dir / EXIT_FILE).exists():
            pytest.fail(f"the job in {job_dir} ended before it could be held mid-run")
        reconciler.tick()
    finally:
        os.killpg(group, signal.SIGCONT)


@pytest.mark.parametrize("team", sorted(TEAMS))
def test_a_folder_team_reaches_a_served_model(
    team: str, instance: dg.DagsterInstance, ml_home: Path
) -> None:
    case = TEAMS[team]
    spec = load_team_spec(TEAMS_DIR / team / "team.yaml")
    model_spec = spec.models[case.model]
    defs: dg.Definitions = importlib.import_module(f"ml_assets.teams.{team}.definitions").defs
    keys = ModelKeys(team, case.model)
    if case.raw:
        build_raw(instance, case.raw)

    # "Materialize all": the run builds the dataset and features, submits the job and ends.
    started = time.monotonic()
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(
        instance=instance, asset_selection=[keys.dataset, keys.features, keys.trained]
    ).success
    assert instance.get_latest_materialization_event(keys.trained) is None
    [submitted] = [
        o
        for o in _observations(instance, keys.trained)
        if (o.tags or {}).get(EVENT_TAG) == SUBMITTED
    ]
    job_dir = Path(str(submitted.metadata["output"].value))

    reconciler = SensorDriver.of(instance, defs, f"{team}_training_reconciler")
    _tick_mid_run(reconciler, job_dir)
    reconciler.tick_until(lambda: instance.get_latest_materialization_event(keys.trained), 120)
    trained_at = time.monotonic()
    result = run_chain(defs, instance, keys)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    print(
        f"\n{team}: submit to trained model {trained_at - started:.1f} s, "
        f"to serving spec {time.monotonic() - started:.1f} s (in process, ticks every 0.2 s)"
    )

    # The reconciler recorded progress while the job ran, and exactly one trained model.
    observations = _observations(instance, keys.trained)
    progress: list[dict[str, Any]] = [
        {name: value.value for name, value in o.metadata.items()}
        for o in observations
        if (o.tags or {}).get(EVENT_TAG) == PROGRESS
    ]
    assert any(float(p["progress"]) > 0 or int(p.get("step") or 0) > 0 for p in progress), progress
    materialized = [
        record.asset_materialization
        for record in instance.fetch_materializations(keys.trained, limit=10).records
    ]
    assert [(m.tags or {}).get(EVENT_TAG) for m in materialized if m] == [MATERIALIZED]

    # The trained model: its artifact, device, training metrics, data version and curve.
    trained = _values(instance, keys.trained)
    features = _values(instance, keys.features)
    artifact = Path(str(trained["artifact"]))
    assert artifact.name == case.artifact and artifact.is_file()
    assert artifact.parent == job_dir
    assert trained["device"] == "cpu"
    for name in case.train_metrics:
        assert math.isfinite(float(trained[name])), name
    features_version = file_sha256(str(features["path"]))
    assert features["data_version"] == features_version
    assert trained["input_data_versions"] == {keys.features.to_user_string(): features_version}
    provenance = dg.DataProvenance.from_tags(materialized[0].tags or {} if materialized[0] else {})
    assert provenance is not None
    assert provenance.input_data_versions[keys.features] == dg.DataVersion(features_version)
    assert str(trained["training_curve"]).startswith("![training curve](data:image/png;base64,")

    # The evaluation: the task's metrics on the holdout rows, above the team's thresholds.
    evaluation = _values(instance, keys.evaluation)
    assert evaluation["task"] == model_spec.task
    assert evaluation["model_job_id"] == trained["job_id"]
    for name in TASK_METRICS[model_spec.task]:
        assert math.isfinite(float(evaluation[name])), name
    assert evaluation["thresholds"] == model_spec.evaluation.thresholds
    for key, bound in model_spec.evaluation.thresholds.items():
        side, metric = key.split("_", 1)
        value = float(evaluation[metric])
        assert value >= bound if side == "min" else value <= bound, (key, value)
    assert evaluation["passed"] is True
    assert str(evaluation["plot"]).startswith(f"![{case.plot}](data:image/png;base64,")
    check = dg.AssetCheckKey(keys.evaluation, THRESHOLD_CHECK)
    execution = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
    assert execution[check].status.value == "SUCCEEDED"

    # Registration and promotion: the version in production is the one this job trained.
    registered = _values(instance, keys.registered)
    promoted = _values(instance, keys.promoted)
    assert promoted["decision"] == "promoted" and promoted["version"] == registered["version"]
    registry = registry_for(spec, instance)
    production = registry.get_by_alias(keys.registry_name, PRODUCTION)
    assert production is not None and production.version == promoted["version"]
    assert production.job_id == trained["job_id"]
    assert production.lineage["features"]["data_version"] == features_version
    assert production.metrics[f"holdout_{TASK_METRICS[model_spec.task][0]}"] == pytest.approx(
        evaluation[TASK_METRICS[model_spec.task][0]]
    )

    # Serving: the spec file exists; a scikit-learn bundle gets a KServe model directory, the
    # screening team's numpy artifact a note that it needs the team's predict function.
    serving = _values(instance, keys.serving)
    assert serving["ready"] is True and serving["version"] == production.version
    document = json.loads(Path(str(serving["spec"])).read_text())
    assert document["artifact_uri"] == trained["artifact"]
    if case.artifact == "model.joblib":
        assert document["kserve"]["manifest"]["kind"] == "InferenceService"
        assert Path(document["model_dir"], "model.joblib").is_file()
    else:
        assert document["custom_predictor"]["predict"] == model_spec.predict
        assert "kserve" not in document
