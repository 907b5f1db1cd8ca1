"""Every code location loads, imports fast enough to be re-imported per run, and keeps the asset
graph pinned by a snapshot, so an accidental change to keys, owners, kinds or automation shows up
in review. Refresh the snapshots on purpose with ``UPDATE_SNAPSHOTS=1 pytest``."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).parents[1]
SNAPSHOTS = Path(__file__).parent / "snapshots"


def _locations() -> dict[str, str]:
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    return {
        entry["python_module"]["location_name"]: entry["python_module"]["module_name"]
        for entry in workspace["load_from"]
    }


LOCATIONS = _locations()


def test_workspace_has_the_platform_and_at_least_two_teams() -> None:
    assert "platform_data" in LOCATIONS
    assert len([name for name in LOCATIONS if name != "platform_data"]) >= 2


def _snapshot(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_materializable:
            assets[key.to_user_string()] = {"external": True}
            continue
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "owners": list(node.owners),
            "kinds": sorted(node.kinds),
            "tags": {k: v for k, v in node.tags.items() if not k.startswith("dagster/kind/")},
            "automation": condition.get_label() or type(condition).__name__ if condition else None,
            "code_version": node.code_version,
            "checks": sorted(c.to_user_string() for c in node.check_keys),
        }
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in defs.get_repository_def().sensor_defs),
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
    }


@pytest.mark.parametrize("location", sorted(LOCATIONS))
def test_location_loads_and_matches_its_snapshot(location: str) -> None:
    module = importlib.import_module(LOCATIONS[location])
    defs: dg.Definitions = module.defs
    dg.Definitions.validate_loadable(defs)
    snapshot = _snapshot(defs)
    path = SNAPSHOTS / f"{location}.json"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no snapshot for {location}; create it with UPDATE_SNAPSHOTS=1"
    assert snapshot == json.loads(path.read_text()), f"{location}'s asset graph changed"


@pytest.mark.parametrize("location", sorted(name for name in LOCATIONS if name != "platform_data"))
def test_every_team_asset_carries_team_policy(location: str) -> None:
    defs: dg.Definitions = importlib.import_module(LOCATIONS[location]).defs
    graph = defs.resolve_asset_graph()
    own = [graph.get(k) for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    assert len(own) >= 5
    for node in own:
        assert node.key.path[0] == location, node.key
        assert node.group_name == location
        assert node.owners[0] == f"team:{location}"
        assert node.kinds, node.key
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    for name in (f"{location}_training_reconciler", f"{location}_automation"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING


@pytest.mark.parametrize("location", sorted(LOCATIONS))
def test_every_run_of_a_location_executes_its_steps_in_one_process(location: str) -> None:
    # Automation runs use the implicit asset job, "__ASSET_JOB"; UI launches use it or a job.
    defs: dg.Definitions = importlib.import_module(LOCATIONS[location]).defs
    executors = {job.name: job.executor_def.name for job in defs.resolve_all_job_defs()}
    assert "__ASSET_JOB" in executors
    assert executors == dict.fromkeys(executors, dg.in_process_executor.name)
