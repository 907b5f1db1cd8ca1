"""Behaviour specific to the Vertex AI backend: the CustomJob builder, the machine table, the
submit claim, poll's call budget and faults, against ``FakeVertex`` and a GCS emulator."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from google.api_core.exceptions import BadRequest, PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from ml_assets_testing.fake_vertex import FakeVertex, GcsEmulator, count_poll_calls
from ml_assets_testing.fakes import Faults
from ml_assets_testing.job_scripts import OUTPUT_FILE, py, write_output
from pydantic import ValidationError

from ml_assets import transport
from ml_assets.backends import load_backend, remote
from ml_assets.backends.base import JobSpec, JobState, Resources
from ml_assets.backends.vertex import (
    CLAIM_FILE,
    RECORD_FILE,
    OutputLocationConflict,
    VertexBackend,
    VertexSettings,
    build_custom_job,
    job_labels,
    key_label,
    machine_spec,
)
from ml_assets.tags import RESOURCE_KEY_LABEL, RESOURCE_MODEL_TAG, RESOURCE_TEAM_TAG

if TYPE_CHECKING:
    from conftest import WaitFor

pytestmark = pytest.mark.timeout(60)

BUCKET = "ml-assets-vertex"
ROOT = f"gs://{BUCKET}/root"
LIST_ROUTE = "GET /v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs"
CREATE_ROUTE = LIST_ROUTE.replace("GET", "POST", 1)


def settings(**overrides: Any) -> VertexSettings:
    values: dict[str, Any] = {
        "project": "ml-platform",
        "location": "europe-west4",
        "image_uri": "europe-docker.pkg.dev/ml-platform/training/ml-assets:1.0",
        "storage_root": ROOT,
        **overrides,
    }
    return VertexSettings(**values)


def make_spec(key: str = "fraud/gbm/run-1/0", **fields: Any) -> JobSpec:
    values: dict[str, Any] = {
        "team": "fraud",
        "model": "gbm",
        "command": ["python", "-m", "ml_assets.training.entrypoint", "--job", "{}"],
        "output_uri": "",
        "idempotency_key": key,
        **fields,
    }
    spec = JobSpec(**values)
    return spec.model_copy(update={"output_uri": remote.output_location(ROOT, spec)})


# --- the pure builder ---------------------------------------------------------------------------


def test_custom_job_runs_the_staged_command_in_the_image_and_writes_to_the_output() -> None:
    from google.cloud.aiplatform_v1 import CustomJob

    spec = make_spec(env={"SEED": "7", "ALPHA": "0.1"})
    account = "trainer@ml-platform.iam.gserviceaccount.com"

    job = build_custom_job(spec, settings(sync_seconds=0.5, service_account=account))

    assert job["display_name"] == spec.job_name
    assert job["job_spec"]["base_output_directory"] == {"output_uri_prefix": spec.output_uri}
    assert job["job_spec"]["service_account"] == account
    (pool,) = job["job_spec"]["worker_pool_specs"]
    assert pool["replica_count"] == 1
    assert pool["container_spec"] == {
        "image_uri": "europe-docker.pkg.dev/ml-platform/training/ml-assets:1.0",
        "command": remote.staged_command(spec, 0.5),
        "env": [{"name": "ALPHA", "value": "0.1"}, {"name": "SEED", "value": "7"}],
    }
    assert "service_account" not in build_custom_job(spec, settings())["job_spec"]
    # The mapping is a CustomJob the SDK accepts as it is.
    proto = CustomJob.from_json(json.dumps(job))
    assert proto.job_spec.worker_pool_specs[0].container_spec.command[:3] == [
        "python",
        "-m",
        remote.STAGE_MODULE,
    ]
    assert build_custom_job(make_spec(), settings())["display_name"] == spec.job_name
    assert build_custom_job(make_spec("fraud/gbm/run-2/0"), settings())["display_name"] != (
        spec.job_name
    )


def test_the_spec_image_and_an_unstaged_command_go_into_the_container_spec() -> None:
    spec = make_spec(
        command=["python", "/app/train.py", "--epochs", "3"],
        image="europe-docker.pkg.dev/fraud/team/trainer:7",
        staged=False,
        working_dir="/srv/elsewhere",  # Vertex has no such field: the image's WORKDIR applies
        env={"DAGSTER_PIPES_CONTEXT": "ctx"},
    )

    job = build_custom_job(spec, settings())

    (pool,) = job["job_spec"]["worker_pool_specs"]
    assert pool["container_spec"] == {
        "image_uri": "europe-docker.pkg.dev/fraud/team/trainer:7",
        "command": ["python", "/app/train.py", "--epochs", "3"],
        "env": [
            {"name": "DAGSTER_PIPES_CONTEXT", "value": "ctx"},
            {"name": "ML_ASSETS_OUTPUT_URI", "value": spec.output_uri},
        ],
    }
    assert "/srv/elsewhere" not in json.dumps(job)


def t4(count: int) -> dict[str, Any]:
    return {"accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": count}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (Resources(cpu=1, memory_gb=2), {"machine_type": "n1-standard-4"}),
        (Resources(cpu=4, memory_gb=20), {"machine_type": "n1-highmem-4"}),
        (Resources(cpu=10, memory_gb=30), {"machine_type": "n1-standard-16"}),
        (
            Resources(cpu=4, memory_gb=8, gpu_count=1, gpu_type="nvidia-tesla-t4"),
            {"machine_type": "n1-standard-4", **t4(1)},
        ),
        (
            Resources(cpu=16, memory_gb=100, gpu_count=2, gpu_type="nvidia-tesla-t4"),
            {"machine_type": "n1-highmem-16", **t4(2)},
        ),
        (Resources(gpu_count=1), {"machine_type": "n1-standard-4", **t4(1)}),
        (
            Resources(cpu=8, memory_gb=40, gpu_count=1, gpu_type="nvidia-l4"),
            {
                "machine_type": "g2-standard-12",
                "accelerator_type": "NVIDIA_L4",
                "accelerator_count": 1,
            },
        ),
        (
            Resources(gpu_count=2, gpu_type="nvidia-l4"),
            {
                "machine_type": "g2-standard-24",
                "accelerator_type": "NVIDIA_L4",
                "accelerator_count": 2,
            },
        ),
        (
            Resources(cpu=8, memory_gb=64, gpu_count=4, gpu_type="nvidia-tesla-a100"),
            {
                "machine_type": "a2-highgpu-4g",
                "accelerator_type": "NVIDIA_TESLA_A100",
                "accelerator_count": 4,
            },
        ),
        (
            Resources(gpu_count=8, gpu_type="nvidia-h100-80gb"),
            {
                "machine_type": "a3-highgpu-8g",
                "accelerator_type": "NVIDIA_H100_80GB",
                "accelerator_count": 8,
            },
        ),
    ],
)
def test_machine_spec_follows_the_table(resources: Resources, expected: dict[str, Any]) -> None:
    assert machine_spec(resources, settings()) == expected
    job = build_custom_job(make_spec(resources=resources), settings())
    assert job["job_spec"]["worker_pool_specs"][0]["machine_spec"] == expected


def test_unknown_gpu_type_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown GPU type 'nvidia-gtx-1080'") as info:
        build_custom_job(
            make_spec(resources=Resources(gpu_count=1, gpu_type="nvidia-gtx-1080")), settings()
        )
    for known in ("t4", "l4", "a100", "h100-80gb"):
        assert known in str(info.value)


def test_shapes_round_up_to_what_vertex_offers_and_beyond_it_are_refused() -> None:
    # Vertex attaches 1, 2 or 4 T4s to an N1 machine: 3 become 4, never a pair it refuses.
    assert machine_spec(Resources(gpu_count=3, gpu_type="nvidia-tesla-t4"), settings()) == {
        "machine_type": "n1-standard-4",
        **t4(4),
    }
    # One V100 comes on N1 machines of at most 12 vCPUs: 16 vCPUs take the two-V100 hosts.
    assert machine_spec(Resources(cpu=16, gpu_count=1, gpu_type="v100"), settings()) == {
        "machine_type": "n1-standard-16",
        "accelerator_type": "NVIDIA_TESLA_V100",
        "accelerator_count": 2,
    }
    with pytest.raises(ValueError, match=r"offers 16 x l4 GPUs.*largest is g2-standard-96"):
        machine_spec(Resources(gpu_count=16, gpu_type="nvidia-l4"), settings())
    with pytest.raises(ValueError, match="200 vCPUs"):
        machine_spec(Resources(cpu=200), settings())


def test_machine_table_can_be_overridden_and_extended() -> None:
    custom = settings(
        machine_types={
            "cpu": "e2-standard-8",
            "nvidia-tesla-t4:1": "n1-highmem-32",
            "nvidia-b200:8": "a4-highgpu-8g",
        },
        accelerator_types={"nvidia-b200": "NVIDIA_B200"},
    )

    assert machine_spec(Resources(cpu=2), custom) == {"machine_type": "e2-standard-8"}
    assert machine_spec(Resources(gpu_count=1), custom) == {
        "machine_type": "n1-highmem-32",
        **t4(1),
    }
    assert machine_spec(Resources(gpu_count=8, gpu_type="nvidia-b200"), custom) == {
        "machine_type": "a4-highgpu-8g",
        "accelerator_type": "NVIDIA_B200",
        "accelerator_count": 8,
    }
    assert machine_spec(Resources(gpu_count=4, gpu_type="b200"), custom)["accelerator_count"] == 8
    with pytest.raises(ValueError, match="offers 16 x b200 GPUs"):
        machine_spec(Resources(gpu_count=16, gpu_type="nvidia-b200"), custom)


def test_labels_are_vertex_safe_and_carry_team_model_and_key_hash() -> None:
    spec = make_spec(
        team="Fraud_Team",
        model="GBM.v2",
        labels={"Owner": "Alice@Example.com", "9lives": "x" * 80, RESOURCE_TEAM_TAG: "spoofed"},
    )

    labels = job_labels(spec)

    assert labels[RESOURCE_TEAM_TAG] == "fraud_team"
    assert labels[RESOURCE_MODEL_TAG] == "gbm-v2"
    assert labels[RESOURCE_KEY_LABEL] == key_label(spec.idempotency_key)
    assert re.fullmatch(r"[0-9a-f]{40}", labels[RESOURCE_KEY_LABEL])
    assert key_label("fraud/gbm/run-2/0") != labels[RESOURCE_KEY_LABEL]
    assert labels["owner"] == "alice-example-com"
    assert labels["x-9lives"] == "x" * 63
    for key, value in labels.items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key), key
        assert re.fullmatch(r"[a-z0-9_-]{0,63}", value), value
    with pytest.raises(ValueError, match="at most 64 labels"):
        job_labels(make_spec(labels={f"l{index}": "v" for index in range(62)}))


# --- against the GCS emulator and the fake ------------------------------------------------------


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    with GcsEmulator([BUCKET]) as emulator:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        monkeypatch.setattr(transport, "_cache", {})  # its GCS client may know an older emulator
        yield emulator


@pytest.fixture
def start_fake(tmp_path: Path, gcs: GcsEmulator) -> Iterator[Callable[..., FakeVertex]]:
    """Starts ``FakeVertex`` instances with the emulator's env; all stopped at teardown."""
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> FakeVertex:
            root = tmp_path / f"vertex-{next(numbers)}"
            return stack.enter_context(FakeVertex(root, job_env=gcs.env, **options))

        yield start


def backend_for(fake: FakeVertex, **overrides: Any) -> VertexBackend:
    fast = {"retry_backoff_seconds": 0.05, "max_attempts": 10, **overrides}
    values = fake.backend_settings(storage_root=ROOT, sync_seconds=0.5, **fast)
    return VertexBackend(VertexSettings(**values))


def test_gcs_emulator_honours_generation_preconditions(gcs: GcsEmulator, tmp_path: Path) -> None:
    client = gcs.client()
    blob = client.bucket(BUCKET).blob("claims/one.json")

    blob.upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        client.bucket(BUCKET).blob("claims/one.json").upload_from_string(
            b"second", if_generation_match=0
        )
    current = client.bucket(BUCKET).get_blob("claims/one.json")
    assert current is not None
    generation = int(current.generation)
    assert current.download_as_bytes() == b"first"
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string(b"stale", if_generation_match=generation + 1)
    blob.upload_from_string(b"third", if_generation_match=generation)
    assert blob.download_as_bytes() == b"third"

    uri = f"{ROOT}/transport/doc.json"  # and ml_assets.transport works against it
    assert not transport.exists(uri)
    transport.write_json(uri, {"a": 1})
    assert transport.exists(uri) and transport.read_json(uri) == {"a": 1}
    assert json.loads(transport.fetch(uri, tmp_path).read_text()) == {"a": 1}


def test_submit_survives_faults_and_starts_each_job_once(
    start_fake: Callable[..., FakeVertex], wait_for: WaitFor
) -> None:
    fake = start_fake(
        faults=Faults(error_rate=0.2, throttle_rate=0.1, drop_rate=0.05, seed=7),
        create_then_fail_rate=0.25,
        seed=3,
    )
    backend = backend_for(fake)
    specs = [
        make_spec(f"fraud/gbm/faults-{index}/0", command=py(write_output({"index": index})))
        for index in range(6)
    ]

    handles = [backend.submit(spec) for spec in specs]
    assert [backend_for(fake).submit(spec) for spec in specs] == handles
    statuses = wait_for(backend, handles, timeout=45)

    for index, handle in enumerate(handles):
        status = statuses[handle.job_id]
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.result_uri == handle.output_uri
        assert transport.read_json(transport.join(status.result_uri, OUTPUT_FILE)) == {
            "index": index
        }
    keys = [job["labels"][RESOURCE_KEY_LABEL] for job in fake.jobs()]
    assert sorted(keys) == sorted(key_label(spec.idempotency_key) for spec in specs)
    assert {"drop", "throttle", "error"} <= set(fake.faults.injected)


class EveryOtherList(Faults):
    """Drops every other ListCustomJobs call, and nothing else."""

    lists: int = 0

    def draw(self, call: str) -> str | None:
        if not re.fullmatch(LIST_ROUTE, call):
            return None
        self.lists += 1
        if self.lists % 2:
            self.injected["drop"] += 1
            return "drop"
        return None


def test_each_call_of_a_create_is_retried_on_its_own(
    start_fake: Callable[..., FakeVertex],
) -> None:
    """A create is a claim, a look for a dead winner's job, then the create itself. A dropped
    look-up must cost one retry of the look-up, not a whole attempt of the create: with two
    attempts per call and every other list dropped, the job is still started, once."""
    fake = start_fake(faults=EveryOtherList(), pending_s=60)

    handle = backend_for(fake, max_attempts=2).submit(make_spec())

    (job,) = fake.jobs()
    assert handle.details["resource_name"] == job["name"]
    assert fake.calls[CREATE_ROUTE] == 1
    assert fake.faults.injected["drop"] == 2  # the find's list and the create's list


def test_the_fake_receives_the_spec_image(start_fake: Callable[..., FakeVertex]) -> None:
    fake = start_fake(pending_s=60)
    spec = make_spec(image="europe-docker.pkg.dev/fraud/team/trainer:7")

    backend_for(fake).submit(spec)

    (job,) = fake.jobs()
    container = job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    assert container["imageUri"] == "europe-docker.pkg.dev/fraud/team/trainer:7"


def test_a_create_whose_answer_is_lost_is_adopted_not_repeated(
    start_fake: Callable[..., FakeVertex],
) -> None:
    fake = start_fake(create_then_fail_rate=1.0, pending_s=60)
    spec = make_spec()

    handle = backend_for(fake).submit(spec)

    (job,) = fake.jobs()
    assert handle.details["resource_name"] == job["name"]
    assert fake.calls[CREATE_ROUTE] == 1
    assert (
        transport.read_json(transport.join(spec.output_uri, RECORD_FILE))["resource_name"]
        == (job["name"])
    )


def test_one_poll_of_many_jobs_is_one_paginated_list(
    start_fake: Callable[..., FakeVertex],
) -> None:
    fake = start_fake(pending_s=60)  # the jobs stay in flight, with no processes to start
    backend = backend_for(fake, page_size=7)
    handles = [
        backend.submit(make_spec(f"fraud/gbm/budget-{index}/0", command=["sleep", "300"]))
        for index in range(30)
    ]
    fake.reset_counts()

    statuses = backend.poll(handles)

    assert {status.state for status in statuses.values()} == {JobState.QUEUED}
    assert set(statuses) == {handle.job_id for handle in handles}
    assert dict(fake.calls) == {LIST_ROUTE: 5}  # ceil(30 / 7) pages, nothing per job


def test_a_job_missing_from_the_list_is_fetched_alone_and_reported(
    start_fake: Callable[..., FakeVertex],
) -> None:
    fake = start_fake(pending_s=60)
    backend = backend_for(fake)
    handle = backend.submit(make_spec(command=["sleep", "300"]))
    name = handle.details["resource_name"]
    gone = handle.model_copy(
        update={"job_id": "gone", "details": {**handle.details, "resource_name": name + "0"}}
    )
    fake.reset_counts()

    statuses = backend.poll([handle, gone])

    assert statuses[handle.job_id].state == JobState.QUEUED
    assert statuses["gone"].state == JobState.FAILED
    assert "has no job" in statuses["gone"].message
    assert fake.calls[LIST_ROUTE] == 1 and fake.total_calls() == 2


def test_a_stale_claim_of_a_dead_submitter_is_taken_over(
    start_fake: Callable[..., FakeVertex],
) -> None:
    fake = start_fake(pending_s=60)
    spec = make_spec(command=["sleep", "300"])
    claim = {"idempotency_key": spec.idempotency_key, "token": "died-before-creating"}
    transport.write_json(transport.join(spec.output_uri, CLAIM_FILE), claim)

    handle = backend_for(fake, claim_timeout_seconds=0.5).submit(spec)

    (job,) = fake.jobs()
    assert handle.details["resource_name"] == job["name"]
    assert backend_for(fake).submit(spec) == handle


def test_a_takeover_adopts_the_job_a_dead_submitter_created(
    start_fake: Callable[..., FakeVertex],
) -> None:
    from google.cloud.aiplatform_v1 import CustomJob, JobServiceClient

    fake = start_fake(pending_s=60)
    spec = make_spec(command=["sleep", "300"])
    transport.write_json(
        transport.join(spec.output_uri, CLAIM_FILE),
        {"idempotency_key": spec.idempotency_key, "token": "died-before-recording"},
    )
    rest = JobServiceClient.get_transport_class("rest")
    client = JobServiceClient(
        transport=rest(
            host=f"127.0.0.1:{fake.port}", credentials=AnonymousCredentials(), url_scheme="http"
        )
    )
    orphan = client.create_custom_job(
        parent="projects/ml-assets-test/locations/us-central1",
        custom_job=CustomJob.from_json(json.dumps(build_custom_job(spec, settings()))),
    )

    handle = backend_for(fake, claim_timeout_seconds=0.5).submit(spec)

    assert handle.details["resource_name"] == orphan.name
    assert len(fake.jobs()) == 1


def test_a_refused_create_frees_the_claim_for_the_next_submit(
    start_fake: Callable[..., FakeVertex],
) -> None:
    fake = start_fake(pending_s=60)
    spec = make_spec(command=["sleep", "300"])

    with pytest.raises(BadRequest, match="imageUri is required"):
        backend_for(fake, image_uri="").submit(spec)

    assert not transport.exists(transport.join(spec.output_uri, CLAIM_FILE))
    handle = backend_for(fake).submit(spec)  # at once, not after claim_timeout_seconds
    (job,) = fake.jobs()
    assert handle.details["resource_name"] == job["name"]


def test_an_output_location_of_another_key_is_refused(
    start_fake: Callable[..., FakeVertex],
) -> None:
    backend = backend_for(start_fake(pending_s=60))
    first = make_spec(command=["sleep", "300"])
    backend.submit(first)
    other = make_spec("fraud/gbm/run-9/0").model_copy(update={"output_uri": first.output_uri})

    with pytest.raises(OutputLocationConflict, match="belongs to key 'fraud/gbm/run-1/0'"):
        backend.submit(other)
    with pytest.raises(ValueError, match="needs a gs:// output_uri"):
        backend.submit(first.model_copy(update={"output_uri": "/tmp/not-gcs"}))


def test_count_poll_calls_measures_one_poll() -> None:
    result = count_poll_calls(25, page_size=10)

    assert result == {"jobs": 25, "calls": 3, "by_route": {LIST_ROUTE: 3}, "states": {"queued": 25}}


# --- settings from a team's YAML ---------------------------------------------------------------


def test_yaml_settings_build_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_VERTEX_PROJECT", "fraud-prod")
    yaml_settings = {
        "project": {"env": "FRAUD_VERTEX_PROJECT"},
        "location": "europe-west4",
        "image_uri": "europe-docker.pkg.dev/fraud-prod/training/ml-assets:1.0",
        "storage_root": "gs://fraud-training/ml-assets",
        "machine_types": {"cpu": "n1-highmem-8"},
        "page_size": 50,
    }

    backend = load_backend("vertex", yaml_settings)

    assert isinstance(backend, VertexBackend)
    assert backend.settings.project == "fraud-prod"
    assert backend.parent == "projects/fraud-prod/locations/europe-west4"
    assert backend.settings.page_size == 50
    assert machine_spec(Resources(), backend.settings) == {"machine_type": "n1-highmem-8"}
    with pytest.raises(ValidationError):
        load_backend("vertex", {**yaml_settings, "page_size": 0})
    with pytest.raises(ValueError, match="url_scheme"):
        load_backend("vertex", {**yaml_settings, "url_scheme": "ftp"})
    with pytest.raises(ValueError, match="storage_root must be a gs:// URI"):
        load_backend("vertex", {**yaml_settings, "storage_root": "s3://elsewhere"})
