"""Fixtures for the web UI tests: a real ``dagster dev`` and headless Debian Chromium.

``dagster_dev`` starts the repository's own ``workspace.yaml`` under ``dagster dev`` on a free
loopback port, with a fresh ``DAGSTER_HOME`` and ``ML_ASSETS_HOME`` under the test's tmp dir,
and waits until every code location has loaded. On teardown it stops the whole process group
(webserver, daemon, code servers) and cancels any training job still running, so nothing is
left behind. The server's output goes to ``dagster_dev.log``; its tail is attached to the
report of a failed test.

``page`` is a Playwright page in headless Chromium. Playwright's own browser download is not
used: the tests drive Debian's ``/usr/bin/chromium``. Without it the UI tests are skipped
locally, and fail when ``CI`` is set (CI installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, ViewportSize, sync_playwright

from ml_assets.backends._local_runner import HANDLE_FILE, read_json
from ml_assets.backends.base import JobHandle
from ml_assets.backends.local import LocalBackend

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = REPO_ROOT / "workspace.yaml"
INSTANCE_CONFIG = REPO_ROOT / "dagster.yaml"
CHROMIUM = Path("/usr/bin/chromium")
# No internet here or in CI: keep Chromium from phoning home (and flooding refused connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TRANSACTION_ROWS = "20000"
# dagster dev loads every location before its webserver answers; on 2 busy cores that took
# over 120 s once.
STARTUP_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 1.0
SHUTDOWN_GRACE_S = 30.0
LOG_TAIL_LINES = 80
VIEWPORT: ViewportSize = {"width": 2400, "height": 1400}

_LOG_PATH_KEY = pytest.StashKey[Path]()
_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
# Dagster's first-visit "Join the Dagster community" dialog, shown once per fresh instance.
COMMUNITY_DIALOG_TEXT = "Join the Dagster community"

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


class GraphQLError(RuntimeError):
    """The webserver answered a GraphQL request with errors."""


@dataclass
class DagsterDev:
    """A running ``dagster dev`` and the directories it was started with."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    dagster_home: Path
    ml_home: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of one GraphQL request to the webserver; raises on any GraphQL error."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            document: dict[str, Any] = json.load(response)
        if document.get("errors"):
            raise GraphQLError(json.dumps(document["errors"], indent=2))
        data: dict[str, Any] = document["data"]
        return data

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's combined stdout and stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def ensure_running(self) -> None:
        """Fail the test at once, with the server's log, if ``dagster dev`` has exited."""
        code = self.process.poll()
        if code is not None:
            pytest.fail(
                f"dagster dev exited with code {code}; log tail:\n{self.log_tail()}",
                pytrace=False,
            )


def workspace_location_names(workspace: Path = WORKSPACE) -> set[str]:
    """The code location names that ``workspace.yaml`` declares."""
    document = yaml.safe_load(workspace.read_text())
    names = set()
    for entry in document["load_from"]:
        (target,) = entry.values()
        names.add(target["location_name"])
    return names


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _dagster_dev_command(port: int, workspace: Path) -> list[str]:
    script = Path(sys.executable).with_name("dagster")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "dagster"]
    return [*launcher, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]


def _restore_default_signals() -> None:
    # A test run started in the background by a non-interactive shell ignores SIGINT, and an
    # ignored signal stays ignored across exec; dagster dev would then ignore our Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _server_is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _location_problems(dev: DagsterDev, expected: set[str]) -> list[str]:
    """Why the workspace is not fully loaded yet; empty once every location is."""
    try:
        workspace = dev.graphql(WORKSPACE_QUERY)["workspaceOrError"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, GraphQLError) as exc:
        return [f"workspace query failed: {exc!r}"]
    if workspace["__typename"] != "Workspace":
        return [f"workspace error: {workspace.get('message')}"]
    entries = {entry["name"]: entry for entry in workspace["locationEntries"]}
    problems = [f"{name}: not in the workspace" for name in sorted(expected - set(entries))]
    for name, entry in sorted(entries.items()):
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            problems.append(f"{name}: failed to load: {loaded.get('message')}")
        elif entry["loadStatus"] != "LOADED" or loaded.get("__typename") != "RepositoryLocation":
            problems.append(f"{name}: {entry['loadStatus']}")
    return problems


def _wait_until_loaded(dev: DagsterDev, expected: set[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _server_is_up(dev.url):
        dev.ensure_running()
        if time.monotonic() > deadline:
            pytest.fail(f"{dev.url}/server_info never answered; log tail:\n{dev.log_tail()}")
        time.sleep(POLL_INTERVAL_S)
    problems = _location_problems(dev, expected)
    while problems:
        dev.ensure_running()
        if any("failed to load" in problem for problem in problems):
            pytest.fail(f"code location(s) failed to load: {problems}\n{dev.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"code locations not loaded in time: {problems}\n{dev.log_tail()}")
        time.sleep(POLL_INTERVAL_S)
        problems = _location_problems(dev, expected)


def _live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies waiting to be reaped are not)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces.
        fields = text[text.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _wait_for_group_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()
        if process.returncode is not None and not _live_group_members(process.pid):
            return True
        time.sleep(0.2)
    process.poll()
    return process.returncode is not None and not _live_group_members(process.pid)


def _stop_dagster_dev(process: subprocess.Popen[bytes]) -> str | None:
    """Ctrl-C the whole process group, then SIGTERM, then SIGKILL; a note if it needed force."""
    pgid = process.pid  # start_new_session: the dagster dev process leads its own group
    _signal_group(pgid, signal.SIGINT)
    if _wait_for_group_exit(process, SHUTDOWN_GRACE_S):
        return None
    _signal_group(pgid, signal.SIGTERM)
    if _wait_for_group_exit(process, 10.0):
        return f"dagster dev needed SIGTERM after {SHUTDOWN_GRACE_S:.0f}s of SIGINT"
    _signal_group(pgid, signal.SIGKILL)
    _wait_for_group_exit(process, 10.0)
    return "dagster dev ignored SIGINT and SIGTERM and was killed"


def _cancel_training_jobs(ml_home: Path) -> list[str]:
    """Cancel the training jobs under ``ml_home`` that are still running; their ids."""
    backend = LocalBackend()
    handles = []
    for handle_file in sorted((ml_home / "jobs").glob(f"**/{HANDLE_FILE}")):
        document = read_json(handle_file)
        if document is not None:
            handle = JobHandle.model_validate(document)
            if handle.backend == backend.name:
                handles.append(handle)
    statuses = backend.poll(handles) if handles else {}
    cancelled = []
    for handle in handles:
        status = statuses.get(handle.job_id)
        if status is None or not status.state.is_terminal:
            backend.cancel(handle)
            cancelled.append(handle.job_id)
    return cancelled


@pytest.fixture
def workspace_file() -> Path:
    """The workspace ``dagster dev`` loads; a test module may override this fixture."""
    return WORKSPACE


@pytest.fixture
def extra_pythonpath() -> list[str]:
    """Folders added to ``PYTHONPATH`` for ``dagster dev`` and its jobs (for test-made teams)."""
    return []


@pytest.fixture
def dagster_dev(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    workspace_file: Path,
    extra_pythonpath: list[str],
) -> Iterator[DagsterDev]:
    """``dagster dev`` on a workspace (this repository's by default), on a fresh instance,
    fully loaded."""
    if getattr(request.config.option, "loadgroup", False):  # set on xdist workers
        # pytest-xdist marks a grouped test by suffixing its node id; a pytest it does not
        # support drops the suffix, and the UI tests would then run side by side.
        assert request.node.nodeid.endswith("@deployments"), (
            f"{request.node.nodeid} is not in the xdist group 'deployments': two dagster devs "
            "could run at once (pytest-xdist's loadgroup is not working with this pytest)"
        )
    with running_dagster_dev(tmp_path, workspace_file, extra_pythonpath) as dev:
        request.node.stash[_LOG_PATH_KEY] = dev.log_path
        yield dev


@contextlib.contextmanager
def running_dagster_dev(
    tmp_path: Path, workspace_file: Path, extra_pythonpath: list[str]
) -> Iterator[DagsterDev]:
    """``dagster dev`` on ``workspace_file`` with a fresh instance under ``tmp_path``, fully
    loaded; stopped, with its training jobs, on exit."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(INSTANCE_CONFIG, dagster_home / "dagster.yaml")
    ml_home = tmp_path / "ml_home"
    ml_home.mkdir()
    log_path = tmp_path / "dagster_dev.log"
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "ML_ASSETS_HOME": str(ml_home),
        "ML_ASSETS_TRANSACTION_ROWS": TRANSACTION_ROWS,
        "PYTHONUNBUFFERED": "1",
    }
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*extra_pythonpath, env.get("PYTHONPATH", "")])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _dagster_dev_command(port, workspace_file),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_default_signals,
        )
    dev = DagsterDev(
        url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
        dagster_home=dagster_home,
        ml_home=ml_home,
    )
    try:
        _wait_until_loaded(dev, workspace_location_names(workspace_file))
        yield dev
    finally:
        note = _stop_dagster_dev(process)
        cancelled = _cancel_training_jobs(ml_home)
        leftovers = _live_group_members(process.pid)
        if note:
            print(f"[dagster_dev] {note}")
        if cancelled:
            print(f"[dagster_dev] cancelled training jobs at teardown: {cancelled}")
        assert not leftovers, f"dagster dev left processes behind: {leftovers}"


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's Chromium; skipped locally when missing, a failure under ``CI``."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = (
        f"{CHROMIUM} not found; the UI tests drive Debian's Chromium "
        "(`apt-get install -y chromium`)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def page(chromium_path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page in headless Chromium, with generous default timeouts.

    Dagster's one-time community dialog is skipped whenever it shows up, and a screenshot of
    the page is saved as ``failure.png`` when the test fails.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport=VIEWPORT)
            new_page = context.new_page()
            new_page.set_default_timeout(30_000)
            community = new_page.get_by_role("dialog").filter(has_text=COMMUNITY_DIALOG_TEXT)
            new_page.add_locator_handler(
                community, lambda: community.get_by_role("button", name="Skip").click()
            )
            yield new_page
            call = request.node.stash.get(_REPORTS_KEY, {}).get("call")
            if call is not None and call.failed:
                failure = tmp_path / "failure.png"
                new_page.screenshot(path=str(failure), full_page=True)
                print(f"[page] screenshot of the failed test: {failure}")
        finally:
            browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Keep each phase's report for the fixtures, and attach the ``dagster dev`` log tail to
    the report of a failed UI test."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS_KEY, {})[report.when] = report
    log_path = item.stash.get(_LOG_PATH_KEY, None)
    if report.failed and log_path is not None and log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append((f"dagster dev log tail ({log_path})", "\n".join(lines)))
