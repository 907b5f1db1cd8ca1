"""Vertex AI: each training job is one CustomJob, driven through ``google-cloud-aiplatform``.

The job runs in ``spec.image``, else the ``image_uri`` setting (Vertex has no working-directory
field: ``spec.working_dir`` is ignored and the image's WORKDIR applies), with ``spec.env``. A staged
job runs ``remote.staged_command`` (the image needs ml_assets), which uploads ``job.log``, the Pipes
``messages.jsonl`` and, on a non-zero exit, ``failure.json``; an unstaged one (``staged=False``)
runs ``spec.command`` as it is with ``ML_ASSETS_OUTPUT_URI`` = ``output_uri`` and writes there
itself. The output is the spec's ``output_uri`` (a ``gs://`` URI, used as given: the asset layer
builds it with ``remote.output_location(storage_root, spec)``), which also becomes the CustomJob's
``base_output_directory``. The client is the v1 GAPIC ``JobServiceClient`` over its REST transport,
so ``api_endpoint`` and ``url_scheme`` can point it at any host.

Credentials: Application Default Credentials, unless ``anonymous_credentials`` is set (for an
emulator or a loopback fake; never for Google's own endpoint). GCS is reached the same way as
``ml_assets.transport`` does: ADC, or anonymously when ``STORAGE_EMULATOR_HOST`` is set.

Machine shapes (``MACHINE_SHAPES``, ``GPU_TYPES``): a job gets the first machine type, in the
order below, with at least the requested vCPUs and memory.

====================  ===================  ==================================================
``gpu_type``          accelerator          machine types by GPU count
====================  ===================  ==================================================
(no GPU)              -                    n1-standard/n1-highmem 4 ... 96 vCPU
nvidia-tesla-t4       NVIDIA_TESLA_T4      1, 2: n1 up to 32 vCPU; 4: n1 up to 96 vCPU
nvidia-tesla-p4       NVIDIA_TESLA_P4      1: n1 up to 16 vCPU; 2: up to 32; 4: up to 96
nvidia-tesla-v100     NVIDIA_TESLA_V100    1: n1 up to 8 vCPU; 2: 16; 4: 32; 8: 96
nvidia-tesla-p100     NVIDIA_TESLA_P100    1: n1 up to 16 vCPU; 2: 32; 4: 64
nvidia-l4             NVIDIA_L4            1: g2-standard-4/8/12/16/32; 2: g2-standard-24;
                                           4: g2-standard-48; 8: g2-standard-96
nvidia-tesla-a100     NVIDIA_TESLA_A100    1, 2, 4, 8: a2-highgpu-<n>g; 16: a2-megagpu-16g
nvidia-a100-80gb      NVIDIA_A100_80GB     1, 2, 4, 8: a2-ultragpu-<n>g
nvidia-h100-80gb      NVIDIA_H100_80GB     1, 2, 4, 8: a3-highgpu-<n>g
====================  ===================  ==================================================

A job with ``gpu_count`` but no ``gpu_type`` gets ``default_gpu_type``. The ``machine_types``
setting overrides the table: key ``"cpu"`` for CPU-only jobs, ``"<gpu_type>:<count>"`` for GPU
jobs; ``accelerator_types`` adds GPU types (name -> Vertex ``AcceleratorType``), which then need
a ``machine_types`` entry per count. Anything else raises ``ValueError`` naming the known types.

Idempotency: CreateCustomJob takes no client-chosen id, so ``submit`` claims the job's output
location first. Two small objects beside the job's output make it race-free across threads,
processes and machines:

- ``_vertex_claim.json`` is written create-only (``if_generation_match=0``); one submitter wins,
  creates the CustomJob and then writes
- ``_vertex_job.json`` (create-only too): the key, the job's resource name and create time.
  Every submit returns the job recorded there; losers of the claim wait for it.

A winner whose create fails deletes its claim (if still at its generation) and raises, so the
next submit of the key tries again at once. A claim older than ``claim_timeout_s`` with no
record means its winner died before it created or recorded the job: then one waiting submitter
takes the claim over (a write conditioned on the stale claim's generation, so only one
succeeds), adopts the job if one with the key's label exists (found by a list call filtered on
that label) and creates it otherwise. A winner's create gives up after
``min(retry_timeout_s, claim_timeout_s / 2)``, so only a winner frozen for longer than that
between claiming and creating could race a takeover. A create that fails in transit (5xx, 429,
a dropped connection) may still have created the job, so before each retry the backend looks for
the key's label and adopts what it finds.

Poll: one ListCustomJobs per team (paginated by ``page_size``), filtered on the team label and
on ``create_time`` no older than the oldest handle; GetCustomJob only for a job missing from the
list. A succeeded job's ``result_uri`` is its ``output_uri`` (its Pipes messages say what it
produced); a failed one's message is Vertex's error plus the staged ``failure.json``. Cancel:
CancelCustomJob, skipped for a finished job. Logs: the staged ``job.log`` in GCS
(``remote.read_log``). List, get and cancel retry 429, 5xx and dropped connections with
google-api-core's ``Retry``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from pydantic import Field

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.resource import BackendResource
from ml_assets.tags import (
    RESOURCE_KEY_LABEL,
    RESOURCE_MODEL_TAG,
    RESOURCE_TEAM_TAG,
)

# Labels every CustomJob carries; the team label is what poll filters on, the key label what
# finds the job of one idempotency key.
MAX_LABELS = 64

CLAIM_FILE = "_vertex_claim.json"
RECORD_FILE = "_vertex_job.json"
# How often a submitter that lost the claim looks for the winner's record.
CLAIM_POLL_S = 0.2


@dataclass(frozen=True)
class MachineShape:
    """vCPUs and memory (GB) of one Compute Engine machine type."""

    cpu: int
    memory_gb: float


MACHINE_SHAPES: dict[str, MachineShape] = {
    **{f"n1-standard-{n}": MachineShape(n, n * 3.75) for n in (4, 8, 16, 32, 64, 96)},
    **{f"n1-highmem-{n}": MachineShape(n, n * 6.5) for n in (4, 8, 16, 32, 64, 96)},
    **{f"g2-standard-{n}": MachineShape(n, n * 4.0) for n in (4, 8, 12, 16, 24, 32, 48, 96)},
    **{f"a2-highgpu-{n}g": MachineShape(12 * n, 85.0 * n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": MachineShape(96, 1360.0),
    **{f"a2-ultragpu-{n}g": MachineShape(12 * n, 170.0 * n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": MachineShape(26 * n, 234.0 * n) for n in (1, 2, 4, 8)},
}

# N1 machine types, cheapest first: the CPU-only choices, and the hosts of the older GPUs.
_N1 = tuple(
    f"n1-{family}-{n}" for n in (4, 8, 16, 32, 64, 96) for family in ("standard", "highmem")
)


def _n1_up_to(vcpus: int) -> tuple[str, ...]:
    return tuple(name for name in _N1 if MACHINE_SHAPES[name].cpu <= vcpus)


@dataclass(frozen=True)
class GpuOffer:
    """One GPU type on Vertex AI: its ``AcceleratorType`` and the hosts per GPU count."""

    accelerator: str
    machines: Mapping[int, tuple[str, ...]]


GPU_TYPES: dict[str, GpuOffer] = {
    "nvidia-tesla-t4": GpuOffer(
        "NVIDIA_TESLA_T4", {1: _n1_up_to(48), 2: _n1_up_to(48), 4: _n1_up_to(96)}
    ),
    "nvidia-tesla-p4": GpuOffer(
        "NVIDIA_TESLA_P4", {1: _n1_up_to(24), 2: _n1_up_to(48), 4: _n1_up_to(96)}
    ),
    "nvidia-tesla-v100": GpuOffer(
        "NVIDIA_TESLA_V100",
        {1: _n1_up_to(12), 2: _n1_up_to(24), 4: _n1_up_to(48), 8: _n1_up_to(96)},
    ),
    "nvidia-tesla-p100": GpuOffer(
        "NVIDIA_TESLA_P100", {1: _n1_up_to(16), 2: _n1_up_to(32), 4: _n1_up_to(64)}
    ),
    "nvidia-l4": GpuOffer(
        "NVIDIA_L4",
        {
            1: tuple(f"g2-standard-{n}" for n in (4, 8, 12, 16, 32)),
            2: ("g2-standard-24",),
            4: ("g2-standard-48",),
            8: ("g2-standard-96",),
        },
    ),
    "nvidia-tesla-a100": GpuOffer(
        "NVIDIA_TESLA_A100",
        {**{n: (f"a2-highgpu-{n}g",) for n in (1, 2, 4, 8)}, 16: ("a2-megagpu-16g",)},
    ),
    "nvidia-a100-80gb": GpuOffer(
        "NVIDIA_A100_80GB", {n: (f"a2-ultragpu-{n}g",) for n in (1, 2, 4, 8)}
    ),
    "nvidia-h100-80gb": GpuOffer(
        "NVIDIA_H100_80GB", {n: (f"a3-highgpu-{n}g",) for n in (1, 2, 4, 8)}
    ),
}

# Vertex AI JobState names -> ours. CANCELLING is still in flight: the job holds its machines.
_STATES: dict[str, JobState] = {
    "JOB_STATE_UNSPECIFIED": JobState.QUEUED,
    "JOB_STATE_QUEUED": JobState.QUEUED,
    "JOB_STATE_PENDING": JobState.QUEUED,
    "JOB_STATE_PAUSED": JobState.QUEUED,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
}


class VertexBackendResource(BackendResource):
    """Settings of the Vertex AI backend (a team YAML's ``backends: {vertex: {...}}``)."""

    project: str = Field(description="Google Cloud project that owns the CustomJobs.")
    location: str = Field("us-central1", description="Vertex AI region, e.g. us-central1.")
    image_uri: str = Field(
        description="Default container image (with ml_assets) for jobs that name none."
    )
    storage_root: str = Field(
        description="gs://bucket/prefix; each job writes under <root>/jobs/<team>/<model>/<job>."
    )
    api_endpoint: str | None = Field(
        None, description="host[:port] of the API; default <location>-aiplatform.googleapis.com."
    )
    url_scheme: str = Field("https", description="'https', or 'http' for a local fake.")
    anonymous_credentials: bool = Field(
        False, description="Send no credentials (emulators and fakes); else ADC is used."
    )
    service_account: str | None = Field(None, description="Service account the job runs as.")
    machine_types: dict[str, str] = Field(
        default_factory=dict,
        description="Machine type overrides: 'cpu' or '<gpu_type>:<count>' -> machine type.",
    )
    accelerator_types: dict[str, str] = Field(
        default_factory=dict,
        description="Extra GPU types: gpu_type -> Vertex AcceleratorType (e.g. NVIDIA_B200).",
    )
    default_gpu_type: str = Field(
        "nvidia-tesla-t4", description="GPU type of a job that asks for GPUs but names none."
    )
    sync_seconds: float = Field(
        10.0, gt=0, description="How often a running staged job uploads its log and messages."
    )
    page_size: int = Field(100, gt=0, description="Jobs per ListCustomJobs page in poll.")
    claim_timeout_s: float = Field(
        300.0, gt=0, description="Age after which an unrecorded submit claim counts as dead."
    )
    retry_timeout_s: float = Field(
        30.0, gt=0, description="How long a call is retried on 429, 5xx or a lost connection."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one HTTP request.")

    def get_backend(self) -> VertexBackend:
        return VertexBackend(self)


# --- the pure request builder -----------------------------------------------------------------


def label_value(text: str) -> str:
    """``text`` as a Vertex label value: lower case, ``[a-z0-9_-]`` only, at most 63 chars."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def label_key(text: str) -> str:
    """``text`` as a Vertex label key: a label value that starts with a lower-case letter."""
    key = label_value(text)
    return key if key[:1].isalpha() and key[:1].isascii() else f"x-{key}"[:63]


def key_label(idempotency_key: str) -> str:
    """The value of ``RESOURCE_KEY_LABEL``: a hash of the idempotency key, which is not
    label-safe."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The spec's own labels made label-safe, plus the team, model and key labels."""
    labels = {label_key(key): label_value(value) for key, value in spec.labels.items()}
    labels.update(
        {
            RESOURCE_TEAM_TAG: label_value(spec.team),
            RESOURCE_MODEL_TAG: label_value(spec.model),
            RESOURCE_KEY_LABEL: key_label(spec.idempotency_key),
        }
    )
    if len(labels) > MAX_LABELS:
        raise ValueError(f"a Vertex AI job takes at most {MAX_LABELS} labels, got {len(labels)}")
    return labels


def _fit(candidates: tuple[str, ...], resources: Resources, what: str) -> str:
    for name in candidates:
        shape = MACHINE_SHAPES[name]
        if shape.cpu >= resources.cpu and shape.memory_gb >= resources.memory_gb:
            return name
    largest = MACHINE_SHAPES[candidates[-1]]
    raise ValueError(
        f"no Vertex AI machine for {what} has {resources.cpu:g} vCPUs and "
        f"{resources.memory_gb:g} GB; the largest is {candidates[-1]} ({largest.cpu} vCPUs, "
        f"{largest.memory_gb:g} GB)"
    )


def _gpu_machine(gpu_type: str, offer: GpuOffer | None, resources: Resources) -> str:
    count = resources.gpu_count
    if offer is None:
        raise ValueError(
            f"no machine type known for {count} x {gpu_type}; set machine_types "
            f"'{gpu_type}:{count}' in the vertex backend settings"
        )
    if count not in offer.machines:
        counts = ", ".join(str(n) for n in sorted(offer.machines))
        raise ValueError(
            f"Vertex AI offers {gpu_type} in counts of {counts} per machine, not {count}"
        )
    return _fit(offer.machines[count], resources, f"{count} x {gpu_type}")


def machine_spec(resources: Resources, settings: VertexBackendResource) -> dict[str, Any]:
    """The CustomJob ``machine_spec`` for ``resources`` (see the module docstring's table)."""
    count = resources.gpu_count
    if count == 0:
        machine = settings.machine_types.get("cpu") or _fit(_N1, resources, "a CPU-only job")
        return {"machine_type": machine}
    gpu_type = resources.gpu_type or settings.default_gpu_type
    offer = GPU_TYPES.get(gpu_type)
    accelerator = settings.accelerator_types.get(gpu_type) or (offer and offer.accelerator)
    if not accelerator:
        known = ", ".join(sorted({*GPU_TYPES, *settings.accelerator_types}))
        raise ValueError(
            f"unknown GPU type {gpu_type!r} for Vertex AI; known types: {known} "
            f"(add one with the accelerator_types and machine_types settings)"
        )
    machine = settings.machine_types.get(f"{gpu_type}:{count}") or _gpu_machine(
        gpu_type, offer, resources
    )
    return {"machine_type": machine, "accelerator_type": accelerator, "accelerator_count": count}


def build_custom_job(spec: JobSpec, settings: VertexBackendResource) -> dict[str, Any]:
    """The CustomJob for ``spec`` as a proto3 JSON mapping (proto field names).

    Pure: no network and no SDK, so it can be checked field by field.
    """
    env = remote.container_env(spec)
    job_spec: dict[str, Any] = {
        "worker_pool_specs": [
            {
                "machine_spec": machine_spec(spec.resources, settings),
                "replica_count": 1,
                "container_spec": {
                    "image_uri": spec.image or settings.image_uri,
                    "command": remote.container_command(spec, settings.sync_seconds),
                    "env": [{"name": name, "value": env[name]} for name in sorted(env)],
                },
            }
        ],
        "base_output_directory": {"output_uri_prefix": spec.output_uri},
    }
    if settings.service_account:
        job_spec["service_account"] = settings.service_account
    return {"display_name": spec.job_name, "labels": job_labels(spec), "job_spec": job_spec}


# --- GCS objects with preconditions -----------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    document: dict[str, Any]
    generation: int
    age_s: float


def _blob_path(uri: str) -> tuple[str, str]:
    if transport.scheme_of(uri) != "gs":
        raise ValueError(f"the vertex backend needs a gs:// output_uri, got {uri!r}")
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


class _GcsCells:
    """Small JSON objects in GCS, written only if absent or unchanged (generation match)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _blob(self, uri: str) -> Any:
        bucket, name = _blob_path(uri)
        return self._client.bucket(bucket).blob(name)

    def read(self, uri: str) -> dict[str, Any] | None:
        from google.api_core.exceptions import NotFound

        try:
            document: dict[str, Any] = json.loads(self._blob(uri).download_as_bytes())
        except NotFound:
            return None
        return document

    def stat(self, uri: str) -> _Stored | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        bucket, name = _blob_path(uri)
        blob = self._client.bucket(bucket).get_blob(name)
        if blob is None:
            return None
        # Read before the download, which resets them from its response headers.
        generation, created = int(blob.generation), blob.time_created
        try:
            data = blob.download_as_bytes(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            return None  # replaced or removed in between: the caller looks again
        return _Stored(json.loads(data), generation, (datetime.now(UTC) - created).total_seconds())

    def write(self, uri: str, document: dict[str, Any], if_generation: int = 0) -> int | None:
        """Write ``document`` if the object's generation is ``if_generation`` (0: absent).

        Returns the new generation, or ``None`` if the precondition did not hold.
        """
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(uri)
        try:
            blob.upload_from_string(
                json.dumps(document, sort_keys=True),
                content_type="application/json",
                if_generation_match=if_generation,
            )
        except PreconditionFailed:
            return None
        return int(blob.generation)

    def delete(self, uri: str, generation: int) -> None:
        """Delete the object if it is still at ``generation``."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        with contextlib.suppress(NotFound, PreconditionFailed):
            self._blob(uri).delete(if_generation_match=generation)


class OutputLocationConflict(RuntimeError):
    """The output location of a submission already belongs to another idempotency key."""


# --- the backend ------------------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _transient_errors() -> tuple[type[Exception], ...]:
    """Errors worth retrying: throttling, server errors and connections lost in transit."""
    import requests
    from google.api_core import exceptions

    return (
        exceptions.TooManyRequests,
        exceptions.InternalServerError,
        exceptions.BadGateway,
        exceptions.ServiceUnavailable,
        exceptions.GatewayTimeout,
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
    )


class VertexBackend:
    """Runs each training job as a Vertex AI CustomJob; see the module docstring.

    ``job_client`` (a ``JobServiceClient``) and ``storage_client`` (a ``storage.Client``) may be
    injected; by default they are built from ``settings`` on first use.
    """

    name: str = "vertex"

    def __init__(
        self,
        settings: VertexBackendResource,
        job_client: Any = None,
        storage_client: Any = None,
    ) -> None:
        if settings.url_scheme not in ("https", "http"):
            raise ValueError(f"url_scheme must be 'https' or 'http', got {settings.url_scheme!r}")
        if transport.scheme_of(settings.storage_root) != "gs":
            raise ValueError(f"storage_root must be a gs:// URI, got {settings.storage_root!r}")
        self.settings = settings
        self.parent = f"projects/{settings.project}/locations/{settings.location}"
        self._injected_jobs = job_client
        self._injected_storage = storage_client

    # -- clients --------------------------------------------------------------------------------

    @cached_property
    def _jobs(self) -> Any:
        if self._injected_jobs is not None:
            return self._injected_jobs
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.aiplatform_v1 import JobServiceClient

        settings = self.settings
        host = settings.api_endpoint or f"{settings.location}-aiplatform.googleapis.com"
        credentials = AnonymousCredentials() if settings.anonymous_credentials else None
        transport_class = JobServiceClient.get_transport_class("rest")
        return JobServiceClient(
            transport=transport_class(
                host=host, credentials=credentials, url_scheme=settings.url_scheme
            )
        )

    @cached_property
    def _cells(self) -> _GcsCells:
        if self._injected_storage is not None:
            return _GcsCells(self._injected_storage)
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=self.settings.project, credentials=AnonymousCredentials()
            )
        else:
            client = storage.Client(project=self.settings.project)
        return _GcsCells(client)

    @cached_property
    def _retry(self) -> Any:
        from google.api_core.retry import Retry, if_exception_type

        return Retry(
            predicate=if_exception_type(*_transient_errors()),
            initial=0.1,
            maximum=5.0,
            multiplier=2.0,
            timeout=self.settings.retry_timeout_s,
        )

    def _call(self, method: str, **request: Any) -> Any:
        """One JobService call with the transient-error retry and the request timeout."""
        return getattr(self._jobs, method)(
            request=request, retry=self._retry, timeout=self.settings.request_timeout_s
        )

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Create the CustomJob of ``spec`` unless its key already has one; return its handle.

        Idempotent across calls, backend objects, processes and machines through the claim and
        record objects beside the job's output (see the module docstring). Raises
        ``OutputLocationConflict`` if the output location belongs to another key.
        """
        body = build_custom_job(spec, self.settings)  # bad resources fail before any write
        handle = self._recorded(spec)
        if handle is not None:
            return handle
        claim = {"idempotency_key": spec.idempotency_key, "token": uuid.uuid4().hex}
        generation = self._claim(spec, claim)
        if generation is not None:
            return self._start(spec, body, generation, adopt=False)
        return self._wait_for_winner(spec, body, claim)

    def _recorded(self, spec: JobSpec) -> JobHandle | None:
        record = self._cells.read(transport.join(spec.output_uri, RECORD_FILE))
        if record is None:
            return None
        self._check_key(spec, record, RECORD_FILE)
        return self._handle(spec, record)

    def _claim(self, spec: JobSpec, claim: dict[str, Any], if_generation: int = 0) -> int | None:
        """The generation of ``claim`` once written over ``if_generation``; ``None`` if lost."""
        uri = transport.join(spec.output_uri, CLAIM_FILE)
        generation = self._cells.write(uri, claim, if_generation)
        if generation is not None:
            return generation
        # A retried upload whose first attempt landed is refused by its own precondition.
        current = self._cells.stat(uri)
        if current is not None and current.document.get("token") == claim["token"]:
            return current.generation
        return None

    def _wait_for_winner(
        self, spec: JobSpec, body: dict[str, Any], claim: dict[str, Any]
    ) -> JobHandle:
        """Wait for the claim's winner to record its job; take a claim over once it is stale."""
        claim_uri = transport.join(spec.output_uri, CLAIM_FILE)
        while True:
            handle = self._recorded(spec)
            if handle is not None:
                return handle
            stored = self._cells.stat(claim_uri)
            if stored is not None:
                self._check_key(spec, stored.document, CLAIM_FILE)
                if stored.age_s <= self.settings.claim_timeout_s:
                    time.sleep(CLAIM_POLL_S)
                    continue
            # No claim (its winner gave up) or a stale one (its winner died): take it.
            generation = self._claim(spec, claim, stored.generation if stored else 0)
            if generation is not None:
                return self._start(spec, body, generation, adopt=True)

    def _start(
        self, spec: JobSpec, body: dict[str, Any], claim_generation: int, adopt: bool
    ) -> JobHandle:
        """Create (or, after a takeover, adopt) the job and record it beside its output."""
        job = self._find(spec) if adopt else None
        if job is None:
            try:
                job = self._create(spec, body)
            except BaseException:
                # No job came of this claim: free it so the next submit of the key tries at once.
                self._cells.delete(transport.join(spec.output_uri, CLAIM_FILE), claim_generation)
                raise
        record = {
            "idempotency_key": spec.idempotency_key,
            "resource_name": job.name,
            "create_time": _rfc3339(job.create_time),
        }
        if self._cells.write(transport.join(spec.output_uri, RECORD_FILE), record):
            return self._handle(spec, record)
        handle = self._recorded(spec)
        if handle is None:
            raise RuntimeError(f"the record of job {job.name} vanished while it was written")
        return handle

    def _create(self, spec: JobSpec, body: dict[str, Any]) -> Any:
        """CreateCustomJob, retried; before each retry, adopt a job the failed try created."""
        from google.cloud.aiplatform_v1 import CustomJob

        custom_job = CustomJob.from_json(json.dumps(body))
        settings = self.settings
        deadline = time.monotonic() + min(settings.retry_timeout_s, settings.claim_timeout_s / 2)
        delay = 0.1
        while True:
            try:
                return self._jobs.create_custom_job(
                    parent=self.parent,
                    custom_job=custom_job,
                    retry=None,
                    timeout=settings.request_timeout_s,
                )
            except _transient_errors():
                found = self._find(spec)
                if found is not None:
                    return found
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _find(self, spec: JobSpec) -> Any:
        """The earliest CustomJob labelled with the spec's key, or ``None``."""
        query = (
            f'labels.{RESOURCE_TEAM_TAG}="{label_value(spec.team)}" AND '
            f'labels.{RESOURCE_KEY_LABEL}="{key_label(spec.idempotency_key)}"'
        )
        jobs = list(self._call("list_custom_jobs", parent=self.parent, filter=query))
        return min(jobs, key=lambda job: (job.create_time, job.name), default=None)

    def _check_key(self, spec: JobSpec, document: dict[str, Any], what: str) -> None:
        if document.get("idempotency_key") != spec.idempotency_key:
            raise OutputLocationConflict(
                f"cannot submit job {spec.job_name} (key {spec.idempotency_key!r}): "
                f"{transport.join(spec.output_uri, what)} belongs to key "
                f"{document.get('idempotency_key')!r}; use a fresh output_uri"
            )

    def _handle(self, spec: JobSpec, record: dict[str, Any]) -> JobHandle:
        return JobHandle.for_spec(
            self.name,
            spec,
            {
                "resource_name": record["resource_name"],
                "create_time": record["create_time"],
            },
        )

    # -- poll -----------------------------------------------------------------------------------

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Statuses keyed by job id: one paginated ListCustomJobs per team, no call per job.

        The list is filtered on the team label and on ``create_time`` no earlier than the
        oldest handle's, so a team's finished history does not grow the poll. A job missing
        from the list (deleted, or a handle from another team label) is fetched on its own.
        """
        oldest: dict[str, datetime] = {}
        for handle in handles:
            team = label_value(handle.team)
            created = datetime.fromisoformat(self._detail(handle, "create_time"))
            oldest[team] = min(created, oldest.get(team, created))
        listed: dict[str, Any] = {}
        for team, since in oldest.items():
            query = f'labels.{RESOURCE_TEAM_TAG}="{team}" AND create_time>="{_rfc3339(since)}"'
            for job in self._call(
                "list_custom_jobs",
                parent=self.parent,
                filter=query,
                page_size=self.settings.page_size,
            ):
                listed[job.name] = job
        statuses = {}
        for handle in handles:
            name = self._detail(handle, "resource_name")
            job = listed[name] if name in listed else self._get(name)
            statuses[handle.job_id] = self._status(handle, job)
        return statuses

    def _status(self, handle: JobHandle, job: Any) -> JobStatus:
        if job is None:
            return JobStatus(
                job_id=handle.job_id,
                state=JobState.FAILED,
                message=f"Vertex AI has no job {self._detail(handle, 'resource_name')} (deleted?)",
            )
        vertex_state = job.state.name
        state = _STATES.get(vertex_state, JobState.QUEUED)
        if state == JobState.FAILED:
            message = job.error.message or f"Vertex AI reports {vertex_state}"
            return remote.finished_status(handle.job_id, state, handle.output_uri, message)
        if state == JobState.SUCCEEDED:
            return remote.finished_status(handle.job_id, state, handle.output_uri)
        message = "cancelled" if state == JobState.CANCELLED else vertex_state
        return JobStatus(job_id=handle.job_id, state=state, message=message)

    def _get(self, name: str) -> Any:
        from google.api_core.exceptions import NotFound

        try:
            return self._call("get_custom_job", name=name)
        except NotFound:
            return None

    def _detail(self, handle: JobHandle, key: str) -> str:
        if handle.backend != self.name:
            raise ValueError(
                f"job {handle.job_id} belongs to backend {handle.backend!r}, not {self.name!r}"
            )
        value = handle.details.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"the handle of job {handle.job_id} has no {key!r} in its details")
        return value

    # -- cancel and logs ------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        """CancelCustomJob unless the job has ended or is gone; idempotent."""
        from google.api_core.exceptions import BadRequest, FailedPrecondition, NotFound

        name = self._detail(handle, "resource_name")

        def ended() -> bool:
            job = self._get(name)
            return job is None or _STATES.get(job.state.name, JobState.QUEUED).is_terminal

        if ended():
            return
        try:
            self._call("cancel_custom_job", name=name)
        except (BadRequest, FailedPrecondition, NotFound):
            # Vertex refuses to cancel a job that ended in the meantime; that is success.
            if not ended():
                raise

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's staged ``job.log`` (Cloud Logging is not read)."""
        self._detail(handle, "resource_name")
        return remote.read_log(handle.output_uri, tail)
