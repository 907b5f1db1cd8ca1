"""Drive a sensor the way the sensor daemon does, without running the daemon.

The daemon evaluates a tick, stores its asset events one by one and only then stores the new
cursor. ``SensorDriver`` does the same against a real instance, and lets a test stop between the
two steps to act out a crash (set ``cursor`` back to an earlier value).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg


class SensorDriver:
    """Ticks one sensor against an instance, keeping its cursor between ticks."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        sensor: dg.SensorDefinition,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.instance = instance
        self.sensor = sensor
        self.resources = dict(resources or {})
        self.cursor: str | None = None

    @classmethod
    def of(cls, instance: dg.DagsterInstance, defs: dg.Definitions, name: str) -> SensorDriver:
        """The driver of sensor ``name`` of ``defs``, with the resources ``defs`` gives it."""
        return cls(instance, defs.resolve_sensor_def(name), defs.resources)

    def tick(self) -> dg.SensorResult:
        """One tick: evaluate, store the events, then the cursor."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        )
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
        self,
        done: Callable[[], object],
        timeout: float = 60.0,
        interval: float = 0.2,
        also: Sequence[SensorDriver] = (),
    ) -> None:
        """Tick until ``done()`` is truthy, failing after ``timeout`` seconds. The sensors in
        ``also`` tick first each time, as the daemon runs them beside this one (the platform's
        ``gpu_admission``, say)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.sensor.name} did not get there in {timeout:.0f} s")
            for other in also:
                other.tick()
            self.tick()
            time.sleep(interval)
