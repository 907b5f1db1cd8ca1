"""The code location a real ``dagster-daemon`` loads in the daemon chaos test.

The team comes from the ``team.yaml`` named by ``CHAOS_TEAM_YAML``; the location holds each
model's training asset, the team's resources and its reconciling sensor, as a team location
does, with the sensor's interval and tick budget from ``CHAOS_SENSOR`` (JSON keyword arguments
of ``build_reconciler_sensor``). No automation sensor: the daemon launches no runs, and all its
work is the reconciler's.
"""

from __future__ import annotations

import json
import os

import dagster as dg

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import build_training_asset
from ml_assets.location import team_resources
from ml_assets.sensors.reconciler import build_reconciler_sensor
from ml_assets.teams.spec import load_team_spec

TEAM_ENV = "CHAOS_TEAM_YAML"
SENSOR_ENV = "CHAOS_SENSOR"

team = load_team_spec(os.environ[TEAM_ENV])
defs = dg.Definitions(
    assets=[build_training_asset(ModelContext(team, name)) for name in team.models],
    sensors=[build_reconciler_sensor(team, **json.loads(os.environ.get(SENSOR_ENV) or "{}"))],
    resources=team_resources(team),
)
