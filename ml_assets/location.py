"""Builds a team's code location from its YAML spec: assets, checks, sensors and jobs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from ml_assets.assets.common import ModelContext
from ml_assets.assets.data import build_data_assets
from ml_assets.assets.evaluation import build_evaluation_asset
from ml_assets.assets.promotion import build_promotion_asset, build_rollback_job
from ml_assets.assets.registration import (
    REGISTRY_RESOURCE,
    RegistryResource,
    build_registration_asset,
)
from ml_assets.assets.serving import build_serving_asset
from ml_assets.assets.training import build_training_asset
from ml_assets.backends import backend_resource, backend_resource_key
from ml_assets.policy import PolicyError, check_team, load_policy
from ml_assets.sensors import sensor_interval
from ml_assets.sensors.cancel import build_cancel_job, build_retry_job
from ml_assets.sensors.reconciler import build_reconciler_sensor
from ml_assets.tags import TEAM_TAG
from ml_assets.teams.spec import TeamSpec, TeamSpecError, load_team_spec


class TeamLocationError(dg.DagsterError, TeamSpecError):
    """A team's location cannot load because a file the team or the platform owns is wrong.

    It is a ``DagsterError`` so that Dagster reports it as it is, instead of wrapping it in its
    generic "Error occurred during the loading of Dagster definitions" under which the UI would
    show the file, line and field only further down, after a traceback.
    """


def build_team_assets(team: TeamSpec) -> list[dg.AssetsDefinition]:
    """Every asset of every model of the team, in chain order."""
    assets: list[dg.AssetsDefinition] = []
    for name in team.models:
        model = ModelContext(team, name)
        assets.extend(build_data_assets(model))
        assets.append(build_training_asset(model))
        assets.append(build_evaluation_asset(model))
        assets.append(build_registration_asset(model))
        assets.append(build_promotion_asset(model))
        assets.append(build_serving_asset(model))
    return assets


def team_definitions(
    spec_path: str | Path, resources: Mapping[str, Any] | None = None
) -> dg.Definitions:
    """The Definitions of one team's code location, from its ``team.yaml``.

    ``resources`` replace the location's own by key: ``registry``, and ``<name>_backend`` for
    each backend the team may use. Every asset, sensor and job reads them from there.
    """
    try:
        team = load_team_spec(spec_path)
        check_team(load_policy(), team)
    except (TeamSpecError, PolicyError) as error:
        raise TeamLocationError(str(error)) from None
    return dg.Definitions(
        assets=build_team_assets(team),
        sensors=[
            build_reconciler_sensor(team),
            dg.AutomationConditionSensorDefinition(
                f"{team.team}_automation",
                target=dg.AssetSelection.groups(team.team),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=sensor_interval(15),
                run_tags={TEAM_TAG: team.team},
                description="Runs evaluation, registration, promotion and the serving spec as "
                "soon as a new model is recorded.",
            ),
        ],
        jobs=[
            dg.define_asset_job(
                f"{team.team}_pipeline",
                selection=dg.AssetSelection.groups(team.team),
                tags={TEAM_TAG: team.team},
                description="Every asset of the team, from dataset to registered model.",
            ),
            build_cancel_job(team),
            build_retry_job(team),
            build_rollback_job(team),
        ],
        resources={**team_resources(team), **(resources or {})},
        # A team's steps are short (training is deferred to its backend), so a run executes
        # them in its own process rather than paying a process start and import per step.
        executor=dg.in_process_executor,
    )


def team_resources(team: TeamSpec) -> dict[str, Any]:
    """A team location's resources: its registry, and each backend it may use as
    ``<name>_backend``, configured from its YAML."""
    return {
        REGISTRY_RESOURCE: RegistryResource.for_team(team),
        **{
            backend_resource_key(name): backend_resource(name, team.backends.get(name))
            for name in team.allowed_backends
        },
    }
