"""A loopback SageMaker for tests: moto's server for S3 and the rest, plus training jobs that run.

moto 5.2 (server mode) serves S3 and most SageMaker actions, but its training jobs report
``Completed`` the moment they are created and cannot be stopped, so moto alone cannot stand
in for training. ``FakeSageMaker`` is a ``LoopbackServer`` that the backend's boto3 client
talks to (``endpoint_url``) over real HTTP with the JSON protocol (``X-Amz-Target:
SageMaker.<Action>``). It answers the four training-job actions itself: ``CreateTrainingJob``
runs the request's ``ContainerEntrypoint`` with its ``Environment`` as a process group
(``ProcessJobs``), and ``DescribeTrainingJob``, ``ListTrainingJobs`` and ``StopTrainingJob``
read and change that process. Every other SageMaker action is proxied unchanged to moto, and S3
(job inputs, the staged outputs) goes straight to moto through ``AWS_ENDPOINT_URL``.

Why a front rather than patching moto's in-process SageMaker backend: the training-job state
then lives in one place we own (no second copy in moto to keep in step, no dependence on moto's
private classes), and the front gets ``Faults`` (5xx, 429, dropped connections) and per-action
call counts (``calls["POST ListTrainingJobs"]``) from ``LoopbackServer`` for free.

Lifecycle, as SageMaker reports it: ``InProgress``/``Starting`` while the job waits
(``pending_s``), ``InProgress``/``Training`` while its process runs, then ``Completed`` (exit
0) or ``Failed`` (``FailureReason``: the exit code). ``StopTrainingJob`` makes it
``Stopping`` while its process group is killed in the background, then ``Stopped``; stopping
a job that has ended is a ``ValidationException``, as on AWS. A job running longer than its
``MaxRuntimeInSeconds`` is stopped the same way and ends ``Stopped``/``MaxRuntimeExceeded``.
Every SageMaker request, the ones passed on to moto included, is first checked against the
constraints of its action's input shape in botocore's service model (``aws_rules``: each
member's pattern, length, enum and range, e.g. the tag value pattern that rejects a tab, the
63-character training job name, the training instance types) and answered
``ValidationException`` with AWS's wording when it breaks one; a member of the wrong JSON type
is a ``SerializationException``. ``CreateTrainingJob`` is also held to the API reference's
limits the model does not carry (at most 28 days of ``MaxRuntimeInSeconds``, an instance type
and count unless instance groups are given, no ``aws:`` tag keys). Moto checks none of this.

Jobs get the fake's own environment (``aws_environment()``: moto's endpoint and fake
credentials, as a container gets its role's credentials) plus ``TRAINING_JOB_NAME`` and
``TRAINING_JOB_ARN``, under the request's ``Environment``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

from ml_assets import transport
from ml_assets_testing import aws_rules
from ml_assets_testing.fakes import (
    CANCELLED,
    FAILED,
    PENDING,
    SUCCEEDED,
    Faults,
    LoopbackServer,
    ProcessJob,
    ProcessJobs,
    Request,
    Response,
)

if TYPE_CHECKING:
    import pytest

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/ml-assets-training"
IMAGE_URI = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/ml-assets-training:latest"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

_JSON = "application/x-amz-json-1.1"
_TARGET_PREFIX = "SageMaker."
_ENDED = ("Completed", "Failed", "Stopped")
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
# The API reference's limits that the service model does not carry.
MAX_RUNTIME_LIMIT_S = 28 * 86_400
_RESERVED_TAG_PREFIX = "aws:"


# The error code AWS gives each status code the fake answers on its own.
_AWS_ERROR_CODES = {
    404: "UnknownOperationException",
    405: "UnknownOperationException",
    429: "ThrottlingException",
    503: "ServiceUnavailable",
}


def _error(code: str, message: str, status: int = 400) -> Response:
    return Response(status, {"__type": code, "message": message}, content_type=_JSON)


def _ok(body: dict[str, Any]) -> Response:
    return Response(200, body, {"x-amzn-RequestId": str(uuid.uuid4())}, content_type=_JSON)


def _not_found() -> Response:
    return _error("ValidationException", "Requested resource not found.")


def _action(request: Request) -> str:
    target = next((v for k, v in request.headers.items() if k.lower() == "x-amz-target"), "")
    return target.removeprefix(_TARGET_PREFIX)


def _create_problem(body: dict[str, Any]) -> str | None:
    """What SageMaker would reject in a CreateTrainingJob beyond its model's shape constraints
    (which ``aws_rules`` checks for every action), or what this fake cannot run; or None."""
    algorithm = body.get("AlgorithmSpecification") or {}
    if not algorithm.get("TrainingImage") and not algorithm.get("AlgorithmName"):
        return "AlgorithmSpecification needs a TrainingImage or an AlgorithmName"
    resources = body.get("ResourceConfig") or {}
    if not resources.get("InstanceGroups"):
        if not resources.get("InstanceType"):
            return "ResourceConfig.InstanceType is required when InstanceGroups is not set"
        if resources.get("InstanceCount", 0) < 1:
            return "ResourceConfig.InstanceCount must be at least 1"
    if resources.get("VolumeSizeInGB", 0) < 1 and not resources.get("KeepAlivePeriodInSeconds"):
        return "ResourceConfig.VolumeSizeInGB must be at least 1"
    runtime = (body.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    if runtime is None or runtime > MAX_RUNTIME_LIMIT_S:
        return f"StoppingCondition.MaxRuntimeInSeconds must be between 1 and {MAX_RUNTIME_LIMIT_S}"
    for tag in body.get("Tags") or []:
        if str(tag.get("Key", "")).lower().startswith(_RESERVED_TAG_PREFIX):
            return f"Tag keys starting with {_RESERVED_TAG_PREFIX!r} are reserved: {tag['Key']!r}"
    if not algorithm.get("ContainerEntrypoint"):
        return "this fake runs a job's ContainerEntrypoint and has no image to take one from"
    return None


@dataclass
class TrainingJobRecord:
    """One training job as the fake knows it: the create request and how a stop went."""

    name: str
    arn: str
    request: dict[str, Any]
    created_at: float
    stop_reason: str | None = None  # the final SecondaryStatus: Stopped or MaxRuntimeExceeded
    stop_requested_at: float | None = None
    stopped: bool = False  # the stop has killed the job's processes


class FakeSageMaker(LoopbackServer):
    """SageMaker training on 127.0.0.1, backed by a moto server; see the module docstring.

    Args:
        root: a directory for the jobs' container logs.
        faults: failures injected into SageMaker calls (not into S3).
        pending_s: how long a job stays ``Starting`` before its process starts.
        lose_create_responses: answer this many accepted ``CreateTrainingJob`` calls with a 500,
            as if the answer were lost after the job was created (the client then retries).
    """

    tick_s = 0.05

    def __init__(
        self,
        root: Path,
        faults: Faults | None = None,
        pending_s: float = 0.2,
        lose_create_responses: int = 0,
    ) -> None:
        super().__init__(faults)
        self.processes = ProcessJobs(root, pending_s=pending_s)
        self.training_jobs: dict[str, TrainingJobRecord] = {}
        self.lose_create_responses = lose_create_responses
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._records_lock = threading.Lock()
        self._stoppers: list[threading.Thread] = []
        self._actions: dict[str, Callable[[dict[str, Any]], Response]] = {
            "CreateTrainingJob": self._create,
            "DescribeTrainingJob": self._describe,
            "ListTrainingJobs": self._list,
            "StopTrainingJob": self._stop,
        }
        self.route("POST", "/", self._serve)

    # -- lifecycle and settings -----------------------------------------------------------------

    def start(self) -> FakeSageMaker:
        self._moto.start()
        super().start()
        return self

    def stop(self) -> None:
        """Stop taking calls, kill every job (SIGKILL: a teardown needs no grace), stop moto."""
        super().stop()
        self.kill_jobs()
        for thread in self._stoppers:
            thread.join(timeout=10)
        self._moto.stop()

    def __enter__(self) -> FakeSageMaker:
        return self.start()

    @property
    def moto_url(self) -> str:
        host, port = self._moto.get_host_and_port()
        return f"http://{host}:{port}"

    def aws_environment(self) -> dict[str, str]:
        """What a process needs to use this fake's S3: moto's endpoint, fake keys, the region."""
        return {"AWS_ENDPOINT_URL": self.moto_url, **FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}

    def backend_settings(self, storage_root: str, **overrides: Any) -> dict[str, Any]:
        """A team's YAML ``backends.sagemaker`` section pointing at this fake."""
        return {
            "endpoint_url": self.url,
            "region_name": REGION,
            "role_arn": ROLE_ARN,
            "image_uri": IMAGE_URI,
            "storage_root": storage_root,
            **overrides,
        }

    def create_bucket(self, name: str | None = None) -> str:
        """A new S3 bucket in moto (moto's state is per process, so names must not repeat)."""
        bucket = name or f"ml-assets-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=bucket)
        return bucket

    def kill_jobs(self) -> None:
        """SIGKILL the process group of every job still running (and start no waiting one)."""
        for job in list(self.processes.jobs.values()):
            if job.process is not None and job.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait()

    def error_body(self, status: int, message: str) -> Any:
        """Faults and unrouted calls in the AWS JSON protocol's error shape, whose ``__type``
        botocore reads as the error code (a throttle is retried as one)."""
        return _error(_AWS_ERROR_CODES.get(status, "InternalFailure"), message, status).body

    def tick(self) -> None:
        """Start jobs whose wait is over and notice ended ones, as SageMaker does unasked."""
        # Records first: a record is added together with its process, so each has one.
        with self._records_lock:
            records = list(self.training_jobs.values())
        processes = {process.job_id: process for process in self.processes.all()}
        for record in records:
            self._enforce_runtime(record, processes[record.name])

    # -- the JSON protocol ----------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[str, Response]:
        """As ``LoopbackServer.dispatch``, but counted per action: ``POST <Action>``."""
        label, response = super().dispatch(request)
        action = _action(request)
        return (f"POST {action}" if action else label), response

    def _serve(self, request: Request) -> Response:
        action = _action(request)
        try:
            body = request.json()
            errors = aws_rules.request_errors("sagemaker", action, body)
        except (ValueError, aws_rules.SerializationError) as error:
            return _error("SerializationException", str(error))
        if errors:
            return _error("ValidationException", aws_rules.validation_message(errors))
        handler = self._actions.get(action)
        if handler is None:
            return self._forward(request)
        return handler(body)

    def _forward(self, request: Request) -> Response:
        """Any other action goes to moto as it came (moto reads the service from the signature)."""
        host, port = self._moto.get_host_and_port()
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(request.method, request.path, body=request.body, headers=headers)
            answer = connection.getresponse()
            return Response(
                answer.status, answer.read(), content_type=answer.getheader("Content-Type", _JSON)
            )
        finally:
            connection.close()

    # -- training jobs --------------------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> Response:
        problem = _create_problem(body)
        if problem:
            return _error("ValidationException", problem)
        name = body["TrainingJobName"]
        arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:training-job/{name.lower()}"
        algorithm = body["AlgorithmSpecification"]
        argv = [*algorithm["ContainerEntrypoint"], *algorithm.get("ContainerArguments", [])]
        env = {
            **self.aws_environment(),
            "TRAINING_JOB_NAME": name,
            "TRAINING_JOB_ARN": arn,
            **body.get("Environment", {}),
        }
        with self._records_lock:
            existing = self.training_jobs.get(name)
            if existing is not None:
                return _error(
                    "ResourceInUse",
                    "Training job names must be unique within an AWS account and region, and a "
                    f"training job with this name already exists ({existing.arn})",
                )
            self.training_jobs[name] = TrainingJobRecord(name, arn, body, time.time())
            self.processes.add(name, argv, env)
            if self.lose_create_responses > 0:
                self.lose_create_responses -= 1
                return _error("InternalFailure", "the answer was lost", status=500)
        return _ok({"TrainingJobArn": arn})

    def _record(self, name: str) -> TrainingJobRecord | None:
        with self._records_lock:
            return self.training_jobs.get(name)

    def _describe(self, body: dict[str, Any]) -> Response:
        record = self._record(body.get("TrainingJobName", ""))
        process = self.processes.get(record.name) if record else None
        if record is None or process is None:
            return _not_found()
        view = self._view(record, process)
        request = record.request
        algorithm = request["AlgorithmSpecification"]
        output = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        view.update(
            {
                "AlgorithmSpecification": algorithm,
                "RoleArn": request["RoleArn"],
                "OutputDataConfig": request["OutputDataConfig"],
                "ResourceConfig": request["ResourceConfig"],
                "StoppingCondition": request["StoppingCondition"],
                "Environment": request.get("Environment", {}),
                "ModelArtifacts": {
                    "S3ModelArtifacts": f"{output}/{record.name}/output/model.tar.gz"
                },
            }
        )
        if process.started_at is not None:
            view["TrainingStartTime"] = self._wall(record, process, process.started_at)
        return _ok(view)

    def _list(self, body: dict[str, Any]) -> Response:
        with self._records_lock:
            records = list(self.training_jobs.values())
        processes = {process.job_id: process for process in self.processes.all()}
        views = [self._view(record, processes[record.name]) for record in records]
        contains = str(body.get("NameContains", "")).lower()
        bounds = {
            "CreationTime": (body.get("CreationTimeAfter"), body.get("CreationTimeBefore")),
            "LastModifiedTime": (
                body.get("LastModifiedTimeAfter"),
                body.get("LastModifiedTimeBefore"),
            ),
        }
        status = body.get("StatusEquals")

        def wanted(view: dict[str, Any]) -> bool:
            if contains not in view["TrainingJobName"].lower():
                return False
            if status and view["TrainingJobStatus"] != status:
                return False
            for field_name, (after, before) in bounds.items():
                if after is not None and not view[field_name] > float(after):
                    return False
                if before is not None and not view[field_name] < float(before):
                    return False
            return True

        sort_by = body.get("SortBy", "CreationTime")
        fields = {"Name": ("TrainingJobName",), "Status": ("TrainingJobStatus", "TrainingJobName")}
        key_fields = fields.get(sort_by, ("CreationTime", "TrainingJobName"))

        def key(view: dict[str, Any]) -> list[Any]:
            return [view[field_name] for field_name in key_fields]

        descending = body.get("SortOrder", "Ascending") == "Descending"
        selected = sorted(filter(wanted, views), key=key, reverse=descending)
        max_results = body.get("MaxResults", 10)
        if not 1 <= max_results <= 100:
            return _error("ValidationException", "MaxResults must be between 1 and 100")
        if body.get("NextToken"):
            # The token is the sort key of the last job returned: pages stay stable while jobs
            # are added.
            try:
                last = json.loads(base64.urlsafe_b64decode(body["NextToken"]))
            except ValueError:
                return _error("ValidationException", "invalid NextToken")
            selected = [v for v in selected if (key(v) < last if descending else key(v) > last)]
        page = selected[:max_results]
        answer: dict[str, Any] = {"TrainingJobSummaries": page}
        if len(selected) > max_results:
            answer["NextToken"] = base64.urlsafe_b64encode(
                json.dumps(key(page[-1])).encode()
            ).decode()
        return _ok(answer)

    def _stop(self, body: dict[str, Any]) -> Response:
        record = self._record(body.get("TrainingJobName", ""))
        process = self.processes.get(record.name) if record else None
        if record is None or process is None:
            return _not_found()
        status = self._view(record, process)["TrainingJobStatus"]
        if status in _ENDED:
            return _error(
                "ValidationException",
                f"The request was rejected because the training job is in status {status}.",
            )
        self._begin_stop(record, "Stopped")
        return _ok({})

    def _begin_stop(self, record: TrainingJobRecord, reason: str) -> None:
        """Mark the job Stopping and kill its processes in the background, as SageMaker does."""
        with self._records_lock:
            if record.stop_reason is not None:
                return
            record.stop_reason = reason
            record.stop_requested_at = time.time()

            def kill() -> None:
                self.processes.cancel(record.name)
                record.stopped = True

            thread = threading.Thread(target=kill, daemon=True)
            self._stoppers.append(thread)
        thread.start()

    def _view(self, record: TrainingJobRecord, process: ProcessJob) -> dict[str, Any]:
        """The job's ``TrainingJobSummary`` (plus ``FailureReason``), from its process."""
        self._enforce_runtime(record, process)
        state = process.state
        view: dict[str, Any] = {}
        if state == SUCCEEDED:
            status, secondary = "Completed", "Completed"
        elif state == FAILED:
            status, secondary = "Failed", "Failed"
            view["FailureReason"] = (
                f"AlgorithmError: ExecuteUserScriptError: ExitCode {process.returncode}"
            )
        elif record.stop_reason is not None:
            if state == CANCELLED and record.stopped:
                status, secondary = "Stopped", record.stop_reason
            else:
                status, secondary = "Stopping", "Stopping"
        elif state == PENDING:
            status, secondary = "InProgress", "Starting"
        else:
            status, secondary = "InProgress", "Training"
        moments = [record.created_at, record.stop_requested_at or 0.0]
        moments += [
            self._wall(record, process, moment)
            for moment in (process.started_at, process.finished_at)
            if moment is not None
        ]
        view.update(
            {
                "TrainingJobName": record.name,
                "TrainingJobArn": record.arn,
                "CreationTime": record.created_at,
                "LastModifiedTime": max(moments),
                "TrainingJobStatus": status,
                "SecondaryStatus": secondary,
            }
        )
        if status in _ENDED:
            view["TrainingEndTime"] = max(moments)
        return view

    def _enforce_runtime(self, record: TrainingJobRecord, process: ProcessJob) -> None:
        runtime = record.request["StoppingCondition"]["MaxRuntimeInSeconds"]
        if (
            process.started_at is not None
            and process.finished_at is None
            and time.monotonic() - process.started_at > runtime
        ):
            self._begin_stop(record, "MaxRuntimeExceeded")

    @staticmethod
    def _wall(record: TrainingJobRecord, process: ProcessJob, monotonic: float) -> float:
        return record.created_at + (monotonic - process.created_at)


def use_fake_aws(fake: FakeSageMaker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's AWS clients at ``fake`` for one test: moto's S3, fake keys, no
    profile or config file of the machine's.

    Object-store clients are cached per process with the endpoint they were built with, so
    ``ml_assets.transport``'s cache is swapped for an empty one for the test's duration.
    """
    for name, value in fake.aws_environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SAGEMAKER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setattr(transport, "_cache", {})


# --- a benchmark ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def count_poll_calls(n: int, page_size: int = 100, running: bool = True) -> dict[str, Any]:
    """The SageMaker calls of ONE ``SageMakerBackend.poll`` over ``n`` jobs in flight.

    Starts a fake, submits ``n`` jobs whose command is ``sleep 300`` through the backend, waits
    until every one runs (or, with ``running=False``, keeps them all ``Starting`` so that no
    process is started: about 8 MB less per job), resets the call counts, polls once, then
    kills everything. Returns ``{"jobs", "calls", "by_route", "poll_seconds", "states"}``.
    """
    from ml_assets.backends import load_backend
    from ml_assets.backends.base import JobHandle, JobSpec, JobState
    from ml_assets.backends.remote import output_location

    expected = JobState.RUNNING if running else JobState.QUEUED
    with (
        tempfile.TemporaryDirectory(prefix="fake_sagemaker_") as scratch,
        FakeSageMaker(Path(scratch), pending_s=0.0 if running else 86_400) as fake,
        _environment(fake.aws_environment()),
    ):
        root = f"s3://{fake.create_bucket()}/bench"
        # Jobs upload nothing while they run (sync_seconds is longer than the benchmark).
        settings = fake.backend_settings(root, sync_seconds=3600, page_size=page_size)
        backend = load_backend("sagemaker", settings)
        drafts = [
            JobSpec(
                team="bench",
                model="poll",
                command=["sleep", "300"],
                output_uri="",
                idempotency_key=f"bench/poll/{index}",
            )
            for index in range(n)
        ]
        specs = [d.model_copy(update={"output_uri": output_location(root, d)}) for d in drafts]
        with ThreadPoolExecutor(max_workers=8) as pool:
            handles: list[JobHandle] = list(pool.map(backend.submit, specs))
        deadline = time.monotonic() + 300
        while any(s.state != expected for s in backend.poll(handles).values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} jobs were not all {expected.value} within 300 s")
            time.sleep(0.5)
        fake.reset_counts()
        started = time.monotonic()
        statuses = backend.poll(handles)
        elapsed = time.monotonic() - started
        by_route = dict(fake.calls)
    return {
        "jobs": n,
        "calls": sum(by_route.values()),
        "by_route": by_route,
        "poll_seconds": round(elapsed, 3),
        "states": dict(Counter(status.state.value for status in statuses.values())),
    }
