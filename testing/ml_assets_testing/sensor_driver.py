"""Drive a sensor the way the sensor daemon does, without running the daemon.

The daemon evaluates a tick, stores its asset events one by one and only then stores the new
cursor. ``SensorDriver`` does the same against a real instance, and lets a test stop between the
two steps to act out a crash (set ``cursor`` back to an earlier value).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg


class SensorDriver:
    """Ticks one sensor against an instance, keeping its cursor between ticks."""

    def __init__(self, instance: dg.DagsterInstance, sensor: dg.SensorDefinition) -> None:
        self.instance = instance
        self.sensor = sensor
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        """One tick: evaluate, store the events, then the cursor."""
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = self.sensor(context)
        if not isinstance(result, dg.SensorResult):
            raise TypeError(
                f"{self.sensor.name} returned {type(result).__name__}, not SensorResult"
            )
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        self.cursor = result.cursor
        return result

    def tick_until(
        self, done: Callable[[], object], timeout: float = 60.0, interval: float = 0.2
    ) -> None:
        """Tick until ``done()`` is truthy, failing after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.sensor.name} did not get there in {timeout:.0f} s")
            self.tick()
            time.sleep(interval)
