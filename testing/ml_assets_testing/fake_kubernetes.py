"""A loopback fake of the Kubernetes API server that really runs each Job's container command.

Only what ml_assets' Kubernetes backend calls through the official ``kubernetes`` client:

======  ==========================================  =============================================
method  path                                        behaviour
======  ==========================================  =============================================
POST    /apis/batch/v1/namespaces/{ns}/jobs         create (422 if invalid, 409 AlreadyExists)
GET     /apis/batch/v1/namespaces/{ns}/jobs         list: ``labelSelector``, ``limit``, ``continue``
GET     /apis/batch/v1/namespaces/{ns}/jobs/{name}  read (404 NotFound); ``.../{name}/status`` too
DELETE  /apis/batch/v1/namespaces/{ns}/jobs/{name}  delete: ``propagationPolicy`` Background or
                                                    Foreground kills the pod's process group and
                                                    removes the pod; Orphan (the API's default for
                                                    Jobs) leaves the pod running
GET     /api/v1/namespaces/{ns}/pods                list pods (``labelSelector``)
GET     /api/v1/namespaces/{ns}/pods/{name}/log     the pod's output (``tailLines``; 400 while the
                                                    container waits to start)
======  ==========================================  =============================================

Each Job gets one pod ``<job>-<5 chars>`` labelled ``job-name=<job>``; its container's ``command +
args`` runs through ``ProcessJobs`` in the container's ``workingDir`` (if set) with ``job_env`` (the
platform's own settings, e.g. storage endpoints) overlaid by the container's ``env``. The
container's ``image`` is only recorded, in the stored manifest (``job_manifest``). Job status
follows the process the way the Job controller reports it: ``active``/``ready``, then
``succeeded``/``failed`` with a ``Complete``/``Failed`` condition (after
``SuccessCriteriaMet``/``FailureTarget``, as Kubernetes 1.31+ does). The fake runs single-pod Jobs
only: it rejects ``backoffLimit`` other than 0 and ``restartPolicy`` other than Never. A controller
thread starts pods and applies ``ttlSecondsAfterFinished``. ``token`` makes every call require
``Authorization: Bearer <token>``.

``hold`` (``"pending"`` or ``"running"``, settable at any time) holds every Job created from then
on in that state without running its command: its pod waits to be scheduled, or runs (with an
empty log), until ``end_held`` ends many of them at once as succeeded or failed. Everything else
(listing, reads, deletes, TTL) treats held Jobs like any other, so a benchmark can keep
thousands of Jobs in flight without thousands of processes; a held job writes no output, so the
benchmark writes what each job would have left in its output folder itself.

``count_poll_calls(n)`` measures one backend poll over ``n`` in-flight jobs (see its docstring).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_assets_testing.fakes import (
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

if TYPE_CHECKING:
    from ml_assets.backends.base import JobSpec
    from ml_assets.backends.kubernetes import KubernetesBackendResource

_NS = r"(?P<ns>[a-z0-9-]+)"
_NAME = r"(?P<name>[^/]+)"
JOBS = f"/apis/batch/v1/namespaces/{_NS}/jobs"
JOB = f"{JOBS}/{_NAME}"
JOB_STATUS = f"{JOB}/status"
PODS = f"/api/v1/namespaces/{_NS}/pods"
POD_LOG = f"{PODS}/{_NAME}/log"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_POD_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_CONTROLLER_PERIOD_S = 0.05
# How often the TTL controller looks for finished Jobs to delete (it walks every Job).
_REAP_PERIOD_S = 0.5


def _timestamp(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _wall(monotonic: float | None) -> float | None:
    """A ``time.monotonic()`` reading as wall-clock time."""
    return None if monotonic is None else time.time() - (time.monotonic() - monotonic)


def _status(code: int, reason: str, message: str, **details: str) -> Response:
    """A ``v1.Status`` answer, as the API server sends for errors and deletes."""
    return Response(
        code,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success" if code < 400 else "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        },
    )


def _label_problems(labels: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if not _LABEL_NAME.match(name) or (prefix and not _LABEL_PREFIX.match(prefix)):
            problems.append(f"metadata.labels: Invalid value: {key!r}: invalid label key")
        if not isinstance(value, str) or (value and not _LABEL_NAME.match(value)):
            problems.append(f"metadata.labels: Invalid value: {value!r}: invalid label value")
    return problems


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "exists" or "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        equal = labels.get(self.key) == self.value
        return equal if self.op == "=" else not equal


def parse_selector(selector: str) -> list[_Requirement]:
    """Equality-based label selector terms (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``)."""
    requirements = []
    for term in (part.strip() for part in selector.split(",")):
        if not term:
            continue
        match = re.fullmatch(r"([^=!\s]+)\s*(!=|==|=)\s*([^=!\s]*)", term)
        if match:
            op = "!=" if match[2] == "!=" else "="
            requirements.append(_Requirement(match[1], op, match[3]))
        elif re.fullmatch(r"!?[^=!\s(),]+", term):
            negated = term.startswith("!")
            requirements.append(_Requirement(term.lstrip("!"), "!exists" if negated else "exists"))
        else:
            raise ValueError(f"unable to parse requirement {term!r}")
    return requirements


@dataclass
class FakeJob:
    """One Job as stored: the manifest it was created with plus server-set metadata."""

    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    created_at: float
    resource_version: int
    pod_name: str

    @property
    def template(self) -> dict[str, Any]:
        template: dict[str, Any] = self.manifest["spec"]["template"]
        return template

    @property
    def container(self) -> dict[str, Any]:
        container: dict[str, Any] = self.template["spec"]["containers"][0]
        return container


class FakeKubernetes(LoopbackServer):
    """The fake API server; see the module docstring. Use as a context manager or start/stop.

    Attributes:
        processes: the pods' processes, keyed by job uid.
        created: how many times each ``namespace/name`` was created (a re-run shows as 2).
    """

    tick_s = _CONTROLLER_PERIOD_S

    def __init__(
        self,
        root: Path,
        *,
        faults: Faults | None = None,
        job_env: Mapping[str, str] | None = None,
        pending_s: float = 0.2,
        token: str | None = None,
        create_timeouts: int = 0,
        hold: str | None = None,
    ) -> None:
        """``create_timeouts``: that many creates store the job but answer 504, as an API server
        whose write went through after its request deadline passed. ``hold``: see the module
        docstring."""
        super().__init__(faults)
        self.processes = ProcessJobs(root, pending_s=pending_s)
        self.job_env = dict(job_env or {})
        self.token = token
        self.create_timeouts = create_timeouts
        self.hold = hold
        self.created: Counter[str] = Counter()
        self._jobs: dict[tuple[str, str], FakeJob] = {}
        self._pods: dict[tuple[str, str], FakeJob] = {}  # (namespace, pod name) -> its job
        self._state_lock = threading.Lock()
        self._version = 0
        self._reaped_at = 0.0
        for method, pattern, handler in (
            ("POST", JOBS, self._create_job),
            ("GET", JOBS, self._list_jobs),
            ("GET", JOB, self._read_job),
            ("GET", JOB_STATUS, self._read_job),
            ("DELETE", JOB, self._delete_job),
            ("GET", PODS, self._list_pods),
            ("GET", POD_LOG, self._pod_log),
        ):
            self.route(method, pattern, self._authorized(handler))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        super().start()
        return self

    def stop(self) -> None:
        """Stop the controller and the server, and kill every pod still running."""
        super().stop()
        self.processes.shutdown()

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def settings(self, storage_root: str, **overrides: Any) -> KubernetesBackendResource:
        """Backend settings that talk to this fake (fast retries, 0.5 s log sync)."""
        from ml_assets.backends.kubernetes import KubernetesBackendResource

        values: dict[str, Any] = {
            "host": self.url,
            "namespace": "ml-jobs",
            "image": "ml-assets:test",
            "storage_root": storage_root,
            "sync_seconds": 0.5,
            "retry_backoff_seconds": 0.01,
            "max_retries": 10,
            **overrides,
        }
        return KubernetesBackendResource(**values)

    def job_names(self, namespace: str) -> list[str]:
        """Names of the Jobs that exist in ``namespace`` now."""
        with self._state_lock:
            return sorted(name for (ns, name) in self._jobs if ns == namespace)

    def pod_names(self, namespace: str) -> list[str]:
        with self._state_lock:
            return sorted(name for (ns, name) in self._pods if ns == namespace)

    def job_manifest(self, namespace: str, name: str) -> dict[str, Any]:
        """The manifest a Job was created with, as stored (server fields included)."""
        with self._state_lock:
            return self._jobs[(namespace, name)].manifest

    def end_held(
        self, namespace: str, names: list[str] | None = None, *, succeeded: bool = True
    ) -> list[str]:
        """End the held Jobs of ``namespace`` (all, or those named) that are still in flight, at
        the same moment: their pods exit 0 (``Complete``) or 1 (``Failed``). Returns the names
        of the Jobs it ended."""
        wanted = None if names is None else set(names)
        with self._state_lock:
            jobs = {
                job.uid: job.name
                for (ns, name), job in self._jobs.items()
                if ns == namespace and (wanted is None or name in wanted)
            }
        ended = self.processes.end_held(list(jobs), returncode=0 if succeeded else 1)
        return sorted(jobs[uid] for uid in ended)

    def tick(self) -> None:
        # Like kube-controller-manager: start pods whose pending time is over, reap finished
        # jobs past their TTL. Reads refresh state too, so this only adds timeliness.
        self.processes.refresh_active()
        if time.monotonic() - self._reaped_at >= _REAP_PERIOD_S:
            self._reap_expired()
            self._reaped_at = time.monotonic()

    def _reap_expired(self) -> None:
        now = time.monotonic()
        with self._state_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            ttl = job.manifest["spec"].get("ttlSecondsAfterFinished")
            process = self.processes.jobs.get(job.uid)
            if ttl is None or process is None or process.finished_at is None:
                continue
            if process.state in (SUCCEEDED, FAILED) and now - process.finished_at >= ttl:
                self._remove(job, kill=True)

    def _remove(self, job: FakeJob, *, kill: bool) -> None:
        with self._state_lock:
            if self._jobs.get((job.namespace, job.name)) is job:
                del self._jobs[(job.namespace, job.name)]
                self._version += 1
            if kill:
                self._pods.pop((job.namespace, job.pod_name), None)
        if kill:
            self.processes.cancel(job.uid)

    # -- routes ---------------------------------------------------------------------------------

    def _authorized(self, handler: Any) -> Any:
        def checked(request: Request) -> Response:
            if self.token is not None:
                headers = {key.lower(): value for key, value in request.headers.items()}
                if headers.get("authorization") != f"Bearer {self.token}":
                    return _status(401, "Unauthorized", "Unauthorized")
            response: Response = handler(request)
            return response

        return checked

    def _create_job(self, request: Request) -> Response:
        namespace = request.params["ns"]
        try:
            manifest = request.json()
        except json.JSONDecodeError as error:
            return _status(400, "BadRequest", f"invalid JSON: {error}")
        problems = self._job_problems(manifest, namespace)
        name = str(manifest.get("metadata", {}).get("name", ""))
        if problems:
            return _status(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: ' + "; ".join(problems),
                name=name,
                group="batch",
                kind="Job",
            )
        with self._state_lock:
            if (namespace, name) in self._jobs:
                return _status(
                    409,
                    "AlreadyExists",
                    f'jobs.batch "{name}" already exists',
                    name=name,
                    group="batch",
                    kind="jobs",
                )
            self._version += 1
            uid = str(uuid.uuid4())
            suffix = "".join(random.choices(_POD_SUFFIX_CHARS, k=5))
            manifest["metadata"].update(
                namespace=namespace,
                uid=uid,
                resourceVersion=str(self._version),
                generation=1,
                creationTimestamp=_timestamp(time.time()),
            )
            controller_labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            manifest["spec"].setdefault("completions", 1)
            manifest["spec"].setdefault("parallelism", 1)
            manifest["spec"]["selector"] = {
                "matchLabels": {"batch.kubernetes.io/controller-uid": uid}
            }
            template_meta = manifest["spec"]["template"].setdefault("metadata", {})
            template_meta["labels"] = {**template_meta.get("labels", {}), **controller_labels}
            job = FakeJob(
                namespace=namespace,
                name=name,
                uid=uid,
                manifest=manifest,
                created_at=time.time(),
                resource_version=self._version,
                pod_name=f"{name}-{suffix}",
            )
            self._jobs[(namespace, name)] = job
            self._pods[(namespace, job.pod_name)] = job
            self.created[f"{namespace}/{name}"] += 1
            container = job.container
            env = {
                **self.job_env,
                **{item["name"]: item.get("value", "") for item in container.get("env", [])},
            }
            self.processes.add(
                uid,
                [*container["command"], *container.get("args", [])],
                env,
                cwd=container.get("workingDir"),
                hold=self.hold,
            )
            if self.create_timeouts > 0:
                self.create_timeouts -= 1
                return _status(
                    504,
                    "Timeout",
                    "Timeout: request did not complete within requested timeout - "
                    "context deadline exceeded",
                )
        return Response(201, self._job_json(job))

    @staticmethod
    def _job_problems(manifest: Any, namespace: str) -> list[str]:
        if not isinstance(manifest, dict):
            return ["body: must be a Job object"]
        metadata = manifest.get("metadata") or {}
        spec = manifest.get("spec") or {}
        template_spec = (spec.get("template") or {}).get("spec") or {}
        containers = template_spec.get("containers") or []
        problems = []
        if manifest.get("apiVersion") != "batch/v1" or manifest.get("kind") != "Job":
            problems.append("apiVersion/kind: must be batch/v1 Job")
        name = str(metadata.get("name", ""))
        if not _DNS_LABEL.match(name):
            problems.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label")
        if metadata.get("namespace", namespace) != namespace:
            problems.append("metadata.namespace: does not match the request's namespace")
        problems += _label_problems(metadata.get("labels") or {})
        problems += _label_problems(
            ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        )
        if spec.get("backoffLimit") != 0:
            problems.append("spec.backoffLimit: this fake runs single-attempt jobs only (0)")
        if template_spec.get("restartPolicy") != "Never":
            problems.append("spec.template.spec.restartPolicy: this fake supports only Never")
        if len(containers) != 1 or not containers[0].get("command"):
            problems.append("spec.template.spec.containers: exactly one, with a command")
        return problems

    def _list_jobs(self, request: Request) -> Response:
        namespace = request.params["ns"]
        try:
            selector = parse_selector(request.arg("labelSelector") or "")
            after = self._decode_continue(request.arg("continue") or "")
            limit = int(request.arg("limit") or 0)
        except ValueError as error:
            return _status(400, "BadRequest", str(error))
        with self._state_lock:
            matching = sorted(
                (
                    job
                    for (ns, name), job in self._jobs.items()
                    if ns == namespace
                    and name > after
                    and all(r.matches(job.manifest["metadata"].get("labels", {})) for r in selector)
                ),
                key=lambda job: job.name,
            )
            version = str(self._version)
        page = matching[:limit] if limit > 0 else matching
        metadata: dict[str, Any] = {"resourceVersion": version}
        if len(page) < len(matching):
            token = json.dumps({"after": page[-1].name}).encode()
            metadata["continue"] = base64.urlsafe_b64encode(token).decode()
            metadata["remainingItemCount"] = len(matching) - len(page)
        return Response(
            200,
            {
                "kind": "JobList",
                "apiVersion": "batch/v1",
                "metadata": metadata,
                "items": [self._job_json(job) for job in page],
            },
        )

    @staticmethod
    def _decode_continue(token: str) -> str:
        if not token:
            return ""
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise ValueError(f"invalid continue token {token!r}") from None
        return str(after)

    def _lookup(self, request: Request) -> FakeJob | None:
        with self._state_lock:
            return self._jobs.get((request.params["ns"], request.params["name"]))

    def _not_found(self, request: Request) -> Response:
        name = request.params["name"]
        return _status(404, "NotFound", f'jobs.batch "{name}" not found', name=name, kind="jobs")

    def _read_job(self, request: Request) -> Response:
        job = self._lookup(request)
        if job is None:
            return self._not_found(request)
        return Response(200, self._job_json(job))

    def _delete_job(self, request: Request) -> Response:
        job = self._lookup(request)
        if job is None:
            return self._not_found(request)
        options = request.json() if request.body else {}
        policy = request.arg("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and (
            request.arg("orphanDependents") == "false" or options.get("orphanDependents") is False
        ):
            policy = "Background"
        # batch/v1 Jobs default to orphaning their pods when deleted through the API.
        self._remove(job, kill=policy in ("Background", "Foreground"))
        return _status(200, "", "", name=job.name, group="batch", kind="jobs", uid=job.uid)

    def _list_pods(self, request: Request) -> Response:
        namespace = request.params["ns"]
        try:
            selector = parse_selector(request.arg("labelSelector") or "")
        except ValueError as error:
            return _status(400, "BadRequest", str(error))
        with self._state_lock:
            pods = [
                (pod_name, job)
                for (ns, pod_name), job in self._pods.items()
                if ns == namespace
                and all(r.matches(job.template["metadata"]["labels"]) for r in selector)
            ]
            version = str(self._version)
        return Response(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": version},
                "items": [self._pod_json(pod_name, job) for pod_name, job in sorted(pods)],
            },
        )

    def _pod_log(self, request: Request) -> Response:
        namespace, pod_name = request.params["ns"], request.params["name"]
        with self._state_lock:
            job = self._pods.get((namespace, pod_name))
        if job is None:
            return _status(404, "NotFound", f'pods "{pod_name}" not found', name=pod_name)
        process = self.processes.get(job.uid)
        if process is None or process.state == PENDING:
            return _status(
                400,
                "BadRequest",
                f'container "{job.container["name"]}" in pod "{pod_name}" is waiting to start: '
                "ContainerCreating",
            )
        text = self.processes.logs(job.uid)
        tail = request.arg("tailLines")
        if tail is not None:
            lines = text.splitlines()
            text = "".join(f"{line}\n" for line in lines[len(lines) - int(tail) :])
        return Response(200, text, content_type="text/plain")

    # -- JSON shapes ----------------------------------------------------------------------------

    def _process(self, job: FakeJob) -> ProcessJob:
        process = self.processes.get(job.uid)
        assert process is not None, f"job {job.name} has no process"
        return process

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        process = self._process(job)
        state = process.state
        finished = _wall(process.finished_at)
        status: dict[str, Any] = {
            "startTime": _timestamp(job.created_at),
            "active": 1 if state in (PENDING, RUNNING) else 0,
            "ready": 1 if state == RUNNING else 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
        if state in (SUCCEEDED, FAILED) and finished is not None:
            at = _timestamp(finished)
            if state == SUCCEEDED:
                status["succeeded"] = 1
                status["completionTime"] = at
                conditions = [
                    (
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
                ]
            else:
                status["failed"] = 1
                conditions = [
                    (
                        "FailureTarget",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                    (
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ]
            status["conditions"] = [
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": at,
                    "lastTransitionTime": at,
                }
                for kind, reason, message in conditions
            ]
        return {**job.manifest, "status": status}

    def _pod_json(self, pod_name: str, job: FakeJob) -> dict[str, Any]:
        process = self._process(job)
        state = process.state
        container = job.container
        started, finished = _wall(process.started_at), _wall(process.finished_at)
        if state == PENDING:
            container_state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        elif state == RUNNING and started is not None:
            container_state = {"running": {"startedAt": _timestamp(started)}}
        else:
            code = process.returncode if process.returncode is not None else 137
            container_state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": _timestamp(started or job.created_at),
                    "finishedAt": _timestamp(finished or time.time()),
                }
            }
        phase = {PENDING: "Pending", RUNNING: "Running", SUCCEEDED: "Succeeded"}.get(
            state, "Failed"
        )
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": job.namespace,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, job.uid)),
                "creationTimestamp": _timestamp(job.created_at),
                "labels": dict(job.template["metadata"]["labels"]),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job.name,
                        "uid": job.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**job.template["spec"], "nodeName": "fake-node"},
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": state == RUNNING,
                        "restartCount": 0,
                        "started": state == RUNNING,
                        "state": container_state,
                    }
                ],
            },
        }


def job_spec(
    storage_root: str,
    command: list[str],
    key: str,
    *,
    team: str = "fraud",
    model: str = "churn_model",
    **extra: Any,
) -> JobSpec:
    """A Kubernetes job spec whose output goes where the asset layer puts it, under
    ``storage_root`` (``remote.output_location``)."""
    from ml_assets.backends import remote
    from ml_assets.backends.base import JobSpec

    draft = JobSpec(
        team=team,
        model=model,
        command=command,
        output_uri="unset",
        idempotency_key=key,
        backend="kubernetes",
        **extra,
    )
    return draft.model_copy(update={"output_uri": remote.output_location(storage_root, draft)})


def count_poll_calls(
    n: int, *, page_size: int = 500, start_processes: bool = True
) -> dict[str, Any]:
    """API calls made by ONE ``KubernetesBackend.poll`` over ``n`` in-flight jobs.

    Starts a fake, submits ``n`` jobs whose command is ``sleep 300`` through the backend, waits
    until their pods run (unless ``start_processes`` is false: then they stay pending, which
    costs no processes), resets the call counts, polls all handles once, and kills everything.
    Returns ``{"jobs", "calls", "by_route", "states", "poll_seconds"}``.
    """
    with tempfile.TemporaryDirectory(prefix="fake_kubernetes_bench_") as scratch:
        root = Path(scratch)
        fake = FakeKubernetes(root / "fake", pending_s=0.0 if start_processes else 1e9)
        with fake:
            storage_root = str(root / "storage")
            settings = fake.settings(storage_root, page_size=page_size, sync_seconds=300)
            backend = settings.get_backend()
            handles = []
            for index in range(n):
                spec = job_spec(storage_root, ["sleep", "300"], f"bench/{index}", team="bench")
                handles.append(backend.submit(spec))
            if start_processes:
                deadline = time.monotonic() + 120
                while any(job.state == PENDING for job in fake.processes.all()):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the benchmark's pods did not all start in 120 s")
                    time.sleep(0.2)
            fake.reset_counts()
            began = time.perf_counter()
            statuses = backend.poll(handles)
            elapsed = time.perf_counter() - began
            calls = dict(fake.calls)
    return {
        "jobs": n,
        "calls": sum(calls.values()),
        "by_route": calls,
        "states": dict(Counter(status.state.value for status in statuses.values())),
        "poll_seconds": round(elapsed, 3),
    }
