"""What every asset factory shares: the keys of one model's chain, team-wide asset settings and
reading an upstream asset's latest recorded facts from the instance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg

from ml_assets.dagster_private import CODE_VERSION_TAG
from ml_assets.tags import TEAM_TAG
from ml_assets.teams.spec import ModelSpec, TeamSpec


@dataclass(frozen=True)
class ModelKeys:
    """The asset keys of one model's chain, under the team's key prefix."""

    team: str
    model: str

    def _key(self, suffix: str) -> dg.AssetKey:
        return dg.AssetKey([self.team, f"{self.model}{suffix}"])

    @property
    def dataset(self) -> dg.AssetKey:
        return self._key("_dataset")

    @property
    def features(self) -> dg.AssetKey:
        return self._key("_features")

    @property
    def trained(self) -> dg.AssetKey:
        return self._key("")

    @property
    def evaluation(self) -> dg.AssetKey:
        return self._key("_evaluation")

    @property
    def registered(self) -> dg.AssetKey:
        return self._key("_registered")

    @property
    def promoted(self) -> dg.AssetKey:
        return self._key("_promoted")

    @property
    def serving(self) -> dg.AssetKey:
        return self._key("_serving")

    @property
    def registry_name(self) -> str:
        """The model's name in the team's registry."""
        return f"{self.team}.{self.model}"


@dataclass(frozen=True)
class ModelContext:
    """One model of one team: what a factory needs to build that model's assets."""

    team: TeamSpec
    name: str

    @property
    def spec(self) -> ModelSpec:
        return self.team.models[self.name]

    @property
    def keys(self) -> ModelKeys:
        return ModelKeys(self.team.team, self.name)

    def asset_settings(self, *kinds: str) -> dict[str, Any]:
        """Group, owners, tags and kinds that every asset of the team carries."""
        return {
            "group_name": self.team.team,
            "owners": self.team.owner_tags,
            "tags": {TEAM_TAG: self.team.team},
            "kinds": set(kinds),
        }


def code_version(*parts: Any) -> str:
    """A short, stable version of the logic and settings that shape an asset's output."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, prefer_run: str | None = None, search: int = 25
) -> dict[str, Any]:
    """The plain values of the metadata on ``key``'s latest materialization.

    With ``prefer_run``, the materialization made by that run wins over a newer one from a run
    in parallel, so a step reads what its own run built. Raises a ``dg.Failure`` that says which
    asset to materialize first when there is none.
    """
    records = instance.fetch_materializations(key, limit=search if prefer_run else 1).records
    chosen = next((r for r in records if r.run_id == prefer_run), None) if prefer_run else None
    chosen = chosen or (records[0] if records else None)
    if chosen is None or chosen.asset_materialization is None:
        raise dg.Failure(
            description=(
                f"{key.to_user_string()} has not been materialized yet; materialize it first "
                "(its code location's 'Materialize' button, or `dagster asset materialize`)."
            )
        )
    return record_values(chosen)


def record_values(record: dg.EventLogRecord) -> dict[str, Any]:
    """A materialization record's metadata as plain values, plus its run and storage ids."""
    event = record.asset_materialization
    values = {name: value.value for name, value in event.metadata.items()} if event else {}
    values["__run_id__"] = record.run_id
    values["__storage_id__"] = record.storage_id
    values["__code_version__"] = (event.tags or {}).get(CODE_VERSION_TAG, "") if event else ""
    values["__timestamp__"] = record.timestamp
    return values
