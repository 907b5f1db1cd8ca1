"""A fault storm on each remote backend while the reconciler ticks: every job exactly once.

Per remote backend (Kubernetes, SageMaker, Vertex AI, Databricks), its loopback fake answers 20%
of all calls to its compute API with a 503, a 429 or a dropped connection, and also loses the
answers of a few creates after the job was created. Into that, the test submits ``JOBS`` training
jobs the way the trained-model asset does (the team's backend from its YAML, the job's submission
record in a real Dagster instance), every fourth of them planned to fail on its first attempt so
that the reconciler must submit a retry through the storm too. Then it ticks the team's
reconciler, built by the team's own Definitions, as the sensor daemon would, until every job has
its model.

From the event log and the fake alone it then checks: each job name was created once on the
fake and each attempt ran once (the jobs count their own runs), each job has exactly one
submission record and one outcome, each planned job has exactly one materialization (the retry's
for a planned failure), nothing failed for good, and further ticks add nothing. A tick may raise
only if the next one recovers; the reconciler is built so that none does.

Storage is spared the faults on every backend: moto's S3 and the GCS emulator take none, and
DBFS calls on the Databricks fake are exempted to match (each one costs the SDK a second of
back-off, in the jobs' uploads as much as in the reconciler's reads).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from ml_assets_testing.fakes import Faults
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets import transport
from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import build_job_spec, submission_event, submit
from ml_assets.backends import backend_resource, load_backend
from ml_assets.backends.base import JobHandle, JobSpec
from ml_assets.location import team_definitions
from ml_assets.sensors.reconciler import FAILED, MATERIALIZED, RETRIED, TERMINAL_EVENTS
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG
from ml_assets.teams.spec import TeamSpec, load_team_spec

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("permissive_policy"),
]

CLINICAL = Path(__file__).parents[2] / "ml_assets" / "teams" / "clinical" / "team.yaml"
MODEL = "tumor_classifier"
JOBS = 20
FLAKY_EVERY = 4  # jobs 0, 4, 8... fail their first attempt
SUBMITTING_RUNS = 6
TICK_DEADLINE_S = 150.0


def storm(seed: int, exempt: str | None = None) -> Faults:
    """20% of calls fail: 10% answered 503, 5% 429, 5% dropped without an answer.

    Each seed used below draws all three kinds within its first 20 calls, fewer than any fake
    here takes, so every kind of fault is met whatever order the calls come in.
    """
    return Faults(error_rate=0.10, throttle_rate=0.05, drop_rate=0.05, seed=seed, exempt=exempt)


# A training job as a team's image would run it: it counts its own runs, fails its first
# attempt if the test planned so, else writes an artifact and reports it through Dagster Pipes.
JOB_SCRIPT = """
import os, pathlib, sys
from dagster_pipes import open_dagster_pipes

ledger = pathlib.Path(sys.argv[1])
with open_dagster_pipes() as pipes:
    attempt = pipes.retry_number + 1
    with open(ledger / "ran" / f"{pipes.run_id}.{attempt}", "a") as runs:
        runs.write("ran\\n")
    if attempt == 1 and (ledger / "flaky" / pipes.run_id).exists():
        raise RuntimeError("a transient failure the next attempt does not meet")
    out = pathlib.Path(os.environ["ML_ASSETS_OUTPUT_URI"])
    (out / "model.bin").write_bytes(pipes.run_id.encode())
    pipes.report_custom_message({"progress": 0.5, "step": 1, "metrics": {"loss": 0.5}})
    pipes.report_asset_materialization(
        metadata={"artifact": "model.bin", "planned_run": pipes.run_id}, data_version="v1"
    )
"""


@dataclass
class World:
    """One backend's fake under a fault storm: the team's settings for it, and what it created."""

    settings: dict[str, Any]
    faults: Faults
    created: Callable[[], Counter[str]]  # job name -> times the fake created it
    lost_answers_left: Callable[[], int] = lambda: 0


@contextlib.contextmanager
def kubernetes(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_kubernetes import FakeKubernetes

    faults = storm(seed=1)
    # Three creates are stored but answered 504, as a write that beat its request deadline.
    with FakeKubernetes(root / "k8s", faults=faults, create_timeouts=3) as fake:
        settings = fake.settings(str(root / "storage")).model_dump(exclude_none=True)

        def created() -> Counter[str]:
            return Counter({key.split("/", 1)[1]: n for key, n in fake.created.items()})

        yield World(settings, faults, created, lambda: fake.create_timeouts)


@contextlib.contextmanager
def sagemaker(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_sagemaker import FakeSageMaker, use_fake_aws

    faults = storm(seed=7)
    with FakeSageMaker(root / "sagemaker", faults=faults, lose_create_responses=3) as fake:
        use_fake_aws(fake, monkeypatch)
        settings = fake.backend_settings(
            f"s3://{fake.create_bucket()}/ml", sync_seconds=0.5, max_attempts=10
        )

        def created() -> Counter[str]:
            # A second create of a name is refused (ResourceInUse); a duplicate job would show
            # as a second process under a name of its own.
            return Counter(job.job_id for job in fake.processes.jobs.values())

        yield World(settings, faults, created, lambda: fake.lose_create_responses)


@contextlib.contextmanager
def vertex(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_vertex import FakeVertex, GcsEmulator

    faults = storm(seed=8)
    with (
        GcsEmulator(["clinical-storm"]) as gcs,
        # One create in ten creates the job and still answers 503.
        FakeVertex(
            root / "vertex", job_env=gcs.env, faults=faults, create_then_fail_rate=0.1, seed=5
        ) as fake,
    ):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        settings = fake.backend_settings(storage_root="gs://clinical-storm/ml", sync_seconds=0.5)

        def created() -> Counter[str]:
            return Counter(str(job["displayName"]) for job in fake.jobs())

        yield World(settings, faults, created)


@contextlib.contextmanager
def databricks(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_databricks import FakeDatabricks

    faults = storm(seed=9, exempt="/dbfs/")
    # A cluster image ships compiled bytecode; without it every run compiles databricks-sdk.
    job_env = {"PYTHONPYCACHEPREFIX": str(root.parent / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}
    with FakeDatabricks(root / "databricks", faults=faults, job_env=job_env) as fake:
        for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(root / "no-databrickscfg"))
        for name, value in fake.client_env.items():
            monkeypatch.setenv(name, value)
        fake.lose_answers("runs/submit", times=3)
        settings = fake.backend_settings(storage_root="dbfs:/ml_assets/clinical", sync_seconds=0.5)

        def created() -> Counter[str]:
            return Counter(run.run_name for run in fake.runs.values())

        def lost_left() -> int:
            return sum(fake._lost.values())

        yield World(settings, faults, created, lost_left)


WORLDS: dict[str, Callable[..., contextlib.AbstractContextManager[World]]] = {
    "kubernetes": kubernetes,
    "sagemaker": sagemaker,
    "vertex": vertex,
    "databricks": databricks,
}


def team_on(backend: str, settings: dict[str, Any], folder: Path) -> Path:
    """The clinical team's YAML with its model moved to ``backend``, written to ``folder``."""
    spec = yaml.safe_load(CLINICAL.read_text())
    spec["registry"] = {"kind": "local"}
    spec["allowed_backends"] = ["local", backend]
    spec["backends"] = {backend: settings}
    spec["models"][MODEL]["backend"] = backend
    spec["models"][MODEL]["retry"] = {"max_attempts": 2}
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit_jobs(
    instance: dg.DagsterInstance, team: TeamSpec, home: Path, command: list[str], ledger: Path
) -> dict[str, int]:
    """Submit ``JOBS`` jobs as the trained-model asset does, from several workers at once;
    returns run id -> planned index."""
    model = ModelContext(team, MODEL)
    backend_name = model.spec.backend
    storage_root = backend_resource(backend_name, team.backends.get(backend_name)).storage_root
    assert storage_root is not None
    planned: dict[str, int] = {}
    specs: dict[str, JobSpec] = {}
    for index in range(JOBS):
        run_id = str(uuid.uuid4())
        planned[run_id] = index
        if index % FLAKY_EVERY == 0:
            (ledger / "flaky" / run_id).touch()
        specs[run_id] = build_job_spec(
            model,
            run_id=run_id,
            features_uri=transport.join(storage_root, "inputs", "unused.parquet"),
            features_data_version="v1",
            home=home,
            storage_root=storage_root,
        ).model_copy(update={"command": command})

    # Each submitting worker (a run worker, in production) builds its own backend once.
    workers = threading.local()

    def run_submits(run_id: str) -> JobHandle:
        if not hasattr(workers, "backend"):
            workers.backend = load_backend(backend_name, team.backends.get(backend_name))
        return submit(workers.backend, specs[run_id])

    with ThreadPoolExecutor(max_workers=SUBMITTING_RUNS) as runs:
        handles = dict(zip(specs, runs.map(run_submits, specs), strict=True))
    for run_id, handle in handles.items():
        instance.report_runless_asset_event(
            submission_event(
                model,
                handle,
                specs[run_id],
                run_id=run_id,
                attempt=1,
                code_version="v1",
                features_storage_id=None,
            )
        )
    return planned


def job_events(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.EventLogRecord]:
    records = [
        *instance.fetch_observations(key, limit=10_000).records,
        *instance.fetch_materializations(key, limit=10_000).records,
    ]
    return [r for r in records if (r.asset_event.tags or {}).get(EVENT_TAG)]  # type: ignore[union-attr]


def tags_of(record: dg.EventLogRecord) -> dict[str, str]:
    return dict(record.asset_event.tags or {})  # type: ignore[union-attr]


def recorded_spec(record: dg.EventLogRecord) -> JobSpec:
    """The spec a submission record holds."""
    job: Any = record.asset_event.metadata["job"].value  # type: ignore[union-attr]
    return JobSpec.model_validate(job["spec"])


def materialized(events: list[dg.EventLogRecord]) -> list[dg.EventLogRecord]:
    return [r for r in events if tags_of(r)[EVENT_TAG] == MATERIALIZED]


@pytest.mark.parametrize("backend", sorted(WORLDS))
def test_every_job_is_created_once_and_materialized_once_through_a_fault_storm(
    backend: str,
    instance: dg.DagsterInstance,
    ml_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = tmp_path / "ledger"
    for folder in ("ran", "flaky"):
        (ledger / folder).mkdir(parents=True)
    script = tmp_path / "storm_job.py"
    script.write_text(JOB_SCRIPT)
    command = ["python", str(script), str(ledger)]

    with WORLDS[backend](tmp_path, monkeypatch) as world:
        transport.reset_clients()
        spec_path = team_on(backend, world.settings, tmp_path)
        team = load_team_spec(spec_path)
        key = ModelContext(team, MODEL).keys.trained
        defs = team_definitions(spec_path)
        started = time.monotonic()
        planned = submit_jobs(instance, team, ml_home, command, ledger)
        submitted_s = time.monotonic() - started

        daemon = SensorDriver.of(instance, defs, "clinical_training_reconciler")
        raised: list[tuple[int, str]] = []
        ticks = 0

        def ended() -> Counter[str]:
            kinds = Counter(tags_of(r)[EVENT_TAG] for r in job_events(instance, key))
            return Counter({kind: kinds[kind] for kind in (MATERIALIZED, FAILED)})

        deadline = time.monotonic() + TICK_DEADLINE_S
        while sum((so_far := ended()).values()) < JOBS:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{dict(so_far)} of {JOBS} jobs after {ticks} ticks; "
                    f"ticks that raised: {raised}"
                )
            ticks += 1
            try:
                daemon.tick()
            except Exception as exc:  # the daemon records the failed tick and tries again
                raised.append((ticks, repr(exc)))
            time.sleep(0.3)
        # Further ticks, faults and all, must neither raise nor add anything.
        for _ in range(3):
            ticks += 1
            daemon.tick()
        reconciled_s = time.monotonic() - started - submitted_s
        created = world.created()
        lost_left = world.lost_answers_left()
        injected = dict(world.faults.injected)

    events = job_events(instance, key)
    submitted = Counter(
        tags_of(r)[JOB_ID_TAG] for r in events if tags_of(r)[EVENT_TAG] == "submitted"
    )
    outcomes = Counter(
        tags_of(r)[JOB_ID_TAG] for r in events if tags_of(r)[EVENT_TAG] in TERMINAL_EVENTS
    )
    kinds = Counter(tags_of(r)[EVENT_TAG] for r in events)
    flaky = [run_id for run_id, index in planned.items() if index % FLAKY_EVERY == 0]
    print(
        f"\n{backend}: {JOBS} jobs + {len(flaky)} retries; faults injected {injected}; "
        f"{ticks} ticks ({len(raised)} raised); submit {submitted_s:.1f} s, "
        f"reconcile {reconciled_s:.1f} s; events {dict(kinds)}"
    )

    # Ticks: a failed one must be followed by one that works.
    failed_ticks = {number for number, _ in raised}
    assert not any(number + 1 in failed_ticks for number in failed_ticks), raised

    # The storm really blew: every kind of fault, and every lost create answer was met.
    assert {"error", "throttle", "drop"} <= set(injected), injected
    assert lost_left == 0

    # Every attempt has one submission record and one outcome; no job is recorded twice.
    records = [r for r in events if tags_of(r)[EVENT_TAG] == "submitted"]
    specs = {tags_of(r)[JOB_ID_TAG]: recorded_spec(r) for r in records}
    assert len(submitted) == JOBS + len(flaky), submitted
    assert set(submitted.values()) == {1}, submitted
    assert outcomes.keys() == submitted.keys()
    assert set(outcomes.values()) == {1}, outcomes
    assert kinds[FAILED] == 0, kinds
    assert kinds[RETRIED] == len(flaky)
    assert kinds[MATERIALIZED] == JOBS

    # The fake created each job name once, and nothing else.
    names = sorted(spec.job_name for spec in specs.values())
    assert sorted(created) == names
    assert set(created.values()) == {1}, created

    # Each attempt ran exactly once: the planned failures twice in all, the others once.
    runs = {path.name: path.read_text().count("ran") for path in (ledger / "ran").iterdir()}
    expected_runs = {f"{run_id}.1": 1 for run_id in planned}
    expected_runs.update({f"{run_id}.2": 1 for run_id in flaky})
    assert runs == expected_runs

    # One materialization per planned job, from the attempt the plan calls for.
    by_run: dict[str, list[dict[str, Any]]] = {}
    for record in materialized(events):
        metadata = {k: v.value for k, v in record.asset_event.metadata.items()}  # type: ignore[union-attr]
        by_run.setdefault(str(metadata["planned_run"]), []).append(metadata)
    assert sorted(by_run) == sorted(planned)
    for run_id, found in by_run.items():
        assert len(found) == 1, (run_id, found)
        assert found[0]["backend"] == backend
        assert found[0]["attempt"] == (2 if run_id in flaky else 1)
        assert found[0]["submitted_by_run"] == run_id
