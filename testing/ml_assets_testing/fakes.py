"""Building blocks of the loopback fakes that stand in for remote compute services in tests.

A fake is a real HTTP server on 127.0.0.1 that implements only the endpoints an official SDK
calls, keeps its own state, and really runs each job's command as a local subprocess. Three
pieces are shared by every fake:

* ``Faults``: latency, 5xx, 429 and dropped connections on a chosen fraction of calls, drawn
  from a seeded random generator so a failing test can be replayed;
* ``LoopbackServer``: a threaded HTTP server with a regex router, per-route call counts and the
  fault injection applied before any handler runs;
* ``ProcessJobs``: jobs as process groups that go pending, then running, then succeeded or failed
  (or cancelled when killed), with their output captured to a log file. A job may instead be
  *held* pending or running without any process, until ``end_held`` ends it (benchmarks keep
  thousands of jobs in flight that way).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Faults:
    """Which fraction of calls misbehave, and how.

    Each call draws once: with probability ``drop_rate`` the connection is closed without an
    answer, else with ``throttle_rate`` it gets a 429 (with ``Retry-After: 0``), else with
    ``error_rate`` a 503. Independently, every call is delayed by ``latency_s``. Calls matching
    ``exempt`` (a regex on "METHOD /path") never fail, e.g. to keep a fault off a call the SDK
    cannot retry safely.
    """

    latency_s: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    exempt: str | None = None
    _random: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    injected: Counter[str] = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self, call: str) -> str | None:
        """``"drop"``, ``"throttle"``, ``"error"`` or ``None`` for ``call`` ("GET /a/path")."""
        if self.exempt and re.search(self.exempt, call):
            return None
        with self._lock:
            roll = self._random.random()
        fault = None
        if roll < self.drop_rate:
            fault = "drop"
        elif roll < self.drop_rate + self.throttle_rate:
            fault = "throttle"
        elif roll < self.drop_rate + self.throttle_rate + self.error_rate:
            fault = "error"
        if fault:
            with self._lock:
                self.injected[fault] += 1
        return fault


@dataclass
class Request:
    """One call as a route handler sees it."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with routes, call counting and fault injection.

    Subclasses (or callers) add routes with ``route(method, pattern, handler)``; ``pattern`` is
    a regex matched against the whole path, and its named groups become ``Request.params``.
    ``calls`` counts answered and faulted calls per ``"METHOD pattern"``; ``total_calls()`` sums
    them. Use as a context manager, or call ``start`` and ``stop``.

    A fake whose service acts unasked (starts jobs, notices exits) sets ``tick_s`` and
    overrides ``tick``: it then runs every ``tick_s`` seconds on a thread of its own while the
    server runs.
    """

    tick_s: float | None = None

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.calls: Counter[str] = Counter()
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._halt = threading.Event()

    def error_body(self, status: int, message: str) -> Any:
        """The body of an error the server answers itself (faults, unrouted calls).

        A fake whose SDK parses one error shape (Google's ``{"error": {"code", "message",
        "status"}}``, say) overrides this so the SDK classifies and retries the error.
        """
        return {"error": message}

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"\Z"), pattern, handler))

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()

    def start(self) -> LoopbackServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self.tick_s is not None:
            self._halt.clear()
            self._ticker = threading.Thread(target=self._tick_loop, daemon=True)
            self._ticker.start()
        return self

    def tick(self) -> None:
        """What the service does on its own every ``tick_s`` seconds; nothing by default."""

    def _tick_loop(self) -> None:
        assert self.tick_s is not None
        while not self._halt.wait(self.tick_s):
            self.tick()

    def stop(self) -> None:
        self._halt.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dispatch(self, request: Request) -> tuple[str, Response]:
        """The route label and the response for one request (404/405 when nothing matches)."""
        path_matched = False
        for method, regex, label, handler in self._routes:
            match = regex.match(request.path)
            if not match:
                continue
            path_matched = True
            if method != request.method:
                continue
            request.params = {k: v for k, v in match.groupdict().items() if v is not None}
            return f"{method} {label}", handler(request)
        status = 405 if path_matched else 404
        message = f"no route for {request.method} {request.path}"
        return f"{request.method} <unrouted>", Response(status, self.error_body(status, message))

    def count(self, label: str) -> None:
        with self._lock:
            self.calls[label] += 1


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes; without TCP_NODELAY the body waits ~40 ms for the
        # client's delayed ACK on every call.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; the call counts say what happened

        def _handle(self) -> None:
            parsed = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if server.faults.latency_s:
                time.sleep(server.faults.latency_s)
            fault = server.faults.draw(f"{self.command} {parsed.path}")
            request = Request(
                method=self.command,
                path=parsed.path,
                params={},
                query=parse_qs(parsed.query, keep_blank_values=True),
                headers=dict(self.headers.items()),
                body=body,
            )
            if fault == "drop":
                server.count(f"{self.command} <dropped>")
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if fault == "throttle":
                server.count(f"{self.command} <throttled>")
                body = server.error_body(429, "rate limited")
                self._send(Response(429, body, {"Retry-After": "0"}))
                return
            if fault == "error":
                server.count(f"{self.command} <error>")
                self._send(Response(503, server.error_body(503, "service unavailable")))
                return
            try:
                label, response = server.dispatch(request)
            except Exception as exc:  # a bug in a fake must show as a 500, not a hang
                label, response = f"{self.command} <crashed>", Response(500, {"error": repr(exc)})
            server.count(label)
            self._send(response)

        def _send(self, response: Response) -> None:
            payload = response.encoded()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return _Handler


# --- jobs as real processes -------------------------------------------------------------------

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)


@dataclass
class ProcessJob:
    """One job of a fake: its process, where its output goes and what became of it."""

    job_id: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    created_at: float
    pending_s: float
    cwd: str | None = None
    process: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    cancelled: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    held: bool = False

    @property
    def state(self) -> str:
        if self.cancelled:
            return CANCELLED
        if self.returncode is not None:
            return SUCCEEDED if self.returncode == 0 else FAILED
        # A held job runs without a process once it is started.
        return RUNNING if self.process is not None or self.started_at is not None else PENDING


class ProcessJobs:
    """Runs each job's command as a local process group, after an optional pending delay.

    ``python``/``python3`` at the head of a command becomes this interpreter, as a container
    image's own Python would be (the image itself is only recorded by each fake, in the request
    it keeps). A job's ``cwd`` is created if missing, as container runtimes do for a
    ``workingDir``; a command that cannot start ends at once with status 127 and the reason in its
    log. ``refresh()`` (called by every read) starts jobs whose pending
    time is over and collects exit codes, so state moves only when someone looks, like a
    controller's reconcile loop, and nothing runs in the background of a test but the jobs.
    """

    def __init__(self, root: Path, pending_s: float = 0.2) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.pending_s = pending_s
        self.jobs: dict[str, ProcessJob] = {}
        # Jobs whose state can change on its own: neither held nor ended.
        self._active: set[str] = set()
        self._lock = threading.RLock()

    def add(
        self,
        job_id: str,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None = None,
        hold: str | None = None,
    ) -> ProcessJob:
        """Add a job; with ``hold`` (``PENDING`` or ``RUNNING``) it stays in that state without
        running ``argv`` until ``end_held`` ends it (its log stays empty)."""
        if hold not in (None, PENDING, RUNNING):
            raise ValueError(f"a job can be held {PENDING} or {RUNNING}, not {hold!r}")
        with self._lock:
            if job_id in self.jobs:
                return self.jobs[job_id]
            now = time.monotonic()
            job = ProcessJob(
                job_id=job_id,
                argv=list(argv),
                env=dict(env),
                log_path=self.root / f"{_safe(job_id)}.log",
                created_at=now,
                pending_s=self.pending_s,
                cwd=cwd,
                held=hold is not None,
                started_at=now if hold == RUNNING else None,
            )
            job.log_path.touch()
            self.jobs[job_id] = job
            if not job.held:
                self._active.add(job_id)
            return job

    def end_held(self, job_ids: list[str], returncode: int = 0) -> list[str]:
        """End the held jobs among ``job_ids`` that are still in flight, all at the same moment,
        as if their command had exited with ``returncode``; returns the ids it ended."""
        ended = []
        with self._lock:
            now = time.monotonic()
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is None or not job.held or job.state not in (PENDING, RUNNING):
                    continue
                job.started_at = job.started_at if job.started_at is not None else now
                job.returncode, job.finished_at = returncode, now
                ended.append(job_id)
        return ended

    def get(self, job_id: str) -> ProcessJob | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None:
                self._refresh(job)
            return job

    def all(self) -> list[ProcessJob]:
        with self._lock:
            self.refresh_active()
            return list(self.jobs.values())

    def refresh_active(self) -> None:
        """Start the jobs whose pending time is over and collect exit codes (held and ended
        jobs cannot change on their own, so thousands of them cost a controller nothing)."""
        with self._lock:
            for job_id in list(self._active):
                self._refresh(self.jobs[job_id])

    def cancel(self, job_id: str) -> ProcessJob | None:
        """Kill the job's whole process group; a finished job stays as it ended."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            self._refresh(job)
            if job.state in (SUCCEEDED, FAILED, CANCELLED):
                return job
            job.cancelled = True
            job.finished_at = time.monotonic()
            if job.process is not None:
                _kill_group(job.process)
            return job

    def logs(self, job_id: str) -> str:
        job = self.jobs.get(job_id)
        if job is None:
            return ""
        return job.log_path.read_text(errors="replace")

    def shutdown(self) -> None:
        """Kill every job still running (a fixture's teardown)."""
        with self._lock:
            for job in self.jobs.values():
                if job.process is not None and job.process.poll() is None:
                    _kill_group(job.process)

    def _refresh(self, job: ProcessJob) -> None:
        if job.cancelled or job.returncode is not None or job.held:
            self._active.discard(job.job_id)
            return
        if job.process is None:
            if time.monotonic() - job.created_at < job.pending_s:
                return
            try:
                job.process = self._start(job)
            except OSError as error:
                with job.log_path.open("a") as log:
                    log.write(f"cannot start {job.argv!r}: {error}\n")
                job.started_at = job.finished_at = time.monotonic()
                job.returncode = 127
                return
            job.started_at = time.monotonic()
        code = job.process.poll()
        if code is not None:
            job.returncode = code
            job.finished_at = time.monotonic()
            self._active.discard(job.job_id)

    def _start(self, job: ProcessJob) -> subprocess.Popen[bytes]:
        argv = list(job.argv)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {**os.environ, **job.env}
        if job.cwd:
            Path(job.cwd).mkdir(parents=True, exist_ok=True)
        with job.log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                cwd=job.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def _kill_group(process: subprocess.Popen[bytes], grace_s: float = 2.0) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; whatever else is left in its group gets no more grace.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def _safe(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", job_id)
