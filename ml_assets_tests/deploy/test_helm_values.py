"""The Helm values in deploy/helm/values.yaml: generated from the policy and the workspace, and
valid against the official Dagster chart's values schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_assets import audit
from ml_assets.deploy import (
    HelmOptions,
    generate,
    instance_run_queue,
    merged,
    offline_schema,
    schema_errors,
)
from ml_assets.policy import load_policy
from ml_assets_tests.conftest import write_policy

REPO = Path(__file__).parents[2]
HELM = REPO.parent / "shared" / "helm"
SHIPPED_POLICY = REPO / "ml_assets" / "platform_data" / "platform.yaml"
WORKSPACE = REPO / "workspace.yaml"
VALUES = REPO / "deploy" / "helm" / "values.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def chart() -> dict[str, Any]:
    files = {
        "defaults": HELM / "dagster.values.yaml",
        "schema": HELM / "dagster.values.schema.json",
        "subchart": HELM / "dagster-user-deployments.values.schema.json",
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        pytest.skip(f"the Dagster chart's schema files are absent: {', '.join(missing)}")
    return {
        "defaults": yaml.safe_load(files["defaults"].read_text()),
        "schema": json.loads(files["schema"].read_text()),
        "subchart": json.loads(files["subchart"].read_text()),
    }


def errors(values: dict[str, Any], chart: dict[str, Any]) -> list[str]:
    return schema_errors(values, chart["defaults"], chart["schema"], chart["subchart"])


def committed() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def workspace_locations(path: Path) -> dict[str, str]:
    document = yaml.safe_load(path.read_text())
    return {
        entry["python_module"]["location_name"]: entry["python_module"]["module_name"]
        for entry in document["load_from"]
    }


# --- The committed file --------------------------------------------------------------------


def test_the_committed_values_validate_against_the_chart_schema_with_zero_errors(
    chart: dict[str, Any],
) -> None:
    assert errors(committed(), chart) == []
    # The chart's defaults alone do not validate: the values supply what they lack.
    assert len(errors({}, chart)) >= 4


def test_the_committed_values_are_not_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ML_ASSETS_POLICY", raising=False)
    assert generate(SHIPPED_POLICY, WORKSPACE) == VALUES.read_text(), (
        "deploy/helm/values.yaml is stale; regenerate it with "
        "`ml-assets deploy helm-values --write deploy/helm/values.yaml`"
    )
    assert audit.main(["deploy", "helm-values", "--check", str(VALUES)]) == 0


def test_check_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ML_ASSETS_POLICY", raising=False)
    stale = tmp_path / "values.yaml"
    stale.write_text(VALUES.read_text().replace("limit: 2", "limit: 9", 1))
    assert audit.main(["deploy", "helm-values", "--check", str(stale)]) == 1


def test_one_code_server_per_workspace_location_with_its_own_secrets() -> None:
    values = committed()
    policy = load_policy(SHIPPED_POLICY)
    deployments = values["dagster-user-deployments"]["deployments"]
    locations = workspace_locations(WORKSPACE)
    assert [d["name"] for d in deployments] == [n.replace("_", "-") for n in locations]
    for deployment, (name, module) in zip(deployments, locations.items(), strict=True):
        assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]
        assert deployment["port"] == 3030
        assert deployment["image"]["repository"] == HelmOptions().image_repository
        assert deployment["env"]["ML_ASSETS_POLICY"] == "/etc/ml_assets/platform.yaml"
        assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
        secrets = [secret["name"] for secret in deployment.get("envSecrets", [])]
        if name in policy.teams:
            assert secrets == [f"ml-assets-{name}-secrets"]
        else:
            assert name == "platform_data" and secrets == []
    # No team's secret is anywhere but in its own deployment.
    everywhere = json.dumps({k: v for k, v in values.items() if k != "dagster-user-deployments"})
    assert "-secrets" not in everywhere


def test_the_run_queue_limits_each_team_location_by_its_grant() -> None:
    values = committed()
    policy = load_policy(SHIPPED_POLICY)
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator" and coordinator["enabled"] is True
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    by_location = {limit["value"]: limit["limit"] for limit in limits}
    assert {limit["key"] for limit in limits} == {"dagster/code_location"}
    for team, grant in policy.teams.items():
        assert by_location[team] == grant.max_concurrent_runs
    assert by_location["platform-data"] == policy.default.max_concurrent_runs


def test_production_parts_postgres_and_the_k8s_run_launcher() -> None:
    values = committed()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False  # an external server
    assert values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"] == HelmOptions().postgres_secret
    assert values["postgresql"]["postgresqlPassword"] == ""  # never a password in the file
    policy_map = values["extraManifests"][0]
    assert policy_map["kind"] == "ConfigMap"
    assert policy_map["data"]["platform.yaml"] == SHIPPED_POLICY.read_text()


# --- Generated from the policy and the workspace -----------------------------------------------


def test_adding_a_team_adds_its_deployment_limit_and_secret(
    tmp_path: Path, chart: dict[str, Any]
) -> None:
    document = yaml.safe_load(SHIPPED_POLICY.read_text())
    document["teams"]["payments_risk"] = {"backends": ["local"], "max_concurrent_runs": 5}
    policy_file = write_policy(tmp_path / "platform.yaml", document)
    workspace = yaml.safe_load(WORKSPACE.read_text())
    workspace["load_from"].append(
        {
            "python_module": {
                "module_name": "payments_risk.definitions",
                "location_name": "payments_risk",
            }
        }
    )
    workspace_file = tmp_path / "workspace.yaml"
    workspace_file.write_text(yaml.safe_dump(workspace))
    options = HelmOptions(image_repository="ghcr.io/acme/ml", image_tag="2.0.1")
    values = yaml.safe_load(generate(policy_file, workspace_file, options))

    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == len(workspace_locations(WORKSPACE)) + 1
    added = deployments[-1]
    assert added["name"] == "payments-risk"
    assert added["dagsterApiGrpcArgs"] == ["--module-name", "payments_risk.definitions"]
    assert added["image"] == {
        "repository": "ghcr.io/acme/ml",
        "tag": "2.0.1",
        "pullPolicy": "IfNotPresent",
    }
    assert added["envSecrets"] == [{"name": "ml-assets-payments-risk-secrets", "optional": True}]
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert {"key": "dagster/code_location", "value": "payments-risk", "limit": 5} in limits[
        "tagConcurrencyLimits"
    ]
    assert errors(values, chart) == []


def test_a_location_that_kubernetes_cannot_name_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module: {module_name: a.definitions, location_name: fraud_x}\n"
        "  - python_module: {module_name: b.definitions, location_name: fraud-x}\n"
    )
    assert audit.main(["deploy", "helm-values", "--workspace", str(workspace)]) == 2


# --- The validation is real ----------------------------------------------------------------


def test_a_broken_value_is_rejected_by_the_schema(chart: dict[str, Any]) -> None:
    values = committed()
    values["dagster-user-deployments"]["deployments"][1]["port"] = "3030"
    found = errors(values, chart)
    assert any(
        re.match(r"dagster-user-deployments\.deployments\.1\.port: '3030' is not of type", e)
        for e in found
    ), found
    assert any(
        e.startswith("dagster-user-deployments (subchart) deployments.1.port") for e in found
    )

    values = committed()
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queue["tagConcurrencyLimits"][0]["limit"] = "three"
    assert errors(values, chart) != []

    values = committed()
    del values["dagster-user-deployments"]["deployments"][0]["image"]["pullPolicy"]
    assert any("'pullPolicy' is a required property" in e for e in errors(values, chart))

    values = committed()
    values["runLauncher"]["type"] = "K8sRunLaunchr"
    assert any(e.startswith("runLauncher.type") for e in errors(values, chart))


def test_helm_merge_and_offline_schema() -> None:
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merged(defaults, {"a": {"c": [3]}, "d": None}) == {"a": {"b": 1, "c": [3]}}
    assert defaults == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    schema = {"$ref": "https://x/defs.json#/a", "properties": {"p": {"$ref": "#/$defs/P"}}}
    assert offline_schema(schema) == {"properties": {"p": {"$ref": "#/$defs/P"}}}


# --- The image ----------------------------------------------------------------------------------


def test_the_dockerfile_runs_as_non_root_on_python_3_11_slim() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"COPY {path}: no such file in the repository"
    assert "pip install ." in text


def test_the_package_the_image_installs_holds_every_teams_code_and_the_policy(
    tmp_path: Path,
) -> None:
    """Builds the wheel from exactly what the Dockerfile copies."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(
        REPO / "ml_assets", context / "ml_assets", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("ml_assets-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    teams = sorted(p.parent.name for p in (REPO / "ml_assets" / "teams").glob("*/team.yaml"))
    assert len(teams) >= 6
    for team in teams:
        folder = REPO / "ml_assets" / "teams" / team
        for path in folder.iterdir():
            if path.suffix in (".py", ".yaml"):
                assert f"ml_assets/teams/{team}/{path.name}" in names
    assert "ml_assets/platform_data/platform.yaml" in names
    assert "ml_assets/platform_data/platform.schema.json" in names


def test_the_dagster_yaml_run_queue_limits_each_team_as_dagster_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    from dagster._utils.tags import TagConcurrencyLimitsCounter

    policy_file = write_policy(
        tmp_path / "platform.yaml",
        {"teams": {"big": {"max_concurrent_runs": 5}, "small": {"max_concurrent_runs": 1}}},
    )
    assert audit.main(["deploy", "run-queue", "--policy", str(policy_file)]) == 0
    limits = yaml.safe_load(capsys.readouterr().out)["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    assert (
        limits
        == instance_run_queue(load_policy(policy_file))["concurrency"]["runs"][
            "tag_concurrency_limits"
        ]
    )

    def admitted(team: str, runs: int) -> int:
        """How many of ``runs`` queued runs of ``team`` Dagster's run queue lets start."""
        counter = TagConcurrencyLimitsCounter(limits, [])
        started = 0
        for _ in range(runs):
            run = SimpleNamespace(tags={"ml_assets/team": team})
            if not counter.is_blocked(run):
                counter.update_counters_with_launched_item(run)
                started += 1
        return started

    assert admitted("big", 9) == 5  # the catch-all does not cap a team's own larger limit
    assert admitted("small", 9) == 1
    assert admitted("unlisted", 9) == 5  # the largest limit, at least the default grant's
