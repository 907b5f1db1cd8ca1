"""The platform data code location."""

import dagster as dg

from ml_assets.platform_data.assets import raw_breast_cancer, raw_card_transactions, raw_digits
from ml_assets.sensors import sensor_interval
from ml_assets.sensors.admission import build_admission_sensor

defs = dg.Definitions(
    assets=[raw_breast_cancer, raw_card_transactions, raw_digits],
    sensors=[
        dg.AutomationConditionSensorDefinition(
            "platform_automation",
            target=dg.AssetSelection.groups("platform"),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=sensor_interval(15),
            description="Builds missing raw data on a fresh instance.",
        ),
        # The one writer of GPU admission decisions for every team (see its module).
        build_admission_sensor(),
    ],
    # Each raw table is a short step: one process per run, not one per step.
    executor=dg.in_process_executor,
)
