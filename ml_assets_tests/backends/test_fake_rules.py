"""Each loopback fake refuses what its service refuses: one deliberately wrong request per rule,
sent through the service's official client (raw HTTP only where the client cannot send it), and
a few right ones to show the fake is not stricter than the service where it matters.

The rules are the services' own documented rules (``ml_assets_testing.kube_rules``,
``gcs``, ``vertex_rules``, ``databricks_rules``, ``aws_rules``), never the backends'."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ml_assets_testing.fake_databricks import DEFAULT_TOKEN, FakeDatabricks
from ml_assets_testing.fake_kubernetes import QUEUE_LABEL, FakeKubernetes
from ml_assets_testing.fake_sagemaker import IMAGE_URI, REGION, ROLE_ARN, FakeSageMaker
from ml_assets_testing.fake_vertex import FakeVertex
from ml_assets_testing.fakes import Faults
from ml_assets_testing.gcs import GcsEmulator

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "rules"


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A raw JSON POST (for what no official client can send); (status, decoded body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# --- Kubernetes: the API server's validation -------------------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubernetes]:
    # Accepted Jobs never start here: validation is the subject, not running.
    with FakeKubernetes(tmp_path_factory.mktemp("kube"), pending_s=3600) as fake:
        yield fake


@pytest.fixture(scope="module")
def batch(kube: FakeKubernetes) -> Any:
    from kubernetes import client

    return client.BatchV1Api(client.ApiClient(client.Configuration(host=kube.url)))


def job_body(name: str, command: list[str] | None = None) -> dict[str, Any]:
    """A valid single-container ``batch/v1`` Job the tests then break in one place."""
    resources = {"cpu": "100m", "memory": "64Mi"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "rules"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "rules"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11",
                            "command": command or ["python", "-c", "pass"],
                            "resources": {"requests": dict(resources), "limits": dict(resources)},
                        }
                    ],
                },
            },
        },
    }


def pod_spec(body: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = body["spec"]["template"]["spec"]
    return spec


def container(body: dict[str, Any]) -> dict[str, Any]:
    main: dict[str, Any] = pod_spec(body)["containers"][0]
    return main


_names = iter(range(1_000_000))


def unique(prefix: str = "job") -> str:
    return f"{prefix}-{next(_names)}"


def refused(batch: Any, body: dict[str, Any], **options: Any) -> tuple[int, dict[str, Any]]:
    """Create ``body``; the (status, ``v1.Status``) of the refusal (fails if it is accepted)."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job(NAMESPACE, body, **options)
    status: dict[str, Any] = json.loads(raised.value.body)
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert status["code"] == raised.value.status
    return raised.value.status, status


def invalid_fields(batch: Any, body: dict[str, Any]) -> dict[str, str]:
    """Create ``body`` expecting a 422 ``Invalid``; its causes as ``{field: message}``."""
    code, status = refused(batch, body)
    assert (code, status["reason"]) == (422, "Invalid"), status
    assert status["details"]["kind"] == "Job" and status["details"]["group"] == "batch"
    assert status["message"].startswith(f'Job.batch "{body["metadata"]["name"]}" is invalid: ')
    return {cause["field"]: cause["message"] for cause in status["details"]["causes"]}


def test_k8s_a_valid_job_is_created(batch: Any, kube: FakeKubernetes) -> None:
    # The control for every refusal below: only the broken field differs from this body.
    name = unique()
    created = batch.create_namespaced_job(NAMESPACE, job_body(name))
    assert created.metadata.uid and name in kube.job_names(NAMESPACE)


def test_k8s_toleration_exists_with_a_value_is_invalid(batch: Any) -> None:
    body = job_body(unique())
    pod_spec(body)["tolerations"] = [{"key": "gpu", "operator": "Exists", "value": "yes"}]
    causes = invalid_fields(batch, body)
    assert (
        "value must be empty when `operator` is 'Exists'"
        in causes["spec.template.spec.tolerations[0].operator"]
    )


def test_k8s_toleration_seconds_need_the_no_execute_effect(batch: Any) -> None:
    body = job_body(unique())
    pod_spec(body)["tolerations"] = [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}
    ]
    causes = invalid_fields(batch, body)
    assert (
        "effect must be 'NoExecute' when `tolerationSeconds` is set"
        in causes["spec.template.spec.tolerations[0].effect"]
    )


@pytest.mark.parametrize(
    ("toleration", "field", "expected"),
    [
        ({"key": "gpu", "operator": "In", "value": "a"}, "operator", 'Unsupported value: "In"'),
        ({"key": "gpu", "operator": "Exists", "effect": "NoRun"}, "effect", '"NoSchedule"'),
        ({"operator": "Equal", "value": "x"}, "operator", "operator must be Exists when `key`"),
        ({"key": "bad key!", "operator": "Exists"}, "key", "name part must consist of"),
        ({"key": "gpu", "operator": "Equal", "value": "no spaces"}, "operator", "a valid label"),
    ],
    ids=["unknown-operator", "unknown-effect", "empty-key-needs-exists", "bad-key", "bad-value"],
)
def test_k8s_toleration_syntax(
    batch: Any, toleration: dict[str, Any], field: str, expected: str
) -> None:
    body = job_body(unique())
    pod_spec(body)["tolerations"] = [toleration]
    causes = invalid_fields(batch, body)
    assert expected in causes[f"spec.template.spec.tolerations[0].{field}"]


@pytest.mark.parametrize("quantity", ["4 GB", "4GB", "1.5.5", "two", "Gi"])
def test_k8s_quantities_outside_the_grammar_cannot_be_decoded(batch: Any, quantity: str) -> None:
    body = job_body(unique())
    container(body)["resources"]["limits"]["memory"] = quantity
    code, status = refused(batch, body)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert "quantities must match the regular expression" in status["message"]


def test_k8s_quantities_in_the_grammar_are_accepted(batch: Any) -> None:
    body = job_body(unique())
    container(body)["resources"] = {
        "requests": {"cpu": "0.5", "memory": "1.5Gi", "ephemeral-storage": "1e9"},
        "limits": {"cpu": "500m", "memory": "1536Mi", "ephemeral-storage": "2G"},
    }
    assert batch.create_namespaced_job(NAMESPACE, body).metadata.uid


def test_k8s_requests_may_not_exceed_limits(batch: Any) -> None:
    body = job_body(unique())
    container(body)["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    causes = invalid_fields(batch, body)
    assert (
        "must be less than or equal to cpu limit of 1"
        in causes["spec.template.spec.containers[0].resources.requests"]
    )


def test_k8s_extended_resources_are_whole_limited_and_requested_as_limited(batch: Any) -> None:
    where = "spec.template.spec.containers[0].resources"
    fractional = job_body(unique())
    container(fractional)["resources"]["limits"]["nvidia.com/gpu"] = "0.5"
    assert (
        "must be an integer" in invalid_fields(batch, fractional)[f"{where}.limits[nvidia.com/gpu]"]
    )
    unequal = job_body(unique())
    container(unequal)["resources"]["requests"]["nvidia.com/gpu"] = "1"
    container(unequal)["resources"]["limits"]["nvidia.com/gpu"] = "2"
    assert (
        "must be equal to nvidia.com/gpu limit of 2"
        in invalid_fields(batch, unequal)[f"{where}.requests[nvidia.com/gpu]"]
    )
    unlimited = job_body(unique())
    container(unlimited)["resources"]["requests"]["nvidia.com/gpu"] = "1"
    assert "Limit must be set" in invalid_fields(batch, unlimited)[f"{where}.limits"]


def test_k8s_resource_names_are_standard_or_domain_qualified(batch: Any) -> None:
    body = job_body(unique())
    container(body)["resources"]["limits"]["gpu"] = "1"
    causes = invalid_fields(batch, body)
    assert (
        "must be a standard resource for containers"
        in causes["spec.template.spec.containers[0].resources.limits[gpu]"]
    )


def test_k8s_unknown_fields_fail_under_strict_field_validation(batch: Any) -> None:
    body = job_body(unique())
    container(body)["gpus"] = 1
    body["spec"]["retries"] = 3
    code, status = refused(batch, body, field_validation="Strict")
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"].startswith("strict decoding error: ")
    assert 'unknown field "spec.template.spec.containers[0].gpus"' in status["message"]
    assert 'unknown field "spec.retries"' in status["message"]


def test_k8s_unknown_fields_are_dropped_with_a_warning_by_default(
    batch: Any, kube: FakeKubernetes
) -> None:
    # What the kubernetes client does unless asked: it sends no fieldValidation, and the API
    # server's default since 1.23 is Warn.
    name = unique()
    body = job_body(name)
    body["spec"]["retries"] = 3
    _, status, headers = batch.create_namespaced_job_with_http_info(NAMESPACE, body)
    assert status == 201
    assert 'unknown field \\"spec.retries\\"' in headers["Warning"]
    assert "retries" not in kube.job_manifest(NAMESPACE, name)["spec"]


def test_k8s_duplicate_fields_fail_under_strict_field_validation(kube: FakeKubernetes) -> None:
    # No client sends a key twice; raw JSON does.
    text = json.dumps(job_body(unique()))
    text = text.replace('"backoffLimit": 0', '"backoffLimit": 0, "backoffLimit": 1')
    url = f"{kube.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs?fieldValidation=Strict"
    code, status = _post(url, text.encode())
    assert (code, status["reason"]) == (400, "BadRequest")
    assert 'duplicate field "spec.backoffLimit"' in status["message"]


def test_k8s_a_field_of_the_wrong_type_cannot_be_decoded(batch: Any) -> None:
    body = job_body(unique())
    body["spec"]["backoffLimit"] = "zero"
    code, status = refused(batch, body)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert (
        "cannot unmarshal string into Go struct field Job.spec.backoffLimit of type int32"
        in (status["message"])
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"a" * 64: "x"}, "name part must be no more than 63 characters"),
        ({"Example.COM/team": "x"}, "prefix part a lowercase RFC 1123 subdomain"),
        ({"a/b/c": "x"}, "a qualified name must consist of"),
        ({"team": "x" * 64}, "must be no more than 63 characters"),
        ({"team": "-fraud"}, "a valid label must be an empty string or consist of"),
        ({"team": "fraud team"}, "a valid label must be an empty string or consist of"),
    ],
    ids=["long-name", "bad-prefix", "two-slashes", "long-value", "edge-dash", "space"],
)
def test_k8s_label_syntax(batch: Any, labels: dict[str, str], expected: str) -> None:
    body = job_body(unique())
    body["metadata"]["labels"] = labels
    causes = invalid_fields(batch, body)
    assert expected in causes["metadata.labels"]


def test_k8s_label_syntax_allows_a_dns_prefix_and_63_characters(batch: Any) -> None:
    body = job_body(unique())
    body["metadata"]["labels"] = {"example.com/" + "k" * 63: "v" * 63, "kueue.x-k8s.io/x": ""}
    assert batch.create_namespaced_job(NAMESPACE, body).metadata.uid


@pytest.mark.parametrize(
    ("name", "field", "expected"),
    [
        ("Fraud-Model", "metadata.name", "a lowercase RFC 1123 subdomain"),
        ("fraud_model", "metadata.name", "a lowercase RFC 1123 subdomain"),
        ("fraud-", "metadata.name", "a lowercase RFC 1123 subdomain"),
        ("j" * 64, "spec.template.labels", "must be no more than 63 characters"),
    ],
    ids=["upper-case", "underscore", "trailing-dash", "64-characters"],
)
def test_k8s_job_names(batch: Any, name: str, field: str, expected: str) -> None:
    causes = invalid_fields(batch, job_body(name))
    assert expected in causes[field]


def test_k8s_containers_need_a_dns_label_name_and_an_image(batch: Any) -> None:
    body = job_body(unique())
    container(body).update(name="Main_Container", image="")
    causes = invalid_fields(batch, body)
    where = "spec.template.spec.containers[0]"
    assert "a lowercase RFC 1123 label" in causes[f"{where}.name"]
    assert causes[f"{where}.image"] == f"{where}.image: Required value"


def test_k8s_env_var_names(batch: Any) -> None:
    body = job_body(unique())
    container(body)["env"] = [{"name": "1_TOKEN", "value": "x"}]
    causes = invalid_fields(batch, body)
    assert (
        "a valid environment variable name"
        in causes["spec.template.spec.containers[0].env[0].name"]
    )


def test_k8s_a_job_restarts_never_or_on_failure(batch: Any) -> None:
    body = job_body(unique())
    pod_spec(body)["restartPolicy"] = "Always"
    causes = invalid_fields(batch, body)
    assert (
        'Unsupported value: "Always": supported values: "OnFailure", "Never"'
        in causes["spec.template.spec.restartPolicy"]
    )


def test_k8s_a_selector_is_generated_unless_manual(batch: Any) -> None:
    body = job_body(unique())
    body["spec"]["selector"] = {"matchLabels": {"app": "rules"}}
    assert "`selector` will be auto-generated" in invalid_fields(batch, body)["spec.selector"]


def test_k8s_a_mount_names_a_volume_of_the_pod(batch: Any) -> None:
    body = job_body(unique())
    container(body)["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    causes = invalid_fields(batch, body)
    assert causes["spec.template.spec.containers[0].volumeMounts[0].name"].endswith(
        'Not found: "data"'
    )


def test_k8s_node_selector_labels(batch: Any) -> None:
    body = job_body(unique())
    pod_spec(body)["nodeSelector"] = {"cloud.google.com/gke-accelerator": "nvidia tesla t4"}
    assert "a valid label" in invalid_fields(batch, body)["spec.template.spec.nodeSelector"]


def test_k8s_the_body_namespace_must_match_the_path(batch: Any) -> None:
    body = job_body(unique())
    body["metadata"]["namespace"] = "elsewhere"
    code, status = refused(batch, body)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert "does not match the namespace sent on the request" in status["message"]


def test_k8s_a_job_template_is_immutable(batch: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    name = unique()
    batch.create_namespaced_job(NAMESPACE, job_body(name))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x:2"}]}}}}
    with pytest.raises(ApiException) as raised:
        batch.patch_namespaced_job(name, NAMESPACE, patch)
    status = json.loads(raised.value.body)
    assert (raised.value.status, status["reason"]) == (422, "Invalid")
    assert "spec.template: Invalid value" in status["message"]
    assert "field is immutable" in status["message"]


def test_k8s_an_unsupported_field_selector_is_a_bad_request(batch: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as raised:
        batch.list_namespaced_job(NAMESPACE, field_selector="spec.parallelism=1")
    assert raised.value.status == 400
    assert (
        'field label not supported: "spec.parallelism"' in json.loads(raised.value.body)["message"]
    )


# --- Kubernetes: suspended Jobs and Kueue ------------------------------------------------------


def _wait(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _conditions(batch: Any, name: str) -> dict[str, str]:
    job = batch.read_namespaced_job(name, NAMESPACE)
    return {c.type: c.status for c in (job.status.conditions or [])}


def test_k8s_a_suspended_job_gets_no_pod_until_resumed(tmp_path: Path) -> None:
    from kubernetes import client

    with FakeKubernetes(tmp_path / "kube", pending_s=0.0) as fake:
        batch = client.BatchV1Api(client.ApiClient(client.Configuration(host=fake.url)))
        body = job_body("paused")
        body["spec"]["suspend"] = True
        batch.create_namespaced_job(NAMESPACE, body)
        time.sleep(0.5)  # ten controller periods: a pod would have started by now
        job = batch.read_namespaced_job("paused", NAMESPACE)
        assert fake.pod_names(NAMESPACE) == [] and not job.status.active
        assert job.status.start_time is None
        assert _conditions(batch, "paused") == {"Suspended": "True"}

        batch.patch_namespaced_job("paused", NAMESPACE, {"spec": {"suspend": False}})
        _wait(lambda: _conditions(batch, "paused").get("Complete") == "True", what="completion")
        assert len(fake.pod_names(NAMESPACE)) == 1
        assert _conditions(batch, "paused")["Suspended"] == "False"


def test_kueue_admits_queued_jobs_while_their_local_queue_has_room(tmp_path: Path) -> None:
    from kubernetes import client

    command = ["python", "-c", "import time; time.sleep(1)"]
    with FakeKubernetes(tmp_path / "kube", pending_s=0.0, local_queues={"team-a": 1}) as fake:
        batch = client.BatchV1Api(client.ApiClient(client.Configuration(host=fake.url)))
        for name, queue in (("first", "team-a"), ("second", "team-a"), ("lost", "no-such")):
            body = job_body(name, command)
            body["metadata"]["labels"][QUEUE_LABEL] = queue  # suspend stays unset: the webhook
            batch.create_namespaced_job(NAMESPACE, body)
        _wait(lambda: _conditions(batch, "first").get("Suspended") == "False", what="admission")
        assert _conditions(batch, "second") == {"Suspended": "True"}
        assert [p.rpartition("-")[0] for p in fake.pod_names(NAMESPACE)] == ["first"]

        _wait(lambda: _conditions(batch, "first").get("Complete") == "True", what="first done")
        _wait(lambda: _conditions(batch, "second").get("Suspended") == "False", what="second")
        assert _conditions(batch, "lost") == {"Suspended": "True"}  # its queue does not exist
        assert batch.read_namespaced_job("lost", NAMESPACE).spec.suspend is True


def test_kueue_without_auto_admission_admits_only_when_told(tmp_path: Path) -> None:
    from kubernetes import client

    fake = FakeKubernetes(
        tmp_path / "kube", pending_s=0.0, local_queues={"team-a": 5}, kueue_auto_admit=False
    )
    with fake:
        batch = client.BatchV1Api(client.ApiClient(client.Configuration(host=fake.url)))
        body = job_body("queued")
        body["metadata"]["labels"][QUEUE_LABEL] = "team-a"
        batch.create_namespaced_job(NAMESPACE, body)
        time.sleep(0.5)
        assert _conditions(batch, "queued") == {"Suspended": "True"}
        assert fake.pod_names(NAMESPACE) == []
        assert fake.admit(NAMESPACE, "queued") and not fake.admit(NAMESPACE, "queued")
        _wait(lambda: _conditions(batch, "queued").get("Complete") == "True", what="completion")


# --- GCS: preconditions on every operation -----------------------------------------------------

BUCKET = "rules"


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsEmulator]:
    with GcsEmulator([BUCKET]) as emulator:
        yield emulator


@pytest.fixture
def stored(gcs: GcsEmulator) -> tuple[Any, Any]:
    """A bucket and a fresh object in it (generation and metageneration known)."""
    bucket = gcs.client().bucket(BUCKET)
    blob = bucket.blob(f"objects/{unique('o')}.json")
    blob.upload_from_string(b'{"v": 1}', if_generation_match=0)
    return bucket, bucket.get_blob(blob.name)


def test_gcs_create_honours_generation_and_metageneration(stored: tuple[Any, Any]) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket, blob = stored
    with pytest.raises(PreconditionFailed):
        bucket.blob(blob.name).upload_from_string(b"again", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("objects/absent.json").upload_from_string(b"x", if_metageneration_match=1)
    assert bucket.blob(blob.name).download_as_bytes() == b'{"v": 1}'


def test_gcs_read_honours_preconditions(stored: tuple[Any, Any]) -> None:
    from google.api_core.exceptions import NotModified, PreconditionFailed

    bucket, blob = stored
    generation = int(blob.generation)
    with pytest.raises(PreconditionFailed):
        bucket.blob(blob.name).download_as_bytes(if_generation_match=generation + 1)
    with pytest.raises(NotModified):
        bucket.blob(blob.name).download_as_bytes(if_generation_not_match=generation)
    with pytest.raises(PreconditionFailed):
        bucket.get_blob(blob.name, if_metageneration_match=int(blob.metageneration) + 1)
    with pytest.raises(NotModified):
        bucket.blob(blob.name).reload(if_generation_not_match=generation)
    assert bucket.blob(blob.name).download_as_bytes(if_generation_match=generation)


def test_gcs_delete_honours_preconditions(stored: tuple[Any, Any]) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket, blob = stored
    with pytest.raises(PreconditionFailed):
        bucket.blob(blob.name).delete(if_generation_match=int(blob.generation) + 1)
    with pytest.raises(PreconditionFailed):
        bucket.blob(blob.name).delete(if_metageneration_not_match=int(blob.metageneration))
    assert bucket.get_blob(blob.name) is not None
    bucket.blob(blob.name).delete(if_generation_match=int(blob.generation))
    assert bucket.get_blob(blob.name) is None


def test_gcs_patch_honours_preconditions(stored: tuple[Any, Any]) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket, blob = stored
    stale = bucket.blob(blob.name)
    stale.metadata = {"owner": "someone-else"}
    with pytest.raises(PreconditionFailed):
        stale.patch(if_metageneration_match=int(blob.metageneration) + 1)
    assert (bucket.get_blob(blob.name).metadata or {}).get("owner") is None


def test_gcs_copy_and_rewrite_honour_source_and_destination_preconditions(
    stored: tuple[Any, Any],
) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket, blob = stored
    generation = int(blob.generation)
    target = f"{blob.name}.copy"
    with pytest.raises(PreconditionFailed):
        bucket.copy_blob(blob, bucket, target, if_source_generation_match=generation + 1)
    assert bucket.get_blob(target) is None
    bucket.copy_blob(blob, bucket, target, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.copy_blob(blob, bucket, target, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob(target).rewrite(blob, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob(f"{blob.name}.other").rewrite(blob, if_source_generation_match=1)


def test_gcs_compose_honours_destination_preconditions(stored: tuple[Any, Any]) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket, blob = stored
    with pytest.raises(PreconditionFailed):
        bucket.blob(f"{blob.name}.all").compose([blob], if_generation_match=12345)
    assert bucket.get_blob(f"{blob.name}.all") is None


def test_gcs_a_precondition_that_is_not_a_number_is_a_bad_request(
    gcs: GcsEmulator, stored: tuple[Any, Any]
) -> None:
    _, blob = stored
    url = f"{gcs.url}/storage/v1/b/{BUCKET}/o/{blob.name.replace('/', '%2F')}?ifGenerationMatch=x"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, timeout=30)
    assert raised.value.code == 400


# --- Vertex AI: machine types, GPUs and labels ------------------------------------------------

PARENT = "projects/rules/locations/us-central1"


@pytest.fixture(scope="module")
def vertex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVertex]:
    with FakeVertex(tmp_path_factory.mktemp("vertex"), pending_s=3600) as fake:
        yield fake


@pytest.fixture(scope="module")
def jobs_client(vertex: FakeVertex) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import JobServiceClient

    rest = JobServiceClient.get_transport_class("rest")
    transport = rest(
        host=f"127.0.0.1:{vertex.port}", credentials=AnonymousCredentials(), url_scheme="http"
    )
    return JobServiceClient(transport=transport)


def custom_job(
    machine_type: str,
    accelerator: str | None = None,
    count: int = 0,
    labels: dict[str, str] | None = None,
    replicas: int = 1,
) -> Any:
    from google.cloud.aiplatform_v1 import types

    machine = types.MachineSpec(machine_type=machine_type, accelerator_count=count)
    if accelerator:
        machine.accelerator_type = types.AcceleratorType[accelerator]
    pool = types.WorkerPoolSpec(
        machine_spec=machine,
        replica_count=replicas,
        container_spec=types.ContainerSpec(image_uri="gcr.io/rules/train", command=["true"]),
    )
    return types.CustomJob(
        display_name=unique("vertex"),
        labels=labels or {},
        job_spec=types.CustomJobSpec(worker_pool_specs=[pool]),
    )


def vertex_refuses(client: Any, job: Any) -> str:
    # Over REST, google-api-core raises the HTTP status's class: 400 INVALID_ARGUMENT is
    # BadRequest (of which the gRPC-named InvalidArgument is a subclass).
    from google.api_core.exceptions import BadRequest

    with pytest.raises(BadRequest) as raised:
        client.create_custom_job(parent=PARENT, custom_job=job)
    return str(raised.value.message)


@pytest.mark.parametrize(
    ("machine", "accelerator", "count", "expected"),
    [
        ("n1-standard-8", "NVIDIA_TESLA_T4", 3, "counts of 1, 2, 4"),
        ("n1-standard-8", "NVIDIA_L4", 1, '"NVIDIA_L4" is not supported for machine type'),
        ("g2-standard-8", "NVIDIA_L4", 2, "comes with 1 x NVIDIA_L4"),
        ("g2-standard-24", "NVIDIA_L4", 1, "comes with 2 x NVIDIA_L4"),
        ("g2-standard-8", None, 0, "comes with 1 x NVIDIA_L4"),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 1, "comes with 2 x NVIDIA_TESLA_A100"),
        ("a2-highgpu-1g", "NVIDIA_A100_80GB", 1, "comes with 1 x NVIDIA_TESLA_A100"),
        ("a2-ultragpu-1g", "NVIDIA_TESLA_A100", 1, "comes with 1 x NVIDIA_A100_80GB"),
        ("e2-standard-8", "NVIDIA_TESLA_T4", 1, "only N1 machine types take attached GPUs"),
        ("n1-standard-16", "NVIDIA_TESLA_V100", 1, "supports at most 12"),
        ("n1-standard-96", "NVIDIA_TESLA_T4", 2, "supports at most 48"),
        ("n1-standard-3", None, 0, "is not supported for custom training"),
        ("n1-standard-8", "NVIDIA_TESLA_K80", 1, "end of support"),
        ("n1-standard-8", None, 2, "acceleratorType is not"),
    ],
    ids=[
        "3xT4",
        "L4-on-n1",
        "2xL4-on-g2-8",
        "1xL4-on-g2-24",
        "g2-without-gpu",
        "A100-count",
        "A100-80GB-on-highgpu",
        "A100-40GB-on-ultragpu",
        "T4-on-e2",
        "V100-too-many-vcpus",
        "T4x2-on-96-vcpus",
        "unknown-machine",
        "K80",
        "count-without-type",
    ],
)
def test_vertex_machine_and_accelerator_compatibility(
    jobs_client: Any, machine: str, accelerator: str | None, count: int, expected: str
) -> None:
    assert expected in vertex_refuses(jobs_client, custom_job(machine, accelerator, count))


def test_vertex_accepts_the_documented_combinations(jobs_client: Any, vertex: FakeVertex) -> None:
    before = len(vertex.jobs())
    for machine, accelerator, count in (
        ("n1-standard-16", "NVIDIA_TESLA_T4", 4),
        ("n1-highmem-8", "NVIDIA_TESLA_V100", 1),
        ("g2-standard-12", "NVIDIA_L4", 1),
        ("g2-standard-96", "NVIDIA_L4", 8),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 2),
        ("a2-ultragpu-8g", "NVIDIA_A100_80GB", 8),
        ("a3-highgpu-8g", "NVIDIA_H100_80GB", 8),
        ("e2-standard-4", None, 0),
    ):
        jobs_client.create_custom_job(
            parent=PARENT, custom_job=custom_job(machine, accelerator, count)
        )
    assert len(vertex.jobs()) == before + 8


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"Team": "fraud"}, "invalid label key 'Team'"),
        ({"1team": "fraud"}, "invalid label key '1team'"),
        ({"team": "Fraud"}, "invalid label value 'Fraud'"),
        ({"team": "f" * 65}, "invalid label value"),
        ({f"k{i}": "v" for i in range(65)}, "at most 64 labels"),
    ],
    ids=["upper-key", "digit-first", "upper-value", "65-characters", "65-labels"],
)
def test_vertex_label_rules(jobs_client: Any, labels: dict[str, str], expected: str) -> None:
    assert expected in vertex_refuses(jobs_client, custom_job("n1-standard-4", labels=labels))


def test_vertex_labels_may_have_64_characters_and_international_letters(jobs_client: Any) -> None:
    labels = {"k" * 64: "v" * 64, "équipe": "fraude-ü"}
    created = jobs_client.create_custom_job(
        parent=PARENT, custom_job=custom_job("n1-standard-4", labels=labels)
    )
    assert dict(created.labels) == labels


def test_vertex_the_first_worker_pool_is_one_replica(jobs_client: Any) -> None:
    message = vertex_refuses(jobs_client, custom_job("n1-standard-4", replicas=2))
    assert "workerPoolSpecs[0].replicaCount must be 1" in message


def test_vertex_unknown_fields_are_refused(vertex: FakeVertex) -> None:
    body = {
        "displayName": "raw",
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "machineSpec": {"machineType": "n1-standard-4", "gpuCount": 1},
                    "replicaCount": "1",
                    "containerSpec": {"imageUri": "gcr.io/x/y", "command": ["true"]},
                }
            ]
        },
    }
    code, answer = _post(f"{vertex.url}/v1/{PARENT}/customJobs", body)
    assert code == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert "gpuCount" in answer["error"]["message"]


@pytest.mark.parametrize("size", ["ten", "-1", "2.5"])
def test_vertex_a_page_size_is_a_non_negative_int32(vertex: FakeVertex, size: str) -> None:
    url = f"{vertex.url}/v1/{PARENT}/customJobs?pageSize={size}"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            code, body = answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        code, body = error.code, json.load(error)
    assert code == 400 and body["error"]["status"] == "INVALID_ARGUMENT", body


# --- Databricks: node types, runtimes, libraries ----------------------------------------------


@pytest.fixture(scope="module")
def databricks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDatabricks]:
    with FakeDatabricks(tmp_path_factory.mktemp("databricks"), pending_s=3600) as fake:
        yield fake


@pytest.fixture(scope="module")
def workspace(databricks: FakeDatabricks) -> Any:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    return WorkspaceClient(config=Config(host=databricks.url, token=DEFAULT_TOKEN))


def wheel_task(
    spark_version: str = "15.4.x-cpu-ml-scala2.12",
    node_type: str = "m5.xlarge",
    wheel: str | None = "/Volumes/main/ml/wheels/ml_assets-0.1.0-py3-none-any.whl",
    **cluster: Any,
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_key": "train",
        "python_wheel_task": {"package_name": "ml_assets", "entry_point": "ml-assets-job"},
        "new_cluster": {
            "spark_version": spark_version,
            "node_type_id": node_type,
            "num_workers": 0,
            **cluster,
        },
    }
    if wheel:
        task["libraries"] = [{"whl": wheel}]
    return task


def submit(workspace: Any, task: dict[str, Any]) -> int:
    from databricks.sdk.service.jobs import SubmitTask

    waiter = workspace.jobs.submit(run_name=unique("run"), tasks=[SubmitTask.from_dict(task)])
    return int(waiter.run_id)


def databricks_refuses(workspace: Any, task: dict[str, Any]) -> str:
    from databricks.sdk.errors import InvalidParameterValue

    with pytest.raises(InvalidParameterValue) as raised:
        submit(workspace, task)
    return str(raised.value)


def test_databricks_lists_its_node_types_and_runtimes(workspace: Any) -> None:
    nodes = {node.node_type_id: node for node in workspace.clusters.list_node_types().node_types}
    assert nodes["g4dn.xlarge"].num_gpus == 1 and nodes["m5.xlarge"].num_cores == 4
    assert nodes["p3.2xlarge"].is_deprecated and "g4dn.metal" not in nodes
    versions = {version.key for version in workspace.clusters.spark_versions().versions}
    assert {"15.4.x-scala2.12", "15.4.x-cpu-ml-scala2.12", "15.4.x-gpu-ml-scala2.12"} <= versions
    assert "15.3.x-scala2.12" not in versions


def test_databricks_a_valid_run_is_accepted(workspace: Any, databricks: FakeDatabricks) -> None:
    run_id = submit(workspace, wheel_task())
    assert run_id in databricks.runs


def test_databricks_unknown_node_types_are_refused(workspace: Any) -> None:
    message = databricks_refuses(workspace, wheel_task(node_type="g4dn.metal"))
    assert "Node type g4dn.metal is not supported" in message
    message = databricks_refuses(workspace, wheel_task(driver_node_type_id="m5.mega"))
    assert "Node type m5.mega is not supported" in message


def test_databricks_unknown_runtimes_are_refused(workspace: Any) -> None:
    assert "Invalid spark version 15.3.x-scala2.12" in databricks_refuses(
        workspace, wheel_task(spark_version="15.3.x-scala2.12")
    )


def test_databricks_dbfs_root_wheels_are_refused_from_runtime_15(
    workspace: Any, databricks: FakeDatabricks
) -> None:
    wheel = "dbfs:/wheels/ml_assets-0.1.0-py3-none-any.whl"
    message = databricks_refuses(workspace, wheel_task(wheel=wheel))
    assert "installing libraries from the DBFS root" in message and "15.4" in message
    # The same wheel installs on 14.3 LTS; volumes and workspace files install everywhere.
    accepted = [
        submit(workspace, wheel_task("14.3.x-cpu-ml-scala2.12", wheel=wheel)),
        submit(workspace, wheel_task(wheel="/Workspace/Shared/ml_assets-0.1-py3-none-any.whl")),
        submit(workspace, wheel_task(wheel="/Volumes/main/ml/w/ml_assets-0.1-py3-none-any.whl")),
    ]
    assert all(run_id in databricks.runs for run_id in accepted)


@pytest.mark.parametrize(
    ("library", "spark_version", "expected"),
    [
        ({"whl": "wheels/ml_assets.whl"}, "15.4.x-cpu-ml-scala2.12", "not a supported library"),
        ({"whl": "/Volumes/main/ml/w/ml_assets.zip"}, "15.4.x-cpu-ml-scala2.12", "not a wheel"),
        ({"egg": "/Volumes/main/ml/w/ml.egg"}, "14.3.x-cpu-ml-scala2.12", "egg libraries"),
        ({"requirements": "/Volumes/m/l/r.txt"}, "14.3.x-cpu-ml-scala2.12", "15.0+"),
        ({"pypi": {"repo": "https://pypi.org"}}, "15.4.x-cpu-ml-scala2.12", "package is required"),
    ],
    ids=["relative-path", "not-a-wheel", "egg-on-14", "requirements-on-14", "pypi-no-package"],
)
def test_databricks_library_sources(
    workspace: Any, library: dict[str, Any], spark_version: str, expected: str
) -> None:
    task = wheel_task(spark_version, wheel=None)
    task["libraries"] = [library]
    assert expected in databricks_refuses(workspace, task)


def test_databricks_gpu_nodes_and_gpu_runtimes_go_together(workspace: Any) -> None:
    message = databricks_refuses(workspace, wheel_task("15.4.x-cpu-ml-scala2.12", "g4dn.xlarge"))
    assert "needs a GPU ML runtime" in message
    message = databricks_refuses(workspace, wheel_task("15.4.x-gpu-ml-scala2.12", "m5.xlarge"))
    assert "needs a GPU node type" in message
    message = databricks_refuses(workspace, wheel_task("15.4.x-photon-scala2.12", "g5.xlarge"))
    assert "Photon" in message


def test_databricks_container_services_do_not_run_ml_runtimes(workspace: Any) -> None:
    task = wheel_task("15.4.x-cpu-ml-scala2.12", docker_image={"url": "example/ml:1"})
    assert "do not support Databricks Runtime ML" in databricks_refuses(workspace, task)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"team": "fraud\tops"}, "invalid value"),
        ({"aws:team": "fraud"}, "reserved"),
        ({"k" * 128: "v"}, "invalid tag key"),
        ({f"t{i}": "v" for i in range(46)}, "at most 45 custom tags"),
    ],
    ids=["tab", "aws-prefix", "long-key", "46-tags"],
)
def test_databricks_custom_tags(workspace: Any, tags: dict[str, str], expected: str) -> None:
    assert expected in databricks_refuses(workspace, wheel_task(custom_tags=tags))


@pytest.mark.parametrize("key", ["train model", "entraîner", "x" * 101])
def test_databricks_task_keys(workspace: Any, key: str) -> None:
    task = wheel_task()
    task["task_key"] = key
    assert "task_key must be" in databricks_refuses(workspace, task)


def test_databricks_unknown_fields_are_malformed(databricks: FakeDatabricks) -> None:
    # The SDK's dataclasses cannot carry an unknown field; raw JSON can.
    task = wheel_task()
    task["new_cluster"]["gpus"] = 1
    code, answer = _post(
        f"{databricks.url}/api/2.1/jobs/runs/submit",
        {"run_name": "raw", "tasks": [task]},
        {"Authorization": f"Bearer {DEFAULT_TOKEN}"},
    )
    assert code == 400 and answer["error_code"] == "MALFORMED_REQUEST"
    assert 'Unrecognized field "gpus"' in answer["message"]


# --- SageMaker: the service model's constraints -----------------------------------------------


@pytest.fixture(scope="module")
def sagemaker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import boto3

    with FakeSageMaker(tmp_path_factory.mktemp("sagemaker"), pending_s=3600) as fake:
        yield boto3.client(
            "sagemaker",
            endpoint_url=fake.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def training_job(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TrainingJobName": unique("rules"),
        "RoleArn": ROLE_ARN,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE_URI,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python", "-c", "pass"],
        },
        "OutputDataConfig": {"S3OutputPath": "s3://rules/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": "team", "Value": "fraud"}],
    }
    for key, value in changes.items():
        request[key] = value
    return request


def sagemaker_refuses(client: Any, request: dict[str, Any], action: str = "create") -> str:
    from botocore.exceptions import ClientError

    call = client.create_training_job if action == "create" else client.list_training_jobs
    with pytest.raises(ClientError) as raised:
        call(**request)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    return str(raised.value.response["Error"]["Message"])


def test_sagemaker_a_valid_job_is_accepted(sagemaker: Any) -> None:
    # Tag text is letters, separators and digits of any script: é and a space pass.
    request = training_job(
        TrainingJobName="r" * 63, Tags=[{"Key": "équipe", "Value": "fraud ops 1"}]
    )
    assert sagemaker.create_training_job(**request)["TrainingJobArn"].endswith("r" * 63)


def test_sagemaker_tag_values_follow_aws_pattern(sagemaker: Any) -> None:
    message = sagemaker_refuses(sagemaker, training_job(Tags=[{"Key": "team", "Value": "a\tb"}]))
    assert "at 'tags.1.member.value' failed to satisfy constraint" in message
    assert r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r" * 64, "Member must have length less than or equal to 63"),
        ("fraud_model", "Member must satisfy regular expression pattern"),
        ("-fraud", "Member must satisfy regular expression pattern"),
    ],
    ids=["64-characters", "underscore", "leading-dash"],
)
def test_sagemaker_training_job_names(sagemaker: Any, name: str, expected: str) -> None:
    message = sagemaker_refuses(sagemaker, training_job(TrainingJobName=name))
    assert f"at 'trainingJobName' failed to satisfy constraint: {expected}" in message


def test_sagemaker_instance_types_come_from_the_enum(sagemaker: Any) -> None:
    resources = {"InstanceType": "ml.m5.huge", "InstanceCount": 1, "VolumeSizeInGB": 5}
    message = sagemaker_refuses(sagemaker, training_job(ResourceConfig=resources))
    assert "at 'resourceConfig.instanceType'" in message
    assert "Member must satisfy enum value set: [" in message and "ml.m5.large" in message


def test_sagemaker_environment_names(sagemaker: Any) -> None:
    message = sagemaker_refuses(sagemaker, training_job(Environment={"1TOKEN": "x"}))
    assert "Map keys must satisfy constraint" in message


def test_sagemaker_role_arn_pattern(sagemaker: Any) -> None:
    message = sagemaker_refuses(sagemaker, training_job(RoleArn="arn:aws:iam::12345:user/me"))
    assert "at 'roleArn' failed to satisfy constraint" in message


def test_sagemaker_entrypoint_members_are_single_lines(sagemaker: Any) -> None:
    algorithm = {
        "TrainingImage": IMAGE_URI,
        "TrainingInputMode": "File",
        "ContainerEntrypoint": ["python", "-c", "import os\nprint(os.getcwd())"],
    }
    message = sagemaker_refuses(sagemaker, training_job(AlgorithmSpecification=algorithm))
    assert "at 'algorithmSpecification.containerEntrypoint.3.member'" in message


def test_sagemaker_at_most_50_tags(sagemaker: Any) -> None:
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    message = sagemaker_refuses(sagemaker, training_job(Tags=tags))
    assert "at 'tags' failed to satisfy constraint: Member must have length less than or" in (
        message
    )


def test_sagemaker_documented_limits_beyond_the_model(sagemaker: Any) -> None:
    too_long = training_job(StoppingCondition={"MaxRuntimeInSeconds": 28 * 86_400 + 1})
    assert "MaxRuntimeInSeconds must be between 1 and 2419200" in sagemaker_refuses(
        sagemaker, too_long
    )
    reserved = training_job(Tags=[{"Key": "aws:team", "Value": "fraud"}])
    assert "reserved" in sagemaker_refuses(sagemaker, reserved)


def test_sagemaker_every_action_is_checked(sagemaker: Any) -> None:
    message = sagemaker_refuses(sagemaker, {"NameContains": "fraud_model"}, action="list")
    assert "at 'nameContains' failed to satisfy constraint" in message


def test_sagemaker_a_mistyped_member_is_a_serialization_error(sagemaker: Any) -> None:
    body = copy.deepcopy(training_job())
    body["ResourceConfig"]["InstanceCount"] = "one"
    code, answer = _post(
        sagemaker.meta.endpoint_url,
        body,
        {
            "X-Amz-Target": "SageMaker.CreateTrainingJob",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert code == 400 and answer["__type"] == "SerializationException"


# --- Every fake: faults in the service's own error shape --------------------------------------

# What each service's API sends with a 429 and a 503 it answers on its own, from its reference:
# the Kubernetes StatusReason, the AWS JSON protocol's __type, the Databricks error_code.
SERVICE_ERRORS = {
    "kubernetes": (
        FakeKubernetes,
        "/apis/batch/v1/namespaces/rules/jobs",
        {},
        lambda body: (body["kind"], body["reason"]),
        {429: ("Status", "TooManyRequests"), 503: ("Status", "ServiceUnavailable")},
    ),
    "sagemaker": (
        FakeSageMaker,
        "/",
        {"X-Amz-Target": "SageMaker.ListTrainingJobs"},
        lambda body: body["__type"],
        {429: "ThrottlingException", 503: "ServiceUnavailable"},
    ),
    "databricks": (
        FakeDatabricks,
        "/api/2.1/jobs/runs/submit",
        {"Authorization": f"Bearer {DEFAULT_TOKEN}"},
        lambda body: body["error_code"],
        {429: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"},
    ),
}


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("service", sorted(SERVICE_ERRORS))
def test_a_fault_is_answered_in_the_services_error_shape(
    tmp_path: Path, service: str, status: int
) -> None:
    fake_type, path, headers, read, expected = SERVICE_ERRORS[service]
    rate = {"throttle_rate": 1.0} if status == 429 else {"error_rate": 1.0}
    with fake_type(tmp_path, faults=Faults(**rate)) as fake:
        code, body = _post(fake.url + path, {}, headers)
    assert code == status
    assert read(body) == expected[status], body


def test_botocore_reads_a_throttle_from_the_sagemaker_fake_as_one(tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    with FakeSageMaker(tmp_path, faults=Faults(throttle_rate=1.0)) as fake:
        client = boto3.client(
            "sagemaker",
            endpoint_url=fake.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
        )
        with pytest.raises(ClientError) as raised:
            client.list_training_jobs()
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    # Standard mode retried it as a throttle: the fake saw both attempts.
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
