"""The Kubernetes backend: one ``batch/v1`` Job per training run, through the official client.

The Job is named ``spec.job_name`` (deterministic from the idempotency key), so the API server's
name uniqueness is what makes ``submit`` idempotent: a ``409 AlreadyExists`` means the job is there
already, and its ``ml-assets/idempotency-key`` annotation is checked to be ours. The container runs
``spec.image`` (else the ``image`` setting) in ``spec.working_dir`` (its ``workingDir``; else the
image's WORKDIR) with ``spec.env``. A staged job's command is ``remote.staged_command``, which
uploads ``job.log``, the Pipes ``messages.jsonl`` and, on a non-zero exit, ``failure.json`` to the
job's ``output_uri``; an unstaged one (``staged=False``) runs ``spec.command`` as it is with
``ML_ASSETS_OUTPUT_URI`` = ``output_uri`` and writes there itself. The backend uses
``spec.output_uri`` as given (the asset layer builds it as ``<storage_root>/jobs/<team>/<model>/<job
name>``, see ``remote.output_location``). ``storage_root`` may be ``s3://``, ``gs://`` (the pod
reaches it with its service account's cloud identity, never a secret in the job's env) or a path on
a volume that both the pod and the Dagster processes mount (``shared_volume_claim`` mounts a PVC at
that path).

The machine shape of a job is its container resources plus a node selector:

==================  =========================================================================
``cpu``             requests = limits, ``"2"`` or millicores (``"500m"``)
``memory_gb``       requests = limits, ``"4Gi"`` or ``"1536Mi"``
``gpu_count`` > 0   ``nvidia.com/gpu: <count>`` (requests = limits), a ``nvidia.com/gpu``
                    ``NoSchedule`` toleration, and the node selector of ``gpu_type``
``gpu_type``        looked up in ``gpu_node_selectors`` (default ``GPU_NODE_SELECTORS``:
                    GKE's ``cloud.google.com/gke-accelerator: <type>`` for the GKE names below);
                    an unknown type is a ``ValueError`` naming the known ones
``node_selector``,  added as given (the model's ``node_selector`` wins over the GPU's)
``tolerations``
==================  =========================================================================

On a cluster labelled by NVIDIA's GPU feature discovery instead, set ``gpu_node_selectors`` in
the team's YAML, e.g. ``{nvidia-a100-80gb: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}}``; it
replaces the default table.

Polling lists the jobs of each (namespace, team) with one paginated ``list_namespaced_job`` by
label selector, read as raw JSON (``_preload_content=False``) of which only the few fields the
state needs are kept: building the client's model classes for every Job, manifest and all, was
most of a poll's time at thousands of jobs. A ``Complete`` Job succeeded (``result_uri`` = its
``output_uri``: its Pipes messages there say what it produced), a ``Failed`` one failed. A job
that is no longer listed was cancelled if ``cancel`` left a ``cancelled.json`` marker in its
output (the marker is the durable record, readable from any process); else it failed if it left
a staged ``failure.json``; else, if it left any output (``job.log`` or Pipes messages), it ran
and was removed after it ended (``ttlSecondsAfterFinished``) and is reported succeeded, its
messages deciding; else it failed. Logs come from the job's pod, or the staged
``job.log`` once the pod is gone. The client's urllib3 retries (``Configuration.retries``) absorb
429, 5xx and dropped connections for every verb, POST included: a retried create answered
``409`` is taken as success.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.resource import BackendResource
from ml_assets.tags import (
    KUBERNETES_KEY_ANNOTATION,
    KUBERNETES_KEY_HASH_LABEL,
    KUBERNETES_MODEL_LABEL,
    KUBERNETES_OUTPUT_ANNOTATION,
    KUBERNETES_TEAM_LABEL,
)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "ml-assets"
# The label the Job controller puts on a Job's pods.
POD_JOB_LABEL = "job-name"
CONTAINER_NAME = "trainer"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
STORAGE_VOLUME = "ml-assets-storage"
CANCELLED_MARKER = "cancelled.json"
FAILURE_FILE = "failure.json"
# Written by cancel, the staged command or the job's Pipes message writer (a file or numbered
# chunks); their presence means the job already ran in this output.
_OUTPUT_MARKERS = ("job.log", "messages.jsonl", "messages/1.json")
_RAN_MARKERS = (CANCELLED_MARKER, *_OUTPUT_MARKERS)
RETRY_STATUSES = (429, 500, 502, 503, 504)
_CREATE_ATTEMPTS = 3

_GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GPU_NODE_SELECTORS: dict[str, dict[str, str]] = {
    gpu: {_GKE_ACCELERATOR: gpu}
    for gpu in (
        "nvidia-tesla-t4",
        "nvidia-tesla-p4",
        "nvidia-tesla-p100",
        "nvidia-tesla-v100",
        "nvidia-tesla-a100",
        "nvidia-a100-80gb",
        "nvidia-l4",
        "nvidia-h100-80gb",
        "nvidia-h100-mega-80gb",
        "nvidia-h200-141gb",
    )
}
"""GPU type -> node selector labels, by default GKE's accelerator label (see module docstring)."""

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_TOLERATION_FIELDS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})


class JobNameConflict(RuntimeError):
    """The deterministic job name is taken by a job with another idempotency key."""


class KubernetesBackendResource(BackendResource):
    """Settings of the Kubernetes backend (``backends: {kubernetes: {...}}`` in a team's YAML).

    The API server is ``host`` (with ``token``) when given, else the ``kubeconfig``/``context``
    when given, else the pod's in-cluster service account when running in a cluster, else the
    default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).
    """

    host: str | None = Field(None, description="API server URL; unset: kubeconfig or in-cluster.")
    kubeconfig: str | None = Field(None, description="Path of a kubeconfig file.")
    context: str | None = Field(None, description="kubeconfig context to use.")
    token: str | None = Field(
        None, description="Bearer token for the API server; write it as {env: NAME}."
    )
    ssl_ca_cert: str | None = Field(None, description="CA bundle for `host` (a file path).")
    insecure_skip_tls_verify: bool = Field(False, description="Skip TLS checks for `host`.")
    namespace: str = Field("default", description="Namespace the jobs run in.")
    image: str = Field(
        description="Default container image (with ml_assets) for jobs that name no image."
    )
    storage_root: str = Field(
        description="Where job outputs go: s3://..., gs://... or a path on a shared volume."
    )
    shared_volume_claim: str | None = Field(
        None, description="PVC mounted at `storage_root` in every job (local storage_root only)."
    )
    service_account_name: str | None = Field(
        None, description="Service account of the job's pod (its cloud storage identity)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    sync_seconds: float = Field(
        10.0, ge=0, description="How often a running staged job uploads its log and messages."
    )
    ttl_seconds_after_finished: int | None = Field(
        86400, ge=0, description="Delete finished jobs after this long; null keeps them."
    )
    gpu_node_selectors: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {gpu: dict(labels) for gpu, labels in GPU_NODE_SELECTORS.items()},
        description="GPU type -> node selector labels; replaces the GKE default table.",
    )
    page_size: int = Field(500, ge=1, description="Jobs per page when polling lists jobs.")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one API call.")
    max_retries: int = Field(8, ge=0, description="Retries of a call on 429, 5xx or a drop.")
    retry_backoff_seconds: float = Field(
        0.5, ge=0, description="Backoff factor between retries (doubles each time)."
    )

    def get_backend(self) -> KubernetesBackend:
        return KubernetesBackend(self)


# -- pure builders --------------------------------------------------------------------------------


def label_value(text: str) -> str:
    """``text`` as a valid label value: other characters become ``-``, at most 63 characters."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def key_hash(key: str) -> str:
    """The label that identifies an idempotency key (keys themselves may not be label values)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def team_selector(team: str) -> str:
    """The label selector of one team's jobs (all ml_assets jobs when ``team`` is empty)."""
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    return f"{selector},{KUBERNETES_TEAM_LABEL}={label_value(team)}" if team else selector


def _check_label_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if not _LABEL_NAME.match(name) or (
        prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))
    ):
        raise ValueError(
            f"label {key!r} is not a valid Kubernetes label key ([prefix/]name, name at most 63 "
            f"letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
        )


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The spec's labels plus ml_assets' own (team, model, key hash), which take precedence."""
    for key in spec.labels:
        _check_label_key(key)
    return {
        **{key: label_value(value) for key, value in spec.labels.items()},
        MANAGED_BY_LABEL: MANAGED_BY,
        KUBERNETES_TEAM_LABEL: label_value(spec.team),
        KUBERNETES_MODEL_LABEL: label_value(spec.model),
        KUBERNETES_KEY_HASH_LABEL: key_hash(spec.idempotency_key),
    }


def cpu_quantity(cpu: float) -> str:
    """Cores as a Kubernetes quantity: ``"2"``, or millicores such as ``"500m"``."""
    millis = max(1, round(cpu * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(memory_gb: float) -> str:
    """GiB as a Kubernetes quantity: ``"4Gi"``, or ``"1536Mi"`` for a fraction."""
    mib = max(1, round(memory_gb * 1024))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def container_resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Requests and limits (equal, so the pod gets what the model asked for, and no more)."""
    amounts = {"cpu": cpu_quantity(resources.cpu), "memory": memory_quantity(resources.memory_gb)}
    if resources.gpu_count:
        amounts[GPU_RESOURCE] = str(resources.gpu_count)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def gpu_node_selector(
    resources: Resources, table: dict[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """The node labels of the GPU type ``resources`` asks for (``{}`` for none or any type).

    Raises ``ValueError`` for a type missing from ``table`` (default ``GPU_NODE_SELECTORS``)
    and for a GPU type without a GPU count.
    """
    table = GPU_NODE_SELECTORS if table is None else table
    if resources.gpu_type is None:
        return {}
    if resources.gpu_type not in table:
        known = ", ".join(sorted(table)) or "none configured"
        raise ValueError(
            f"unknown GPU type {resources.gpu_type!r} for the kubernetes backend; known types: "
            f"{known} (map it to node labels in backends.kubernetes.gpu_node_selectors)"
        )
    if not resources.gpu_count:
        raise ValueError(
            f"gpu_type {resources.gpu_type!r} is set but gpu_count is 0; ask for at least one GPU"
        )
    return dict(table[resources.gpu_type])


def _toleration(raw: dict[str, str]) -> dict[str, Any]:
    unknown = set(raw) - _TOLERATION_FIELDS
    if unknown:
        raise ValueError(
            f"toleration {raw} has unknown fields {sorted(unknown)}; "
            f"allowed: {sorted(_TOLERATION_FIELDS)}"
        )
    toleration: dict[str, Any] = dict(raw)
    if "tolerationSeconds" in toleration:
        toleration["tolerationSeconds"] = int(toleration["tolerationSeconds"])
    return toleration


def pod_placement(
    resources: Resources, table: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """``nodeSelector`` and ``tolerations`` of the pod (keys left out when empty)."""
    selector = {**gpu_node_selector(resources, table), **resources.node_selector}
    tolerations = [_toleration(raw) for raw in resources.tolerations]
    if resources.gpu_count and GPU_TOLERATION not in tolerations:
        tolerations.append(dict(GPU_TOLERATION))
    placement: dict[str, Any] = {}
    if selector:
        placement["nodeSelector"] = selector
    if tolerations:
        placement["tolerations"] = tolerations
    return placement


def build_job_body(spec: JobSpec, settings: KubernetesBackendResource) -> dict[str, Any]:
    """The ``batch/v1`` Job manifest that runs ``spec`` (plain JSON, no client objects).

    Raises ``ValueError`` for an unknown GPU type, a bad label key or toleration, or a
    ``shared_volume_claim`` with a storage_root that is not a path.
    """
    labels = job_labels(spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": remote.container_command(spec, settings.sync_seconds),
        "resources": container_resources(spec.resources),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    env = remote.container_env(spec)
    if env:
        container["env"] = [{"name": name, "value": env[name]} for name in sorted(env)]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        **pod_placement(spec.resources, settings.gpu_node_selectors),
    }
    if settings.service_account_name:
        pod_spec["serviceAccountName"] = settings.service_account_name
    if settings.shared_volume_claim:
        if not transport.is_local(settings.storage_root):
            raise ValueError(
                f"shared_volume_claim needs storage_root to be a path on that volume, "
                f"not {settings.storage_root!r}"
            )
        mount_path = str(transport.local_path(settings.storage_root))
        container["volumeMounts"] = [{"name": STORAGE_VOLUME, "mountPath": mount_path}]
        pod_spec["volumes"] = [
            {
                "name": STORAGE_VOLUME,
                "persistentVolumeClaim": {"claimName": settings.shared_volume_claim},
            }
        ]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if settings.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.job_name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {
                KUBERNETES_KEY_ANNOTATION: spec.idempotency_key,
                KUBERNETES_OUTPUT_ANNOTATION: spec.output_uri,
            },
        },
        "spec": job_spec,
    }


def client_configuration(settings: KubernetesBackendResource) -> Any:
    """A ``kubernetes.client.Configuration`` for ``settings``, with urllib3 retries set.

    Retries cover connection errors, dropped connections and 429/5xx answers for every method
    (a retried POST that finds its job created gets 409, which ``submit`` accepts), honouring
    ``Retry-After``.
    """
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    if settings.host:
        configuration = client.Configuration(host=settings.host)
        configuration.ssl_ca_cert = settings.ssl_ca_cert
        configuration.verify_ssl = not settings.insecure_skip_tls_verify
    else:
        configuration = client.Configuration()
        try:
            if (
                settings.kubeconfig
                or settings.context
                or not os.environ.get("KUBERNETES_SERVICE_HOST")
            ):
                config.load_kube_config(
                    config_file=settings.kubeconfig,
                    context=settings.context,
                    client_configuration=configuration,
                )
            else:
                config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as error:
            raise RuntimeError(
                "the kubernetes backend found no API server: set backends.kubernetes.host (and "
                "token), or kubeconfig/context, or run inside a cluster "
                f"({error})"
            ) from error
    if settings.token:
        configuration.api_key = {"BearerToken": settings.token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    retries = settings.max_retries
    configuration.retries = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.retry_backoff_seconds,
        backoff_max=30,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    return configuration


# -- the backend ----------------------------------------------------------------------------------


def _annotation(job: Any, name: str) -> str | None:
    annotations = job.metadata.annotations or {}
    value = annotations.get(name)
    return str(value) if value is not None else None


def _finished_condition(job: Any) -> Any | None:
    """The job's ``Complete`` or ``Failed`` condition, if it has ended."""
    for condition in (job.status and job.status.conditions) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return condition
    return None


@dataclass(frozen=True)
class ListedJob:
    """What a poll keeps of one listed Job: the few fields its state is decided from.

    ``finished`` is the ``(type, reason, message)`` of its ``Complete`` or ``Failed`` condition
    once it has ended; ``ready`` is ``None`` where the API server does not report it.
    """

    name: str
    owner: str | None
    finished: tuple[str, str, str] | None
    active: int
    ready: int | None


def listed_job(item: Mapping[str, Any]) -> ListedJob:
    """The ``ListedJob`` of one item of a raw ``JobList`` (plain JSON, no client models)."""
    metadata = item.get("metadata") or {}
    status = item.get("status") or {}
    owner = (metadata.get("annotations") or {}).get(KUBERNETES_KEY_ANNOTATION)
    finished = None
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            kind, reason, message = (condition.get(f) for f in ("type", "reason", "message"))
            finished = (str(kind), str(reason or ""), str(message or ""))
            break
    return ListedJob(
        name=str(metadata.get("name") or ""),
        owner=str(owner) if owner is not None else None,
        finished=finished,
        active=int(status.get("active") or 0),
        ready=None if status.get("ready") is None else int(status["ready"]),
    )


class KubernetesBackend:
    """Runs each training job as a Kubernetes ``batch/v1`` Job; see the module docstring."""

    name: str = "kubernetes"

    def __init__(self, settings: KubernetesBackendResource) -> None:
        from kubernetes import client

        self.settings = settings
        api_client = client.ApiClient(client_configuration(settings))
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._timeout = settings.request_timeout_seconds

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Create the Job for ``spec`` unless it exists or already ran; return its handle.

        Raises ``JobNameConflict`` if the name belongs to a job with another key.
        """
        from kubernetes.client.exceptions import ApiException

        body = build_job_body(spec, self.settings)
        handle = JobHandle.for_spec(self.name, spec, {"namespace": self.settings.namespace})
        # A cancelled job, or one that ran and was deleted since, has freed its name; creating
        # it again would run it twice.
        if any(transport.exists(transport.join(spec.output_uri, m)) for m in _RAN_MARKERS):
            return handle
        for _ in range(_CREATE_ATTEMPTS):
            try:
                self._batch.create_namespaced_job(
                    self.settings.namespace, body, _request_timeout=self._timeout
                )
                return handle
            except ApiException as error:
                if error.status != 409:
                    raise
            existing = self._read_job(spec.job_name, self.settings.namespace)
            if existing is not None:
                self._check_owner(existing, spec.idempotency_key)
                return handle
            # Deleted between the 409 and the read: the name is free again.
        raise RuntimeError(
            f"could not create job {spec.job_name} in namespace {self.settings.namespace}: "
            f"it kept being deleted while being created"
        )

    def _check_owner(self, job: Any, key: str) -> None:
        owner = _annotation(job, KUBERNETES_KEY_ANNOTATION)
        if owner != key:
            raise JobNameConflict(
                f"Kubernetes job {job.metadata.namespace}/{job.metadata.name} belongs to "
                f"idempotency key {owner!r}, not {key!r}; delete it or use another key"
            )

    def _read_job(self, name: str, namespace: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._batch.read_namespaced_job(name, namespace, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    # -- poll -----------------------------------------------------------------------------------

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """The status of every handle: one paginated list call per (namespace, team).

        Storage is read only for jobs that have finished or disappeared.
        """
        groups: dict[tuple[str, str], list[JobHandle]] = {}
        for handle in handles:
            groups.setdefault((self._namespace(handle), handle.team), []).append(handle)
        statuses: dict[str, JobStatus] = {}
        for (namespace, team), members in groups.items():
            jobs = self._list_jobs(namespace, team, {handle.job_id for handle in members})
            for handle in members:
                statuses[handle.job_id] = self._status(handle, jobs.get(handle.job_id))
        return statuses

    def _list_jobs(self, namespace: str, team: str, wanted: set[str]) -> dict[str, ListedJob]:
        found: dict[str, ListedJob] = {}
        token: str | None = None
        while True:
            page = self._list_page(namespace, team_selector(team), token)
            for item in page.get("items") or []:
                if (item.get("metadata") or {}).get("name") in wanted:
                    job = listed_job(item)
                    found[job.name] = job
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found

    def _list_page(self, namespace: str, selector: str, token: str | None) -> dict[str, Any]:
        """One page of the job list as plain JSON.

        The client's urllib3 retries cover the call up to its answer's status line; reading
        the body is then ours, so a body that breaks off is retried here the same way (a
        preloaded answer would have been retried inside urllib3).
        """
        from urllib3.exceptions import HTTPError

        attempt = 0
        while True:
            response = self._batch.list_namespaced_job(
                namespace,
                label_selector=selector,
                limit=self.settings.page_size,
                _continue=token,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            try:
                page: dict[str, Any] = json.loads(response.data)
                return page
            except HTTPError:
                if attempt >= self.settings.max_retries:
                    raise
            finally:
                response.release_conn()
            time.sleep(min(30.0, self.settings.retry_backoff_seconds * 2**attempt))
            attempt += 1

    def _status(self, handle: JobHandle, job: ListedJob | None) -> JobStatus:
        if job is None:
            return self._missing_status(handle)
        if job.owner != handle.idempotency_key:
            return JobStatus(
                job_id=handle.job_id,
                state=JobState.FAILED,
                message=f"job {handle.job_id} now belongs to idempotency key {job.owner!r}",
            )
        if job.finished is not None and job.finished[0] == "Complete":
            return remote.finished_status(handle.job_id, JobState.SUCCEEDED, handle.output_uri)
        if job.finished is not None:
            reason = ": ".join(part for part in job.finished[1:] if part)
            return remote.finished_status(
                handle.job_id,
                JobState.FAILED,
                handle.output_uri,
                f"Kubernetes job failed ({reason or 'no reason given'})",
            )
        if job.active and (job.ready is None or job.ready > 0):
            return JobStatus(job_id=handle.job_id, state=JobState.RUNNING)
        message = (
            "waiting for its pod to be scheduled and started"
            if job.active
            else "waiting for the job controller to create its pod"
        )
        return JobStatus(job_id=handle.job_id, state=JobState.QUEUED, message=message)

    def _missing_status(self, handle: JobHandle) -> JobStatus:
        uri = handle.output_uri
        if transport.exists(transport.join(uri, CANCELLED_MARKER)):
            return JobStatus(job_id=handle.job_id, state=JobState.CANCELLED, message="cancelled")
        if transport.exists(transport.join(uri, FAILURE_FILE)):
            return remote.finished_status(
                handle.job_id,
                JobState.FAILED,
                uri,
                "the Kubernetes job was deleted after it failed",
            )
        if any(transport.exists(transport.join(uri, marker)) for marker in _OUTPUT_MARKERS):
            return remote.finished_status(
                handle.job_id,
                JobState.SUCCEEDED,
                uri,
                "the Kubernetes job was removed after it ended; its messages tell its outcome",
            )
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.FAILED,
            message=(
                f"Kubernetes job {handle.job_id} is gone from namespace "
                f"{self._namespace(handle)} and left no output in {uri}: it was deleted outside "
                f"ml_assets, or its pod was killed before the output was uploaded"
            ),
        )

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job and remember that it was cancelled; a finished or gone job is left as is.

        The ``cancelled.json`` marker is written before the delete, so a poll from any process
        that no longer finds the job reports it cancelled.
        """
        from kubernetes.client.exceptions import ApiException

        namespace = self._namespace(handle)
        job = self._read_job(handle.job_id, namespace)
        if job is None or _finished_condition(job) is not None:
            return
        self._check_owner(job, handle.idempotency_key)
        transport.write_json(
            transport.join(handle.output_uri, CANCELLED_MARKER),
            {
                "job_id": handle.job_id,
                "idempotency_key": handle.idempotency_key,
                "cancelled_at": datetime.datetime.now(datetime.UTC).isoformat(),
            },
        )
        try:
            self._batch.delete_namespaced_job(
                handle.job_id,
                namespace,
                propagation_policy="Background",
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    # -- logs -----------------------------------------------------------------------------------

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's pod log, or of the staged ``job.log``."""
        from kubernetes.client.exceptions import ApiException

        if tail <= 0:
            return ""
        namespace = self._namespace(handle)
        pods = self._core.list_namespaced_pod(
            namespace,
            label_selector=f"{POD_JOB_LABEL}={handle.job_id}",
            _request_timeout=self._timeout,
        ).items
        if pods:
            newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp)
            try:
                # Raw bytes: the client would otherwise parse a log that happens to be JSON.
                response = self._core.read_namespaced_pod_log(
                    newest.metadata.name,
                    namespace,
                    container=CONTAINER_NAME,
                    tail_lines=tail,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
                return remote.log_tail(response.data.decode(errors="replace"), tail)
            except ApiException as error:
                # 400: the container has not started yet; 404: the pod went away meanwhile.
                if error.status not in (400, 404):
                    raise
        return remote.read_log(handle.output_uri, tail)

    # -- helpers --------------------------------------------------------------------------------

    def _namespace(self, handle: JobHandle) -> str:
        if handle.backend != self.name:
            raise ValueError(
                f"job {handle.job_id} belongs to backend {handle.backend!r}, not {self.name!r}"
            )
        namespace = handle.details.get("namespace")
        return str(namespace) if namespace else self.settings.namespace
