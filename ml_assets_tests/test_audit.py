"""The audit trail end to end: two pipeline runs, a promotion, a rollback, and the audit command.

The second run reads raw data that differs from the first in one value of one row; the audit
of each version shows different dataset and feature hashes. The text output is compared with a
golden file after volatile values (run ids, hashes, times, paths) are replaced by placeholders;
refresh it with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from ml_assets_testing.pipeline import build_raw, run_chain, train

from ml_assets.assets.common import ModelKeys
from ml_assets.location import team_definitions
from ml_assets.platform_data.assets import raw_key
from ml_assets.tables import file_sha256

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TEAMS_DIR = Path(__file__).parents[1] / "ml_assets" / "teams"
GOLDEN = Path(__file__).parent / "golden" / "audit_production.txt"
KEYS = ModelKeys("clinical", "tumor_classifier")


def _train_and_chain(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    train(defs, instance, KEYS)
    assert run_chain(defs, instance, KEYS).success


def _audit(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.audit", "audit", "clinical/tumor_classifier",
         "--spec", str(spec), *args],
        capture_output=True, text=True, env={**os.environ}, check=False,
    )  # fmt: skip


def normalize(text: str) -> str:
    """Replace what changes from run to run with stable placeholders."""
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    text = re.sub(
        r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<run>", text
    )
    text = re.sub(r"\b[0-9a-f]{12}\b", "<code>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "<time>", text)
    text = re.sub(r"(?<=\s)/\S+", "<path>", text)
    return re.sub(r"\b\d\.\d{4}\b", "<metric>", text)


def test_audit_traces_production_back_to_the_data_and_follows_a_rollback(
    instance: dg.DagsterInstance, ml_home: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "team.yaml"
    text = (TEAMS_DIR / "clinical" / "team.yaml").read_text()
    # A local registry, and a challenger may trail the champion slightly (one changed row).
    text = text.replace("kind: mlflow", "kind: local")
    spec.write_text(
        text.replace("    retry:", "    promotion:\n      min_improvement: -0.01\n    retry:")
    )
    defs = team_definitions(spec)
    build_raw(instance, "breast_cancer")
    _train_and_chain(defs, instance)

    # The same source with one value of one row changed, recorded as a new raw version.
    first_raw = instance.get_latest_materialization_event(raw_key("breast_cancer"))
    assert first_raw is not None and first_raw.asset_materialization is not None
    original = Path(str(first_raw.asset_materialization.metadata["path"].value))
    changed = tmp_path / "raw_changed.parquet"
    frame = pd.read_parquet(original)
    frame.loc[frame.index[0], "mean_radius"] += 0.01
    frame.to_parquet(changed)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            raw_key("breast_cancer"),
            metadata={"path": str(changed), "data_version": file_sha256(changed)},
        )
    )
    _train_and_chain(defs, instance)

    first = json.loads(_audit(spec, "--version", "1", "--json").stdout)
    second = json.loads(_audit(spec, "--json").stdout)  # production by default
    assert second["version"] == "2" and second["aliases"] == ["production"]
    assert second["promotion"]["decision"] == "promoted"
    assert second["promotion"]["previous_production"] == "1"
    assert first["dataset"]["data_version"] != second["dataset"]["data_version"]
    assert first["features"]["data_version"] != second["features"]["data_version"]
    assert first["training"]["artifact_sha256"] != second["training"]["artifact_sha256"]
    for record in (first, second):
        assert record["dataset"]["run_id"] and record["features"]["run_id"]
        assert record["training"]["submitted_by_run"] and record["evaluation"]["run_id"]
        assert record["training"]["backend"] == "local"
        assert record["dataset"]["code_version"] and record["training"]["code_version"]

    rollback = defs.get_job_def("clinical_rollback").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "clinical_rollback_production": {
                    "config": {"model": "tumor_classifier", "reason": "drop in precision"}
                }
            }
        },
    )
    assert rollback.success
    promoted = instance.get_latest_materialization_event(KEYS.promoted)
    assert promoted is not None and promoted.asset_materialization is not None
    assert promoted.asset_materialization.metadata["decision"].value == "rolled_back"
    assert promoted.asset_materialization.metadata["version"].value == "1"

    audited = _audit(spec)
    assert audited.returncode == 0, audited.stderr
    after = json.loads(_audit(spec, "--json").stdout)
    assert after["version"] == "1" and after["rollback"]["from_version"] == "2"
    assert after["rollback"]["run_id"] == rollback.run_id
    normalized = normalize(audited.stdout)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(normalized)
    assert normalized == GOLDEN.read_text()

    missing = _audit(spec, "--stage", "challenger")
    assert missing.returncode == 2
    assert "has no version at stage 'challenger'" in missing.stderr
