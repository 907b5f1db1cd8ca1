"""Every crash point of a tick: store a prefix of its events, lose the cursor, replay.

The sensor daemon stores a tick's events one by one and the cursor last, so a crash can leave
any prefix of a tick's events stored and the old cursor in place. For every such prefix of a
tick that records a success, submits a retry and records a failure for good, the replayed
ticks must end with every job having exactly one outcome and one submission record, read from
the event log itself.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import submission_event, submit
from ml_assets.backends.base import JobHandle, JobState
from ml_assets.sensors.reconciler import TERMINAL_EVENTS, build_reconciler_sensor
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets_tests.sensors.ledger import (
    Ledger,
    clinical_job,
    clinical_team,
    report_model,
    write_messages,
)

pytestmark = pytest.mark.timeout(300)


def _succeed(ledger: Ledger, handle: JobHandle) -> None:
    report_model(handle.output_uri)
    ledger.states[handle.job_id] = JobState.SUCCEEDED


def _scenario(instance: dg.DagsterInstance, home: Path) -> tuple[SensorDriver, Ledger, dict]:
    """Three jobs in flight and seen once; then one succeeds, one fails (a retry is due) and
    one raises an error that retrying cannot fix."""
    team = clinical_team()
    ledger = Ledger()
    handles = {}
    for name in ("good", "flaky", "broken"):
        run_id = str(uuid.uuid4())
        model, spec = clinical_job(home, run_id)
        handles[name] = submit(ledger, spec)
        instance.report_runless_asset_event(
            submission_event(
                model,
                handles[name],
                spec,
                run_id=run_id,
                attempt=1,
                code_version="v1",
                features_storage_id=None,
            )
        )
    sensor = build_reconciler_sensor(team, backends={"local": ledger}, progress_seconds=0.0)
    daemon = SensorDriver(instance, sensor)
    daemon.tick()
    _succeed(ledger, handles["good"])
    ledger.states[handles["flaky"].job_id] = JobState.FAILED
    write_messages(
        handles["broken"].output_uri,
        ("closed", {"exception": {"name": "ValueError", "message": "C must be > 0"}}),
    )
    ledger.states[handles["broken"].job_id] = JobState.FAILED
    return daemon, ledger, handles


def _events(instance: dg.DagsterInstance) -> list[tuple[str, str]]:
    key = ModelContext(clinical_team(), "tumor_classifier").keys.trained
    records = [
        *instance.fetch_observations(key, limit=1000).records,
        *instance.fetch_materializations(key, limit=1000).records,
    ]
    found = []
    for record in records:
        tags = record.asset_event.tags or {}  # type: ignore[union-attr]
        if tags.get(EVENT_TAG):
            found.append((tags[EVENT_TAG], tags[JOB_ID_TAG]))
    return found


def _tick_events(tmp_path: Path) -> int:
    (tmp_path / "count").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "count")) as instance:
        daemon, _, _ = _scenario(instance, tmp_path / "count_home")
        context = dg.build_sensor_context(instance=instance, cursor=daemon.cursor)
        return len(daemon.sensor(context).asset_events)  # type: ignore[union-attr]


def test_every_prefix_of_a_tick_replays_to_exactly_one_outcome_per_job(tmp_path: Path) -> None:
    events_in_tick = _tick_events(tmp_path)
    assert events_in_tick >= 4  # materialized, submitted (the retry), retried, failed, checks
    for prefix in range(events_in_tick + 1):
        root = tmp_path / f"prefix_{prefix}"
        (root / "instance").mkdir(parents=True)
        with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
            daemon, ledger, handles = _scenario(instance, root / "home")
            before = daemon.cursor
            context = dg.build_sensor_context(instance=instance, cursor=before)
            result = daemon.sensor(context)
            for event in result.asset_events[:prefix]:  # type: ignore[union-attr]
                instance.report_runless_asset_event(event)
            # The crash: the rest of the events and the new cursor are lost.
            daemon.cursor = before
            for _ in range(3):
                daemon.tick()
            retries = [
                job for job in ledger.states if job not in {h.job_id for h in handles.values()}
            ]
            assert len(retries) == 1, (prefix, ledger.states)
            retry = JobHandle.model_validate(
                {**handles["flaky"].model_dump(), "job_id": retries[0]}
            )
            retry_folder = Path(handles["flaky"].output_uri).with_name(retries[0])
            _succeed(ledger, retry.model_copy(update={"output_uri": str(retry_folder)}))
            for _ in range(3):
                daemon.tick()

            log = _events(instance)
            outcomes = Counter(job for kind, job in log if kind in TERMINAL_EVENTS)
            submissions = Counter(job for kind, job in log if kind == "submitted")
            everyone = [*(h.job_id for h in handles.values()), retries[0]]
            assert all(outcomes[job] == 1 for job in everyone), (prefix, outcomes)
            assert all(submissions[job] == 1 for job in everyone), (prefix, submissions)
            kinds = {job: kind for kind, job in log if kind in TERMINAL_EVENTS}
            assert kinds[handles["good"].job_id] == "materialized"
            assert kinds[handles["flaky"].job_id] == "retried"
            assert kinds[handles["broken"].job_id] == "failed"
            assert kinds[retries[0]] == "materialized"
