"""Harnesses for the shared backend contract suite (``test_contract.py``).

Every backend is tested by the same contract tests through a ``BackendHarness``. To add a
backend, write a module ``harness_<backend>.py`` here with a fixture named ``<backend>_harness``
that yields its harness (its backend object plus whatever fake server it needs); the tests need
no change.

What the contract tests assume of every harness:

- jobs really run their ``command`` as local subprocesses (fakes of remote services included),
  so commands can write files the test then reads and processes the test can look up by pid;
- a job sees ``$ML_ASSETS_OUTPUT_URI`` as where its output goes (a local directory for a
  staged job, the output location itself for an unstaged one) and can write there with
  ``ml_assets.transport``; a finished job's ``status.result_uri`` is its output location, which
  the test reads with ``ml_assets.transport`` too;
- ``make_spec`` gives each distinct key its own output location.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ml_assets_testing.harness import BackendHarness, adopt_fixtures

from ml_assets.backends.base import Backend, JobHandle, JobSpec, JobStatus
from ml_assets.backends.local import LocalBackend

# Fixture names of every harness the contract suite runs against: local, then every fixture
# named ``*_harness`` in a ``harness_*.py`` module of this directory.
HARNESS_FIXTURES: list[str] = [
    "local_harness",
    *adopt_fixtures(globals(), Path(__file__).parent, "harness_", "_harness"),
]


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


@pytest.fixture
def local_harness(tmp_path: Path) -> Iterator[BackendHarness]:
    """The local backend, with one directory per job under ``tmp_path``."""
    jobs_root = tmp_path / "jobs"
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def make_spec(command: list[str], key: str) -> JobSpec:
        return JobSpec(
            team="contract",
            model="local",
            command=command,
            output_uri=str(jobs_root / _slug(key)),
            idempotency_key=key,
        )

    yield BackendHarness(
        name="local",
        backend=LocalBackend(),
        new_backend=LocalBackend,
        make_spec=make_spec,
        scratch=scratch,
    )
    # Leave no job running behind a test, whatever it did.
    cleaner = LocalBackend(cancel_grace_seconds=1.0)
    for handle_file in jobs_root.glob("*/handle.json"):
        cleaner.cancel(JobHandle.from_json(handle_file.read_text()))


@pytest.fixture(params=HARNESS_FIXTURES)
def harness(request: pytest.FixtureRequest) -> BackendHarness:
    """Each registered backend harness in turn."""
    value: BackendHarness = request.getfixturevalue(request.param)
    return value


WaitFor = Callable[..., dict[str, JobStatus]]


@pytest.fixture
def wait_for() -> WaitFor:
    """A helper that polls handles (in one batched call per round) until a condition holds.

    ``wait_for(backend, handles, until=<predicate on JobStatus>, timeout=60.0)`` returns the
    final statuses once every handle satisfies ``until`` (default: a terminal state), and fails
    the test with the last statuses seen if the timeout passes first.
    """

    def wait(
        backend: Backend,
        handles: list[JobHandle],
        until: Callable[[JobStatus], bool] = lambda status: status.state.is_terminal,
        timeout: float = 60.0,
    ) -> dict[str, JobStatus]:
        deadline = time.monotonic() + timeout
        while True:
            statuses = backend.poll(handles)
            if all(h.job_id in statuses and until(statuses[h.job_id]) for h in handles):
                return statuses
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s; last statuses: {statuses}")
            time.sleep(0.1)

    return wait


@pytest.fixture
def pid_gone() -> Callable[[int], bool]:
    """``pid_gone(pid)``: the process has exited (a zombie nobody reaped counts as exited)."""

    def gone(pid: int) -> bool:
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return True
        state = raw[raw.rfind(b")") + 2 :].split()[0]
        return state in (b"Z", b"X")

    return gone


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(condition, timeout=10.0, what=...)``: poll a no-argument predicate."""

    def wait(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
            time.sleep(0.05)

    return wait
