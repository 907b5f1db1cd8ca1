"""Run a job's command with a local output directory, and ship that directory to object storage.

``python -m ml_assets.training.stage --output-uri URI [--sync-seconds S] -- COMMAND...``

Remote backends start this as a staged job's container command. It gives ``COMMAND`` a fresh
local directory as ``$ML_ASSETS_OUTPUT_URI`` (so the training runner and any job only ever write
local files), copies the command's output there as ``job.log`` while echoing it, and uploads the
directory to ``URI`` (``s3://``, ``gs://``, ``dbfs:/`` or a path, see ``ml_assets.transport``).

When this process has ``DAGSTER_PIPES_MESSAGES`` in its environment, the command gets it
replaced by a ``dagster_pipes`` file writer's params for ``messages.jsonl`` in that directory, so
its Pipes messages are local lines that the uploads below carry to ``URI/messages.jsonl``:

* every ``S`` seconds while the command runs: ``job.log`` and ``messages.jsonl`` (whole, when
  changed; a line still being written at that moment is completed by a later upload);
* when it ends: every file, ``messages.jsonl`` last, so everything a message points to is there
  before the message is; on a non-zero exit also ``failure.json`` = ``{"returncode",
  "message"}`` with the last log lines.

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
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from dagster_pipes import encode_param

from ml_assets import transport

LOG_FILE = "job.log"
# The Pipes messages file; the same name as ``ml_assets.training.messages.MESSAGES_FILE``.
MESSAGES_FILE = "messages.jsonl"
FAILURE_FILE = "failure.json"
OUTPUT_URI_ENV = "ML_ASSETS_OUTPUT_URI"
PIPES_MESSAGES_ENV = "DAGSTER_PIPES_MESSAGES"
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
    """Uploads the log and the Pipes messages every ``interval`` seconds until stopped."""

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
            for name in (LOG_FILE, MESSAGES_FILE):
                path = self.directory / name
                with contextlib.suppress(OSError):
                    mtime = path.stat().st_mtime
                    if self._sent.get(name) != mtime:
                        transport.upload_file(path, transport.join(self.uri, name))
                        self._sent[name] = mtime


def child_env(parent: Mapping[str, str], directory: Path) -> dict[str, str]:
    """The command's environment: ``parent`` with the output (and Pipes messages, if the job
    reports through Pipes) pointed at the local ``directory``."""
    env = {**parent, OUTPUT_URI_ENV: str(directory)}
    if PIPES_MESSAGES_ENV in parent:
        env[PIPES_MESSAGES_ENV] = encode_param({"path": str(directory / MESSAGES_FILE)})
    return env


def run(command: list[str], output_uri: str, sync_seconds: float = 10.0) -> int:
    """Run ``command`` as described in the module docstring; returns its exit status."""
    if command and command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]
    with tempfile.TemporaryDirectory(prefix="ml_assets_output_") as scratch:
        directory = Path(scratch)
        log_path = directory / LOG_FILE
        env = child_env(os.environ, directory)
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
        transport.upload_dir(directory, output_uri, last=[MESSAGES_FILE])
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
