"""Team-scoped views: ``ml-assets view <team>`` serves the team's location and the platform data
only, read-only when the platform policy says so."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_assets.audit import main as ml_assets_main
from ml_assets.views import (
    PLATFORM_LOCATION,
    WorkspaceError,
    read_workspace,
    team_workspace,
    write_team_workspace,
)
from ml_assets_tests.conftest import write_policy

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "workspace.yaml"
STARTUP_TIMEOUT_S = 180.0

_LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
_LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on Error { message }
  }
}
"""


def _policy(tmp_path: Path, read_only_teams: set[str]) -> Path:
    return write_policy(
        tmp_path / "platform.yaml",
        {"teams": {team: {"ui_read_only": True} for team in sorted(read_only_teams)}},
    )


def test_the_view_holds_exactly_the_team_and_the_platform_data(tmp_path: Path) -> None:
    source = read_workspace(WORKSPACE)
    teams = [name for name in source if name != PLATFORM_LOCATION]
    assert len(teams) >= 2
    for team in teams:
        written = write_team_workspace(WORKSPACE, team, tmp_path / f"{team}.yaml")
        entries = yaml.safe_load(written.read_text())["load_from"]
        assert entries == [source[PLATFORM_LOCATION], source[team]]
        assert [e["python_module"]["location_name"] for e in entries] == [PLATFORM_LOCATION, team]


def test_relative_files_still_resolve_from_the_written_view(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"python_file": {"relative_path": "raw.py", "location_name": "platform_data"}},
                    {"python_file": "teams/ads.py"},
                    {"grpc_server": {"host": "h", "port": 4001, "location_name": "payments"}},
                ]
            }
        )
    )
    entries = read_workspace(project / "workspace.yaml")
    assert set(entries) == {"platform_data", "teams/ads.py", "payments"}
    view = team_workspace(entries, "payments", project / "workspace.yaml")["load_from"]
    assert view[0] == {
        "python_file": {"relative_path": str(project / "raw.py"), "location_name": "platform_data"}
    }
    assert view[1] == {"grpc_server": {"host": "h", "port": 4001, "location_name": "payments"}}
    assert entries["teams/ads.py"]["python_file"]["relative_path"] == str(project / "teams/ads.py")


def test_an_unknown_team_names_the_workspace_and_its_locations(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as error:
        write_team_workspace(WORKSPACE, "payments", tmp_path / "x.yaml")
    message = str(error.value)
    assert str(WORKSPACE) in message and "'payments'" in message and "fraud" in message
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    ("policy_read_only", "flag", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_the_policy_decides_read_only_and_the_flag_only_narrows(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    policy_read_only: bool,
    flag: bool,
    expected: bool,
) -> None:
    policy = _policy(tmp_path, {"wine"} if policy_read_only else set())
    out = tmp_path / "view.yaml"
    argv = ["view", "wine", "-w", str(WORKSPACE), "--policy", str(policy), "--out", str(out)]
    argv += ["-p", "3999", "--print"] + (["--read-only"] if flag else [])
    assert ml_assets_main(argv) == 0
    command = capsys.readouterr().out.split()
    assert command[command.index("-w") + 1] == str(out)
    assert command[command.index("-p") + 1] == "3999"
    assert ("--read-only" in command) is expected


def test_a_bad_policy_stops_the_view_with_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "platform.yaml"
    policy.write_text("teams:\n  wine:\n    ui_read_only: maybe\n")
    argv = ["view", "wine", "-w", str(WORKSPACE), "--policy", str(policy), "--print"]
    assert ml_assets_main([*argv, "--out", str(tmp_path / "v.yaml")]) == 2
    assert str(policy) in capsys.readouterr().err


# --- a real webserver started by `ml-assets view` ---------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class View:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        import json

        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            document: dict[str, Any] = json.load(response)
        assert not document.get("errors"), document["errors"]
        data: dict[str, Any] = document["data"]
        return data

    def locations(self) -> dict[str, str] | None:
        try:
            workspace = self.graphql(_LOCATIONS)["workspaceOrError"]
        except (OSError, urllib.error.URLError):
            return None
        return {
            entry["name"]: (entry["locationOrLoadError"] or {}).get("__typename", "")
            for entry in workspace["locationEntries"]
        }

    def launch(self, location: str, job: str) -> dict[str, Any]:
        selector = {"repositoryLocationName": location, "repositoryName": "__repository__"}
        params = {"selector": {**selector, "jobName": job}, "runConfigData": {}}
        result: dict[str, Any] = self.graphql(_LAUNCH, {"params": params})["launchRun"]
        return result


@contextlib.contextmanager
def _view(tmp_path: Path, team: str, read_only_teams: set[str]) -> Iterator[View]:
    """``ml-assets view <team>`` as a user runs it, on a fresh SQLite instance."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "ML_ASSETS_HOME": str(tmp_path / "ml_home"),
        "ML_ASSETS_POLICY": str(_policy(tmp_path, read_only_teams)),
    }
    log = tmp_path / "view.log"
    command = [sys.executable, "-m", "ml_assets.audit", "view", team, "-w", str(WORKSPACE)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "-p", str(port)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    view = View(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            loaded = view.locations()
            if loaded and all(kind == "RepositoryLocation" for kind in loaded.values()):
                break
            assert process.poll() is None, log.read_text()[-3000:]
            if time.monotonic() > deadline:
                pytest.fail(f"the view never loaded: {loaded}\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield view
    finally:
        # The webserver exec'd in place of `ml-assets`, and its code servers share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
def test_the_view_serves_only_its_two_locations_and_launches_as_the_policy_says(
    tmp_path: Path, read_only: bool
) -> None:
    with _view(tmp_path, "wine", {"wine"} if read_only else set()) as view:
        assert view.locations() == {
            PLATFORM_LOCATION: "RepositoryLocation",
            "wine": "RepositoryLocation",
        }
        other = view.launch("fraud", "fraud_pipeline")
        launched = view.launch("wine", "wine_pipeline")
        if read_only:
            assert other["__typename"] == "UnauthorizedError", other
            assert launched["__typename"] == "UnauthorizedError", launched
        else:
            # Another team's job is not there to launch.
            assert other["__typename"] == "PipelineNotFoundError", other
            # No daemon runs beside a view: the run waits in the instance's queue.
            assert launched["__typename"] == "LaunchRunSuccess", launched
            assert launched["run"]["status"] == "QUEUED"
        mode = "read-only" if read_only else "read-write"
        assert f"wine + {PLATFORM_LOCATION} ({mode})" in view.log.read_text()
