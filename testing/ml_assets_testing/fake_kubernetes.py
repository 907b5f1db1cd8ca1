"""A loopback fake of the Kubernetes API server that really runs each Job's container command.

It serves what ml_assets' Kubernetes backend calls through the official ``kubernetes`` client,
and enough of the rest for the real ``kubectl`` (1.32) to ``get``, ``describe``, ``logs`` and
``delete`` Jobs and pods:

======  ==========================================  =============================================
method  path                                        behaviour
======  ==========================================  =============================================
GET     /version, /api, /api/v1, /apis,             discovery: legacy (``APIVersions``,
        /apis/batch, /apis/batch/v1                 ``APIGroupList``, ``APIResourceList``) or
                                                    aggregated (``APIGroupDiscoveryList`` v2) as
                                                    the ``Accept`` header asks
POST    /apis/batch/v1/namespaces/{ns}/jobs         create (400 undecodable, 422 invalid, 409
                                                    AlreadyExists); ``fieldValidation``
GET     /apis/batch/v1/namespaces/{ns}/jobs         list: ``labelSelector``, ``fieldSelector``,
                                                    ``limit``, ``continue``
GET     /apis/batch/v1/jobs                         list across namespaces
GET     /apis/batch/v1/namespaces/{ns}/jobs/{name}  read (404 NotFound); ``.../{name}/status`` too
PATCH   /apis/batch/v1/namespaces/{ns}/jobs/{name}  JSON, merge or strategic merge patch of
                                                    labels, annotations and the mutable spec
                                                    fields (``suspend``, ``parallelism``, ...)
DELETE  /apis/batch/v1/namespaces/{ns}/jobs/{name}  delete: ``propagationPolicy`` Background or
                                                    Foreground kills the pod's process group and
                                                    removes the pod; Orphan (the API's default for
                                                    Jobs) leaves the pod running
GET     /api/v1/namespaces/{ns}/pods[/{name}]       list (label and field selectors) or read pods
GET     /api/v1/namespaces/{ns}/pods/{name}/log     the pod's output (``tailLines``; 400 while the
                                                    container waits to start)
GET     /api/v1/namespaces/{ns}/events              the Job controller's events (field selectors
                                                    on ``involvedObject.*``)
======  ==========================================  =============================================

Reads answer a ``meta.k8s.io/v1`` ``Table`` (the columns ``kubectl get`` prints) when the
``Accept`` header asks for one, as the API server's server-side printing does.

Creates are checked as the API server checks them (``kube_rules``): the body is decoded against
the ``batch/v1`` Job schema (wrong types and malformed resource quantities are a 400; unknown or
duplicate fields fail under ``fieldValidation=Strict`` and are dropped with a ``Warning`` header
otherwise), then validated (422 ``Invalid`` with one cause per problem: names, labels,
annotations, containers, env, volumes, tolerations, resources, restart policy). Errors are
``v1.Status`` objects. Beyond the service's rules the fake runs single-pod Jobs only: it
rejects a ``backoffLimit`` missing or other than 0, ``restartPolicy`` other than Never and
anything but one container with a ``command``.

Each started Job gets one pod ``<job>-<5 chars>`` labelled ``job-name=<job>`` and
``batch.kubernetes.io/controller-uid=<uid>``; its container's ``command + args`` runs through
``ProcessJobs`` in the container's ``workingDir`` (if set) with ``job_env`` (the platform's own
settings, e.g. storage endpoints) overlaid by the container's ``env``. The container's ``image``
is only recorded, in the stored manifest (``job_manifest``). Job status follows the process the
way the Job controller reports it: ``active``/``ready``, then ``succeeded``/``failed`` with a
``Complete``/``Failed`` condition (after ``SuccessCriteriaMet``/``FailureTarget``, as Kubernetes
1.31+ does). A controller thread starts pods and applies ``ttlSecondsAfterFinished``. ``token``
makes every call require ``Authorization: Bearer <token>``.

A Job created with ``spec.suspend: true`` gets no pod (condition ``Suspended``) until a patch
sets ``suspend: false``; suspending a started Job kills its pod. ``local_queues`` installs a
minimal Kueue: a Job labelled ``kueue.x-k8s.io/queue-name`` is suspended on create (Kueue's
webhook), and admitted (unsuspended) by the controller, oldest first, while its LocalQueue has
fewer admitted unfinished Jobs than its capacity; a Job naming an unknown queue stays
suspended. With ``kueue_auto_admit=False`` only ``admit(namespace, name)`` admits.

``hold`` (``"pending"`` or ``"running"``, settable at any time) holds every Job started from then
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
import copy
import datetime
import json
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_assets_testing import kube_rules
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

if TYPE_CHECKING:
    from ml_assets.backends.base import JobSpec
    from ml_assets.backends.kubernetes import KubernetesSettings

SERVER_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.4"}
_NS = r"(?P<ns>[a-z0-9-]+)"
_NAME = r"(?P<name>[^/]+)"
ALL_JOBS = "/apis/batch/v1/jobs"
JOBS = f"/apis/batch/v1/namespaces/{_NS}/jobs"
JOB = f"{JOBS}/{_NAME}"
JOB_STATUS = f"{JOB}/status"
PODS = f"/api/v1/namespaces/{_NS}/pods"
POD = f"{PODS}/{_NAME}"
POD_LOG = f"{POD}/log"
EVENTS = f"/api/v1/namespaces/{_NS}/events"

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_POD_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_CONTROLLER_PERIOD_S = 0.05
# How often the TTL controller looks for finished Jobs to delete (it walks every Job).
_REAP_PERIOD_S = 0.5
_FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
# Spec fields of a Job that may change after it is created.
_MUTABLE_SPEC = {"suspend", "parallelism", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
# Pod template fields that may change while a Job is suspended and has never started (Kueue
# writes its flavour's node selector and tolerations there on admission).
_SCHEDULING_DIRECTIVES = {"nodeSelector", "tolerations", "schedulingGates"}


def _timestamp(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _wall(monotonic: float | None) -> float | None:
    """A ``time.monotonic()`` reading as wall-clock time."""
    return None if monotonic is None else time.time() - (time.monotonic() - monotonic)


def human_duration(seconds: float) -> str:
    """A duration as kubectl's AGE/DURATION columns print it (``45s``, ``3m20s``, ``5h``...)."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    return f"{hours // 24}d"


# The StatusReason the API server gives each status code it answers on its own.
_STATUS_REASONS = {
    404: "NotFound",
    405: "MethodNotAllowed",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


def _status(code: int, reason: str, message: str, **details: Any) -> Response:
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


def _bad_request(message: str) -> Response:
    return _status(400, "BadRequest", message)


def _invalid(name: str, errors: list[kube_rules.FieldError]) -> Response:
    listed = [str(error) for error in errors]
    joined = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
    return _status(
        422,
        "Invalid",
        f'Job.batch "{name}" is invalid: {joined}',
        name=name,
        group="batch",
        kind="Job",
        causes=[error.cause() for error in errors],
    )


def _header(request: Request, name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in request.headers.items() if k.lower() == wanted), "")


def _accepts(request: Request, **wanted: str) -> dict[str, str] | None:
    """The first media range of ``Accept`` whose parameters include ``wanted``, if any."""
    for item in _header(request, "accept").split(","):
        parts = [part.strip() for part in item.split(";")]
        params = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        if all(params.get(key) == value for key, value in wanted.items()):
            return params
    return None


# -- selectors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists" or "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


_SET_TERM = re.compile(r"(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def parse_selector(selector: str) -> list[_Requirement]:
    """Label selector terms: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (b,c)``,
    ``a notin (b)``; anything else raises ``ValueError``."""
    requirements = []
    for term in _split_terms(selector):
        match = re.fullmatch(r"([^=!\s]+)\s*(!=|==|=)\s*([^=!\s]*)", term)
        set_match = _SET_TERM.fullmatch(term)
        if match:
            op = "!=" if match[2] == "!=" else "="
            requirements.append(_Requirement(match[1], op, (match[3],)))
        elif set_match:
            values = tuple(v.strip() for v in set_match["values"].split(",") if v.strip())
            requirements.append(_Requirement(set_match["key"], set_match["op"], values))
        elif re.fullmatch(r"!?[^=!\s(),]+", term):
            negated = term.startswith("!")
            requirements.append(_Requirement(term.lstrip("!"), "!exists" if negated else "exists"))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return requirements


def parse_field_selector(selector: str, supported: set[str]) -> list[tuple[str, bool, str]]:
    """``(field, equal, value)`` terms of a field selector; an unsupported field is a
    ``ValueError`` worded as the API server's."""
    terms = []
    for term in _split_terms(selector):
        match = re.fullmatch(r"([^=!\s]+)\s*(!=|==|=)\s*(.*)", term)
        if not match:
            raise ValueError(f"invalid selector: '{selector}'; can't understand '{term}'")
        if match[1] not in supported:
            raise ValueError(f'field label not supported: "{match[1]}"')
        terms.append((match[1], match[2] != "!=", match[3]))
    return terms


def _field_matches(terms: list[tuple[str, bool, str]], fields: Mapping[str, str]) -> bool:
    return all((fields.get(name, "") == value) == equal for name, equal, value in terms)


# -- patches ------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: ``add``, ``replace``, ``remove`` and ``test``."""
    if not isinstance(operations, list):
        raise ValueError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        path = [
            part.replace("~1", "/").replace("~0", "~")
            for part in str(operation.get("path", "")).split("/")[1:]
        ]
        if not path:
            raise ValueError(f"unsupported patch path {operation.get('path')!r}")
        parent = document
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = path[-1]
        op = operation.get("op")
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != operation.get("value"):
                raise ValueError(f"test operation failed at {operation['path']}")
        elif op in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, operation.get("value"))
                else:
                    parent[index] = operation.get("value")
            else:
                if op == "replace" and last not in parent:
                    raise ValueError(f"replace operation does not apply: {operation['path']}")
                parent[last] = operation.get("value")
        elif op == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise ValueError(f"unsupported JSON patch operation {op!r}")
    return document


# -- discovery ----------------------------------------------------------------------------------

# (resource, kind, namespaced, verbs, short names, subresources: name -> verbs)
_CORE_RESOURCES: list[tuple[str, str, bool, list[str], list[str], dict[str, list[str]]]] = [
    ("pods", "Pod", True, ["get", "list"], ["po"], {"log": ["get"], "status": ["get"]}),
    ("events", "Event", True, ["get", "list"], ["ev"], {}),
]
_BATCH_RESOURCES: list[tuple[str, str, bool, list[str], list[str], dict[str, list[str]]]] = [
    (
        "jobs",
        "Job",
        True,
        ["create", "delete", "get", "list", "patch"],
        [],
        {"status": ["get"]},
    ),
]
_SINGULAR = {"pods": "pod", "events": "event", "jobs": "job"}
_CATEGORIES = {"pods": ["all"], "jobs": ["all"]}


def _resource_list(group_version: str, resources: list[Any]) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for name, kind, namespaced, verbs, short, subresources in resources:
        entry: dict[str, Any] = {
            "name": name,
            "singularName": _SINGULAR[name],
            "namespaced": namespaced,
            "kind": kind,
            "verbs": verbs,
        }
        if short:
            entry["shortNames"] = short
        if name in _CATEGORIES:
            entry["categories"] = _CATEGORIES[name]
        items.append(entry)
        for sub, sub_verbs in subresources.items():
            items.append(
                {
                    "name": f"{name}/{sub}",
                    "singularName": "",
                    "namespaced": namespaced,
                    "kind": kind if sub != "log" else "Pod",
                    "verbs": sub_verbs,
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": items,
    }


def _discovery_group(group: str, version: str, resources: list[Any]) -> dict[str, Any]:
    entries = []
    for name, kind, namespaced, verbs, short, subresources in resources:
        entry: dict[str, Any] = {
            "resource": name,
            "responseKind": {"group": group, "version": version, "kind": kind},
            "scope": "Namespaced" if namespaced else "Cluster",
            "singularResource": _SINGULAR[name],
            "verbs": verbs,
        }
        if short:
            entry["shortNames"] = short
        if name in _CATEGORIES:
            entry["categories"] = _CATEGORIES[name]
        if subresources:
            entry["subresources"] = [
                {
                    "subresource": sub,
                    "responseKind": {"group": group, "version": version, "kind": kind},
                    "verbs": sub_verbs,
                }
                for sub, sub_verbs in subresources.items()
            ]
        entries.append(entry)
    return {
        "metadata": {"name": group, "creationTimestamp": None},
        "versions": [{"version": version, "resources": entries, "freshness": "Current"}],
    }


# -- state --------------------------------------------------------------------------------------


@dataclass
class FakeJob:
    """One Job as stored: the manifest it was created with plus server-set metadata.

    ``pod_name``/``process_id`` are set while the Job has a pod (it is started and not
    suspended); ``events`` are the Job controller's events about it, oldest first.
    """

    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    created_at: float
    resource_version: int
    pod_name: str | None = None
    process_id: str | None = None
    started_at: float | None = None
    resumed: bool = False
    admitted_by_kueue: bool = False
    pods_started: int = 0
    events: list[tuple[str, str, str, float]] = field(default_factory=list)

    @property
    def template(self) -> dict[str, Any]:
        template: dict[str, Any] = self.manifest["spec"]["template"]
        return template

    @property
    def container(self) -> dict[str, Any]:
        container: dict[str, Any] = self.template["spec"]["containers"][0]
        return container

    @property
    def suspended(self) -> bool:
        return bool(self.manifest["spec"].get("suspend"))

    @property
    def queue(self) -> str | None:
        labels = self.manifest["metadata"].get("labels") or {}
        value = labels.get(QUEUE_LABEL)
        return str(value) if value else None


class FakeKubernetes(LoopbackServer):
    """The fake API server; see the module docstring. Use as a context manager or start/stop.

    Attributes:
        processes: the pods' processes (keyed ``<job uid>/<pod number>``).
        created: how many times each ``namespace/name`` was created (a re-run shows as 2).
        warnings: the ``Warning`` texts of every create (unknown or duplicate fields dropped).
        local_queues: Kueue's LocalQueues and how many unfinished Jobs each admits at once.
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
        local_queues: Mapping[str, int] | None = None,
        kueue_auto_admit: bool = True,
    ) -> None:
        """``create_timeouts``: that many creates store the job but answer 504, as an API server
        whose write went through after its request deadline passed. ``hold``,
        ``local_queues``, ``kueue_auto_admit``: see the module docstring."""
        super().__init__(faults)
        self.processes = ProcessJobs(root, pending_s=pending_s)
        self.job_env = dict(job_env or {})
        self.token = token
        self.create_timeouts = create_timeouts
        self.hold = hold
        self.local_queues = None if local_queues is None else dict(local_queues)
        self.kueue_auto_admit = kueue_auto_admit
        self.created: Counter[str] = Counter()
        self.warnings: list[str] = []
        self._jobs: dict[tuple[str, str], FakeJob] = {}
        self._pods: dict[tuple[str, str], FakeJob] = {}  # (namespace, pod name) -> its job
        self._state_lock = threading.RLock()
        self._version = 0
        self._reaped_at = 0.0
        routes: list[tuple[str, str, Callable[[Request], Response]]] = [
            ("GET", "/version", self._version_info),
            ("GET", "/api", self._core_versions),
            ("GET", "/api/v1", self._core_resources),
            ("GET", "/apis", self._groups),
            ("GET", "/apis/batch", self._batch_group),
            ("GET", "/apis/batch/v1", self._batch_resources),
            ("POST", JOBS, self._create_job),
            ("GET", JOBS, self._list_jobs),
            ("GET", ALL_JOBS, self._list_jobs),
            ("GET", JOB, self._read_job),
            ("GET", JOB_STATUS, self._read_job),
            ("PATCH", JOB, self._patch_job),
            ("DELETE", JOB, self._delete_job),
            ("GET", PODS, self._list_pods),
            ("GET", POD, self._read_pod),
            ("GET", POD_LOG, self._pod_log),
            ("GET", EVENTS, self._list_events),
        ]
        for method, pattern, handler in routes:
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

    def settings(self, storage_root: str, **overrides: Any) -> KubernetesSettings:
        """Backend settings that talk to this fake (fast retries, 0.5 s log sync)."""
        from ml_assets.backends.kubernetes import KubernetesSettings

        values: dict[str, Any] = {
            "host": self.url,
            "namespace": "ml-jobs",
            "image_uri": "ml-assets:test",
            "storage_root": storage_root,
            "sync_seconds": 0.5,
            "retry_backoff_seconds": 0.01,
            "max_attempts": 11,
            **overrides,
        }
        return KubernetesSettings(**values)

    def kubeconfig(self, path: Path, namespace: str = "ml-jobs") -> Path:
        """Write a kubeconfig for this fake to ``path``, for ``kubectl``.

        kubectl (client-go) sends no bearer token to a plain ``http://`` server, so a fake with
        a ``token`` answers it 401; start the fake without one for kubectl.
        """
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config, indent=2))
        return path

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

    def job_process(self, namespace: str, name: str) -> ProcessJob | None:
        """The process of the Job's current pod (``None`` if the Job is gone or has no pod)."""
        with self._state_lock:
            job = self._jobs.get((namespace, name))
            process_id = job.process_id if job is not None else None
        return self.processes.get(process_id) if process_id else None

    def admit(self, namespace: str, name: str) -> bool:
        """Admit a suspended Job now, as Kueue does when its queue has room: unsuspend it so
        that its pod starts. False if there is no such suspended Job."""
        with self._state_lock:
            job = self._jobs.get((namespace, name))
            if job is None or not job.suspended:
                return False
            job.admitted_by_kueue = job.queue is not None
            self._set_suspend(job, False)
            return True

    def end_held(
        self, namespace: str, names: list[str] | None = None, *, succeeded: bool = True
    ) -> list[str]:
        """End the held Jobs of ``namespace`` (all, or those named) that are still in flight, at
        the same moment: their pods exit 0 (``Complete``) or 1 (``Failed``). Returns the names
        of the Jobs it ended."""
        wanted = None if names is None else set(names)
        with self._state_lock:
            jobs = {
                job.process_id: job.name
                for (ns, name), job in self._jobs.items()
                if ns == namespace and (wanted is None or name in wanted) and job.process_id
            }
        ended = self.processes.end_held(list(jobs), returncode=0 if succeeded else 1)
        return sorted(jobs[process_id] for process_id in ended)

    def error_body(self, status: int, message: str) -> Any:
        """Faults and unrouted calls as the API server answers them: a ``v1.Status``."""
        return _status(status, _STATUS_REASONS.get(status, "InternalError"), message).body

    def tick(self) -> None:
        # Like kube-controller-manager (and Kueue): start pods whose pending time is over,
        # admit queued Jobs, reap finished jobs past their TTL. Reads refresh state too, so
        # this only adds timeliness.
        self.processes.refresh_active()
        if self.local_queues is not None and self.kueue_auto_admit:
            self._kueue_admit()
        if time.monotonic() - self._reaped_at >= _REAP_PERIOD_S:
            self._reap_expired()
            self._reaped_at = time.monotonic()

    def _kueue_admit(self) -> None:
        assert self.local_queues is not None
        with self._state_lock:
            waiting = sorted(
                (job for job in self._jobs.values() if job.suspended and job.queue),
                key=lambda job: (job.created_at, job.name),
            )
            if not waiting:
                return
            admitted: Counter[str] = Counter(
                job.queue
                for job in self._jobs.values()
                if job.queue and job.admitted_by_kueue and self._state_of(job) in (PENDING, RUNNING)
            )
            for job in waiting:
                queue = job.queue
                assert queue is not None
                capacity = self.local_queues.get(queue)
                if capacity is None or admitted[queue] >= capacity:
                    continue
                admitted[queue] += 1
                job.admitted_by_kueue = True
                self._set_suspend(job, False)

    def _reap_expired(self) -> None:
        now = time.monotonic()
        with self._state_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            ttl = job.manifest["spec"].get("ttlSecondsAfterFinished")
            process = self.processes.jobs.get(job.process_id) if job.process_id else None
            if ttl is None or process is None or process.finished_at is None:
                continue
            if process.state in (SUCCEEDED, FAILED) and now - process.finished_at >= ttl:
                self._remove(job, kill=True)

    def _remove(self, job: FakeJob, *, kill: bool) -> None:
        with self._state_lock:
            if self._jobs.get((job.namespace, job.name)) is job:
                del self._jobs[(job.namespace, job.name)]
                self._version += 1
            if kill and job.pod_name:
                self._pods.pop((job.namespace, job.pod_name), None)
        if kill and job.process_id:
            self.processes.cancel(job.process_id)

    # -- pods of a Job --------------------------------------------------------------------------

    def _start_pod(self, job: FakeJob) -> None:
        """Create the Job's pod and start its process (the Job controller's part)."""
        job.pods_started += 1
        suffix = "".join(random.choices(_POD_SUFFIX_CHARS, k=5))
        job.pod_name = f"{job.name}-{suffix}"
        job.process_id = f"{job.uid}/{job.pods_started}"
        job.started_at = time.time()
        self._pods[(job.namespace, job.pod_name)] = job
        container = job.container
        env = {
            **self.job_env,
            **{item["name"]: item.get("value", "") for item in container.get("env", [])},
        }
        self.processes.add(
            job.process_id,
            [*container["command"], *container.get("args", [])],
            env,
            cwd=container.get("workingDir"),
            hold=self.hold,
        )
        job.events.append(
            ("Normal", "SuccessfulCreate", f"Created pod: {job.pod_name}", time.time())
        )

    def _set_suspend(self, job: FakeJob, suspend: bool) -> None:
        """Suspend (kill the pod) or resume (start a pod) ``job``; call with the state lock."""
        was = job.suspended
        job.manifest["spec"]["suspend"] = suspend
        self._version += 1
        job.manifest["metadata"]["resourceVersion"] = str(self._version)
        if suspend and not was:
            if job.process_id and self._state_of(job) in (PENDING, RUNNING):
                self.processes.cancel(job.process_id)
                if job.pod_name:
                    self._pods.pop((job.namespace, job.pod_name), None)
                job.pod_name = job.process_id = None
                job.started_at = None
            job.events.append(("Normal", "Suspended", "Job suspended", time.time()))
        elif was and not suspend:
            job.resumed = True
            job.events.append(("Normal", "Resumed", "Job resumed", time.time()))
            if job.process_id is None:
                self._start_pod(job)

    def _process(self, job: FakeJob) -> ProcessJob | None:
        return self.processes.get(job.process_id) if job.process_id else None

    def _state_of(self, job: FakeJob) -> str | None:
        process = self._process(job)
        return None if process is None else process.state

    # -- routes ---------------------------------------------------------------------------------

    def _authorized(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def checked(request: Request) -> Response:
            token = self.token
            if token is not None and _header(request, "authorization") != f"Bearer {token}":
                return _status(401, "Unauthorized", "Unauthorized")
            return handler(request)

        return checked

    def _version_info(self, request: Request) -> Response:
        return Response(
            200,
            {
                **SERVER_VERSION,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-12-10T00:00:00Z",
                "goVersion": "go1.22.9",
                "compiler": "gc",
                "platform": "linux/amd64",
            },
        )

    def _aggregated(self, request: Request, items: list[dict[str, Any]]) -> Response | None:
        params = _accepts(request, g="apidiscovery.k8s.io", **{"as": "APIGroupDiscoveryList"})
        if params is None or params.get("v") not in ("v2", "v2beta1"):
            return None
        version = params["v"]
        return Response(
            200,
            {
                "kind": "APIGroupDiscoveryList",
                "apiVersion": f"apidiscovery.k8s.io/{version}",
                "metadata": {},
                "items": items,
            },
            content_type=(
                f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
            ),
        )

    def _core_versions(self, request: Request) -> Response:
        aggregated = self._aggregated(request, [_discovery_group("", "v1", _CORE_RESOURCES)])
        if aggregated is not None:
            return aggregated
        return Response(
            200,
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            },
        )

    def _core_resources(self, request: Request) -> Response:
        return Response(200, _resource_list("v1", _CORE_RESOURCES))

    def _batch_group_json(self) -> dict[str, Any]:
        version = {"groupVersion": "batch/v1", "version": "v1"}
        return {"name": "batch", "versions": [version], "preferredVersion": version}

    def _groups(self, request: Request) -> Response:
        aggregated = self._aggregated(request, [_discovery_group("batch", "v1", _BATCH_RESOURCES)])
        if aggregated is not None:
            return aggregated
        return Response(
            200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._batch_group_json()]}
        )

    def _batch_group(self, request: Request) -> Response:
        return Response(200, {"kind": "APIGroup", "apiVersion": "v1", **self._batch_group_json()})

    def _batch_resources(self, request: Request) -> Response:
        return Response(200, _resource_list("batch/v1", _BATCH_RESOURCES))

    def _create_job(self, request: Request) -> Response:
        namespace = request.params["ns"]
        directive = request.arg("fieldValidation") or "Warn"
        if directive not in _FIELD_VALIDATION:
            return _bad_request(
                f"fieldValidation must be one of {', '.join(_FIELD_VALIDATION)}, not {directive!r}"
            )
        try:
            raw = kube_rules.load_json(request.body or b"")
            decoded = kube_rules.decode(raw, "V1Job", "Job")
        except json.JSONDecodeError as error:
            return _bad_request(f"invalid JSON: {error}")
        except kube_rules.DecodeError as error:
            return _bad_request(str(error))
        warnings = [f'unknown field "{path}"' for path in decoded.unknown]
        warnings += [f'duplicate field "{path}"' for path in decoded.duplicates]
        if warnings and directive == "Strict":
            return _bad_request("strict decoding error: " + ", ".join(warnings))
        manifest = decoded.body
        manifest.pop("status", None)
        if manifest.get("apiVersion") != "batch/v1":
            return _bad_request(
                f"the API version in the data ({manifest.get('apiVersion')}) does not match the "
                "expected API version (batch/v1)"
            )
        if manifest.get("kind") != "Job":
            return _bad_request(f"Object 'Kind' is {manifest.get('kind')!r}, not 'Job'")
        metadata = manifest.setdefault("metadata", {})
        if metadata.get("namespace", namespace) != namespace:
            return _bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        if not metadata.get("name") and metadata.get("generateName"):
            suffix = "".join(random.choices(_POD_SUFFIX_CHARS, k=5))
            metadata["name"] = f"{metadata['generateName']}{suffix}"
        name = str(metadata.get("name") or "")
        spec = manifest.setdefault("spec", {})
        labels = metadata.get("labels") or {}
        if self.local_queues is not None and labels.get(QUEUE_LABEL):
            spec["suspend"] = True  # Kueue's webhook: the Job waits for admission
        errors = kube_rules.job_errors(manifest)
        errors += self._fake_limits(manifest)
        if errors:
            return _invalid(name, errors)
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
            metadata.update(
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
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("suspend", False)
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template_meta = spec["template"].setdefault("metadata", {})
            template_meta["labels"] = {**(template_meta.get("labels") or {}), **controller_labels}
            job = FakeJob(
                namespace=namespace,
                name=name,
                uid=uid,
                manifest=manifest,
                created_at=time.time(),
                resource_version=self._version,
            )
            self._jobs[(namespace, name)] = job
            self.created[f"{namespace}/{name}"] += 1
            if job.suspended:
                job.events.append(("Normal", "Suspended", "Job suspended", time.time()))
            else:
                self._start_pod(job)
            if self.create_timeouts > 0:
                self.create_timeouts -= 1
                return _status(
                    504,
                    "Timeout",
                    "Timeout: request did not complete within requested timeout - "
                    "context deadline exceeded",
                )
            answer = Response(201, self._job_json(job))
        if warnings and directive != "Ignore":
            self.warnings += warnings
        if warnings and directive == "Warn":
            answer.headers["Warning"] = ", ".join(
                f"299 - {json.dumps(warning)}" for warning in warnings
            )
        return answer

    @staticmethod
    def _fake_limits(manifest: dict[str, Any]) -> list[kube_rules.FieldError]:
        """What this fake cannot run, though the API server would store it."""
        spec = manifest.get("spec") or {}
        template_spec = (spec.get("template") or {}).get("spec") or {}
        containers = template_spec.get("containers") or []
        errors = []
        if spec.get("backoffLimit") != 0:
            errors.append(
                kube_rules.FieldError(
                    "FieldValueForbidden",
                    "spec.backoffLimit",
                    "this fake runs single-attempt Jobs only (backoffLimit 0)",
                )
            )
        if template_spec.get("restartPolicy") == "OnFailure":
            errors.append(
                kube_rules.FieldError(
                    "FieldValueForbidden",
                    "spec.template.spec.restartPolicy",
                    "this fake runs restartPolicy Never only",
                )
            )
        if len(containers) != 1 or not containers[0].get("command"):
            errors.append(
                kube_rules.FieldError(
                    "FieldValueForbidden",
                    "spec.template.spec.containers",
                    "this fake runs exactly one container, with a command",
                )
            )
        return errors

    def _list_jobs(self, request: Request) -> Response:
        namespace = request.params.get("ns")
        try:
            selector = parse_selector(request.arg("labelSelector") or "")
            fields = parse_field_selector(
                request.arg("fieldSelector") or "",
                {"metadata.name", "metadata.namespace", "status.successful"},
            )
            after = self._decode_continue(request.arg("continue") or "")
            limit = int(request.arg("limit") or 0)
        except ValueError as error:
            return _bad_request(str(error))
        with self._state_lock:
            matching = sorted(
                (
                    job
                    for (ns, name), job in self._jobs.items()
                    if (namespace is None or ns == namespace)
                    and (ns, name) > after
                    and all(
                        r.matches(job.manifest["metadata"].get("labels") or {}) for r in selector
                    )
                    and _field_matches(
                        fields,
                        {
                            "metadata.name": job.name,
                            "metadata.namespace": job.namespace,
                            "status.successful": str(int(self._state_of(job) == SUCCEEDED)),
                        },
                    )
                ),
                key=lambda job: (job.namespace, job.name),
            )
            version = str(self._version)
            page = matching[:limit] if limit > 0 else matching
            items = [self._job_json(job) for job in page]
        metadata: dict[str, Any] = {"resourceVersion": version}
        if len(page) < len(matching):
            token = json.dumps({"after": [page[-1].namespace, page[-1].name]}).encode()
            metadata["continue"] = base64.urlsafe_b64encode(token).decode()
            metadata["remainingItemCount"] = len(matching) - len(page)
        if _accepts(request, **{"as": "Table"}) is not None:
            return self._table(request, "Job", items, metadata)
        return Response(
            200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": metadata, "items": items}
        )

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, str]:
        if not token:
            return ("", "")
        try:
            namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise ValueError(f"invalid continue token {token!r}") from None
        return (str(namespace), str(name))

    def _lookup(self, request: Request) -> FakeJob | None:
        with self._state_lock:
            return self._jobs.get((request.params["ns"], request.params["name"]))

    def _not_found(self, request: Request, kind: str = "jobs", group: str = "batch") -> Response:
        name = request.params["name"]
        what = f"{kind}.{group}" if group else kind
        return _status(404, "NotFound", f'{what} "{name}" not found', name=name, kind=kind)

    def _read_job(self, request: Request) -> Response:
        job = self._lookup(request)
        if job is None:
            return self._not_found(request)
        with self._state_lock:
            document = self._job_json(job)
        if _accepts(request, **{"as": "Table"}) is not None:
            return self._table(request, "Job", [document], {"resourceVersion": str(self._version)})
        return Response(200, document)

    def _patch_job(self, request: Request) -> Response:
        job = self._lookup(request)
        if job is None:
            return self._not_found(request)
        content_type = _header(request, "content-type").split(";")[0].strip()
        try:
            patch = json.loads(request.body or b"null")
        except json.JSONDecodeError as error:
            return _bad_request(f"invalid JSON patch: {error}")
        with self._state_lock:
            current = copy.deepcopy(job.manifest)
            try:
                if content_type == "application/json-patch+json":
                    patched = json_patch(current, patch)
                elif content_type in (
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                ):
                    patched = merge_patch(current, patch)
                else:
                    return _status(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in an unknown format - accepted media "
                        f"types include: application/json-patch+json, "
                        f"application/merge-patch+json, application/strategic-merge-patch+json "
                        f"(got {content_type!r})",
                    )
            except (ValueError, KeyError, IndexError, TypeError) as error:
                return _status(422, "Invalid", f"the patch cannot be applied: {error}")
            try:
                decoded = kube_rules.decode(patched, "V1Job", "Job").body
            except kube_rules.DecodeError as error:
                return _bad_request(str(error))
            decoded.pop("status", None)
            errors = kube_rules.job_errors(decoded, update=True)
            errors += self._immutable(job, current, decoded)
            if errors:
                return _invalid(job.name, errors)
            suspend = bool(decoded["spec"].get("suspend"))
            decoded["spec"]["suspend"] = job.suspended
            job.manifest = decoded
            if suspend != job.suspended:
                self._set_suspend(job, suspend)
            else:
                self._version += 1
                job.manifest["metadata"]["resourceVersion"] = str(self._version)
            document = self._job_json(job)
        return Response(200, document)

    def _immutable(
        self, job: FakeJob, before: dict[str, Any], after: dict[str, Any]
    ) -> list[kube_rules.FieldError]:
        errors = []
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            if before["metadata"].get(key) != after["metadata"].get(key):
                errors.append(
                    kube_rules.FieldError(
                        "FieldValueInvalid",
                        f"metadata.{key}",
                        "field is immutable",
                        after["metadata"].get(key),
                    )
                )
        old_spec = {k: v for k, v in before["spec"].items() if k not in _MUTABLE_SPEC}
        new_spec = {k: v for k, v in after["spec"].items() if k not in _MUTABLE_SPEC}
        if job.suspended and job.pods_started == 0:
            for spec in (old_spec, new_spec):
                template = copy.deepcopy(spec.get("template") or {})
                template.get("metadata", {}).pop("labels", None)
                template.get("metadata", {}).pop("annotations", None)
                for directive in _SCHEDULING_DIRECTIVES:
                    template.get("spec", {}).pop(directive, None)
                spec["template"] = template
        for key in sorted(set(old_spec) | set(new_spec)):
            if old_spec.get(key) != new_spec.get(key):
                errors.append(
                    kube_rules.FieldError(
                        "FieldValueInvalid", f"spec.{key}", "field is immutable", new_spec.get(key)
                    )
                )
        return errors

    def _delete_job(self, request: Request) -> Response:
        job = self._lookup(request)
        if job is None:
            return self._not_found(request)
        try:
            options = json.loads(request.body) if request.body else {}
        except json.JSONDecodeError as error:
            return _bad_request(f"invalid DeleteOptions: {error}")
        policy = request.arg("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and (
            request.arg("orphanDependents") == "false" or options.get("orphanDependents") is False
        ):
            policy = "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            return _bad_request(f"propagationPolicy {policy!r} is not supported")
        # batch/v1 Jobs default to orphaning their pods when deleted through the API.
        self._remove(job, kill=policy in ("Background", "Foreground"))
        return _status(200, "", "", name=job.name, group="batch", kind="jobs", uid=job.uid)

    def _list_pods(self, request: Request) -> Response:
        namespace = request.params["ns"]
        try:
            selector = parse_selector(request.arg("labelSelector") or "")
            fields = parse_field_selector(
                request.arg("fieldSelector") or "",
                {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"},
            )
        except ValueError as error:
            return _bad_request(str(error))
        with self._state_lock:
            pods = [
                self._pod_json(pod_name, job)
                for (ns, pod_name), job in sorted(self._pods.items())
                if ns == namespace
                and all(r.matches(job.template["metadata"]["labels"]) for r in selector)
            ]
            version = str(self._version)
        pods = [
            pod
            for pod in pods
            if _field_matches(
                fields,
                {
                    "metadata.name": pod["metadata"]["name"],
                    "metadata.namespace": namespace,
                    "spec.nodeName": pod["spec"]["nodeName"],
                    "status.phase": pod["status"]["phase"],
                },
            )
        ]
        metadata = {"resourceVersion": version}
        if _accepts(request, **{"as": "Table"}) is not None:
            return self._table(request, "Pod", pods, metadata)
        return Response(
            200, {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": pods}
        )

    def _read_pod(self, request: Request) -> Response:
        namespace, pod_name = request.params["ns"], request.params["name"]
        with self._state_lock:
            job = self._pods.get((namespace, pod_name))
            document = None if job is None else self._pod_json(pod_name, job)
        if document is None:
            return self._not_found(request, "pods", "")
        if _accepts(request, **{"as": "Table"}) is not None:
            return self._table(request, "Pod", [document], {"resourceVersion": str(self._version)})
        return Response(200, document)

    def _pod_log(self, request: Request) -> Response:
        namespace, pod_name = request.params["ns"], request.params["name"]
        with self._state_lock:
            job = self._pods.get((namespace, pod_name))
        if job is None or job.process_id is None:
            return _status(404, "NotFound", f'pods "{pod_name}" not found', name=pod_name)
        container = request.arg("container")
        if container is not None and container != job.container["name"]:
            return _bad_request(f"container {container} is not valid for pod {pod_name}")
        process = self.processes.get(job.process_id)
        if process is None or process.state == PENDING:
            return _bad_request(
                f'container "{job.container["name"]}" in pod "{pod_name}" is waiting to start: '
                "ContainerCreating"
            )
        text = self.processes.logs(job.process_id)
        tail = request.arg("tailLines")
        if tail is not None:
            lines = text.splitlines()
            text = "".join(f"{line}\n" for line in lines[len(lines) - int(tail) :])
        return Response(200, text, content_type="text/plain")

    def _list_events(self, request: Request) -> Response:
        namespace = request.params["ns"]
        supported = {
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "type",
            "source",
            "metadata.name",
            "metadata.namespace",
        }
        try:
            fields = parse_field_selector(request.arg("fieldSelector") or "", supported)
        except ValueError as error:
            return _bad_request(str(error))
        with self._state_lock:
            jobs = [job for (ns, _), job in sorted(self._jobs.items()) if ns == namespace]
            items = []
            for job in jobs:
                for index, (kind, reason, message, at) in enumerate(self._job_events(job)):
                    event = self._event_json(job, index, kind, reason, message, at)
                    involved = event["involvedObject"]
                    if _field_matches(
                        fields,
                        {
                            **{f"involvedObject.{k}": str(v) for k, v in involved.items()},
                            "reason": reason,
                            "type": kind,
                            "source": "job-controller",
                            "metadata.name": event["metadata"]["name"],
                            "metadata.namespace": namespace,
                        },
                    ):
                        items.append(event)
            version = str(self._version)
        return Response(
            200,
            {
                "kind": "EventList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def _job_events(self, job: FakeJob) -> list[tuple[str, str, str, float]]:
        """The Job's recorded events plus the one its pod's end caused, if it has ended."""
        events = list(job.events)
        process = self._process(job)
        ended = _wall(process.finished_at) if process is not None else None
        if process is not None and ended is not None and process.state == SUCCEEDED:
            events.append(("Normal", "Completed", "Job completed", ended))
        elif process is not None and ended is not None and process.state == FAILED:
            events.append(
                (
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    ended,
                )
            )
        return events

    # -- JSON shapes ----------------------------------------------------------------------------

    @staticmethod
    def _event_json(
        job: FakeJob, index: int, kind: str, reason: str, message: str, at: float
    ) -> dict[str, Any]:
        stamp = _timestamp(at)
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{job.uid}/{index}")
        return {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{job.name}.{event_id.hex[:16]}",
                "namespace": job.namespace,
                "creationTimestamp": stamp,
            },
            "involvedObject": {
                "kind": "Job",
                "namespace": job.namespace,
                "name": job.name,
                "uid": job.uid,
                "apiVersion": "batch/v1",
            },
            "reason": reason,
            "message": message,
            "source": {"component": "job-controller"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": kind,
            "reportingComponent": "job-controller",
            "reportingInstance": "",
        }

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        process = self._process(job)
        state = process.state if process is not None else None
        status: dict[str, Any] = {
            "active": 1 if state in (PENDING, RUNNING) else 0,
            "ready": 1 if state == RUNNING else 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
        conditions: list[tuple[str, str, str, str]] = []
        if job.started_at is not None:
            status["startTime"] = _timestamp(job.started_at)
        if job.suspended:
            conditions.append(("Suspended", "True", "JobSuspended", "Job suspended"))
        elif job.resumed:
            conditions.append(("Suspended", "False", "JobResumed", "Job resumed"))
        finished = _wall(process.finished_at) if process is not None else None
        if state in (SUCCEEDED, FAILED) and finished is not None:
            if state == SUCCEEDED:
                status["succeeded"] = 1
                status["completionTime"] = _timestamp(finished)
                message = "Reached expected number of succeeded pods"
                conditions += [
                    ("SuccessCriteriaMet", "True", "CompletionsReached", message),
                    ("Complete", "True", "CompletionsReached", message),
                ]
            else:
                status["failed"] = 1
                message = "Job has reached the specified backoff limit"
                conditions += [
                    ("FailureTarget", "True", "BackoffLimitExceeded", message),
                    ("Failed", "True", "BackoffLimitExceeded", message),
                ]
        if conditions:
            at = _timestamp(finished or job.started_at or job.created_at)
            status["conditions"] = [
                {
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": at,
                    "lastTransitionTime": at,
                }
                for kind, value, reason, message in conditions
            ]
        return {**job.manifest, "status": status}

    def _pod_json(self, pod_name: str, job: FakeJob) -> dict[str, Any]:
        process = self._process(job)
        state = process.state if process is not None else PENDING
        container = job.container
        started = _wall(process.started_at) if process is not None else None
        finished = _wall(process.finished_at) if process is not None else None
        created = job.started_at or job.created_at
        if state == PENDING:
            container_state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        elif state == RUNNING and started is not None:
            container_state = {"running": {"startedAt": _timestamp(started)}}
        else:
            code = process.returncode if process and process.returncode is not None else 137
            container_state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": _timestamp(started or created),
                    "finishedAt": _timestamp(finished or time.time()),
                }
            }
        phase = {PENDING: "Pending", RUNNING: "Running", SUCCEEDED: "Succeeded"}.get(
            state, "Failed"
        )
        status: dict[str, Any] = {
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
        }
        if state != PENDING:
            status.update(hostIP="127.0.0.1", podIP="127.0.0.1", startTime=_timestamp(created))
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": job.namespace,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job.uid}/{pod_name}")),
                "creationTimestamp": _timestamp(created),
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
            "status": status,
        }

    # -- server-side printing -------------------------------------------------------------------

    def _table(
        self, request: Request, kind: str, items: list[dict[str, Any]], metadata: dict[str, Any]
    ) -> Response:
        params = _accepts(request, **{"as": "Table"}) or {}
        version = params.get("v", "v1")
        columns, rows = (_job_table if kind == "Job" else _pod_table)(items)
        include = request.arg("includeObject") or "Metadata"

        def row_object(item: dict[str, Any]) -> dict[str, Any] | None:
            if include == "None":
                return None
            if include == "Object":
                return item
            return {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": item["metadata"],
            }

        return Response(
            200,
            {
                "kind": "Table",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": metadata,
                "columnDefinitions": [
                    {
                        "name": name,
                        "type": "string",
                        "format": "name" if name == "Name" else "",
                        "description": description,
                        "priority": priority,
                    }
                    for name, description, priority in columns
                ],
                "rows": [
                    {"cells": cells, "object": row_object(item)}
                    for cells, item in zip(rows, items, strict=True)
                ],
            },
        )


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return human_duration(time.time() - moment.timestamp())


def _job_table(items: list[dict[str, Any]]) -> tuple[list[tuple[str, str, int]], list[list[Any]]]:
    columns = [
        ("Name", "Name must be unique within a namespace.", 0),
        ("Status", "Status of the job.", 0),
        ("Completions", "The completion status of the job.", 0),
        ("Duration", "Time required to complete the job.", 0),
        ("Age", "CreationTimestamp is the time this object was created.", 0),
        ("Containers", "Names of each container in the template.", 1),
        ("Images", "Images referenced by each container in the template.", 1),
        ("Selector", "A label query over pods that should match the pod count.", 1),
    ]
    rows = []
    for job in items:
        status = job.get("status") or {}
        conditions = {c["type"]: c["status"] == "True" for c in status.get("conditions") or []}
        shown = next(
            (
                name
                for name in (
                    "Complete",
                    "Failed",
                    "Suspended",
                    "FailureTarget",
                    "SuccessCriteriaMet",
                )
                if conditions.get(name)
            ),
            "Running",
        )
        completions = f"{status.get('succeeded', 0)}/{job['spec'].get('completions', 1)}"
        start, end = status.get("startTime"), status.get("completionTime")
        if start and end:
            duration = human_duration(
                datetime.datetime.fromisoformat(end).timestamp()
                - datetime.datetime.fromisoformat(start).timestamp()
            )
        elif start:
            duration = _age(start)
        else:
            duration = ""
        containers = job["spec"]["template"]["spec"]["containers"]
        selector = ",".join(
            f"{k}={v}"
            for k, v in (job["spec"].get("selector") or {}).get("matchLabels", {}).items()
        )
        rows.append(
            [
                job["metadata"]["name"],
                shown,
                completions,
                duration,
                _age(job["metadata"].get("creationTimestamp")),
                ",".join(c["name"] for c in containers),
                ",".join(c.get("image", "") for c in containers),
                selector,
            ]
        )
    return columns, rows


def _pod_table(items: list[dict[str, Any]]) -> tuple[list[tuple[str, str, int]], list[list[Any]]]:
    columns = [
        ("Name", "Name must be unique within a namespace.", 0),
        ("Ready", "The aggregate readiness state of this pod for accepting traffic.", 0),
        ("Status", "The aggregate status of the containers in this pod.", 0),
        ("Restarts", "The number of times the containers in this pod have been restarted.", 0),
        ("Age", "CreationTimestamp is the time this object was created.", 0),
        ("IP", "IP address allocated to the pod.", 1),
        ("Node", "Name of the node the pod is assigned to.", 1),
    ]
    rows = []
    for pod in items:
        statuses = pod["status"].get("containerStatuses") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        state = statuses[0]["state"] if statuses else {}
        if "waiting" in state:
            shown = state["waiting"]["reason"]
        elif "terminated" in state:
            shown = state["terminated"]["reason"]
        else:
            shown = pod["status"]["phase"]
        rows.append(
            [
                pod["metadata"]["name"],
                f"{ready}/{len(statuses)}",
                shown,
                "0",
                _age(pod["metadata"].get("creationTimestamp")),
                pod["status"].get("podIP", "<none>"),
                pod["spec"].get("nodeName", "<none>"),
            ]
        )
    return columns, rows


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


__all__ = [
    "ALL_JOBS",
    "CANCELLED",
    "EVENTS",
    "JOB",
    "JOBS",
    "JOB_STATUS",
    "POD",
    "PODS",
    "POD_LOG",
    "QUEUE_LABEL",
    "FakeJob",
    "FakeKubernetes",
    "count_poll_calls",
    "job_spec",
    "parse_field_selector",
    "parse_selector",
]
