"""Behaviour specific to the Kubernetes backend: the Job manifest builder (pure), and the backend
through the official client against ``FakeKubernetes`` (faults, call budget, settings, cancel
bookkeeping, logs, S3 outputs)."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from ml_assets_testing.fake_kubernetes import (
    JOB,
    JOBS,
    POD_LOG,
    PODS,
    FakeKubernetes,
    count_poll_calls,
    job_spec,
)
from ml_assets_testing.fakes import Faults
from ml_assets_testing.job_scripts import OUTPUT_FILE, py, wait_for_file, write_env, write_output

from ml_assets import transport
from ml_assets.backends import load_backend, remote
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus, Resources
from ml_assets.backends.kubernetes import (
    CANCELLED_MARKER,
    GPU_NODE_SELECTORS,
    MANAGED_BY_LABEL,
    JobNameConflict,
    KubernetesBackend,
    KubernetesSettings,
    build_job_body,
    cpu_quantity,
    memory_quantity,
    native_job,
)
from ml_assets.tags import (
    KUBERNETES_KEY_ANNOTATION,
    KUBERNETES_KEY_HASH_LABEL,
    KUBERNETES_MODEL_LABEL,
    KUBERNETES_OUTPUT_ANNOTATION,
    KUBERNETES_TEAM_LABEL,
)

if TYPE_CHECKING:
    from conftest import WaitFor

pytestmark = pytest.mark.timeout(60)

NAMESPACE = "ml-jobs"
LIST_JOBS = f"GET {JOBS}"


def settings(**overrides: Any) -> KubernetesSettings:
    values: dict[str, Any] = {
        "host": "http://127.0.0.1:1",
        "namespace": NAMESPACE,
        "image_uri": "registry.example/ml-assets:1.2",
        "storage_root": "s3://bucket/ml",
        "sync_seconds": 2.0,
        **overrides,
    }
    return KubernetesSettings(**values)


def pod_spec(body: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = body["spec"]["template"]["spec"]
    return spec


def container(body: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = pod_spec(body)["containers"][0]
    return value


# -- the manifest builder (no network) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "expected"), [(1.0, "1"), (4, "4"), (0.5, "500m"), (2.25, "2250m"), (0.0001, "1m")]
)
def test_cpu_quantity(cpu: float, expected: str) -> None:
    assert cpu_quantity(cpu) == expected


@pytest.mark.parametrize(
    ("memory_gb", "expected"), [(2.0, "2Gi"), (16, "16Gi"), (0.5, "512Mi"), (1.5, "1536Mi")]
)
def test_memory_quantity(memory_gb: float, expected: str) -> None:
    assert memory_quantity(memory_gb) == expected


def test_cpu_job_asks_for_cpu_and_memory_only() -> None:
    spec = job_spec("s3://bucket/ml", ["train"], "k", resources=Resources(cpu=0.5, memory_gb=1.5))

    body = build_job_body(spec, settings())

    amounts = {"cpu": "500m", "memory": "1536Mi"}
    assert container(body)["resources"] == {"requests": amounts, "limits": amounts}
    assert "nodeSelector" not in pod_spec(body)
    assert "tolerations" not in pod_spec(body)


def test_gpu_job_gets_count_node_selector_and_tolerations() -> None:
    resources = Resources(
        cpu=8,
        memory_gb=32,
        gpu_count=2,
        gpu_type="nvidia-tesla-t4",
        node_selector={"pool": "training"},
        tolerations=[
            {
                "key": "dedicated",
                "operator": "Equal",
                "value": "ml",
                "effect": "NoExecute",
                "tolerationSeconds": "60",
            }
        ],
    )
    body = build_job_body(job_spec("s3://b/ml", ["train"], "k", resources=resources), settings())

    amounts = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert container(body)["resources"] == {"requests": amounts, "limits": amounts}
    assert pod_spec(body)["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
        "pool": "training",
    }
    assert pod_spec(body)["tolerations"] == [
        {
            "key": "dedicated",
            "operator": "Equal",
            "value": "ml",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]


def test_gpus_of_any_type_get_the_toleration_but_no_selector() -> None:
    resources = Resources(gpu_count=1)
    body = build_job_body(job_spec("s3://b/ml", ["t"], "k", resources=resources), settings())

    assert container(body)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nodeSelector" not in pod_spec(body)
    assert pod_spec(body)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_gpu_node_selectors_setting_replaces_the_default_table() -> None:
    table = {"nvidia-a100-80gb": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}
    custom = settings(gpu_node_selectors=table)
    a100 = Resources(gpu_count=8, gpu_type="nvidia-a100-80gb")

    body = build_job_body(job_spec("s3://b/ml", ["t"], "k", resources=a100), custom)

    assert pod_spec(body)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    t4 = Resources(gpu_count=1, gpu_type="nvidia-tesla-t4")
    with pytest.raises(ValueError, match="known types: a100-80gb "):
        build_job_body(job_spec("s3://b/ml", ["t"], "k", resources=t4), custom)


def test_unknown_gpu_type_names_the_type_and_the_known_ones() -> None:
    resources = Resources(gpu_count=1, gpu_type="tpu-v9")

    with pytest.raises(ValueError) as raised:
        build_job_body(job_spec("s3://b/ml", ["t"], "k", resources=resources), settings())

    message = str(raised.value)
    assert "unknown GPU type 'tpu-v9'" in message
    assert all(known in message for known in GPU_NODE_SELECTORS)
    assert "gpu_node_selectors" in message


def test_gpu_type_without_gpus_is_an_error() -> None:
    resources = Resources(gpu_type="nvidia-l4")
    with pytest.raises(ValueError, match="gpu_count is 0"):
        build_job_body(job_spec("s3://b/ml", ["t"], "k", resources=resources), settings())


def test_name_labels_and_annotations_follow_the_idempotency_key() -> None:
    spec = job_spec("s3://b/ml", ["t"], "fraud/churn_model/run-1/1", labels={"cost-center": "r&d"})
    body = build_job_body(spec, settings())
    again = build_job_body(spec.model_copy(), settings())
    other = build_job_body(spec.model_copy(update={"idempotency_key": "other"}), settings())

    assert body == again
    assert body["metadata"]["name"] == spec.job_name == "fraud-churn-model-" + spec.job_name[-12:]
    assert other["metadata"]["name"] != spec.job_name
    labels = body["metadata"]["labels"]
    assert (
        labels[KUBERNETES_TEAM_LABEL] == "fraud" and labels[KUBERNETES_MODEL_LABEL] == "churn_model"
    )
    assert labels[MANAGED_BY_LABEL] == "ml-assets"
    assert labels["cost-center"] == "r-d"  # made a valid label value
    assert (
        labels[KUBERNETES_KEY_HASH_LABEL] != other["metadata"]["labels"][KUBERNETES_KEY_HASH_LABEL]
    )
    assert body["spec"]["template"]["metadata"]["labels"] == labels
    assert body["metadata"]["annotations"] == {
        KUBERNETES_KEY_ANNOTATION: "fraud/churn_model/run-1/1",
        KUBERNETES_OUTPUT_ANNOTATION: spec.output_uri,
    }
    assert body["metadata"]["namespace"] == NAMESPACE


def test_invalid_label_key_is_refused() -> None:
    spec = job_spec("s3://b/ml", ["t"], "k", labels={"bad key!": "x"})
    with pytest.raises(ValueError, match="'bad key!' is not a valid label key"):
        build_job_body(spec, settings())


# -- what a team's YAML may say, checked when it loads (the API server's documented rules) --------


@pytest.mark.parametrize(
    ("toleration", "problem"),
    [
        ({"key": "gpu", "operator": "Exists", "value": "yes"}, "value: must be empty"),
        (
            {"key": "gpu", "value": "a", "effect": "NoSchedule", "tolerationSeconds": 30},
            "tolerationSeconds: only allowed with effect 'NoExecute'",
        ),
        ({"key": "gpu", "effect": "NoRun"}, "effect"),
        ({"key": "gpu", "operator": "In", "value": "a"}, "operator"),
        ({"key": "gpu", "value": "a", "colour": "red"}, "colour"),
        ({"value": "a"}, "must be 'Exists' when key is empty"),
        ({"key": "bad key", "operator": "Exists"}, "not a valid label key"),
        ({"key": "gpu", "value": "not valid!"}, "not a valid label value"),
    ],
)
def test_a_toleration_the_api_server_would_refuse_fails_at_load(
    toleration: dict[str, Any], problem: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        Resources(tolerations=[toleration])


def test_valid_tolerations_load_and_reach_the_pod_as_written() -> None:
    tolerations = [
        {"operator": "Exists"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 120},
    ]

    body = build_job_body(
        job_spec("s3://b/ml", ["t"], "k", resources=Resources(tolerations=tolerations)), settings()
    )

    assert pod_spec(body)["tolerations"] == [
        {"operator": "Exists"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoExecute",
            "tolerationSeconds": 120,
        },
    ]


def test_node_selector_labels_are_checked_at_load() -> None:
    with pytest.raises(pydantic.ValidationError, match="'pool name' is not a valid label key"):
        Resources(node_selector={"pool name": "gpu"})
    with pytest.raises(pydantic.ValidationError, match="is not a valid label value"):
        Resources(node_selector={"pool": "a/b"})
    with pytest.raises(pydantic.ValidationError, match="not a valid label value"):
        settings(gpu_node_selectors={"t4": {"pool": "t4 nodes"}})


@pytest.mark.parametrize("quantity", ["20Gi", "500m", "1", "1.5", ".5Ki", "1e3", "2E-1", "+3M"])
def test_a_quantity_in_the_grammar_is_taken(quantity: str) -> None:
    body = build_job_body(job_spec("s3://b/ml", ["t"], "k"), settings(ephemeral_storage=quantity))

    assert container(body)["resources"]["requests"]["ephemeral-storage"] == quantity
    assert container(body)["resources"]["limits"]["ephemeral-storage"] == quantity


@pytest.mark.parametrize("quantity", ["4 GB", "4GB", "Gi", "4gi", "", "1.2.3", "e3", "4Gi "])
def test_a_quantity_outside_the_grammar_fails_at_load(quantity: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="is not a Kubernetes quantity"):
        settings(ephemeral_storage=quantity)


# -- Kueue ----------------------------------------------------------------------------------------


def test_a_kueue_queue_label_reaches_the_job_and_a_suspended_job_is_queued(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake(hold="running")
    backend = fake.settings(storage_root).get_backend()
    spec = job_spec(
        storage_root, ["never", "run"], "kueue", labels={"kueue.x-k8s.io/queue-name": "fraud-gpu"}
    )
    handle = backend.submit(spec)
    served = json.loads(backend._batch.list_namespaced_job(NAMESPACE, _preload_content=False).data)
    (item,) = served["items"]
    assert item["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "fraud-gpu"
    assert backend.poll([handle])[handle.job_id].state == JobState.RUNNING

    # Kueue's webhook creates a queued Job with spec.suspend set, and keeps it so until admitted.
    item["spec"]["suspend"] = True
    item["status"] = {}
    status = backend.status(handle, backend.details(handle), native_job(item))

    assert status.state == JobState.QUEUED
    assert status.message == "suspended by Kueue in LocalQueue fraud-gpu"
    del item["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    assert native_job(item).message == "suspended (spec.suspend is true)"
    item["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert native_job(item).state == "Complete"  # an ended job is no longer queued


def test_job_runs_the_staged_command_once_with_the_spec_env_only() -> None:
    spec = job_spec("s3://b/ml", ["python", "-m", "trainer"], "k", env={"B": "2", "A": "1"})
    custom = settings(
        token="do-not-leak",
        service_account="trainer-sa",
        image_pull_policy="Always",
        ttl_seconds_after_finished=600,
    )

    body = build_job_body(spec, custom)

    assert container(body)["command"] == remote.staged_command(spec, 2.0)
    assert container(body)["command"][:3] == ["python", "-m", "ml_assets.training.stage"]
    assert container(body)["command"][-4:] == ["--", "python", "-m", "trainer"]
    assert "args" not in container(body)
    assert container(body)["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert container(body)["image"] == "registry.example/ml-assets:1.2"
    assert container(body)["imagePullPolicy"] == "Always"
    assert container(body)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert body["spec"]["backoffLimit"] == 0
    assert body["spec"]["ttlSecondsAfterFinished"] == 600
    assert pod_spec(body)["restartPolicy"] == "Never"
    assert pod_spec(body)["serviceAccountName"] == "trainer-sa"
    assert "do-not-leak" not in json.dumps(body)


def test_the_spec_image_and_working_dir_go_into_the_container() -> None:
    spec = job_spec(
        "s3://b/ml", ["train"], "k", image="ghcr.io/team/trainer:7", working_dir="/opt/team"
    )

    body = build_job_body(spec, settings())

    assert container(body)["image"] == "ghcr.io/team/trainer:7"
    assert container(body)["workingDir"] == "/opt/team"
    assert "workingDir" not in container(
        build_job_body(job_spec("s3://b/ml", ["t"], "k"), settings())
    )


def test_an_unstaged_job_runs_its_command_as_it_is_with_its_output_uri() -> None:
    spec = job_spec(
        "s3://b/ml", ["/opt/train.sh", "--epochs", "3"], "k", staged=False, env={"A": "1"}
    )

    body = build_job_body(spec, settings())

    assert container(body)["command"] == ["/opt/train.sh", "--epochs", "3"]
    assert container(body)["env"] == [
        {"name": "A", "value": "1"},
        {"name": "ML_ASSETS_OUTPUT_URI", "value": spec.output_uri},
    ]


def test_shared_volume_claim_is_mounted_at_a_local_storage_root(tmp_path: Path) -> None:
    root = str(tmp_path / "shared")
    body = build_job_body(
        job_spec(root, ["t"], "k"), settings(storage_root=root, shared_volume_claim="ml-outputs")
    )

    assert container(body)["volumeMounts"] == [{"name": "ml-assets-storage", "mountPath": root}]
    assert pod_spec(body)["volumes"] == [
        {"name": "ml-assets-storage", "persistentVolumeClaim": {"claimName": "ml-outputs"}}
    ]
    with pytest.raises(ValueError, match="shared_volume_claim needs storage_root to be a path"):
        build_job_body(job_spec("s3://b/ml", ["t"], "k"), settings(shared_volume_claim="x"))


def test_the_backend_module_imports_no_kubernetes_sdk() -> None:
    code = "import sys, ml_assets.backends.kubernetes; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- against the fake API server ------------------------------------------------------------------


@pytest.fixture
def storage_root(tmp_path: Path) -> str:
    return str(tmp_path / "storage")


@pytest.fixture
def start_fake(tmp_path: Path) -> Iterator[Callable[..., FakeKubernetes]]:
    """``start_fake(**options)``: a running ``FakeKubernetes``, stopped (pods killed) at the end."""
    fakes: list[FakeKubernetes] = []

    def start(**options: Any) -> FakeKubernetes:
        fake = FakeKubernetes(tmp_path / f"fake{len(fakes)}", **options).start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.stop()


def test_submit_and_poll_survive_faults_and_start_each_job_once(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, wait_for: WaitFor
) -> None:
    faults = Faults(error_rate=0.2, throttle_rate=0.1, drop_rate=0.05, seed=7)
    # Two creates are also stored but answered 504, so their retries meet 409 AlreadyExists.
    fake = start_fake(faults=faults, create_timeouts=2)
    backend = fake.settings(storage_root).get_backend()
    specs = [
        job_spec(storage_root, py(write_output({"index": index})), f"faults-{index}")
        for index in range(6)
    ]

    handles = [backend.submit(spec) for spec in specs]
    assert [backend.submit(spec) for spec in specs] == handles
    statuses = wait_for(backend, handles)

    for index, handle in enumerate(handles):
        status = statuses[handle.job_id]
        assert status.state == JobState.SUCCEEDED, status
        assert status.result_uri == handle.output_uri
        assert transport.read_json(transport.join(handle.output_uri, OUTPUT_FILE)) == {
            "index": index
        }
    assert fake.job_names(NAMESPACE) == sorted(spec.job_name for spec in specs)
    assert {name: fake.created[f"{NAMESPACE}/{name}"] for name in fake.job_names(NAMESPACE)} == {
        spec.job_name: 1 for spec in specs
    }
    assert fake.create_timeouts == 0
    assert {"drop", "throttle", "error"} <= set(faults.injected)


def test_one_poll_lists_each_team_once_per_page(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake(pending_s=1e9)  # pods never start: in flight, and no processes to run
    backend = fake.settings(storage_root, page_size=7).get_backend()
    handles = [
        backend.submit(job_spec(storage_root, ["sleep", "300"], f"budget-{index}"))
        for index in range(30)
    ]
    handles.append(backend.submit(job_spec(storage_root, ["sleep", "300"], "r", team="risk")))
    fake.reset_counts()

    statuses = backend.poll(handles)

    assert {status.state for status in statuses.values()} == {JobState.QUEUED}
    assert len(statuses) == 31
    # 30 fraud jobs in pages of 7, and one page for risk; no per-job reads, no storage reads.
    assert dict(fake.calls) == {LIST_JOBS: math.ceil(30 / 7) + 1}


def test_count_poll_calls_measures_one_poll_of_running_jobs() -> None:
    measured = count_poll_calls(5, page_size=2)

    assert measured["jobs"] == 5
    assert measured["by_route"] == {LIST_JOBS: 3}
    assert measured["calls"] == 3
    assert measured["states"] == {"running": 5}


def test_load_backend_from_team_yaml_settings_with_an_env_token(
    start_fake: Callable[..., FakeKubernetes],
    storage_root: str,
    wait_for: WaitFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = start_fake(token="t0ken-from-env")
    monkeypatch.setenv("FRAUD_K8S_TOKEN", "t0ken-from-env")
    yaml_settings = {
        "host": fake.url,
        "token": {"env": "FRAUD_K8S_TOKEN"},
        "namespace": "fraud-training",
        "image_uri": "ml-assets:test",
        "storage_root": storage_root,
        "sync_seconds": 0.5,
        "gpu_node_selectors": {"nvidia-l4": {"pool": "l4"}},
        "page_size": 50,
    }

    backend = load_backend("kubernetes", yaml_settings)

    assert isinstance(backend, KubernetesBackend)
    assert backend.settings.token == "t0ken-from-env"
    assert backend.settings.gpu_node_selectors == {"nvidia-l4": {"pool": "l4"}}
    gpu = Resources(gpu_count=1, gpu_type="nvidia-l4")
    spec = job_spec(
        storage_root, py(write_env(["LEVEL"])), "yaml", env={"LEVEL": "3"}, resources=gpu
    )
    handle = backend.submit(spec)
    status = wait_for(backend, [handle])[handle.job_id]
    assert status.state == JobState.SUCCEEDED, status.message
    assert transport.read_json(transport.join(spec.output_uri, OUTPUT_FILE)) == {"LEVEL": "3"}
    manifest = fake.job_manifest("fraud-training", spec.job_name)
    assert pod_spec(manifest)["nodeSelector"] == {"pool": "l4"}
    assert "t0ken-from-env" not in json.dumps(manifest) + handle.to_json()
    assert "t0ken-from-env" not in backend.logs(handle)

    monkeypatch.setenv("FRAUD_K8S_TOKEN", "wrong")
    unauthorized = load_backend("kubernetes", yaml_settings)
    with pytest.raises(ApiException, match=r"^\(401\)"):
        unauthorized.poll([handle])
    with pytest.raises(pydantic.ValidationError, match="image_pull_policy"):
        load_backend("kubernetes", {**yaml_settings, "image_pull_policy": "Sometimes"})


def test_kubeconfig_and_context_select_the_api_server(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, tmp_path: Path
) -> None:
    fake = start_fake(token="kubeconfig-token")
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "fake", "cluster": {"server": fake.url}},
                    {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:1"}},
                ],
                "users": [{"name": "trainer", "user": {"token": "kubeconfig-token"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "trainer"}},
                    {"name": "nowhere", "context": {"cluster": "nowhere", "user": "trainer"}},
                ],
                "current-context": "nowhere",
            }
        )
    )
    backend = fake.settings(
        storage_root, host=None, kubeconfig=str(kubeconfig), context="fake"
    ).get_backend()

    handle = backend.submit(job_spec(storage_root, ["sleep", "30"], "kubeconfig"))

    assert fake.job_names(NAMESPACE) == [handle.job_id]
    assert backend.poll([handle])[handle.job_id].state in (JobState.QUEUED, JobState.RUNNING)


def test_no_api_server_configured_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RuntimeError, match=r"found no API server: set backends\.kubernetes\.host"):
        settings(host=None).get_backend()


def test_a_cancelled_job_is_never_started_again(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, wait_for: WaitFor
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root).get_backend()
    spec = job_spec(storage_root, ["sleep", "30"], "cancel-resubmit")
    handle = backend.submit(spec)

    backend.cancel(handle)

    assert fake.job_names(NAMESPACE) == [] and fake.pod_names(NAMESPACE) == []
    assert transport.exists(transport.join(spec.output_uri, CANCELLED_MARKER))
    # Kubernetes would accept the name again; the marker keeps the key from running twice.
    assert backend.submit(spec) == handle
    assert fake.job_names(NAMESPACE) == []
    assert fake.created[f"{NAMESPACE}/{spec.job_name}"] == 1
    assert wait_for(backend, [handle])[handle.job_id].state == JobState.CANCELLED


def test_jobs_removed_by_ttl_report_their_staged_outcome(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, wait_for: WaitFor
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root, ttl_seconds_after_finished=0).get_backend()
    good = job_spec(storage_root, py(write_output({"ok": True})), "ttl-good")
    bad = job_spec(storage_root, py("raise RuntimeError('ttl-bad')"), "ttl-bad")
    handles = [backend.submit(good), backend.submit(bad)]

    statuses = wait_for(backend, handles)
    deadline = time.monotonic() + 10
    while fake.job_names(NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.job_names(NAMESPACE) == []  # the fake's TTL controller removed both
    statuses = backend.poll(handles)

    assert statuses[good.job_name].state == JobState.SUCCEEDED
    assert statuses[good.job_name].result_uri == good.output_uri
    assert statuses[bad.job_name].state == JobState.FAILED
    assert "RuntimeError: ttl-bad" in statuses[bad.job_name].message
    assert backend.submit(good) == handles[0]
    assert fake.created[f"{NAMESPACE}/{good.job_name}"] == 1


def test_a_job_runs_in_its_working_dir_and_its_image_is_requested(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, tmp_path: Path, wait_for: WaitFor
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root).get_backend()
    workdir = tmp_path / "workdir"
    command = py(
        "import os, pathlib",
        "pathlib.Path('here.txt').write_text('made here')",
        "from ml_assets import transport",
        "out = os.environ['ML_ASSETS_OUTPUT_URI']",
        "transport.write_json(transport.join(out, 'cwd.json'), {'cwd': os.getcwd()})",
    )
    spec = job_spec(
        storage_root, command, "workdir", image="ghcr.io/team/trainer:7", working_dir=str(workdir)
    )

    handle = backend.submit(spec)
    status = wait_for(backend, [handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    manifest = fake.job_manifest(NAMESPACE, spec.job_name)
    assert container(manifest)["workingDir"] == str(workdir)
    assert container(manifest)["image"] == "ghcr.io/team/trainer:7"
    assert transport.read_json(transport.join(spec.output_uri, "cwd.json")) == {"cwd": str(workdir)}
    assert (workdir / "here.txt").read_text() == "made here"


def test_a_job_removed_after_it_ran_unstaged_is_reported_by_its_messages(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, wait_for: WaitFor
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root, ttl_seconds_after_finished=0).get_backend()
    # An unstaged job writes no job.log; its Pipes messages show it ran.
    command = py(
        "import os, pathlib",
        "out = pathlib.Path(os.environ['ML_ASSETS_OUTPUT_URI'])",
        "out.mkdir(parents=True, exist_ok=True)",
        "(out / 'messages.jsonl').write_text('{}\\n')",
    )
    spec = job_spec(storage_root, command, "ttl-unstaged", staged=False)
    handle = backend.submit(spec)
    wait_for(backend, [handle])
    deadline = time.monotonic() + 10
    while fake.job_names(NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.job_names(NAMESPACE) == []

    status = backend.poll([handle])[handle.job_id]

    assert status.state == JobState.SUCCEEDED, status.message
    assert status.result_uri == spec.output_uri
    assert backend.submit(spec) == handle  # it ran: never again
    assert fake.created[f"{NAMESPACE}/{spec.job_name}"] == 1


def test_a_job_deleted_behind_our_back_fails_clearly(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake(pending_s=1e9)
    backend = fake.settings(storage_root).get_backend()
    handle = backend.submit(job_spec(storage_root, ["sleep", "30"], "deleted"))
    batch = k8s.BatchV1Api(k8s.ApiClient(k8s.Configuration(host=fake.url)))

    batch.delete_namespaced_job(handle.job_id, NAMESPACE, propagation_policy="Background")

    status = backend.poll([handle])[handle.job_id]
    assert status.state == JobState.FAILED
    assert f"{handle.job_id} is gone from namespace {NAMESPACE}" in status.message


def test_name_taken_by_another_key_is_a_conflict(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake(pending_s=1e9)
    backend = fake.settings(storage_root).get_backend()
    spec = job_spec(storage_root, ["sleep", "30"], "mine")
    squatter = build_job_body(
        spec.model_copy(update={"idempotency_key": "theirs"}), backend.settings
    )
    squatter["metadata"]["name"] = spec.job_name
    batch = k8s.BatchV1Api(k8s.ApiClient(k8s.Configuration(host=fake.url)))
    batch.create_namespaced_job(NAMESPACE, squatter)

    with pytest.raises(JobNameConflict, match="belongs to idempotency key 'theirs', not 'mine'"):
        backend.submit(spec)
    handle = JobHandle(
        backend="kubernetes",
        job_id=spec.job_name,
        idempotency_key="mine",
        output_uri=spec.output_uri,
        team=spec.team,
        details={"namespace": NAMESPACE},
    )
    assert "idempotency key 'theirs'" in backend.poll([handle])[handle.job_id].message
    with pytest.raises(JobNameConflict):
        backend.cancel(handle)
    assert fake.job_names(NAMESPACE) == [spec.job_name]


def test_logs_come_from_the_pod_then_from_the_staged_log(
    start_fake: Callable[..., FakeKubernetes],
    storage_root: str,
    tmp_path: Path,
    wait_for: WaitFor,
    wait_until: Callable[..., None],
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root).get_backend()
    go = tmp_path / "go"
    # A log line that is valid JSON must come back verbatim, not parsed by the client.
    command = py("print('{\"epoch\": 1}', flush=True)", wait_for_file(go, timeout=20))
    handle = backend.submit(job_spec(storage_root, command, "logs"))
    assert backend.logs(handle) in ("", '{"epoch": 1}')  # pending pod: 400, staged log is empty
    wait_for(backend, [handle], until=lambda status: status.state == JobState.RUNNING)
    wait_until(lambda: backend.logs(handle) == '{"epoch": 1}', what="the pod's log line")
    fake.reset_counts()

    assert backend.logs(handle, tail=1) == '{"epoch": 1}'
    assert fake.calls[f"GET {POD_LOG}"] == 1 and fake.calls[f"GET {PODS}"] == 1

    # The staged job.log is synced every 0.5 s; once it is there, the pod may go.
    wait_until(lambda: remote.read_log(handle.output_uri, 5) != "", what="the staged job.log")
    backend.cancel(handle)
    assert fake.pod_names(NAMESPACE) == []
    fake.reset_counts()
    assert backend.logs(handle) == '{"epoch": 1}'
    assert f"GET {POD_LOG}" not in fake.calls
    assert backend.logs(handle, tail=0) == ""


def test_cancel_of_a_gone_job_changes_nothing(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake()
    backend = fake.settings(storage_root).get_backend()
    spec = job_spec(storage_root, ["sleep", "30"], "never-submitted")
    handle = JobHandle(
        backend="kubernetes",
        job_id=spec.job_name,
        idempotency_key=spec.idempotency_key,
        output_uri=spec.output_uri,
        team=spec.team,
    )

    backend.cancel(handle)

    assert not transport.exists(transport.join(spec.output_uri, CANCELLED_MARKER))
    assert dict(fake.calls) == {f"GET {JOB}": 1}


def test_results_go_to_s3_and_read_back(
    start_fake: Callable[..., FakeKubernetes], wait_for: WaitFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        aws = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        # The transport keeps one S3 client per process; start from one that sees this endpoint.
        monkeypatch.setattr(transport, "_cache", {})
        boto3.client("s3").create_bucket(Bucket="ml-outputs")
        storage_root = "s3://ml-outputs/k8s"
        fake = start_fake(job_env=aws)
        backend = fake.settings(storage_root).get_backend()
        spec = job_spec(
            storage_root, py("print('to s3', flush=True)", write_output({"auc": 0.91})), "s3"
        )

        handle = backend.submit(spec)
        status = wait_for(backend, [handle])[handle.job_id]

        assert status.state == JobState.SUCCEEDED, status.message
        assert status.result_uri == spec.output_uri
        assert status.result_uri.startswith("s3://ml-outputs/k8s/jobs/fraud/churn_model/")
        assert transport.read_json(transport.join(status.result_uri, OUTPUT_FILE)) == {"auc": 0.91}
        assert "to s3" in remote.read_log(spec.output_uri, 10)
    finally:
        moto.stop()


# -- polling reads raw JSON -----------------------------------------------------------------------


def _model_class_status(backend: KubernetesBackend, handle: JobHandle, job: Any) -> Any:
    """A job's status as the poll decided it from the client's ``V1Job`` model before it read
    raw JSON (kept here verbatim as the reference)."""
    if job is None:
        return backend.gone(handle, backend.details(handle))
    owner = (job.metadata.annotations or {}).get(KUBERNETES_KEY_ANNOTATION) or ""
    if owner != handle.idempotency_key:
        return JobStatus(
            job_id=handle.job_id,
            state=JobState.FAILED,
            message=f"job {handle.job_id} now belongs to idempotency key {owner!r}",
        )
    condition = next(
        (
            c
            for c in (job.status and job.status.conditions) or []
            if c.status == "True" and c.type in ("Complete", "Failed")
        ),
        None,
    )
    if condition is not None and condition.type == "Complete":
        return remote.finished_status(handle.job_id, JobState.SUCCEEDED, handle.output_uri)
    if condition is not None:
        reason = ": ".join(part for part in (condition.reason, condition.message) if part)
        return remote.finished_status(
            handle.job_id,
            JobState.FAILED,
            handle.output_uri,
            f"Kubernetes job failed ({reason or 'no reason given'})",
        )
    status = job.status
    active = (status and status.active) or 0
    ready = status.ready if status else None
    if active and (ready is None or ready > 0):
        return JobStatus(job_id=handle.job_id, state=JobState.RUNNING)
    message = (
        "waiting for its pod to be scheduled and started"
        if active
        else "waiting for the job controller to create its pod"
    )
    return JobStatus(job_id=handle.job_id, state=JobState.QUEUED, message=message)


def _as_model(item: dict[str, Any]) -> Any:
    """One raw Job as the client's ``V1Job``, the way the client deserializes an answer."""

    class Answer:
        data = json.dumps(item)

    return k8s.ApiClient().deserialize(Answer(), "V1Job")


def test_poll_from_raw_json_matches_the_model_class_path(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    fake = start_fake(hold="pending")
    backend = fake.settings(storage_root, page_size=3).get_backend()
    spec = functools.partial(job_spec, storage_root, ["never", "run"])
    handles = {"queued": backend.submit(spec("queued"))}
    fake.hold = "running"
    for name in ("running", "succeeded", "failed"):
        handles[name] = backend.submit(spec(name))
    assert fake.end_held(NAMESPACE, [handles["succeeded"].job_id]) == [handles["succeeded"].job_id]
    fake.end_held(NAMESPACE, [handles["failed"].job_id], succeeded=False)
    handles["other team"] = backend.submit(spec("other team", team="risk"))
    stolen = backend.submit(spec("stolen"))
    handles["another key"] = stolen.model_copy(update={"idempotency_key": "someone else"})
    for marker in (CANCELLED_MARKER, "failure.json", "job.log", None):
        gone = JobHandle.for_spec("kubernetes", spec(f"gone {marker}"), {"namespace": NAMESPACE})
        if marker is not None:
            transport.write_json(transport.join(gone.output_uri, marker), {})
        handles[f"gone, left {marker}"] = gone

    statuses = backend.poll(list(handles.values()))

    states = {what: statuses[handle.job_id].state for what, handle in handles.items()}
    assert states == {
        "queued": JobState.QUEUED,
        "running": JobState.RUNNING,
        "succeeded": JobState.SUCCEEDED,
        "failed": JobState.FAILED,
        "other team": JobState.RUNNING,
        "another key": JobState.FAILED,
        "gone, left cancelled.json": JobState.CANCELLED,
        "gone, left failure.json": JobState.FAILED,
        "gone, left job.log": JobState.SUCCEEDED,
        "gone, left None": JobState.FAILED,
    }
    listed = {
        job.metadata.name: job
        for namespace_team in ("fraud", "risk")
        for job in backend._batch.list_namespaced_job(
            NAMESPACE, label_selector=f"{KUBERNETES_TEAM_LABEL}={namespace_team}"
        ).items
    }
    assert statuses == {
        handle.job_id: _model_class_status(backend, handle, listed.get(handle.job_id))
        for handle in handles.values()
    }


def test_raw_job_fields_decide_as_the_model_classes_did(
    start_fake: Callable[..., FakeKubernetes], storage_root: str
) -> None:
    """Shapes the fake does not serve on its own, cut from a Job as it serves it: no ``ready``
    (API servers before 1.24), no status yet, a condition not (yet) true, a reason only."""
    fake = start_fake(hold="running")
    backend = fake.settings(storage_root).get_backend()
    handle = backend.submit(job_spec(storage_root, ["never", "run"], "shapes"))
    served = json.loads(backend._batch.list_namespaced_job(NAMESPACE, _preload_content=False).data)[
        "items"
    ][0]
    condition = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}

    def cut(**status: Any) -> dict[str, Any]:
        item = json.loads(json.dumps(served))
        item["status"] = {k: v for k, v in {**item["status"], **status}.items() if v is not None}
        return item

    shapes = {
        "as served": served,
        "no ready field": cut(ready=None),
        "no ready, not active": cut(ready=None, active=None),
        "no status": {k: v for k, v in served.items() if k != "status"},
        "pending pod": cut(ready=0),
        "condition not true": cut(conditions=[{**condition, "status": "False"}]),
        "reason only": cut(active=0, failed=1, conditions=[condition]),
        "message only": cut(conditions=[{"type": "Failed", "status": "True", "message": "m"}]),
        "complete": cut(active=0, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]),
        "no annotations": {**served, "metadata": {"name": handle.job_id}},
    }

    decided = {
        shape: (
            backend.status(handle, backend.details(handle), native_job(item)),
            _model_class_status(backend, handle, _as_model(item)),
        )
        for shape, item in shapes.items()
    }

    assert {shape: new for shape, (new, _) in decided.items()} == {
        shape: old for shape, (_, old) in decided.items()
    }
    assert {shape: new.state for shape, (new, _) in decided.items()} == {
        "as served": JobState.RUNNING,
        "no ready field": JobState.RUNNING,
        "no ready, not active": JobState.QUEUED,
        "no status": JobState.QUEUED,
        "pending pod": JobState.QUEUED,
        "condition not true": JobState.RUNNING,
        "reason only": JobState.FAILED,
        "message only": JobState.FAILED,
        "complete": JobState.SUCCEEDED,
        "no annotations": JobState.FAILED,
    }


def test_poll_retries_a_list_answer_whose_body_breaks_off(
    start_fake: Callable[..., FakeKubernetes], storage_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib3.exceptions import ProtocolError

    fake = start_fake(hold="running")
    backend = fake.settings(storage_root).get_backend()
    handle = backend.submit(job_spec(storage_root, ["never", "run"], "broken body"))
    real = backend._batch.list_namespaced_job
    broken = [2]

    def list_jobs(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        if broken[0]:
            broken[0] -= 1
            answer.release_conn()

            class Broken:
                @property
                def data(self) -> bytes:
                    raise ProtocolError("Connection broken: IncompleteRead")

                def release_conn(self) -> None:
                    pass

            return Broken()
        return answer

    monkeypatch.setattr(backend._batch, "list_namespaced_job", list_jobs)

    assert backend.poll([handle])[handle.job_id].state == JobState.RUNNING
    assert broken == [0]


def test_an_image_trainers_job_body_is_a_valid_v1_job_for_the_sdk() -> None:
    """The kubernetes client's own V1Job model takes the body whole: nothing the backend sends
    for a team's image, command, working directory and GPU is unknown to it or lost."""
    spec = JobSpec(
        team="screening",
        model="malignancy_screen",
        command=["python", "train.py"],
        output_uri="/shared/jobs/x",
        idempotency_key="screening/malignancy_screen/run/1",
        backend="kubernetes",
        image="ghcr.io/acme/screening:1.0",
        staged=False,
        working_dir="/app",
        env={"DAGSTER_PIPES_CONTEXT": "abc"},
        resources=Resources(cpu=2, memory_gb=4, gpu_count=1, gpu_type="nvidia-tesla-t4"),
    )
    settings = KubernetesSettings(namespace="ml", image_uri="base:1", storage_root="/shared")
    body = build_job_body(spec, settings)

    class Response:
        data = json.dumps(body)

    sdk = k8s.ApiClient()
    job = sdk.deserialize(Response(), "V1Job")
    assert sdk.sanitize_for_serialization(job) == body
    container = job.spec.template.spec.containers[0]
    assert (container.image, container.working_dir) == ("ghcr.io/acme/screening:1.0", "/app")
    assert container.command == ["python", "train.py"]
