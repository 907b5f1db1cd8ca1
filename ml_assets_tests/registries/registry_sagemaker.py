"""The SageMaker registry under the shared contract: boto3 against moto's server on loopback.

One moto server serves the whole session (starting is instant, stopping takes half a second).
``conftest`` adopts only the ``*_registry`` fixture from this module, so the server is kept in
module state and stopped with the session through ``config.add_cleanup``. Each test gets its own
model name from the ``model_name`` fixture, hence its own model package group.
"""

from __future__ import annotations

import contextlib

import pytest
from ml_assets_testing.moto_server import REGION, TEST_ENVIRONMENT, create_buckets, moto_server

from ml_assets.registries import load_registry
from ml_assets.registries.base import ModelRegistry

BUCKET = "ml-assets-sagemaker-registry"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sklearn-inference:1.2-1"

_session_server: dict[str, str] = {}


def _moto_url(config: pytest.Config) -> str:
    if "url" not in _session_server:
        stack = contextlib.ExitStack()
        _session_server["url"] = stack.enter_context(moto_server())
        config.add_cleanup(stack.close)
    return _session_server["url"]


@pytest.fixture
def sagemaker_registry(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> ModelRegistry:
    for name, value in TEST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    url = _moto_url(request.config)
    create_buckets(url, [BUCKET])  # again per test: a mock_aws elsewhere may have reset moto
    return load_registry(
        "sagemaker",
        storage_root=f"s3://{BUCKET}/registry",
        image_uri=IMAGE_URI,
        region_name=REGION,
        endpoint_url=url,
    )
