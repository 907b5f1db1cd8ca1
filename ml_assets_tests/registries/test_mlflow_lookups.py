"""Lookups of one version skip importing mlflow (seconds), against a SQLite store or a server,
and return exactly what MLflow's own client returns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml_assets.registries import load_registry
from ml_assets.registries.base import PRODUCTION, RegistrationRequest

LOOKUP = """
import json, sys
from ml_assets.registries.mlflow import MlflowRegistry
registry = MlflowRegistry(sys.argv[1])
found = [registry.get_by_alias(sys.argv[2], "production"), registry.get_version(sys.argv[2], "1"),
         registry.get_version(sys.argv[2], "7"), registry.get_by_alias(sys.argv[2], "archived")]
print(json.dumps({"found": [v.model_dump(mode="json") if v else None for v in found],
                  "mlflow_imported": "mlflow" in sys.modules}))
"""


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_lookups_without_mlflow_match_the_client(
    store: str, tmp_path: Path, artifact: Path, request: pytest.FixtureRequest
) -> None:
    if store == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        registry = load_registry("mlflow", tracking_uri=uri, artifact_root=tmp_path / "artifacts")
    else:
        uri = request.getfixturevalue("mlflow_server_url")
        registry = load_registry("mlflow", tracking_uri=uri)
    name = f"team.lookup_{store}_{tmp_path.name[-6:]}"
    for job in ("job-a", "job-b"):
        registry.register(
            RegistrationRequest(
                model_name=name,
                artifact_path=str(artifact),
                job_id=job,
                metrics={"holdout_roc_auc": 0.9},
                lineage={"dataset": {"data_version": f"sha-{job}"}},
            )
        )
    registry.set_alias(name, "2", PRODUCTION)
    registry.annotate(name, "2", {"promotion": {"decision": "promoted"}})

    answer = subprocess.run(
        [sys.executable, "-c", LOOKUP, uri, name], capture_output=True, text=True, check=True
    )

    result = json.loads(answer.stdout)
    assert result["mlflow_imported"] is False
    production, first, missing, no_alias = result["found"]
    expected = registry.list_versions(name)  # through MLflow's own client
    assert production == expected[1].model_dump(mode="json")
    assert production["notes"] == {"promotion": {"decision": "promoted"}}
    assert first == expected[0].model_dump(mode="json")
    assert missing is None and no_alias is None
