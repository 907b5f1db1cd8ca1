"""Each registry selected in a team's YAML, with the whole pipeline run end to end against it.

The clinical team's YAML is copied with only its ``registry:`` section changed (and, for
SageMaker, a ``serving.sagemaker`` section); the code is the same. Every time, the pipeline ends
with a promoted version in that registry and a serving spec marked ready. (Local files and
MLflow's SQLite store are covered by ``test_end_to_end.py``.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from ml_assets_testing.mlflow_server import mlflow_server
from ml_assets_testing.moto_server import REGION, TEST_ENVIRONMENT, moto_server
from ml_assets_testing.pipeline import build_raw, run_chain, train

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.registration import registry_for
from ml_assets.location import team_definitions
from ml_assets.registries.base import PRODUCTION
from ml_assets.teams.spec import load_team_spec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(400),
    # The team here uses backends and registries that its shipped grant does not give it.
    pytest.mark.usefixtures("permissive_policy"),
]
CLINICAL = Path(__file__).parents[1] / "ml_assets" / "teams" / "clinical" / "team.yaml"
KEYS = ModelKeys("clinical", "tumor_classifier")
BUCKET = "ml-assets-e2e"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sklearn-inference:1.2-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in TEST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    with moto_server(buckets=[BUCKET]) as url:
        yield url


def _registry_yaml(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "wandb":
        return f"registry:\n  kind: wandb\n  mode: offline\n  dir: {tmp_path / 'wandb'}\n"
    if kind == "mlflow_server":
        url = request.getfixturevalue("mlflow_url_for_e2e")
        return f"registry:\n  kind: mlflow\n  tracking_uri: {url}\n"
    url = request.getfixturevalue("aws")
    return (
        f"registry:\n  kind: sagemaker\n  storage_root: s3://{BUCKET}/registry\n"
        f"  image_uri: {IMAGE}\n  region_name: {REGION}\n  endpoint_url: {url}\n"
        f"serving:\n  sagemaker:\n    role_arn: {ROLE}\n    region_name: {REGION}\n"
        f"    endpoint_url: {url}\n"
    )


@pytest.fixture
def mlflow_url_for_e2e(tmp_path: Path) -> Iterator[str]:
    with mlflow_server(tmp_path / "mlflow") as url:
        yield url


@pytest.mark.parametrize("kind", ["wandb", "sagemaker", "mlflow_server"])
def test_pipeline_promotes_and_serves_through_each_registry(
    kind: str,
    instance: dg.DagsterInstance,
    ml_home: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    text = CLINICAL.read_text().replace("registry:\n  kind: mlflow\n", "")
    spec_path = tmp_path / "team.yaml"
    spec_path.write_text(text + _registry_yaml(kind, tmp_path, request))
    defs = team_definitions(spec_path)
    build_raw(instance, "breast_cancer")
    train(defs, instance, KEYS)

    chain = run_chain(defs, instance, KEYS)

    assert chain.success
    registry = registry_for(load_team_spec(spec_path), instance)
    production = registry.get_by_alias(KEYS.registry_name, PRODUCTION)
    assert production is not None and production.version == "1"
    assert production.registry == ("mlflow" if kind == "mlflow_server" else kind)
    assert production.notes["promotion"]["decision"] == "promoted"
    assert production.notes["serving"]["ready"] is True
    assert production.lineage["dataset"]["data_version"]
    serving = instance.get_latest_materialization_event(KEYS.serving)
    assert serving is not None and serving.asset_materialization is not None
    document = json.loads(
        Path(str(serving.asset_materialization.metadata["spec"].value)).read_text()
    )
    assert document["version"] == "1" and document["registry"] == production.registry
    if kind == "sagemaker":
        client = boto3.client(
            "sagemaker", endpoint_url=request.getfixturevalue("aws"), region_name=REGION
        )
        handoff = document["sagemaker"]
        config = client.describe_endpoint_config(
            EndpointConfigName=handoff["endpoint_config"]["name"]
        )
        assert config["ProductionVariants"][0]["ModelName"] == handoff["model"]["name"]
        model = client.describe_model(ModelName=handoff["model"]["name"])
        assert model["PrimaryContainer"]["Image"] == IMAGE
        package = client.describe_model_package(ModelPackageName=production.uri)
        assert package["ModelApprovalStatus"] == "Approved"
