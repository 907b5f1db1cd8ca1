"""A location's registry is a Dagster resource: swapping it swaps where every asset registers."""

from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest
from ml_assets_testing.pipeline import run_chain, train

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.registration import REGISTRY_RESOURCE, RegistryResource, registry_for
from ml_assets.location import team_definitions
from ml_assets.registries import load_registry
from ml_assets.registries.base import PRODUCTION
from ml_assets.teams.spec import load_team_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
WINE = Path(__file__).parents[1] / "ml_assets" / "teams" / "wine"


def test_a_swapped_registry_resource_receives_the_model(
    instance: dg.DagsterInstance, ml_home: Path, tmp_path: Path
) -> None:
    shipped: dg.Definitions = importlib.import_module("ml_assets.teams.wine.definitions").defs
    assert isinstance((shipped.resources or {})[REGISTRY_RESOURCE], RegistryResource)
    elsewhere = tmp_path / "swapped_registry"
    swapped = RegistryResource(team="wine", kind="local", settings=f'{{"root": "{elsewhere}"}}')
    defs = team_definitions(WINE / "team.yaml", resources={REGISTRY_RESOURCE: swapped})
    keys = ModelKeys("wine", "cultivar_classifier")

    train(defs, instance, keys)
    result = run_chain(defs, instance, keys)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    # Registration, promotion and serving all went to the swapped registry...
    moved = load_registry("local", root=elsewhere)
    [version] = moved.list_versions(keys.registry_name)
    production = moved.get_by_alias(keys.registry_name, PRODUCTION)
    assert production is not None and production.version == version.version
    # ...and none to the one the team's YAML names.
    assert (
        registry_for(load_team_spec(WINE / "team.yaml"), instance).list_versions(keys.registry_name)
        == []
    )
