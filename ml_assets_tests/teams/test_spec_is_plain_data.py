"""The team spec is plain data: loading one imports neither Dagster nor an SDK and reads no
environment variable; its owner rule accepts nothing Dagster refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ml_assets.teams.spec import owner_is_valid

ROOT = Path(__file__).parents[2]

LOADS_EVERY_TEAM = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ml_assets.teams.spec import load_team_spec

    teams = [load_team_spec(path) for path in sorted(Path("ml_assets/teams").glob("*/team.yaml"))]
    remote = load_team_spec(sys.argv[1])
    loaded = sorted(
        name for name, module in sys.modules.items()
        if getattr(module, "__file__", None)  # namespace packages (google, ...) are no import
    )
    print(json.dumps({"teams": len(teams), "backends": remote.allowed_backends, "modules": loaded}))
    """
)
HEAVY = (
    "dagster",
    "dagster_pipes",
    "boto3",
    "botocore",
    "kubernetes",
    "google.cloud.aiplatform",
    "google.cloud.storage",
    "google.api_core",
    "databricks",
    "mlflow",
    "wandb",
    "sklearn",
    "torch",
    "pandas",
)


def test_loading_team_specs_imports_no_dagster_or_sdk_and_reads_no_secret(
    tmp_path: Path,
) -> None:
    spec = yaml.safe_load((ROOT / "ml_assets" / "teams" / "fraud" / "team.yaml").read_text())
    spec["allowed_backends"] = ["local", "kubernetes", "databricks"]
    spec["backends"] = {
        "kubernetes": {
            "namespace": "ml",
            "image_uri": "img:1",
            "storage_root": "s3://bucket/ml",
            "token": {"env": "K8S_TOKEN"},
        },
        "databricks": {"host": "https://x.cloud.databricks.com", "token": {"env": "DBX_TOKEN"}},
    }
    team = tmp_path / "team.yaml"
    team.write_text(yaml.safe_dump(spec))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # the tokens' variables are unset
    out = subprocess.run(
        [sys.executable, "-c", LOADS_EVERY_TEAM, str(team)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["teams"] >= 4
    assert result["backends"] == ["local", "kubernetes", "databricks"]
    heavy = [
        name
        for name in result["modules"]
        if any(name == root or name.startswith(root + ".") for root in HEAVY)
    ]
    assert heavy == []


@pytest.mark.parametrize(
    "owner",
    [
        "team:fraud",
        "team:x",
        "team:",
        "ml@example.com",
        "first.last+tag@sub.example.co.uk",
        "_x@example.io",
        ".dot@example.com",
        "-dash@example.com",
        "a@b.c",
        "a@b.abcdefgh",
        "a@b..com",
        "a b@example.com",
        "no-at-sign",
        "@example.com",
        "Team:fraud",
        "team:with spaces",
        "ü@example.com",
        "a@exa_mple.com",
        "a@example.c0m",
        "",
    ],
)
def test_the_owner_rule_accepts_nothing_dagster_refuses(owner: str) -> None:
    try:
        dg.AssetSpec("owner_check", owners=[owner])
        dagster_accepts = True
    except dg.DagsterInvalidDefinitionError:
        dagster_accepts = False
    if owner_is_valid(owner):
        assert dagster_accepts, f"the spec accepts {owner!r}, which Dagster refuses"
    if owner in ("team:fraud", "ml@example.com", "first.last+tag@sub.example.co.uk"):
        assert owner_is_valid(owner) and dagster_accepts
