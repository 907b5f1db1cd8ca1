"""GPU admission across teams, on a real instance, with the in-memory ledger backend.

Every check reads the event log back and replays it on its own (``replay`` below shares no code
with the sensor): at every event, no pool holds more GPUs than its capacity and (without
borrowing) no team more than its quota; every queue entry is admitted once and submitted once;
and each admission went to a team no further above its share than any team left waiting.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets.assets.common import ModelContext, ModelKeys
from ml_assets.assets.training import (
    ADMITTED,
    QUEUED,
    SUBMITTED,
    admission_pool,
    build_job_spec,
    build_training_asset,
    queue_event,
)
from ml_assets.backends.base import JobSpec, JobState, Resources
from ml_assets.location import team_resources
from ml_assets.policy import POLICY_ENV, load_policy
from ml_assets.sensors.admission import (
    QUEUE_STATUS,
    AdmissionCursor,
    Entry,
    Usage,
    build_admission_sensor,
    plan,
    queue_statuses,
)
from ml_assets.sensors.cancel import build_cancel_job
from ml_assets.sensors.reconciler import TERMINAL_EVENTS, build_reconciler_sensor
from ml_assets.tags import ADMISSION_TAG, EVENT_TAG, JOB_ID_TAG, KUEUE_QUEUE_LABEL
from ml_assets.teams.spec import TeamSpec
from ml_assets_tests.sensors.ledger import Ledger, clinical_team, report_model

pytestmark = pytest.mark.timeout(600)
POOL = "t4"


@pytest.fixture(params=["sqlite", "postgres"])
def any_instance(request: pytest.FixtureRequest) -> dg.DagsterInstance:
    """SQLite storage, and a real PostgreSQL server (skipped when none answers)."""
    name = "sqlite_instance" if request.param == "sqlite" else "postgres_instance"
    chosen: dg.DagsterInstance = request.getfixturevalue(name)
    return chosen


def write_policy(
    folder: Path,
    quotas: dict[str, int],
    capacity: int,
    *,
    borrowing: bool = False,
    backend: str = "local",
    kueue: bool = False,
    kueue_queues: dict[str, str] | None = None,
) -> Path:
    teams: dict[str, Any] = {}
    for team, quota in quotas.items():
        teams[team] = {"backends": ["local", backend], "gpu_quota": {POOL: quota}}
        if kueue_queues and team in kueue_queues:
            teams[team]["kueue_queue"] = kueue_queues[team]
    pool: dict[str, Any] = {"backend": backend, "gpu_type": "t4", "gpus": capacity}
    if kueue:
        pool["kueue"] = True
    document = {"pools": {POOL: pool}, "borrowing": borrowing, "teams": teams}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "platform.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``make(quotas, capacity, borrowing=...)`` writes a policy and points the library at it."""

    def make(quotas: dict[str, int], capacity: int, **options: Any) -> Path:
        path = write_policy(
            tmp_path / f"policy_{uuid.uuid4().hex[:6]}", quotas, capacity, **options
        )
        monkeypatch.setenv(POLICY_ENV, str(path))
        return path

    return make


def gpu_team(name: str, models: dict[str, int], backend: str = "local") -> TeamSpec:
    """The clinical team renamed, with one model per entry asking for that many T4s."""
    base = clinical_team()
    template = base.models["tumor_classifier"]
    specs = {
        model: template.model_copy(
            update={
                "backend": backend,
                "resources": Resources(
                    cpu=1, memory_gb=1, gpu_count=gpus, gpu_type="nvidia-tesla-t4"
                ),
            }
        )
        for model, gpus in models.items()
    }
    return base.model_copy(update={"team": name, "models": specs})


class Cluster(Ledger):
    """The ledger backend, remembering each job's spec and how often it was submitted."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: dict[str, JobSpec] = {}
        self.submits: Counter[str] = Counter()

    def submit(self, spec: JobSpec):  # type: ignore[no-untyped-def]
        self.specs[spec.job_name] = spec
        self.submits[spec.job_name] += 1
        return super().submit(spec)

    def active(self) -> list[str]:
        return [job for job, state in self.states.items() if not state.is_terminal]

    def succeed(self, job: str) -> None:
        report_model(self.specs[job].output_uri)
        self.states[job] = JobState.SUCCEEDED


def enqueue(instance: dg.DagsterInstance, team: TeamSpec, model_name: str, home: Path) -> str:
    """What the trained-model step records for a GPU job of a library-admitted pool."""
    model = ModelContext(team, model_name)
    run_id = str(uuid.uuid4())
    spec = build_job_spec(
        model,
        run_id=run_id,
        features_uri="/data/features.parquet",
        features_data_version="abc123",
        home=home,
        storage_root=None,
    )
    pool = admission_pool(spec)
    assert pool == POOL
    instance.report_runless_asset_event(
        queue_event(
            model,
            spec,
            pool,
            run_id=run_id,
            attempt=1,
            code_version="v1",
            features_storage_id=None,
        )
    )
    return spec.job_name


# --- The independent replay of the log -------------------------------------------------------


@dataclass
class Replay:
    """The admission history as the event log tells it."""

    quotas: dict[str, int]
    capacity: int
    borrowing: bool = False
    queued: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # team, gpus, at
    waiting: set[str] = field(default_factory=set)
    holding: dict[str, tuple[str, int]] = field(default_factory=dict)
    job_of: dict[str, str] = field(default_factory=dict)
    admitted: Counter[str] = field(default_factory=Counter)
    submitted: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    admissions: list[tuple[str, str]] = field(default_factory=list)  # (team, entry) in order
    peak_pool: int = 0
    peak_team: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    unfair: list[str] = field(default_factory=list)

    def use(self, team: str | None = None) -> int:
        return sum(g for t, g in self.holding.values() if team is None or t == team)

    def share(self, team: str) -> float:
        return self.use(team) / self.quotas[team] if self.quotas.get(team) else float("inf")

    def heads(self) -> dict[str, tuple[int, str]]:
        """Each team's oldest waiting entry: (gpus, entry)."""
        found: dict[str, tuple[int, int, str]] = {}
        for entry in self.waiting:
            team, gpus, at = self.queued[entry]
            if team not in found or at < found[team][1]:
                found[team] = (gpus, at, entry)
        return {team: (gpus, entry) for team, (gpus, _, entry) in found.items()}

    def spread(self) -> float:
        """Max minus min share of quota in use, among teams with jobs waiting."""
        shares = [self.share(team) for team in self.heads()]
        return max(shares) - min(shares) if len(shares) > 1 else 0.0


def replay(instance: dg.DagsterInstance, teams: list[TeamSpec], policy: Path) -> Replay:
    document = yaml.safe_load(policy.read_text())
    state = Replay(
        quotas={t: g["gpu_quota"][POOL] for t, g in document["teams"].items()},
        capacity=document["pools"][POOL]["gpus"],
        borrowing=document["borrowing"],
    )
    records: list[dg.EventLogRecord] = []
    for team in teams:
        for name in team.models:
            key = ModelKeys(team.team, name).trained
            for fetch in (instance.fetch_observations, instance.fetch_materializations):
                records.extend(fetch(key, limit=10_000).records)
    for record in sorted(records, key=lambda r: r.storage_id):
        event = record.asset_event
        assert event is not None
        tags = event.tags or {}
        kind, entry, job = tags.get(EVENT_TAG), tags.get(ADMISSION_TAG), tags.get(JOB_ID_TAG)
        team = event.asset_key.path[0]
        if kind == QUEUED:
            gpus = int(event.metadata["gpus"].value)  # type: ignore[arg-type]
            state.queued[entry] = (team, gpus, record.storage_id)  # type: ignore[index]
            state.waiting.add(entry)  # type: ignore[arg-type]
        elif kind == ADMITTED:
            assert entry in state.queued, entry
            state.admitted[entry] += 1  # type: ignore[index]
            _check_fair(state, team, entry)  # type: ignore[arg-type]
            state.waiting.discard(entry)  # type: ignore[arg-type]
            state.holding[entry] = (team, state.queued[entry][1])  # type: ignore[index]
            state.admissions.append((team, entry))  # type: ignore[arg-type]
            in_pool, in_team = state.use(), state.use(team)
            state.peak_pool = max(state.peak_pool, in_pool)
            state.peak_team[team] = max(state.peak_team[team], in_team)
            if in_pool > state.capacity:
                state.violations.append(f"{entry}: pool at {in_pool} of {state.capacity}")
            if in_team > state.quotas[team] and not state.borrowing:
                state.violations.append(f"{entry}: {team} at {in_team} of {state.quotas[team]}")
        elif kind == SUBMITTED and entry:
            state.submitted[entry] += 1
            state.job_of[job] = entry  # type: ignore[index]
        elif kind in TERMINAL_EVENTS:
            state.outcomes.setdefault(job, []).append(kind)  # type: ignore[arg-type]
            owner = entry or state.job_of.get(job)  # type: ignore[arg-type]
            state.holding.pop(owner, None)  # type: ignore[arg-type]
            if entry:
                state.waiting.discard(entry)
    return state


def _check_fair(state: Replay, team: str, entry: str) -> None:
    """No other team whose next job fits its own quota waits at a lower share of its quota."""
    share = state.share(team)
    for other, (gpus, _) in state.heads().items():
        if other == team:
            continue
        fits = state.use(other) + gpus <= state.quotas.get(other, 0)
        if fits and state.share(other) < share:
            state.unfair.append(
                f"{entry} admitted for {team} at share {share:.2f} while {other} waited at "
                f"{state.share(other):.2f}"
            )


# --- Tests ---------------------------------------------------------------------------------------


def test_three_teams_never_exceed_pool_or_quota_and_share_fairly(
    any_instance: dg.DagsterInstance, ml_home: Path, policy_file: Any
) -> None:
    """Three teams queue three times their quota; jobs finish at random, some fail once and
    wait in the queue again; at no event is the pool or a quota exceeded, every job runs
    exactly once, and admissions follow the quota shares."""
    instance = any_instance
    policy = policy_file({"alpha": 4, "beta": 2, "gamma": 2}, capacity=8)
    alpha = gpu_team("alpha", {"small": 1, "large": 2})
    beta = gpu_team("beta", {"small": 1})
    gamma = gpu_team("gamma", {"pair": 2})
    teams = [alpha, beta, gamma]
    # Each team asks for three times its quota; alpha queues all of it first.
    first = [enqueue(instance, alpha, m, ml_home) for m in ["small", "large"] * 4]
    first += [enqueue(instance, beta, "small", ml_home) for _ in range(6)]
    first += [enqueue(instance, gamma, "pair", ml_home) for _ in range(3)]
    fail_once = {first[1], first[9], first[14]}  # a large alpha job, a beta job, a gamma job
    cluster = Cluster()
    admission = SensorDriver(instance, build_admission_sensor())
    reconcilers = [
        SensorDriver(
            instance, build_reconciler_sensor(t, backends={"local": cluster}, progress_seconds=60)
        )
        for t in teams
    ]
    rng = random.Random(12)
    spreads: list[float] = []
    rounds = 0
    while rounds < 80:
        rounds += 1
        admission.tick()
        spreads.append(replay(instance, teams, policy).spread())
        for reconciler in reconcilers:
            reconciler.tick()
        active = cluster.active()
        for job in rng.sample(active, k=(len(active) + 1) // 2):
            if job in fail_once:
                fail_once.discard(job)
                cluster.states[job] = JobState.FAILED
            else:
                cluster.succeed(job)
        for reconciler in reconcilers:
            reconciler.tick()
        state = replay(instance, teams, policy)
        if not state.waiting and not state.holding:
            break
    state = replay(instance, teams, policy)
    entries = set(state.queued)
    print(
        f"\nadmission: {len(first)} jobs queued ({len(entries) - len(first)} retries queued "
        f"again), {rounds} rounds; peak pool {state.peak_pool} of "
        f"{state.capacity}; peak per team {dict(state.peak_team)} (quotas {state.quotas}); "
        f"fairness: max spread of quota share among waiting teams after a tick "
        f"{max(spreads):.2f}, unfair admissions {len(state.unfair)}"
    )
    assert not state.waiting and not state.holding, "the queue did not drain"
    assert state.violations == []
    assert state.unfair == []
    assert len(entries) == len(first) + 3  # the three retries waited in the queue again
    assert all(state.admitted[e] == 1 for e in entries), state.admitted
    assert all(state.submitted[e] == 1 for e in entries), state.submitted
    assert set(cluster.submits) == entries and set(cluster.submits.values()) == {1}
    # Every job ran once and ended once; every first job's model was trained.
    assert all(len(kinds) == 1 for kinds in state.outcomes.values()), state.outcomes
    assert sorted(Counter(k for [k] in state.outcomes.values()).items()) == [
        ("materialized", len(first)),
        ("retried", 3),
    ]
    # The pool was used to the full, each team up to its quota and never past it.
    assert state.peak_pool == 8
    assert dict(state.peak_team) == {"alpha": 4, "beta": 2, "gamma": 2}
    # Shares even out after each tick: one 2-GPU job of alpha's quota of 4 at most.
    assert max(spreads) <= 0.25
    # Fair share, not FIFO: alpha queued everything first, yet beta and gamma were admitted
    # within the first tick.
    assert {team for team, _ in state.admissions[:8]} == {"alpha", "beta", "gamma"}


def _crash_scenario(instance: dg.DagsterInstance, home: Path) -> tuple[list[TeamSpec], Any]:
    alpha, beta = gpu_team("alpha", {"small": 1}), gpu_team("beta", {"small": 1})
    for _ in range(2):
        enqueue(instance, alpha, "small", home)
    admission = SensorDriver(instance, build_admission_sensor())
    admission.tick()  # alpha takes its quota of 2: a cursor with entries in it
    for _ in range(2):
        enqueue(instance, alpha, "small", home)
    for _ in range(3):
        enqueue(instance, beta, "small", home)
    return [alpha, beta], admission


def test_a_crash_mid_admission_admits_nothing_twice(
    tmp_path: Path, ml_home: Path, policy_file: Any
) -> None:
    """Store every prefix of an admission tick's events, then replay with the old cursor (the
    daemon killed before storing it) or none (the cursor lost): nothing is admitted twice, the
    pool is never exceeded, and every job still runs."""
    policy = policy_file({"alpha": 2, "beta": 2}, capacity=4)
    (tmp_path / "count").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "count")) as instance:
        _, admission = _crash_scenario(instance, ml_home)
        context = dg.build_sensor_context(instance=instance, cursor=admission.cursor)
        planned = admission.sensor(context).asset_events  # type: ignore[union-attr]
    kinds = [event.tags[EVENT_TAG] for event in planned]
    assert kinds.count(ADMITTED) == 2 and kinds.count(QUEUE_STATUS) == 2
    cases = [(prefix, lost) for prefix in range(len(planned) + 1) for lost in (False, True)]
    for prefix, lost in cases:
        root = tmp_path / f"prefix_{prefix}_{lost}"
        (root / "instance").mkdir(parents=True)
        with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
            teams, admission = _crash_scenario(instance, root / "home")
            before = admission.cursor
            context = dg.build_sensor_context(instance=instance, cursor=before)
            result = admission.sensor(context)
            for event in result.asset_events[:prefix]:  # type: ignore[union-attr]
                instance.report_runless_asset_event(event)
            admission.cursor = None if lost else before  # the crash
            cluster = Cluster()
            reconcilers = [
                SensorDriver(instance, build_reconciler_sensor(t, backends={"local": cluster}))
                for t in teams
            ]
            for _ in range(4):  # 7 jobs, 4 GPUs: drained in 3 rounds
                admission.tick()
                for reconciler in reconcilers:
                    reconciler.tick()
                for job in cluster.active():
                    cluster.succeed(job)
                for reconciler in reconcilers:
                    reconciler.tick()
            state = replay(instance, teams, policy)
            assert state.violations == [], (prefix, lost, state.violations)
            assert len(state.queued) == 7
            assert all(state.admitted[e] == 1 for e in state.queued), (prefix, lost)
            assert all(state.submitted[e] == 1 for e in state.queued), (prefix, lost)
            assert not state.waiting and not state.holding
            assert set(cluster.states) == set(state.queued)


def test_a_lost_cursor_is_rebuilt_in_bounded_ticks_before_anything_is_admitted(
    instance: dg.DagsterInstance, ml_home: Path, policy_file: Any
) -> None:
    """With its cursor lost, the sensor reads the log a few records a tick and admits nothing
    until it has read to the end; then it knows the pool is full."""
    policy = policy_file({"alpha": 2}, capacity=2)
    alpha = gpu_team("alpha", {"small": 1})
    for _ in range(5):
        enqueue(instance, alpha, "small", ml_home)
    SensorDriver(instance, build_admission_sensor()).tick()  # admits 2: the pool is full
    cluster = Cluster()
    reconciler = SensorDriver(instance, build_reconciler_sensor(alpha, backends={"local": cluster}))
    reconciler.tick()
    rebuilt = SensorDriver(instance, build_admission_sensor(max_scan=2))  # no cursor
    # 10 records: 5 queued, 2 admitted, 1 status, 2 submitted; 2 read a tick.
    emitted = [[e.tags[EVENT_TAG] for e in rebuilt.tick().asset_events] for _ in range(6)]
    assert emitted[:5] == [[]] * 5
    assert emitted[5] == [QUEUE_STATUS]  # read to the end: the pool is full, nobody admitted
    assert replay(instance, [alpha], policy).admitted.total() == 2
    cluster.succeed(next(iter(cluster.states)))
    reconciler.tick()
    rebuilt.tick()
    state = replay(instance, [alpha], policy)
    assert state.admitted.total() == 3 and set(state.admitted.values()) == {1}
    assert state.violations == []


def test_a_crash_mid_submission_submits_each_admitted_job_once(
    tmp_path: Path, ml_home: Path, policy_file: Any
) -> None:
    """The reconciler's tick that submits admitted jobs, crashed after each prefix of its
    events with its cursor lost: each admitted job gets one submission record."""
    policy_file({"alpha": 3}, capacity=3)
    alpha = gpu_team("alpha", {"small": 1})
    for prefix in range(4):
        root = tmp_path / f"prefix_{prefix}"
        (root / "instance").mkdir(parents=True)
        with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
            queued = [enqueue(instance, alpha, "small", root / "home") for _ in range(3)]
            SensorDriver(instance, build_admission_sensor()).tick()
            cluster = Cluster()
            reconciler = SensorDriver(
                instance, build_reconciler_sensor(alpha, backends={"local": cluster})
            )
            result = reconciler.sensor(dg.build_sensor_context(instance=instance))
            events = result.asset_events  # type: ignore[union-attr]
            assert [e.tags[EVENT_TAG] for e in events] == [SUBMITTED] * 3
            for event in events[:prefix]:
                instance.report_runless_asset_event(event)
            reconciler.cursor = None
            reconciler.tick()
            reconciler.tick()
            key = ModelKeys("alpha", "small").trained
            records = instance.fetch_observations(key, limit=1000).records
            submitted = Counter(
                r.asset_event.tags[ADMISSION_TAG]  # type: ignore[union-attr]
                for r in records
                if r.asset_event.tags.get(EVENT_TAG) == SUBMITTED  # type: ignore[union-attr]
            )
            assert submitted == dict.fromkeys(queued, 1), prefix
            assert set(cluster.states) == set(queued)


def test_borrowing_fills_the_pool_and_gives_quota_back_first(
    instance: dg.DagsterInstance, ml_home: Path, policy_file: Any
) -> None:
    """With borrowing, two teams use the idle quota of a third, up to the pool and no further;
    when the third team queues, every GPU freed goes to it until it has its quota."""
    policy = policy_file({"alpha": 2, "beta": 2, "gamma": 4}, capacity=8, borrowing=True)
    alpha, beta, gamma = (gpu_team(name, {"small": 1}) for name in ("alpha", "beta", "gamma"))
    teams = [alpha, beta, gamma]
    for _ in range(6):
        enqueue(instance, alpha, "small", ml_home)
        enqueue(instance, beta, "small", ml_home)
    cluster = Cluster()
    admission = SensorDriver(instance, build_admission_sensor())
    reconcilers = [
        SensorDriver(instance, build_reconciler_sensor(t, backends={"local": cluster}))
        for t in teams
    ]
    admission.tick()
    state = replay(instance, teams, policy)
    assert state.use() == 8 and state.use("alpha") == 4 and state.use("beta") == 4
    gamma_jobs = [enqueue(instance, gamma, "small", ml_home) for _ in range(3)]
    admission.tick()
    assert replay(instance, teams, policy).admitted.keys().isdisjoint(gamma_jobs)
    for reconciler in reconcilers:
        reconciler.tick()
    for lender in ("beta", "alpha", "beta"):
        # One borrowed GPU frees at a time (alpha and beta stay at or above their quotas of 2);
        # gamma, within its quota, gets each one.
        cluster.succeed(next(job for job in cluster.active() if job.startswith(lender)))
        for reconciler in reconcilers:
            reconciler.tick()
        admission.tick()
        for reconciler in reconcilers:
            reconciler.tick()
    state = replay(instance, teams, policy)
    after_gamma = [team for team, _ in state.admissions[8:]]
    assert after_gamma == ["gamma"] * 3, after_gamma
    for _ in range(20):
        for job in cluster.active():
            cluster.succeed(job)
        for reconciler in reconcilers:
            reconciler.tick()
        admission.tick()
        for reconciler in reconcilers:
            reconciler.tick()
    state = replay(instance, teams, policy)
    print(
        f"\nborrowing: {len(state.queued)} jobs; peak pool {state.peak_pool} of "
        f"{state.capacity}; peak per team {dict(state.peak_team)} (quotas {state.quotas})"
    )
    assert state.violations == []
    assert state.peak_pool == 8 and state.peak_team["alpha"] == 4 > state.quotas["alpha"]
    assert not state.waiting and not state.holding
    assert all(count == 1 for count in state.admitted.values())
    # The same queue without borrowing: each team its quota, the rest of the pool idle.
    strict = load_policy(policy).model_copy(update={"borrowing": False})
    entries = {
        f"{team}-{i}": Entry(team=team, model="small", pool=POOL, gpus=1, queued_at=i)
        for i, team in enumerate(["alpha", "beta"] * 6)
    }
    assert Counter(entries[n].team for n in plan(entries, strict, 400)) == {"alpha": 2, "beta": 2}


def test_a_waiting_job_says_so_on_its_asset_and_its_run_ends_at_once(
    instance: dg.DagsterInstance, ml_home: Path, policy_file: Any
) -> None:
    """The trained-model step of a GPU job queues it without submitting anything; the model's
    page then reads "queued for GPU: team alpha uses 1 of 1 t4", refreshed only on change."""
    policy_file({"alpha": 1, "beta": 1}, capacity=2)
    alpha = gpu_team("alpha", {"small": 1})
    model = ModelContext(alpha, "small")
    cluster = Cluster()
    admission = SensorDriver(instance, build_admission_sensor())
    reconciler = SensorDriver(instance, build_reconciler_sensor(alpha, backends={"local": cluster}))
    holder = enqueue(instance, alpha, "small", ml_home)
    admission.tick()
    reconciler.tick()
    assert list(cluster.states) == [holder]

    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=model.keys.features,
            metadata={"path": "/data/features.parquet", "data_version": "abc123"},
        )
    )
    started = time.monotonic()
    result = dg.materialize(
        [build_training_asset(model)], instance=instance, resources=team_resources(alpha)
    )
    took = time.monotonic() - started
    assert result.success
    [queued] = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert queued.tags[EVENT_TAG] == QUEUED
    waiting = queued.tags[JOB_ID_TAG]
    assert list(cluster.states) == [holder]  # nothing submitted by the run
    assert not (ml_home / "jobs").exists() or not any((ml_home / "jobs").rglob("handle.json"))

    def statuses() -> list[str]:
        records = instance.fetch_observations(model.keys.trained, limit=100).records
        return [
            r.asset_event.description or ""  # type: ignore[union-attr]
            for r in records
            if r.asset_event.tags.get(EVENT_TAG) == QUEUE_STATUS  # type: ignore[union-attr]
        ]

    admission.tick()
    latest = instance.fetch_observations(model.keys.trained, limit=1).records[0]
    shown = latest.asset_event.description or ""  # type: ignore[union-attr]
    print(f"\nthe run queued {waiting} in {took:.1f} s; the model's page says: {shown}")
    assert shown.startswith("queued for GPU: team alpha uses 1 of 1 t4 (pool t4: 1 of 2 GPUs")
    admission.tick()
    reconciler.tick()
    assert len(statuses()) == 1  # nothing changed, nothing recorded

    cluster.succeed(holder)
    reconciler.tick()
    admission.tick()
    latest = instance.fetch_observations(model.keys.trained, limit=1).records[0]
    assert latest.asset_event.tags[EVENT_TAG] == ADMITTED  # type: ignore[union-attr]
    assert len(statuses()) == 1
    reconciler.tick()
    assert set(cluster.states) == {holder, waiting}


def test_cancel_takes_a_queued_job_out_of_the_queue(
    instance: dg.DagsterInstance, ml_home: Path, policy_file: Any
) -> None:
    """Cancelling a waiting job, or an admitted one before its submission, records it
    cancelled, never submits it, and gives its place to the next job."""
    policy = policy_file({"alpha": 1}, capacity=1)
    alpha = gpu_team("alpha", {"small": 1})
    cluster = Cluster()
    admission = SensorDriver(instance, build_admission_sensor())
    reconciler = SensorDriver(instance, build_reconciler_sensor(alpha, backends={"local": cluster}))
    cancel = build_cancel_job(alpha)

    def cancel_job(job_id: str) -> None:
        config = {"ops": {"alpha_cancel_training_op": {"config": {"job_id": job_id}}}}
        resources = team_resources(alpha)
        assert cancel.execute_in_process(
            instance=instance, run_config=config, resources=resources
        ).success

    first, waiting = (enqueue(instance, alpha, "small", ml_home) for _ in range(2))
    admission.tick()
    reconciler.tick()
    cancel_job(waiting)
    reconciler.tick()  # records it cancelled
    admission.tick()
    cluster.succeed(first)
    reconciler.tick()
    admitted_next = enqueue(instance, alpha, "small", ml_home)
    admission.tick()  # the freed GPU goes to the next job, not the cancelled one
    cancel_job(admitted_next)  # admitted, not submitted yet
    reconciler.tick()
    last = enqueue(instance, alpha, "small", ml_home)
    admission.tick()
    reconciler.tick()
    cluster.succeed(last)
    reconciler.tick()
    admission.tick()

    state = replay(instance, [alpha], policy)
    assert set(cluster.states) == {first, last}
    assert state.outcomes[waiting] == ["cancelled"]
    assert state.outcomes[admitted_next] == ["cancelled"]
    assert waiting not in state.admitted and state.admitted[admitted_next] == 1
    assert state.violations == [] and not state.waiting and not state.holding


def test_a_kueue_pool_submits_at_once_with_the_teams_local_queue(
    tmp_path: Path, ml_home: Path
) -> None:
    from ml_assets.backends.kubernetes import job_labels

    path = write_policy(
        tmp_path, {"alpha": 4}, 8, backend="kubernetes", kueue=True, kueue_queues={"alpha": "ml-a"}
    )
    policy = load_policy(path)
    model = ModelContext(gpu_team("alpha", {"small": 1}, backend="kubernetes"), "small")
    spec = build_job_spec(
        model,
        run_id="r1",
        features_uri="/data/f.parquet",
        features_data_version="abc",
        home=ml_home,
        storage_root=None,
        policy=policy,
    )
    assert spec.labels[KUEUE_QUEUE_LABEL] == "ml-a"
    assert admission_pool(spec, policy) is None  # Kueue admits it, not the library
    assert job_labels(spec)[KUEUE_QUEUE_LABEL] == "ml-a"

    without = write_policy(tmp_path / "none", {"alpha": 4}, 8, backend="kubernetes", kueue=True)
    with pytest.raises(ValueError, match=r"teams\.alpha\.kueue_queue names no LocalQueue"):
        build_job_spec(
            model,
            run_id="r1",
            features_uri="/data/f.parquet",
            features_data_version="abc",
            home=ml_home,
            storage_root=None,
            policy=load_policy(without),
        )


def test_deciding_stays_cheap_with_ten_thousand_jobs_queued(tmp_path: Path) -> None:
    """The decision, the status texts and the cursor of a tick with 10,000 entries waiting."""
    policy = load_policy(write_policy(tmp_path, {"alpha": 4, "beta": 2, "gamma": 2}, 8))
    rng = random.Random(3)
    entries = {
        f"job-{i}": Entry(
            team=rng.choice(["alpha", "beta", "gamma"]),
            model=rng.choice(["m1", "m2"]),
            pool=POOL,
            gpus=rng.choice([1, 2]),
            queued_at=i,
        )
        for i in range(10_000)
    }
    started = time.perf_counter()
    chosen = plan(entries, policy, 400)
    for name in chosen:
        entries[name] = entries[name].model_copy(update={"admitted": True})
    texts = queue_statuses(entries, Usage.of(entries.values()), policy)
    raw = AdmissionCursor(entries=entries).model_dump_json()
    AdmissionCursor.parse(raw)
    took = time.perf_counter() - started
    print(
        f"\n10,000 queued: plan + statuses + cursor round trip {took * 1000:.0f} ms, cursor "
        f"{len(raw) / 1e6:.1f} MB, {len(chosen)} admitted"
    )
    assert Usage.of(entries.values()).pools[POOL] <= 8
    assert len(texts) == 6
    assert took < 10.0  # ~0.1-0.5 s idle here; the bound catches a quadratic slip
