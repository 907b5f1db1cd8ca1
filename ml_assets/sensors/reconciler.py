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

import base64
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
from ml_assets.assets.training import (
    SUBMITTED,
    for_attempt,
    job_extras,
    submission_event,
    submit,
)
from ml_assets.backends.base import Backend, JobHandle, JobSpec, JobState, JobStatus
from ml_assets.teams.spec import TeamSpec
from ml_assets.training.messages import (
    JobReport,
    MessagesLocation,
    fold,
    messages_location,
    read_new,
    render_curve_png,
)

MATERIALIZED = "materialized"
RETRIED = "retried"
FAILED = "failed"
CANCELLED = "cancelled"
PROGRESS = "progress"
CANCEL_REQUESTED = "cancel_requested"
TERMINAL_EVENTS = {MATERIALIZED, RETRIED, FAILED, CANCELLED}
LOG_TAIL_LINES = 40
RECENT_LOG_LINES = 15
# What a job reports about itself that is not a metric of the model.
NOT_METRICS = frozenset({"rows_train", "rows_holdout", "duration_seconds", "step", "epochs"})
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
    features_uri: str = ""
    cancel_requested: bool = False
    last_seen: str = ""
    messages_cursor: int = 0
    device: str = ""


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
            features_uri=job.get("features_uri", ""),
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
            self._running(model, job, status, outcome)

    def _running(
        self, model: ModelContext, job: InFlight, status: JobStatus, outcome: TickOutcome
    ) -> None:
        """Record what a job in flight reported since the last tick: progress, metrics, logs.

        One observation per job and tick at most, and only when something is new, so a queue
        of jobs that all wait says nothing after its first word.
        """
        job_id = job.handle.job_id
        batch = read_new(_location(job), job.messages_cursor)
        report = fold(None, batch.messages)
        seen = f"{status.state.value}:{report.step}:{report.progress}"
        if not batch.messages and status.state.value == job.last_seen.split(":", 1)[0]:
            return
        device = report.device or job.device
        outcome.cursor.inflight[job_id] = job.model_copy(
            update={"last_seen": seen, "messages_cursor": batch.cursor, "device": device}
        )
        metadata: dict[str, Any] = {
            "status": status.state.value,
            "progress": float(report.progress if report.progress is not None else 0.0),
        }
        if report.step is not None:
            metadata["step"] = report.step
        metadata.update({f"train/{name}": value for name, value in report.metrics.items()})
        if device:
            metadata["device"] = device
        if report.logs:
            metadata["recent_logs"] = dg.MetadataValue.md(
                "```\n" + "\n".join(report.logs[-RECENT_LOG_LINES:]) + "\n```"
            )
        if status.message:
            metadata["message"] = status.message
        for problem in batch.problems + report.problems:
            outcome.log.append(f"{job_id}: {problem}")
        described = f"Training job {job_id} is {status.state.value}" + (
            f", {report.progress:.0%} done." if report.progress is not None else "."
        )
        outcome.events.append(_observation(model, job, PROGRESS, described, metadata))

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
        reported = _final_report(job)
        if reported.exception:
            # What the job itself said beats its exit status and the log lines around it.
            first_line = status.message.splitlines()[0] if status.message else ""
            status = status.model_copy(
                update={"message": f"the job raised {reported.exception} ({first_line})"}
            )
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
            handle = submit(backend, spec)
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
            update={
                "handle": handle,
                "spec": spec,
                "attempt": attempt,
                "last_seen": "",
                "messages_cursor": 0,
                "device": "",
            }
        )

    def _materialization(
        self, model: ModelContext, job: InFlight, status: JobStatus
    ) -> dg.AssetMaterialization:
        """The trained model, from the materialization the job reported through Pipes."""
        report = _final_report(job)
        if report.exception:
            raise ValueError(f"the job exited 0 but raised {report.exception}")
        if report.materialization is None:
            raise ValueError(
                "the job ended without reporting a materialization "
                "(dagster_pipes: context.report_asset_materialization)"
            )
        reported = dict(report.materialization["metadata"])
        artifact = reported.pop("artifact", None)
        if not isinstance(artifact, str) or not artifact:
            raise ValueError("the job's materialization has no 'artifact' metadata")
        extras = _extras(job)
        data_version = report.materialization.get("data_version") or extras.get(
            "features_data_version", ""
        )
        metrics = {f"train/{k}": float(v) for k, v in report.metrics.items()}
        for name, value in reported.items():
            if _is_number(value) and name not in NOT_METRICS:
                metrics[f"train/{name}"] = float(value)
        others = {k: v for k, v in reported.items() if f"train/{k}" not in metrics}
        features_key = model.keys.features
        provenance = {
            # Dagster's own lineage tags, so staleness and code versions show in the UI.
            CODE_VERSION_TAG: job.code_version,
            get_input_data_version_tag(features_key): str(data_version),
            get_input_data_version_tag(features_key, INPUT_EVENT_POINTER_TAG_PREFIX): str(
                job.features_storage_id or ""
            ),
        }
        extra: dict[str, Any] = {}
        curve = render_curve_png(report.history, f"{model.team.team}/{model.name} — training")
        if curve is not None:
            extra["training_curve"] = dg.MetadataValue.md(
                f"![training curve](data:image/png;base64,{base64.b64encode(curve).decode()})"
            )
        if report.logs:
            extra["recent_logs"] = dg.MetadataValue.md(
                "```\n" + "\n".join(report.logs[-RECENT_LOG_LINES:]) + "\n```"
            )
        return dg.AssetMaterialization(
            asset_key=model.keys.trained,
            description=f"Trained by job {job.handle.job_id} on {job.handle.backend}.",
            metadata={
                **{k: _metadata_value(v) for k, v in others.items()},
                "job_id": job.handle.job_id,
                "backend": job.handle.backend,
                "attempt": job.attempt,
                "submitted_by_run": job.run_id,
                "artifact": dg.MetadataValue.path(_artifact_uri(job.handle.output_uri, artifact)),
                "device": str(report.device or reported.get("device") or "unknown"),
                # What was asked of the job, whatever it chose to report about itself.
                "trainer": str(extras.get("trainer") or " ".join(job.spec.command)),
                "hyperparameters": dg.MetadataValue.json(extras.get("hyperparameters") or {}),
                "features_uri": dg.MetadataValue.path(job.features_uri),
                "input_data_versions": dg.MetadataValue.json(
                    {features_key.to_user_string(): str(data_version)}
                ),
                "code_version": job.code_version,
                "output": dg.MetadataValue.path(job.handle.output_uri),
                **metrics,
                **extra,
            },
            tags={
                EVENT_TAG: MATERIALIZED,
                JOB_ID_TAG: job.handle.job_id,
                **{k: v for k, v in provenance.items() if v},
            },
        )


def _location(job: InFlight) -> MessagesLocation:
    return messages_location(job.handle.output_uri, job.spec.staged)


def _final_report(job: InFlight) -> JobReport:
    """Every message of an ended job, read from the start and folded."""
    batch = read_new(_location(job), 0, final=True)
    report = fold(None, batch.messages)
    report.problems.extend(batch.problems)
    return report


def _extras(job: InFlight) -> dict[str, Any]:
    """The Pipes extras the job was submitted with."""
    return job_extras(job.spec)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metadata_value(value: Any) -> Any:
    """A reported value as Dagster metadata: mappings and lists as JSON, the rest as is."""
    if isinstance(value, dict | list):
        return dg.MetadataValue.json(value)
    return value if isinstance(value, str | int | float | bool) else str(value)


def _artifact_uri(output_uri: str, artifact: str) -> str:
    """The job's artifact: a URI or absolute path as reported, else relative to its output."""
    if "://" in artifact or artifact.startswith("dbfs:/") or artifact.startswith("/"):
        return artifact
    return transport.join(output_uri, artifact)


def _observation(
    model: ModelContext, job: InFlight, kind: str, description: str, metadata: dict[str, Any]
) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=model.keys.trained,
        description=description,
        metadata={"status": kind, "job_id": job.handle.job_id, **metadata},
        tags={EVENT_TAG: kind, JOB_ID_TAG: job.handle.job_id},
    )


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
