"""A location's registry and backends are Dagster resources: swapping one by its resource key
swaps where every asset registers, or where every job runs and is watched from."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from ml_assets_testing.pipeline import run_chain, train

from ml_assets.assets.common import ModelKeys
from ml_assets.assets.registration import REGISTRY_RESOURCE, RegistryResource, registry_for
from ml_assets.backends.base import Backend
from ml_assets.backends.resource import BackendResource
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


class Recorded:
    """A backend that writes each call it delegates to ``log``: the training step and the
    reconciler run in different places, so the record is a file."""

    def __init__(self, backend: Backend, log: Path) -> None:
        self._backend, self._log = backend, log

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._backend, name)
        if name not in ("submit", "poll", "cancel"):
            return attribute

        def recorded(*args: Any, **kwargs: Any) -> Any:
            with self._log.open("a") as log:
                log.write(f"{name}\n")
            return attribute(*args, **kwargs)

        return recorded


class RecordedBackendResource(BackendResource):
    log: str

    def get_backend(self) -> Backend:
        return Recorded(super().get_backend(), Path(self.log))  # type: ignore[return-value]


def test_a_swapped_backend_resource_runs_and_watches_the_job(
    instance: dg.DagsterInstance, ml_home: Path, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    swapped = RecordedBackendResource(backend="local", log=str(log))
    defs = team_definitions(WINE / "team.yaml", resources={"local_backend": swapped})
    keys = ModelKeys("wine", "cultivar_classifier")

    train(defs, instance, keys)

    calls = log.read_text().split()
    assert calls.count("submit") == 1  # by the training step
    assert calls.count("poll") >= 1  # by the reconciler, until the job ended
    trained = instance.get_latest_materialization_event(keys.trained)
    assert trained is not None and trained.asset_materialization is not None
    assert trained.asset_materialization.metadata["backend"].value == "local"
