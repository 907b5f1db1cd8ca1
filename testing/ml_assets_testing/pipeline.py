"""Drive one model's deferred pipeline in process, as the UI and the daemon would, for tests."""

from __future__ import annotations

import dagster as dg

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.training import ADMISSION_SENSOR
from ml_assets.platform_data.definitions import defs as platform_defs
from ml_assets_testing.sensor_driver import SensorDriver


def build_raw(instance: dg.DagsterInstance, source: str) -> None:
    """Materialize the platform's raw table ``platform/raw_<source>``."""
    job = platform_defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetKey(["platform", f"raw_{source}"])
    assert job.execute_in_process(instance=instance, asset_selection=[key]).success


def admission(instance: dg.DagsterInstance) -> SensorDriver:
    """The platform's GPU admission sensor, which a job asking for a pool's GPUs waits on."""
    return SensorDriver.of(instance, platform_defs, ADMISSION_SENSOR)


def train(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: ModelKeys, timeout: float = 240
) -> None:
    """Submit training as "Materialize all" does, then tick the reconciler until it records a
    new trained model (and the platform's admission sensor, for a job that waits for GPUs)."""
    job = defs.resolve_implicit_global_asset_job_def()
    submitted = job.execute_in_process(
        instance=instance, asset_selection=[keys.dataset, keys.features, keys.trained]
    )
    assert submitted.success
    before = instance.get_latest_materialization_event(keys.trained)
    reconciler = SensorDriver.of(instance, defs, f"{keys.team}_training_reconciler")
    reconciler.tick_until(
        lambda: instance.get_latest_materialization_event(keys.trained) != before,
        timeout,
        also=[admission(instance)],
    )


def run_chain(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: ModelKeys
) -> dg.ExecuteInProcessResult:
    """Evaluation, registration, promotion and serving in one run, as the automation sensor
    launches them."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[keys.evaluation, keys.registered, keys.promoted, keys.serving],
        raise_on_error=False,
    )
