"""Both registries honour one contract: register (idempotent on the job), list, alias, read."""

from __future__ import annotations

from pathlib import Path

import joblib
import pytest
from sklearn.linear_model import LogisticRegression

from ml_assets.registries import load_registry
from ml_assets.registries.base import ModelRegistry, RegistrationRequest


@pytest.fixture(params=["local", "mlflow"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return load_registry("local", root=tmp_path / "registry")
    return load_registry(
        "mlflow",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
    )


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    path = tmp_path / "model.joblib"
    joblib.dump({"estimator": model, "feature_columns": ["x"]}, path)
    return path


def _request(artifact: Path, job_id: str, auc: float) -> RegistrationRequest:
    return RegistrationRequest(
        model_name="team.model",
        artifact_path=str(artifact),
        job_id=job_id,
        metrics={"holdout_roc_auc": auc},
        params={"C": 1.0},
        lineage={"features_data_version": f"sha-{job_id}"},
    )


def test_register_list_alias_and_read_back(registry: ModelRegistry, artifact: Path) -> None:
    first = registry.register(_request(artifact, "job-a", 0.91))
    second = registry.register(_request(artifact, "job-b", 0.93))
    assert (first.version, second.version) == ("1", "2")
    assert first.registry == registry.name
    assert first.metrics["holdout_roc_auc"] == pytest.approx(0.91)
    assert first.lineage["features_data_version"] == "sha-job-a"

    registry.set_alias("team.model", second.version, "champion")
    champion = registry.get_by_alias("team.model", "champion")
    assert champion is not None and champion.job_id == "job-b"
    assert registry.get_by_alias("team.model", "archived") is None
    listed = registry.list_versions("team.model")
    assert [v.job_id for v in listed] == ["job-a", "job-b"]
    assert listed[1].aliases == ["champion"]


def test_registering_the_same_job_twice_adds_no_version(
    registry: ModelRegistry, artifact: Path
) -> None:
    once = registry.register(_request(artifact, "job-a", 0.91))
    again = registry.register(_request(artifact, "job-a", 0.91))
    assert again.version == once.version
    assert len(registry.list_versions("team.model")) == 1
