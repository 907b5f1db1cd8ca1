"""The SageMaker serving handoff: pure request builders, then boto3 against a moto server."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ml_assets_testing.moto_server import REGION, TEST_ENVIRONMENT, create_buckets, moto_server

from ml_assets.registries.base import PRODUCTION, ModelVersion, RegistrationRequest
from ml_assets.registries.sagemaker import SageMakerRegistry, boto3_client
from ml_assets.serving.sagemaker import (
    endpoint_config_request,
    model_request,
    sagemaker_endpoint_spec,
)

pytestmark = pytest.mark.timeout(120)

BUCKET = "ml-assets-serving"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sklearn-inference:1.2-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/sagemaker-execution"
MODEL_NAME = re.compile(r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?")


def _version(model_name: str = "team.model_ab12cd34", number: str = "3") -> ModelVersion:
    return ModelVersion(
        registry="mlflow",
        model_name=model_name,
        version=number,
        uri=f"models:/{model_name}/{number}",
        job_id="team/model/run-1/1",
    )


# -- pure builders ----------------------------------------------------------------------------


def test_the_requests_are_named_from_model_version_and_content() -> None:
    version = _version()
    model = model_request(
        version, image_uri=IMAGE_URI, model_data_url="s3://b/m.tar.gz", role_arn=ROLE_ARN
    )
    assert model["PrimaryContainer"] == {"Image": IMAGE_URI, "ModelDataUrl": "s3://b/m.tar.gz"}
    assert model["ExecutionRoleArn"] == ROLE_ARN
    assert re.fullmatch(r"team-model-ab12cd34-v3-[0-9a-f]{8}", model["ModelName"])
    assert {"Key": "ml_assets.version", "Value": "3"} in model["Tags"]
    same = model_request(
        version, image_uri=IMAGE_URI, model_data_url="s3://b/m.tar.gz", role_arn=ROLE_ARN
    )
    assert same == model
    other_image = model_request(
        version, image_uri=f"{IMAGE_URI}-gpu", model_data_url="s3://b/m.tar.gz", role_arn=ROLE_ARN
    )
    other_version = model_request(
        _version(number="4"),
        image_uri=IMAGE_URI,
        model_data_url="s3://b/m.tar.gz",
        role_arn=ROLE_ARN,
    )
    assert len({model["ModelName"], other_image["ModelName"], other_version["ModelName"]}) == 3

    config = endpoint_config_request(
        version, model["ModelName"], instance_type="ml.m5.large", initial_instance_count=2
    )
    assert config["ProductionVariants"] == [
        {
            "VariantName": "AllTraffic",
            "ModelName": model["ModelName"],
            "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 2,
            "InitialVariantWeight": 1.0,
        }
    ]
    bigger = endpoint_config_request(
        version, model["ModelName"], instance_type="ml.m5.xlarge", initial_instance_count=2
    )
    assert bigger["EndpointConfigName"] != config["EndpointConfigName"]

    long_version = _version(model_name="a." * 60 + "model", number="12345")
    long_model = model_request(
        long_version, image_uri=IMAGE_URI, model_data_url="s3://b/m", role_arn=ROLE_ARN
    )
    long_config = endpoint_config_request(
        long_version, long_model["ModelName"], instance_type="ml.m5.large", initial_instance_count=1
    )
    for name in (model["ModelName"], long_model["ModelName"], long_config["EndpointConfigName"]):
        assert len(name) <= 63 and MODEL_NAME.fullmatch(name), name


# -- against moto -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in TEST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    create_buckets(moto_url, [BUCKET])
    return moto_url


@pytest.fixture
def sagemaker(aws: str) -> Any:
    return boto3_client("sagemaker", region_name=REGION, endpoint_url=aws)


@pytest.fixture
def promoted(aws: str, tmp_path: Path) -> ModelVersion:
    """The production version of a fresh model in the SageMaker registry."""
    registry = SageMakerRegistry(
        storage_root=f"s3://{BUCKET}/registry",
        image_uri=IMAGE_URI,
        region_name=REGION,
        endpoint_url=aws,
    )
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(b"model bytes")
    model_name = f"serving.model_{uuid.uuid4().hex[:8]}"  # moto state outlives the test
    registry.register(
        RegistrationRequest(model_name=model_name, artifact_path=str(artifact), job_id="job-1")
    )
    registry.set_alias(model_name, "1", PRODUCTION)
    version = registry.get_by_alias(model_name, PRODUCTION)
    assert version is not None
    return version


def _handoff(version: ModelVersion, aws: str, **settings: Any) -> dict[str, Any]:
    return sagemaker_endpoint_spec(
        version, role_arn=ROLE_ARN, region_name=REGION, endpoint_url=aws, **settings
    )


def test_the_handoff_creates_the_model_and_endpoint_config_of_the_package(
    promoted: ModelVersion, aws: str, sagemaker: Any
) -> None:
    spec = _handoff(promoted, aws, instance_type="ml.c5.large")

    package = sagemaker.describe_model_package(ModelPackageName=promoted.uri)
    [container] = package["InferenceSpecification"]["Containers"]
    model = sagemaker.describe_model(ModelName=spec["model"]["name"])
    assert model["PrimaryContainer"]["Image"] == IMAGE_URI
    assert model["PrimaryContainer"]["ModelDataUrl"] == container["ModelDataUrl"]
    assert container["ModelDataUrl"].endswith("/model.tar.gz")
    assert model["ExecutionRoleArn"] == ROLE_ARN
    assert model["ModelArn"] == spec["model"]["arn"]
    config = sagemaker.describe_endpoint_config(EndpointConfigName=spec["endpoint_config"]["name"])
    [variant] = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.c5.large"
    assert variant["ModelName"] == spec["model"]["name"]
    assert variant["InitialInstanceCount"] == 1
    assert config["EndpointConfigArn"] == spec["endpoint_config"]["arn"]

    assert spec["model"]["created"] and spec["endpoint_config"]["created"]
    assert spec["endpoint"]["status"] is None
    assert spec["deploy"] == {
        "action": "create",
        "command": f"aws sagemaker create-endpoint --endpoint-name {spec['endpoint']['name']} "
        f"--endpoint-config-name {spec['endpoint_config']['name']} --region {REGION}",
    }
    assert json.loads(json.dumps(spec)) == spec


def test_calling_it_again_creates_nothing(promoted: ModelVersion, aws: str, sagemaker: Any) -> None:
    first = _handoff(promoted, aws)
    created_at = sagemaker.describe_model(ModelName=first["model"]["name"])["CreationTime"]
    models = len(sagemaker.list_models()["Models"])
    configs = len(sagemaker.list_endpoint_configs()["EndpointConfigs"])

    second = _handoff(promoted, aws)

    assert not second["model"]["created"] and not second["endpoint_config"]["created"]
    assert {k: v for k, v in second["model"].items() if k != "created"} == {
        k: v for k, v in first["model"].items() if k != "created"
    }
    assert second["endpoint_config"]["name"] == first["endpoint_config"]["name"]
    # moto's CreateModel replaces a model of the same name, resetting its creation time.
    assert sagemaker.describe_model(ModelName=first["model"]["name"])["CreationTime"] == created_at
    assert len(sagemaker.list_models()["Models"]) == models
    assert len(sagemaker.list_endpoint_configs()["EndpointConfigs"]) == configs


def test_a_live_endpoint_gets_an_update_only_when_its_config_changes(
    promoted: ModelVersion, aws: str, sagemaker: Any
) -> None:
    first = _handoff(promoted, aws)
    sagemaker.create_endpoint(
        EndpointName=first["endpoint"]["name"],
        EndpointConfigName=first["endpoint_config"]["name"],
    )
    assert _handoff(promoted, aws)["deploy"] == {"action": "none", "command": None}

    bigger = _handoff(promoted, aws, instance_type="ml.m5.xlarge", initial_instance_count=2)

    assert not bigger["model"]["created"] and bigger["endpoint_config"]["created"]
    assert bigger["model"]["name"] == first["model"]["name"]
    assert bigger["endpoint"]["endpoint_config_name"] == first["endpoint_config"]["name"]
    assert bigger["deploy"]["action"] == "update"
    assert bigger["deploy"]["command"].startswith("aws sagemaker update-endpoint ")
    assert (
        f"--endpoint-config-name {bigger['endpoint_config']['name']}" in bigger["deploy"]["command"]
    )


def test_a_version_from_another_registry_names_its_image_and_model_data(
    aws: str, sagemaker: Any
) -> None:
    version = _version(model_name="other.model", number="5")
    with pytest.raises(ValueError, match="needs image_uri and model_data_url"):
        _handoff(version, aws, image_uri=IMAGE_URI)

    spec = _handoff(
        version,
        aws,
        image_uri=IMAGE_URI,
        model_data_url=f"s3://{BUCKET}/models/{{model}}/{{version}}/model.tar.gz",
        endpoint_name="other-model",
    )

    model = sagemaker.describe_model(ModelName=spec["model"]["name"])
    expected = f"s3://{BUCKET}/models/other.model/5/model.tar.gz"
    assert model["PrimaryContainer"]["ModelDataUrl"] == expected
    assert spec["endpoint"]["name"] == "other-model"
