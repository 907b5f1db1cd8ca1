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
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from ml_assets import transport
from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import (
    ADMITTED,
    QUEUED,
    SUBMITTED,
    TRAINING_CHECK,
    admission_pool,
    for_attempt,
    job_extras,
    queue_event,
    submission_event,
    submit,
)
from ml_assets.backends import backend_resource_keys, load_backend, resource_backend
from ml_assets.backends.base import Backend, JobHandle, JobSpec, JobState, JobStatus
from ml_assets.dagster_private import (
    CODE_VERSION_TAG,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    get_input_data_version_tag,
)
from ml_assets.sensors import sensor_interval
from ml_assets.tags import ADMISSION_TAG, EVENT_TAG, JOB_ID_TAG
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
# A tick's budget. The daemon stores events one at a time (5-40 ms each), so 400 events keep a
# tick's storing under ~16 s, and a burst of 10,000 finished jobs drains in 25 ticks, oldest
# first.
MAX_EVENTS = 400
# Jobs whose Pipes messages a tick reads for progress, least recently shown first.
MAX_PROGRESS_READS = 200
# A running job's progress is shown at most this often (a state change always shows).
PROGRESS_SECONDS = 15.0
# Ticks in a row an admitted job's submission may fail before it is recorded as failed.
SUBMIT_ATTEMPTS = 3
# Errors a job raises that running it again cannot fix: recorded as failed, never retried.
NOT_RETRYABLE = frozenset(
    {
        "ImportError",
        "ModuleNotFoundError",
        "AttributeError",
        "NameError",
        "SyntaxError",
        "TypeError",
        "ValueError",
        "KeyError",
        "InvalidParameterError",
        "NotImplementedError",
        "DagsterPipesError",
    }
)
logger = logging.getLogger(__name__)


class InFlight(BaseModel):
    """One job the sensor is waiting on: what a tick needs, and no more.

    The job's full spec stays in its submission record in the event log (``submission`` is
    that record's storage id); a tick reads it only for the few jobs it finishes or retries.
    """

    model: str
    handle: JobHandle
    submission: int = 0
    run_id: str
    attempt: int
    staged: bool = True
    code_version: str = ""
    features_storage_id: int | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    state: str = ""
    messages_cursor: int = 0
    device: str = ""
    progress_at: float = 0.0


class QueuedJob(BaseModel):
    """A job waiting for GPUs in the admission queue, by its queue entry (the job's name).

    Its spec stays in its queued record (``record`` is that record's storage id). The platform's
    admission sensor records ``admitted``; this sensor then submits it, or drops it when a
    cancel was requested first.
    """

    model: str
    record: int = 0
    run_id: str
    attempt: int
    code_version: str = ""
    features_storage_id: int | None = None
    admitted: bool = False
    cancel_requested: bool = False
    submit_failures: int = 0


class ReconcilerCursor(BaseModel):
    """The sensor's cursor: a watermark into the event log plus compact state per job in
    flight or queued. Both are derivable from the event log alone; the cursor only saves
    re-reading it.
    """

    after: int = 0
    inflight: dict[str, InFlight] = Field(default_factory=dict)
    queued: dict[str, QueuedJob] = Field(default_factory=dict)

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

    events: list[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation] = field(
        default_factory=list
    )
    cursor: ReconcilerCursor = field(default_factory=ReconcilerCursor)
    log: list[str] = field(default_factory=list)
    # The last finished outcome per model this tick: (passed, description, details).
    verdicts: dict[str, tuple[bool, str, dict[str, Any]]] = field(default_factory=dict)
    deferred: int = 0


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
    queued = dict(cursor.queued)
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
            _fold(record, inflight, queued)
        except (KeyError, TypeError, ValueError) as exc:  # e.g. written by an older release
            logger.warning(f"ignoring unreadable job event {record.storage_id}: {exc!r}")
    return ReconcilerCursor(after=after, inflight=inflight, queued=queued)


def _fold_queued(
    record: dg.EventLogRecord, kind: str, entry: str, queued: dict[str, QueuedJob]
) -> None:
    """Apply one admission-queue event. A queued record starts an entry once; ``admitted`` and
    a cancel request mark it; its submission or a last word ends it. An event about an entry
    that has ended is ignored, so an ``admitted`` stored after the entry was cancelled submits
    nothing."""
    event = record.asset_event
    if kind == QUEUED and event is not None:
        known = queued.get(entry)
        if known is None:
            job = event.metadata["job"].value
            if not isinstance(job, dict):
                raise TypeError(f"queued record of {entry} is not a mapping")
            queued[entry] = QueuedJob(
                model=event.asset_key.path[-1],
                record=record.storage_id,
                run_id=job["run_id"],
                attempt=job["attempt"],
                code_version=job.get("code_version", ""),
                features_storage_id=job.get("features_storage_id"),
            )
        elif not known.record:
            # A retry this sensor queued itself: now its record's place in the log is known.
            queued[entry] = known.model_copy(update={"record": record.storage_id})
    elif entry in queued:
        if kind == ADMITTED:
            queued[entry] = queued[entry].model_copy(update={"admitted": True})
        elif kind == CANCEL_REQUESTED:
            queued[entry] = queued[entry].model_copy(update={"cancel_requested": True})
        elif kind == SUBMITTED or kind in TERMINAL_EVENTS:
            queued.pop(entry)


def _fold(
    record: dg.EventLogRecord, inflight: dict[str, InFlight], queued: dict[str, QueuedJob]
) -> None:
    event = record.asset_event
    tags = (event.tags if event is not None else None) or {}
    kind, job_id = tags.get(EVENT_TAG), tags.get(JOB_ID_TAG)
    if event is None or not job_id:
        return
    entry = tags.get(ADMISSION_TAG)
    if entry:
        _fold_queued(record, str(kind), entry, queued)
    if kind == SUBMITTED and job_id not in inflight:
        job = event.metadata["job"].value
        if not isinstance(job, dict):
            raise TypeError(f"submission record of {job_id} is not a mapping")
        inflight[job_id] = InFlight(
            model=event.asset_key.path[-1],
            handle=JobHandle.model_validate(job["handle"]),
            submission=record.storage_id,
            run_id=job["run_id"],
            attempt=job["attempt"],
            staged=bool(job["spec"].get("staged", True)),
            code_version=job.get("code_version", ""),
            features_storage_id=job.get("features_storage_id"),
        )
    elif kind == SUBMITTED and not inflight[job_id].submission:
        # A retry this sensor submitted itself: now its record's place in the log is known.
        inflight[job_id] = inflight[job_id].model_copy(update={"submission": record.storage_id})
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

    def __init__(
        self,
        team: TeamSpec,
        backends: dict[str, Backend] | None = None,
        *,
        max_events: int = MAX_EVENTS,
        max_progress_reads: int = MAX_PROGRESS_READS,
        progress_seconds: float = PROGRESS_SECONDS,
    ) -> None:
        self.team = team
        self._backends = dict(backends or {})
        self._resources: Any = None
        self.max_events = max_events
        self.max_progress_reads = max_progress_reads
        self.progress_seconds = progress_seconds

    def use_resources(self, resources: Any) -> None:
        """Build backends from these Dagster resources (``<name>_backend``) from now on.

        A backend is built once and kept: remote backends remember what they have seen finish,
        which saves calls on later ticks.
        """
        self._resources = resources

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = (
                resource_backend(self._resources, name)
                if self._resources is not None
                else load_backend(name, self.team.backends.get(name))
            )
        return self._backends[name]

    def tick(self, instance: dg.DagsterInstance, raw_cursor: str | None) -> TickOutcome:
        """One reconciliation, bounded: at most ``max_events`` events (finished jobs first,
        oldest first; the rest wait for the next tick) and at most ``max_progress_reads`` jobs'
        messages read for progress."""
        cursor = fold_events(instance, self.team, ReconcilerCursor.parse(raw_cursor))
        outcome = TickOutcome(cursor=cursor)
        if not cursor.inflight and not cursor.queued:
            return outcome
        self._instance = instance
        self._specs: dict[int, JobSpec] = {}
        statuses = self._poll(cursor.inflight, outcome)
        cancelled_runs = (
            self._cancelled_runs(instance, cursor.inflight.values()) if cursor.inflight else set()
        )
        ending: list[tuple[InFlight, JobStatus]] = []
        running: list[tuple[InFlight, JobStatus]] = []
        for job_id, job in cursor.inflight.items():
            status = statuses.get(job_id)
            if status is None:
                continue
            if job.run_id in cancelled_runs and not job.cancel_requested:
                job = job.model_copy(update={"cancel_requested": True})
            acting = status.state.is_terminal or job.cancel_requested
            (ending if acting or job.model not in self.team.models else running).append(
                (job, status)
            )
        # Room is kept for one training check per model (see _record_verdicts).
        finishing_budget = max(1, self.max_events - len(self.team.models))
        ending.sort(key=lambda pair: pair[0].submission)
        self._prefetch_specs([(job.model, job.submission) for job, _ in ending[:finishing_budget]])
        for job, status in ending:
            if len(outcome.events) >= finishing_budget:
                outcome.deferred += 1
                continue
            self._safely(self._advance, job, status, outcome)
        self._dispatch_queued(outcome, finishing_budget)
        if outcome.deferred:
            outcome.log.append(
                f"{outcome.deferred} finished job(s) wait for the next tick "
                f"(at most {self.max_events} events a tick)"
            )
        self._record_verdicts(instance, outcome)
        now = time.time()
        due = [
            (job, status)
            for job, status in running
            if job.state != status.state.value or now - job.progress_at >= self.progress_seconds
        ]
        due.sort(key=lambda pair: pair[0].progress_at)
        for job, status in due[: self.max_progress_reads]:
            if len(outcome.events) >= self.max_events:
                break
            self._safely(self._running, job, status, outcome)
        return outcome

    def _record_verdicts(self, instance: dg.DagsterInstance, outcome: TickOutcome) -> None:
        """One ``training_succeeded`` check result per model whose training ended this tick.

        A failure is always recorded, with its message; a success only when the check is not
        already passing, so a steady stream of good jobs adds no events and the first good job
        after a failure turns the model green again.
        """
        for name, (passed, description, details) in outcome.verdicts.items():
            key = dg.AssetCheckKey(ModelContext(self.team, name).keys.trained, TRAINING_CHECK)
            if passed:
                latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                    [key]
                ).get(key)
                if latest is not None and latest.status.value == "SUCCEEDED":
                    continue
            outcome.events.append(
                dg.AssetCheckEvaluation(
                    asset_key=key.asset_key,
                    check_name=TRAINING_CHECK,
                    passed=passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=description[:2000],
                    metadata={k: v for k, v in details.items() if k != "message"},
                )
            )

    def _safely(self, step: Any, job: InFlight, status: JobStatus, outcome: TickOutcome) -> None:
        try:
            step(job, status, outcome)
        except Exception as exc:  # one broken job must not stop the others
            outcome.log.append(f"{job.handle.job_id}: could not be reconciled this tick: {exc!r}")

    def _prefetch_specs(self, wanted: list[tuple[str, int]]) -> None:
        """Read the submission (or queued) records ``(model, storage id)`` in one query per
        model, not one per job."""
        by_model: dict[str, list[int]] = {}
        for model, storage_id in wanted:
            if storage_id and model in self.team.models:
                by_model.setdefault(model, []).append(storage_id)
        for name, ids in by_model.items():
            key = ModelContext(self.team, name).keys.trained
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                records = self._instance.fetch_observations(
                    dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
                ).records
                for record in records:
                    event = record.asset_observation
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        job_record: Any = event.metadata["job"].value  # type: ignore[union-attr]
                        self._specs[record.storage_id] = JobSpec.model_validate(job_record["spec"])

    def _spec(self, job: InFlight) -> JobSpec:
        """The job's full spec, from its submission record in the event log."""
        return self._record_spec(job.model, job.submission, job.handle.job_id)

    def _record_spec(self, model: str, storage_id: int, job_id: str) -> JobSpec:
        """The spec in the submission or queued record ``storage_id`` of ``model``."""
        if storage_id not in self._specs:
            key = ModelContext(self.team, model).keys.trained
            records = self._instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=[storage_id]), limit=1
            ).records
            event = records[0].asset_observation if records else None
            if event is None:
                raise KeyError(f"no submission record {storage_id} for {job_id}")
            record: Any = event.metadata["job"].value
            self._specs[storage_id] = JobSpec.model_validate(record["spec"])
        return self._specs[storage_id]

    def _dispatch_queued(self, outcome: TickOutcome, budget: int) -> None:
        """Act on queued jobs that the admission sensor admitted (submit them, idempotently by
        key) or whose cancel was requested (drop them unsubmitted), oldest first, within the
        tick's budget; the rest wait for the next tick."""
        due = sorted(
            (
                (entry, job)
                for entry, job in outcome.cursor.queued.items()
                if job.admitted or job.cancel_requested or job.model not in self.team.models
            ),
            key=lambda item: item[1].record,
        )
        room = max(0, budget - len(outcome.events))
        self._prefetch_specs(
            [(job.model, job.record) for _, job in due[:room] if not job.cancel_requested]
        )
        for entry, job in due:
            if len(outcome.events) >= budget:
                outcome.deferred += 1
                continue
            try:
                self._dispatch(entry, job, outcome)
            except Exception as exc:  # one broken entry must not stop the others
                outcome.log.append(f"{entry}: queued job could not be handled this tick: {exc!r}")

    def _dispatch(self, entry: str, job: QueuedJob, outcome: TickOutcome) -> None:
        model = ModelContext(self.team, job.model)
        queued = outcome.cursor.queued
        if job.model not in self.team.models:
            description = (
                f"Queued training job {entry} belongs to model {job.model!r}, which is no longer "
                f"in {self.team.team}'s team.yaml; it leaves the GPU queue unsubmitted."
            )
            outcome.events.append(_queue_observation(model, entry, FAILED, description))
            queued.pop(entry)
            outcome.log.append(f"{entry}: {FAILED}: {description}")
            return
        if job.cancel_requested:
            held = " Its admitted GPUs are released." if job.admitted else ""
            description = (
                f"Queued training job {entry} was cancelled before it was submitted.{held}"
            )
            outcome.events.append(_queue_observation(model, entry, CANCELLED, description))
            queued.pop(entry)
            outcome.log.append(f"{entry}: {CANCELLED}: left the GPU queue unsubmitted")
            return
        spec = self._record_spec(job.model, job.record, entry)
        try:
            handle = submit(self.backend(spec.backend), spec)
        except Exception as exc:
            failures = job.submit_failures + 1
            if failures < SUBMIT_ATTEMPTS:
                queued[entry] = job.model_copy(update={"submit_failures": failures})
                outcome.log.append(f"{entry}: admitted, but submitting it failed: {exc!r}")
                return
            details = {"message": f"submitting it failed {failures} times: {exc!r}"}
            description = (
                f"Admitted training job {entry} could not be submitted ({failures} tries): "
                f"{exc!r}. Its GPUs are released; {self.team.team}_retry_training queues it again."
            )
            outcome.events.append(_queue_observation(model, entry, FAILED, description, details))
            outcome.verdicts[job.model] = (False, description, details)
            queued.pop(entry)
            outcome.log.append(f"{entry}: {FAILED}: {description}")
            return
        outcome.events.append(
            submission_event(
                model,
                handle,
                spec,
                run_id=job.run_id,
                attempt=job.attempt,
                code_version=job.code_version,
                features_storage_id=job.features_storage_id,
                admission=entry,
            )
        )
        queued.pop(entry)
        outcome.cursor.inflight.setdefault(
            handle.job_id,
            InFlight(
                model=job.model,
                handle=handle,
                run_id=job.run_id,
                attempt=job.attempt,
                staged=spec.staged,
                code_version=job.code_version,
                features_storage_id=job.features_storage_id,
            ),
        )
        outcome.log.append(f"{entry}: admitted; submitted as {handle.job_id} on {handle.backend}")

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

    def _advance(self, job: InFlight, status: JobStatus, outcome: TickOutcome) -> None:
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
                # A job that exits cleanly but leaves no usable result has failed, and running
                # the same code on the same data again would not change that.
                status = status.model_copy(
                    update={"state": JobState.FAILED, "message": f"unusable result: {exc!r}"}
                )
                self._failed(model, job, status, outcome, "retrying cannot fix the result")
            else:
                outcome.events.append(materialization)
                outcome.cursor.inflight.pop(job_id)
                outcome.log.append(f"{job_id}: succeeded; {model.keys.trained.to_user_string()}")
                outcome.verdicts[job.model] = (True, f"Job {job_id} trained the model.", {})
            return
        if status.state == JobState.CANCELLED or (
            status.state == JobState.FAILED and job.cancel_sent
        ):
            self._finish(outcome, model, job, CANCELLED, f"Training job {job_id} was cancelled.")
        elif status.state == JobState.FAILED:
            # A job that failed on its own before a requested cancel reached it keeps its own
            # failure and message; it is only not retried.
            stop = "a cancel was requested" if job.cancel_requested else None
            self._failed(model, job, status, outcome, stop)
        elif job.cancel_requested and not job.cancel_sent:
            self.backend(job.handle.backend).cancel(job.handle)
            outcome.cursor.inflight[job_id] = job.model_copy(update={"cancel_sent": True})
            outcome.log.append(f"{job_id}: cancel requested (run {job.run_id}); cancelling")

    def _running(self, job: InFlight, status: JobStatus, outcome: TickOutcome) -> None:
        """Record what a job in flight reported since the last tick: progress, metrics, logs.

        One observation per job and tick at most, only when something is new, and for a job at
        most every ``progress_seconds``; a job that is only queued says nothing.
        """
        model = ModelContext(self.team, job.model)
        job_id = job.handle.job_id
        batch = read_new(_location(job), job.messages_cursor)
        report = fold(None, batch.messages)
        device = report.device or job.device
        outcome.cursor.inflight[job_id] = job.model_copy(
            update={
                "state": status.state.value,
                "messages_cursor": batch.cursor,
                "device": device,
                "progress_at": time.time(),
            }
        )
        if not batch.messages and (
            status.state == JobState.QUEUED or status.state.value == job.state
        ):
            return  # nothing new, or a queue every waiting job shares: nothing to say
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
        self,
        model: ModelContext,
        job: InFlight,
        status: JobStatus,
        outcome: TickOutcome,
        no_retry: str | None = None,
    ) -> None:
        """Retry the job as its next attempt, or record its failure for good (``no_retry`` says
        why it must not be retried, if anything does)."""
        job_id = job.handle.job_id
        backend = self.backend(job.handle.backend)
        try:
            log_tail = backend.logs(job.handle, tail=LOG_TAIL_LINES)
        except Exception as exc:
            log_tail = f"(the log could not be read: {exc!r})"
        attempts = model.spec.retry.max_attempts
        reported = _final_report(job)
        raised = (reported.exception_name or "").rsplit(".", 1)[-1]
        if raised in NOT_RETRYABLE:
            no_retry = no_retry or f"retrying cannot fix a {raised}"
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
        if job.attempt >= attempts or no_retry:
            why = f" ({no_retry})" if no_retry else ""
            self._finish(
                outcome,
                model,
                job,
                FAILED,
                f"{summary}; not retried{why}. {status.message}",
                details,
            )
            outcome.verdicts[job.model] = (False, f"{summary}: {status.message}", details)
            return
        attempt = job.attempt + 1
        spec = for_attempt(self._spec(job), run_id=job.run_id, attempt=attempt)
        pool = admission_pool(spec)
        if pool is not None:
            # A retry waits for its GPUs again, behind other teams' jobs in fair-share order.
            entry = spec.job_name
            cursor = outcome.cursor
            # After a crash between the two records, the replayed tick has folded the retry's
            # queued record: it is not recorded twice.
            if entry not in cursor.queued and entry not in cursor.inflight:
                outcome.events.append(
                    queue_event(
                        model,
                        spec,
                        pool,
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
                f"{summary}; retrying as {entry}, queued for GPU in pool {pool}. {status.message}",
                {**details, "retry_job_id": entry},
            )
            cursor.queued.setdefault(
                entry,
                QueuedJob(
                    model=job.model,
                    run_id=job.run_id,
                    attempt=attempt,
                    code_version=job.code_version,
                    features_storage_id=job.features_storage_id,
                ),
            )
            return
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
            outcome.verdicts[job.model] = (False, f"{summary}: {status.message}", details)
            return
        # The new job's record goes first: a crash between the two leaves it tracked. A tick
        # replayed after such a crash has folded that record already (the retry is in flight):
        # then the submit above found the same job, and it is not recorded twice.
        if handle.job_id not in outcome.cursor.inflight:
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
        outcome.cursor.inflight.setdefault(
            handle.job_id,
            job.model_copy(
                update={
                    "handle": handle,
                    "submission": 0,
                    "attempt": attempt,
                    "state": "",
                    "messages_cursor": 0,
                    "device": "",
                    "progress_at": 0.0,
                }
            ),
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
        extras = job_extras(self._spec(job))
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
                "trainer": str(extras.get("trainer") or " ".join(self._spec(job).command)),
                "hyperparameters": dg.MetadataValue.json(extras.get("hyperparameters") or {}),
                "features_uri": dg.MetadataValue.path(str(extras.get("features_uri", ""))),
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
    return messages_location(job.handle.output_uri, job.staged)


def _final_report(job: InFlight) -> JobReport:
    """Every message of an ended job, read from the start and folded."""
    batch = read_new(_location(job), 0, final=True)
    report = fold(None, batch.messages)
    report.problems.extend(batch.problems)
    return report


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


def _queue_observation(
    model: ModelContext,
    entry: str,
    kind: str,
    description: str,
    metadata: dict[str, Any] | None = None,
) -> dg.AssetObservation:
    """The last word on a queued job that was never submitted; it frees its admission entry."""
    return dg.AssetObservation(
        asset_key=model.keys.trained,
        description=description,
        metadata={"status": kind, "job_id": entry, **(metadata or {})},
        tags={EVENT_TAG: kind, JOB_ID_TAG: entry, ADMISSION_TAG: entry},
    )


def build_reconciler_sensor(
    team: TeamSpec,
    minimum_interval_seconds: int | None = None,
    backends: dict[str, Backend] | None = None,
    **budget: Any,
) -> dg.SensorDefinition:
    """The team's reconciling sensor, running by default. It builds each backend from the
    location's ``<name>_backend`` resource, unless ``backends`` hands it the backend objects
    by name; ``budget`` overrides a tick's limits (``max_events``, ``max_progress_reads``,
    ``progress_seconds``)."""
    reconciler = Reconciler(team, backends, **budget)
    resource_keys = set() if backends is not None else backend_resource_keys(team.allowed_backends)
    targets = [ModelContext(team, name).keys.trained for name in team.models]

    @dg.sensor(
        name=f"{team.team}_training_reconciler",
        description=(
            "Polls the team's training jobs in flight and records each finished job exactly "
            "once: a materialization of the trained model, or its failure with a log tail."
        ),
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval(10),
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.assets(*targets),
        required_resource_keys=resource_keys,
    )
    def reconcile(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult:
        # Called directly (in tests), Dagster also passes the resources as keyword arguments.
        if resource_keys:
            reconciler.use_resources(context.resources)
        outcome = reconciler.tick(context.instance, context.cursor)
        for line in outcome.log:
            context.log.info(line)
        return dg.SensorResult(asset_events=outcome.events, cursor=outcome.cursor.model_dump_json())

    return reconcile
