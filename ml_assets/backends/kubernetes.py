"""The Kubernetes backend: one ``batch/v1`` Job per training run, through the official client.

The Job is named ``spec.job_name`` (deterministic from the idempotency key), so the API server's
name uniqueness makes ``submit`` idempotent: a ``409 AlreadyExists`` means the job is there, and
its ``ml-assets/idempotency-key`` annotation is checked to be ours. The container runs
``spec.image`` (else the ``image_uri`` setting) in ``spec.working_dir`` (its ``workingDir``) with
the staged command of ``remote`` (or, unstaged, ``spec.command`` as it is). ``storage_root`` may be
``s3://``, ``gs://`` (reached with the pod's service account, never a secret in its env) or a path
on a volume both the pod and the Dagster processes mount (``shared_volume_claim``).

The machine shape of a job is its container resources plus a node selector:

==================  =========================================================================
``cpu``             requests = limits, ``"2"`` or millicores (``"500m"``)
``memory_gb``       requests = limits, ``"4Gi"`` or ``"1536Mi"``
``gpu_count`` > 0   ``nvidia.com/gpu: <count>`` (requests = limits), a ``nvidia.com/gpu``
                    ``NoSchedule`` toleration, and the node selector of ``gpu_type``
``gpu_type``        looked up by its short name in ``gpu_node_selectors`` (default
                    ``GPU_NODE_SELECTORS``: GKE's ``cloud.google.com/gke-accelerator``)
``node_selector``,  added as given (the model's ``node_selector`` wins over the GPU's);
``tolerations``     both are checked against the API server's rules when the team YAML loads
==================  =========================================================================

On a cluster labelled by NVIDIA's GPU feature discovery instead, set ``gpu_node_selectors``,
e.g. ``{a100-80gb: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}}``; it replaces the table.

**Kueue.** ``spec.labels`` become the Job's labels, so a spec labelled
``kueue.x-k8s.io/queue-name: <LocalQueue>`` is queued by Kueue, whose webhook creates it
suspended (``spec.suspend: true``) until admitted: such a Job is ``QUEUED``, "suspended by Kueue
in LocalQueue <name>".

Polling lists the jobs of each (namespace, team) with one paginated ``list_namespaced_job`` by
label selector, read as raw JSON (``_preload_content=False``) of which only the few fields the
state needs are kept. A job that is no longer listed was cancelled if ``cancel`` left a
``cancelled.json`` marker in its output (the durable record, readable from any process); else it
failed if it left a staged ``failure.json``; else, if it left any output (``job.log`` or Pipes
messages), it ran and was removed after it ended (``ttlSecondsAfterFinished``) and is reported
succeeded, its messages deciding; else it failed. Logs come from the job's pod, or the staged
``job.log`` once the pod is gone.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import (
    HandleDetails,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    Resources,
    label_key_problem,
    label_problems,
)
from ml_assets.backends.remote import JobExists, KeyConflict, NativeJob, RemoteBackend
from ml_assets.backends.settings import RemoteSettings
from ml_assets.backends.shapes import normalize_gpu_type
from ml_assets.tags import (
    KUBERNETES_KEY_ANNOTATION,
    KUBERNETES_KEY_HASH_LABEL,
    KUBERNETES_MODEL_LABEL,
    KUBERNETES_OUTPUT_ANNOTATION,
    KUBERNETES_TEAM_LABEL,
    KUEUE_QUEUE_LABEL,
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
# The API reference's resource.Quantity grammar: <signedNumber><suffix>, the suffix binary SI,
# decimal SI (m, k, M, G, T, P, E or none) or a decimal exponent.
_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)"
QUANTITY = re.compile(rf"{_NUMBER}(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE]{_NUMBER})?\Z")

_GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GPU_NODE_SELECTORS: dict[str, dict[str, str]] = {
    normalize_gpu_type(gke): {_GKE_ACCELERATOR: gke}
    for gke in (
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
"""GPU short name -> node selector labels, by default GKE's accelerator label."""

JobNameConflict = KeyConflict


class KubernetesDetails(HandleDetails):
    """A Kubernetes job's handle details: its namespace (unset: the backend's)."""

    namespace: str | None = None


class KubernetesSettings(RemoteSettings):
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
    image_uri: str = Field(
        description="Default container image (with ml_assets) for jobs that name no image."
    )
    storage_root: str = Field(
        description="Where job outputs go: s3://..., gs://... or a path on a shared volume."
    )
    shared_volume_claim: str | None = Field(
        None, description="PVC mounted at `storage_root` in every job (local storage_root only)."
    )
    service_account: str | None = Field(
        None, description="Service account of the job's pod (its cloud storage identity)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ttl_seconds_after_finished: int | None = Field(
        86400, ge=0, description="Delete finished jobs after this long; null keeps them."
    )
    ephemeral_storage: str | None = Field(
        None, description="Local disk of the pod (a Kubernetes quantity, e.g. '20Gi')."
    )
    gpu_node_selectors: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {gpu: dict(labels) for gpu, labels in GPU_NODE_SELECTORS.items()},
        description="GPU type -> node selector labels; replaces the GKE default table.",
    )
    page_size: int = Field(500, ge=1, description="Jobs per page when polling lists jobs.")

    @field_validator("ephemeral_storage")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not QUANTITY.match(value):
            raise ValueError(
                f"{value!r} is not a Kubernetes quantity: a number and an optional suffix "
                "(Ki, Mi, Gi, Ti, Pi, Ei, m, k, M, G, T, P, E), e.g. '20Gi', no space"
            )
        return value

    @field_validator("gpu_node_selectors")
    @classmethod
    def _selectors(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        problems = [f"{gpu}: {bad}" for gpu, sel in value.items() if (bad := label_problems(sel))]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    def get_backend(self) -> KubernetesBackend:
        return KubernetesBackend(self)


# -- pure builders --------------------------------------------------------------------------------


def label_value(text: str) -> str:
    """``text`` as a valid label value: other characters become ``-``, at most 63 characters."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def team_selector(team: str) -> str:
    """The label selector of one team's jobs (all ml_assets jobs when ``team`` is empty)."""
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    return f"{selector},{KUBERNETES_TEAM_LABEL}={label_value(team)}" if team else selector


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The spec's labels (a Kueue queue name among them) plus ml_assets' own, which win."""
    for key in spec.labels:
        problem = label_key_problem(key)
        if problem:
            raise ValueError(f"label {problem} (a Kubernetes label key is [prefix/]name)")
    return {
        **{key: label_value(value) for key, value in spec.labels.items()},
        MANAGED_BY_LABEL: MANAGED_BY,
        KUBERNETES_TEAM_LABEL: label_value(spec.team),
        KUBERNETES_MODEL_LABEL: label_value(spec.model),
        KUBERNETES_KEY_HASH_LABEL: remote.key_hash(spec.idempotency_key),
    }


def cpu_quantity(cpu: float) -> str:
    """Cores as a Kubernetes quantity: ``"2"``, or millicores such as ``"500m"``."""
    millis = max(1, round(cpu * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(memory_gb: float) -> str:
    """GiB as a Kubernetes quantity: ``"4Gi"``, or ``"1536Mi"`` for a fraction."""
    mib = max(1, round(memory_gb * 1024))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def container_resources(
    resources: Resources, ephemeral_storage: str | None = None
) -> dict[str, dict[str, str]]:
    """Requests and limits (equal, so the pod gets what the model asked for, and no more)."""
    amounts = {"cpu": cpu_quantity(resources.cpu), "memory": memory_quantity(resources.memory_gb)}
    if ephemeral_storage:
        amounts["ephemeral-storage"] = ephemeral_storage
    if resources.gpu_count:
        amounts[GPU_RESOURCE] = str(resources.gpu_count)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def gpu_node_selector(
    resources: Resources, table: Mapping[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """The node labels of the GPU type ``resources`` asks for (``{}`` for none or any type).

    Raises ``ValueError`` for a type missing from ``table`` (default ``GPU_NODE_SELECTORS``)
    and for a GPU type without a GPU count.
    """
    table = {
        normalize_gpu_type(gpu): labels for gpu, labels in (table or GPU_NODE_SELECTORS).items()
    }
    if resources.gpu_type is None:
        return {}
    gpu_type = normalize_gpu_type(resources.gpu_type)
    if gpu_type not in table:
        raise ValueError(
            f"unknown GPU type {resources.gpu_type!r} for the kubernetes backend; known types: "
            f"{', '.join(sorted(table)) or 'none configured'} (map it to node labels in "
            "backends.kubernetes.gpu_node_selectors)"
        )
    if not resources.gpu_count:
        raise ValueError(
            f"gpu_type {resources.gpu_type!r} is set but gpu_count is 0; ask for at least one GPU"
        )
    return dict(table[gpu_type])


def pod_placement(
    resources: Resources, table: Mapping[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """``nodeSelector`` and ``tolerations`` of the pod (keys left out when empty)."""
    selector = {**gpu_node_selector(resources, table), **resources.node_selector}
    tolerations = [toleration.manifest() for toleration in resources.tolerations]
    if resources.gpu_count and GPU_TOLERATION not in tolerations:
        tolerations.append(dict(GPU_TOLERATION))
    placement: dict[str, Any] = {}
    if selector:
        placement["nodeSelector"] = selector
    if tolerations:
        placement["tolerations"] = tolerations
    return placement


def build_job_body(spec: JobSpec, settings: KubernetesSettings) -> dict[str, Any]:
    """The ``batch/v1`` Job manifest that runs ``spec`` (plain JSON, no client objects).

    Raises ``ValueError`` for an unknown GPU type, a bad label key, or a
    ``shared_volume_claim`` with a storage_root that is not a path.
    """
    labels = job_labels(spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.image_uri,
        "imagePullPolicy": settings.image_pull_policy,
        "command": remote.container_command(spec, settings.sync_seconds),
        "resources": container_resources(spec.resources, settings.ephemeral_storage),
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
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.shared_volume_claim:
        if not transport.is_local(settings.storage_root):
            raise ValueError(
                f"shared_volume_claim needs storage_root to be a path on that volume, "
                f"not {settings.storage_root!r}"
            )
        mount_path = str(transport.local_path(settings.storage_root))
        container["volumeMounts"] = [{"name": STORAGE_VOLUME, "mountPath": mount_path}]
        claim = {"claimName": settings.shared_volume_claim}
        pod_spec["volumes"] = [{"name": STORAGE_VOLUME, "persistentVolumeClaim": claim}]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if settings.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    annotations = {
        KUBERNETES_KEY_ANNOTATION: spec.idempotency_key,
        KUBERNETES_OUTPUT_ANNOTATION: spec.output_uri,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.job_name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }


def native_job(item: Mapping[str, Any]) -> NativeJob:
    """What one Job, as raw JSON (a list item or a read), says of its state.

    States: ``Complete`` or ``Failed`` (its true condition), ``Suspended`` (Kueue holds it),
    ``Running`` (a ready pod), ``Pending`` (a pod not yet ready), ``Created`` (no pod yet).
    """
    metadata = item.get("metadata") or {}
    status = item.get("status") or {}
    key = str((metadata.get("annotations") or {}).get(KUBERNETES_KEY_ANNOTATION) or "")
    for condition in status.get("conditions") or []:
        kind = condition.get("type")
        if condition.get("status") == "True" and kind in ("Complete", "Failed"):
            if kind == "Complete":
                return NativeJob("Complete", key=key)
            reason = ": ".join(str(condition[f]) for f in ("reason", "message") if condition.get(f))
            return NativeJob(
                "Failed", f"Kubernetes job failed ({reason or 'no reason given'})", key=key
            )
    if (item.get("spec") or {}).get("suspend"):
        queue = (metadata.get("labels") or {}).get(KUEUE_QUEUE_LABEL)
        where = f"by Kueue in LocalQueue {queue}" if queue else "(spec.suspend is true)"
        return NativeJob("Suspended", f"suspended {where}", key=key)
    active, ready = int(status.get("active") or 0), status.get("ready")
    if active and (ready is None or int(ready) > 0):
        return NativeJob("Running", key=key)
    if active:
        return NativeJob("Pending", "waiting for its pod to be scheduled and started", key=key)
    return NativeJob("Created", "waiting for the job controller to create its pod", key=key)


def client_configuration(settings: KubernetesSettings) -> Any:
    """A ``kubernetes.client.Configuration`` for ``settings``.

    urllib3's own retries are off: every call runs under the backend's retry policy, so a
    create whose answer is lost is found (not sent again), and a list whose body breaks off
    is read again.
    """
    from kubernetes import client, config

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
    configuration.retries = False
    return configuration


# -- the backend ----------------------------------------------------------------------------------


class KubernetesBackend(RemoteBackend[KubernetesDetails]):
    """Runs each training job as a Kubernetes ``batch/v1`` Job; see the module docstring."""

    name = "kubernetes"
    service = "Kubernetes"
    details_type = KubernetesDetails
    states: ClassVar[Mapping[str, JobState]] = {
        "Complete": JobState.SUCCEEDED,
        "Failed": JobState.FAILED,
        "Running": JobState.RUNNING,
        "Pending": JobState.QUEUED,
        "Created": JobState.QUEUED,
        "Suspended": JobState.QUEUED,
    }
    lists_every_job = True

    def __init__(self, settings: KubernetesSettings) -> None:
        from kubernetes import client

        super().__init__(settings.retry_policy())
        self.settings = settings
        api_client = client.ApiClient(client_configuration(settings))
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._timeout = settings.request_timeout_seconds

    def namespace(self, details: KubernetesDetails) -> str:
        return details.namespace or self.settings.namespace

    def is_transient(self, error: Exception) -> bool:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(error, ApiException):
            return error.status in remote.TRANSIENT_STATUSES
        return isinstance(error, HTTPError)

    # -- hooks ----------------------------------------------------------------------------------

    def prepare(self, spec: JobSpec) -> dict[str, Any]:
        return build_job_body(spec, self.settings)

    def find(self, spec: JobSpec) -> KubernetesDetails | None:
        details = KubernetesDetails(namespace=self.settings.namespace)
        # A cancelled job, or one that ran and was deleted since, has freed its name; creating
        # it again would run it twice.
        if any(transport.exists(transport.join(spec.output_uri, m)) for m in _RAN_MARKERS):
            return details
        job = self._read(spec.job_name, self.settings.namespace)
        if job is None:
            return None
        self.check_owner(spec.job_name, job, spec.idempotency_key)
        return details

    def create(self, spec: JobSpec, request: dict[str, Any]) -> KubernetesDetails:
        from kubernetes.client.exceptions import ApiException

        try:
            self._batch.create_namespaced_job(
                self.settings.namespace, request, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status == 409:
                raise JobExists(f"job {spec.job_name} exists") from error
            raise
        return KubernetesDetails(namespace=self.settings.namespace)

    def list_jobs(self, jobs: remote.Listed[KubernetesDetails]) -> dict[str, NativeJob]:
        """One paginated list call per (namespace, team), read as raw JSON."""
        groups: dict[tuple[str, str], set[str]] = {}
        for handle, details in jobs:
            groups.setdefault((self.namespace(details), handle.team), set()).add(handle.job_id)
        found: dict[str, NativeJob] = {}
        for (namespace, team), wanted in groups.items():
            token: str | None = None
            while True:
                response = self._batch.list_namespaced_job(
                    namespace,
                    label_selector=team_selector(team),
                    limit=self.settings.page_size,
                    _continue=token,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
                try:
                    page: dict[str, Any] = json.loads(response.data)
                finally:
                    response.release_conn()
                for item in page.get("items") or []:
                    name = (item.get("metadata") or {}).get("name")
                    if name in wanted:
                        found[name] = native_job(item)
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return found

    def get_job(self, handle: JobHandle, details: KubernetesDetails) -> NativeJob | None:
        return self._read(handle.job_id, self.namespace(details))

    def stop(self, handle: JobHandle, details: KubernetesDetails) -> None:
        """Write ``cancelled.json`` (so a poll from any process that no longer finds the job
        reports it cancelled), then delete the Job and its pods."""
        from kubernetes.client.exceptions import ApiException

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
                self.namespace(details),
                propagation_policy="Background",
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def gone(self, handle: JobHandle, details: KubernetesDetails) -> JobStatus:
        uri = handle.output_uri
        if transport.exists(transport.join(uri, CANCELLED_MARKER)):
            return JobStatus(job_id=handle.job_id, state=JobState.CANCELLED, message="cancelled")
        if transport.exists(transport.join(uri, FAILURE_FILE)):
            message = "the Kubernetes job was deleted after it failed"
            return remote.finished_status(handle.job_id, JobState.FAILED, uri, message)
        if any(transport.exists(transport.join(uri, marker)) for marker in _OUTPUT_MARKERS):
            message = "the Kubernetes job was removed after it ended; its messages tell its outcome"
            return remote.finished_status(handle.job_id, JobState.SUCCEEDED, uri, message)
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.FAILED,
            message=(
                f"Kubernetes job {handle.job_id} is gone from namespace "
                f"{self.namespace(details)} and left no output in {uri}: it was deleted outside "
                f"ml_assets, or its pod was killed before the output was uploaded"
            ),
        )

    def job_logs(self, handle: JobHandle, details: KubernetesDetails, tail: int) -> str:
        """The last lines of the job's pod log, or of the staged ``job.log``."""
        from kubernetes.client.exceptions import ApiException

        namespace = self.namespace(details)
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

    def _read(self, name: str, namespace: str) -> NativeJob | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._batch.read_namespaced_job(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        try:
            return native_job(json.loads(response.data))
        finally:
            response.release_conn()
