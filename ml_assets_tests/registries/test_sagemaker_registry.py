"""What the SageMaker registry leaves in SageMaker and S3 (a moto server), beyond the contract:
the package and its ``model.tar.gz``, metadata SageMaker would accept, tags, and approval statuses
through promotion and rollback."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
from ml_assets_testing.moto_server import REGION

from ml_assets.assets.promotion import Gate, promote, rollback
from ml_assets.registries.base import ARCHIVED, PRODUCTION, ModelRegistry
from ml_assets.registries.base import RegistrationRequest as Request
from ml_assets.registries.sagemaker import (
    APPROVED,
    PENDING,
    REJECTED,
    SageMakerRegistry,
    aws_name,
    boto3_client,
)
from ml_assets.tags import (
    REGISTRY_JOB_ID_TAG,
    REGISTRY_LINEAGE_TAG,
    REGISTRY_METRICS_TAG,
    REGISTRY_NOTE_PREFIX,
)

pytestmark = pytest.mark.timeout(120)

GROUP_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
AWS_TEXT = re.compile(r"[\w .:/=+@-]*")  # SageMaker's metadata/tag pattern, ASCII part
MOTO_ACCOUNT = "123456789012"


@pytest.fixture
def registry(sagemaker_registry: ModelRegistry) -> SageMakerRegistry:
    assert isinstance(sagemaker_registry, SageMakerRegistry)
    return sagemaker_registry


def _client(registry: SageMakerRegistry, service: str) -> Any:
    return boto3_client(service, region_name=REGION, endpoint_url=registry.endpoint_url)


def _s3_bytes(registry: SageMakerRegistry, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = _client(registry, "s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _statuses(registry: SageMakerRegistry, model_name: str) -> dict[str, str]:
    listed = _client(registry, "sagemaker").list_model_packages(
        ModelPackageGroupName=registry.group_name(model_name)
    )
    return {
        str(s["ModelPackageVersion"]): s["ModelApprovalStatus"]
        for s in listed["ModelPackageSummaryList"]
    }


def _request(model_name: str, artifact: Path, job_id: str, lineage: dict[str, Any]) -> Request:
    return Request(
        model_name=model_name,
        artifact_path=str(artifact),
        job_id=job_id,
        metrics={"holdout_roc_auc": 0.91, "holdout_brier_score": 0.031},
        params={"C": 1.0, "penalty": "l2"},
        lineage=lineage,
    )


def test_a_version_is_a_pending_package_serving_its_artifact_from_model_tar_gz(
    registry: SageMakerRegistry, artifact: Path, model_name: str
) -> None:
    # Longer than a metadata value may be, nested, with characters metadata may not hold.
    lineage = {
        "features": {"uri": "s3://data/features/part-0.parquet", "columns": ["x", "y, z"]},
        "runs": [{"step": f"step-{i}", "run_id": f"{i:032x}"} for i in range(6)],
        "note": 'quotes " and {braces}',
    }
    version = registry.register(_request(model_name, artifact, "job/a#1", lineage))
    sagemaker = _client(registry, "sagemaker")
    group = registry.group_name(model_name)
    package = sagemaker.describe_model_package(ModelPackageName=version.uri)

    assert (version.version, version.uri) == ("1", package["ModelPackageArn"])
    assert package["ModelPackageGroupName"] == group
    assert package["ModelApprovalStatus"] == PENDING
    assert package["ModelPackageDescription"] == "ml_assets job_id=job/a#1"
    [container] = package["InferenceSpecification"]["Containers"]
    assert container["Image"] == registry.image_uri
    folder = f"{registry.storage_root}/{group}/{aws_name('job/a#1')}"
    assert container["ModelDataUrl"] == f"{folder}/model.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(_s3_bytes(registry, container["ModelDataUrl"]))) as tar:
        assert tar.getnames() == [artifact.name]
        extracted = tar.extractfile(artifact.name)
        assert extracted is not None and extracted.read() == artifact.read_bytes()

    # Every metadata entry is one SageMaker itself would accept; the JSON lives in S3.
    metadata = package["CustomerMetadataProperties"]
    for key, value in metadata.items():
        assert len(key) <= 128 and AWS_TEXT.fullmatch(key), key
        assert len(value) <= 256 and AWS_TEXT.fullmatch(value), value
    assert metadata[REGISTRY_LINEAGE_TAG] == f"{folder}/lineage.json"
    stored_lineage = json.loads(_s3_bytes(registry, metadata[REGISTRY_LINEAGE_TAG]))
    assert stored_lineage == {**lineage, "params": {"C": 1.0, "penalty": "l2"}}
    statistics = package["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["S3Uri"] == metadata[REGISTRY_METRICS_TAG]
    assert json.loads(_s3_bytes(registry, statistics["S3Uri"])) == version.metrics

    fetched = registry.get_version(model_name, "1")
    assert fetched is not None and fetched.lineage == stored_lineage
    assert fetched.metrics == {"holdout_roc_auc": 0.91, "holdout_brier_score": 0.031}
    assert fetched.job_id == "job/a#1"

    group_arn = sagemaker.describe_model_package_group(ModelPackageGroupName=group)[
        "ModelPackageGroupArn"
    ]
    group_tags = sagemaker.list_tags(ResourceArn=group_arn)["Tags"]
    assert {"Key": "ml_assets.model", "Value": model_name} in group_tags
    # moto serves no ListTags for versioned packages, so read the tags moto stored.
    from moto.sagemaker.models import sagemaker_backends

    stored = sagemaker_backends[MOTO_ACCOUNT][REGION].model_packages[version.uri]
    assert {"Key": REGISTRY_JOB_ID_TAG, "Value": "job/a_1"} in (stored.tags or [])


def test_promotion_and_rollback_move_approval_with_production(
    registry: SageMakerRegistry, artifact: Path, model_name: str
) -> None:
    for job in ("job-a", "job-b", "job-c"):
        registry.register(_request(model_name, artifact, job, {"job": job}))
    gates = [Gate("beats_champion", True, "no champion yet")]

    promote(registry, model_name, "1", gates, run_id="run-1")
    assert _statuses(registry, model_name) == {"1": APPROVED, "2": PENDING, "3": PENDING}

    promote(registry, model_name, "2", gates, run_id="run-2")
    assert _statuses(registry, model_name) == {"1": REJECTED, "2": APPROVED, "3": PENDING}
    first = registry.get_version(model_name, "1")
    assert first is not None and first.aliases == [ARCHIVED]

    rollback(registry, model_name, None, run_id="run-3", reason="latency regression")
    assert _statuses(registry, model_name) == {"1": APPROVED, "2": REJECTED, "3": PENDING}
    production = registry.get_by_alias(model_name, PRODUCTION)
    assert production is not None and production.version == "1"
    assert production.notes["rollback"]["from_version"] == "2"
    assert production.notes["promotion"]["decision"] == "promoted"
    archived = registry.get_by_alias(model_name, ARCHIVED)
    assert archived is not None and archived.version == "2"

    # Approved names exactly what serves, so a deploy pipeline can ask SageMaker directly.
    sagemaker = _client(registry, "sagemaker")
    approved = sagemaker.list_model_packages(
        ModelPackageGroupName=registry.group_name(model_name), ModelApprovalStatus=APPROVED
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in approved] == [production.uri]
    package = sagemaker.describe_model_package(ModelPackageName=production.uri)
    assert package["ApprovalDescription"] == f"ml_assets: {PRODUCTION}"
    note_uri = package["CustomerMetadataProperties"][f"{REGISTRY_NOTE_PREFIX}rollback"]
    assert note_uri.startswith(f"{registry.storage_root}/{registry.group_name(model_name)}/")
    assert json.loads(_s3_bytes(registry, note_uri))["to_version"] == "1"

    # Moved without archiving, production still leaves its previous holder Rejected.
    registry.set_alias(model_name, "3", PRODUCTION)
    assert _statuses(registry, model_name) == {"1": REJECTED, "2": REJECTED, "3": APPROVED}
    registry.delete_alias(model_name, PRODUCTION)
    assert _statuses(registry, model_name) == {"1": REJECTED, "2": REJECTED, "3": REJECTED}


def test_a_new_registry_object_finds_the_version_its_job_registered(
    registry: SageMakerRegistry, artifact: Path, model_name: str
) -> None:
    first = registry.register(_request(model_name, artifact, "job-a", {}))
    fresh = SageMakerRegistry(
        storage_root=registry.storage_root,
        image_uri=registry.image_uri,
        region_name=REGION,
        endpoint_url=registry.endpoint_url,
    )
    again = fresh.register(_request(model_name, artifact, "job-a", {}))
    assert (again.version, again.uri) == (first.version, first.uri)
    assert list(_statuses(registry, model_name)) == ["1"]


def test_what_sagemaker_cannot_hold_is_refused_with_a_reason(
    registry: SageMakerRegistry, artifact: Path, model_name: str
) -> None:
    registry.register(_request(model_name, artifact, "job-a", {}))
    with pytest.raises(ValueError, match="alias 'blue/green!'"):
        registry.set_alias(model_name, "1", "blue/green!")
    with pytest.raises(ValueError, match="note name 'a,b'"):
        registry.annotate(model_name, "1", {"a,b": 1})
    with pytest.raises(ValueError, match="no version 7"):
        registry.set_alias(model_name, "7", PRODUCTION)
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        SageMakerRegistry(storage_root="/tmp/registry", image_uri=registry.image_uri)


def test_group_names_are_valid_distinct_and_stable() -> None:
    names = ["fraud_detector", "team.model_ab12cd34", "team-model-ab12cd34", "Team.Model", "x" * 90]
    mapped = [aws_name(name) for name in names]
    assert all(GROUP_NAME.fullmatch(m) and len(m) <= 63 for m in mapped), mapped
    assert len(set(mapped)) == len(names)
    assert mapped == [aws_name(name) for name in names]
    assert aws_name("team-model-ab12cd34") == "team-model-ab12cd34"  # valid names are kept
    assert mapped[1].startswith("team-model-ab12cd34-")
    prefixed = SageMakerRegistry(
        storage_root="s3://bucket/root", image_uri="image", model_package_group_prefix="fraud-"
    )
    assert prefixed.group_name("detector") == "fraud-detector"
