"""ML_ASSETS_SENSOR_INTERVAL_SECONDS sets every library sensor's minimum interval at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_assets.location import team_definitions
from ml_assets.sensors import SENSOR_INTERVAL_ENV
from ml_assets.sensors.admission import build_admission_sensor

FRAUD = Path(__file__).parents[2] / "ml_assets" / "teams" / "fraud" / "team.yaml"


def intervals() -> dict[str, int]:
    defs = team_definitions(FRAUD)
    found = {sensor.name: sensor.minimum_interval_seconds for sensor in defs.sensors or []}
    found["gpu_admission"] = build_admission_sensor().minimum_interval_seconds
    return {name: seconds for name, seconds in found.items() if seconds is not None}


def test_defaults_then_one_variable_for_every_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SENSOR_INTERVAL_ENV, raising=False)
    assert intervals() == {
        "fraud_training_reconciler": 10,
        "fraud_automation": 15,
        "gpu_admission": 10,
    }
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, "5")
    assert set(intervals().values()) == {5}


@pytest.mark.parametrize("raw", ["0", "-3", "fast", "2.5"])
def test_a_bad_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, raw)
    with pytest.raises(ValueError, match=SENSOR_INTERVAL_ENV):
        build_admission_sensor()
