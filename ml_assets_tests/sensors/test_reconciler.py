"""The reconciling sensor against a real instance and real detached training subprocesses.

Each tick is run through ``build_sensor_context`` and its events are stored the way the sensor
daemon stores them, so the tests see exactly what the daemon would.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from ml_assets_testing.job_scripts import wait_for_file
from ml_assets_testing.sensor_driver import SensorDriver

import ml_assets.sensors.reconciler as reconciler_module
from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import TRAINING_CHECK, build_job_spec, submission_event
from ml_assets.backends.base import Backend, JobHandle, JobSpec, JobState
from ml_assets.backends.local import LocalBackend
from ml_assets.location import team_resources
from ml_assets.sensors.cancel import build_cancel_job
from ml_assets.sensors.reconciler import (
    CANCELLED,
    FAILED,
    RETRIED,
    SUBMITTED,
    ReconcilerCursor,
    build_reconciler_sensor,
    fold_events,
)
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets.teams.spec import TeamSpec, load_team_spec

pytestmark = pytest.mark.timeout(180)
TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"
# A job as a team script writes it: an artifact, progress, then the materialization, through
# Dagster Pipes and nothing of ml_assets.
WRITE_RESULT = """
import os, pathlib
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    out = pathlib.Path(os.environ["ML_ASSETS_OUTPUT_URI"])
    (out / "model.joblib").write_bytes(b"not really a model")
    pipes.report_custom_message({"progress": 0.5, "step": 1, "metrics": {"loss": 0.7}})
    pipes.log.info("halfway")
    pipes.report_asset_materialization(
        metadata={"artifact": "model.joblib", "roc_auc": 0.9}, data_version="abc123"
    )
"""


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request: pytest.FixtureRequest) -> dg.DagsterInstance:
    """Every reconciler test runs on SQLite storage and on a real PostgreSQL server."""
    name = "sqlite_instance" if request.param == "sqlite" else "postgres_instance"
    chosen: dg.DagsterInstance = request.getfixturevalue(name)
    return chosen


def clinical(**model_changes: object) -> TeamSpec:
    spec = load_team_spec(TEAMS / "clinical" / "team.yaml")
    model = spec.models["tumor_classifier"].model_copy(update=model_changes)
    return spec.model_copy(update={"models": {"tumor_classifier": model}})


def submit(
    instance: dg.DagsterInstance,
    team: TeamSpec,
    home: Path,
    code: str | None = None,
    run_id: str | None = None,
    features_uri: str = "/nonexistent/features.parquet",
    env: dict[str, str] | None = None,
) -> JobHandle:
    """Submit one job as the trained-model asset does, optionally running ``code`` instead."""
    model = ModelContext(team, "tumor_classifier")
    run_id = run_id or str(uuid.uuid4())
    spec: JobSpec = build_job_spec(
        model,
        run_id=run_id,
        features_uri=features_uri,
        features_data_version="abc123",
        home=home,
        storage_root=None,
    )
    if code is not None:
        spec = spec.model_copy(update={"command": [sys.executable, "-c", code]})
    if env:
        spec = spec.model_copy(update={"env": {**spec.env, **env}})
    handle = LocalBackend().submit(spec)
    instance.report_runless_asset_event(
        submission_event(
            model,
            handle,
            spec,
            run_id=run_id,
            attempt=1,
            code_version="v1",
            features_storage_id=None,
        )
    )
    return handle


def driver(
    instance: dg.DagsterInstance,
    team: TeamSpec,
    backends: dict[str, Backend] | None = None,
    **budget: Any,
) -> SensorDriver:
    budget.setdefault("progress_seconds", 0.0)  # show every change at once in tests
    sensor = build_reconciler_sensor(team, backends=backends, **budget)
    return SensorDriver(instance, sensor, team_resources(team))


def events(instance: dg.DagsterInstance, kind: str) -> list[dg.EventLogRecord]:
    key = ModelContext(clinical(), "tumor_classifier").keys.trained
    fetch = (
        instance.fetch_materializations if kind == "materialized" else instance.fetch_observations
    )
    records = fetch(key, limit=1000).records
    return [r for r in records if (r.asset_event.tags or {}).get(EVENT_TAG) == kind]  # type: ignore[union-attr]


def materializations(instance: dg.DagsterInstance) -> list[dg.EventLogRecord]:
    return events(instance, "materialized")


def test_a_finished_job_is_materialized_once_over_many_ticks(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, code=WRITE_RESULT)
    daemon = driver(instance, team)
    daemon.tick_until(lambda: materializations(instance))
    for _ in range(5):
        daemon.tick()
    [record] = materializations(instance)
    materialization = record.asset_materialization
    assert materialization is not None
    assert materialization.tags[JOB_ID_TAG] == handle.job_id
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["job_id"] == handle.job_id
    assert metadata["backend"] == "local"
    assert metadata["train/roc_auc"] == 0.9
    assert metadata["input_data_versions"] == {"clinical/tumor_classifier_features": "abc123"}
    assert str(metadata["artifact"]).endswith("model.joblib")
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}


def gated(ml_home: Path, name: str) -> tuple[Path, str]:
    """A job that writes its result only once the test creates the gate file."""
    gate = ml_home / name
    return gate, wait_for_file(gate, timeout=120) + "\n" + WRITE_RESULT


MIDWAY = """
import os, pathlib, time
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.report_custom_message({"device": "cpu"})
    for epoch in (1, 2):
        pipes.report_custom_message(
            {"progress": epoch / 4, "step": epoch, "metrics": {"loss": 1.0 / epoch}}
        )
        pipes.log.info(f"epoch {epoch} done")
    gate = pathlib.Path(os.environ["GATE"])
    while not gate.exists():
        time.sleep(0.02)
    (pathlib.Path(os.environ["ML_ASSETS_OUTPUT_URI"]) / "model.joblib").write_bytes(b"m")
    for epoch in (3, 4):
        pipes.report_custom_message(
            {"progress": epoch / 4, "step": epoch, "metrics": {"loss": 1.0 / epoch}}
        )
    pipes.report_asset_materialization(metadata={"artifact": "model.joblib"})
"""


def test_progress_metrics_and_logs_show_while_the_job_runs_then_a_curve(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    gate = ml_home / "midway-gate"
    submit(instance, team, ml_home, code=MIDWAY, env={"GATE": str(gate)})
    daemon = driver(instance, team)

    def steps() -> list[dg.EventLogRecord]:
        return [r for r in events(instance, "progress") if r.asset_observation.metadata.get("step")]  # type: ignore[union-attr]

    # The job reports two epochs, then waits: whatever ticks saw them, the latest says step 2.
    daemon.tick_until(lambda: any(r.asset_observation.metadata["step"].value == 2 for r in steps()))  # type: ignore[union-attr]
    midway = max(steps(), key=lambda r: r.storage_id)
    shown = {k: v.value for k, v in midway.asset_observation.metadata.items()}  # type: ignore[union-attr]
    assert shown["progress"] == 0.5 and shown["step"] == 2
    assert shown["train/loss"] == 0.5 and shown["device"] == "cpu"
    assert "epoch 1 done" in str(shown["recent_logs"]) and "epoch 2 done" in str(
        shown["recent_logs"]
    )
    quiet = daemon.tick()  # nothing new: nothing recorded
    assert quiet.asset_events == []
    gate.touch()
    daemon.tick_until(lambda: materializations(instance))
    [record] = materializations(instance)
    values = {k: v.value for k, v in record.asset_materialization.metadata.items()}  # type: ignore[union-attr]
    assert values["train/loss"] == 0.25  # the last reported value
    assert values["device"] == "cpu"
    # The curve of all four steps, as a PNG in the page's markdown.
    assert str(values["training_curve"]).startswith("![training curve](data:image/png;base64,")
    # The data version falls back to the one the job was given when it reports none.
    assert values["input_data_versions"] == {"clinical/tumor_classifier_features": "abc123"}


def test_a_tick_replayed_after_a_crash_does_not_repeat_the_materialization(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    gate, code = gated(ml_home, "gate")
    submit(instance, team, ml_home, code=code)
    daemon = driver(instance, team)
    daemon.tick()
    before = daemon.cursor
    assert len(ReconcilerCursor.parse(before).inflight) == 1
    gate.touch()
    # Crash after the events were stored but before the cursor was: the cursor stays behind.
    daemon.tick_until(lambda: materializations(instance))
    daemon.cursor = before
    replay = daemon.tick()
    assert [e for e in replay.asset_events if isinstance(e, dg.AssetMaterialization)] == []
    assert ReconcilerCursor.parse(replay.cursor).inflight == {}
    assert len(materializations(instance)) == 1


def test_a_fresh_sensor_after_a_restart_neither_loses_nor_repeats_a_job(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    submit(instance, team, ml_home, code=WRITE_RESULT)
    gate, code = gated(ml_home, "gate")
    late = submit(instance, team, ml_home, code=code)
    first = driver(instance, team)
    first.tick_until(lambda: len(materializations(instance)) == 1)
    assert late.job_id in ReconcilerCursor.parse(first.cursor).inflight

    gate.touch()  # the slow job finishes while no sensor is running
    restarted = driver(instance, team)  # a new process: no cursor, nothing in memory
    restarted.tick_until(lambda: len(materializations(instance)) == 2)
    for _ in range(3):
        restarted.tick()
    job_ids = sorted(r.asset_materialization.tags[JOB_ID_TAG] for r in materializations(instance))  # type: ignore[union-attr]
    assert len(set(job_ids)) == 2
    assert late.job_id in job_ids


def test_a_failed_job_is_retried_then_reported_with_its_message_and_log_tail(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    first = submit(instance, team, ml_home, code="raise SystemExit('out of GPU memory')")
    daemon = driver(instance, team)
    daemon.tick_until(lambda: events(instance, FAILED), timeout=120)

    [retried] = events(instance, RETRIED)
    retry_meta = {k: v.value for k, v in retried.asset_observation.metadata.items()}  # type: ignore[union-attr]
    assert retry_meta["job_id"] == first.job_id
    assert "out of GPU memory" in retry_meta["log_tail"]
    assert retry_meta["attempt"] == 1
    submissions = events(instance, SUBMITTED)
    assert len(submissions) == 2  # the original and one retry: max_attempts is 2
    retry_spec = submissions[0].asset_observation.metadata["job"].value["spec"]  # type: ignore[union-attr,index]
    assert retry_spec["command"][-1] == "raise SystemExit('out of GPU memory')"  # the same job

    [failed] = events(instance, FAILED)
    failed_meta = {k: v.value for k, v in failed.asset_observation.metadata.items()}  # type: ignore[union-attr]
    assert failed_meta["attempt"] == 2
    assert failed_meta["job_id"] == retry_meta["retry_job_id"] != first.job_id
    assert "out of GPU memory" in failed_meta["log_tail"]
    assert "return code 1" in failed_meta["message"]
    assert materializations(instance) == []
    for _ in range(3):
        daemon.tick()
    assert len(events(instance, SUBMITTED)) == 2  # reported jobs are not retried again


def test_a_retry_that_cannot_be_submitted_is_reported_not_looped(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    class SubmitOutage(LocalBackend):
        """A real local backend whose submissions fail after the first, like an API outage."""

        def submit(self, spec: JobSpec) -> JobHandle:
            if not spec.idempotency_key.endswith("/1"):
                raise ConnectionError("backend API unavailable")
            return super().submit(spec)

    team = clinical()
    submit(instance, team, ml_home, code="raise SystemExit('flaky')")
    daemon = driver(instance, team, backends={"local": SubmitOutage()})
    daemon.tick_until(lambda: events(instance, FAILED))
    [failed] = events(instance, FAILED)
    assert "retry could not be submitted" in str(failed.asset_observation.description)  # type: ignore[union-attr]
    assert "backend API unavailable" in str(failed.asset_observation.description)  # type: ignore[union-attr]
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}
    assert len(events(instance, SUBMITTED)) == 1


def test_one_broken_job_does_not_stop_the_others(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical(
        retry=clinical().models["tumor_classifier"].retry.model_copy(update={"max_attempts": 1})
    )
    broken = submit(
        instance,
        team,
        ml_home,
        # Exits 0 with a half-written message and no materialization.
        code="import os, pathlib\n"
        "pathlib.Path(os.environ['ML_ASSETS_OUTPUT_URI'], 'messages.jsonl').write_text('{oops')",
    )
    good = submit(instance, team, ml_home, code=WRITE_RESULT)
    daemon = driver(instance, team)
    daemon.tick_until(lambda: materializations(instance) and events(instance, FAILED))
    [failed] = events(instance, FAILED)
    assert failed.asset_observation.tags[JOB_ID_TAG] == broken.job_id  # type: ignore[union-attr]
    assert "unusable result" in failed.asset_observation.metadata["message"].value  # type: ignore[union-attr]
    [done] = materializations(instance)
    assert done.asset_materialization.tags[JOB_ID_TAG] == good.job_id  # type: ignore[union-attr]


SLEEPER = "import time\ntime.sleep(120)\n"


def test_an_explicit_cancel_stops_the_job_and_is_recorded(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, code=SLEEPER)
    daemon = driver(instance, team)
    daemon.tick()
    result = build_cancel_job(team).execute_in_process(
        instance=instance,
        resources=team_resources(team),
        run_config={
            "ops": {"clinical_cancel_training_op": {"config": {"model": "tumor_classifier"}}}
        },
    )
    assert result.success
    daemon.tick_until(lambda: events(instance, CANCELLED))
    status = LocalBackend().poll([handle])[handle.job_id]
    assert status.state == JobState.CANCELLED
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}
    assert materializations(instance) == []


def test_cancelling_the_submitting_run_cancels_the_job(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()

    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def submitting() -> None:
        noop()

    run = submitting.execute_in_process(instance=instance).dagster_run
    handle = submit(instance, team, ml_home, code=SLEEPER, run_id=run.run_id)
    instance.report_run_canceled(run)
    daemon = driver(instance, team)
    daemon.tick_until(lambda: events(instance, CANCELLED))
    assert LocalBackend().poll([handle])[handle.job_id].state == JobState.CANCELLED


def test_the_submission_record_round_trips(instance: dg.DagsterInstance, ml_home: Path) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, code=WRITE_RESULT)
    [record] = events(instance, SUBMITTED)
    job = record.asset_observation.metadata["job"].value  # type: ignore[union-attr]
    assert JobHandle.model_validate(job["handle"]) == handle
    spec = JobSpec.model_validate(job["spec"])
    assert spec.idempotency_key == handle.idempotency_key
    assert spec.output_uri == handle.output_uri
    assert (job["attempt"], job["code_version"]) == (1, "v1")


def test_a_job_that_failed_on_its_own_before_a_cancel_keeps_its_failure_and_is_not_retried(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    gate, _ = gated(ml_home, "gate")
    handle = submit(instance, team, ml_home, code=wait_for_file(gate) + "\nraise SystemExit(9)")
    daemon = driver(instance, team)
    daemon.tick()
    gate.touch()
    backend = LocalBackend()
    deadline = time.monotonic() + 60
    while backend.poll([handle])[handle.job_id].state != JobState.FAILED:
        assert time.monotonic() < deadline, "the job did not fail"
        time.sleep(0.05)
    # The cancel request arrives after the job had already failed by itself.
    model = ModelContext(team, "tumor_classifier")
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=model.keys.trained,
            tags={EVENT_TAG: "cancel_requested", JOB_ID_TAG: handle.job_id},
        )
    )
    daemon.tick_until(lambda: events(instance, FAILED))
    [failed] = events(instance, FAILED)
    assert "return code 9" in failed.asset_observation.metadata["message"].value  # type: ignore[union-attr]
    assert events(instance, CANCELLED) == []
    assert events(instance, RETRIED) == []
    assert len(events(instance, SUBMITTED)) == 1


def test_a_job_of_a_model_removed_from_the_yaml_is_reported_and_dropped(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    submit(instance, clinical(), ml_home, code=SLEEPER)
    renamed = clinical().model_copy(
        update={"models": {"tumor_classifier_v2": clinical().models["tumor_classifier"]}}
    )
    daemon = driver(instance, clinical())
    daemon.tick()
    cursor = ReconcilerCursor.parse(daemon.cursor)
    assert len(cursor.inflight) == 1
    later = driver(instance, renamed)
    later.cursor = daemon.cursor
    later.tick()
    assert ReconcilerCursor.parse(later.cursor).inflight == {}
    [orphaned] = events(instance, FAILED)
    assert "no longer in clinical's team.yaml" in str(orphaned.asset_observation.description)  # type: ignore[union-attr]
    handle = next(iter(cursor.inflight.values())).handle
    LocalBackend().cancel(handle)


def test_an_unreadable_cursor_is_rebuilt_from_the_event_log(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, code=WRITE_RESULT)
    daemon = driver(instance, team)
    daemon.cursor = "{not json"
    daemon.tick_until(lambda: materializations(instance))
    [record] = materializations(instance)
    assert record.asset_materialization.tags[JOB_ID_TAG] == handle.job_id  # type: ignore[union-attr]


def test_the_watermark_waits_for_events_to_settle(
    instance: dg.DagsterInstance, ml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recent events are read again next tick, so a row committed late is not skipped."""
    team = clinical()
    submit(instance, team, ml_home, code=SLEEPER)
    [record] = events(instance, SUBMITTED)
    fresh = fold_events(instance, team, ReconcilerCursor())
    assert fresh.after < record.storage_id
    assert len(fresh.inflight) == 1
    again = fold_events(instance, team, fresh)  # re-reading the same events changes nothing
    assert again.inflight == fresh.inflight
    monkeypatch.setattr(reconciler_module, "SETTLE_SECONDS", -1.0)
    settled = fold_events(instance, team, fresh)
    assert settled.after == record.storage_id
    LocalBackend().cancel(next(iter(settled.inflight.values())).handle)


RAISES_VALUE_ERROR = """
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    raise ValueError("max_iter must be >= 1, got -5")
"""


def _training_check(instance: dg.DagsterInstance) -> Any:
    key = dg.AssetCheckKey(
        ModelContext(clinical(), "tumor_classifier").keys.trained, TRAINING_CHECK
    )
    return instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)


def test_an_error_retrying_cannot_fix_fails_at_once_and_turns_the_model_red_until_a_success(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()  # max_attempts: 2, yet a ValueError from the job is not retried
    submit(instance, team, ml_home, code=RAISES_VALUE_ERROR)
    daemon = driver(instance, team)
    daemon.tick_until(lambda: events(instance, FAILED))
    assert events(instance, RETRIED) == []
    assert len(events(instance, SUBMITTED)) == 1
    [failed] = events(instance, FAILED)
    message = failed.asset_observation.metadata["message"].value  # type: ignore[union-attr]
    assert "ValueError: max_iter must be >= 1, got -5" in message
    assert "retrying cannot fix a ValueError" in failed.asset_observation.description  # type: ignore[union-attr]
    red = _training_check(instance)
    assert red is not None and red.status.value == "FAILED"
    assert "max_iter must be >= 1" in (red.event.dagster_event.event_specific_data.description)

    submit(instance, team, ml_home, code=WRITE_RESULT)
    daemon.tick_until(lambda: materializations(instance))
    green = _training_check(instance)
    assert green is not None and green.status.value == "SUCCEEDED"
    checks_before = green.id
    submit(instance, team, ml_home, code=WRITE_RESULT)
    daemon.tick_until(lambda: len(materializations(instance)) == 2)
    # Already green: a second good job records no new check result.
    assert _training_check(instance).id == checks_before
