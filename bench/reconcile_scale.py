"""The reconciler at scale: N Kubernetes jobs in flight, then N jobs finishing at once.

    python bench/reconcile_scale.py [--jobs 10000] [--postgres] [--held pending|running]
                                    [--baseline-sample 500] [--daemon-seconds 150]
                                    [--profile DIR]

What it does, on this machine:

1. Starts the Kubernetes loopback fake (``ml_assets_testing.fake_kubernetes``) in a process of
   its own (an API server is not in the sensor's process; in the same process its threads would
   take the GIL from the tick being measured). It holds every job it is given in ``--held``
   state without running its command, and answers every call 20 ms late (``Faults``).
2. Builds the clinical team with its model on the kubernetes backend (its ``team.yaml`` changed
   in memory, as the end-to-end tests do) and a real instance: SQLite in a temporary
   DAGSTER_HOME, or ``--postgres`` (a fresh database on 127.0.0.1:5432, dropped at the end).
3. Submits N jobs through the real submission path (``build_job_spec``, ``submit``,
   ``submission_event``, stored with ``report_runless_asset_event``). Setup is not measured: the
   fake answers without latency meanwhile.
4. Drives ``clinical_training_reconciler`` as the daemon does (``SensorDriver``: evaluate, store
   each event, store the cursor) and measures the first tick, warm ticks, the cursor and RSS.
5. Writes each job's Pipes ``messages.jsonl`` (what a job leaves: a materialization with
   ``{"artifact": "model.joblib"}``; one real ``dagster_pipes`` session writes it, the rest are
   copies), ends all N jobs at once in the fake, and ticks until every job is recorded. The
   event log must then hold exactly N materializations, one per job.
6. With ``--daemon-seconds`` > 0, two team locations (busy: the N jobs; idle: none) run in a real
   ``dagster-daemon`` twice, with sensors evaluated serially (the default) and with
   ``sensors: {use_threads: true, num_workers: 4}``, and the idle team's tick gaps are read back.

``--profile DIR`` writes a cProfile of the first tick, the first warm tick and the first burst
tick (with a summary by cumulative time beside each); the profiler slows those ticks, so take
the figures from a run without it. The machine's load average is printed at the start and the
end: other processes on 2 cores show in every figure.

The baseline of every figure is measured in the same run: one status call per job
(``read_namespaced_job_status``) through the same SDK and fake, timed on ``--baseline-sample``
jobs and extrapolated to N (0: all N). A baseline tick is the measured tick with its poll
replaced by N status calls.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import logging
import multiprocessing
import os
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLINICAL = ROOT / "ml_assets" / "teams" / "clinical" / "team.yaml"
MODEL = "tumor_classifier"
NAMESPACE = "ml-jobs"
LATENCY_S = 0.02
POSTGRES = {"hostname": "127.0.0.1", "port": 5432, "username": "postgres", "password": ""}


# -- the fake API server, in a process of its own ------------------------------------------------


def _serve_fake(conn: Connection, root: str, held: str) -> None:
    """The fake's process: start it, then answer the bench's commands until ``stop``."""
    from ml_assets_testing.fake_kubernetes import FakeKubernetes
    from ml_assets_testing.fakes import Faults

    fake = FakeKubernetes(Path(root) / "fake", faults=Faults(), hold=held, pending_s=1e9)
    with fake:
        conn.send(fake.url)
        while True:
            command, *args = conn.recv()
            if command == "stop":
                conn.send(None)
                return
            if command == "settings":
                conn.send(fake.settings(args[0]).model_dump(mode="json", exclude_none=True))
            elif command == "latency":
                fake.faults.latency_s = args[0]
                conn.send(None)
            elif command == "end":
                conn.send(fake.end_held(NAMESPACE, args[0], succeeded=True))
            elif command == "calls":
                calls = dict(fake.calls)
                fake.reset_counts()
                conn.send(calls)
            else:
                conn.send(ValueError(f"unknown command {command!r}"))


class FakeProcess:
    """The bench's end of the fake's process."""

    def __init__(self, root: Path, held: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_fake, args=(child, str(root), held), daemon=True
        )
        self._process.start()
        self.url: str = self._conn.recv()
        self._lock = threading.Lock()

    def ask(self, *command: Any) -> Any:
        with self._lock:
            self._conn.send(command)
            answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the team, the instance, the backend ---------------------------------------------------------


def team_yaml(folder: Path, team: str, settings: dict[str, Any]) -> Path:
    """The clinical team's YAML with its model on the kubernetes backend, as team ``team``."""
    spec = yaml.safe_load(CLINICAL.read_text())
    spec["team"] = team
    spec["registry"] = {"kind": "local"}
    spec["allowed_backends"] = ["local", "kubernetes"]
    spec["backends"] = {"kubernetes": settings}
    spec["models"][MODEL]["backend"] = "kubernetes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    # The shipped platform policy grants no made-up team the kubernetes backend; this one does.
    policy = folder.parent / "platform.yaml"
    policy.write_text(yaml.safe_dump({"default": {"backends": ["local", "kubernetes"]}}))
    os.environ["ML_ASSETS_POLICY"] = str(policy)
    return path


@contextlib.contextmanager
def postgres_storage() -> Iterator[dict[str, Any]]:
    """The storage settings of a fresh database on the local PostgreSQL (dropped at the end)."""
    import psycopg2

    admin = psycopg2.connect(
        host=POSTGRES["hostname"],
        port=POSTGRES["port"],
        user=POSTGRES["username"],
        dbname="test",
        connect_timeout=3,
    )
    admin.autocommit = True
    name = f"ml_assets_bench_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"postgres": {"postgres_db": {**POSTGRES, "db_name": name}}}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class TimedBackend:
    """The backend the reconciler is given, timing its polls."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.name = backend.name
        self.poll_seconds = 0.0

    def poll(self, handles: list[Any]) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            statuses: dict[str, Any] = self._backend.poll(handles)
            return statuses
        finally:
            self.poll_seconds += time.perf_counter() - began

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Submitted:
    job_ids: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    spec_bytes: int = 0
    envs: list[dict[str, str]] = field(default_factory=list)


def submit_jobs(
    instance: Any, team: Any, backend: Any, n: int, home: Path, features: Path
) -> Submitted:
    """N first attempts of the team's model, each its own run, through the submission path."""
    from ml_assets.assets.common import ModelContext, code_version
    from ml_assets.assets.training import (
        TRAINING_LOGIC_VERSION,
        build_job_spec,
        submission_event,
        submit,
    )
    from ml_assets.backends import backend_resource

    model = ModelContext(team, MODEL)
    version = code_version(TRAINING_LOGIC_VERSION, model.spec.trainer.model_dump())
    storage_root = backend_resource("kubernetes", team.backends.get("kubernetes")).storage_root
    tag = uuid.uuid4().hex[:8]

    def one(index: int) -> Any:
        run_id = f"bench-{tag}-{index:06d}"
        spec = build_job_spec(
            model,
            run_id=run_id,
            features_uri=str(features),
            features_data_version="bench-v1",
            home=home,
            storage_root=storage_root,
        )
        handle = submit(backend, spec)
        return (
            spec,
            handle,
            submission_event(
                model,
                handle,
                spec,
                run_id=run_id,
                attempt=1,
                code_version=version,
                features_storage_id=None,
            ),
        )

    done = Submitted()
    with ThreadPoolExecutor(8) as pool:
        for spec, handle, event in pool.map(one, range(n)):
            instance.report_runless_asset_event(event)
            done.job_ids.append(handle.job_id)
            done.outputs.append(handle.output_uri)
            done.spec_bytes += len(spec.model_dump_json()) + len(handle.model_dump_json())
            if not done.envs:
                done.envs.append(dict(spec.env))
    return done


def pipes_messages(env: dict[str, str], scratch: Path) -> bytes:
    """What a finished job leaves in ``messages.jsonl``, written by a real Pipes session in a
    process of its own with the job's own Pipes environment (its message path moved aside)."""
    from dagster_pipes import encode_param

    target = scratch / "messages.jsonl"
    code = textwrap.dedent(
        """
        from dagster_pipes import open_dagster_pipes
        with open_dagster_pipes() as pipes:
            pipes.report_asset_materialization(metadata={"artifact": "model.joblib"})
        """
    )
    child_env = {
        **os.environ,
        **env,
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(target)}),
    }
    subprocess.run([sys.executable, "-c", code], env=child_env, check=True)
    data = target.read_bytes()
    assert b"report_asset_materialization" in data, data
    return data


# -- ticking --------------------------------------------------------------------------------------


@dataclass
class Tick:
    evaluate_s: float
    store_s: float
    events: int
    materializations: int
    poll_s: float
    cursor_bytes: int

    @property
    def total_s(self) -> float:
        return self.evaluate_s + self.store_s


class Driver:
    """``SensorDriver`` with each tick's evaluation, storing and polling timed apart."""

    def __init__(self, instance: Any, sensor: Any, backend: TimedBackend) -> None:
        from ml_assets_testing.sensor_driver import SensorDriver

        self.driver = SensorDriver(instance, sensor)
        self.backend = backend
        self._store_s = 0.0
        report = instance.report_runless_asset_event

        def timed_report(event: Any) -> Any:
            began = time.perf_counter()
            try:
                return report(event)
            finally:
                self._store_s += time.perf_counter() - began

        instance.report_runless_asset_event = timed_report

    def tick(self, profile: Path | None = None) -> Tick:
        import dagster as dg

        self._store_s = 0.0
        self.backend.poll_seconds = 0.0
        profiler = cProfile.Profile() if profile else None
        began = time.perf_counter()
        if profiler:
            profiler.enable()
        result = self.driver.tick()
        if profiler:
            profiler.disable()
            assert profile is not None
            profiler.dump_stats(str(profile))
        total = time.perf_counter() - began
        events = result.asset_events
        return Tick(
            evaluate_s=total - self._store_s,
            store_s=self._store_s,
            events=len(events),
            materializations=sum(isinstance(e, dg.AssetMaterialization) for e in events),
            poll_s=self.backend.poll_seconds,
            cursor_bytes=len((self.driver.cursor or "").encode()),
        )


def count_materializations(instance: Any, team: Any) -> Counter[str]:
    """Materializations of the trained model in the event log, by job id."""
    import dagster as dg

    from ml_assets.assets.common import ModelContext
    from ml_assets.tags import JOB_ID_TAG

    key = ModelContext(team, MODEL).keys.trained
    jobs: Counter[str] = Counter()
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor, ascending=True
        )
        for record in page.records:
            event = record.asset_materialization
            jobs[(event.tags or {}).get(JOB_ID_TAG, "?") if event else "?"] += 1
        if not page.has_more:
            return jobs
        cursor = page.cursor


def status_call_seconds(settings: Any, job_ids: list[str]) -> float:
    """Seconds per ``read_namespaced_job_status`` through the same SDK, client settings and
    fake (the client's model classes, as a per-job poll would use them)."""
    from kubernetes import client

    from ml_assets.backends.kubernetes import client_configuration

    batch = client.BatchV1Api(client.ApiClient(client_configuration(settings)))
    batch.read_namespaced_job_status(job_ids[0], NAMESPACE)  # connect once
    began = time.perf_counter()
    for job_id in job_ids:
        batch.read_namespaced_job_status(
            job_id, NAMESPACE, _request_timeout=settings.request_timeout_seconds
        )
    return (time.perf_counter() - began) / len(job_ids)


def top_of_profile(path: Path, lines: int = 22) -> str:
    out = Path(str(path) + ".txt")
    with out.open("w") as stream:
        stats = pstats.Stats(str(path), stream=stream)
        stats.strip_dirs().sort_stats("cumulative").print_stats(lines)
    return str(out)


# -- the daemon: is the idle team delayed by the busy one? ---------------------------------------


LOCATION = """\
from ml_assets.location import team_definitions

defs = team_definitions({path!r})
"""


def daemon_gaps(home_copy: Path, workspace: Path, threads: bool, seconds: float) -> dict[str, Any]:
    """Run ``dagster-daemon run`` on ``home_copy`` for ``seconds``; per team reconciler, the
    ticks it recorded, the longest gap between tick starts and the longest tick."""
    import dagster as dg

    config: dict[str, Any] = {"telemetry": {"enabled": False}}
    if threads:
        config["sensors"] = {"use_threads": True, "num_workers": 4}
    (home_copy / "dagster.yaml").write_text(yaml.safe_dump(config))
    log = home_copy / "daemon.log"
    env = {**os.environ, "DAGSTER_HOME": str(home_copy)}
    with log.open("w") as stream:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            time.sleep(seconds)
        finally:
            stopped = time.time()
            # The daemon and the code servers it started are in its own process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    ticks: dict[str, list[Any]] = {}
    with dg.DagsterInstance.from_config(str(home_copy)) as instance:
        for state in instance.all_instigator_state():
            name = state.instigator_name
            if not name.endswith("_training_reconciler"):
                continue
            found = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
            ticks[name] = sorted(found, key=lambda t: t.timestamp)
    # Every reconciler is due when the daemon starts: a team's wait is counted from the first
    # tick of any team.
    began = min((found[0].timestamp for found in ticks.values() if found), default=stopped)
    result: dict[str, Any] = {}
    for name, found in ticks.items():
        starts = [began, *(t.timestamp for t in found if t.timestamp > began)]
        durations = [t.end_timestamp - t.timestamp for t in found if t.end_timestamp]
        # Up to when the daemon was stopped too: a team that stopped ticking shows.
        gaps = [b - a for a, b in itertools.pairwise([*starts, stopped])]
        result[name] = {
            "ticks": len(found),
            "failed_ticks": sum(t.status.value == "FAILURE" for t in found),
            "max_gap_s": max(gaps) if gaps else None,
            "max_tick_s": max(durations) if durations else None,
            "first_tick_after_s": found[0].timestamp - began if found else None,
        }
    return result


# -- the run --------------------------------------------------------------------------------------


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--held", choices=["pending", "running"], default="pending")
    parser.add_argument("--baseline-sample", type=int, default=500)
    parser.add_argument("--warm-ticks", type=int, default=3)
    parser.add_argument("--daemon-seconds", type=float, default=0.0)
    parser.add_argument("--drain-minutes", type=float, default=30.0)
    parser.add_argument(
        "--max-burst-ticks", type=int, default=0, help="stop the burst after this many (0: all)"
    )
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    n = args.jobs

    import dagster as dg

    # The reconciler logs a line per job it records; the table is what this prints.
    logging.getLogger("dagster").setLevel(logging.WARNING)
    from ml_assets.backends.kubernetes import KubernetesSettings
    from ml_assets.sensors.reconciler import build_reconciler_sensor
    from ml_assets.teams.spec import load_team_spec

    scratch = Path(tempfile.mkdtemp(prefix="reconcile_scale_"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--short", "ml_assets"], capture_output=True, text=True
    ).stdout.split("\n")
    changed = sorted(line[3:] for line in dirty if line.strip())
    print(f"tree: {head}" + (f" + uncommitted {', '.join(changed)}" if changed else ""))
    storage_name = "postgres" if args.postgres else "sqlite"
    print(
        f"{n} jobs held {args.held}, kubernetes fake ({LATENCY_S * 1000:.0f} ms a request, own "
        f"process), {storage_name} instance, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    fake = FakeProcess(scratch, args.held)
    storage_cm: contextlib.AbstractContextManager[dict[str, Any] | None] = (
        postgres_storage() if args.postgres else contextlib.nullcontext(None)
    )
    try:
        with storage_cm as storage:
            settings_dict = fake.ask("settings", str(scratch / "storage"))
            settings = KubernetesSettings(**settings_dict)
            team = load_team_spec(team_yaml(scratch / "clinical", "clinical", settings_dict))
            features = scratch / "features.parquet"
            features.write_bytes(b"not read: the jobs never run")
            home = scratch / "dagster_home"
            home.mkdir()
            overrides = {"storage": storage} if storage else None
            with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
                backend = TimedBackend(settings.get_backend())
                began = time.perf_counter()
                submitted = submit_jobs(instance, team, backend, n, scratch / "ml_home", features)
                print(f"setup: {n} submissions in {time.perf_counter() - began:.0f} s", flush=True)
                pristine = scratch / "dagster_home_after_setup"
                daemon = args.daemon_seconds > 0 and not args.postgres
                if daemon:
                    shutil.copytree(home, pristine)  # nothing writes to it meanwhile
                fake.ask("latency", LATENCY_S)

                sample = submitted.job_ids[: args.baseline_sample or n]
                per_call = status_call_seconds(settings, sample)
                baseline_poll = per_call * n
                how = (
                    "all of them"
                    if len(sample) == n
                    else f"{len(sample)} of them timed, extrapolated to {n}"
                )
                print(
                    f"baseline: read_namespaced_job_status per job, {per_call * 1000:.1f} ms a "
                    f"call ({how}): {baseline_poll:.1f} s per poll of {n} jobs",
                    flush=True,
                )

                sensor = build_reconciler_sensor(team, backends={"kubernetes": backend})  # type: ignore[dict-item]
                driver = Driver(instance, sensor, backend)
                rss_before = rss_mb()
                fake.ask("calls")

                def profile(name: str) -> Path | None:
                    return args.profile / f"{name}.prof" if args.profile else None

                first = driver.tick(profile("first_tick"))
                first_calls = fake.ask("calls")
                print(
                    f"first tick: evaluate {first.evaluate_s:.2f} s (poll {first.poll_s:.2f} s), "
                    f"{first.events} events stored in {first.store_s:.2f} s; "
                    f"API calls {first_calls}",
                    flush=True,
                )
                warm: list[Tick] = []
                for index in range(args.warm_ticks):
                    tick = driver.tick(profile("warm_tick") if index == 0 else None)
                    warm.append(tick)
                    print(
                        f"warm tick {index + 1}: evaluate {tick.evaluate_s:.2f} s (poll "
                        f"{tick.poll_s:.2f} s), {tick.events} events stored in "
                        f"{tick.store_s:.2f} s",
                        flush=True,
                    )
                quiet = [t for t in warm if t.events == 0] or warm
                warm_tick = max(quiet, key=lambda t: t.total_s)
                cursor_bytes = warm[-1].cursor_bytes if warm else first.cursor_bytes
                rss_inflight = rss_mb()
                gaps: dict[bool, dict[str, Any]] = {}
                if daemon:
                    gaps = run_daemon_experiment(
                        scratch, pristine, settings_dict, args.daemon_seconds
                    )

                # N jobs finish at once, each having left its Pipes messages.
                data = pipes_messages(submitted.envs[0], scratch)
                for output in submitted.outputs:
                    path = Path(output)
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "messages.jsonl").write_bytes(data)
                ended = fake.ask("end", None)
                assert len(ended) == n, f"{len(ended)} of {n} jobs ended"
                drain: list[Tick] = []
                recorded = 0
                began = time.perf_counter()
                deadline = time.monotonic() + args.drain_minutes * 60
                idle = 0
                most = args.max_burst_ticks or sys.maxsize
                while recorded < n and time.monotonic() < deadline and idle < 5:
                    if len(drain) >= most:
                        break
                    tick = driver.tick(profile("burst_tick") if not drain else None)
                    drain.append(tick)
                    recorded += tick.materializations
                    idle = idle + 1 if tick.materializations == 0 else 0
                    print(
                        f"burst tick {len(drain)}: evaluate {tick.evaluate_s:.2f} s (poll "
                        f"{tick.poll_s:.2f} s), {tick.events} events ({tick.materializations} "
                        f"materializations) stored in {tick.store_s:.2f} s; "
                        f"{recorded}/{n} recorded",
                        flush=True,
                    )
                drain_s = time.perf_counter() - began
                by_job = count_materializations(instance, team)
                duplicates = sum(1 for count in by_job.values() if count > 1)
                exactly = sorted(by_job) == sorted(submitted.job_ids) and not duplicates
                rss_end, rss_peak = rss_mb(), peak_rss_mb()

    finally:
        fake.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- the table --------------------------------------------------------------------------------
    def base_tick(tick: Tick) -> float:
        return tick.total_s - tick.poll_s + baseline_poll

    longest = max(drain, key=lambda t: t.total_s) if drain else None
    rows: list[tuple[str, str, str]] = [
        (
            "first tick: evaluation",
            fmt(first.evaluate_s),
            fmt(first.evaluate_s - first.poll_s + baseline_poll),
        ),
        ("first tick: events emitted", str(first.events), "-"),
        ("first tick: storing its events", fmt(first.store_s), "-"),
        ("first tick: total (goal <= 10 s)", fmt(first.total_s), fmt(base_tick(first))),
        (
            "warm tick, nothing to record (goal <= 3 s)",
            fmt(warm_tick.total_s),
            fmt(base_tick(warm_tick)),
        ),
        ("  of which polling", fmt(warm_tick.poll_s), fmt(baseline_poll)),
        ("  events emitted", str(warm_tick.events), "-"),
        (
            "cursor size",
            f"{cursor_bytes / 1e6:.2f} MB",
            f"{submitted.spec_bytes / 1e6:.2f} MB (specs+handles)",
        ),
        (
            "RSS with N in flight (before first tick)",
            f"{rss_inflight:.0f} MB",
            f"{rss_before:.0f} MB",
        ),
        ("burst: ticks until all recorded", str(len(drain)), "-"),
        (
            "burst: total time, ticks back to back",
            fmt(drain_s),
            fmt(sum(base_tick(t) for t in drain)),
        ),
        (
            "burst: daemon wall time (10 s interval) (goal <= 5 min)",
            fmt(sum(max(t.total_s, 10.0) for t in drain)),
            fmt(sum(max(base_tick(t), 10.0) for t in drain)),
        ),
        (
            "burst: longest tick, eval+store (goal <= 20 s)",
            fmt(longest.total_s if longest else None),
            fmt(base_tick(longest) if longest else None),
        ),
        (
            "burst: events per tick (mean / max)",
            f"{statistics.mean(t.events for t in drain):.0f} / {max(t.events for t in drain)}"
            if drain
            else "-",
            "-",
        ),
        (
            "materializations in the event log",
            f"{sum(by_job.values())} for {len(by_job)} jobs, {duplicates} duplicated",
            f"exactly {n}: {'yes' if exactly else 'NO'}",
        ),
        ("RSS at the end / peak", f"{rss_end:.0f} / {rss_peak:.0f} MB", "-"),
    ]
    for threads, result in gaps.items():
        mode = "use_threads, 4 workers" if threads else "serial (default)"
        busy = result.get("clinical_training_reconciler", {})
        calm = result.get("calm_training_reconciler", {})
        rows.append(
            (
                f"daemon, {mode}: idle team's longest tick gap",
                fmt(calm.get("max_gap_s")) + f" ({calm.get('ticks', 0)} ticks)",
                f"busy team: {busy.get('ticks', 0)} ticks ({busy.get('failed_ticks', 0)} "
                f"failed), longest {fmt(busy.get('max_tick_s'))}",
            )
        )
    print()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)")
    print(f"{n} jobs, {storage_name}; baseline = one read_namespaced_job_status per job ({how})")
    width = max(len(row[0]) for row in rows)
    print(f"{'figure':<{width}}  {'measured':>28}  baseline")
    for name, measured, baseline in rows:
        print(f"{name:<{width}}  {measured:>28}  {baseline}")
    if args.profile:
        for name in ("first_tick", "warm_tick", "burst_tick"):
            path = args.profile / f"{name}.prof"
            if path.exists():
                print(f"profile of the {name.replace('_', ' ')}: {top_of_profile(path)}")


def run_daemon_experiment(
    scratch: Path, pristine: Path, settings: dict[str, Any], seconds: float
) -> dict[bool, dict[str, Any]]:
    """Two team locations in a real daemon, serial then threaded, each on its own copy of the
    instance as it was right after the submissions; see the module docstring."""
    workspace = scratch / "workspace.yaml"
    locations = []
    for name, team_path in (
        ("clinical", scratch / "clinical" / "team.yaml"),
        ("calm", team_yaml(scratch / "calm", "calm", settings)),
    ):
        module = scratch / f"{name}_location.py"
        module.write_text(LOCATION.format(path=str(team_path)))
        locations.append({"python_file": {"relative_path": str(module), "location_name": name}})
    workspace.write_text(yaml.safe_dump({"load_from": locations}))
    gaps: dict[bool, dict[str, Any]] = {}
    for threads in (False, True):
        copy = scratch / f"daemon_home_{'threads' if threads else 'serial'}"
        shutil.copytree(pristine, copy)
        gaps[threads] = daemon_gaps(copy, workspace, threads, seconds)
        mode = "threads" if threads else "serial"
        print(f"daemon ({mode}, {seconds:.0f} s): {gaps[threads]}", flush=True)
    return gaps


if __name__ == "__main__":
    main()
