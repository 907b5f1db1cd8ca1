"""SageMaker hosting for a promoted version: a Model and an EndpointConfig, created once.

``sagemaker_endpoint_spec`` creates both through boto3 (if they are not there yet) and returns
what a deploy needs: names, ARNs, the production variant and the one command that puts the
endpoint on this config (``create-endpoint``, or ``update-endpoint`` for an endpoint that
exists, which SageMaker switches without downtime). The endpoint itself is left to that deploy
step: it bills by the hour, takes minutes, and replacing live traffic is a decision to own.

Names are ``<model>-v<version>-<digest>``, the digest covering the request (image, model data
and role; the variant), so they are deterministic for a version and its settings. Models and
endpoint configs are immutable in SageMaker: a changed setting yields a new name rather than a
clash, and a repeated call finds what it made before and creates nothing.

For a version from the SageMaker registry the image and ``model.tar.gz`` default to those of its
model package; a version from another registry needs ``image_uri`` and ``model_data_url``, which
may contain ``{model}`` and ``{version}`` (``s3://bucket/models/{model}/{version}/model.tar.gz``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from ml_assets.registries.base import ModelVersion
from ml_assets.registries.sagemaker import aws_name, boto3_client, is_missing, tag_value
from ml_assets.tags import REGISTRY_JOB_ID_TAG, REGISTRY_MODEL_TAG, SERVING_VERSION_TAG

VARIANT_NAME = "AllTraffic"
DEFAULT_INSTANCE_TYPE = "ml.m5.large"


def resource_name(version: ModelVersion, request: dict[str, Any]) -> str:
    """``<model>-v<version>-<digest of request>``: a valid SageMaker name of at most 63 chars."""
    digest = hashlib.sha256(
        json.dumps([version.model_name, version.version, request], sort_keys=True).encode()
    ).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", version.model_name.lower()).strip("-")[:40].strip("-")
    number = re.sub(r"[^a-z0-9]+", "-", version.version.lower()).strip("-")[:10].strip("-")
    return "-".join(part for part in (stem, f"v{number}", digest) if part)


def _tags(version: ModelVersion) -> list[dict[str, str]]:
    return [
        {"Key": REGISTRY_MODEL_TAG, "Value": tag_value(version.model_name)},
        {"Key": SERVING_VERSION_TAG, "Value": tag_value(version.version)},
        {"Key": REGISTRY_JOB_ID_TAG, "Value": tag_value(version.job_id)},
    ]


def model_request(
    version: ModelVersion, *, image_uri: str, model_data_url: str, role_arn: str
) -> dict[str, Any]:
    """The ``CreateModel`` request: one container serving ``model_data_url`` with ``image_uri``."""
    body = {
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url},
        "ExecutionRoleArn": role_arn,
    }
    return {"ModelName": resource_name(version, body), **body, "Tags": _tags(version)}


def endpoint_config_request(
    version: ModelVersion, model_name: str, *, instance_type: str, initial_instance_count: int
) -> dict[str, Any]:
    """The ``CreateEndpointConfig`` request: one variant taking all traffic for ``model_name``."""
    body = {
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": initial_instance_count,
                "InitialVariantWeight": 1.0,
            }
        ]
    }
    return {"EndpointConfigName": resource_name(version, body), **body, "Tags": _tags(version)}


def sagemaker_endpoint_spec(
    version: ModelVersion,
    *,
    role_arn: str,
    image_uri: str | None = None,
    model_data_url: str | None = None,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    initial_instance_count: int = 1,
    endpoint_name: str | None = None,
    region_name: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Create (once) the SageMaker Model and EndpointConfig for ``version``; describe the deploy.

    Args:
        version: the version to serve, normally the one holding the ``production`` alias.
        role_arn: the execution role SageMaker assumes to pull the image and model data.
        image_uri, model_data_url: the inference image and ``model.tar.gz``; default to the
            model package's for a SageMaker-registry version (see the module docstring).
        instance_type, initial_instance_count: the production variant's hosting.
        endpoint_name: the endpoint a deploy creates or updates; defaults to the model's name.
        region_name, endpoint_url: where SageMaker is (the default chain's region if omitted).

    Returns a JSON-able document: ``model`` and ``endpoint_config`` (name, ARN, whether this call
    created it), ``endpoint`` (name, current status and config, if it exists) and ``deploy``
    (``action`` create/update/none and the ``aws sagemaker`` ``command`` that performs it).
    """
    client = boto3_client("sagemaker", region_name=region_name, endpoint_url=endpoint_url)
    image_uri, model_data_url = _container(client, version, image_uri, model_data_url)
    model = model_request(
        version, image_uri=image_uri, model_data_url=model_data_url, role_arn=role_arn
    )
    model_arn, model_created = _ensure(
        lambda: client.describe_model(ModelName=model["ModelName"]),
        lambda: client.create_model(**model),
        "ModelArn",
    )
    config = endpoint_config_request(
        version,
        model["ModelName"],
        instance_type=instance_type,
        initial_instance_count=initial_instance_count,
    )
    config_name = config["EndpointConfigName"]
    config_arn, config_created = _ensure(
        lambda: client.describe_endpoint_config(EndpointConfigName=config_name),
        lambda: client.create_endpoint_config(**config),
        "EndpointConfigArn",
    )
    endpoint = endpoint_name or aws_name(version.model_name)
    current = _endpoint(client, endpoint)
    region = str(client.meta.region_name)
    return {
        "region": region,
        "model": {
            "name": model["ModelName"],
            "arn": model_arn,
            "created": model_created,
            "image_uri": image_uri,
            "model_data_url": model_data_url,
            "role_arn": role_arn,
        },
        "endpoint_config": {
            "name": config_name,
            "arn": config_arn,
            "created": config_created,
            "variant": config["ProductionVariants"][0],
        },
        "endpoint": {
            "name": endpoint,
            "status": current.get("EndpointStatus") if current else None,
            "endpoint_config_name": current.get("EndpointConfigName") if current else None,
        },
        "deploy": _deploy(endpoint, config_name, region, current),
    }


def _container(
    client: Any, version: ModelVersion, image_uri: str | None, model_data_url: str | None
) -> tuple[str, str]:
    """The image and model data to serve: as given, else the model package's."""
    if model_data_url is not None:
        try:
            model_data_url = model_data_url.format(
                model=version.model_name, version=version.version
            )
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"model_data_url {model_data_url!r} may use only {{model}} and {{version}}: "
                f"{error!r}"
            ) from None
    if (image_uri is None or model_data_url is None) and version.registry == "sagemaker":
        package = client.describe_model_package(ModelPackageName=version.uri)
        container = package["InferenceSpecification"]["Containers"][0]
        image_uri = image_uri or container["Image"]
        model_data_url = model_data_url or container["ModelDataUrl"]
    if image_uri is None or model_data_url is None:
        raise ValueError(
            f"serving.sagemaker needs image_uri and model_data_url for a version from the "
            f"{version.registry} registry (only SageMaker model packages carry their own)"
        )
    return image_uri, model_data_url


def _ensure(
    describe: Callable[[], dict[str, Any]], create: Callable[[], dict[str, Any]], arn_key: str
) -> tuple[str, bool]:
    """``(arn, created)``: the resource ``describe`` finds, or the one ``create`` makes."""
    from botocore.exceptions import ClientError

    try:
        return str(describe()[arn_key]), False
    except ClientError as error:
        if not is_missing(error):
            raise
    try:
        return str(create()[arn_key]), True
    except ClientError as error:
        if "already exist" not in str(error):
            raise
    return str(describe()[arn_key]), False  # a concurrent call created it


def _endpoint(client: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        described: dict[str, Any] = client.describe_endpoint(EndpointName=name)
    except ClientError as error:
        if is_missing(error):
            return None
        raise
    return described


def _deploy(
    endpoint: str, config_name: str, region: str, current: dict[str, Any] | None
) -> dict[str, Any]:
    if current is not None and current.get("EndpointConfigName") == config_name:
        return {"action": "none", "command": None}
    action = "update" if current is not None else "create"
    command = (
        f"aws sagemaker {action}-endpoint --endpoint-name {endpoint} "
        f"--endpoint-config-name {config_name} --region {region}"
    )
    return {"action": action, "command": command}
