"""The training-job reconciler: one sensor per team that records finished jobs exactly once.

The event log is the source of truth. The trained-model asset records every submission as an
observation tagged ``ml_assets/event=submitted``; this sensor records every outcome the same
way (a materialization for success, observations for failure, retry and cancellation). A tick
folds the events stored since its cursor into the set of jobs in flight, polls those jobs in one
batch per backend, and emits the outcomes.

Why this is exactly once: the sensor daemon stores a tick's events one by one and only then the
new cursor, so a crash in between replays the tick from the old cursor. The replayed tick folds
the events the first attempt already stored, which removes the finished jobs from the in-flight
set before anything is polled, so nothing is emitted twice. A lost cursor is rebuilt by folding
from the start of the log, so a restart loses nothing either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    get_input_data_version_tag,
)
from pydantic import BaseModel, Field

from ml_assets import transport
from ml_assets.assets.common import EVENT_TAG, JOB_ID_TAG, ModelContext
from ml_assets.assets.training import SUBMITTED, for_attempt, submission_event
from ml_assets.backends.base import Backend, JobHandle, JobSpec, JobState, JobStatus
from ml_assets.teams.spec import TeamSpec

MATERIALIZED = "materialized"
RETRIED = "retried"
FAILED = "failed"
CANCELLED = "cancelled"
PROGRESS = "progress"
CANCEL_REQUESTED = "cancel_requested"
TERMINAL_EVENTS = {MATERIALIZED, RETRIED, FAILED, CANCELLED}
LOG_TAIL_LINES = 40
PAGE = 500
SETTLE_SECONDS = 30.0
logger = logging.getLogger(__name__)


class InFlight(BaseModel):
    """One job the sensor is waiting on, as recorded by its submission observation."""

    model: str
    handle: JobHandle
    spec: JobSpec
    run_id: str
    attempt: int
    code_version: str = ""
    features_storage_id: int | None = None
    cancel_requested: bool = False
    last_seen: str = ""


class ReconcilerCursor(BaseModel):
    """The sensor's cursor: a watermark into the event log plus the jobs in flight.

    Both are derivable from the event log alone; the cursor only saves re-reading it.
    """

    after: int = 0
    inflight: dict[str, InFlight] = Field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> ReconcilerCursor:
        """The cursor, or a fresh one (rebuilt from the log) when it is absent or unreadable."""
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValueError:
            return cls()


@dataclass
class TickOutcome:
    """What one reconciliation produced: events to store, the next cursor, and a log."""

    events: list[dg.AssetMaterialization | dg.AssetObservation] = field(default_factory=list)
    cursor: ReconcilerCursor = field(default_factory=ReconcilerCursor)
    log: list[str] = field(default_factory=list)


def fold_events(
    instance: dg.DagsterInstance, team: TeamSpec, cursor: ReconcilerCursor
) -> ReconcilerCursor:
    """Apply the job events stored after ``cursor.after`` to the in-flight set.

    The watermark only moves past events older than ``SETTLE_SECONDS``. PostgreSQL hands out
    storage ids at insert but makes rows visible at commit, so a younger id can appear before an
    older one; re-reading the last few seconds of events (folding is idempotent) means such a
    late row is still seen.
    """
    inflight = dict(cursor.inflight)
    after = cursor.after
    settled_before = time.time() - SETTLE_SECONDS
    records: list[dg.EventLogRecord] = []
    for name in team.models:
        key = ModelContext(team, name).keys.trained
        records.extend(_records(instance.fetch_observations, key, cursor.after))
        records.extend(_records(instance.fetch_materializations, key, cursor.after))
    settled = True
    for record in sorted(records, key=lambda r: r.storage_id):
        settled = settled and record.timestamp < settled_before
        if settled:
            after = max(after, record.storage_id)
        try:
            _fold(record, inflight)
        except (KeyError, TypeError, ValueError) as exc:  # e.g. written by an older release
            logger.warning(f"ignoring unreadable job event {record.storage_id}: {exc!r}")
    return ReconcilerCursor(after=after, inflight=inflight)


def _fold(record: dg.EventLogRecord, inflight: dict[str, InFlight]) -> None:
    event = record.asset_event
    tags = (event.tags if event is not None else None) or {}
    kind, job_id = tags.get(EVENT_TAG), tags.get(JOB_ID_TAG)
    if event is None or not job_id:
        return
    if kind == SUBMITTED and job_id not in inflight:
        job = event.metadata["job"].value
        if not isinstance(job, dict):
            raise TypeError(f"submission record of {job_id} is not a mapping")
        inflight[job_id] = InFlight(
            model=event.asset_key.path[-1],
            handle=JobHandle.model_validate(job["handle"]),
            spec=JobSpec.model_validate(job["spec"]),
            run_id=job["run_id"],
            attempt=job["attempt"],
            code_version=job.get("code_version", ""),
            features_storage_id=job.get("features_storage_id"),
        )
    elif kind == CANCEL_REQUESTED and job_id in inflight:
        inflight[job_id] = inflight[job_id].model_copy(update={"cancel_requested": True})
    elif kind in TERMINAL_EVENTS:
        inflight.pop(job_id, None)


def _records(fetch: Any, key: dg.AssetKey, after: int) -> Iterable[dg.EventLogRecord]:
    page_cursor = None
    while True:
        result = fetch(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
            limit=PAGE,
            cursor=page_cursor,
            ascending=True,
        )
        yield from result.records
        if not result.has_more:
            return
        page_cursor = result.cursor


class Reconciler:
    """Reconciles one team's training jobs; the sensor is a thin wrapper around ``tick``."""

    def __init__(self, team: TeamSpec, backends: dict[str, Backend] | None = None) -> None:
        self.team = team
        self._backends = dict(backends or {})

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = self.team.load_backend(name)
        return self._backends[name]

    def tick(self, instance: dg.DagsterInstance, raw_cursor: str | None) -> TickOutcome:
        cursor = fold_events(instance, self.team, ReconcilerCursor.parse(raw_cursor))
        outcome = TickOutcome(cursor=cursor)
        if not cursor.inflight:
            return outcome
        statuses = self._poll(cursor.inflight, outcome)
        cancelled_runs = self._cancelled_runs(instance, cursor.inflight.values())
        for job_id, job in list(cursor.inflight.items()):
            status = statuses.get(job_id)
            if status is None:
                continue
            try:
                self._advance(job, status, cancelled_runs, outcome)
            except Exception as exc:  # one broken job must not stop the others
                outcome.log.append(f"{job_id}: could not be reconciled this tick: {exc!r}")
        return outcome

    def _poll(self, inflight: dict[str, InFlight], outcome: TickOutcome) -> dict[str, JobStatus]:
        by_backend: dict[str, list[JobHandle]] = {}
        for job in inflight.values():
            by_backend.setdefault(job.handle.backend, []).append(job.handle)
        statuses: dict[str, JobStatus] = {}
        for name, handles in by_backend.items():
            try:
                statuses.update(self.backend(name).poll(handles))
            except Exception as exc:  # keep the jobs in flight and try again next tick
                outcome.log.append(f"polling {len(handles)} job(s) on {name} failed: {exc!r}")
        return statuses

    def _cancelled_runs(self, instance: dg.DagsterInstance, jobs: Iterable[InFlight]) -> set[str]:
        run_ids = sorted({job.run_id for job in jobs})
        runs = instance.get_runs(dg.RunsFilter(run_ids=run_ids))
        stopped = {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING}
        return {run.run_id for run in runs if run.status in stopped}

    def _advance(
        self,
        job: InFlight,
        status: JobStatus,
        cancelled_runs: set[str],
        outcome: TickOutcome,
    ) -> None:
        model = ModelContext(self.team, job.model)
        job_id = job.handle.job_id
        if job.model not in self.team.models:
            self._finish(
                outcome,
                model,
                job,
                FAILED,
                f"Training job {job_id} belongs to model {job.model!r}, which is no longer in "
                f"{self.team.team}'s team.yaml; it is no longer tracked.",
            )
            return
        if status.state == JobState.SUCCEEDED:
            try:
                materialization = self._materialization(model, job, status)
            except (OSError, ValueError, KeyError) as exc:
                # A job that exits cleanly but leaves no usable result has failed.
                status = status.model_copy(
                    update={"state": JobState.FAILED, "message": f"unusable result: {exc!r}"}
                )
            else:
                outcome.events.append(materialization)
                outcome.cursor.inflight.pop(job_id)
                outcome.log.append(f"{job_id}: succeeded; {model.keys.trained.to_user_string()}")
                return
        stop_requested = job.cancel_requested or job.run_id in cancelled_runs
        if status.state == JobState.CANCELLED or (
            status.state == JobState.FAILED and stop_requested
        ):
            # A job asked to stop is never retried, even if it failed before the cancel landed.
            self._finish(outcome, model, job, CANCELLED, f"Training job {job_id} was cancelled.")
        elif status.state == JobState.FAILED:
            self._failed(model, job, status, outcome)
        elif stop_requested:
            self.backend(job.handle.backend).cancel(job.handle)
            outcome.log.append(f"{job_id}: cancel requested (run {job.run_id}); cancelling")
        else:
            seen = f"{status.state.value}:{int((status.progress or 0) * 10)}"
            if seen != job.last_seen:
                outcome.cursor.inflight[job_id] = job.model_copy(update={"last_seen": seen})
                outcome.events.append(
                    _observation(
                        model,
                        job,
                        PROGRESS,
                        f"Training job {job_id} is {status.state.value}.",
                        {
                            "status": status.state.value,
                            "progress": float(status.progress or 0.0),
                            "message": status.message,
                        },
                    )
                )

    def _finish(
        self,
        outcome: TickOutcome,
        model: ModelContext,
        job: InFlight,
        kind: str,
        description: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a job's last word and stop tracking it."""
        outcome.events.append(_observation(model, job, kind, description, details or {}))
        outcome.cursor.inflight.pop(job.handle.job_id, None)
        outcome.log.append(f"{job.handle.job_id}: {kind}: {description}")

    def _failed(
        self, model: ModelContext, job: InFlight, status: JobStatus, outcome: TickOutcome
    ) -> None:
        job_id = job.handle.job_id
        backend = self.backend(job.handle.backend)
        try:
            log_tail = backend.logs(job.handle, tail=LOG_TAIL_LINES)
        except Exception as exc:
            log_tail = f"(the log could not be read: {exc!r})"
        attempts = model.spec.retry.max_attempts
        details = {
            "message": status.message,
            "log_tail": dg.MetadataValue.md(f"```\n{log_tail}\n```"),
            "attempt": job.attempt,
            "max_attempts": attempts,
        }
        summary = f"Training job {job_id} failed on attempt {job.attempt} of {attempts}"
        if job.attempt >= attempts:
            self._finish(
                outcome, model, job, FAILED, f"{summary}; not retried. {status.message}", details
            )
            return
        attempt = job.attempt + 1
        spec = for_attempt(job.spec, run_id=job.run_id, attempt=attempt)
        try:
            handle = backend.submit(spec)
        except Exception as exc:
            self._finish(
                outcome,
                model,
                job,
                FAILED,
                f"{summary}, and its retry could not be submitted: {exc!r}. {status.message}",
                details,
            )
            return
        # The new job's record goes first: a crash between the two leaves it tracked.
        outcome.events.append(
            submission_event(
                model,
                handle,
                spec,
                run_id=job.run_id,
                attempt=attempt,
                code_version=job.code_version,
                features_storage_id=job.features_storage_id,
            )
        )
        self._finish(
            outcome,
            model,
            job,
            RETRIED,
            f"{summary}; retrying as {handle.job_id}. {status.message}",
            {**details, "retry_job_id": handle.job_id},
        )
        outcome.cursor.inflight[handle.job_id] = job.model_copy(
            update={"handle": handle, "spec": spec, "attempt": attempt, "last_seen": ""}
        )

    def _materialization(
        self, model: ModelContext, job: InFlight, status: JobStatus
    ) -> dg.AssetMaterialization:
        if not status.result_uri:
            raise ValueError(f"{job.handle.job_id} succeeded but reported no result location")
        result = read_result(status.result_uri)
        metrics = {f"train/{k}": float(v) for k, v in result.get("metrics", {}).items()}
        features_key = model.keys.features
        provenance = {
            # Dagster's own lineage tags, so staleness and code versions show in the UI.
            CODE_VERSION_TAG: job.code_version,
            get_input_data_version_tag(features_key): str(result["data_version"]),
            get_input_data_version_tag(features_key, INPUT_EVENT_POINTER_TAG_PREFIX): str(
                job.features_storage_id or ""
            ),
        }
        return dg.AssetMaterialization(
            asset_key=model.keys.trained,
            description=f"Trained by job {job.handle.job_id} on {job.handle.backend}.",
            metadata={
                "job_id": job.handle.job_id,
                "backend": job.handle.backend,
                "attempt": job.attempt,
                "submitted_by_run": job.run_id,
                # The job wrote beside result.json; its own path may be a container's scratch.
                "artifact": dg.MetadataValue.path(
                    transport.sibling(status.result_uri, _basename(result["artifact_uri"]))
                ),
                "trainer": str(result.get("trainer", "")),
                "hyperparameters": dg.MetadataValue.json(result.get("hyperparameters", {})),
                "features_uri": dg.MetadataValue.path(result["features_uri"]),
                "input_data_versions": dg.MetadataValue.json(
                    {features_key.to_user_string(): result["data_version"]}
                ),
                "code_version": job.code_version,
                "rows_train": int(result.get("rows_train", 0)),
                "duration_seconds": float(result.get("duration_seconds", 0.0)),
                "result": dg.MetadataValue.path(status.result_uri),
                **metrics,
            },
            tags={
                EVENT_TAG: MATERIALIZED,
                JOB_ID_TAG: job.handle.job_id,
                **{k: v for k, v in provenance.items() if v},
            },
        )


def _observation(
    model: ModelContext, job: InFlight, kind: str, description: str, metadata: dict[str, Any]
) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=model.keys.trained,
        description=description,
        metadata={"status": kind, "job_id": job.handle.job_id, **metadata},
        tags={EVENT_TAG: kind, JOB_ID_TAG: job.handle.job_id},
    )


def read_result(uri: str) -> dict[str, Any]:
    """Read a job's ``result.json`` from wherever its backend left it (a path, s3, gs, dbfs)."""
    result: dict[str, Any] = transport.read_json(uri)
    return result


def _basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def build_reconciler_sensor(
    team: TeamSpec,
    minimum_interval_seconds: int = 10,
    backends: dict[str, Backend] | None = None,
) -> dg.SensorDefinition:
    """The team's reconciling sensor, running by default. ``backends`` overrides the backend
    objects by name (otherwise each is built from its defaults on first use)."""
    reconciler = Reconciler(team, backends)
    targets = [ModelContext(team, name).keys.trained for name in team.models]

    @dg.sensor(
        name=f"{team.team}_training_reconciler",
        description=(
            "Polls the team's training jobs in flight and records each finished job exactly "
            "once: a materialization of the trained model, or its failure with a log tail."
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.assets(*targets),
    )
    def reconcile(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        outcome = reconciler.tick(context.instance, context.cursor)
        for line in outcome.log:
            context.log.info(line)
        return dg.SensorResult(asset_events=outcome.events, cursor=outcome.cursor.model_dump_json())

    return reconcile
