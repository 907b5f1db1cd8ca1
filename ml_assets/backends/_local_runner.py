"""Supervisor for one local training job: ``python -m ml_assets.backends._local_runner <dir>``.

The local backend never starts a job's command directly. It starts this runner, detached, and
the runner starts the command. The runner exists so that a job's fate is always written down in
its directory, whatever happens to the process that submitted it:

- ``runner.json`` records the runner's pid and kernel start time (plus the command's), so a
  poller in any process can tell "still running" from "pid reused" or "zombie";
- ``exit.json`` records the command's return code once it ends, written atomically;
- SIGTERM sent to the runner is forwarded to the command's process group; the runner is the
  job's child subreaper, so processes that left that group (``setsid``) come back to it, and
  when the command has ended it stops whatever of the job is still running.

The command runs in the launch record's ``cwd`` (the spec's working directory), else in the
job's directory, with the runner's environment plus the spec's ``env`` (the Pipes context and
messages parameters), ``ML_ASSETS_JOB_ID`` and ``ML_ASSETS_OUTPUT_URI`` = the job's directory.

It also holds the ``/proc`` parsing and the state lock that ``ml_assets.backends.local`` shares
with it. Standard library only: it runs for the whole life
of every local job, so it must not pay for dagster, pydantic or anything else heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from ml_assets.files import file_lock, read_json, write_json_atomic

LAUNCH_FILE = "spec.json"
HANDLE_FILE = "handle.json"
RUNNER_FILE = "runner.json"
EXIT_FILE = "exit.json"
CANCELLED_FILE = "cancelled"
LOG_FILE = "job.log"
SUBMIT_LOCK_FILE = "submit.lock"
STATE_LOCK_FILE = "state.lock"

JOB_ID_ENV = "ML_ASSETS_JOB_ID"
OUTPUT_URI_ENV = "ML_ASSETS_OUTPUT_URI"

# The shell's convention for "command not found / not executable".
LAUNCH_FAILED_RETURNCODE = 127

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# How long the job's leftover processes get between SIGTERM and SIGKILL once its command ended.
_LEFTOVER_GRACE_S = 2.0


class ProcStat(NamedTuple):
    """The few fields of ``/proc/<pid>/stat`` that identify a process and its liveness."""

    state: str
    pgrp: int
    start_time: int
    ppid: int = 0


def read_proc_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/<pid>/stat``; ``None`` if there is no such process (or no ``/proc``)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # Field 2 (comm) is parenthesised and may itself contain spaces or ')', so split after the
    # last ')'. What follows starts at field 3 (state): field N is at index N - 3.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            state=fields[0].decode(),
            pgrp=int(fields[2]),
            start_time=int(fields[19]),
            ppid=int(fields[1]),
        )
    except (IndexError, ValueError):
        return None


def process_is_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is the very process that started at ``start_time`` and has not exited.

    A zombie (exited, not yet reaped by its parent) counts as gone, and a different process
    that was given the same pid later has a different start time.
    """
    stat = read_proc_stat(pid)
    return stat is not None and stat.state not in ("Z", "X") and stat.start_time == start_time


def process_group_is_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process belongs to process group ``pgid``.

    One scan of ``/proc``; meant for cancellation, not for the polling hot path.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = read_proc_stat(int(entry))
        if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
            return True
    return False


def current_boot_id() -> str | None:
    """The kernel's per-boot id, so a pid recorded before a reboot is never mistaken as alive."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def state_lock(job_dir: Path) -> AbstractContextManager[None]:
    """The lock that orders "the command ended" against "the job was cancelled".

    Held by the runner while it starts the command and while it writes ``exit.json``, and by
    ``cancel`` while it writes the ``cancelled`` marker, so a job is never both.
    """
    return file_lock(job_dir / STATE_LOCK_FILE)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel kill the command if the runner itself dies.

    Without it, a runner killed with SIGKILL would leave the command running unsupervised: its
    end would never be recorded, yet it could still write its outputs and messages later.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    runner_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        # The runner may have died before the request took effect; then nothing would come.
        if os.getppid() != runner_pid:
            os._exit(1)

    return hook


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(ancestor: int) -> list[int]:
    """The live processes below ``ancestor`` in the process tree (one scan of ``/proc``)."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = read_proc_stat(int(entry))
                if stat is not None and stat.state not in ("Z", "X"):
                    parents[int(entry)] = stat.ppid
    found: list[int] = []
    frontier = [ancestor]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _end_leftovers(grace_s: float = _LEFTOVER_GRACE_S) -> list[int]:
    """Stop every process the job left behind, detached ones included.

    The runner is the job's child subreaper, so a process that left the command's process group
    and session (``setsid``, a daemonising launcher) is re-parented to the runner when its
    parent dies, instead of escaping to init. Once the command has ended, whatever is still
    below the runner is the job's and is stopped: SIGTERM, then SIGKILL after ``grace_s``.
    """
    leftovers = descendants(os.getpid())
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        deadline = time.monotonic() + (grace_s if signum == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass  # reap the re-parented ones, so they do not linger as zombies
            if not descendants(os.getpid()):
                return leftovers
            time.sleep(0.05)
        leftovers = descendants(os.getpid())
    return leftovers


class _Runner:
    """Starts one job's command, records it, waits for it and records how it ended."""

    def __init__(self, job_dir: Path, launch: dict[str, Any]) -> None:
        self.job_dir = job_dir
        self.launch = launch
        self.child: subprocess.Popen[bytes] | None = None
        self.terminate_requested = False
        self.forwarded = False

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.terminate_requested = True
        self._forward()

    def _forward(self) -> None:
        if self.child is None or self.forwarded:
            return
        self.forwarded = True
        with contextlib.suppress(OSError):  # the command may be gone already
            os.killpg(self.child.pid, signal.SIGTERM)

    def _child_env(self) -> dict[str, str]:
        # The runner itself was started with the job's explicit environment (see local.py).
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in self.launch.get("env", {}).items()})
        env[JOB_ID_ENV] = str(self.launch["job_id"])
        env[OUTPUT_URI_ENV] = str(self.job_dir)
        return env

    def _write_exit(self, returncode: int) -> None:
        with state_lock(self.job_dir):
            write_json_atomic(
                self.job_dir / EXIT_FILE, {"returncode": returncode, "finished_at": time.time()}
            )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        # Orphans of the job come back to the runner rather than to init (see _end_leftovers).
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        argv = [str(part) for part in self.launch["argv"]]
        me = read_proc_stat(os.getpid())
        with state_lock(self.job_dir):
            if (self.job_dir / CANCELLED_FILE).exists():
                print("ml_assets local runner: cancelled before start", file=sys.stderr)
                return 0
            if (self.job_dir / EXIT_FILE).exists():
                # poll() gave up waiting for this runner and reported the job failed; a retry
                # may already be running, so starting now would run the job twice.
                print("ml_assets local runner: abandoned before start", file=sys.stderr)
                return 0
            if self.terminate_requested:
                # Told to stop before the command ever started: record it like a kill.
                print("ml_assets local runner: terminated before start", file=sys.stderr)
                write_json_atomic(
                    self.job_dir / EXIT_FILE,
                    {"returncode": -int(signal.SIGTERM), "finished_at": time.time()},
                )
                return 0
            try:
                child = subprocess.Popen(
                    argv,
                    cwd=self.launch.get("cwd") or self.job_dir,
                    env=self._child_env(),
                    stdin=subprocess.DEVNULL,
                    close_fds=True,
                    process_group=0,
                    preexec_fn=_die_with_parent_hook(),
                )
            except (OSError, ValueError) as exc:
                print(f"ml_assets local runner: cannot start {argv!r}: {exc}", file=sys.stderr)
                write_json_atomic(
                    self.job_dir / EXIT_FILE,
                    {"returncode": LAUNCH_FAILED_RETURNCODE, "finished_at": time.time()},
                )
                return LAUNCH_FAILED_RETURNCODE
            self.child = child
            child_stat = read_proc_stat(child.pid)
            write_json_atomic(
                self.job_dir / RUNNER_FILE,
                {
                    "pid": os.getpid(),
                    "start_time": me.start_time if me else None,
                    "child_pid": child.pid,
                    "child_start_time": child_stat.start_time if child_stat else None,
                    "boot_id": current_boot_id(),
                    "started_at": time.time(),
                },
            )
        if self.terminate_requested:
            self._forward()
        # wait() resumes by itself after the SIGTERM handler runs (PEP 475).
        returncode = child.wait()
        stopped = _end_leftovers()
        if stopped:
            print(f"ml_assets local runner: stopped leftover processes {stopped}", file=sys.stderr)
        self._write_exit(returncode)
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: supervise the job described in ``<dir>/spec.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ml_assets.backends._local_runner <job directory>", file=sys.stderr)
        return 2
    job_dir = Path(args[0]).resolve()
    launch = read_json(job_dir / LAUNCH_FILE)
    if launch is None:
        print(f"ml_assets local runner: no readable {LAUNCH_FILE} in {job_dir}", file=sys.stderr)
        return 2
    return _Runner(job_dir, launch).run()


if __name__ == "__main__":
    sys.exit(main())
