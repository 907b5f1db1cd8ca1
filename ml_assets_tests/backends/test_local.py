"""Behaviour specific to the local backend: detachment, crash detection, environment, working
directory, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ml_assets_testing.job_scripts import OUTPUT_FILE, py, wait_for_file, write_output

import ml_assets
from ml_assets.backends._local_runner import (
    process_group_is_alive,
    process_is_alive,
    read_proc_stat,
)
from ml_assets.backends.base import JobHandle, JobSpec, JobState
from ml_assets.backends.local import JobDirectoryConflict, LocalBackend

if TYPE_CHECKING:
    from conftest import WaitFor

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(ml_assets.__file__).resolve().parents[1]


def spec_in(directory: Path | str, command: list[str], key: str, **extra: object) -> JobSpec:
    return JobSpec(
        team="local",
        model="tests",
        command=command,
        output_uri=str(directory),
        idempotency_key=key,
        **extra,  # type: ignore[arg-type]
    )


WRITE_OUTPUT = write_output({"ok": True})


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend()


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(tmp_path: Path) -> object:
    yield
    for handle_file in tmp_path.rglob("handle.json"):
        LocalBackend(cancel_grace_seconds=1.0).cancel(JobHandle.from_json(handle_file.read_text()))


def test_job_survives_the_death_of_the_submitting_process(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    go = tmp_path / "go"
    spec = spec_in(tmp_path / "job", py(wait_for_file(go), WRITE_OUTPUT), "survivor")
    submitter = (
        "import os, signal, sys\n"
        "from ml_assets.backends.base import JobSpec\n"
        "from ml_assets.backends.local import LocalBackend\n"
        "handle = LocalBackend().submit(JobSpec.model_validate_json(sys.argv[1]))\n"
        "sys.stdout.write(handle.to_json())\n"
        "sys.stdout.flush()\n"
        # Kill the submitter's whole process group, as a run worker being torn down would be.
        "os.killpg(os.getpgid(0), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    done = subprocess.run(
        [sys.executable, "-c", submitter, spec.model_dump_json()],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        start_new_session=True,
    )

    assert done.returncode == -signal.SIGKILL, done.stderr
    handle = JobHandle.from_json(done.stdout)
    status = wait_for(backend, [handle], until=lambda s: s.state == JobState.RUNNING)
    assert status[handle.job_id].state == JobState.RUNNING
    go.touch()
    final = wait_for(backend, [handle])[handle.job_id]
    assert final.state == JobState.SUCCEEDED, final.message


def test_killed_runner_is_reported_as_disappeared(
    tmp_path: Path,
    backend: LocalBackend,
    wait_for: WaitFor,
    wait_until: Callable[..., None],
    pid_gone: Callable[[int], bool],
) -> None:
    job_dir = tmp_path / "job"
    handle = backend.submit(spec_in(job_dir, py("import time; time.sleep(120)"), "crash"))
    wait_for(backend, [handle], until=lambda s: s.state == JobState.RUNNING)
    runner = json.loads((job_dir / "runner.json").read_text())

    os.kill(runner["pid"], signal.SIGKILL)

    status = wait_for(backend, [handle], timeout=10)[handle.job_id]
    assert status.state == JobState.FAILED
    assert "disappeared without an exit status" in status.message
    # The command does not outlive its runner, so nothing writes output behind our back.
    wait_until(lambda: pid_gone(runner["child_pid"]), what="the orphaned command to die")
    assert backend.poll([handle])[handle.job_id].state == JobState.FAILED


def test_liveness_ignores_zombies_and_recycled_pids(pid_gone: Callable[[int], bool]) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stat = read_proc_stat(child.pid)
        assert stat is not None
        assert process_is_alive(child.pid, stat.start_time)
        assert not process_is_alive(child.pid, stat.start_time + 1)  # a later owner of the pid
        assert process_group_is_alive(stat.pgrp)
        child.send_signal(signal.SIGKILL)
        # Not reaped yet: the pid still exists, as a zombie.
        deadline = time.monotonic() + 10
        while not pid_gone(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        zombie = read_proc_stat(child.pid)
        assert zombie is not None and zombie.state == "Z"
        assert not process_is_alive(child.pid, stat.start_time)
    finally:
        child.kill()
        child.wait()
    assert read_proc_stat(child.pid) is None or read_proc_stat(child.pid) != stat


def test_runner_that_never_starts_is_queued_then_failed(
    tmp_path: Path, wait_for: WaitFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the submitting process died between recording the handle and starting the runner.
    monkeypatch.setattr(LocalBackend, "_launch", lambda self, job_dir: None)
    backend = LocalBackend(start_timeout_seconds=3.0)
    handle = backend.submit(spec_in(tmp_path / "job", py(WRITE_OUTPUT), "never"))

    assert backend.poll([handle])[handle.job_id].state == JobState.QUEUED
    status = wait_for(backend, [handle], timeout=15)[handle.job_id]
    assert status.state == JobState.FAILED
    assert "did not start within" in status.message

    # A runner that turns up after that verdict must not start the job (a retry may be running).
    late = subprocess.run(
        [sys.executable, "-m", "ml_assets.backends._local_runner", str(tmp_path / "job")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "abandoned before start" in late.stderr
    assert not (tmp_path / "job" / OUTPUT_FILE).exists()
    assert backend.poll([handle])[handle.job_id].state == JobState.FAILED


def test_working_dir_is_the_commands_cwd(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    report_cwd = (
        "import os; open(os.path.join(os.environ['ML_ASSETS_OUTPUT_URI'], 'cwd'), 'w')"
        ".write(os.getcwd())"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = spec_in(tmp_path / "abs", py(report_cwd), "abs", working_dir=str(elsewhere))
    relative = spec_in(tmp_path / "rel", py(report_cwd), "rel", working_dir="work")
    (tmp_path / "rel" / "work").mkdir(parents=True)
    missing = spec_in(tmp_path / "gone", py(report_cwd), "gone", working_dir="/nonexistent/dir")

    handles = [backend.submit(spec) for spec in (absolute, relative, missing)]
    statuses = wait_for(backend, handles)

    assert statuses[absolute.job_name].state == JobState.SUCCEEDED
    assert (tmp_path / "abs" / "cwd").read_text() == str(elsewhere)
    assert statuses[relative.job_name].state == JobState.SUCCEEDED
    assert (tmp_path / "rel" / "cwd").read_text() == str(tmp_path / "rel" / "work")
    assert statuses[missing.job_name].state == JobState.FAILED
    assert "/nonexistent/dir" in statuses[missing.job_name].message


def test_logs_tail_reads_only_the_end_of_a_large_log(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    job_dir = tmp_path / "job"
    command = py("print('\\n'.join(f'line {i}' for i in range(200_000)))", WRITE_OUTPUT)
    handle = backend.submit(spec_in(job_dir, command, "biglog"))
    assert wait_for(backend, [handle])[handle.job_id].state == JobState.SUCCEEDED

    assert backend.logs(handle, tail=3) == "line 199997\nline 199998\nline 199999"
    assert backend.logs(handle, tail=0) == ""
    assert len(backend.logs(handle).splitlines()) == 100

    # Grow the log to 4 GiB (sparse, so it costs no disk) and end it with three short lines,
    # the last without a newline: reading it whole would take many seconds and gigabytes.
    log = job_dir / "job.log"
    with log.open("r+b") as handle_file:
        handle_file.truncate(4 * 1024**3)
        handle_file.seek(0, os.SEEK_END)
        handle_file.write(b"\nalpha\nbeta\ngamma")
    # Reading it whole would blow the test's time limit and memory; the tail is instant.
    assert backend.logs(handle, tail=3) == "alpha\nbeta\ngamma"


def test_logs_of_a_short_log_return_every_line(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    handle = backend.submit(spec_in(tmp_path / "job", py("print('a\\nb')", WRITE_OUTPUT), "short"))
    wait_for(backend, [handle])

    assert backend.logs(handle, tail=50) == "a\nb"


def test_submit_into_another_jobs_directory_raises(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    job_dir = tmp_path / "job"
    first = backend.submit(spec_in(job_dir, py(WRITE_OUTPUT), "first-key"))

    with pytest.raises(JobDirectoryConflict, match="first-key"):
        backend.submit(spec_in(job_dir, py(WRITE_OUTPUT), "second-key"))
    assert wait_for(backend, [first])[first.job_id].state == JobState.SUCCEEDED

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "exit.json").write_text("{}")
    with pytest.raises(JobDirectoryConflict, match=r"exit\.json"):
        backend.submit(spec_in(stale, py(WRITE_OUTPUT), "third-key"))


def test_job_environment_interpreter_and_file_uri(tmp_path: Path, wait_for: WaitFor) -> None:
    interpreter = tmp_path / "py"
    interpreter.symlink_to(sys.executable)
    backend = LocalBackend(
        python_executable=str(interpreter),
        extra_env={"FROM_BACKEND": "backend", "OVERRIDDEN": "backend"},
    )
    job_dir = tmp_path / "job dir"
    command = [
        "python",
        "-c",
        "import json, os, sys\n"
        "names = ['FROM_BACKEND', 'FROM_SPEC', 'OVERRIDDEN', 'ML_ASSETS_JOB_ID',"
        " 'ML_ASSETS_OUTPUT_URI']\n"
        "doc = {n: os.environ.get(n) for n in names}\n"
        "doc.update(executable=sys.executable, cwd=os.getcwd())\n"
        "json.dump(doc, open('env.json', 'w'))",
    ]
    spec = spec_in(
        "file://" + str(job_dir).replace(" ", "%20"),
        command,
        "environment",
        env={"FROM_SPEC": "spec", "OVERRIDDEN": "spec"},
    )

    handle = backend.submit(spec)
    status = wait_for(backend, [handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    assert status.result_uri == spec.output_uri == handle.output_uri
    assert json.loads((job_dir / "env.json").read_text()) == {
        "FROM_BACKEND": "backend",
        "FROM_SPEC": "spec",
        "OVERRIDDEN": "spec",
        "ML_ASSETS_JOB_ID": spec.job_name,
        "ML_ASSETS_OUTPUT_URI": str(job_dir),
        "executable": str(interpreter),
        "cwd": str(job_dir),
    }
    assert handle.job_id == spec.job_name


def test_missing_directory_and_foreign_handles(tmp_path: Path, backend: LocalBackend) -> None:
    gone = JobHandle(
        backend="local", job_id="gone-1", idempotency_key="k", output_uri=str(tmp_path / "nope")
    )
    status = backend.poll([gone])["gone-1"]
    assert status.state == JobState.FAILED
    assert "missing" in status.message
    backend.cancel(gone)  # nothing to cancel, and no error

    foreign = JobHandle(backend="sagemaker", job_id="x", idempotency_key="k", output_uri="s3://b/x")
    with pytest.raises(ValueError, match="sagemaker"):
        backend.poll([foreign])
    with pytest.raises(ValueError, match="local path"):
        backend.submit(spec_in("s3://bucket/job", py(WRITE_OUTPUT), "s3"))


def test_a_job_gets_an_explicit_environment_without_the_submitters_secrets(
    tmp_path: Path, wait_for: WaitFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another backend's credential in the submitting process never reaches a local job; a
    variable the team names in ``pass_env`` does, and so do the basics (PATH)."""
    monkeypatch.setenv("OTHER_TEAM_AWS_SECRET_ACCESS_KEY", "s3cr3t-do-not-leak")
    monkeypatch.setenv("FRAUD_FEATURE_FLAG", "on")
    backend = LocalBackend(pass_env=["FRAUD_FEATURE_FLAG"])
    job_dir = tmp_path / "job"
    command = py("import json, os", "json.dump(dict(os.environ), open('env.json', 'w'))")
    handle = backend.submit(spec_in(job_dir, command, "secrets"))
    status = wait_for(backend, [handle])[handle.job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    seen = json.loads((job_dir / "env.json").read_text())
    assert "OTHER_TEAM_AWS_SECRET_ACCESS_KEY" not in seen
    assert "s3cr3t-do-not-leak" not in (job_dir / "env.json").read_text()
    assert seen["FRAUD_FEATURE_FLAG"] == "on"
    assert seen["PATH"] == os.environ["PATH"]


def test_cancel_stops_a_detached_grandchild_too(
    tmp_path: Path, backend: LocalBackend, wait_for: WaitFor
) -> None:
    """A command that starts a child in its own session (a data loader, a launcher) leaves
    nothing running once the job is cancelled."""
    job_dir = tmp_path / "job"
    grandchild_file = tmp_path / "grandchild.pid"
    command = py(
        "import subprocess, sys, time",
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)",
        f"open({str(grandchild_file)!r}, 'w').write(str(child.pid))",
        "time.sleep(300)",
    )
    handle = backend.submit(spec_in(job_dir, command, "detached"))
    deadline = time.monotonic() + 30
    while not grandchild_file.exists() or not grandchild_file.read_text():
        assert time.monotonic() < deadline, "the job never started its grandchild"
        time.sleep(0.05)
    grandchild = int(grandchild_file.read_text())
    assert os.getsid(grandchild) == grandchild  # it really left the job's session

    backend.cancel(handle)

    deadline = time.monotonic() + 15
    while Path(f"/proc/{grandchild}").exists() and _state(grandchild) not in ("Z", "X"):
        assert time.monotonic() < deadline, f"grandchild {grandchild} survived the cancel"
        time.sleep(0.05)
    assert wait_for(backend, [handle])[handle.job_id].state == JobState.CANCELLED


def _state(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return "X"
    return raw[raw.rfind(b")") + 2 :].split()[0].decode()
