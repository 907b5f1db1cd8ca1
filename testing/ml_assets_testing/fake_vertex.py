"""A loopback Vertex AI (the v1 CustomJob endpoints) and GCS (gcp-storage-emulator) for tests.

``FakeVertex`` serves what ``VertexBackend`` calls through the official ``JobServiceClient``
over REST, in proto3 JSON (camelCase fields, enum names, RFC 3339 times):

===========================================================  ===================================
``POST /v1/projects/{p}/locations/{l}/customJobs``           CreateCustomJob
``GET  /v1/projects/{p}/locations/{l}/customJobs``           ListCustomJobs (filter, pageSize,
                                                             pageToken)
``GET  /v1/projects/{p}/locations/{l}/customJobs/{id}``      GetCustomJob
``POST /v1/projects/{p}/locations/{l}/customJobs/{id}:cancel``  CancelCustomJob
===========================================================  ===================================

Each job really runs its first worker pool's container command (the staged command, or an
unstaged job's own) as a process group through ``ProcessJobs``, with the container's env plus
``job_env`` (what the platform gives every job, e.g. ``STORAGE_EMULATOR_HOST``); its
``imageUri`` is only recorded, in the job as ``jobs()`` shows it: JOB_STATE_PENDING, then RUNNING,
then SUCCEEDED or FAILED (with Vertex's ``error``); cancel kills the group (CANCELLED).
``Faults`` apply to every call; ``create_then_fail_rate`` makes that fraction of creates create
the job and still answer 503, as a create whose answer is lost in transit.

Creates are checked against Vertex AI's documented rules (``vertex_rules``: the CustomJob proto,
labels, worker pools, machine types and their GPUs) and answered ``400 INVALID_ARGUMENT`` when
they break one; beyond those, the fake needs the first pool's ``containerSpec.command`` to run.

``GcsEmulator`` (from ``ml_assets_testing.gcs``) runs gcp-storage-emulator in memory on
127.0.0.1, with GCS's generation and metageneration preconditions on every object operation.

``count_poll_calls(n)`` measures the calls of one poll over ``n`` in-flight jobs.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml_assets_testing import vertex_rules
from ml_assets_testing.fakes import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Faults,
    LoopbackServer,
    ProcessJob,
    ProcessJobs,
    Request,
    Response,
)
from ml_assets_testing.gcs import GcsEmulator

_COLLECTION = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs"
_ONE = _COLLECTION + r"/(?P<job>[^/:]+)"

_STATE_NAMES = {
    PENDING: "JOB_STATE_PENDING",
    RUNNING: "JOB_STATE_RUNNING",
    SUCCEEDED: "JOB_STATE_SUCCEEDED",
    FAILED: "JOB_STATE_FAILED",
    CANCELLED: "JOB_STATE_CANCELLED",
}
_TERMINAL = {SUCCEEDED, FAILED, CANCELLED}
TICK_S = 0.05
# gRPC status codes in a job's ``error``, as Vertex reports them.
_INVALID_ARGUMENT, _CANCELLED_CODE = 3, 1

_FILTER_TERM = re.compile(
    r"(?P<field>labels\.[a-z][a-z0-9_-]*|display_name|state|create_time)\s*"
    r"(?P<op>!=|>=|<=|=|<|>)\s*(?P<value>\"[^\"]*\"|[^\s\"]+)"
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


# HTTP status -> the status name of Google's error bodies.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, message: str, code: str | None = None) -> Response:
    """A Google API error body, which google-api-core turns into its exception classes."""
    error = {"code": status, "message": message, "status": code or _STATUS_NAMES[status]}
    return Response(status, {"error": error})


def _page_size(value: str | None) -> int:
    """``pageSize`` as the API reads it: an int32, 0 (or none) meaning the default."""
    try:
        size = int(value or 0)
    except ValueError:
        raise ValueError(f"Invalid value at 'page_size' (TYPE_INT32), {value!r}") from None
    if size < 0:
        raise ValueError(f"page_size must not be negative, got {size}")
    return size


@dataclass
class _Job:
    name: str
    resource: dict[str, Any]
    created: datetime


Predicate = Callable[[dict[str, Any]], bool]


def _predicate(field: str, op: str, value: str) -> Predicate:
    compare = _COMPARE[op]
    if field == "create_time":
        moment = datetime.fromisoformat(value)
        return lambda job: compare(datetime.fromisoformat(job["createTime"]), moment)
    if op not in ("=", "!=") or (field.startswith("labels.") and op != "="):
        raise ValueError(f"{field} does not support {op!r}")
    if field.startswith("labels."):
        key = field.removeprefix("labels.")
        return lambda job: job.get("labels", {}).get(key) == value
    json_field = {"display_name": "displayName", "state": "state"}[field]
    return lambda job: compare(job.get(json_field), value)


def parse_filter(text: str) -> list[Predicate]:
    """The ``AND``-joined terms of a ListCustomJobs filter this fake understands.

    ``labels.<key>="v"``, ``display_name``/``state`` with ``=``/``!=`` and ``create_time``
    with any comparison; anything else raises ``ValueError`` (the service's 400).
    """
    predicates = []
    for term in (part.strip() for part in text.split(" AND ") if text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if not match:
            raise ValueError(f"unsupported filter term {term!r}")
        predicates.append(_predicate(match["field"], match["op"], match["value"].strip('"')))
    return predicates


def _problem(body: bytes) -> str | None:
    """Why Vertex AI (``vertex_rules``) or this fake would refuse this create, or ``None``."""
    try:
        problem = vertex_rules.custom_job_problem(vertex_rules.parse_custom_job(body))
    except ValueError as error:
        return str(error)
    if problem:
        return problem
    pools = json.loads(body)["jobSpec"]["workerPoolSpecs"]
    if "containerSpec" not in pools[0] or not pools[0]["containerSpec"].get("command"):
        return "this fake runs containerSpec.command; an image's own entrypoint cannot run here"
    return None


class FakeVertex(LoopbackServer):
    """The Vertex AI v1 CustomJob API on 127.0.0.1; jobs run as local process groups.

    Args:
        root: directory for the jobs' logs.
        job_env: environment every job gets on top of its container env (the platform's).
        faults: failures injected into every call.
        pending_s: how long a job stays JOB_STATE_PENDING before its command starts.
        create_then_fail_rate: fraction of creates that create the job and answer 503.
        seed: seed of the ``create_then_fail_rate`` draws.
        default_page_size / max_page_size: ListCustomJobs page size when none / too large a
            one is asked for.
    """

    tick_s = TICK_S

    def __init__(
        self,
        root: Path,
        job_env: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        pending_s: float = 0.2,
        create_then_fail_rate: float = 0.0,
        seed: int = 0,
        default_page_size: int = 100,
        max_page_size: int = 1000,
    ) -> None:
        super().__init__(faults)
        self.processes = ProcessJobs(root, pending_s=pending_s)
        self.job_env = dict(job_env or {})
        self.create_then_fail_rate = create_then_fail_rate
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self._random = random.Random(seed)
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1_000_000_001)
        self._jobs_lock = threading.Lock()
        self.route("POST", _COLLECTION, self._create)
        self.route("GET", _COLLECTION, self._list)
        self.route("GET", _ONE, self._get)
        self.route("POST", _ONE + ":cancel", self._cancel)

    def error_body(self, status: int, message: str) -> Any:
        """Faults and unrouted calls in Google's error shape, so google-api-core raises (and
        retries) its exception for the status rather than failing to parse the body."""
        return _error(status, message).body

    def tick(self) -> None:
        # A real service starts a job whether or not anyone is looking.
        self.processes.all()

    def backend_settings(self, **overrides: Any) -> dict[str, Any]:
        """``VertexSettings`` settings that point the backend at this fake."""
        return {
            "project": "ml-assets-test",
            "location": "us-central1",
            "image_uri": "us-docker.pkg.dev/ml-assets-test/training/ml-assets:test",
            "api_endpoint": f"127.0.0.1:{self.port}",
            "url_scheme": "http",
            "anonymous_credentials": True,
            **overrides,
        }

    def __enter__(self) -> FakeVertex:
        self.start()
        return self

    def stop(self) -> None:
        """Stop serving and kill every job still running."""
        super().stop()
        self.processes.shutdown()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job as the API shows it, oldest first."""
        with self._jobs_lock:
            names = list(self._jobs)
        return [self._view(name) for name in names]

    # -- routes ---------------------------------------------------------------------------------

    def _create(self, request: Request) -> Response:
        problem = _problem(request.body)
        if problem:
            return _error(400, problem)
        body = request.json()
        parent = f"projects/{request.params['project']}/locations/{request.params['location']}"
        name = f"{parent}/customJobs/{next(self._ids)}"
        container = body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
        argv = [*container["command"], *container.get("args", [])]
        env = {item["name"]: item.get("value", "") for item in container.get("env", [])}
        self.processes.add(name, argv, {**env, **self.job_env})
        with self._jobs_lock:
            self._jobs[name] = _Job(name, {**body, "name": name}, datetime.now(UTC))
            lost = self._random.random() < self.create_then_fail_rate
        if lost:
            return _error(503, "the job was created but the answer was lost")
        return Response(200, self._view(name))

    def _list(self, request: Request) -> Response:
        parent = f"projects/{request.params['project']}/locations/{request.params['location']}/"
        try:
            predicates = parse_filter(request.arg("filter") or "")
            offset = int(request.arg("pageToken") or 0)
            size = _page_size(request.arg("pageSize"))
        except ValueError as exc:
            return _error(400, str(exc))
        size = min(size or self.default_page_size, self.max_page_size)
        with self._jobs_lock:
            names = [name for name in self._jobs if name.startswith(parent)]
        matching = [job for job in map(self._view, names) if all(test(job) for test in predicates)]
        page: dict[str, Any] = {"customJobs": matching[offset : offset + size]}
        if offset + size < len(matching):
            page["nextPageToken"] = str(offset + size)
        return Response(200, page)

    def _get(self, request: Request) -> Response:
        name = self._name(request)
        if name not in self._jobs:
            return _error(404, f"CustomJob {name} not found")
        return Response(200, self._view(name))

    def _cancel(self, request: Request) -> Response:
        name = self._name(request)
        job = self.processes.get(name)
        if job is None:
            return _error(404, f"CustomJob {name} not found")
        if job.state in _TERMINAL:
            state = _STATE_NAMES[job.state]
            return _error(400, f"cannot cancel {name} in state {state}", "FAILED_PRECONDITION")
        self.processes.cancel(name)
        return Response(200, {})

    # -- views ----------------------------------------------------------------------------------

    @staticmethod
    def _name(request: Request) -> str:
        p = request.params
        return f"projects/{p['project']}/locations/{p['location']}/customJobs/{p['job']}"

    def _view(self, name: str) -> dict[str, Any]:
        record = self._jobs[name]
        process = self.processes.get(name)
        assert process is not None, f"{name} has no process record"
        view = {
            **record.resource,
            "state": _STATE_NAMES[process.state],
            "createTime": _rfc3339(record.created),
            "updateTime": _rfc3339(datetime.now(UTC)),
        }
        if process.started_at is not None:
            view["startTime"] = _rfc3339(self._wall(record, process, process.started_at))
        if process.finished_at is not None:
            view["endTime"] = _rfc3339(self._wall(record, process, process.finished_at))
        if process.state == FAILED:
            view["error"] = {
                "code": _INVALID_ARGUMENT,
                "message": f"The replica workerpool0-0 exited with a non-zero status of "
                f"{process.returncode}.",
            }
        elif process.state == CANCELLED:
            view["error"] = {"code": _CANCELLED_CODE, "message": "CANCELED"}
        return view

    @staticmethod
    def _wall(record: _Job, process: ProcessJob, monotonic: float) -> datetime:
        return record.created + timedelta(seconds=monotonic - process.created_at)


# --- the poll benchmark ------------------------------------------------------------------------


def count_poll_calls(n: int, page_size: int = 100) -> dict[str, Any]:
    """The Vertex API calls of ONE ``VertexBackend.poll`` over ``n`` in-flight jobs.

    Starts a ``GcsEmulator`` and a ``FakeVertex``, submits ``n`` jobs running ``sleep 300``
    through the backend, resets the fake's call counts, polls all handles once and returns
    ``{"jobs", "calls", "by_route", "states"}``; everything is stopped afterwards. The jobs stay
    JOB_STATE_PENDING (an hour's pending time), so no processes start: poll treats pending and
    running jobs alike, and n sleeping interpreters would only load the machine.
    """
    from ml_assets.backends import remote
    from ml_assets.backends.base import JobSpec
    from ml_assets.backends.vertex import VertexBackend, VertexSettings

    bucket = "ml-assets-bench"
    with (
        tempfile.TemporaryDirectory(prefix="fake_vertex_bench_") as scratch,
        GcsEmulator([bucket]) as gcs,
        FakeVertex(Path(scratch), job_env=gcs.env, pending_s=3600.0) as fake,
    ):
        root = f"gs://{bucket}/root"
        settings = fake.backend_settings(storage_root=root, page_size=page_size)
        backend = VertexBackend(VertexSettings(**settings), storage_client=gcs.client())
        handles = []
        for index in range(n):
            spec = JobSpec(
                team="bench",
                model="sleeper",
                command=["sleep", "300"],
                output_uri="",
                idempotency_key=f"bench/sleeper/run-{index}/0",
            )
            spec = spec.model_copy(update={"output_uri": remote.output_location(root, spec)})
            handles.append(backend.submit(spec))
        fake.reset_counts()
        statuses = backend.poll(handles)
        by_route = dict(fake.calls)
    states: dict[str, int] = {}
    for status in statuses.values():
        states[status.state.value] = states.get(status.state.value, 0) + 1
    return {"jobs": n, "calls": sum(by_route.values()), "by_route": by_route, "states": states}
