"""A reconciler tick is bounded however many jobs are in flight.

10,000 jobs are put in the sensor's cursor (one real submission record in the event log holds
the spec they share) with their output folders on disk, each holding the Pipes messages a job
writes. The backend is an in-memory ledger the test moves between states: what is tested here
is the reconciler's budget, not a backend (the backends have their own contract suite).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import TRAINING_CHECK, submission_event
from ml_assets.backends.base import JobHandle, JobState
from ml_assets.sensors.reconciler import (
    MAX_EVENTS,
    MAX_PROGRESS_READS,
    InFlight,
    ReconcilerCursor,
    build_reconciler_sensor,
)
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets_tests.sensors.ledger import (
    Ledger,
    clinical_job,
    clinical_team,
    report_model,
    write_messages,
)

pytestmark = pytest.mark.timeout(300)


def put_in_flight(
    instance: dg.DagsterInstance, home: Path, jobs: int
) -> tuple[ReconcilerCursor, Ledger, list[Path]]:
    """``jobs`` queued jobs in a cursor, sharing one real submission record's spec."""
    run_id = str(uuid.uuid4())
    model, spec = clinical_job(home, run_id)
    template = JobHandle.for_spec("local", spec, {})
    instance.report_runless_asset_event(
        submission_event(
            model,
            template,
            spec,
            run_id=run_id,
            attempt=1,
            code_version="v1",
            features_storage_id=None,
        )
    )
    record = instance.fetch_observations(model.keys.trained, limit=1).records[0]
    ledger = Ledger()
    inflight: dict[str, InFlight] = {}
    folders = []
    for number in range(jobs):
        job_id = f"job-{number:05d}"
        folder = home / "jobs" / job_id
        folder.mkdir(parents=True)
        folders.append(folder)
        handle = template.model_copy(update={"job_id": job_id, "output_uri": str(folder)})
        inflight[job_id] = InFlight(
            model="tumor_classifier",
            handle=handle,
            submission=record.storage_id,
            run_id=run_id,
            attempt=1,
        )
        ledger.states[job_id] = JobState.QUEUED
    return ReconcilerCursor(after=record.storage_id, inflight=inflight), ledger, folders


def finish(ledger: Ledger, folders: list[Path]) -> None:
    """Every job writes its model and reports it, then ends."""
    for folder in folders:
        report_model(folder)
        ledger.states[folder.name] = JobState.SUCCEEDED


def materialized_job_ids(instance: dg.DagsterInstance) -> list[str]:
    key = ModelContext(clinical_team(), "tumor_classifier").keys.trained
    records = instance.fetch_materializations(key, limit=10_000).records
    return [r.asset_materialization.tags[JOB_ID_TAG] for r in records]  # type: ignore[union-attr]


def test_ten_thousand_jobs_in_flight_make_a_bounded_tick(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    cursor, ledger, folders = put_in_flight(instance, ml_home, 10_000)
    sensor = build_reconciler_sensor(clinical_team(), backends={"local": ledger})
    daemon = SensorDriver(instance, sensor)
    daemon.cursor = cursor.model_dump_json()

    queued = daemon.tick()
    assert queued.asset_events == []  # a queue every job shares is not news
    assert ledger.polled == 1  # one batched poll for all of them

    for folder in folders:  # every job starts and reports its first epoch at once
        write_messages(folder, ("report_custom_message", {"payload": {"progress": 0.1, "step": 1}}))
        ledger.states[folder.name] = JobState.RUNNING
    started = daemon.tick()
    assert 0 < len(started.asset_events) <= min(MAX_EVENTS, MAX_PROGRESS_READS)
    # The cursor holds compact state, not specs.
    assert daemon.cursor is not None
    assert len(daemon.cursor) / 10_000 < 1_000
    assert "DAGSTER_PIPES_CONTEXT" not in daemon.cursor

    finish(ledger, folders)
    ended = daemon.tick()
    assert len(ended.asset_events) <= MAX_EVENTS
    materializations = [e for e in ended.asset_events if isinstance(e, dg.AssetMaterialization)]
    # Oldest first: the jobs recorded are the first ones submitted.
    recorded = [e.tags[JOB_ID_TAG] for e in materializations]  # type: ignore[index]
    assert recorded == sorted(recorded) and recorded[0] == "job-00000"


def test_a_burst_beyond_the_cap_drains_exactly_once_across_a_crash(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    cursor, ledger, folders = put_in_flight(instance, ml_home, 1_000)
    cap = 300
    sensor = build_reconciler_sensor(clinical_team(), backends={"local": ledger}, max_events=cap)
    daemon = SensorDriver(instance, sensor)
    daemon.cursor = cursor.model_dump_json()
    finish(ledger, folders)

    sizes = []
    crashed = False
    while len(set(materialized_job_ids(instance))) < 1_000 and len(sizes) < 20:
        before = daemon.cursor
        result = daemon.tick()
        sizes.append(len(result.asset_events))
        if len(sizes) == 2 and not crashed:
            # The daemon stored this tick's events, then died before storing the cursor.
            daemon.cursor = before
            crashed = True

    assert all(size <= cap for size in sizes), sizes
    ids = materialized_job_ids(instance)
    assert len(ids) == 1_000 and len(set(ids)) == 1_000, "each job recorded exactly once"
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}
    # One passing training check for the model, not one per job.
    key = ModelContext(clinical_team(), "tumor_classifier").keys.trained
    check = dg.AssetCheckKey(key, TRAINING_CHECK)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
    assert latest[check].status.value == "SUCCEEDED"
    observations = instance.fetch_observations(key, limit=10_000).records
    tags = [(r.asset_observation.tags or {}).get(EVENT_TAG) for r in observations]  # type: ignore[union-attr]
    assert "failed" not in tags
