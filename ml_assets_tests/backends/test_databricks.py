"""The Databricks backend: its pure request builder, and its behaviour against ``FakeDatabricks``
(call budget of a poll, faults, settings from YAML, logs) beyond the shared contract suite."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ml_assets_testing.fake_databricks import FakeDatabricks, count_poll_calls
from ml_assets_testing.fakes import Faults
from ml_assets_testing.job_scripts import OUTPUT_FILE, py, wait_for_file, write_output
from pydantic import ValidationError

from ml_assets import transport
from ml_assets.backends import load_backend, remote
from ml_assets.backends.base import JobSpec, JobState, Resources
from ml_assets.backends.databricks import (
    NODE_TYPES,
    DatabricksBackend,
    DatabricksSettings,
    build_submit_request,
    idempotency_token,
)
from ml_assets_tests.backends.harness_databricks import (
    STORAGE_ROOT,
    compiled_job_env,
    databricks_spec,
    point_sdk_at,
    settings_for,
)

if TYPE_CHECKING:
    from conftest import WaitFor

pytestmark = pytest.mark.timeout(120)

SETTINGS = DatabricksSettings(
    storage_root=STORAGE_ROOT, wheel="/Volumes/main/ml/wheels/ml_assets-0.1-py3-none-any.whl"
)


def spec_with(resources: Resources | None = None, **fields: object) -> JobSpec:
    spec = databricks_spec(["python", "-m", "ml_assets.training.entrypoint", "--job", "{}"], "k1")
    update = {"resources": resources or Resources(), **fields}
    return spec.model_copy(update=update)


# --- the pure builder -------------------------------------------------------------------------


def test_cpu_job_request_runs_the_staged_command_on_a_single_node_cluster() -> None:
    spec = spec_with(env={"MODE": "fast"}, labels={"cost_center": "ml"})

    request = build_submit_request(spec, SETTINGS)

    assert request["run_name"] == spec.job_name
    assert request["idempotency_token"] == idempotency_token(spec)
    assert "timeout_seconds" not in request
    (task,) = request["tasks"]
    assert task["python_wheel_task"] == {
        "package_name": "ml_assets",
        "entry_point": "ml-assets-job",
        "parameters": remote.staged_command(spec, SETTINGS.sync_seconds)[3:],
    }
    assert task["python_wheel_task"]["parameters"][:2] == ["--output-uri", spec.output_uri]
    assert task["libraries"] == [{"whl": "/Volumes/main/ml/wheels/ml_assets-0.1-py3-none-any.whl"}]
    cluster = task["new_cluster"]
    assert cluster["spark_version"] == "15.4.x-cpu-ml-scala2.12"
    assert cluster["node_type_id"] == "m5.xlarge"
    assert cluster["num_workers"] == 0
    assert cluster["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    assert cluster["spark_env_vars"] == {"MODE": "fast"}
    assert cluster["custom_tags"] == {
        "cost_center": "ml",
        "ml_assets_team": "contract",
        "ml_assets_model": "databricks",
        "ml_assets_job": spec.job_name,
        "ml_assets_key_hash": idempotency_token(spec),
        "ResourceClass": "SingleNode",
    }


def test_the_sdk_carries_every_field_of_the_task() -> None:
    from databricks.sdk.service.jobs import SubmitTask

    settings = SETTINGS.model_copy(update={"max_runtime_seconds": 3600})
    request = build_submit_request(spec_with(Resources(gpu_count=1)), settings)

    assert request["timeout_seconds"] == 3600
    assert SubmitTask.from_dict(request["tasks"][0]).as_dict() == request["tasks"][0]


def test_the_spec_image_runs_the_cluster_in_that_container_on_a_standard_runtime() -> None:
    from databricks.sdk.service.jobs import SubmitTask

    spec = spec_with(
        Resources(gpu_count=1), image="ghcr.io/team/trainer:7", working_dir="/srv/elsewhere"
    )

    request = build_submit_request(spec, SETTINGS)

    (task,) = request["tasks"]
    assert task["new_cluster"]["docker_image"] == {"url": "ghcr.io/team/trainer:7"}
    assert task["new_cluster"]["spark_version"] == SETTINGS.container_spark_version
    assert "-ml-" not in SETTINGS.container_spark_version  # ML runtimes refuse custom containers
    assert task["new_cluster"]["node_type_id"] == "g4dn.xlarge"
    assert "/srv/elsewhere" not in json.dumps(request)  # no working directory on Databricks
    sdk_task = SubmitTask.from_dict(task)
    assert sdk_task.new_cluster is not None and sdk_task.new_cluster.docker_image is not None
    assert sdk_task.new_cluster.docker_image.url == "ghcr.io/team/trainer:7"
    assert (
        "docker_image" not in build_submit_request(spec_with(), SETTINGS)["tasks"][0]["new_cluster"]
    )


def test_an_unstaged_job_is_a_spark_python_task_without_the_wheel() -> None:
    spec = spec_with(
        command=["python3", "/Workspace/Shared/fraud/train.py", "--epochs", "3"],
        staged=False,
        env={"DAGSTER_PIPES_CONTEXT": "ctx"},
    )

    (task,) = build_submit_request(spec, SETTINGS)["tasks"]

    assert task["spark_python_task"] == {
        "python_file": "/Workspace/Shared/fraud/train.py",
        "parameters": ["--epochs", "3"],
    }
    assert "python_wheel_task" not in task and "libraries" not in task
    assert task["new_cluster"]["spark_env_vars"] == {
        "DAGSTER_PIPES_CONTEXT": "ctx",
        "ML_ASSETS_OUTPUT_URI": spec.output_uri,
    }
    bare = spec.model_copy(update={"command": ["python", "dbfs:/jobs/train.py"]})
    assert build_submit_request(bare, SETTINGS)["tasks"][0]["spark_python_task"] == {
        "python_file": "dbfs:/jobs/train.py"
    }


@pytest.mark.parametrize(
    "command",
    [["/opt/train.sh", "--epochs", "3"], ["python", "-m", "trainer"], ["python"], ["bash", "x.py"]],
)
def test_an_unstaged_command_databricks_cannot_run_is_refused(command: list[str]) -> None:
    spec = spec_with(command=command, staged=False)

    with pytest.raises(ValueError, match=r"spark_python_task.*python <file> \[arguments\.\.\.\]"):
        build_submit_request(spec, SETTINGS)


def test_idempotency_token_is_deterministic_per_key_and_fits_the_api() -> None:
    first = spec_with()
    other_key = first.model_copy(update={"idempotency_key": "k2"})
    other_team = first.model_copy(update={"team": "fraud"})

    assert idempotency_token(first) == idempotency_token(first.model_copy())
    assert len(idempotency_token(first)) == 64
    assert len({idempotency_token(s) for s in (first, other_key, other_team)}) == 3


def test_no_wheel_setting_means_no_library() -> None:
    settings = SETTINGS.model_copy(update={"wheel": None})
    assert "libraries" not in build_submit_request(spec_with(), settings)["tasks"][0]


@pytest.mark.parametrize(
    "wheel",
    [
        "/Volumes/main/ml_assets/wheels/ml_assets-1.4-py3-none-any.whl",
        "/Workspace/Shared/wheels/ml_assets-1.4-py3-none-any.whl",
        "s3://acme-wheels/ml_assets-1.4-py3-none-any.whl",
    ],
)
def test_a_wheel_in_a_volume_the_workspace_or_cloud_storage_is_taken(wheel: str) -> None:
    settings = DatabricksSettings(wheel=wheel)
    assert build_submit_request(spec_with(), settings)["tasks"][0]["libraries"] == [{"whl": wheel}]


@pytest.mark.parametrize(
    "wheel",
    [
        "dbfs:/wheels/ml_assets-1.4-py3-none-any.whl",
        "/Volumes/main/ml_assets/ml_assets-1.4-py3-none-any.whl",  # no volume
        "/Volumes/main/ml_assets/wheels/ml_assets-1.4.tar.gz",
    ],
)
def test_a_dbfs_root_wheel_is_refused_when_the_settings_load(wheel: str) -> None:
    with pytest.raises(ValidationError, match="disabled by default from Databricks Runtime 15"):
        load_backend("databricks", {"wheel": wheel})


def test_the_default_wheel_is_a_unity_catalog_volume_path() -> None:
    wheel = DatabricksSettings().wheel
    assert wheel is not None and wheel.startswith("/Volumes/") and wheel.endswith(".whl")
    assert len(wheel.split("/")) >= 6  # /Volumes/<catalog>/<schema>/<volume>/<file>


@pytest.mark.parametrize(
    ("resources", "node_type"),
    [
        (Resources(), "m5.xlarge"),
        (Resources(cpu=4, memory_gb=24), "i3.xlarge"),
        (Resources(cpu=6, memory_gb=8), "m5.2xlarge"),
        (Resources(cpu=16, memory_gb=100), "i3.4xlarge"),
        (Resources(gpu_count=1, gpu_type="nvidia-tesla-t4"), "g4dn.xlarge"),
        (Resources(gpu_count=1), "g4dn.xlarge"),
        (Resources(gpu_count=2, gpu_type="t4"), "g4dn.12xlarge"),
        (Resources(gpu_count=1, gpu_type="T4", cpu=8), "g4dn.4xlarge"),
        (Resources(gpu_count=1, gpu_type="nvidia-a10g"), "g5.xlarge"),
        (Resources(gpu_count=8, gpu_type="a10g"), "g5.48xlarge"),
        (Resources(gpu_count=1, gpu_type="nvidia-tesla-v100"), "p3.2xlarge"),
        (Resources(gpu_count=4, gpu_type="nvidia-tesla-v100"), "p3.8xlarge"),
        (Resources(gpu_count=8, gpu_type="nvidia-tesla-a100"), "p4d.24xlarge"),
        (Resources(gpu_count=2, gpu_type="nvidia-a100-80gb"), "p4de.24xlarge"),
        (Resources(gpu_count=8, gpu_type="nvidia-h100-80gb"), "p5.48xlarge"),
    ],
)
def test_node_type_table(resources: Resources, node_type: str) -> None:
    request = build_submit_request(spec_with(resources), SETTINGS)
    cluster = request["tasks"][0]["new_cluster"]

    assert cluster["node_type_id"] == node_type
    expected = "15.4.x-gpu-ml-scala2.12" if resources.gpu_count else "15.4.x-cpu-ml-scala2.12"
    assert cluster["spark_version"] == expected


def test_unknown_gpu_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU type 'nvidia-b200'.*a10g.*t4"):
        build_submit_request(spec_with(Resources(gpu_count=1, gpu_type="nvidia-b200")), SETTINGS)


def node_type_for(resources: Resources, overrides: dict[str, str] | None = None) -> str:
    settings = DatabricksSettings(machine_types=overrides or {})
    return settings.machine(NODE_TYPES, resources, "Databricks").name


def test_requests_beyond_every_node_are_refused() -> None:
    with pytest.raises(ValueError, match="16 x t4 GPUs"):
        node_type_for(Resources(gpu_count=16, gpu_type="t4"))
    with pytest.raises(ValueError, match="500 vCPUs"):
        node_type_for(Resources(cpu=500))


def test_node_types_setting_overrides_the_table() -> None:
    overrides = {
        "cpu": "Standard_D4ds_v5",
        "nvidia-tesla-t4:1": "Standard_NC4as_T4_v3",
        "t4:4": "Standard_NC64as_T4_v3",
        "nvidia-b200:8": "p6-b200.48xlarge",
    }

    assert node_type_for(Resources(cpu=30), overrides) == "Standard_D4ds_v5"
    assert node_type_for(Resources(gpu_count=1, gpu_type="t4"), overrides) == "Standard_NC4as_T4_v3"
    assert node_type_for(Resources(gpu_count=3, gpu_type="t4"), overrides) == (
        "Standard_NC64as_T4_v3"
    )
    assert node_type_for(Resources(gpu_count=8, gpu_type="t4"), overrides) == "g4dn.metal"
    assert node_type_for(Resources(gpu_count=8, gpu_type="b200"), overrides) == "p6-b200.48xlarge"


# --- against the fake -------------------------------------------------------------------------


@pytest.fixture
def start_fake(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FakeDatabricks]]:
    """``start_fake(faults=None)``: a running ``FakeDatabricks``, the one workspace the SDK sees."""
    fakes: list[FakeDatabricks] = []

    def start(faults: Faults | None = None) -> FakeDatabricks:
        fake = FakeDatabricks(
            tmp_path / f"databricks{len(fakes)}",
            faults=faults,
            job_env=compiled_job_env(tmp_path_factory),
        ).start()
        fakes.append(fake)
        point_sdk_at(fake, monkeypatch, tmp_path)
        return fake

    yield start
    for fake in fakes:
        fake.stop()


def test_the_fake_receives_exactly_the_built_request_and_no_secret(
    start_fake: Callable[..., FakeDatabricks],
) -> None:
    fake = start_fake()
    settings = settings_for(fake)
    spec = databricks_spec(py(write_output({"ok": 1})), "request-check")

    handle = settings.get_backend().submit(spec)

    assert fake.submitted == [build_submit_request(spec, settings)]
    assert fake.token not in json.dumps(fake.submitted) + handle.to_json()
    assert handle.details["run_id"] == int(handle.job_id)
    assert handle.details["task_run_id"] == fake.runs[int(handle.job_id)].task_run_id


def test_the_fake_receives_the_spec_image(start_fake: Callable[..., FakeDatabricks]) -> None:
    fake = start_fake()
    spec = databricks_spec(["true"], "image").model_copy(update={"image": "ghcr.io/team/trainer:7"})

    settings_for(fake).get_backend().submit(spec)

    (body,) = fake.submitted
    assert body["tasks"][0]["new_cluster"]["docker_image"] == {"url": "ghcr.io/team/trainer:7"}


def test_one_poll_of_30_running_jobs_pages_through_runs_list_only(
    start_fake: Callable[..., FakeDatabricks],
    wait_for: WaitFor,
) -> None:
    fake = start_fake()
    # A long sync interval keeps the 30 staged wrappers from loading databricks-sdk.
    backend = settings_for(fake, page_size=7, sync_seconds=600).get_backend()
    handles = [
        backend.submit(databricks_spec(["sleep", "300"], f"budget-{index}")) for index in range(30)
    ]
    wait_for(backend, handles, until=lambda status: status.state == JobState.RUNNING)

    fake.reset_counts()
    statuses = backend.poll(handles)

    assert {status.state for status in statuses.values()} == {JobState.RUNNING}
    assert fake.total_calls() == fake.calls_to("runs/list") == math.ceil(30 / 7)


def test_count_poll_calls_for_a_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))

    measured = count_poll_calls(60)

    assert measured["jobs"] == 60
    assert measured["states"] == {"queued": 60}
    assert measured["calls"] == 3
    assert list(measured["by_route"]) == [r"GET /api/2\.[12]/jobs/runs/list"]


def test_submit_and_poll_survive_faults_without_duplicate_runs(
    start_fake: Callable[..., FakeDatabricks],
    wait_for: WaitFor,
) -> None:
    # Faults hit the Jobs API only: DBFS is the transport's client (and each fault costs a
    # second of the SDK's back-off, which would slow the runs' uploads, not test this backend).
    faults = Faults(error_rate=0.2, throttle_rate=0.1, drop_rate=0.05, seed=3, exempt="/dbfs/")
    fake = start_fake(faults=faults)
    backend = settings_for(fake).get_backend()
    specs = [
        databricks_spec(py(write_output({"index": index})), f"faulty-{index}") for index in range(3)
    ]
    # A proxy loses the answers of the first two submits after the runs were created, and of
    # one list call: the backend's own 500 retries must neither fail nor start a second run.
    fake.lose_answers("runs/submit", times=2)
    fake.lose_answers("runs/list", times=1)

    handles = [backend.submit(spec) for spec in specs]
    again = [settings_for(fake).get_backend().submit(spec) for spec in specs]
    statuses = wait_for(backend, handles, timeout=45.0)

    assert again == handles
    assert len(fake.runs) == len(specs) == len({handle.job_id for handle in handles})
    for index, handle in enumerate(handles):
        status = statuses[handle.job_id]
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.result_uri == handle.output_uri
        assert transport.read_json(transport.join(status.result_uri, OUTPUT_FILE)) == {
            "index": index
        }
    assert set(faults.injected) == {"drop", "throttle", "error"}


def test_a_run_databricks_does_not_know_fails_alone(
    start_fake: Callable[..., FakeDatabricks],
) -> None:
    fake = start_fake()
    backend = settings_for(fake).get_backend()
    real = backend.submit(databricks_spec(py(write_output({"ok": 1})), "known"))
    ghost = real.model_copy(update={"job_id": "999999", "details": {"run_id": 999999}})

    statuses = backend.poll([real, ghost])

    assert statuses[real.job_id].state in (JobState.QUEUED, JobState.RUNNING)
    assert statuses[ghost.job_id].state == JobState.FAILED
    assert "999999" in statuses[ghost.job_id].message
    backend.cancel(ghost)  # nothing to cancel: no error


def test_logs_of_a_running_job_come_from_the_staged_log(
    start_fake: Callable[..., FakeDatabricks],
    tmp_path: Path,
    wait_for: WaitFor,
) -> None:
    fake = start_fake()
    backend = settings_for(fake, sync_seconds=0.2).get_backend()
    go = tmp_path / "go"
    command = py("print('warming up', flush=True)", wait_for_file(go), write_output({"ok": 1}))
    handle = backend.submit(databricks_spec(command, "logs"))

    deadline = time.monotonic() + 30
    while "warming up" not in backend.logs(handle):
        assert time.monotonic() < deadline, "the staged job.log never showed the output"
        time.sleep(0.2)
    assert backend.poll([handle])[handle.job_id].state == JobState.RUNNING

    go.touch()
    assert wait_for(backend, [handle])[handle.job_id].state == JobState.SUCCEEDED
    output = fake.calls_to("runs/get-output")
    assert "warming up" in backend.logs(handle)
    assert fake.calls_to("runs/get-output") == output + 1


def test_yaml_settings_build_the_backend_with_the_token_from_env(
    start_fake: Callable[..., FakeDatabricks], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = start_fake()
    settings = {
        "host": fake.url,
        "token": {"env": "TEAM_DATABRICKS_TOKEN"},
        "storage_root": STORAGE_ROOT,
        "wheel": "/Volumes/main/ml_assets/wheels/ml_assets-0.1.0-py3-none-any.whl",
        "machine_types": {"nvidia-tesla-t4:1": "g4dn.2xlarge"},
        "page_size": 10,
    }
    monkeypatch.setenv("TEAM_DATABRICKS_TOKEN", fake.token)

    backend = load_backend("databricks", settings)

    assert isinstance(backend, DatabricksBackend)
    assert backend.settings.token == fake.token
    assert backend.settings.page_size == 10
    spec = spec_with(Resources(gpu_count=1, gpu_type="nvidia-tesla-t4"))
    handle = backend.submit(spec)
    assert fake.runs[int(handle.job_id)].task["new_cluster"]["node_type_id"] == "g4dn.2xlarge"

    from databricks.sdk.errors import Unauthenticated

    wrong = DatabricksSettings(host=fake.url, token="not-the-token").get_backend()
    with pytest.raises(Unauthenticated):
        wrong.submit(spec)
    with pytest.raises(ValidationError, match="page_size"):
        load_backend("databricks", {**settings, "page_size": 26})


def test_the_fake_dbfs_serves_the_sdk_dbfs_api(start_fake: Callable[..., FakeDatabricks]) -> None:
    import base64
    import io

    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import NotFound, ResourceAlreadyExists

    fake = start_fake()
    dbfs = WorkspaceClient().dbfs
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several blocks up, several reads down

    dbfs.mkdirs("/data/in")
    dbfs.upload("/data/in/blob.bin", io.BytesIO(payload))
    dbfs.put("/data/in/small.txt", contents=base64.b64encode(b"hi").decode())

    with dbfs.download("/data/in/blob.bin") as stream:
        assert stream.read() == payload
    assert (fake.dbfs_root / "data/in/small.txt").read_bytes() == b"hi"
    assert dbfs.get_status("/data/in").is_dir
    with pytest.raises(ResourceAlreadyExists):
        dbfs.upload("/data/in/blob.bin", io.BytesIO(b"again"))
    dbfs.delete("/data", recursive=True)
    assert not dbfs.exists("/data/in/blob.bin")
    with pytest.raises(NotFound):
        dbfs.download("/data/in/blob.bin")
    assert fake.calls_to("dbfs/add-block") == 3
