"""Registries under the shared contract (``test_registries.py``).

Each registry is reached through a fixture named ``<kind>_registry`` returning a fresh, empty
``ModelRegistry``. Local, MLflow on a SQLite file and MLflow through a real ``mlflow server`` are
here; every other registry keeps its fixture (and any server it needs) in a module
``registry_<kind>.py`` beside this file, adopted automatically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from ml_assets_testing.harness import adopt_fixtures
from ml_assets_testing.mlflow_server import mlflow_server
from sklearn.linear_model import LogisticRegression

from ml_assets.registries import load_registry
from ml_assets.registries.base import ModelRegistry


@pytest.fixture
def local_registry(tmp_path: Path) -> ModelRegistry:
    return load_registry("local", root=tmp_path / "registry")


@pytest.fixture
def mlflow_registry(tmp_path: Path) -> ModelRegistry:
    return load_registry(
        "mlflow",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
    )


@pytest.fixture(scope="session")
def mlflow_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def mlflow_server_registry(mlflow_server_url: str) -> ModelRegistry:
    return load_registry("mlflow", tracking_uri=mlflow_server_url)


REGISTRY_FIXTURES = [
    "local_registry",
    "mlflow_registry",
    "mlflow_server_registry",
    *adopt_fixtures(globals(), Path(__file__).parent, "registry_", "_registry"),
]


@pytest.fixture(params=REGISTRY_FIXTURES)
def registry(request: pytest.FixtureRequest) -> ModelRegistry:
    value: ModelRegistry = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def model_name() -> str:
    """A model name no other test uses (registries on a shared server keep their models)."""
    return f"team.model_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    path = tmp_path / "model.joblib"
    joblib.dump({"estimator": model, "feature_columns": ["x"]}, path)
    return path
