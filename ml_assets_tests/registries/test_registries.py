"""Every registry honours one contract: register (idempotent on the job), list, get, alias,
move and delete aliases, annotate, read back. Runs against each fixture in ``conftest``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_assets.registries.base import (
    CHALLENGER,
    PRODUCTION,
    ModelRegistry,
    RegistrationRequest,
)

pytestmark = pytest.mark.timeout(120)


def _request(model_name: str, artifact: Path, job_id: str, auc: float) -> RegistrationRequest:
    return RegistrationRequest(
        model_name=model_name,
        artifact_path=str(artifact),
        job_id=job_id,
        metrics={"holdout_roc_auc": auc},
        params={"C": 1.0},
        lineage={
            "features_data_version": f"sha-{job_id}",
            "runs": {"training": "run-1", "evaluation": "run-2"},
        },
    )


def test_register_list_alias_and_read_back(
    registry: ModelRegistry, artifact: Path, model_name: str
) -> None:
    first = registry.register(_request(model_name, artifact, "job-a", 0.91))
    second = registry.register(_request(model_name, artifact, "job-b", 0.93))
    assert (first.version, second.version) == ("1", "2")
    assert first.registry == registry.name
    assert first.metrics["holdout_roc_auc"] == pytest.approx(0.91)
    assert first.lineage["features_data_version"] == "sha-job-a"
    assert first.lineage["runs"] == {"training": "run-1", "evaluation": "run-2"}

    registry.set_alias(model_name, second.version, PRODUCTION)
    production = registry.get_by_alias(model_name, PRODUCTION)
    assert production is not None and production.job_id == "job-b"
    assert production.aliases == [PRODUCTION]
    assert registry.get_by_alias(model_name, "archived") is None
    listed = registry.list_versions(model_name)
    assert [v.job_id for v in listed] == ["job-a", "job-b"]
    assert listed[0].aliases == [] and listed[1].aliases == [PRODUCTION]
    fetched = registry.get_version(model_name, "1")
    assert fetched is not None and fetched.job_id == "job-a"
    assert registry.get_version(model_name, "99") is None


def test_registering_the_same_job_twice_adds_no_version(
    registry: ModelRegistry, artifact: Path, model_name: str
) -> None:
    once = registry.register(_request(model_name, artifact, "job-a", 0.91))
    again = registry.register(_request(model_name, artifact, "job-a", 0.91))
    assert again.version == once.version
    assert len(registry.list_versions(model_name)) == 1


def test_an_alias_moves_and_can_be_deleted(
    registry: ModelRegistry, artifact: Path, model_name: str
) -> None:
    for job in ("job-a", "job-b"):
        registry.register(_request(model_name, artifact, job, 0.9))
    registry.set_alias(model_name, "1", PRODUCTION)
    registry.set_alias(model_name, "2", CHALLENGER)

    registry.set_alias(model_name, "2", PRODUCTION)  # promote: production moves to 2

    production = registry.get_by_alias(model_name, PRODUCTION)
    assert production is not None and production.version == "2"
    assert sorted(production.aliases) == sorted([PRODUCTION, CHALLENGER])
    first = registry.get_version(model_name, "1")
    assert first is not None and first.aliases == []

    registry.delete_alias(model_name, CHALLENGER)
    registry.delete_alias(model_name, CHALLENGER)  # idempotent
    assert registry.get_by_alias(model_name, CHALLENGER) is None
    current = registry.get_by_alias(model_name, PRODUCTION)
    assert current is not None and current.version == "2"


def test_annotations_merge_and_read_back(
    registry: ModelRegistry, artifact: Path, model_name: str
) -> None:
    version = registry.register(_request(model_name, artifact, "job-a", 0.9)).version
    assert registry.get_version(model_name, version).notes == {}  # type: ignore[union-attr]

    registry.annotate(model_name, version, {"promotion": {"decision": "promoted", "checks": 3}})
    registry.annotate(model_name, version, {"serving": {"ready": True}})
    registry.annotate(model_name, version, {"promotion": {"decision": "rolled_back"}})

    notes = registry.get_version(model_name, version).notes  # type: ignore[union-attr]
    assert notes == {"promotion": {"decision": "rolled_back"}, "serving": {"ready": True}}
    assert registry.list_versions(model_name)[0].notes == notes


def test_an_artifact_that_is_not_a_joblib_bundle_is_stored_as_it_is(
    registry: ModelRegistry, tmp_path: Path, model_name: str
) -> None:
    """A team's own artifact (here numpy weights) registers in every registry; MLflow logs it as
    a plain artifact instead of unpickling it as a scikit-learn model."""
    weights = tmp_path / "model.npz"
    weights.write_bytes(b"PK\x03\x04 not a pickle, a team's own format")
    request = _request(model_name, weights, "job-npz", 0.9).model_copy(update={"flavour": "file"})
    version = registry.register(request)
    assert version.job_id == "job-npz"
    assert registry.get_version(model_name, version.version) is not None
