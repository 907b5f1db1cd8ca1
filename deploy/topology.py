#!/usr/bin/env python3
"""Dagster's production topology as plain processes on one machine, supervised.

The same parts as the Helm deployment, without Kubernetes:

- instance storage in PostgreSQL (dagster-postgres): ``<home>/dagster_home/dagster.yaml`` is
  this repository's ``dagster.yaml`` with ``storage: postgres`` and one run-queue limit per team
  location from the platform policy (``max_concurrent_runs``);
- one gRPC code server per code location (``dagster api grpc``), each its own process, so a
  team's crash or redeploy touches no other team;
- ``<home>/workspace.yaml``, generated: one ``grpc_server`` entry per code server;
- one ``dagster-webserver`` and one ``dagster-daemon`` on that workspace.

Every process runs with this Python (the environment that has ml_assets and the teams' code).
A team's code server gets only its own secrets: environment variables carrying another team's
``secret_prefix`` (from the policy) are removed from it, and the webserver and daemon get none.

The supervisor restarts a process that dies, with backoff; the webserver and daemon only once
every code server answers its health check again, because the daemon re-reads an unreachable
location only once a minute. Training in flight survives all of this: jobs run detached, and the
restarted daemon's reconciler finds them again in the event log.

Usage (the database must exist; ``createdb -h 127.0.0.1 -U postgres ml_assets``)::

    python deploy/topology.py --home /srv/ml_assets --postgres-db ml_assets
    python deploy/topology.py --home /tmp/topo --locations platform_data,fraud,wine --print

The password, if the server needs one, is read from ``$DAGSTER_PG_PASSWORD`` by Dagster itself;
it is never written into ``dagster.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ml_assets.policy import PlatformPolicy, load_policy, run_queue_limits
from ml_assets.views import PLATFORM_LOCATION, read_workspace, webserver_command

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKSPACE = REPO / "workspace.yaml"
DEFAULT_INSTANCE = REPO / "dagster.yaml"
PASSWORD_ENV = "DAGSTER_PG_PASSWORD"
# The tag Dagster puts on every run launched from a code location, naming the location.
CODE_LOCATION_TAG = "dagster/code_location"

CODE_SERVER, WEBSERVER, DAEMON = "code_server", "webserver", "daemon"
# The daemon's heartbeat that shows its sensors are evaluated: the reconcilers live there.
SENSOR_DAEMON = "SENSOR"
# A process that dies this soon after its start is crash-looping: its next restart waits longer.
_STABLE_AFTER_S = 60.0
_MAX_BACKOFF_S = 30.0

_WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
_DAEMON_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType healthy lastHeartbeatTime } } } }
"""


class TopologyError(RuntimeError):
    """The topology cannot be set up or did not come up in time, with what is wrong."""


@dataclass(frozen=True)
class Postgres:
    """Where the instance's storage lives."""

    db: str
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    def storage(self) -> dict[str, Any]:
        """The ``storage:`` block of dagster.yaml; the password stays in the environment."""
        password: Any = {"env": PASSWORD_ENV} if os.environ.get(PASSWORD_ENV) else ""
        return {
            "postgres": {
                "postgres_db": {
                    "hostname": self.host,
                    "port": self.port,
                    "username": self.user,
                    "password": password,
                    "db_name": self.db,
                }
            }
        }


@dataclass(frozen=True)
class CodeServer:
    """One code location served over gRPC."""

    location: str
    module: str
    port: int


def code_servers(
    workspace: Path, locations: Iterable[str] | None = None, base_port: int = 4000
) -> list[CodeServer]:
    """One code server per location of ``workspace`` (or of ``locations``, in that order), on
    consecutive ports from ``base_port``. Each location must be a ``python_module`` entry."""
    entries = read_workspace(workspace)
    names = list(locations) if locations is not None else list(entries)
    servers = []
    for offset, name in enumerate(names):
        entry = entries.get(name)
        if entry is None:
            raise TopologyError(
                f"{workspace}: no code location named {name!r} (locations: {', '.join(entries)})"
            )
        target = entry.get("python_module")
        if isinstance(target, str):
            target = {"module_name": target}
        if not isinstance(target, dict) or not target.get("module_name"):
            raise TopologyError(
                f"{workspace}: location {name!r} is not a python_module entry; a code server "
                "needs the module that holds its Definitions"
            )
        servers.append(CodeServer(name, str(target["module_name"]), base_port + offset))
    return servers


def grpc_workspace(servers: Iterable[CodeServer], host: str) -> dict[str, Any]:
    """The workspace that points the webserver and daemon at the running code servers."""
    return {
        "load_from": [
            {"grpc_server": {"host": host, "port": s.port, "location_name": s.location}}
            for s in servers
        ]
    }


def instance_config(
    base: Path, postgres: Postgres, policy: PlatformPolicy, teams: list[str]
) -> dict[str, Any]:
    """``base`` (the repository's dagster.yaml) on PostgreSQL, with each team's run limit."""
    config: dict[str, Any] = yaml.safe_load(base.read_text()) or {}
    config["storage"] = postgres.storage()
    runs = config.setdefault("concurrency", {}).setdefault("runs", {})
    limits = runs.setdefault("tag_concurrency_limits", [])
    # By location, as the Helm values do: Dagster tags every run with its code location, so
    # the limit holds for "Materialize all" runs too, which carry no team tag.
    limits.extend(run_queue_limits(policy, teams, key=CODE_LOCATION_TAG))
    return config


def scoped_environment(
    environ: Mapping[str, str], policy: PlatformPolicy, team: str | None
) -> dict[str, str]:
    """``environ`` without the secrets of teams other than ``team`` (None: of every team)."""
    own = policy.grant(team).secret_prefix if team else None
    foreign = [
        grant.secret_prefix
        for name, grant in policy.teams.items()
        if grant.secret_prefix and name != team
    ]
    return {
        name: value
        for name, value in environ.items()
        if (own and name.startswith(own)) or not any(name.startswith(p) for p in foreign)
    }


@dataclass
class Start:
    """One start of a process: when it began (monotonic) and when it answered."""

    at: float
    ready_at: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.at


@dataclass
class Service:
    """A supervised process of the topology."""

    name: str
    kind: str
    command: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: list[Start] = field(default_factory=list)
    exits: list[tuple[float, int]] = field(default_factory=list)
    restart_due: float | None = None
    backoff: float = 0.0
    stopped: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def ready(self) -> bool:
        return self.alive() and bool(self.starts) and self.starts[-1].ready_at is not None


class Topology:
    """The processes, the files they read, and their supervision."""

    def __init__(
        self,
        home: Path,
        servers: list[CodeServer],
        postgres: Postgres,
        *,
        host: str = "127.0.0.1",
        webserver_port: int = 3000,
        base_instance: Path = DEFAULT_INSTANCE,
        policy_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        restart_delay: float = 1.0,
    ) -> None:
        self.home = home.resolve()
        self.servers = servers
        self.postgres = postgres
        self.host = host
        self.webserver_port = webserver_port
        self.base_instance = base_instance
        self.policy = load_policy(policy_path)
        self.restart_delay = restart_delay
        self.dagster_home = self.home / "dagster_home"
        self.workspace = self.home / "workspace.yaml"
        self.logs = self.home / "logs"
        base_env = dict(os.environ if environ is None else environ)
        base_env.setdefault("ML_ASSETS_HOME", str(self.home / "ml_assets"))
        base_env.update({"DAGSTER_HOME": str(self.dagster_home), "PYTHONUNBUFFERED": "1"})
        self.services = self._services(base_env)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.webserver_port}"

    @property
    def teams(self) -> list[str]:
        return [s.location for s in self.servers if s.location != PLATFORM_LOCATION]

    def _services(self, env: dict[str, str]) -> dict[str, Service]:
        python = sys.executable
        services = {}
        for server in self.servers:
            team = server.location if server.location != PLATFORM_LOCATION else None
            services[server.location] = Service(
                name=server.location,
                kind=CODE_SERVER,
                command=[
                    python,
                    "-m",
                    "dagster",
                    "api",
                    "grpc",
                    "-m",
                    server.module,
                    "-h",
                    self.host,
                    "-p",
                    str(server.port),
                    "--location-name",
                    server.location,
                    # Runs this server launches use this Python, not whatever `dagster` is first
                    # on PATH.
                    "--use-python-environment-entry-point",
                ],
                env=scoped_environment(env, self.policy, team),
                log=self.logs / f"code_server.{server.location}.log",
                port=server.port,
            )
        shared = scoped_environment(env, self.policy, None)
        services[WEBSERVER] = Service(
            name=WEBSERVER,
            kind=WEBSERVER,
            command=webserver_command(
                self.workspace, host=self.host, port=self.webserver_port, read_only=False
            ),
            env=shared,
            log=self.logs / "webserver.log",
            port=self.webserver_port,
        )
        services[DAEMON] = Service(
            name=DAEMON,
            kind=DAEMON,
            command=[python, "-m", "dagster._daemon", "run", "-w", str(self.workspace)],
            env=shared,
            log=self.logs / "daemon.log",
        )
        return services

    # --- files -------------------------------------------------------------------------------

    def write_files(self) -> None:
        """Write the instance's dagster.yaml and the gRPC workspace."""
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        config = instance_config(self.base_instance, self.postgres, self.policy, self.teams)
        (self.dagster_home / "dagster.yaml").write_text(
            "# Generated by deploy/topology.py from "
            + str(self.base_instance)
            + "\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        self.workspace.write_text(
            "# Generated by deploy/topology.py: one gRPC code server per location.\n"
            + yaml.safe_dump(grpc_workspace(self.servers, self.host), sort_keys=False)
        )

    # --- processes ---------------------------------------------------------------------------

    def start_service(self, name: str) -> None:
        service = self.services[name]
        service.log.parent.mkdir(parents=True, exist_ok=True)
        with service.log.open("ab") as log:
            log.write(
                f"\n--- start {time.strftime('%H:%M:%S')}: {' '.join(service.command)}\n".encode()
            )
            log.flush()
            service.process = subprocess.Popen(
                service.command,
                cwd=self.home,
                env=service.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so stopping it stops the run workers it started.
                start_new_session=True,
            )
        service.starts.append(Start(time.monotonic()))
        service.restart_due = None
        service.stopped = False

    def start(self, timeout: float = 180.0) -> None:
        """Write the files and start everything: the code servers first, then the webserver and
        daemon once every code server answers. Raises if it is not all up within ``timeout``."""
        self.write_files()
        for server in self.servers:
            self.start_service(server.location)
        deadline = time.monotonic() + timeout
        self.wait_ready([s.location for s in self.servers], deadline)
        self.start_service(WEBSERVER)
        self.start_service(DAEMON)
        self.wait_ready([WEBSERVER, DAEMON], deadline)

    def wait_ready(self, names: list[str], deadline: float) -> None:
        while True:
            self.probe()
            pending = [name for name in names if not self.services[name].ready]
            if not pending:
                return
            for name in pending:
                service = self.services[name]
                if not service.alive() and not service.stopped:
                    raise TopologyError(f"{name} exited at start; log tail:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise TopologyError(f"not ready in time: {', '.join(pending)}")
            time.sleep(0.25)

    def probe(self) -> None:
        """Mark the processes that answer as ready."""
        for service in self.services.values():
            if not service.alive() or not service.starts or service.starts[-1].ready_at:
                continue
            if self._answers(service):
                service.starts[-1].ready_at = time.monotonic()

    def _answers(self, service: Service) -> bool:
        if service.kind == CODE_SERVER:
            assert service.port is not None
            return code_server_serving(self.host, service.port)
        if service.kind == WEBSERVER:
            problems = self.location_problems()
            return problems is not None and not problems
        return self.daemon_heartbeat_after(service.starts[-1].at)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the process alone (not its group): a crash, for the supervisor."""
        service = self.services[name]
        if service.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.process.pid, signum)
            service.process.wait(timeout=30)

    def supervise_once(self) -> list[str]:
        """One round of supervision: note exits, restart what is due; the names restarted."""
        now = time.monotonic()
        self.probe()
        code_servers_up = all(self.services[s.location].ready for s in self.servers)
        restarted = []
        for service in self.services.values():
            if service.stopped or service.process is None or service.alive():
                continue
            if service.restart_due is None:
                code = service.process.returncode
                service.exits.append((now, code))
                lived = now - service.starts[-1].at
                service.backoff = (
                    self.restart_delay
                    if lived > _STABLE_AFTER_S or not service.backoff
                    else min(service.backoff * 2, _MAX_BACKOFF_S)
                )
                service.restart_due = now + service.backoff
                print(
                    f"[topology] {service.name} exited with {code} after {lived:.1f}s; "
                    f"restarting in {service.backoff:.1f}s",
                    flush=True,
                )
            if now < service.restart_due:
                continue
            if service.kind != CODE_SERVER and not code_servers_up:
                continue
            self.start_service(service.name)
            restarted.append(service.name)
        return restarted

    def recover(self, timeout: float = 180.0) -> None:
        """Supervise until every process is up again."""
        deadline = time.monotonic() + timeout
        while True:
            self.supervise_once()
            if all(s.ready for s in self.services.values()):
                return
            if time.monotonic() > deadline:
                pending = [s.name for s in self.services.values() if not s.ready]
                raise TopologyError(f"not recovered in time: {', '.join(pending)}")
            time.sleep(0.25)

    def stop(self, grace: float = 20.0) -> None:
        """Stop every process group: SIGTERM, then SIGKILL what is left after ``grace``."""
        for service in self.services.values():
            service.stopped = True
        groups = [s.process.pid for s in self.services.values() if s.process is not None]
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services.values():
            if service.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.2)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for service in self.services.values():
            if service.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    service.process.wait(timeout=10)

    # --- what the webserver says -------------------------------------------------------------

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL request to the webserver; raises on errors."""
        return graphql(self.url, query, variables)

    def location_problems(self) -> list[str] | None:
        """Why a location is not loaded in the webserver (empty: all are); None: no answer."""
        try:
            workspace = self.graphql(_WORKSPACE_QUERY)["workspaceOrError"]
        except (OSError, GraphQLError):
            return None
        if workspace["__typename"] != "Workspace":
            return [f"workspace: {workspace}"]
        entries = {entry["name"]: entry for entry in workspace["locationEntries"]}
        problems = []
        for server in self.servers:
            entry = entries.get(server.location)
            loaded = (entry or {}).get("locationOrLoadError") or {}
            if entry is None:
                problems.append(f"{server.location}: not in the workspace")
            elif loaded.get("__typename") != "RepositoryLocation":
                problems.append(f"{server.location}: {entry['loadStatus']} {loaded}")
        return problems

    def daemon_heartbeat_after(self, started: float) -> bool:
        """Whether the sensor daemon has sent a heartbeat since ``started`` (monotonic)."""
        since = time.time() - (time.monotonic() - started)
        try:
            health = self.graphql(_DAEMON_QUERY)["instance"]["daemonHealth"]
        except (OSError, GraphQLError):
            return False
        for status in health["allDaemonStatuses"]:
            if status["daemonType"] == SENSOR_DAEMON:
                return bool(status["healthy"]) and (status["lastHeartbeatTime"] or 0) > since
        return False

    # --- reporting ---------------------------------------------------------------------------

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.services[name].log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def startup_seconds(self) -> dict[str, float | None]:
        """Seconds from start to answering, of each process's first start."""
        return {
            name: s.starts[0].seconds if s.starts else None for name, s in self.services.items()
        }

    def describe(self) -> str:
        """The files and commands, for a reader who wants to run them by hand."""
        lines = [
            f"DAGSTER_HOME={self.dagster_home}",
            f"ML_ASSETS_HOME={self.services[DAEMON].env.get('ML_ASSETS_HOME')}",
            f"workspace: {self.workspace}",
        ]
        lines += [f"{s.name}: {' '.join(s.command)}" for s in self.services.values()]
        return "\n".join(lines)


class GraphQLError(RuntimeError):
    """The webserver answered with GraphQL errors."""


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        document: dict[str, Any] = json.load(response)
    if document.get("errors"):
        raise GraphQLError(json.dumps(document["errors"]))
    data: dict[str, Any] = document["data"]
    return data


def code_server_serving(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the code server answers the gRPC health check as serving."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="folder for the generated files")
    parser.add_argument("-w", "--workspace", type=Path, default=DEFAULT_WORKSPACE)
    parser.add_argument("--instance", type=Path, default=DEFAULT_INSTANCE, help="base dagster.yaml")
    parser.add_argument("--locations", help="comma-separated location names (default: all)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--webserver-port", type=int, default=3000)
    parser.add_argument("--code-server-port", type=int, default=4000, help="first gRPC port")
    parser.add_argument("--policy", type=Path, help="the platform policy file")
    parser.add_argument("--postgres-host", default="127.0.0.1")
    parser.add_argument("--postgres-port", type=int, default=5432)
    parser.add_argument("--postgres-user", default="postgres")
    parser.add_argument("--postgres-db", default="ml_assets")
    parser.add_argument(
        "--print",
        dest="dry_run",
        action="store_true",
        help="write the files and print the commands; start nothing",
    )
    args = parser.parse_args(argv)
    locations = args.locations.split(",") if args.locations else None
    topology = Topology(
        args.home,
        code_servers(args.workspace, locations, args.code_server_port),
        Postgres(args.postgres_db, args.postgres_host, args.postgres_port, args.postgres_user),
        host=args.host,
        webserver_port=args.webserver_port,
        base_instance=args.instance,
        policy_path=args.policy,
    )
    if args.dry_run:
        topology.write_files()
        print(topology.describe())
        return 0
    # SIGTERM (a service manager's stop) ends the loop the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        topology.start()
        for name, seconds in topology.startup_seconds().items():
            print(f"[topology] {name} up in {seconds:.1f}s", flush=True)
        print(f"[topology] webserver: {topology.url}", flush=True)
        while True:
            topology.supervise_once()
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except TopologyError as error:
        print(f"[topology] {error}", file=sys.stderr)
        return 1
    finally:
        topology.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
