"""The cancel and retry jobs, launched as the UI launches them (the launchpad's default config),
against a real instance, real local training processes and the reconciler driven tick by tick."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import build_job_spec, submission_event
from ml_assets.backends.base import JobHandle, JobState
from ml_assets.backends.local import LocalBackend
from ml_assets.location import team_resources
from ml_assets.sensors.cancel import build_cancel_job, build_retry_job, training_jobs
from ml_assets.sensors.reconciler import (
    CANCEL_REQUESTED,
    CANCELLED,
    FAILED,
    MATERIALIZED,
    SUBMITTED,
    ReconcilerCursor,
    build_reconciler_sensor,
)
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets.teams.spec import RetrySpec, TeamSpec, load_team_spec

pytestmark = pytest.mark.timeout(180)
TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"
MODEL = "tumor_classifier"
# A job as a team script writes it: an artifact, then its materialization through Pipes.
WRITE_RESULT = """
import os, pathlib
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    out = pathlib.Path(os.environ["ML_ASSETS_OUTPUT_URI"])
    (out / "model.joblib").write_bytes(b"not really a model")
    pipes.report_asset_materialization(metadata={"artifact": "model.joblib"})
"""
SLEEPER = "import time\ntime.sleep(120)\n"


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request: pytest.FixtureRequest) -> dg.DagsterInstance:
    """On SQLite, as under `dagster dev`, and on a real PostgreSQL server."""
    name = "sqlite_instance" if request.param == "sqlite" else "postgres_instance"
    chosen: dg.DagsterInstance = request.getfixturevalue(name)
    return chosen


def clinical(max_attempts: int = 2) -> TeamSpec:
    spec = load_team_spec(TEAMS / "clinical" / "team.yaml")
    model = spec.models[MODEL].model_copy(update={"retry": RetrySpec(max_attempts=max_attempts)})
    return spec.model_copy(update={"models": {MODEL: model}})


def fail_once(ml_home: Path) -> str:
    """A job that fails the first time it runs and writes its result the next."""
    marker = ml_home / f"failed-once-{uuid.uuid4().hex[:8]}"
    return (
        f"import pathlib\nmarker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('failed')\n"
        "    raise SystemExit('the first attempt fails')\n" + WRITE_RESULT
    )


def submit(instance: dg.DagsterInstance, team: TeamSpec, home: Path, code: str) -> JobHandle:
    """Submit one job as the trained-model step does, running ``code``."""
    model = ModelContext(team, MODEL)
    run_id = str(uuid.uuid4())
    spec = build_job_spec(
        model,
        run_id=run_id,
        features_uri="/nonexistent/features.parquet",
        features_data_version="abc123",
        home=home,
        storage_root=None,
    ).model_copy(update={"command": [sys.executable, "-c", code]})
    handle = LocalBackend().submit(spec)
    instance.report_runless_asset_event(
        submission_event(
            model, handle, spec, run_id=run_id, attempt=1, code_version="v1", features_storage_id=1
        )
    )
    return handle


def events(instance: dg.DagsterInstance, kind: str) -> list[dg.EventLogRecord]:
    key = ModelContext(clinical(), MODEL).keys.trained
    fetch = instance.fetch_materializations if kind == MATERIALIZED else instance.fetch_observations
    return [
        r
        for r in fetch(key, limit=1000).records
        if r.asset_event is not None and (r.asset_event.tags or {}).get(EVENT_TAG) == kind
    ]


def job_ids(instance: dg.DagsterInstance, kind: str) -> list[str]:
    return [r.asset_event.tags[JOB_ID_TAG] for r in events(instance, kind)]  # type: ignore[union-attr,index]


def launch(
    job: dg.JobDefinition, instance: dg.DagsterInstance, **config: str
) -> dg.ExecuteInProcessResult:
    """Launch ``job`` as the launchpad does: its default config, with ``config`` changed."""
    run_config = None
    if config:
        op_name = next(iter(job.graph.node_dict))
        run_config = {"ops": {op_name: {"config": config}}}
    return job.execute_in_process(
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
        resources=team_resources(clinical()),
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [event] = result.get_step_failure_events()
    data = event.step_failure_data
    return f"{data.user_failure_data.description if data.user_failure_data else ''} {data.error}"


def logged(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


# --- the launchpad's default config ------------------------------------------------------------


def test_the_default_config_is_valid_and_names_the_model() -> None:
    team = clinical()
    for job in (build_cancel_job(team), build_retry_job(team)):
        op_name = next(iter(job.graph.node_dict))
        assert job.run_config == {
            "ops": {op_name: {"config": {"model": MODEL, "job_id": ""}}},
            "loggers": {},
            "resources": {},
            "execution": {},
        }
        resolved = dg.validate_run_config(job, None)
        assert resolved["ops"][op_name]["config"] == {"model": MODEL, "job_id": ""}
        with pytest.raises(dg.DagsterInvalidConfigError, match="not in enum type"):
            dg.validate_run_config(job, {"ops": {op_name: {"config": {"model": "nosuch"}}}})


def test_a_team_with_two_models_offers_both_and_defaults_to_the_first() -> None:
    team = clinical()
    team = team.model_copy(update={"models": {**team.models, "second": team.models[MODEL]}})
    job = build_retry_job(team)
    op_name = next(iter(job.graph.node_dict))
    [field] = [
        f
        for name, f in job.run_config_schema.config_type.fields["ops"]  # type: ignore[attr-defined]
        .config_type.fields[op_name]
        .config_type.fields["config"]
        .config_type.fields.items()
        if name == "model"
    ]
    assert [v.config_value for v in field.config_type.enum_values] == [MODEL, "second"]
    config = {"ops": {op_name: {"config": {"model": "second"}}}}
    assert dg.validate_run_config(job, config)["ops"][op_name]["config"]["model"] == "second"


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_with_the_default_config_cancels_the_job_in_flight(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, SLEEPER)
    daemon = SensorDriver(instance, build_reconciler_sensor(team), team_resources(team))
    daemon.tick()
    result = launch(build_cancel_job(team), instance)
    assert result.success
    assert job_ids(instance, CANCEL_REQUESTED) == [handle.job_id]
    daemon.tick_until(lambda: events(instance, CANCELLED))
    assert job_ids(instance, CANCELLED) == [handle.job_id]
    assert LocalBackend().poll([handle])[handle.job_id].state == JobState.CANCELLED
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}
    assert events(instance, MATERIALIZED) == []


def test_cancel_of_a_job_that_is_not_in_flight_says_so(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    handle = submit(instance, team, ml_home, WRITE_RESULT)
    SensorDriver(instance, build_reconciler_sensor(team), team_resources(team)).tick_until(
        lambda: events(instance, MATERIALIZED)
    )
    message = failure(launch(build_cancel_job(team), instance, job_id=handle.job_id))
    assert f"training job {handle.job_id} of {MODEL} succeeded; there is nothing to cancel" in (
        message
    )
    assert launch(build_cancel_job(team), instance).success  # nothing in flight: a warning
    assert events(instance, CANCEL_REQUESTED) == []


# --- retry -------------------------------------------------------------------------------------


def test_retry_resubmits_a_job_that_failed_for_good_once_and_the_reconciler_takes_it_over(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical(max_attempts=1)
    first = submit(instance, team, ml_home, fail_once(ml_home))
    daemon = SensorDriver(instance, build_reconciler_sensor(team), team_resources(team))
    daemon.tick_until(lambda: events(instance, FAILED))
    assert job_ids(instance, SUBMITTED) == [first.job_id]  # max_attempts 1: not retried

    retry = build_retry_job(team)
    result = launch(retry, instance)
    assert result.success
    submitted = job_ids(instance, SUBMITTED)
    assert len(submitted) == 2
    [again] = [job_id for job_id in submitted if job_id != first.job_id]
    jobs = training_jobs(instance, ModelContext(team, MODEL))
    original, resubmitted = jobs[first.job_id], jobs[again]
    assert (resubmitted.run_id, resubmitted.attempt) == (original.run_id, 2)
    assert resubmitted.spec.command == original.spec.command  # the exact same job
    assert resubmitted.spec.output_uri != original.spec.output_uri
    assert resubmitted.code_version == "v1" and resubmitted.features_storage_id == 1
    assert f"resubmitted {first.job_id} as {again}" in logged(instance, result)

    # Launched again before the reconciler saw it: the same attempt, already recorded.
    second = launch(retry, instance)
    assert second.success
    assert f"{first.job_id} was already retried as {again}" in logged(instance, second)
    assert len(job_ids(instance, SUBMITTED)) == 2

    daemon.tick_until(lambda: events(instance, MATERIALIZED))
    assert job_ids(instance, MATERIALIZED) == [again]
    [record] = events(instance, MATERIALIZED)
    assert record.asset_materialization.metadata["attempt"].value == 2  # type: ignore[union-attr]
    assert ReconcilerCursor.parse(daemon.cursor).inflight == {}

    # And after it succeeded: still nothing new, by default or by name.
    for config in ({}, {"job_id": first.job_id}):
        later = launch(retry, instance, **config)
        assert later.success
        assert f"already retried as {again}, which succeeded" in logged(instance, later)
    assert len(job_ids(instance, SUBMITTED)) == 2


def test_retry_of_a_job_that_succeeded_or_is_in_flight_fails_with_the_reason(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical()
    done = submit(instance, team, ml_home, WRITE_RESULT)
    daemon = SensorDriver(instance, build_reconciler_sensor(team), team_resources(team))
    daemon.tick_until(lambda: events(instance, MATERIALIZED))
    retry = build_retry_job(team)

    message = failure(launch(retry, instance, job_id=done.job_id))
    assert f"training job {done.job_id} of {MODEL} succeeded" in message
    assert "only a job that failed for good can be retried" in message
    assert f"{MODEL} has no training job that failed for good" in failure(launch(retry, instance))

    running = submit(instance, team, ml_home, SLEEPER)
    message = failure(launch(retry, instance, job_id=running.job_id))
    assert f"training job {running.job_id} of {MODEL} is still in flight (attempt 1)" in message
    assert "nosuch" in failure(launch(retry, instance, job_id="nosuch"))
    assert len(job_ids(instance, SUBMITTED)) == 2


def test_retry_by_default_leaves_a_failure_alone_once_a_newer_job_was_submitted(
    instance: dg.DagsterInstance, ml_home: Path
) -> None:
    team = clinical(max_attempts=1)
    failed = submit(instance, team, ml_home, "raise SystemExit('bad data')")
    SensorDriver(instance, build_reconciler_sensor(team), team_resources(team)).tick_until(
        lambda: events(instance, FAILED)
    )
    newer = submit(instance, team, ml_home, SLEEPER)  # e.g. "Materialize" clicked again
    retry = build_retry_job(team)
    message = failure(launch(retry, instance))
    assert f"{newer.job_id} was submitted since and is still in flight" in message
    assert f"set job_id: {failed.job_id} to retry it anyway" in message
    assert launch(retry, instance, job_id=failed.job_id).success  # when asked by name
    assert len(job_ids(instance, SUBMITTED)) == 3
