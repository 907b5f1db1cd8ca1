"""A loopback fake of the Databricks REST endpoints that ``databricks-sdk`` calls for ml_assets.

``FakeDatabricks`` serves, over real HTTP on 127.0.0.1 and behind a bearer token:

* Jobs API 2.1/2.2 ``runs/submit`` (``idempotency_token``: the same token gives the same run),
  ``runs/list`` (newest first; ``run_type``, ``start_time_from``/``to``, ``active_only``,
  ``completed_only``; ``limit`` 1-25 with ``next_page_token`` pages), ``runs/get``,
  ``runs/get-output`` (of a task run; stdout once the run has ended) and ``runs/cancel``;
* Clusters API 2.0/2.1 ``list-node-types`` and ``spark-versions``: the node types and runtimes this
  workspace offers (``databricks_rules.NODE_TYPES``/``SPARK_VERSIONS``);
* DBFS API 2.0 ``get-status``, ``create``/``add-block``/``close``, ``put``, ``read`` (offset,
  length, base64 data), ``mkdirs`` and ``delete``, backed by a local directory.

A run's one task really runs, through ``ProcessJobs``: a ``python_wheel_task`` with package
``ml_assets`` and entry point ``ml-assets-job`` as ``python -m ml_assets.training.stage
<parameters>``, a ``spark_python_task`` as ``python <python_file> <parameters>`` (a ``dbfs:/``
file is read from this fake's DBFS, any other path from this machine, standing in for the
workspace). The cluster's ``docker_image`` is only recorded, in ``submitted``. Its
environment is the cluster's ``spark_env_vars`` plus ``job_env`` plus ``DATABRICKS_HOST`` and
``DATABRICKS_TOKEN`` of this fake, as a Databricks runtime gives its jobs credentials, so the
staged upload to ``dbfs:/`` lands here. Runs go PENDING, RUNNING, then TERMINATED with SUCCESS,
FAILED or CANCELED; cancel kills the run's process group. ``Faults`` apply to every call, and
``lose_answers`` makes the next calls of a route fail with a 500 after they took effect.

A ``runs/submit`` is checked against the Jobs API's request shape (``400 MALFORMED_REQUEST``)
and the workspace's rules (``databricks_rules``, ``400 INVALID_PARAMETER_VALUE``): known node
types and runtimes, GPU nodes on GPU ML runtimes, no ML runtime in a custom container, custom
tag limits, library sources (no DBFS-root libraries on runtime 15.0+, no eggs on 14.0+), task
keys and task types. Beyond those the fake runs one task per run, on a ``new_cluster``.

``count_poll_calls(n)`` measures what one ``DatabricksBackend.poll`` of n in-flight jobs costs.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ml_assets_testing import databricks_rules
from ml_assets_testing.fakes import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Faults,
    Handler,
    LoopbackServer,
    ProcessJob,
    ProcessJobs,
    Request,
    Response,
)

DEFAULT_TOKEN = "fake-databricks-token"
# Wheel entry points the fake can run, and the module each one is.
ENTRY_POINTS = {("ml_assets", "ml-assets-job"): "ml_assets.training.stage"}
MAX_LIMIT = 25
MAX_BLOCK = 1024 * 1024
MAX_OUTPUT = 5 * 1024 * 1024
_JOBS = r"/api/2\.[12]/jobs/runs"
_DBFS = "/api/2.0/dbfs"
_CLUSTERS = r"/api/2\.[01]/clusters"

# ProcessJobs states -> Databricks (life_cycle_state, result_state, state_message).
_STATES: dict[str, tuple[str, str | None, str]] = {
    PENDING: ("PENDING", None, "Waiting for cluster"),
    RUNNING: ("RUNNING", None, "In run"),
    SUCCEEDED: ("TERMINATED", "SUCCESS", ""),
    FAILED: ("TERMINATED", "FAILED", "Workload failed, see run output for details"),
    CANCELLED: ("TERMINATED", "CANCELED", "Run cancelled."),
}


# The error code the REST API gives each status code the fake answers on its own.
_ERROR_CODES = {
    404: "ENDPOINT_NOT_FOUND",
    405: "ENDPOINT_NOT_FOUND",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error_code": code, "message": message})


def _bad(message: str) -> Response:
    return _error(400, "INVALID_PARAMETER_VALUE", message)


@dataclass
class FakeRun:
    """One submitted run: what was asked for and the ids the service gave it."""

    run_id: int
    task_run_id: int
    run_name: str
    start_time: int
    task: dict[str, Any]


class FakeDatabricks(LoopbackServer):
    """The Jobs and DBFS endpoints of one workspace; see the module docstring.

    Args:
        root: a directory for the runs' logs and the DBFS files.
        token: the bearer token every call must carry.
        faults: faults to inject into calls.
        pending_s: how long a run stays PENDING before its process starts.
        job_env: extra environment of every run's process (the platform's, not the job's).
    """

    tick_s = 0.05

    def __init__(
        self,
        root: Path,
        token: str = DEFAULT_TOKEN,
        faults: Faults | None = None,
        pending_s: float = 0.2,
        job_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(faults)
        self.token = token
        self.job_env = dict(job_env or {})
        self.processes = ProcessJobs(root / "runs", pending_s=pending_s)
        self.dbfs_root = root / "dbfs"
        self.dbfs_root.mkdir(parents=True, exist_ok=True)
        self.runs: dict[int, FakeRun] = {}
        self.submitted: list[dict[str, Any]] = []
        self._by_token: dict[str, int] = {}
        self._by_task: dict[int, int] = {}
        self._uploads: dict[int, tuple[Path, bytearray]] = {}
        self._run_ids = itertools.count(1000, 2)
        self._upload_handles = itertools.count(1)
        self._state_lock = threading.Lock()
        self._lost: Counter[str] = Counter()
        for method, pattern, handler in (
            ("POST", f"{_JOBS}/submit", self._submit),
            ("GET", f"{_JOBS}/list", self._list),
            ("GET", f"{_JOBS}/get", self._get),
            ("GET", f"{_JOBS}/get-output", self._get_output),
            ("POST", f"{_JOBS}/cancel", self._cancel),
            ("GET", f"{_CLUSTERS}/list-node-types", self._node_types),
            ("GET", f"{_CLUSTERS}/spark-versions", self._spark_versions),
            ("GET", f"{_DBFS}/get-status", self._get_status),
            ("POST", f"{_DBFS}/create", self._create),
            ("POST", f"{_DBFS}/add-block", self._add_block),
            ("POST", f"{_DBFS}/close", self._close),
            ("POST", f"{_DBFS}/put", self._put),
            ("GET", f"{_DBFS}/read", self._read),
            ("POST", f"{_DBFS}/mkdirs", self._mkdirs),
            ("POST", f"{_DBFS}/delete", self._delete),
        ):
            self.route(method, pattern, self._guarded(handler))

    # -- lifecycle and test hooks ---------------------------------------------------------------

    def start(self) -> FakeDatabricks:
        super().start()
        return self

    def __enter__(self) -> FakeDatabricks:
        return self.start()

    def error_body(self, status: int, message: str) -> Any:
        """Faults and unrouted calls in the REST API's ``{"error_code", "message"}`` shape."""
        return _error(status, _ERROR_CODES.get(status, "INTERNAL_ERROR"), message).body

    def tick(self) -> None:
        """Move runs along (start, reap) as the service's scheduler would."""
        self.processes.all()

    def stop(self) -> None:
        """Stop serving and kill every run still running, at once: a cluster torn down, with
        no grace in which each staged wrapper would upload what it has."""
        self._halt.set()
        for job in list(self.processes.jobs.values()):
            if job.process is not None and job.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.process.pid, signal.SIGKILL)
        self.processes.shutdown()
        super().stop()

    @property
    def client_env(self) -> dict[str, str]:
        """The variables that point ``databricks-sdk`` (and so the dbfs transport) at this fake."""
        return {"DATABRICKS_HOST": self.url, "DATABRICKS_TOKEN": self.token}

    def backend_settings(self, **settings: Any) -> dict[str, Any]:
        """``DatabricksSettings`` settings that reach this fake, plus ``settings``."""
        return {"host": self.url, "token": self.token, **settings}

    def lose_answers(self, route: str, times: int = 1) -> None:
        """The next ``times`` calls whose path ends with ``route`` (e.g. ``"runs/submit"``) take
        effect but are answered 500, as when a gateway loses the service's answer."""
        with self._state_lock:
            self._lost[route] += times

    def calls_to(self, fragment: str) -> int:
        """Calls answered so far on routes whose label contains ``fragment``."""
        with self._lock:
            return sum(n for label, n in self.calls.items() if fragment in label)

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the bearer-token check and ``lose_answers``."""

        def guarded(request: Request) -> Response:
            headers = {name.lower(): value for name, value in request.headers.items()}
            if headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "UNAUTHENTICATED", "Invalid access token.")
            response = handler(request)
            with self._state_lock:
                lost = next((r for r in self._lost if request.path.endswith(r)), None)
                if lost is not None:
                    self._lost[lost] -= 1
                    if not self._lost[lost]:
                        del self._lost[lost]
                    return _error(500, "INTERNAL_ERROR", "the answer was lost")
            return response

        return guarded

    # -- jobs -----------------------------------------------------------------------------------

    def _node_types(self, request: Request) -> Response:
        nodes = [node.as_json() for node in databricks_rules.NODE_TYPES.values()]
        return Response(200, {"node_types": nodes})

    def _spark_versions(self, request: Request) -> Response:
        versions = [
            {"key": key, "name": name} for key, name in databricks_rules.SPARK_VERSIONS.items()
        ]
        return Response(200, {"versions": versions})

    def _submit(self, request: Request) -> Response:
        try:
            body = request.json()
            databricks_rules.check_submit_shape(body)
        except (ValueError, databricks_rules.MalformedRequest) as error:
            return _error(400, "MALFORMED_REQUEST", f"Could not parse request object: {error}")
        problem = databricks_rules.submit_problem(body)
        if problem:
            return _bad(problem)
        tasks = body["tasks"]
        if len(tasks) != 1:
            return _bad("the fake runs exactly one task per run")
        task = tasks[0]
        argv = self._task_argv(task)
        if isinstance(argv, Response):
            return argv
        cluster = task.get("new_cluster")
        if not cluster:
            return _bad("the fake runs tasks on a new_cluster only")
        token = body.get("idempotency_token")
        with self._state_lock:
            if token and token in self._by_token:
                return Response(200, {"run_id": self._by_token[token]})
            run_id = next(self._run_ids)
            run = FakeRun(
                run_id=run_id,
                task_run_id=run_id + 1,
                run_name=body.get("run_name") or "Untitled",
                start_time=int(time.time() * 1000),
                task=task,
            )
            env = {**cluster.get("spark_env_vars", {}), **self.job_env, **self.client_env}
            self.processes.add(str(run.run_id), argv, env)
            self.runs[run.run_id] = run
            self._by_task[run.task_run_id] = run.run_id
            self.submitted.append(body)
            if token:
                self._by_token[token] = run.run_id
        return Response(200, {"run_id": run.run_id, "number_in_job": run.run_id})

    def _task_argv(self, task: dict[str, Any]) -> list[str] | Response:
        """The command a task runs, or the 400 for a task this fake cannot run."""
        if "spark_python_task" in task:
            python = task["spark_python_task"]
            raw = python.get("python_file")
            if not isinstance(raw, str) or not raw:
                return _bad("spark_python_task.python_file is required")
            if raw.startswith("dbfs:/"):
                path = self._local(raw.removeprefix("dbfs:"))
                if isinstance(path, Response):
                    return path
                raw = str(path)
            return ["python", raw, *python.get("parameters", [])]
        wheel = task.get("python_wheel_task") or {}
        module = ENTRY_POINTS.get((str(wheel.get("package_name")), str(wheel.get("entry_point"))))
        if module is None:
            known = ", ".join(f"{p}:{e}" for p, e in ENTRY_POINTS)
            return _bad(
                f"the fake runs only a spark_python_task or python_wheel_task entry points {known}"
            )
        return ["python", "-m", module, *wheel.get("parameters", [])]

    def _process(self, run: FakeRun) -> ProcessJob:
        job = self.processes.get(str(run.run_id))
        assert job is not None, f"run {run.run_id} has no process"
        return job

    def _run_json(self, run: FakeRun, job: ProcessJob, with_tasks: bool) -> dict[str, Any]:
        life, result, message = _STATES[job.state]
        state: dict[str, Any] = {
            "life_cycle_state": life,
            "state_message": message,
            "user_cancelled_or_timedout": job.cancelled,
        }
        if result:
            state["result_state"] = result
        document: dict[str, Any] = {
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "run_name": run.run_name,
            "run_type": "SUBMIT_RUN",
            "creator_user_name": "ml-assets@fake.databricks",
            "run_page_url": f"{self.url}/#job/runs/{run.run_id}",
            "start_time": run.start_time,
            "state": state,
        }
        if job.finished_at is not None:
            elapsed = job.finished_at - job.created_at
            document["end_time"] = run.start_time + int(elapsed * 1000)
        if with_tasks:
            task = {**run.task, "run_id": run.task_run_id, "start_time": run.start_time}
            document["tasks"] = [{**task, "state": state}]
        return document

    def _list(self, request: Request) -> Response:
        try:
            limit = int(request.arg("limit", "20") or 20) or MAX_LIMIT
            start_from = int(request.arg("start_time_from", "0") or 0)
            start_to = int(request.arg("start_time_to", "0") or 0)
        except ValueError as exc:
            return _bad(str(exc))
        if not 1 <= limit <= MAX_LIMIT:
            return _bad(f"limit must be greater than 0 and at most {MAX_LIMIT}, got {limit}")
        page_token = request.arg("page_token")
        after: tuple[int, int] | None = None
        if page_token:
            start, _, run_id = page_token.partition("-")
            if not (start.isdigit() and run_id.isdigit()):
                return _bad(f"invalid page_token {page_token!r}")
            after = (int(start), int(run_id))
        active_only = request.arg("active_only") == "true"
        completed_only = request.arg("completed_only") == "true"
        run_type = request.arg("run_type")
        with self._state_lock:
            runs = sorted(self.runs.values(), key=lambda r: (r.start_time, r.run_id), reverse=True)
        if run_type not in (None, "SUBMIT_RUN"):
            runs = []  # every run of this fake is a one-time (SUBMIT_RUN) run
        selected = []
        for run in runs:
            if run.start_time < start_from or (start_to and run.start_time > start_to):
                continue
            if after is not None and (run.start_time, run.run_id) >= after:
                continue
            job = self._process(run)
            ended = job.state in (SUCCEEDED, FAILED, CANCELLED)
            if (active_only and ended) or (completed_only and not ended):
                continue
            selected.append((run, job))
            if len(selected) > limit:
                break
        page = selected[:limit]
        with_tasks = request.arg("expand_tasks") == "true"
        body: dict[str, Any] = {
            "runs": [self._run_json(run, job, with_tasks) for run, job in page],
            "has_more": len(selected) > limit,
        }
        if body["has_more"]:
            last = page[-1][0]
            body["next_page_token"] = f"{last.start_time}-{last.run_id}"
        return Response(200, body)

    def _find(self, raw: Any) -> FakeRun | None:
        with contextlib.suppress(TypeError, ValueError):
            return self.runs.get(int(raw))
        return None

    def _get(self, request: Request) -> Response:
        run = self._find(request.arg("run_id"))
        if run is None:
            return _bad(f"Run {request.arg('run_id')} does not exist.")
        return Response(200, self._run_json(run, self._process(run), with_tasks=True))

    def _get_output(self, request: Request) -> Response:
        raw = request.arg("run_id")
        if self._find(raw) is not None:
            return _bad(
                "Retrieving the output of runs with multiple tasks is not supported. Please "
                "retrieve the output of each individual task run instead."
            )
        parent = self._by_task.get(int(raw)) if raw and raw.isdigit() else None
        if parent is None:
            return _bad(f"Run {raw} does not exist.")
        run = self.runs[parent]
        job = self._process(run)
        document: dict[str, Any] = {"metadata": self._run_json(run, job, with_tasks=False)}
        if job.state in (SUCCEEDED, FAILED, CANCELLED):
            logs = self.processes.logs(str(run.run_id))
            document["logs"] = logs[-MAX_OUTPUT:]
            document["logs_truncated"] = len(logs) > MAX_OUTPUT
        if job.state == FAILED:
            document["error"] = f"the wheel task exited with status {job.returncode}"
        if job.state == CANCELLED:
            document["error"] = "Run cancelled."
        return Response(200, document)

    def _cancel(self, request: Request) -> Response:
        run = self._find(request.json().get("run_id"))
        if run is None:
            return _bad(f"Run {request.json().get('run_id')} does not exist.")
        self.processes.cancel(str(run.run_id))
        return Response(200, {})

    # -- DBFS -----------------------------------------------------------------------------------

    def _local(self, raw: Any) -> Path | Response:
        """The file under ``dbfs_root`` a DBFS path names, or a 400 for a bad path."""
        if not isinstance(raw, str) or not raw.startswith("/"):
            return _bad(f"Path must be absolute: {raw!r}")
        parts = PurePosixPath(raw).parts[1:]
        if ".." in parts:
            return _bad(f"Path must not contain '..': {raw!r}")
        return self.dbfs_root.joinpath(*parts)

    def _missing(self, raw: Any) -> Response:
        return _error(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {raw}.")

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def _get_status(self, request: Request) -> Response:
        raw = request.arg("path")
        path = self._local(raw)
        if isinstance(path, Response):
            return path
        if not path.exists():
            return self._missing(raw)
        stat = path.stat()
        return Response(
            200,
            {
                "path": raw,
                "is_dir": path.is_dir(),
                "file_size": 0 if path.is_dir() else stat.st_size,
                "modification_time": int(stat.st_mtime * 1000),
            },
        )

    def _writable(self, raw: Any, overwrite: bool) -> Path | Response:
        path = self._local(raw)
        if isinstance(path, Response):
            return path
        if path.is_dir() or (path.exists() and not overwrite):
            return _error(
                400,
                "RESOURCE_ALREADY_EXISTS",
                f"A file or directory already exists at the input path {raw}.",
            )
        return path

    def _create(self, request: Request) -> Response:
        body = request.json()
        path = self._writable(body.get("path"), bool(body.get("overwrite")))
        if isinstance(path, Response):
            return path
        with self._state_lock:
            handle = next(self._upload_handles)
            self._uploads[handle] = (path, bytearray())
        return Response(200, {"handle": handle})

    def _add_block(self, request: Request) -> Response:
        body = request.json()
        data = base64.b64decode(body.get("data") or "")
        if len(data) > MAX_BLOCK:
            return _error(400, "MAX_BLOCK_SIZE_EXCEEDED", "A block may hold at most 1 MB.")
        with self._state_lock:
            upload = self._uploads.get(body.get("handle"))
            if upload is None:
                return self._missing(f"handle {body.get('handle')}")
            upload[1].extend(data)
        return Response(200, {})

    def _close(self, request: Request) -> Response:
        handle = request.json().get("handle")
        with self._state_lock:
            upload = self._uploads.pop(handle, None)
        if upload is None:
            return self._missing(f"handle {handle}")
        self._write(upload[0], bytes(upload[1]))
        return Response(200, {})

    def _put(self, request: Request) -> Response:
        body = request.json()
        path = self._writable(body.get("path"), bool(body.get("overwrite")))
        if isinstance(path, Response):
            return path
        self._write(path, base64.b64decode(body.get("contents") or ""))
        return Response(200, {})

    def _read(self, request: Request) -> Response:
        raw = request.arg("path")
        path = self._local(raw)
        if isinstance(path, Response):
            return path
        if not path.is_file():
            return self._missing(raw) if not path.exists() else _bad(f"{raw} is a directory")
        offset = int(request.arg("offset", "0") or 0)
        length = int(request.arg("length", str(MAX_BLOCK // 2)) or 0)
        if length > MAX_BLOCK or offset < 0 or length < 0:
            return _bad(f"offset must be >= 0 and length between 0 and {MAX_BLOCK}")
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        return Response(200, {"bytes_read": len(data), "data": base64.b64encode(data).decode()})

    def _mkdirs(self, request: Request) -> Response:
        path = self._local(request.json().get("path"))
        if isinstance(path, Response):
            return path
        if path.is_file():
            return _error(400, "RESOURCE_ALREADY_EXISTS", f"{path.name} is a file")
        path.mkdir(parents=True, exist_ok=True)
        return Response(200, {})

    def _delete(self, request: Request) -> Response:
        body = request.json()
        path = self._local(body.get("path"))
        if isinstance(path, Response):
            return path
        if path.is_dir():
            if any(path.iterdir()) and not body.get("recursive"):
                return _error(400, "IO_ERROR", "Directory is not empty; use recursive.")
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return Response(200, {})


def count_poll_calls(n: int, page_size: int = MAX_LIMIT) -> dict[str, Any]:
    """Submit ``n`` jobs (``sleep 300``) to a fresh fake, then count the calls of ONE poll.

    The runs stay PENDING (their processes are never started: a poll costs the same for
    pending and running runs, as both are answered by the list alone, and 1,000 staged Python
    processes would not fit a small machine). Returns ``{"jobs", "calls", "by_route",
    "states"}``; the fake and everything it started are gone afterwards.
    """
    from ml_assets.backends.base import JobSpec
    from ml_assets.backends.databricks import DatabricksSettings

    with (
        tempfile.TemporaryDirectory(prefix="ml_assets_fake_databricks_") as scratch,
        FakeDatabricks(Path(scratch), pending_s=24 * 3600.0) as fake,
    ):
        settings = DatabricksSettings(
            **fake.backend_settings(storage_root="dbfs:/bench", page_size=page_size)
        )
        backend = settings.get_backend()
        handles = []
        for index in range(n):
            spec = JobSpec(
                team="bench",
                model="sleeper",
                command=["sleep", "300"],
                output_uri=f"dbfs:/bench/jobs/{index}",
                idempotency_key=f"bench-{index}",
            )
            handles.append(backend.submit(spec))
        fake.reset_counts()
        statuses = backend.poll(handles)
        return {
            "jobs": n,
            "calls": fake.total_calls(),
            "by_route": dict(fake.calls),
            "states": dict(Counter(status.state.value for status in statuses.values())),
        }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(count_poll_calls(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2))
