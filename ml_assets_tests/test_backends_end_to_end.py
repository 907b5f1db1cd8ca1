"""One model moved from local to each remote backend by its YAML alone, the pipeline unchanged.

For every backend the clinical team's YAML gets ``allowed_backends``, a ``backends.<name>``
section pointing at that backend's loopback fake (or moto), and ``backend: <name>`` on its model.
The deferred pipeline then runs as in production: the run submits and ends, the fake really
runs the job runner through the staging wrapper, the reconciler records the model from
the result in the backend's storage, and evaluation, registration, promotion and the serving
spec follow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets import transport
from ml_assets.assets.common import ModelKeys
from ml_assets.assets.registration import registry_for
from ml_assets.location import team_definitions
from ml_assets.platform_data.assets import raw_key
from ml_assets.platform_data.definitions import defs as platform_defs
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


@contextlib.contextmanager
def kubernetes(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ml_assets_testing.fake_kubernetes import FakeKubernetes

    with FakeKubernetes(root / "fake") as fake:
        settings = fake.settings(str(root / "storage")).model_dump(exclude_none=True)
        yield settings


@contextlib.contextmanager
def vertex(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ml_assets_testing.fake_vertex import FakeVertex, GcsEmulator

    with (
        GcsEmulator(["clinical-training"]) as gcs,
        FakeVertex(root / "vertex", job_env=gcs.env) as fake,
    ):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        yield fake.backend_settings(storage_root="gs://clinical-training/ml", sync_seconds=0.5)


@contextlib.contextmanager
def sagemaker(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ml_assets_testing.fake_sagemaker import FakeSageMaker, use_fake_aws

    with FakeSageMaker(root / "sagemaker") as fake:
        use_fake_aws(fake, monkeypatch)
        yield fake.backend_settings(f"s3://{fake.create_bucket()}/ml", sync_seconds=0.5)


@contextlib.contextmanager
def databricks(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ml_assets_testing.fake_databricks import FakeDatabricks

    with FakeDatabricks(root / "databricks") as fake:
        for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(root / "no-databrickscfg"))
        for name, value in fake.client_env.items():
            monkeypatch.setenv(name, value)
        yield fake.backend_settings(storage_root="dbfs:/ml_assets/clinical", sync_seconds=0.5)


def location_with_raw_data(
    spec: dict[str, Any], tmp_path: Path, instance: dg.DagsterInstance
) -> tuple[Path, dg.Definitions]:
    """The team location of ``spec`` written as a YAML file, with the raw table it reads built."""
    spec_path = tmp_path / "team.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    assert (
        platform_defs.resolve_implicit_global_asset_job_def()
        .execute_in_process(instance=instance, asset_selection=[raw_key("breast_cancer")])
        .success
    )
    return spec_path, team_definitions(spec_path)


BACKENDS: dict[str, Callable[..., contextlib.AbstractContextManager[dict[str, Any]]]] = {
    "databricks": databricks,
    "kubernetes": kubernetes,
    "sagemaker": sagemaker,
    "vertex": vertex,
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_same_pipeline_trains_on_each_backend(
    backend: str,
    instance: dg.DagsterInstance,
    ml_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with BACKENDS[backend](tmp_path, monkeypatch) as settings:
        transport.reset_clients()
        spec = yaml.safe_load(CLINICAL.read_text())
        spec["registry"] = {"kind": "local"}
        spec["allowed_backends"] = ["local", backend]
        spec["backends"] = {backend: settings}
        spec["models"]["tumor_classifier"]["backend"] = backend
        spec_path, defs = location_with_raw_data(spec, tmp_path, instance)
        job = defs.resolve_implicit_global_asset_job_def()

        submitted = job.execute_in_process(
            instance=instance, asset_selection=[KEYS.dataset, KEYS.features, KEYS.trained]
        )

        assert submitted.success
        assert instance.get_latest_materialization_event(KEYS.trained) is None
        reconciler = SensorDriver.of(instance, defs, "clinical_training_reconciler")
        reconciler.tick_until(lambda: instance.get_latest_materialization_event(KEYS.trained), 240)
        trained = instance.get_latest_materialization_event(KEYS.trained)
        assert trained is not None and trained.asset_materialization is not None
        metadata = trained.asset_materialization.metadata
        assert metadata["backend"].value == backend
        root = str(settings["storage_root"])
        assert str(metadata["artifact"].value).startswith(root)

        chain = job.execute_in_process(
            instance=instance,
            asset_selection=[KEYS.evaluation, KEYS.registered, KEYS.promoted, KEYS.serving],
        )

        assert chain.success
        production = registry_for(load_team_spec(spec_path), instance).get_by_alias(
            KEYS.registry_name, PRODUCTION
        )
        assert production is not None
        assert production.lineage["training"]["backend"] == backend
        assert production.metrics["holdout_roc_auc"] > 0.95
        assert production.notes["serving"]["ready"] is True


SCREENING = CLINICAL.parents[1] / "screening"


def test_a_team_script_in_its_own_image_trains_on_kubernetes(
    instance: dg.DagsterInstance, ml_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screening team's standalone dagster-pipes script (no ml_assets inside) runs as the
    container command of a Kubernetes Job, unstaged, with the team's image; the reconciler
    reads its Pipes messages from the shared volume and the chain reaches production."""
    keys = ModelKeys("screening", "malignancy_screen")
    with kubernetes(tmp_path, monkeypatch) as settings:
        spec = yaml.safe_load((SCREENING / "team.yaml").read_text())
        spec["allowed_backends"] = ["local", "kubernetes"]
        spec["backends"] = {"kubernetes": settings}
        model = spec["models"]["malignancy_screen"]
        model["backend"] = "kubernetes"
        # The image's WORKDIR holds train.py; the fake runs the command on this machine.
        model["trainer"]["working_dir"] = str(SCREENING)
        spec_path, defs = location_with_raw_data(spec, tmp_path, instance)
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(
            instance=instance, asset_selection=[keys.dataset, keys.features, keys.trained]
        ).success
        reconciler = SensorDriver.of(instance, defs, "screening_training_reconciler")
        reconciler.tick_until(lambda: instance.get_latest_materialization_event(keys.trained), 240)
        trained = instance.get_latest_materialization_event(keys.trained)
        assert trained is not None and trained.asset_materialization is not None
        metadata = {k: v.value for k, v in trained.asset_materialization.metadata.items()}
        assert metadata["backend"] == "kubernetes"
        assert str(metadata["artifact"]).startswith(str(settings["storage_root"]))
        assert str(metadata["artifact"]).endswith("model.npz")
        assert metadata["trainer"] == "python train.py"
        assert float(metadata["train/roc_auc"]) > 0.95  # type: ignore[arg-type]

        chain = job.execute_in_process(
            instance=instance,
            asset_selection=[keys.evaluation, keys.registered, keys.promoted, keys.serving],
        )
        assert chain.success
        production = registry_for(load_team_spec(spec_path), instance).get_by_alias(
            keys.registry_name, PRODUCTION
        )
        assert production is not None
        assert production.lineage["training"]["backend"] == "kubernetes"
