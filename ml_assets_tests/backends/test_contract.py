"""The backend contract, run against every harness in ``conftest.HARNESS_FIXTURES``.

Jobs are real subprocesses running small Python programs: they write a file into
``$ML_ASSETS_OUTPUT_URI``, report their environment, sleep, wait for a file, or raise. A job that
exits 0 is succeeded with ``result_uri`` = its output location (what it produced is for its
Pipes messages, read by the reconciler, to say), which the tests read through
``ml_assets.transport``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dagster_pipes import encode_param
from ml_assets_testing.job_scripts import (
    OUTPUT_FILE,
    py,
    python_file,
    wait_for_file,
    write_env,
    write_output,
)

from ml_assets import transport
from ml_assets.backends.base import Backend, JobHandle, JobState, JobStatus

if TYPE_CHECKING:
    from conftest import BackendHarness, WaitFor

pytestmark = pytest.mark.timeout(60)


def append_line(path: Path) -> str:
    return f"open({str(path)!r}, 'a').write('ran\\n')"


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def active(status: JobStatus) -> bool:
    return status.state in (JobState.QUEUED, JobState.RUNNING)


def read_output(status: JobStatus, name: str = OUTPUT_FILE) -> object:
    """The JSON document ``name`` in a finished job's output location."""
    assert status.result_uri is not None, status
    return transport.read_json(transport.join(status.result_uri, name))


def stays_equal(read: Callable[[], object], expected: object, seconds: float = 0.5) -> bool:
    """Whether ``read()`` keeps returning ``expected`` for ``seconds`` (catches late re-runs)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if read() != expected:
            return False
        time.sleep(0.05)
    return read() == expected


def test_submit_runs_to_success_and_the_output_reads_back(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    key = new_key("success")
    spec = harness.make_spec(py(write_output({"key": key, "accuracy": 0.93})), key)

    handle = harness.backend.submit(spec)

    assert handle.backend == harness.backend.name
    assert handle.idempotency_key == key
    assert JobHandle.from_json(handle.to_json()) == handle
    status = wait_for(harness.backend, [handle])[handle.job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    assert status.job_id == handle.job_id
    assert status.result_uri == handle.output_uri == spec.output_uri
    assert read_output(status) == {"key": key, "accuracy": 0.93}


def test_same_key_twice_returns_same_handle_and_runs_once(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    key = new_key("twice")
    counter = harness.scratch / "runs.txt"
    spec = harness.make_spec(py(append_line(counter), write_output({"ok": True})), key)

    first = harness.backend.submit(spec)
    second = harness.backend.submit(spec)
    from_another_object = harness.new_backend().submit(spec)

    assert first == second == from_another_object
    status = wait_for(harness.backend, [first])[first.job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    assert harness.backend.submit(spec) == first  # also after it finished
    assert stays_equal(lambda: counter.read_text().splitlines(), ["ran"])


def test_concurrent_submits_of_one_key_start_one_job(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    key = new_key("concurrent")
    counter = harness.scratch / "runs.txt"
    spec = harness.make_spec(py(append_line(counter), write_output({"ok": True})), key)
    barrier = threading.Barrier(8)
    handles: list[JobHandle] = []
    errors: list[BaseException] = []

    def submit() -> None:
        backend = harness.new_backend()
        barrier.wait()
        try:
            handles.append(backend.submit(spec))
        except BaseException as exc:  # surfaced below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(handles) == 8 and all(handle == handles[0] for handle in handles)
    status = wait_for(harness.backend, [handles[0]])[handles[0].job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    assert stays_equal(lambda: counter.read_text().splitlines(), ["ran"])


def test_batched_poll_answers_for_every_job(harness: BackendHarness, wait_for: WaitFor) -> None:
    handles = []
    for index in range(20):
        key = new_key(f"batch-{index}")
        handles.append(
            harness.backend.submit(harness.make_spec(py(write_output({"index": index})), key))
        )
    assert len({handle.job_id for handle in handles}) == 20

    first = harness.backend.poll(handles)
    assert set(first) == {handle.job_id for handle in handles}
    statuses = wait_for(harness.backend, handles)

    assert set(statuses) == {handle.job_id for handle in handles}
    for index, handle in enumerate(handles):
        status = statuses[handle.job_id]
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.result_uri == handle.output_uri
        assert read_output(status) == {"index": index}
    assert harness.backend.poll([]) == {}


def test_failure_reports_the_exception_in_message_and_logs(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    marker = f"boom-{uuid.uuid4().hex[:8]}"
    key = new_key("failure")
    command = py("print('starting up', flush=True)", f"raise ValueError({marker!r})")
    spec = harness.make_spec(command, key)

    handle = harness.backend.submit(spec)
    status = wait_for(harness.backend, [handle])[handle.job_id]

    assert status.state == JobState.FAILED
    assert marker in status.message and "ValueError" in status.message
    assert status.result_uri is None
    logs = harness.backend.logs(handle, tail=5)
    assert f"ValueError: {marker}" in logs
    assert "starting up" in harness.backend.logs(handle)
    assert len(harness.backend.logs(handle, tail=1).splitlines()) == 1


def test_a_job_exiting_zero_succeeds_whatever_it_wrote(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    # Whether a job produced a model is for its Pipes messages to say, not for the backend.
    key = new_key("nothing")
    handle = harness.backend.submit(harness.make_spec(py("print('done, wrote nothing')"), key))

    status = wait_for(harness.backend, [handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    assert status.result_uri == handle.output_uri


def test_the_spec_env_reaches_the_job(harness: BackendHarness, wait_for: WaitFor) -> None:
    key = new_key("env")
    pipes = {
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": {"asset_keys": ["contract"], "extras": {}}}),
        "CONTRACT_VALUE": f"value {key} with spaces",
    }
    spec = harness.make_spec(py(write_env(sorted(pipes))), key)
    spec = spec.model_copy(update={"env": pipes})

    handle = harness.backend.submit(spec)
    status = wait_for(harness.backend, [handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    assert read_output(status) == pipes


def test_an_unstaged_job_writes_its_output_itself(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    key = new_key("unstaged")
    command = python_file(
        harness.scratch,
        "import os",
        "from ml_assets import transport",
        "out = os.environ['ML_ASSETS_OUTPUT_URI']",
        "transport.write_json(transport.join(out, 'unstaged.json'), {'out': out})",
    )
    spec = harness.make_spec(command, key)
    spec = spec.model_copy(update={"staged": False})

    handle = harness.backend.submit(spec)
    status = wait_for(harness.backend, [handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    assert status.result_uri == handle.output_uri
    assert read_output(status, "unstaged.json") == {"out": spec.output_uri}


def _sleeper(pid_file: Path) -> list[str]:
    """A job that starts a grandchild, records both pids in ``pid_file`` and sleeps."""
    return py(
        "import os, subprocess, sys, time",
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])",
        f"with open({str(pid_file) + '.tmp'!r}, 'w') as f:",
        "    f.write(f'{os.getpid()} {grandchild.pid}')",
        f"os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r})",
        "time.sleep(120)",
    )


def test_cancel_stops_a_running_job_and_is_idempotent(
    harness: BackendHarness,
    wait_for: WaitFor,
    wait_until: Callable[..., None],
    pid_gone: Callable[[int], bool],
) -> None:
    pid_file = harness.scratch / "sleeper.pids"
    handle = harness.backend.submit(harness.make_spec(_sleeper(pid_file), new_key("cancel")))
    wait_until(pid_file.exists, what="the job to start")
    job_pid, grandchild_pid = (int(part) for part in pid_file.read_text().split())
    assert active(harness.backend.poll([handle])[handle.job_id])

    harness.backend.cancel(handle)

    status = wait_for(harness.backend, [handle])[handle.job_id]
    assert status.state == JobState.CANCELLED
    wait_until(lambda: pid_gone(job_pid), what=f"job process {job_pid} to exit")
    wait_until(lambda: pid_gone(grandchild_pid), what=f"grandchild {grandchild_pid} to exit")

    harness.backend.cancel(handle)
    harness.new_backend().cancel(JobHandle.from_json(handle.to_json()))
    assert harness.backend.poll([handle])[handle.job_id].state == JobState.CANCELLED


def test_cancel_right_after_submit(
    harness: BackendHarness,
    wait_for: WaitFor,
    wait_until: Callable[..., None],
    pid_gone: Callable[[int], bool],
) -> None:
    pid_file = harness.scratch / "early.pids"
    handle = harness.backend.submit(harness.make_spec(_sleeper(pid_file), new_key("early")))

    harness.backend.cancel(handle)

    status = wait_for(harness.backend, [handle])[handle.job_id]
    assert status.state == JobState.CANCELLED
    # The command either never started or was stopped; either way nothing of it is left.
    if pid_file.exists():
        for pid in (int(part) for part in pid_file.read_text().split()):
            wait_until(lambda pid=pid: pid_gone(pid), what=f"process {pid} to exit")
    assert harness.backend.poll([handle])[handle.job_id].state == JobState.CANCELLED


def test_cancel_of_a_finished_job_leaves_it_succeeded(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    handle = harness.backend.submit(
        harness.make_spec(py(write_output({"done": 1})), new_key("finished"))
    )
    assert wait_for(harness.backend, [handle])[handle.job_id].state == JobState.SUCCEEDED

    harness.backend.cancel(handle)

    status = harness.backend.poll([handle])[handle.job_id]
    assert status.state == JobState.SUCCEEDED
    assert status.result_uri == handle.output_uri
    assert read_output(status) == {"done": 1}


def test_fresh_backend_reattaches_from_handle_json(
    harness: BackendHarness, wait_for: WaitFor
) -> None:
    go = harness.scratch / "go"
    key = new_key("reattach")
    command = py("print('waiting for go', flush=True)", wait_for_file(go), write_output({"k": key}))
    raw = harness.backend.submit(harness.make_spec(command, key)).to_json()
    # From here on only the serialised handle and a brand-new backend object are used.
    fresh: Backend = harness.new_backend()
    handle = JobHandle.from_json(raw)
    wait_for(fresh, [handle], until=lambda status: status.state == JobState.RUNNING)

    go.touch()

    status = wait_for(fresh, [handle])[handle.job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    assert status.result_uri == handle.output_uri
    assert read_output(status) == {"k": key}
    assert "waiting for go" in fresh.logs(handle)


def test_backend_satisfies_the_protocol(harness: BackendHarness) -> None:
    assert isinstance(harness.backend, Backend)
    assert isinstance(harness.new_backend(), Backend)
    assert harness.backend.name and os.sep not in harness.backend.name
