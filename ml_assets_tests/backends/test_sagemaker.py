"""The SageMaker backend: its pure request builder, its settings, and its behaviour against
``FakeSageMaker`` (boto3 over HTTP, jobs as real processes, S3 in moto) under faults and call
budgets. The shared contract suite runs it too, through ``harness_sagemaker.py``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator
from ml_assets_testing.fake_sagemaker import FakeSageMaker, use_fake_aws
from ml_assets_testing.fakes import CANCELLED, FAILED, SUCCEEDED, Faults
from ml_assets_testing.job_scripts import OUTPUT_FILE, py, wait_for_file, write_output

from ml_assets import transport
from ml_assets.backends import load_backend
from ml_assets.backends import sagemaker as sm
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.remote import output_location, staged_command

pytestmark = pytest.mark.timeout(60)

SETTINGS = sm.SageMakerSettings(
    role_arn="arn:aws:iam::123456789012:role/training",
    image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
    storage_root="s3://b/root",
    volume_size_gb=80,
    max_runtime_seconds=7200,
    sync_seconds=5,
)


def spec(
    command: list[str] | None = None, key: str = "fraud/detector/run-1/1", **extra: Any
) -> JobSpec:
    output_uri = extra.pop("output_uri", None)
    draft = JobSpec(
        team="fraud",
        model="fraud_detector",
        command=command or ["python", "-m", "ml_assets.training.entrypoint", "--job", "{}"],
        output_uri="",
        idempotency_key=key,
        backend="sagemaker",
        **extra,
    )
    return draft.model_copy(
        update={"output_uri": output_uri or output_location("s3://b/root", draft)}
    )


# --- the pure request builder ----------------------------------------------------------------


def test_request_names_the_job_after_the_key_and_carries_the_settings() -> None:
    job = spec(env={"MODE": "fast"}, labels={"ml-assets-team": "fraud", "owner": "ml-team"})

    request = sm.build_training_job_request(job, SETTINGS)

    assert request["TrainingJobName"] == job.job_name == spec().job_name
    assert request["TrainingJobName"] != spec(key="fraud/detector/run-1/2").job_name
    assert job.job_name.startswith("fraud-fraud-detector-") and len(job.job_name) <= 63
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": SETTINGS.image_uri,
        "TrainingInputMode": "File",
        "ContainerEntrypoint": staged_command(job, 5),
    }
    assert request["RoleArn"] == SETTINGS.role_arn
    assert request["OutputDataConfig"] == {"S3OutputPath": job.output_uri}
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.m5.large",
        "InstanceCount": 1,
        "VolumeSizeInGB": 80,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert request["Environment"] == {"MODE": "fast"}
    assert {tag["Key"]: tag["Value"] for tag in request["Tags"]} == {
        "ml-assets-team": "fraud",
        "ml-assets-model": "fraud_detector",
        "ml-assets-key-sha256": hashlib.sha256(b"fraud/detector/run-1/1").hexdigest(),
        "ml-assets-idempotency-key": "fraud/detector/run-1/1",
        "owner": "ml-team",
    }
    # botocore's own check of the request against SageMaker's API model.
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()


def test_a_key_too_long_for_a_tag_is_kept_as_its_hash_only() -> None:
    key = "fraud/detector/" + "r" * 300

    tags = {tag["Key"]: tag["Value"] for tag in sm.training_job_tags(spec(key=key))}

    assert tags["ml-assets-key-sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert "ml-assets-idempotency-key" not in tags


@pytest.mark.parametrize("value", ["a;b", "tab\tinside", "new\nline", "x" * 257])
def test_a_label_that_is_no_valid_tag_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="owner"):
        sm.build_training_job_request(spec(labels={"owner": value}), SETTINGS)


def test_tags_take_what_aws_tag_pattern_takes() -> None:
    labels = {"owner": "Zoë Ünal", "path": "a/b=c+d-e@f:g.h_i", "wide": "x\u3000y", "n": "٣"}

    tags = {tag["Key"]: tag["Value"] for tag in sm.training_job_tags(spec(labels=labels))}

    assert {key: tags[key] for key in labels} == labels


def test_the_output_must_be_in_s3() -> None:
    with pytest.raises(ValueError, match="s3:// output_uri"):
        sm.build_training_job_request(spec(output_uri="/tmp/jobs/x"), SETTINGS)


def test_a_long_command_travels_in_the_environment_and_the_bootstrap_runs_it(
    tmp_path: Path,
) -> None:
    marker = "x" * 700  # one argument far over SageMaker's 256 characters
    long_job = spec(
        py(f"open({str(tmp_path / 'ran')!r}, 'w').write({marker!r})", write_output({"ok": 1}))
    ).model_copy(update={"output_uri": str(tmp_path / "out")})

    entrypoint, env = sm.container_command(long_job, 0.5)

    assert all(len(item) <= 256 for item in entrypoint) and entrypoint[:2] == ["python", "-c"]
    # AWS's pattern for an entrypoint item is ^.*$: the bootstrap is one line.
    assert all("\n" not in item for item in entrypoint)
    assert all(len(value) <= 512 for value in env.values()) and len(env) >= 2
    joined = "".join(env[f"{sm.ENTRYPOINT_ENV_PREFIX}{i}"] for i in range(len(env)))
    assert json.loads(joined) == staged_command(long_job, 0.5)
    # The container's view: the bootstrap alone, the command only in the environment.
    subprocess.run(
        [sys.executable, *entrypoint[1:]], env={**os.environ, **env}, check=True, timeout=30
    )
    assert (tmp_path / "ran").read_text() == marker
    assert json.loads((tmp_path / "out" / OUTPUT_FILE).read_text()) == {"ok": 1}


def test_an_unstaged_long_command_of_any_program_runs_through_the_bootstrap(
    tmp_path: Path,
) -> None:
    marker = "y" * 700
    target = tmp_path / "ran"
    job = spec(["/bin/sh", "-c", f"printf %s {marker} > {target}"], staged=False)

    entrypoint, env = sm.container_command(job, 0.5)
    request = sm.build_training_job_request(job, SETTINGS)

    assert entrypoint[:2] == ["python", "-c"]
    assert request["Environment"]["ML_ASSETS_OUTPUT_URI"] == job.output_uri
    subprocess.run(
        [sys.executable, *entrypoint[1:]], env={**os.environ, **env}, check=True, timeout=30
    )
    assert target.read_text() == marker


def test_the_spec_image_and_an_unstaged_command_go_into_the_request() -> None:
    job = spec(
        ["python", "/opt/ml/code/train.py", "--epochs", "3"],
        image="123456789012.dkr.ecr.us-east-1.amazonaws.com/team-trainer:7",
        staged=False,
        working_dir="/srv/elsewhere",  # SageMaker has no such field: the image's WORKDIR applies
        env={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msgs"},
    )

    request = sm.build_training_job_request(job, SETTINGS)

    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/team-trainer:7",
        "TrainingInputMode": "File",
        "ContainerEntrypoint": ["python", "/opt/ml/code/train.py", "--epochs", "3"],
    }
    assert request["Environment"] == {
        "DAGSTER_PIPES_CONTEXT": "ctx",
        "DAGSTER_PIPES_MESSAGES": "msgs",
        "ML_ASSETS_OUTPUT_URI": job.output_uri,
    }
    assert "/srv/elsewhere" not in json.dumps(request)
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()


@pytest.mark.parametrize(
    ("resources", "instance_type"),
    [
        (Resources(), "ml.m5.large"),
        (Resources(cpu=6, memory_gb=8), "ml.m5.2xlarge"),
        (Resources(cpu=2, memory_gb=100), "ml.m5.12xlarge"),
        (Resources(gpu_count=1, gpu_type="nvidia-tesla-t4"), "ml.g4dn.xlarge"),
        (Resources(cpu=8, gpu_count=1, gpu_type="nvidia-tesla-t4"), "ml.g4dn.2xlarge"),
        (Resources(gpu_count=4, gpu_type="nvidia-tesla-t4"), "ml.g4dn.12xlarge"),
        (Resources(gpu_count=2, gpu_type="t4"), "ml.g4dn.12xlarge"),  # at least 2: 4 it is
        (Resources(gpu_count=1), "ml.g4dn.xlarge"),  # default_gpu_type t4
        (Resources(gpu_count=4, gpu_type="nvidia-a10g"), "ml.g5.12xlarge"),
        (Resources(cpu=64, gpu_count=4, gpu_type="nvidia-a10g"), "ml.g5.24xlarge"),
        (Resources(gpu_count=1, gpu_type="nvidia-l4"), "ml.g6.xlarge"),
        (Resources(gpu_count=8, gpu_type="nvidia-tesla-v100"), "ml.p3.16xlarge"),
        (Resources(gpu_count=8, gpu_type="nvidia-tesla-a100"), "ml.p4d.24xlarge"),
        (Resources(gpu_count=8, gpu_type="nvidia-h100-80gb"), "ml.p5.48xlarge"),
    ],
)
def test_resources_pick_the_smallest_instance_that_fits(
    resources: Resources, instance_type: str
) -> None:
    request = sm.build_training_job_request(spec(resources=resources), SETTINGS)

    assert request["ResourceConfig"]["InstanceType"] == instance_type


def test_an_unknown_gpu_type_names_itself_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match="nvidia-tesla-k80") as error:
        sm.build_training_job_request(
            spec(resources=Resources(gpu_count=1, gpu_type="nvidia-tesla-k80")), SETTINGS
        )

    assert all(gpu_type in str(error.value) for gpu_type in sm.GPU_TYPES)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(gpu_count=16, gpu_type="nvidia-tesla-t4"), "offers 16 x t4 GPUs"),
        (Resources(gpu_type="nvidia-l4"), "gpu_count is 0"),
        (Resources(cpu=500), "largest is ml.m5.24xlarge"),
    ],
)
def test_resources_sagemaker_cannot_meet_are_refused(resources: Resources, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sm.build_training_job_request(spec(resources=resources), SETTINGS)


def test_every_shape_is_a_real_training_instance_and_is_documented() -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    valid = set(model.shape_for("TrainingInstanceType").enum)
    doc = " ".join((sm.__doc__ or "").split())

    for shape in sm.INSTANCE_SHAPES:
        assert shape.name in valid
        assert f"{shape.name} ({shape.cpu:g}/{shape.memory_gb:g})" in doc
    assert all(f"``{gpu_type}``" in doc for gpu_type in sm.GPU_TYPES)


@pytest.mark.parametrize(
    ("status", "secondary", "state"),
    [
        ("InProgress", "Starting", JobState.QUEUED),
        ("InProgress", "Pending", JobState.QUEUED),
        ("InProgress", "LaunchingMLInstances", JobState.QUEUED),
        ("InProgress", "Training", JobState.RUNNING),
        ("InProgress", "Uploading", JobState.RUNNING),
        ("Stopping", "Stopping", JobState.RUNNING),
        ("Completed", "Completed", JobState.SUCCEEDED),
        ("Failed", "Failed", JobState.FAILED),
        ("Stopped", "Stopped", JobState.CANCELLED),
        ("Stopped", "MaxRuntimeExceeded", JobState.FAILED),
        ("Deleting", "", JobState.FAILED),
    ],
)
def test_sagemaker_states_map_to_job_states(status: str, secondary: str, state: JobState) -> None:
    assert sm.training_job_state(status, secondary) == state


# --- settings --------------------------------------------------------------------------------


def test_the_connection_fields_are_dagster_aws_boto3_configuration() -> None:
    from dagster_aws.utils import ResourceWithBoto3Configuration

    ours = sm.SageMakerSettings.model_fields
    for name, field in ResourceWithBoto3Configuration.model_fields.items():
        assert name in ours, name
        assert ours[name].default == field.default, name


def test_yaml_settings_build_the_backend_with_secrets_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUD_AWS_KEY_ID", "AKIAFRAUD")
    monkeypatch.setenv("FRAUD_AWS_SECRET", "s3cr3t-value")
    settings: dict[str, Any] = {
        "region_name": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9",
        "aws_access_key_id": {"env": "FRAUD_AWS_KEY_ID"},
        "aws_secret_access_key": {"env": "FRAUD_AWS_SECRET"},
        "max_attempts": 7,
        "retry_mode": "adaptive",
        "role_arn": "arn:aws:iam::123456789012:role/fraud-training",
        "image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fraud:2",
        "storage_root": "s3://fraud-ml/jobs",
        "page_size": 25,
        "sync_seconds": 2,
    }

    backend = load_backend("sagemaker", settings)

    assert isinstance(backend, sm.SageMakerBackend)
    client = backend._client
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    # botocore tries each call once; the backend's retry policy decides on more.
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 1}
    assert backend.retry.max_attempts == 7
    assert client._request_signer._credentials.secret_key == "s3cr3t-value"
    assert backend.settings.page_size == 25
    assert (backend.settings.role_arn, backend.settings.sync_seconds) == (settings["role_arn"], 2)
    request = sm.build_training_job_request(spec(), backend.settings)
    assert "s3cr3t-value" not in json.dumps(request) and "AKIAFRAUD" not in json.dumps(request)


def test_settings_that_do_not_fit_are_refused() -> None:
    from pydantic import ValidationError

    base = {"role_arn": "arn:aws:iam::1:role/r", "image_uri": "i", "storage_root": "s3://b/p"}
    with pytest.raises(ValidationError, match="storage_root"):
        load_backend("sagemaker", {**base, "storage_root": "/local/path"})
    with pytest.raises(ValidationError, match="page_size"):
        load_backend("sagemaker", {**base, "page_size": 500})
    with pytest.raises(ValidationError, match="role_arn"):
        load_backend("sagemaker", {"image_uri": "i", "storage_root": "s3://b/p"})


# --- against the fake ------------------------------------------------------------------------


@dataclass
class World:
    """A fake SageMaker, a bucket in it, and backends pointed at it."""

    fake: FakeSageMaker
    storage_root: str
    scratch: Path

    def backend(self, **overrides: Any) -> sm.SageMakerBackend:
        settings = self.fake.backend_settings(self.storage_root, sync_seconds=0.5, **overrides)
        backend = load_backend("sagemaker", settings)
        assert isinstance(backend, sm.SageMakerBackend)
        return backend

    def spec(self, command: list[str], key: str) -> JobSpec:
        draft = JobSpec(
            team="tests", model="sagemaker", command=command, output_uri="", idempotency_key=key
        )
        return draft.model_copy(update={"output_uri": output_location(self.storage_root, draft)})

    def client(self) -> Any:
        return boto3.client("sagemaker", endpoint_url=self.fake.url, region_name="us-east-1")


@pytest.fixture
def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., World]]:
    """``make_world(**FakeSageMaker options)``: a running fake, stopped after the test."""
    fakes: list[FakeSageMaker] = []

    def make(**options: Any) -> World:
        fake = FakeSageMaker(tmp_path / f"fake{len(fakes)}", **options).start()
        fakes.append(fake)
        use_fake_aws(fake, monkeypatch)
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        return World(fake, f"s3://{fake.create_bucket()}/ml-assets", scratch)

    yield make
    for fake in fakes:
        fake.stop()


def settle(
    backend: sm.SageMakerBackend, handles: list[JobHandle], timeout: float = 30.0
) -> dict[str, JobStatus]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = backend.poll(handles)
        if all(status.state.is_terminal for status in statuses.values()):
            return statuses
        assert time.monotonic() < deadline, f"jobs still running: {statuses}"
        time.sleep(0.2)


def describe_until(client: Any, name: str, done: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The distinct ``Status/SecondaryStatus`` the job shows until ``done``, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while True:
        answer = client.describe_training_job(TrainingJobName=name)
        state = f"{answer['TrainingJobStatus']}/{answer['SecondaryStatus']}"
        if not seen or seen[-1] != state:
            seen.append(state)
        if done(answer):
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_the_fake_runs_training_jobs_as_sagemaker_reports_them(
    make_world: Callable[..., World],
) -> None:
    world = make_world(pending_s=1.0)
    client = world.client()
    go = world.scratch / "go"
    job = world.spec(py(wait_for_file(go), write_output({"ok": 1})), "lifecycle/1")
    request = sm.build_training_job_request(job, SETTINGS)

    client.create_training_job(**request)
    with pytest.raises(ClientError, match="ResourceInUse"):
        client.create_training_job(**request)
    early = describe_until(client, job.job_name, lambda a: a["SecondaryStatus"] == "Training")
    go.touch()
    late = describe_until(client, job.job_name, lambda a: a["TrainingJobStatus"] != "InProgress")

    assert early == ["InProgress/Starting", "InProgress/Training"]
    assert late == ["InProgress/Training", "Completed/Completed"]
    assert transport.read_json(transport.join(job.output_uri, OUTPUT_FILE)) == {"ok": 1}

    sleeper = world.spec(py("import time; time.sleep(60)"), "lifecycle/2")
    client.create_training_job(**sm.build_training_job_request(sleeper, SETTINGS))
    describe_until(client, sleeper.job_name, lambda a: a["SecondaryStatus"] == "Training")
    client.stop_training_job(TrainingJobName=sleeper.job_name)
    stopping = describe_until(
        client, sleeper.job_name, lambda a: a["TrainingJobStatus"] == "Stopped"
    )
    assert stopping[0] in ("Stopping/Stopping", "Stopped/Stopped")
    assert stopping[-1] == "Stopped/Stopped"
    assert world.fake.processes.get(sleeper.job_name).state == CANCELLED  # type: ignore[union-attr]
    with pytest.raises(ClientError, match="in status Stopped"):
        client.stop_training_job(TrainingJobName=sleeper.job_name)

    page = client.list_training_jobs(MaxResults=1, SortBy="Name", SortOrder="Descending")
    rest = client.list_training_jobs(
        MaxResults=1, SortBy="Name", SortOrder="Descending", NextToken=page["NextToken"]
    )
    names = [
        s["TrainingJobName"] for s in page["TrainingJobSummaries"] + rest["TrainingJobSummaries"]
    ]
    assert names == sorted([job.job_name, sleeper.job_name], reverse=True)
    assert "NextToken" not in rest


def test_the_fake_checks_sagemaker_limits_and_proxies_other_actions_to_moto(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    client = world.client()
    request = sm.build_training_job_request(world.spec(["true"], "limits/1"), SETTINGS)
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["python", "-c", "#" * 300]

    with pytest.raises(ClientError, match="ValidationException"):
        client.create_training_job(**request)
    with pytest.raises(ClientError, match="not found"):
        client.describe_training_job(TrainingJobName="no-such-job")
    assert world.fake.training_jobs == {}

    client.create_model_package_group(ModelPackageGroupName="fraud-models")
    moto = boto3.client("sagemaker", endpoint_url=world.fake.moto_url, region_name="us-east-1")
    assert (
        moto.describe_model_package_group(ModelPackageGroupName="fraud-models")[
            "ModelPackageGroupName"
        ]
        == "fraud-models"
    )
    assert world.fake.calls["POST CreateModelPackageGroup"] == 1


def test_submit_and_poll_survive_faults_and_start_each_key_once(
    make_world: Callable[..., World],
) -> None:
    faults = Faults(error_rate=0.2, throttle_rate=0.1, drop_rate=0.05, seed=11)
    world = make_world(faults=faults)
    backend = world.backend(max_attempts=10, retry_backoff_seconds=0.05)
    specs = []
    for index in range(5):
        counter = world.scratch / f"runs-{index}.txt"
        command = py(f"open({str(counter)!r}, 'a').write('ran\\n')", write_output({"i": index}))
        specs.append(world.spec(command, f"faults/{index}"))

    handles = [backend.submit(job) for job in specs]
    statuses = settle(backend, handles)
    fresh = world.backend(max_attempts=10, retry_backoff_seconds=0.05)
    again = [fresh.submit(job) for job in specs]

    assert again == handles
    for index, handle in enumerate(handles):
        status = statuses[handle.job_id]
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.result_uri == handle.output_uri
        assert transport.read_json(transport.join(status.result_uri, OUTPUT_FILE)) == {"i": index}
        assert (world.scratch / f"runs-{index}.txt").read_text() == "ran\n"
    assert sorted(world.fake.training_jobs) == sorted(job.job_name for job in specs)
    assert len(world.fake.processes.jobs) == 5
    assert set(faults.injected) == {"error", "throttle", "drop"}
    # The commands are long, so they went through the bootstrap.
    entrypoint = world.fake.training_jobs[specs[0].job_name].request["AlgorithmSpecification"][
        "ContainerEntrypoint"
    ]
    assert entrypoint[:2] == ["python", "-c"] and "os.execvp" in entrypoint[2]


def test_a_create_whose_answer_was_lost_reattaches_to_the_job(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lose_create_responses=1)
    backend = world.backend()
    counter = world.scratch / "runs.txt"
    job = world.spec(py(f"open({str(counter)!r}, 'a').write('ran\\n')", write_output({})), "lost")

    handle = backend.submit(job)

    # The lost answer is not sent again: the job it made is found (DescribeTrainingJob).
    assert world.fake.calls["POST CreateTrainingJob"] == 1
    assert handle.job_id == job.job_name and handle.details["arn"].endswith(job.job_name)
    assert settle(backend, [handle])[handle.job_id].state == JobState.SUCCEEDED
    assert counter.read_text() == "ran\n"


def test_one_poll_of_30_jobs_is_a_few_list_pages(make_world: Callable[..., World]) -> None:
    world = make_world(pending_s=600)  # the jobs stay in flight (Starting) throughout
    backend = world.backend(page_size=7)
    handles = [backend.submit(world.spec(["sleep", "300"], f"budget/{i}")) for i in range(30)]
    world.fake.reset_counts()

    statuses = backend.poll(handles)

    assert set(statuses) == {handle.job_id for handle in handles}
    assert {status.state for status in statuses.values()} == {JobState.QUEUED}
    assert dict(world.fake.calls) == {"POST ListTrainingJobs": 5}  # ceil(30 / 7) pages


def test_a_failed_job_is_described_once_and_finished_jobs_cost_nothing_after(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    backend = world.backend()
    failing = [world.spec(py(f"raise SystemExit('nope-{i}')"), f"fail/{i}") for i in range(3)]
    passing = [world.spec(py(write_output({"i": i})), f"pass/{i}") for i in range(2)]
    handles = [backend.submit(job) for job in failing + passing]
    deadline = time.monotonic() + 30
    while any(
        world.fake.processes.get(h.job_id).state not in (SUCCEEDED, FAILED)  # type: ignore[union-attr]
        for h in handles
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    world.fake.reset_counts()

    statuses = backend.poll(handles)

    assert dict(world.fake.calls) == {"POST ListTrainingJobs": 1, "POST DescribeTrainingJob": 3}
    for index, job in enumerate(failing):
        status = statuses[job.job_name]
        assert status.state == JobState.FAILED
        assert "ExitCode 1" in status.message and f"nope-{index}" in status.message
    assert all(statuses[job.job_name].state == JobState.SUCCEEDED for job in passing)
    world.fake.reset_counts()
    assert backend.poll(handles) == statuses
    assert world.fake.total_calls() == 0


def test_a_job_over_its_max_runtime_fails(make_world: Callable[..., World]) -> None:
    world = make_world(pending_s=0.0)
    backend = world.backend(max_runtime_seconds=1)
    handle = backend.submit(world.spec(py("import time; time.sleep(60)"), "overtime"))

    status = settle(backend, [handle])[handle.job_id]

    assert status.state == JobState.FAILED
    assert "MaxRuntimeInSeconds" in status.message
    assert world.fake.processes.get(handle.job_id).state == CANCELLED  # type: ignore[union-attr]
    backend.cancel(handle)  # a job that has ended is left as it is
    assert backend.poll([handle])[handle.job_id].state == JobState.FAILED
