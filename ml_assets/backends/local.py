"""The local backend: training jobs as detached processes on this machine (the default).

Each job owns one directory, its ``output_uri``. Everything about the job lives there as small
files, so any process holding nothing but the ``JobHandle`` can poll, cancel or read it:

=================  ==========================================================================
``handle.json``    the handle ``submit`` returned; marks the directory as this job's
``spec.json``      what the runner starts: argv, extra env, job id, and the full ``JobSpec``
``job.log``        the runner's and the command's stdout and stderr
``runner.json``    runner and command pid + kernel start time, written once the command runs
``exit.json``      ``{"returncode", "finished_at"}``, written when the command has ended
``cancelled``      marker written by ``cancel``; wins over everything else
=================  ==========================================================================

The command runs under ``ml_assets.backends._local_runner`` in a new session, so it outlives the
Dagster step (and the code server) that submitted it. It runs as it is (``JobSpec.staged`` and
``JobSpec.image`` do not apply on this machine), in ``JobSpec.working_dir`` if given (a relative one
is taken from the job's directory), else in the job's directory, with an explicit environment:
what a process needs to run here (``JOB_ENVIRONMENT``: the path, locale, Python and GPU
variables, never credentials), the variables named in ``pass_env``, ``extra_env``, ``spec.env``
(the Pipes context and messages parameters) and ``ML_ASSETS_OUTPUT_URI`` = the job's directory,
where it writes its artifacts and Pipes messages. Nothing else of the submitting process (other
backends' secrets among it) reaches a job. A
command that exits 0 is ``SUCCEEDED`` with ``result_uri`` = the job's ``output_uri``; what it
produced is for the reconciler to read from its messages. No dagster import here: the lead's
resource layer wraps this class.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ml_assets.backends._local_runner import (
    CANCELLED_FILE,
    EXIT_FILE,
    HANDLE_FILE,
    LAUNCH_FILE,
    LOG_FILE,
    RUNNER_FILE,
    SUBMIT_LOCK_FILE,
    current_boot_id,
    process_group_is_alive,
    process_is_alive,
    state_lock,
)
from ml_assets.backends.base import HandleDetails, JobHandle, JobSpec, JobState, JobStatus
from ml_assets.files import file_lock, read_json, write_json_atomic

RUNNER_MODULE = "ml_assets.backends._local_runner"

# The directory that holds this ``ml_assets`` package. A source checkout (not an install) is
# added to the runner's and the job's PYTHONPATH, so that ``python -m ml_assets...`` runs the
# same ml_assets that submitted the job even where it is not (or stalely) installed.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]
_IMPORT_ROOT_IS_INSTALL = _IMPORT_ROOT.name in ("site-packages", "dist-packages")

# Bookkeeping files that, found without a ``handle.json``, mean the directory is not ours.
_LEFTOVER_FILES = (RUNNER_FILE, EXIT_FILE, CANCELLED_FILE)

_PYTHON_ALIASES = frozenset({"python", "python3"})
_FAILURE_LOG_LINES = 5
_FAILURE_LINE_CHARS = 500
_TAIL_BLOCK = 64 * 1024
# Stop reading backwards after this much even if fewer lines were found (one giant line).
_TAIL_MAX_BYTES = 32 * 1024 * 1024

# Runners this process started. Reaping them as they end stops them lingering as zombies in
# a long-lived submitter (a code server) and keeps Popen from warning about them.
# What a job needs from the machine to run here: the path, the user and locale, Python, the
# temporary folder, and the GPU and thread settings. Anything else, credentials above all, is
# left out unless named in ``pass_env``.
JOB_ENVIRONMENT = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TEMP", "TMP", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_PREFIX",
        "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    }
)  # fmt: skip
JOB_ENVIRONMENT_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")


def job_environment(source: Mapping[str, str], pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The part of ``source`` a local job gets: ``JOB_ENVIRONMENT`` and ``pass_env``."""
    named = set(pass_env)
    return {
        name: value
        for name, value in source.items()
        if name in JOB_ENVIRONMENT or name in named or name.startswith(JOB_ENVIRONMENT_PREFIXES)
    }


_launched: list[subprocess.Popen[bytes]] = []
_launched_lock = threading.Lock()


class LocalDetails(HandleDetails):
    """A local job's handle details: its directory and when it was submitted (epoch seconds)."""

    job_dir: str | None = None
    launched_at: float | None = None


class JobDirectoryConflict(RuntimeError):
    """The output directory of a submission already belongs to a different job."""


def local_path(output_uri: str) -> Path:
    """The absolute local directory an ``output_uri`` names: a plain path or a ``file://`` URI."""
    if "://" in output_uri:
        parsed = urlparse(output_uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(
                f"the local backend needs a local path or file:// URI as output_uri, "
                f"got {output_uri!r}"
            )
        output_uri = unquote(parsed.path)
    return Path(output_uri).expanduser().resolve()


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file, read backwards block by block from its end.

    Only as much of the file is read as those lines need, so a multi-GB log costs no more
    than its tail.
    """
    if count <= 0:
        return []
    try:
        handle = path.open("rb")
    except OSError:
        return []
    chunks: list[bytes] = []
    with handle:
        position = handle.seek(0, os.SEEK_END)
        newlines = 0
        read = 0
        # count + 1 newlines guarantee ``count`` complete lines even with a trailing newline.
        while position > 0 and newlines <= count and read < _TAIL_MAX_BYTES:
            step = min(_TAIL_BLOCK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            read += step
    lines = b"".join(reversed(chunks)).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines[-count:]]


def _reap_launched() -> None:
    with _launched_lock:
        _launched[:] = [proc for proc in _launched if proc.poll() is None]


class LocalBackend:
    """Runs each training job as a detached subprocess on this machine.

    The default backend: nothing to install or configure, and still deferred like the remote
    ones. ``submit`` returns in milliseconds, the job survives the submitting process, and
    ``poll`` (from any process, with nothing but the handle) reads the job's state from files
    in its directory; see the module docstring for the layout.

    Args:
        python_executable: interpreter used when a job's command starts with ``python`` or
            ``python3``, so jobs run in this environment rather than whatever ``python`` is on
            PATH. Defaults to the interpreter running this code (``sys.executable``).
        extra_env: variables added to every job's environment (a job's own ``spec.env`` wins).
        pass_env: names of the submitting process's variables that jobs also get (a team's
            own settings, never another team's or another backend's credentials).
            When this ml_assets is a source checkout rather than an installed package, its
            directory is also appended to the job's PYTHONPATH.
        start_timeout_seconds: how long after submission a job may show no runner before it is
            reported as failed rather than queued.
        cancel_grace_seconds: how long ``cancel`` waits after SIGTERM before it sends SIGKILL.
    """

    name: str = "local"

    def __init__(
        self,
        python_executable: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        start_timeout_seconds: float = 10.0,
        cancel_grace_seconds: float = 5.0,
        pass_env: Sequence[str] = (),
    ) -> None:
        self.python_executable = python_executable or sys.executable
        self.extra_env = dict(extra_env or {})
        self.pass_env = tuple(pass_env)
        self.start_timeout_seconds = start_timeout_seconds
        self.cancel_grace_seconds = cancel_grace_seconds

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Start the job in ``spec`` unless its directory already holds it; return its handle.

        Idempotent across calls, backend objects and processes: the directory's ``handle.json``
        records the job, and a file lock makes concurrent submissions of one key start it once.
        Raises ``JobDirectoryConflict`` if the directory holds another key's job.
        """
        job_dir = local_path(spec.output_uri)
        job_dir.mkdir(parents=True, exist_ok=True)
        existing = self._recorded_handle(job_dir, spec)
        if existing is not None:
            return existing
        with file_lock(job_dir / SUBMIT_LOCK_FILE):
            existing = self._recorded_handle(job_dir, spec)
            if existing is not None:
                return existing
            leftovers = [name for name in _LEFTOVER_FILES if (job_dir / name).exists()]
            if leftovers:
                raise JobDirectoryConflict(
                    f"cannot submit job {spec.job_name} (key {spec.idempotency_key!r}): "
                    f"{job_dir} already holds {', '.join(leftovers)} from another job; "
                    f"use a fresh output_uri"
                )
            handle = JobHandle.for_spec(
                self.name, spec, LocalDetails(job_dir=str(job_dir), launched_at=time.time())
            )
            write_json_atomic(
                job_dir / LAUNCH_FILE,
                {
                    "job_id": spec.job_name,
                    "idempotency_key": spec.idempotency_key,
                    "argv": self._argv(spec.command),
                    "env": dict(spec.env),
                    "cwd": str(job_dir / spec.working_dir) if spec.working_dir else None,
                    "spec": spec.model_dump(mode="json"),
                },
            )
            # The handle is written before the launch: if this process dies in between, the
            # job is reported failed (runner never appeared) instead of being started twice.
            write_json_atomic(job_dir / HANDLE_FILE, handle.model_dump(mode="json"))
            try:
                self._launch(job_dir)
            except BaseException:
                for name in (HANDLE_FILE, LAUNCH_FILE):
                    (job_dir / name).unlink(missing_ok=True)
                raise
        return handle

    def _recorded_handle(self, job_dir: Path, spec: JobSpec) -> JobHandle | None:
        document = read_json(job_dir / HANDLE_FILE)
        if document is None:
            return None
        recorded = JobHandle.model_validate(document)
        if recorded.idempotency_key != spec.idempotency_key:
            raise JobDirectoryConflict(
                f"cannot submit job {spec.job_name} (key {spec.idempotency_key!r}): {job_dir} "
                f"already holds job {recorded.job_id} (key {recorded.idempotency_key!r})"
            )
        return recorded

    def _argv(self, command: list[str]) -> list[str]:
        if not command:
            raise ValueError("a JobSpec needs a non-empty command")
        if command[0] in _PYTHON_ALIASES:
            return [self.python_executable, *command[1:]]
        return list(command)

    def _launch(self, job_dir: Path) -> None:
        _reap_launched()
        env = {**job_environment(os.environ, self.pass_env), **self.extra_env}
        if not _IMPORT_ROOT_IS_INSTALL:
            paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            if str(_IMPORT_ROOT) not in paths:
                env["PYTHONPATH"] = os.pathsep.join([*paths, str(_IMPORT_ROOT)])
        with (job_dir / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", RUNNER_MODULE, str(job_dir)],
                cwd=job_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
            )
        with _launched_lock:
            _launched.append(proc)

    # -- poll -----------------------------------------------------------------------------------

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """The status of every handle, keyed by job id, from one pass over their directories.

        Reads a few small files per job and ``/proc/<pid>/stat``; starts no processes.
        """
        _reap_launched()
        boot_id = current_boot_id()
        now = time.time()
        return {handle.job_id: self._status(handle, boot_id, now) for handle in handles}

    def _status(self, handle: JobHandle, boot_id: str | None, now: float) -> JobStatus:
        job_dir = self._job_dir(handle)

        def status(state: JobState, message: str) -> JobStatus:
            return JobStatus(job_id=handle.job_id, state=state, message=message)

        if not job_dir.is_dir():
            return status(
                JobState.FAILED,
                f"the job directory {job_dir} is missing (deleted, or the job was submitted "
                f"on another machine?)",
            )
        recorded = read_json(job_dir / HANDLE_FILE)
        if recorded is not None and recorded.get("idempotency_key") != handle.idempotency_key:
            return status(
                JobState.FAILED,
                f"{job_dir} now holds another job (key {recorded.get('idempotency_key')!r})",
            )
        terminal = self._terminal_status(handle, job_dir)
        if terminal is not None:
            return terminal
        runner = read_json(job_dir / RUNNER_FILE)
        if runner is not None and self._runner_alive(runner, boot_id):
            return self._running_status(handle, runner)
        # The runner may have finished between the reads above and the liveness check.
        terminal = self._terminal_status(handle, job_dir)
        if terminal is not None:
            return terminal
        if runner is None:
            waited = now - self._launched_at(handle, job_dir)
            if waited < self.start_timeout_seconds:
                return status(JobState.QUEUED, "submitted; waiting for the runner to start")
            return self._abandon(handle, job_dir, waited)
        return status(
            JobState.FAILED,
            "the runner process disappeared without an exit status (machine restart or "
            "kill -9?)" + _log_excerpt(job_dir),
        )

    def _abandon(self, handle: JobHandle, job_dir: Path, waited: float) -> JobStatus:
        """Give up on a runner that never started, and make sure it never starts later."""
        with state_lock(job_dir):
            started = (job_dir / RUNNER_FILE).exists()
            if not started and not self._terminal_status(handle, job_dir):
                write_json_atomic(
                    job_dir / EXIT_FILE,
                    {
                        "returncode": None,
                        "finished_at": time.time(),
                        "reason": f"the runner did not start within {waited:.0f} s of "
                        "submission (the submitting process died, or the machine is overloaded)",
                    },
                )
        return self._status(handle, current_boot_id(), time.time())

    def _terminal_status(self, handle: JobHandle, job_dir: Path) -> JobStatus | None:
        def failed(message: str) -> JobStatus:
            return JobStatus(job_id=handle.job_id, state=JobState.FAILED, message=message)

        if (job_dir / CANCELLED_FILE).exists():
            return JobStatus(job_id=handle.job_id, state=JobState.CANCELLED, message="cancelled")
        exit_doc = read_json(job_dir / EXIT_FILE)
        if exit_doc is None:
            return None
        if exit_doc.get("reason"):
            return failed(str(exit_doc["reason"]))
        returncode = exit_doc.get("returncode")
        if returncode != 0:
            return failed(
                f"the job exited with return code {returncode}{_signal_note(returncode)}"
                + _log_excerpt(job_dir)
            )
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.SUCCEEDED,
            message="succeeded",
            result_uri=handle.output_uri,
        )

    @staticmethod
    def _running_status(handle: JobHandle, runner: dict[str, Any]) -> JobStatus:
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.RUNNING,
            message=f"running (runner pid {runner.get('pid')})",
        )

    @staticmethod
    def _runner_alive(runner: dict[str, Any], boot_id: str | None) -> bool:
        pid, start_time = runner.get("pid"), runner.get("start_time")
        if not isinstance(pid, int) or not isinstance(start_time, int):
            return False
        recorded_boot = runner.get("boot_id")
        if recorded_boot and boot_id and recorded_boot != boot_id:
            return False
        return process_is_alive(pid, start_time)

    @staticmethod
    def _launched_at(handle: JobHandle, job_dir: Path) -> float:
        launched_at = LocalDetails.decode(handle, LocalBackend.name).launched_at
        if launched_at is not None:
            return launched_at
        try:
            return (job_dir / LAUNCH_FILE).stat().st_mtime
        except OSError:
            return 0.0

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job: mark it cancelled, SIGTERM its processes, SIGKILL them after a grace.

        Idempotent and quiet: a finished, cancelled, missing or already dead job is left as is.
        Returns once the job's processes are gone (or after the grace periods).
        """
        job_dir = self._job_dir(handle)
        if not job_dir.is_dir():
            return
        with state_lock(job_dir):
            if (job_dir / EXIT_FILE).exists() or (job_dir / CANCELLED_FILE).exists():
                return
            write_json_atomic(job_dir / CANCELLED_FILE, {"cancelled_at": time.time()})
            # Read under the lock: a runner that has not written runner.json yet will see the
            # marker when it takes the lock and never start the command.
            runner = read_json(job_dir / RUNNER_FILE)
        if runner is None:
            return
        groups = self._live_groups(runner)
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        if not self._wait_gone(runner, self.cancel_grace_seconds):
            for pgid in groups:
                _signal_group(pgid, signal.SIGKILL)
            self._wait_gone(runner, 2.0)

    @staticmethod
    def _live_groups(runner: dict[str, Any]) -> list[int]:
        # Each process is checked against its recorded start time before it is signalled, so a
        # recycled pid is never hit. The runner leads its own session (pgid == pid), the command
        # its own group (pgid == child pid).
        groups = []
        for pid_key, start_key in (("pid", "start_time"), ("child_pid", "child_start_time")):
            pid, start_time = runner.get(pid_key), runner.get(start_key)
            if (
                isinstance(pid, int)
                and isinstance(start_time, int)
                and process_is_alive(pid, start_time)
            ):
                groups.append(pid)
        return groups

    @staticmethod
    def _wait_gone(runner: dict[str, Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            _reap_launched()
            alive = []
            pid, start_time = runner.get("pid"), runner.get("start_time")
            if isinstance(pid, int) and isinstance(start_time, int):
                alive.append(process_is_alive(pid, start_time))
            child_pid = runner.get("child_pid")
            if isinstance(child_pid, int):
                alive.append(process_group_is_alive(child_pid))
            if not any(alive):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- logs -----------------------------------------------------------------------------------

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's combined stdout and stderr ('' if none yet)."""
        return "\n".join(tail_lines(self._job_dir(handle) / LOG_FILE, tail))

    # -- helpers --------------------------------------------------------------------------------

    def _job_dir(self, handle: JobHandle) -> Path:
        recorded = LocalDetails.decode(handle, self.name).job_dir
        return Path(recorded) if recorded else local_path(handle.output_uri)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # A group that is already gone (or was recycled to someone else's process) is left alone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal_note(returncode: object) -> str:
    if isinstance(returncode, int) and returncode < 0:
        try:
            return f" (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return ""
    return ""


def _log_excerpt(job_dir: Path) -> str:
    lines = [line for line in tail_lines(job_dir / LOG_FILE, 50) if line.strip()]
    if not lines:
        return ""
    excerpt = [line[:_FAILURE_LINE_CHARS] for line in lines[-_FAILURE_LOG_LINES:]]
    return "; last lines of job.log:\n" + "\n".join(excerpt)
