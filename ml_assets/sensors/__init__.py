"""Sensors: the training-job reconciler, GPU admission, and the cancel and retry jobs.

Every sensor of the library takes its minimum interval from ``sensor_interval``: the value it
was given, unless ``ML_ASSETS_SENSOR_INTERVAL_SECONDS`` says otherwise for the whole deployment
(a demo or a test wants ticks as often as the sensor daemon loops, about every 5 seconds).
"""

from __future__ import annotations

import os

SENSOR_INTERVAL_ENV = "ML_ASSETS_SENSOR_INTERVAL_SECONDS"


def sensor_interval(default: int) -> int:
    """A sensor's minimum interval in seconds: ``ML_ASSETS_SENSOR_INTERVAL_SECONDS`` when set,
    else ``default``."""
    raw = os.environ.get(SENSOR_INTERVAL_ENV, "").strip()
    if not raw:
        return default
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(
            f"{SENSOR_INTERVAL_ENV}={raw[:40]!r}: give a whole number of seconds, 1 or more"
        )
    return seconds
