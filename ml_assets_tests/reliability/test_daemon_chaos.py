"""Chaos against a real Dagster daemon: SIGKILL it again and again while jobs finish.

A real ``dagster-daemon run`` runs the reconciler of a small team (``chaos_location.py``,
served by its own ``dagster api grpc`` code server, as in production) against a real instance,
SQLite and PostgreSQL in turn. The test submits a few hundred real local jobs
(``chaos_trainer.py``, a process that speaks Dagster Pipes) the way the training asset does,
some planned to fail on their first attempt or on every attempt. While they finish, it kills
the daemon with SIGKILL at seeded random moments after a tick returned (while the daemon stores
the tick's events one by one, or its cursor, or evaluates the next tick), and about one kill in
three takes the code server down with it. When every job chain has ended it checks, from the
event log alone, that every job has exactly one outcome, one submission record and at most one
materialization, that every retry was recorded, and that each outcome is what the plan says.

``pytest -s`` prints the figures (jobs, kills, outcomes, wall time); ``CHAOS_SEED`` picks
another seed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import (
    SUBMITTED,
    TRAINING_CHECK,
    build_job_spec,
    submission_event,
    submit,
)
from ml_assets.backends import load_backend
from ml_assets.backends._local_runner import process_group_is_alive
from ml_assets.backends.base import Backend
from ml_assets.sensors.reconciler import CANCELLED, FAILED, MATERIALIZED, RETRIED
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets.teams.spec import TeamSpec, load_team_spec

# Every test that runs a whole Dagster deployment (webserver or daemon plus code servers) is
# in one xdist group: one worker runs them one after another, since two at once on 2 cores
# slow each other several-fold.
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.timeout(590),
    pytest.mark.xdist_group("deployments"),
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCATION = HERE / "chaos_location.py"
TRAINER = HERE / "chaos_trainer.py"
DAEMON = HERE / "chaos_daemon.py"
SEED = int(os.environ.get("CHAOS_SEED", "20260611"))

CHAINS = 200
# Submissions are spread over at least this many seconds, and paced by the kills (chain i waits
# for kill i * kills / CHAINS - 1), so jobs keep ending while the daemon dies, however slowly
# the machine runs.
SUBMIT_SECONDS = 60.0
KILLS = (10, 12)
# Most kills come while the daemon stores a tick's events: after this many more events are in
# the log (counted from the tick's return from the code server, the test's own submissions
# included). If the tick ends first, and for the other kills, the kill comes this many seconds
# after the tick returned or ended: while it stores its cursor, sleeps, or evaluates the next.
KILL_AFTER_EVENTS = (1, 12)
KILL_GAP_SECONDS = (0.0, 6.0)
MID_STORE = 2 / 3
# How many kills also kill the code server (restarted on the same port, which takes longest).
CODE_SERVER_KILLS = 2
# Failing chains: on their first attempt only, and on every attempt (~10% in all).
FAIL_FIRST, FAIL_ALWAYS = 0.05, 0.05
# Chains whose jobs report a loss per step: the reconciler draws their training curve.
WITH_METRICS = 0.25
MODELS = {"quick": 2, "patient": 3}  # model -> retry.max_attempts
# The sensor as the daemon runs it: due on every daemon loop (5 s), with a budget that bursts
# of finished jobs after a restart exceed (the rest wait for the next tick, oldest first).
SENSOR = {"minimum_interval_seconds": 1, "max_events": 100, "progress_seconds": 5.0}
# Wall-clock bounds, well inside pytest's timeout: the whole test, and one start of a process.
DEADLINE_SECONDS = 480.0
START_SECONDS = 120.0
# Why a job submitted by a daemon that was then killed may never start: the local backend wrote
# its handle, and the process died before launching the runner. The job fails and is retried.
NEVER_STARTED = "did not start within"
SENSOR_NAME = "chaos_training_reconciler"
# A tick's evaluation returned with outcomes: the lines the reconciler logged, which the code
# server prints as the evaluation returns, before the daemon stores the tick's events.
TICK_EVALUATED = re.compile(rf"{SENSOR_NAME} - ")
# The daemon's line once it stored a tick's events (the cursor follows).
TICK_ENDED = re.compile(rf"Sensor {SENSOR_NAME} skipped|No run requests returned for {SENSOR_NAME}")
CODE_SERVER_STARTED = "Started Dagster code server"
DANGLING = re.compile(r"Moving dangling STARTED tick (\d+) into SKIPPED")


@dataclass(frozen=True)
class Chain:
    """One training job and its retries: the run that submitted it, and what it is to do."""

    run_id: str
    model: str
    seconds: float
    fail: str  # "never", "first" or "always"
    metrics: bool
    submit_at: float


@dataclass(frozen=True)
class Kill:
    """When to kill a daemon: after ``events`` more events are stored, or ``seconds`` after."""

    seconds: float
    events: int | None


@dataclass
class Job:
    """One submitted job as the event log records it."""

    job_id: str
    key: str
    run_id: str
    attempt: int
    model: str


@dataclass
class Outcome:
    kind: str
    storage_id: int
    timestamp: float
    metadata: dict[str, Any]


@dataclass
class EventLog:
    """Every job event of the team's trained-model assets, read from the instance."""

    jobs: dict[str, Job] = field(default_factory=dict)
    submissions: list[Job] = field(default_factory=list)
    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))
    untagged_materializations: int = 0
    progress: int = 0
    # When each event the daemon stored (outcomes, retries' submissions, progress) was stored.
    daemon_writes: list[float] = field(default_factory=list)


def _plan(rng: random.Random) -> list[Chain]:
    chains = []
    for index in range(CHAINS):
        roll = rng.random()
        fail = "never"
        if roll < FAIL_FIRST + FAIL_ALWAYS:
            fail = "first" if roll < FAIL_FIRST else "always"
        seconds = rng.uniform(0.2, 2.0) if rng.random() < 0.7 else rng.uniform(2.0, 6.0)
        chains.append(
            Chain(
                run_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                model=rng.choice(sorted(MODELS)),
                seconds=round(seconds, 2),
                fail=fail,
                metrics=rng.random() < WITH_METRICS,
                submit_at=SUBMIT_SECONDS * index / CHAINS,
            )
        )
    return chains


def _team_yaml(folder: Path, plan_file: Path) -> Path:
    folder.mkdir(parents=True)
    models = {
        name: {
            "description": f"The chaos test's {name} model.",
            "task": "binary",
            "dataset": {"asset": "platform/raw_breast_cancer"},
            "features": {},
            "trainer": {
                "image": "chaos-trainer:1",
                "command": ["python", str(TRAINER)],
                "hyperparameters": {"plan": str(plan_file)},
            },
            "backend": "local",
            "retry": {"max_attempts": attempts},
        }
        for name, attempts in MODELS.items()
    }
    spec = {
        "team": "chaos",
        "owners": ["reliability@example.com"],
        "allowed_backends": ["local"],
        "models": models,
    }
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# -- the instance -------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_storage() -> Iterator[dict[str, Any]]:
    yield {}  # the default: SQLite under DAGSTER_HOME


@contextlib.contextmanager
def _postgres_storage() -> Iterator[dict[str, Any]]:
    from ml_assets_tests.conftest import POSTGRES, _postgres_admin

    try:
        admin = _postgres_admin()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"storage": {"postgres": {"postgres_db": {**POSTGRES, "db_name": name}}}}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


STORAGES = {"sqlite": _sqlite_storage, "postgres": _postgres_storage}


# -- the processes ------------------------------------------------------------------------------


class Process:
    """A command in its own process group (it and whatever it spawns), logging to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as stream:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def text(self, since: int = 0) -> str:
        with self.log.open("rb") as stream:
            stream.seek(since)
            return stream.read().decode(errors="replace")

    def size(self) -> int:
        return self.log.stat().st_size

    def exited(self) -> int | None:
        return self.popen.poll()

    def kill(self, signum: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole group and wait until none of it runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        deadline = time.monotonic() + 15
        while process_group_is_alive(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if process_group_is_alive(self.popen.pid):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.log.name}:\n" + "\n".join(self.text().splitlines()[-lines:])


class Daemon(Process):
    """One start of the daemon: started ahead of its turn, then told to go."""

    def __init__(self, number: int, home: Path, workspace: Path, env: dict[str, str]) -> None:
        self.go_file = home / f"daemon-{number:02d}.go"
        super().__init__(
            [sys.executable, str(DAEMON), str(self.go_file), str(workspace)],
            env,
            home / f"daemon-{number:02d}.log",
        )
        self.went = 0.0
        self.first_return: float | None = None
        self.server_log_from = 0

    def ready(self) -> bool:
        return self.go_file.with_name(self.go_file.name + ".ready").exists()

    def go(self, server: Process) -> None:
        self.went = time.monotonic()
        self.server_log_from = server.size()
        self.go_file.touch()

    def ticked(self, server: Process) -> bool:
        """Whether a tick of the reconciler returned since this daemon went."""
        if self.first_return is None and (
            TICK_EVALUATED.search(server.text(self.server_log_from))
            or TICK_ENDED.search(self.text())
        ):
            self.first_return = time.monotonic()
        return self.first_return is not None


class Trigger:
    """When to kill ``daemon``, which just went: armed by its first tick that returns while the
    next daemon is ready (its first tick, which stores what ended while no daemon ran, unless the
    machine is slow), then after ``kill.events`` more stored events if the tick returned with
    outcomes and the kill is one of those, else ``kill.seconds`` after the tick returned or
    ended."""

    def __init__(
        self, kill: Kill, daemon: Daemon, server: Process, stored: Callable[[], int]
    ) -> None:
        self.kill, self.daemon, self.server, self.stored = kill, daemon, server, stored
        # Where the code server's and the daemon's logs stood when watching for a tick began.
        self.watch: tuple[int, int] | None = (daemon.server_log_from, 0)
        self.at: float | None = None
        self.after: int | None = None  # a storage id
        self.ended_from = 0

    def due(self, next_ready: bool) -> bool:
        now = time.monotonic()
        if self.at is None and self.after is None:
            if not next_ready:
                self.watch = None
                return False
            if self.watch is None:
                self.watch = (self.server.size(), self.daemon.size())
                return False
            evaluated = TICK_EVALUATED.search(self.server.text(self.watch[0]))
            ended = TICK_ENDED.search(self.daemon.text(self.watch[1]))
            if evaluated and self.kill.events is not None:
                self.after = self.stored() + self.kill.events
                self.ended_from = self.daemon.size()
            elif evaluated or ended:
                self.at = now + self.kill.seconds
            return False
        if self.after is not None:
            if self.stored() >= self.after:
                return True
            if TICK_ENDED.search(self.daemon.text(self.ended_from)):
                self.at, self.after = now + self.kill.seconds, None
            return False
        return self.at is not None and now >= self.at


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the test -----------------------------------------------------------------------------------


def _submit(
    instance: dg.DagsterInstance, team: TeamSpec, backend: Backend, chain: Chain, home: Path
) -> None:
    """Submit the chain's first job and record it, as the trained-model asset does in its run."""
    model = ModelContext(team, chain.model)
    spec = build_job_spec(
        model,
        run_id=chain.run_id,
        features_uri=str(home / "features.parquet"),
        features_data_version="chaos-features",
        home=home,
        storage_root=None,
    )
    handle = submit(backend, spec)
    instance.report_runless_asset_event(
        submission_event(
            model,
            handle,
            spec,
            run_id=chain.run_id,
            attempt=1,
            code_version="chaos",
            features_storage_id=None,
        )
    )


@pytest.mark.parametrize("storage", sorted(STORAGES))
def test_killing_the_daemon_loses_and_duplicates_nothing(
    storage: str, tmp_path: Path, ml_home: Path
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    chains = _plan(rng)
    kills = rng.randint(*KILLS)
    gaps = [
        Kill(
            seconds=rng.uniform(*KILL_GAP_SECONDS),
            events=rng.randint(*KILL_AFTER_EVENTS) if rng.random() < MID_STORE else None,
        )
        for _ in range(kills)
    ]
    with_server = set(rng.sample(range(kills), CODE_SERVER_KILLS))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {c.run_id: {"seconds": c.seconds, "fail": c.fail, "metrics": c.metrics} for c in chains}
        )
    )
    team_file = _team_yaml(tmp_path / "team", plan_file)
    team = load_team_spec(team_file)
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = _free_port()
    workspace = tmp_path / "workspace.yaml"
    grpc = {"host": "127.0.0.1", "port": port, "location_name": "chaos"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": grpc}]}))
    with STORAGES[storage]() as storage_config:
        config = {
            **storage_config,
            "telemetry": {"enabled": False},
            "sensors": {"use_threads": True, "num_workers": 4},
        }
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "ML_ASSETS_HOME": str(ml_home),
            "CHAOS_TEAM_YAML": str(team_file),
            "CHAOS_SENSOR": json.dumps(SENSOR),
        }
        # The test's own instance creates the storage first: a daemon and another process
        # creating a fresh SQLite instance at once can corrupt its schema.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            chaos = Chaos(instance, team, chains, home, ml_home, env, port, began)
            try:
                figures = chaos.run(gaps, with_server)
            finally:
                chaos.stop()
            log = read_log(instance, team)
            _check(instance, team, chains, log)
            figures["wall_seconds"] = round(time.monotonic() - began, 1)
            figures.update(_figures(instance, log, chaos))
    print(f"\ndaemon chaos on {storage}: " + json.dumps(figures))


class Chaos:
    """The test's moving parts: submitting on schedule, and killing and restarting processes."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        team: TeamSpec,
        chains: list[Chain],
        home: Path,
        ml_home: Path,
        env: dict[str, str],
        port: int,
        began: float,
    ) -> None:
        self.instance, self.team, self.chains = instance, team, chains
        self.home, self.ml_home, self.env, self.port = home, ml_home, env, port
        self.began = began
        self.backend = load_backend("local", team.backends.get("local"))
        self.pending = list(chains)
        self.paced: dict[str, int] = {}
        self.kill_times: list[float] = []
        self.server_kills = 0
        self.restarts: list[float] = []  # seconds from a kill to the next tick's return
        self.daemons: list[Daemon] = []
        self.server: Process | None = None
        self.workspace = home.parent / "workspace.yaml"

    # -- processes

    def _start_server(self) -> Process:
        number = self.server_kills + 1
        argv = [
            str(Path(sys.executable).with_name("dagster")),
            *("api", "grpc", "--python-file", str(LOCATION), "--working-directory", str(REPO)),
            *("--host", "127.0.0.1", "--port", str(self.port), "--location-name", "chaos"),
        ]
        server = Process(argv, self.env, self.home / f"code-server-{number:02d}.log")
        self._wait(lambda: CODE_SERVER_STARTED in server.text(), "the code server", server)
        return server

    def _prestart_daemon(self) -> Daemon:
        daemon = Daemon(len(self.daemons) + 1, self.home, self.workspace, self.env)
        self.daemons.append(daemon)
        return daemon

    def _wait(self, done: Callable[[], object], what: str, process: Process) -> None:
        """Wait for ``done()``, submitting meanwhile; fail with the log after START_SECONDS."""
        deadline = time.monotonic() + START_SECONDS
        while not done():
            if process.exited() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up:\n{process.tail()}")
            self._submit_due()
            time.sleep(0.1)

    def stop(self) -> None:
        for daemon in self.daemons:
            if daemon.exited() is None:
                daemon.kill(signal.SIGTERM)
        if self.server is not None:
            self.server.kill(signal.SIGTERM)

    # -- the run

    def _submit_due(self) -> None:
        now = time.monotonic() - self.began
        while self.pending:
            chain = self.pending[0]
            if now < chain.submit_at or len(self.kill_times) < self.paced[chain.run_id]:
                return
            _submit(self.instance, self.team, self.backend, self.pending.pop(0), self.ml_home)

    def _go(self, waiting: list[Daemon], kills_left: int) -> Daemon:
        """Start the first waiting daemon (and another in the waiting line if a kill of a later
        one is planned); return once one of its ticks returned."""
        daemon = waiting.pop(0)
        self._wait(daemon.ready, "a daemon", daemon)
        if len(waiting) < kills_left:
            waiting.append(self._prestart_daemon())
        assert self.server is not None
        daemon.go(self.server)
        self._wait(functools.partial(daemon.ticked, self.server), "a tick of a daemon", daemon)
        return daemon

    def _stored(self) -> int:
        return self.instance.event_log_storage.get_maximum_record_id() or 0

    def run(self, gaps: list[Kill], with_server: set[int]) -> dict[str, Any]:
        """Submit the chains and kill per ``gaps``; return once every chain has ended, or fail
        naming those that have not."""
        total = len(self.chains)
        self.paced = {c.run_id: i * len(gaps) // total - 1 for i, c in enumerate(self.chains)}
        self.server = self._start_server()
        # Two daemons wait their turn, so the next one is ready when a kill is due.
        waiting = [self._prestart_daemon() for _ in range(min(2, len(gaps) + 1))]
        current = self._go(waiting, len(gaps))
        trigger = Trigger(gaps[0], current, self.server, self._stored)
        last_read = 0.0
        while True:
            now = time.monotonic()
            self._submit_due()
            if current.exited() is not None:
                pytest.fail(f"the daemon exited on its own:\n{current.tail()}")
            if len(self.kill_times) < len(gaps):
                if trigger.due(waiting[0].ready()):
                    killed_at = time.monotonic()
                    current.kill()
                    self.kill_times.append(time.time())
                    if len(self.kill_times) - 1 in with_server:
                        self.server.kill()
                        self.server_kills += 1
                        self.server = self._start_server()
                    current = self._go(waiting, len(gaps) - len(self.kill_times))
                    self.restarts.append(time.monotonic() - killed_at)
                    if len(self.kill_times) < len(gaps):
                        kill = gaps[len(self.kill_times)]
                        trigger = Trigger(kill, current, self.server, self._stored)
            elif not self.pending and now - last_read >= 2.0:
                last_read = now
                if len(_finals(read_log(self.instance, self.team))) == total:
                    break
            if now - self.began > DEADLINE_SECONDS:
                self._fail_incomplete(current)
            time.sleep(0.1)
        return {"kills": len(self.kill_times), "code_server_kills": self.server_kills}

    def _fail_incomplete(self, current: Daemon) -> None:
        log = read_log(self.instance, self.team)
        finals = _finals(log)
        missing = [c.run_id for c in self.chains if c.run_id not in finals]
        waiting = [j.job_id for j in log.jobs.values() if not log.outcomes.get(j.job_id)]
        pytest.fail(
            f"{len(missing)} of {len(self.chains)} job chains have no outcome after "
            f"{DEADLINE_SECONDS:.0f} s ({len(self.kill_times)} kills); runs {missing[:10]}; "
            f"jobs submitted and without an outcome: {waiting[:10]}\n{current.tail()}"
            f"\n{self.server.tail() if self.server else ''}"
        )


# -- reading the event log ----------------------------------------------------------------------


def _records(fetch: Any, key: dg.AssetKey) -> Iterator[dg.EventLogRecord]:
    cursor = None
    while True:
        page = fetch(
            dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor, ascending=True
        )
        yield from page.records
        if not page.has_more:
            return
        cursor = page.cursor


def read_log(instance: dg.DagsterInstance, team: TeamSpec) -> EventLog:
    log = EventLog()
    for name in team.models:
        key = ModelContext(team, name).keys.trained
        records = [
            *_records(instance.fetch_observations, key),
            *_records(instance.fetch_materializations, key),
        ]
        for record in sorted(records, key=lambda r: r.storage_id):
            event = record.asset_event
            assert event is not None
            tags = event.tags or {}
            kind, job_id = tags.get(EVENT_TAG), tags.get(JOB_ID_TAG)
            values: dict[str, Any] = {k: v.value for k, v in event.metadata.items()}
            if isinstance(event, dg.AssetMaterialization) and (kind != MATERIALIZED or not job_id):
                log.untagged_materializations += 1
                continue
            if not kind or not job_id:
                continue
            if kind == SUBMITTED:
                job_record = values["job"]
                job = Job(
                    job_id=job_id,
                    key=job_record["handle"]["idempotency_key"],
                    run_id=job_record["run_id"],
                    attempt=int(job_record["attempt"]),
                    model=name,
                )
                log.submissions.append(job)
                log.jobs.setdefault(job_id, job)
                if job.attempt > 1:  # the test submits first attempts, the daemon the rest
                    log.daemon_writes.append(record.timestamp)
            elif kind in (MATERIALIZED, RETRIED, FAILED, CANCELLED):
                log.outcomes[job_id].append(
                    Outcome(kind, record.storage_id, record.timestamp, values)
                )
                log.daemon_writes.append(record.timestamp)
            else:
                log.progress += 1
                log.daemon_writes.append(record.timestamp)
    return log


def _finals(log: EventLog) -> dict[str, Outcome]:
    """The outcome that ends each chain (by run id): a materialization or a failure for good."""
    finals: dict[str, Outcome] = {}
    for job_id, outcomes in log.outcomes.items():
        job = log.jobs.get(job_id)
        for outcome in outcomes:
            if job is not None and outcome.kind in (MATERIALIZED, FAILED, CANCELLED):
                finals[job.run_id] = outcome
    return finals


def _expected(chain: Chain, attempt: int, max_attempts: int, never_started: bool) -> str:
    fails = never_started or chain.fail == "always" or (chain.fail == "first" and attempt == 1)
    if not fails:
        return MATERIALIZED
    return RETRIED if attempt < max_attempts else FAILED


def _check(
    instance: dg.DagsterInstance, team: TeamSpec, chains: list[Chain], log: EventLog
) -> None:
    """The invariants, from the event log alone."""
    problems: list[str] = []
    by_key = Counter(job.key for job in log.submissions)
    by_job = Counter(job.job_id for job in log.submissions)
    problems += [f"submission of {key} recorded {n} times" for key, n in by_key.items() if n > 1]
    problems += [f"job {job} recorded as submitted {n} times" for job, n in by_job.items() if n > 1]
    for job_id, job in log.jobs.items():
        kinds = [o.kind for o in log.outcomes.get(job_id, [])]
        if len(kinds) != 1:
            problems.append(f"job {job_id} ({job.key}) has {len(kinds)} outcomes: {kinds}")
        if kinds.count(MATERIALIZED) > 1:
            problems.append(f"job {job_id} materialized {kinds.count(MATERIALIZED)} times")
    problems += [
        f"outcome {[o.kind for o in found]} for job {job_id}, never recorded as submitted"
        for job_id, found in log.outcomes.items()
        if job_id not in log.jobs
    ]
    if log.untagged_materializations:
        problems.append(f"{log.untagged_materializations} materialization(s) without a job id")

    chain_by_run = {chain.run_id: chain for chain in chains}
    jobs_by_run: dict[str, dict[int, Job]] = defaultdict(dict)
    for job in log.jobs.values():
        if job.run_id not in chain_by_run:
            problems.append(f"job {job.job_id} belongs to no planned chain (run {job.run_id})")
            continue
        jobs_by_run[job.run_id][job.attempt] = job
    for chain in chains:
        attempts = jobs_by_run.get(chain.run_id, {})
        max_attempts = team.models[chain.model].retry.max_attempts
        if sorted(attempts) != list(range(1, len(attempts) + 1)) or not attempts:
            problems.append(f"run {chain.run_id}: attempts recorded {sorted(attempts)}")
            continue
        for attempt, job in sorted(attempts.items()):
            outcomes = log.outcomes.get(job.job_id, [])
            if len(outcomes) != 1:
                continue  # reported above
            outcome = outcomes[0]
            message = str(outcome.metadata.get("message", ""))
            never_started = NEVER_STARTED in message
            if never_started and attempt == 1:
                problems.append(f"{job.job_id}: submitted by the test, yet never started")
            want = _expected(chain, attempt, max_attempts, never_started)
            if outcome.kind != want:
                problems.append(
                    f"{job.job_id} (run {chain.run_id}, plan {chain.fail}, attempt {attempt} of "
                    f"{max_attempts}): {outcome.kind}, expected {want}; {message[:300]}"
                )
            if outcome.kind == RETRIED:
                retry = log.jobs.get(str(outcome.metadata.get("retry_job_id")))
                if retry is None or (retry.run_id, retry.attempt) != (chain.run_id, attempt + 1):
                    problems.append(
                        f"{job.job_id}: retried as {outcome.metadata.get('retry_job_id')}"
                        f", which has no submission of attempt {attempt + 1}"
                    )
            elif attempt != len(attempts):
                problems.append(f"{job.job_id}: a {outcome.kind} before the last attempt")
            if outcome.kind == MATERIALIZED:
                reported = (
                    outcome.metadata.get("plan_run"),
                    outcome.metadata.get("train/plan_attempt"),
                )
                if reported != (chain.run_id, float(attempt)):
                    problems.append(
                        f"{job.job_id}: materialized with another job's report {reported}"
                    )
    problems += _check_verdicts(instance, team, log)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:60])


def _check_verdicts(instance: dg.DagsterInstance, team: TeamSpec, log: EventLog) -> list[str]:
    """Each model's ``training_succeeded`` check ends as its last finished job did."""
    problems = []
    for name in team.models:
        last = max(
            (
                outcome
                for job_id, outcomes in log.outcomes.items()
                for outcome in outcomes
                if log.jobs.get(job_id) is not None
                and log.jobs[job_id].model == name
                and outcome.kind in (MATERIALIZED, FAILED)
            ),
            key=lambda o: o.storage_id,
            default=None,
        )
        if last is None:
            continue
        key = dg.AssetCheckKey(ModelContext(team, name).keys.trained, TRAINING_CHECK)
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        status = latest.status.value if latest is not None else None
        want = "SUCCEEDED" if last.kind == MATERIALIZED else "FAILED"
        if status != want:
            problems.append(
                f"{name}: the last finished job ended {last.kind}, but {TRAINING_CHECK} is {status}"
            )
    return problems


def _figures(instance: dg.DagsterInstance, log: EventLog, chaos: Chaos) -> dict[str, Any]:
    outcomes = Counter(o.kind for found in log.outcomes.values() for o in found)
    finals = Counter(o.kind for o in _finals(log).values())
    never_started = sum(
        NEVER_STARTED in str(o.metadata.get("message", ""))
        for found in log.outcomes.values()
        for o in found
    )
    # A kill after a tick stored some of its events and before it stored its cursor is the case
    # exactly-once is about: count the interrupted ticks with events stored before the kill.
    dangling = {int(n) for d in chaos.daemons for n in DANGLING.findall(d.text())}
    replayed = 0
    for start in _tick_starts(instance, dangling):
        killed = min((k for k in chaos.kill_times if k > start), default=None)
        if killed is not None and any(start <= t <= killed for t in log.daemon_writes):
            replayed += 1
    return {
        "chains": len(_finals(log)),
        "jobs": len(log.jobs),
        "succeeded": finals[MATERIALIZED],
        "failed_for_good": finals[FAILED],
        "retried": outcomes[RETRIED],
        "never_started_after_kill": never_started,
        "progress_events": log.progress,
        "ticks_interrupted": len(dangling),
        "ticks_interrupted_after_storing_events": replayed,
        "kill_to_next_tick_s": [round(s, 1) for s in chaos.restarts],
    }


def _tick_starts(instance: dg.DagsterInstance, tick_ids: set[int]) -> list[float]:
    """When the given ticks of the reconciler began."""
    starts: list[float] = []
    for state in instance.all_instigator_state():
        if state.instigator_name == SENSOR_NAME:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10_000)
            starts.extend(tick.timestamp for tick in ticks if tick.tick_id in tick_ids)
    return starts
