"""Run a job's command with a local output directory, and ship that directory to object storage.

``python -m ml_assets.training.stage --output-uri URI [--sync-seconds S] -- COMMAND...``

Remote backends start this as their container's command. It gives ``COMMAND`` a fresh local
directory as ``$ML_ASSETS_OUTPUT_URI`` (so the training entrypoint and any job only ever write
local files), copies the command's output there as ``job.log`` while echoing it, and uploads the
directory to ``URI`` (``s3://``, ``gs://``, ``dbfs:/`` or a path, see ``ml_assets.transport``):

* every ``S`` seconds while the command runs: ``progress.json`` and ``job.log``;
* when it ends: every file, ``result.json`` last, so a result that is visible is complete; on a
  non-zero exit also ``failure.json`` = ``{"returncode", "message"}`` with the last log lines.

It exits with the command's status (``128 + signal`` if it was killed). The command stays in this
process's group; SIGTERM and SIGINT sent to this process alone are passed on to it, and what it
wrote is still uploaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from ml_assets import transport

LOG_FILE = "job.log"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
FAILURE_FILE = "failure.json"
_TAIL_LINES = 20


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def failure_message(returncode: int, log_lines: list[str]) -> str:
    """``exit status N: <last lines>``, the error a failed job reports."""
    status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    return f"{status}: " + " | ".join(log_lines[-5:]) if log_lines else status


class _Syncer:
    """Uploads progress and the log every ``interval`` seconds until stopped."""

    def __init__(self, directory: Path, uri: str, interval: float) -> None:
        self.directory, self.uri, self.interval = directory, uri, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._sent: dict[str, float] = {}

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for name in (PROGRESS_FILE, LOG_FILE):
                path = self.directory / name
                with contextlib.suppress(OSError):
                    mtime = path.stat().st_mtime
                    if self._sent.get(name) != mtime:
                        transport.upload_file(path, transport.join(self.uri, name))
                        self._sent[name] = mtime


def run(command: list[str], output_uri: str, sync_seconds: float = 10.0) -> int:
    """Run ``command`` as described in the module docstring; returns its exit status."""
    if command and command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]
    with tempfile.TemporaryDirectory(prefix="ml_assets_output_") as scratch:
        directory = Path(scratch)
        log_path = directory / LOG_FILE
        env = {**os.environ, "ML_ASSETS_OUTPUT_URI": str(directory)}
        syncer = _Syncer(directory, output_uri, sync_seconds)
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )

            def forward(signum: int, _frame: FrameType | None) -> None:
                # The command shares this process group, so a signal to the group (a pod's
                # termination, a fake's cancel) reaches it directly; this covers a signal sent
                # to this process alone.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

            previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
            syncer.start()
            try:
                assert child.stdout is not None
                for chunk in child.stdout:
                    log.write(chunk)
                    log.flush()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                returncode = child.wait()
            finally:
                syncer.stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        if returncode != 0:
            failure = {
                "returncode": returncode,
                "message": failure_message(returncode, _tail(log_path, _TAIL_LINES)),
            }
            (directory / FAILURE_FILE).write_text(json.dumps(failure))
        transport.upload_dir(directory, output_uri, last=[RESULT_FILE])
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_assets.training.stage")
    parser.add_argument("--output-uri", required=True)
    parser.add_argument("--sync-seconds", type=float, default=10.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    return run(command, args.output_uri, args.sync_seconds)


def entrypoint() -> None:
    """The ``ml-assets-job`` console script: exits with the command's status, so a runner that
    ignores a returned value (Databricks' wheel task) still sees the failure."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
