"""The production topology as separate processes, with a code server and the daemon killed.

PostgreSQL instance storage, one ``dagster api grpc`` per location (the platform data, the
fraud team and the wine team), a webserver and a daemon on the generated gRPC workspace, all
started and supervised by ``deploy/topology.py``. Both teams' pipelines are launched through the
webserver's GraphQL API. While fraud's training job is in flight, fraud's code server and the
daemon are SIGKILLed; the supervisor brings them back. Fraud's model must still reach
production, wine must not notice, and no training job may be submitted twice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import dagster as dg
import pytest
import yaml

from ml_assets.assets.common import ModelKeys
from ml_assets.backends.base import JobHandle, JobState
from ml_assets.backends.local import LocalBackend
from ml_assets.tags import EVENT_TAG, JOB_ID_TAG, TEAM_TAG

REPO = Path(__file__).resolve().parents[2]
LOCATIONS = ["platform_data", "fraud", "wine"]
VICTIM, BYSTANDER = "fraud", "wine"
MODELS = {
    VICTIM: ModelKeys(VICTIM, "fraud_detector"),
    BYSTANDER: ModelKeys(BYSTANDER, "cultivar_classifier"),
}
RAW_TRANSACTIONS = dg.AssetKey(["platform", "raw_card_transactions"])
TRANSACTION_ROWS = "20000"
POLL_S = 0.25
RAW_TIMEOUT_S = 150.0
SUBMIT_TIMEOUT_S = 150.0
PROMOTED_TIMEOUT_S = 240.0

T = TypeVar("T")


def _load_topology() -> ModuleType:
    """``deploy/topology.py``, the launcher the README documents, imported from its file."""
    path = REPO / "deploy" / "topology.py"
    spec = importlib.util.spec_from_file_location("ml_assets_deploy_topology", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


topology_module = _load_topology()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    topology: Any = None,
    instance: dg.DagsterInstance | None = None,
) -> T:
    """Poll ``probe`` until it answers; fail at ``timeout``, or at once when a run of the
    ``instance`` has failed (nothing would then carry the chain on)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        failed: Sequence[dg.DagsterRun] = ()
        if instance is not None:
            failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        if failed or time.monotonic() > deadline:
            why = f"run {failed[0].job_name} {failed[0].run_id} failed" if failed else "timed out"
            logs = ""
            if topology is not None:
                logs = "\n".join(
                    f"--- {name}\n{topology.tail(name, 15)}" for name in topology.services
                )
            pytest.fail(f"{why} waiting {timeout:.0f}s for {what}\n{logs}", pytrace=False)
        time.sleep(POLL_S)


def _observations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.AssetObservation]:
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=10_000)
    return [
        r.asset_event for r in records.records if isinstance(r.asset_event, dg.AssetObservation)
    ]


def _materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey
) -> list[dg.AssetMaterialization]:
    records = instance.fetch_materializations(key, limit=10_000).records
    return [r.asset_event for r in records if isinstance(r.asset_event, dg.AssetMaterialization)]


def _submissions(instance: dg.DagsterInstance, keys: ModelKeys) -> list[JobHandle]:
    """The handle of every ``submitted`` observation of the model, as the event log holds it."""
    handles = []
    for event in _observations(instance, keys.trained):
        if (event.tags or {}).get(EVENT_TAG) == "submitted":
            record = event.metadata["job"].value
            assert isinstance(record, dict)
            handles.append(JobHandle.model_validate(record["handle"]))
    return handles


def _launch(topology: Any, team: str) -> str:
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=topology.webserver_port)
    return client.submit_job_execution(
        f"{team}_pipeline", repository_location_name=team, repository_name="__repository__"
    )


def _run_status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus | None:
    run = instance.get_run_by_id(run_id)
    return run.status if run else None


_REPOSITORY_JOBS = """
query Jobs($location: String!) {
  repositoryOrError(repositorySelector: {repositoryLocationName: $location,
                                         repositoryName: "__repository__"}) {
    __typename
    ... on Repository { jobs { name } }
    ... on PythonError { message }
    ... on RepositoryNotFoundError { message }
  }
}
"""


@pytest.fixture
def topology(tmp_path: Path, ml_home: Path, postgres_database: str) -> Iterator[Any]:
    servers = [
        dataclasses.replace(server, port=_free_port())
        for server in topology_module.code_servers(REPO / "workspace.yaml", LOCATIONS)
    ]
    running = topology_module.Topology(
        tmp_path / "topology",
        servers,
        topology_module.Postgres(postgres_database),
        webserver_port=_free_port(),
        environ={
            **os.environ,
            "ML_ASSETS_TRANSACTION_ROWS": TRANSACTION_ROWS,
        },
        restart_delay=0.5,
    )
    try:
        yield running
    finally:
        running.stop()
        groups = [s.process.pid for s in running.services.values() if s.process is not None]
        left = [group for group in groups if topology_module._group_alive(group)]
        assert not left, f"process groups left running: {left}"


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("deployments")  # one worker runs the deployment tests in turn
def test_a_team_survives_its_code_server_and_the_daemon_being_killed_mid_training(
    topology: Any, ml_home: Path
) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    topology.start(timeout=180)
    assert topology.location_problems() == []
    timings.update({f"start-up: {n}": s for n, s in topology.startup_seconds().items()})
    timings["start-up: all"] = time.monotonic() - began
    instance = dg.DagsterInstance.from_config(str(topology.dagster_home))
    config = yaml.safe_load((topology.dagster_home / "dagster.yaml").read_text())
    assert "postgres" in config["storage"], config["storage"]

    # Wine brings its own data; fraud reads the raw transactions that the platform location's
    # automation builds on the fresh instance.
    launched = {BYSTANDER: time.monotonic()}
    runs = {BYSTANDER: _launch(topology, BYSTANDER)}
    _wait(
        "the raw card transactions",
        lambda: instance.get_latest_materialization_event(RAW_TRANSACTIONS),
        RAW_TIMEOUT_S,
        topology,
    )
    timings["raw data (platform automation)"] = time.monotonic() - began
    launched[VICTIM] = time.monotonic()
    runs[VICTIM] = _launch(topology, VICTIM)
    submitted = _wait(
        f"{VICTIM}'s training job to be submitted",
        lambda: _submissions(instance, MODELS[VICTIM]) or None,
        SUBMIT_TIMEOUT_S,
        topology,
    )
    timings["launch to fraud job submitted"] = time.monotonic() - launched[VICTIM]
    in_progress = [
        f"{run.job_name} ({run.status.value})"
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    ]

    # Mid-flight: the job is running, nothing has recorded its model yet.
    (job,) = submitted
    state = LocalBackend().poll([job])[job.job_id].state
    assert state in {JobState.QUEUED, JobState.RUNNING}, f"the job ended before the kill: {state}"
    assert not _materializations(instance, MODELS[VICTIM].trained)
    killed = time.monotonic()
    topology.kill(VICTIM)
    topology.kill(topology_module.DAEMON)

    # The outage: fraud's code server is gone; wine's location still loads and answers.
    assert not topology_module.code_server_serving("127.0.0.1", topology.services[VICTIM].port)
    wine = topology.graphql(_REPOSITORY_JOBS, {"location": BYSTANDER})["repositoryOrError"]
    assert wine["__typename"] == "Repository", wine
    assert f"{BYSTANDER}_pipeline" in {job["name"] for job in wine["jobs"]}
    assert LocalBackend().poll([job])[job.job_id].state in {
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    }, "the training job did not outlive the code server that submitted it"

    topology.recover(timeout=120)
    _wait(
        "the webserver to load every location again",
        lambda: topology.location_problems() == [] or None,
        60,
        topology,
    )
    timings["recovery (kill to all processes answering)"] = time.monotonic() - killed
    for name in (VICTIM, topology_module.DAEMON):
        assert len(topology.services[name].starts) == 2, name
    assert len(topology.services[BYSTANDER].starts) == 1  # wine's code server never restarted

    for team, keys in MODELS.items():
        _wait(
            f"{team}'s promoted model",
            partial(instance.get_latest_materialization_event, keys.promoted),
            PROMOTED_TIMEOUT_S,
            topology,
            instance,
        )
        timings[f"launch to {team} promoted"] = time.monotonic() - launched[team]
        _wait(
            f"{team}'s serving spec",
            partial(instance.get_latest_materialization_event, keys.serving),
            60,
            topology,
        )

    for team, keys in MODELS.items():
        # Each team's pipeline run succeeded, fraud's despite its code server dying under it.
        assert _run_status(instance, runs[team]) == dg.DagsterRunStatus.SUCCESS, team
        handles = _submissions(instance, keys)
        per_key = Counter(handle.idempotency_key for handle in handles)
        assert per_key and max(per_key.values()) == 1, f"{team}: submitted twice: {per_key}"
        assert [h.idempotency_key for h in handles] == [f"{team}/{keys.model}/{runs[team]}/1"]
        job_dirs = sorted(ml_home.glob(f"jobs/{team}/*/*/handle.json"))
        assert len(job_dirs) == 1, f"{team}: {len(job_dirs)} jobs started on the backend"
        trained = _materializations(instance, keys.trained)
        assert [(m.tags or {}).get(JOB_ID_TAG) for m in trained] == [handles[0].job_id], team
        assert len(_materializations(instance, keys.promoted)) == 1, team
        # The automation runs that carried the model on are the team's own.
        promoted_run = instance.get_latest_materialization_event(keys.promoted)
        assert promoted_run is not None
        run = instance.get_run_by_id(promoted_run.run_id)
        assert run is not None and run.tags.get(TEAM_TAG) == team
        # Every run carries its location, which the run queue's per-team limits count by.
        assert run.tags.get("dagster/code_location") == team

    print(f"\nruns in progress at the kill: {', '.join(in_progress) or 'none'}")
    for run in reversed(instance.get_runs()):
        stats = instance.get_run_stats(run.run_id)
        took = (
            f"{stats.end_time - stats.start_time:5.1f}s"
            if stats.start_time and stats.end_time
            else "  ...  "
        )
        print(f"  run {run.job_name:<24} {run.status.value:<8} {took}  {run.run_id[:8]}")
    instance.dispose()
    print("production topology timings (s):")
    for name, seconds in timings.items():
        print(f"  {name:<45} {seconds:6.1f}")
    print(topology.describe())


def test_generated_files_point_at_postgres_and_one_code_server_per_location(
    tmp_path: Path,
) -> None:
    servers = topology_module.code_servers(REPO / "workspace.yaml", LOCATIONS, base_port=4100)
    assert [(s.location, s.port) for s in servers] == [
        ("platform_data", 4100),
        ("fraud", 4101),
        ("wine", 4102),
    ]
    environ = {"PATH": "/bin", "FRAUD_TOKEN": "f", "WINE_TOKEN": "w", "OTHER": "o"}
    setup = topology_module.Topology(
        tmp_path, servers, topology_module.Postgres("prod"), environ=environ
    )
    setup.write_files()
    workspace = yaml.safe_load(setup.workspace.read_text())
    assert workspace == {
        "load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": s.port, "location_name": s.location}}
            for s in servers
        ]
    }
    instance = yaml.safe_load((setup.dagster_home / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_db"]["db_name"] == "prod"
    limits = instance["concurrency"]["runs"]["tag_concurrency_limits"]
    for team in ("fraud", "wine"):
        grant = setup.policy.grant(team)
        limit = {"key": "dagster/code_location", "value": team, "limit": grant.max_concurrent_runs}
        assert limit in limits
    # A team's code server holds its own secrets only; the webserver and daemon hold none.
    env = {name: service.env for name, service in setup.services.items()}
    assert "FRAUD_TOKEN" in env["fraud"] and "WINE_TOKEN" not in env["fraud"]
    assert "WINE_TOKEN" in env["wine"] and "FRAUD_TOKEN" not in env["wine"]
    for shared in ("platform_data", "webserver", "daemon"):
        assert not {"FRAUD_TOKEN", "WINE_TOKEN"} & set(env[shared]), shared
        assert env[shared]["OTHER"] == "o"
    command = setup.services["fraud"].command
    assert command[command.index("-p") + 1] == "4101"


def test_a_location_that_is_not_a_module_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {"load_from": [{"grpc_server": {"host": "h", "port": 1, "location_name": "fraud"}}]}
        )
    )
    with pytest.raises(topology_module.TopologyError, match="not a python_module entry"):
        topology_module.code_servers(workspace)
    with pytest.raises(topology_module.TopologyError, match="no code location named 'wine'"):
        topology_module.code_servers(workspace, ["wine"])
