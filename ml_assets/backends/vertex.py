"""Vertex AI: each training job is one CustomJob, driven through ``google-cloud-aiplatform``.

The job runs in ``spec.image``, else the ``image_uri`` setting (Vertex has no working-directory
field: ``spec.working_dir`` is ignored), with ``spec.env`` and the staged command of ``remote``
(or, unstaged, ``spec.command`` as it is). Its output is the spec's ``output_uri`` (``gs://``),
also the CustomJob's ``base_output_directory``. The client is the v1 GAPIC ``JobServiceClient``
over REST, so ``api_endpoint`` and ``url_scheme`` can point it at any host. Credentials:
Application Default Credentials, unless ``anonymous_credentials`` is set (emulators and fakes).

Machine shapes: ``shapes.smallest_fit`` over ``MACHINE_SHAPES`` (every machine type with every
accelerator count Vertex allows on it), then ``accelerator_type`` from ``ACCELERATORS`` (or the
``accelerator_types`` setting) and ``accelerator_count`` from the chosen shape:

==============  ===================  ======================================================
``gpu_type``    accelerator          machine types by GPU count
==============  ===================  ======================================================
(no GPU)        -                    n1-standard/n1-highmem 4 ... 96 vCPU
t4              NVIDIA_TESLA_T4      1, 2: n1 up to 48 vCPU; 4: n1 up to 96 vCPU
p4              NVIDIA_TESLA_P4      1: n1 up to 24 vCPU; 2: up to 48; 4: up to 96
v100            NVIDIA_TESLA_V100    1: n1 up to 12 vCPU; 2: 24; 4: 48; 8: 96
p100            NVIDIA_TESLA_P100    1: n1 up to 16 vCPU; 2: 32; 4: 64
l4              NVIDIA_L4            1: g2-standard-4/8/12/16/32; 2: g2-standard-24;
                                     4: g2-standard-48; 8: g2-standard-96
a100            NVIDIA_TESLA_A100    1, 2, 4, 8: a2-highgpu-<n>g; 16: a2-megagpu-16g
a100-80gb       NVIDIA_A100_80GB     1, 2, 4, 8: a2-ultragpu-<n>g
h100-80gb       NVIDIA_H100_80GB     1, 2, 4, 8: a3-highgpu-<n>g
==============  ===================  ======================================================

Idempotency: CreateCustomJob takes no client-chosen id. ``find`` reads ``_vertex_job.json``
beside the job's output (the key, the job's resource name and create time), else lists the jobs
labelled with the key's hash. ``create`` first claims the output: ``_vertex_claim.json`` is
written create-only (``if_generation_match=0``), so one submitter wins, creates the CustomJob and
records it; losers wait for the record. A winner whose create fails deletes its claim (if still
at its generation) and raises, so the next try starts at once. A claim older than
``claim_timeout_seconds`` with no record means its winner died: one waiting submitter takes it
over (a write conditioned on the stale claim's generation), adopts a labelled job if one exists
and creates it otherwise. Keep ``retry_timeout_seconds`` under half of
``claim_timeout_seconds``, so a live winner never looks dead.

Poll: one ListCustomJobs per team (paginated by ``page_size``), filtered on the team label and
on ``create_time`` no older than the oldest handle; GetCustomJob only for a job missing from the
list. Cancel: CancelCustomJob. Logs: the staged ``job.log`` in GCS (Cloud Logging is not read).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import HandleDetails, JobHandle, JobSpec, JobState, Resources
from ml_assets.backends.remote import KeyConflict, NativeJob, RemoteBackend
from ml_assets.backends.settings import MachineSettings
from ml_assets.backends.shapes import (
    MachineShape,
    normalize_gpu_type,
    requested_gpu_type,
)
from ml_assets.tags import RESOURCE_KEY_LABEL, RESOURCE_MODEL_TAG, RESOURCE_TEAM_TAG

MAX_LABELS = 64
CLAIM_FILE = "_vertex_claim.json"
RECORD_FILE = "_vertex_job.json"
# How often a submitter that lost the claim looks for the winner's record.
CLAIM_POLL_SECONDS = 0.2

_N1 = {f"n1-standard-{n}": (n, n * 3.75) for n in (4, 8, 16, 32, 64, 96)} | {
    f"n1-highmem-{n}": (n, n * 6.5) for n in (4, 8, 16, 32, 64, 96)
}
_G2 = {n: (n, n * 4.0) for n in (4, 8, 12, 16, 24, 32, 48, 96)}


def _n1(gpu_type: str | None, counts: dict[int, int]) -> list[MachineShape]:
    """N1 machines with ``count`` GPUs up to ``counts[count]`` vCPUs (or none, for CPU jobs)."""
    if gpu_type is None:
        return [MachineShape(name, cpu, memory) for name, (cpu, memory) in _N1.items()]
    return [
        MachineShape(name, cpu, memory, count, gpu_type)
        for count, most in counts.items()
        for name, (cpu, memory) in _N1.items()
        if cpu <= most
    ]


def _sized(gpu_type: str, rows: dict[int, tuple[str, float, float]]) -> list[MachineShape]:
    return [MachineShape(name, c, m, count, gpu_type) for count, (name, c, m) in rows.items()]


MACHINE_SHAPES: tuple[MachineShape, ...] = (
    *_n1(None, {}),
    *_n1("t4", {1: 48, 2: 48, 4: 96}),
    *_n1("p4", {1: 24, 2: 48, 4: 96}),
    *_n1("v100", {1: 12, 2: 24, 4: 48, 8: 96}),
    *_n1("p100", {1: 16, 2: 32, 4: 64}),
    *[
        MachineShape(f"g2-standard-{n}", c, m, 1, "l4")
        for n, (c, m) in _G2.items()
        if n in (4, 8, 12, 16, 32)
    ],
    *_sized("l4", {g: (f"g2-standard-{n}", *_G2[n]) for g, n in ((2, 24), (4, 48), (8, 96))}),
    *_sized("a100", {n: (f"a2-highgpu-{n}g", 12 * n, 85.0 * n) for n in (1, 2, 4, 8)}),
    MachineShape("a2-megagpu-16g", 96, 1360.0, 16, "a100"),
    *_sized("a100-80gb", {n: (f"a2-ultragpu-{n}g", 12 * n, 170.0 * n) for n in (1, 2, 4, 8)}),
    *_sized("h100-80gb", {n: (f"a3-highgpu-{n}g", 26 * n, 234.0 * n) for n in (1, 2, 4, 8)}),
)

ACCELERATORS: dict[str, str] = {
    "t4": "NVIDIA_TESLA_T4",
    "p4": "NVIDIA_TESLA_P4",
    "v100": "NVIDIA_TESLA_V100",
    "p100": "NVIDIA_TESLA_P100",
    "l4": "NVIDIA_L4",
    "a100": "NVIDIA_TESLA_A100",
    "a100-80gb": "NVIDIA_A100_80GB",
    "h100-80gb": "NVIDIA_H100_80GB",
}
"""GPU short name -> Vertex AI ``AcceleratorType``."""


class VertexSettings(MachineSettings):
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
    url_scheme: Literal["https", "http"] = Field(
        "https", description="'https', or 'http' for a local fake."
    )
    anonymous_credentials: bool = Field(
        False, description="Send no credentials (emulators and fakes); else ADC is used."
    )
    service_account: str | None = Field(None, description="Service account the job runs as.")
    accelerator_types: dict[str, str] = Field(
        default_factory=dict,
        description="Extra GPU types: gpu_type -> Vertex AcceleratorType (e.g. NVIDIA_B200).",
    )
    page_size: int = Field(100, gt=0, description="Jobs per ListCustomJobs page in poll.")
    claim_timeout_seconds: float = Field(
        300.0, gt=0, description="Age after which an unrecorded submit claim counts as dead."
    )

    @field_validator("storage_root")
    @classmethod
    def _gs_root(cls, value: str) -> str:
        if transport.scheme_of(value) != "gs":
            raise ValueError(f"storage_root must be a gs:// URI, got {value!r}")
        return value

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


key_label = remote.key_hash
"""The value of ``RESOURCE_KEY_LABEL``: a hash of the idempotency key (not label-safe)."""


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


def machine_spec(resources: Resources, settings: VertexSettings) -> dict[str, Any]:
    """The CustomJob ``machine_spec`` for ``resources`` (see the module docstring's table)."""
    gpu_type = requested_gpu_type(resources, settings.default_gpu_type)
    accelerators = ACCELERATORS | {
        normalize_gpu_type(name): kind for name, kind in settings.accelerator_types.items()
    }
    if gpu_type is not None and gpu_type not in accelerators:
        raise ValueError(
            f"unknown GPU type {resources.gpu_type!r} for Vertex AI; known types: "
            f"{', '.join(sorted(accelerators))} (add one with the accelerator_types and "
            "machine_types settings)"
        )
    shape = settings.machine(MACHINE_SHAPES, resources, "Vertex AI")
    if gpu_type is None:
        return {"machine_type": shape.name}
    return {
        "machine_type": shape.name,
        "accelerator_type": accelerators[gpu_type],
        "accelerator_count": shape.gpu_count,
    }


def build_custom_job(spec: JobSpec, settings: VertexSettings) -> dict[str, Any]:
    """The CustomJob for ``spec`` as a proto3 JSON mapping (proto field names); no network."""
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


class OutputLocationConflict(KeyConflict):
    """The output location of a submission already belongs to another idempotency key."""


# --- the backend ------------------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VertexDetails(HandleDetails):
    """A CustomJob's handle details: its resource name and create time (RFC 3339)."""

    resource_name: str
    create_time: str


class VertexBackend(RemoteBackend[VertexDetails]):
    """Runs each training job as a Vertex AI CustomJob; see the module docstring.

    ``job_client`` (a ``JobServiceClient``) and ``storage_client`` (a ``storage.Client``) may be
    injected; by default they are built from ``settings`` on first use.
    """

    name = "vertex"
    service = "Vertex AI"
    details_type = VertexDetails
    # CANCELLING is still in flight: the job holds its machines.
    states: ClassVar[Mapping[str, JobState]] = {
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

    def __init__(
        self, settings: VertexSettings, job_client: Any = None, storage_client: Any = None
    ) -> None:
        super().__init__(settings.retry_policy())
        self.settings = settings
        self.parent = f"projects/{settings.project}/locations/{settings.location}"
        self._injected_jobs = job_client
        self._injected_storage = storage_client

    @cached_property
    def _jobs(self) -> Any:
        if self._injected_jobs is not None:
            return self._injected_jobs
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.aiplatform_v1 import JobServiceClient

        settings = self.settings
        host = settings.api_endpoint or f"{settings.location}-aiplatform.googleapis.com"
        credentials = AnonymousCredentials() if settings.anonymous_credentials else None
        rest = JobServiceClient.get_transport_class("rest")
        return JobServiceClient(
            transport=rest(host=host, credentials=credentials, url_scheme=settings.url_scheme)
        )

    @cached_property
    def _cells(self) -> _GcsCells:
        if self._injected_storage is not None:
            return _GcsCells(self._injected_storage)
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            return _GcsCells(
                storage.Client(project=self.settings.project, credentials=AnonymousCredentials())
            )
        return _GcsCells(storage.Client(project=self.settings.project))

    def _call(self, method: str, **request: Any) -> Any:
        """One JobService call, without the client's own retries (the policy's apply)."""
        return getattr(self._jobs, method)(
            request=request, retry=None, timeout=self.settings.request_timeout_seconds
        )

    def is_transient(self, error: Exception) -> bool:
        import requests
        from google.api_core import exceptions

        return isinstance(
            error,
            exceptions.TooManyRequests
            | exceptions.InternalServerError
            | exceptions.BadGateway
            | exceptions.ServiceUnavailable
            | exceptions.GatewayTimeout
            | requests.exceptions.ConnectionError
            | requests.exceptions.ChunkedEncodingError,
        )

    # -- submit ---------------------------------------------------------------------------------

    def prepare(self, spec: JobSpec) -> dict[str, Any]:
        return build_custom_job(spec, self.settings)

    def find(self, spec: JobSpec) -> VertexDetails | None:
        """The recorded job of the spec's key, else the earliest job labelled with it."""
        record = self._cells.read(transport.join(spec.output_uri, RECORD_FILE))
        if record is not None:
            self._check_key(spec, record, RECORD_FILE)
            return VertexDetails(
                resource_name=record["resource_name"], create_time=record["create_time"]
            )
        job = self._labelled(spec)
        return None if job is None else self._record(spec, job)

    def create(self, spec: JobSpec, request: dict[str, Any]) -> VertexDetails:
        """Claim the output, create the job and record it; or wait for the claim's winner."""
        claim = {"idempotency_key": spec.idempotency_key, "token": uuid.uuid4().hex}
        claim_uri = transport.join(spec.output_uri, CLAIM_FILE)
        generation = self._claim(claim_uri, claim)
        while generation is None:
            recorded = self.call(self.find, spec)
            if recorded is not None:
                return recorded
            stored = self._cells.stat(claim_uri)
            if stored is not None:
                self._check_key(spec, stored.document, CLAIM_FILE)
                if stored.age_s <= self.settings.claim_timeout_seconds:
                    time.sleep(CLAIM_POLL_SECONDS)
                    continue
            # No claim (its winner gave up) or a stale one (its winner died): take it.
            generation = self._claim(claim_uri, claim, stored.generation if stored else 0)
        return self._start(spec, request, claim_uri, generation)

    def _start(
        self, spec: JobSpec, request: dict[str, Any], claim_uri: str, generation: int
    ) -> VertexDetails:
        """Create the job (or adopt the one a dead winner made) and record it."""
        from google.cloud.aiplatform_v1 import CustomJob

        try:
            job = self.call(self._labelled, spec) or self._jobs.create_custom_job(
                parent=self.parent,
                custom_job=CustomJob.from_json(json.dumps(request)),
                retry=None,
                timeout=self.settings.request_timeout_seconds,
            )
        except BaseException:
            # No job came of this claim: free it, so the next try of the key starts at once.
            self._cells.delete(claim_uri, generation)
            raise
        return self._record(spec, job)

    def _record(self, spec: JobSpec, job: Any) -> VertexDetails:
        """Record ``job`` beside its output (create-only); the record already there wins."""
        details = VertexDetails(resource_name=job.name, create_time=_rfc3339(job.create_time))
        record = {"idempotency_key": spec.idempotency_key, **details.encode()}
        uri = transport.join(spec.output_uri, RECORD_FILE)
        if self._cells.write(uri, record) is not None:
            return details
        recorded = self._cells.read(uri)
        if recorded is None:
            raise RuntimeError(f"the record of job {job.name} vanished while it was written")
        self._check_key(spec, recorded, RECORD_FILE)
        return VertexDetails(
            resource_name=recorded["resource_name"], create_time=recorded["create_time"]
        )

    def _claim(self, uri: str, claim: dict[str, Any], if_generation: int = 0) -> int | None:
        """The generation of ``claim`` once written over ``if_generation``; ``None`` if lost."""
        generation = self._cells.write(uri, claim, if_generation)
        if generation is not None:
            return generation
        # A retried upload whose first attempt landed is refused by its own precondition.
        current = self._cells.stat(uri)
        if current is not None and current.document.get("token") == claim["token"]:
            return current.generation
        return None

    def _labelled(self, spec: JobSpec) -> Any:
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

    # -- poll, cancel ---------------------------------------------------------------------------

    def list_jobs(self, jobs: remote.Listed[VertexDetails]) -> dict[str, NativeJob]:
        """One paginated ListCustomJobs per team, since the oldest handle's create time."""
        oldest: dict[str, datetime] = {}
        ids: dict[str, str] = {}
        for handle, details in jobs:
            team, created = label_value(handle.team), datetime.fromisoformat(details.create_time)
            oldest[team] = min(created, oldest.get(team, created))
            ids[details.resource_name] = handle.job_id
        found: dict[str, NativeJob] = {}
        for team, since in oldest.items():
            query = f'labels.{RESOURCE_TEAM_TAG}="{team}" AND create_time>="{_rfc3339(since)}"'
            for job in self._call(
                "list_custom_jobs",
                parent=self.parent,
                filter=query,
                page_size=self.settings.page_size,
            ):
                if job.name in ids:
                    found[ids[job.name]] = self._native(job)
        return found

    def get_job(self, handle: JobHandle, details: VertexDetails) -> NativeJob | None:
        from google.api_core.exceptions import NotFound

        try:
            return self._native(self._call("get_custom_job", name=details.resource_name))
        except NotFound:
            return None

    def stop(self, handle: JobHandle, details: VertexDetails) -> None:
        self._call("cancel_custom_job", name=details.resource_name)

    def _native(self, job: Any) -> NativeJob:
        state = job.state.name
        if self.state_of(state) == JobState.FAILED:
            return NativeJob(state, job.error.message or f"Vertex AI reports {state}")
        if self.state_of(state) == JobState.SUCCEEDED:
            return NativeJob(state)
        return NativeJob(state, "cancelled" if state == "JOB_STATE_CANCELLED" else state)
