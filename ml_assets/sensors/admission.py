"""GPU admission: one platform sensor admits every team's GPU jobs, in fair-share order.

Why one sensor, in the platform location. Pool capacity and quotas span teams, and each team
has its own code location and reconciler. If each reconciler admitted its own team's jobs, two
of them deciding at once could both take a pool's last GPUs. The sensor daemon never runs two
ticks of one sensor at once, so a single ``gpu_admission`` sensor is the one writer of every
admission decision. (Loading the platform location twice against one instance would make two
writers: don't.)

The queue lives in the event log, on each model's trained-model asset:

- ``queued``: the training step (or a retry) records a GPU job whose pool the library admits
  instead of submitting it. The record holds everything its submission needs: the exact spec,
  run, attempt, pool and GPU count. The queue entry is the job's name, derived from its key.
- ``admitted``: written by this sensor, at most once per entry.
- ``submitted`` with the entry's tag: the team's reconciler submits an admitted job
  (idempotently, by key) and tracks it like any other.
- ``cancelled`` / ``failed`` with the entry's tag: the reconciler drops an entry unsubmitted
  (cancel requested, model gone, submission failing); a cancel request itself only marks it.
- A submitted job's last word (``materialized``, ``failed``, ``cancelled``, ``retried``) frees
  its GPUs. A retry waits in the queue again, behind the other teams.

GPUs in use in a pool or by a team are the admitted entries without a last word, weighted by
their GPU count, counted from the log (this cursor is a summary of it, never the truth).

Reading. The instance indexes asset events only by asset key, so the sensor reads every asset
observation and materialization after a watermark, in storage-id order, and folds those that
carry ``ml_assets/event``. As the reconciler does, the watermark passes only events older than
``SETTLE_SECONDS`` (PostgreSQL makes rows visible at commit, not in id order); folding is
idempotent, so re-reading them changes nothing.

Exactly once. The daemon stores a tick's events one by one and the cursor last. After a crash
between the two, the replayed tick folds the ``admitted`` records the first attempt stored
before it decides anything, so those entries count as in use and are not admitted again. A
lost cursor is rebuilt by folding the log from the start, at most ``max_scan`` records per
event type a tick, and nothing is admitted until the fold has reached the end of the log. An
``admitted`` stored after its entry was dropped is ignored by both sensors, so it neither
submits nor holds GPUs.

Order, per pool:

1. Own quota: among teams whose oldest waiting job fits their own quota, the team furthest
   below its quota share (GPUs in use / quota) goes first; FIFO within a team. If that job does
   not fit in the pool (quotas may add up to more than the pool, or borrowers hold GPUs), the
   pool admits nobody else this tick: the GPUs freed next are kept for it, so neither a big job
   nor a team whose quota was lent starves.
2. Borrowing (``borrowing: true`` in the policy): then teams whose next job exceeds their own
   quota may use idle GPUs, lowest share first, never beyond the pool's capacity. Nothing is
   preempted: a lender that wants its quota back waits for borrowed GPUs to free, ahead of
   every borrower.

A job that can never be admitted (more GPUs than its pool, or than its team's quota without
borrowing) or whose pool left the policy is not admitted and blocks nobody; its status says why.

Visible. For each model with jobs waiting, the sensor records a ``queue_status`` observation
("queued for GPU: team <team> uses 4 of 4 t4 ...") when that text changes, not every tick.

Bounded. A tick records at most ``max_events`` events, admissions first.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.training import ADMISSION_SENSOR, ADMITTED, QUEUED, SUBMITTED
from ml_assets.policy import PlatformPolicy, PolicyError, load_policy
from ml_assets.sensors import sensor_interval
from ml_assets.sensors.reconciler import (
    CANCEL_REQUESTED,
    MAX_EVENTS,
    SETTLE_SECONDS,
    TERMINAL_EVENTS,
)
from ml_assets.tags import ADMISSION_TAG, EVENT_TAG, JOB_ID_TAG

QUEUE_STATUS = "queue_status"
# Records of each event type folded per tick at most; a cursor rebuilt from an empty one
# catches up over several ticks, admitting nothing until it has.
MAX_SCAN = 20_000
logger = logging.getLogger(__name__)


class Entry(BaseModel):
    """One job in the admission queue: what deciding needs, and no more (its spec stays in
    its queued record)."""

    team: str
    model: str
    pool: str
    gpus: int
    queued_at: int
    admitted: bool = False
    cancel_requested: bool = False
    job_id: str = ""


class AdmissionCursor(BaseModel):
    """A watermark into the event log, the live queue entries (waiting or holding GPUs), and
    the status text last shown per model. All derivable from the log."""

    after: int = 0
    entries: dict[str, Entry] = Field(default_factory=dict)
    shown: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> AdmissionCursor:
        """The cursor, or a fresh one (rebuilt from the log) when it is absent or unreadable."""
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValueError:
            return cls()


@dataclass
class AdmissionOutcome:
    """What one tick produced: events to store, the next cursor, and a log."""

    cursor: AdmissionCursor
    events: list[dg.AssetObservation] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


# --- Folding the log ------------------------------------------------------------------------


def fold_log(
    instance: dg.DagsterInstance, cursor: AdmissionCursor, max_scan: int = MAX_SCAN
) -> tuple[AdmissionCursor, bool]:
    """Apply the queue events stored after the cursor's watermark; also say whether the fold
    reached the end of the log (only then may a tick admit)."""
    entries = dict(cursor.entries)
    jobs = {entry.job_id: name for name, entry in entries.items() if entry.job_id}
    records, complete = _read_after(instance, cursor.after, max_scan)
    settled_before = time.time() - SETTLE_SECONDS
    after, settled = cursor.after, True
    for record in records:
        settled = settled and record.timestamp < settled_before
        # Behind the end of the log, the watermark moves past what was read regardless, or a
        # burst larger than one scan would be re-read forever.
        if settled or not complete:
            after = max(after, record.storage_id)
        try:
            _apply(record, entries, jobs)
        except (KeyError, TypeError, ValueError) as exc:  # e.g. written by an older release
            logger.warning(f"ignoring unreadable queue event {record.storage_id}: {exc!r}")
    return cursor.model_copy(update={"after": after, "entries": entries}), complete


def _read_after(
    instance: dg.DagsterInstance, after: int, limit: int
) -> tuple[list[dg.EventLogRecord], bool]:
    """Observations and materializations after ``after`` in storage-id order, at most ``limit``
    of each; when one type has more, both stop at the same id so the order stays exact."""
    storage = instance.event_log_storage
    found: list[dg.EventLogRecord] = []
    bound: int | None = None
    for event_type in (
        dg.DagsterEventType.ASSET_OBSERVATION,
        dg.DagsterEventType.ASSET_MATERIALIZATION,
    ):
        records = storage.get_event_records(
            dg.EventRecordsFilter(event_type=event_type, after_cursor=after),
            limit=limit,
            ascending=True,
        )
        if len(records) >= limit:
            last = records[-1].storage_id
            bound = last if bound is None else min(bound, last)
        found.extend(records)
    if bound is not None:
        found = [record for record in found if record.storage_id <= bound]
    found.sort(key=lambda record: record.storage_id)
    return found, bound is None


def _apply(record: dg.EventLogRecord, entries: dict[str, Entry], jobs: dict[str, str]) -> None:
    event = record.asset_event
    tags = (event.tags if event is not None else None) or {}
    kind = tags.get(EVENT_TAG)
    if event is None or not kind:
        return
    name, job_id = tags.get(ADMISSION_TAG) or "", tags.get(JOB_ID_TAG) or ""
    if kind == QUEUED and name:
        if name not in entries:
            job = event.metadata["job"].value
            if not isinstance(job, dict):
                raise TypeError(f"queued record of {name} is not a mapping")
            entries[name] = Entry(
                team=str(job["team"]),
                model=event.asset_key.path[-1],
                pool=str(job["pool"]),
                gpus=int(job["gpus"]),
                queued_at=record.storage_id,
            )
    elif kind in TERMINAL_EVENTS:
        # The entry's own last word (dropped unsubmitted), or its submitted job's.
        ended = entries.pop(name if name in entries else jobs.get(job_id, ""), None)
        if ended is not None:
            jobs.pop(ended.job_id, None)
    elif name in entries:
        entry = entries[name]
        if kind == ADMITTED:
            entries[name] = entry.model_copy(update={"admitted": True})
        elif kind == CANCEL_REQUESTED:
            entries[name] = entry.model_copy(update={"cancel_requested": True})
        elif kind == SUBMITTED and job_id:
            entries[name] = entry.model_copy(update={"job_id": job_id})
            jobs[job_id] = name


# --- Deciding ----------------------------------------------------------------------------------


@dataclass
class Usage:
    """GPUs held by admitted entries, per pool and per (team, pool)."""

    pools: dict[str, int] = field(default_factory=dict)
    teams: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> Usage:
        usage = cls()
        for entry in entries:
            if entry.admitted:
                usage.add(entry)
        return usage

    def add(self, entry: Entry) -> None:
        self.pools[entry.pool] = self.pools.get(entry.pool, 0) + entry.gpus
        key = (entry.team, entry.pool)
        self.teams[key] = self.teams.get(key, 0) + entry.gpus

    def team(self, team: str, pool: str) -> int:
        return self.teams.get((team, pool), 0)


def never_admissible(entry: Entry, policy: PlatformPolicy) -> str | None:
    """Why ``entry`` cannot be admitted under ``policy`` however long it waits, if so."""
    pool = policy.pools.get(entry.pool)
    where = policy.source or "the built-in policy"
    if pool is None:
        return f"pool {entry.pool} is no longer in the platform policy ({where})"
    if entry.gpus > pool.gpus:
        return f"it needs {entry.gpus} GPUs and pool {entry.pool} holds {pool.gpus}"
    quota = policy.grant(entry.team).gpu_quota.get(entry.pool, 0)
    if entry.gpus > quota and not policy.borrowing:
        return (
            f"it needs {entry.gpus} GPUs, more than team {entry.team}'s quota of {quota} in "
            f"pool {entry.pool}, and borrowing is off ({where})"
        )
    return None


def plan(entries: dict[str, Entry], policy: PlatformPolicy, budget: int) -> list[str]:
    """The entries to admit now, in order (see the module docstring for the rules)."""
    usage = Usage.of(entries.values())
    waiting: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for name, entry in entries.items():
        if entry.admitted or entry.cancel_requested or never_admissible(entry, policy):
            continue
        waiting.setdefault(entry.pool, {}).setdefault(entry.team, []).append(
            (entry.queued_at, name)
        )
    chosen: list[str] = []
    for pool_name in sorted(waiting):
        capacity = policy.pools[pool_name].gpus
        queues = {team: deque(sorted(heads)) for team, heads in waiting[pool_name].items()}
        quotas = {team: policy.grant(team).gpu_quota.get(pool_name, 0) for team in queues}

        for own in (True, False):
            if not own and not policy.borrowing:
                break
            blocked = False
            while len(chosen) < budget:
                team = _pick(queues, quotas, usage, entries, pool_name, own)
                if team is None:
                    break
                head = entries[queues[team][0][1]]
                if usage.pools.get(pool_name, 0) + head.gpus > capacity:
                    blocked = True  # kept for this job: nobody else in the pool this tick
                    break
                name = queues[team].popleft()[1]
                admitted = head.model_copy(update={"admitted": True})
                usage.add(admitted)
                chosen.append(name)
            if blocked:
                break
    return chosen


def _pick(
    queues: dict[str, deque[tuple[int, str]]],
    quotas: dict[str, int],
    usage: Usage,
    entries: dict[str, Entry],
    pool: str,
    own: bool,
) -> str | None:
    """The team whose next job goes first: the lowest share of its quota in use, then the
    oldest; with ``own``, only teams whose next job fits their own quota."""
    best: tuple[float, int, str] | None = None
    for team, queue in queues.items():
        if not queue:
            continue
        head = entries[queue[0][1]]
        used, quota = usage.team(team, pool), quotas[team]
        if own and used + head.gpus > quota:
            continue
        candidate = (used / quota if quota else float("inf"), queue[0][0], team)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None


# --- The sensor --------------------------------------------------------------------------------


class Admission:
    """Admits queued GPU jobs; the sensor is a thin wrapper around ``tick``."""

    def __init__(
        self,
        policy_path: str | None = None,
        *,
        max_events: int = MAX_EVENTS,
        max_scan: int = MAX_SCAN,
    ) -> None:
        self.policy_path = policy_path
        self.max_events = max_events
        self.max_scan = max_scan

    def tick(self, instance: dg.DagsterInstance, raw_cursor: str | None) -> AdmissionOutcome:
        cursor, complete = fold_log(instance, AdmissionCursor.parse(raw_cursor), self.max_scan)
        outcome = AdmissionOutcome(cursor=cursor)
        if not complete:
            outcome.log.append(
                f"reading the event log (at storage id {cursor.after}); nothing is admitted "
                "until it has been read to the end"
            )
            return outcome
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            outcome.log.append(f"nothing admitted: the platform policy cannot be read: {exc}")
            return outcome
        entries = cursor.entries
        usage = Usage.of(entries.values())
        for name in plan(entries, policy, self.max_events):
            entry = entries[name].model_copy(update={"admitted": True})
            entries[name] = entry
            usage.add(entry)
            outcome.admitted.append(name)
            outcome.events.append(_admitted_event(name, entry, usage, policy))
            outcome.log.append(
                f"{name}: admitted {entry.gpus} GPU(s) of {entry.pool} for {entry.team}"
            )
        statuses = queue_statuses(entries, usage, policy)
        for key in sorted(statuses):
            text, metadata, asset_key = statuses[key]
            if cursor.shown.get(key) == text:
                continue
            if len(outcome.events) >= self.max_events:
                break
            outcome.events.append(
                dg.AssetObservation(
                    asset_key=asset_key,
                    description=text,
                    metadata={"status": QUEUED, **metadata},
                    tags={EVENT_TAG: QUEUE_STATUS},
                )
            )
            cursor.shown[key] = text
        for key in [key for key in cursor.shown if key not in statuses]:
            del cursor.shown[key]
        return outcome


def _admitted_event(
    name: str, entry: Entry, usage: Usage, policy: PlatformPolicy
) -> dg.AssetObservation:
    quota = policy.grant(entry.team).gpu_quota.get(entry.pool, 0)
    capacity = policy.pools[entry.pool].gpus
    team_use, pool_use = usage.team(entry.team, entry.pool), usage.pools[entry.pool]
    return dg.AssetObservation(
        asset_key=ModelKeys(entry.team, entry.model).trained,
        description=f"Admitted to GPU pool {entry.pool}: job {name} ({entry.gpus} GPU(s)). Team "
        f"{entry.team} now uses {team_use} of {quota} {entry.pool} (pool: {pool_use} of "
        f"{capacity} in use); the {entry.team}_training_reconciler sensor submits it.",
        metadata={
            "status": ADMITTED,
            "job_id": name,
            "pool": entry.pool,
            "gpus": entry.gpus,
            "team_gpus_in_use": team_use,
            "team_quota": quota,
            "pool_gpus_in_use": pool_use,
            "pool_capacity": capacity,
        },
        tags={EVENT_TAG: ADMITTED, JOB_ID_TAG: name, ADMISSION_TAG: name},
    )


def queue_statuses(
    entries: dict[str, Entry], usage: Usage, policy: PlatformPolicy
) -> dict[str, tuple[str, dict[str, Any], dg.AssetKey]]:
    """Per model with jobs waiting: the "queued for GPU" text its page shows, its figures and
    its asset key. The text changes only when the figures it names do."""
    waiting: dict[str, list[Entry]] = {}
    for entry in entries.values():
        if not entry.admitted and not entry.cancel_requested:
            waiting.setdefault(f"{entry.team}/{entry.model}", []).append(entry)
    statuses: dict[str, tuple[str, dict[str, Any], dg.AssetKey]] = {}
    for key, jobs in waiting.items():
        head = min(jobs, key=lambda entry: entry.queued_at)
        pool = policy.pools.get(head.pool)
        quota = policy.grant(head.team).gpu_quota.get(head.pool, 0)
        team_use, pool_use = usage.team(head.team, head.pool), usage.pools.get(head.pool, 0)
        stuck = never_admissible(head, policy)
        if stuck or pool is None:
            text = f"queued for GPU, but the next job can never be admitted: {stuck}"
        else:
            text = (
                f"queued for GPU: team {head.team} uses {team_use} of {quota} {head.pool} "
                f"(pool {head.pool}: {pool_use} of {pool.gpus} GPUs in use); {len(jobs)} job(s) "
                f"of {head.model} waiting, the next needs {head.gpus}"
            )
        metadata: dict[str, Any] = {
            "pool": head.pool,
            "jobs_waiting": len(jobs),
            "next_job_gpus": head.gpus,
            "team_gpus_in_use": team_use,
            "team_quota": quota,
            "pool_gpus_in_use": pool_use,
            "pool_capacity": pool.gpus if pool else 0,
        }
        statuses[key] = (text, metadata, ModelKeys(head.team, head.model).trained)
    return statuses


def build_admission_sensor(
    minimum_interval_seconds: int | None = None,
    policy_path: str | None = None,
    **budget: int,
) -> dg.SensorDefinition:
    """The platform's ``gpu_admission`` sensor, running by default. ``policy_path`` overrides
    the policy file (default: ``ML_ASSETS_POLICY``, else the platform location's);
    ``budget`` overrides a tick's limits (``max_events``, ``max_scan``)."""
    admission = Admission(policy_path, **budget)

    @dg.sensor(
        name=ADMISSION_SENSOR,
        description=(
            "Admits every team's queued GPU training jobs in fair-share order, never beyond a "
            "pool's capacity or (without borrowing) a team's quota; each team's reconciler then "
            "submits its admitted jobs."
        ),
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval(10),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def gpu_admission(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        outcome = admission.tick(context.instance, context.cursor)
        for line in outcome.log:
            context.log.info(line)
        return dg.SensorResult(asset_events=outcome.events, cursor=outcome.cursor.model_dump_json())

    return gpu_admission
