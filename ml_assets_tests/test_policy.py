"""The platform policy: a team's YAML cannot ask for more than the platform grants it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ml_assets import audit, policy
from ml_assets.location import team_definitions
from ml_assets.policy import (
    POLICY_ENV,
    PlatformPolicy,
    PolicyError,
    TeamGrant,
    check_team,
    load_policy,
    policy_json_schema,
    run_queue_limits,
)
from ml_assets.teams.spec import TeamSpecError, load_team_spec
from ml_assets_tests.conftest import EVERY_BACKEND, EVERY_REGISTRY, write_policy

REPO = Path(__file__).parents[1]
TEAMS = REPO / "ml_assets" / "teams"
SHIPPED_POLICY = REPO / "ml_assets" / "platform_data" / "platform.yaml"
POLICY_SCHEMA = REPO / "ml_assets" / "platform_data" / "platform.schema.json"
SHIPPED_TEAMS = sorted(p.parent.name for p in TEAMS.glob("*/team.yaml"))

K8S = {"image_uri": "registry.example.com/ml:1", "storage_root": "s3://acme-ml/payments"}

# A policy for the tests below: team payments may use local and kubernetes, the mlflow
# registry, 2 GPUs of the 4 in the t4 pool, 8 CPU cores, secrets PAYMENTS_*, storage under
# s3://acme-ml/payments.
GRANTING = {
    "pools": {
        "t4": {"backend": "kubernetes", "gpu_type": "nvidia-tesla-t4", "gpus": 4},
        "a100": {"backend": "kubernetes", "gpu_type": "a100-80gb", "gpus": 8},
    },
    "teams": {
        "payments": {
            "backends": ["local", "kubernetes"],
            "gpu_quota": {"t4": 2},
            "registries": ["mlflow"],
            "storage_roots": ["s3://acme-ml/payments"],
            "secret_prefix": "PAYMENTS_",
            "cpu_quota": 8,
            "max_concurrent_runs": 4,
        }
    },
}


def team_document(**changes: Any) -> dict[str, Any]:
    """Team payments: the fraud team's model on kubernetes, within its grant above."""
    document = yaml.safe_load((TEAMS / "fraud" / "team.yaml").read_text())
    document.update(
        team="payments",
        allowed_backends=["local", "kubernetes"],
        backends={"kubernetes": {**K8S, "token": {"env": "PAYMENTS_K8S_TOKEN"}}},
        registry={"kind": "mlflow"},
    )
    model = document["models"]["fraud_detector"]
    model["backend"] = "kubernetes"
    model["resources"] = {"cpu": 2, "memory_gb": 4, "gpu_count": 2, "gpu_type": "Tesla-T4"}
    for key, value in changes.items():
        if key.startswith("model_"):
            model[key.removeprefix("model_")] = value
        else:
            document[key] = value
    return document


def write_team(folder: Path, document: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def line_of(path: Path, fragment: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")


@pytest.fixture
def granting(tmp_path: Path) -> Path:
    return write_policy(tmp_path / "platform" / "platform.yaml", GRANTING)


# --- The shipped policy and the default --------------------------------------------------------


def test_the_shipped_policy_loads_and_defines_gpu_pools_on_two_backends() -> None:
    shipped = load_policy(SHIPPED_POLICY)
    assert shipped.source == str(SHIPPED_POLICY.resolve())
    assert len({pool.backend for pool in shipped.pools.values()}) >= 2
    assert shipped.pool_for("local", 1, "nvidia-tesla-t4") == "local-gpu"
    assert shipped.default == TeamGrant()


@pytest.mark.parametrize("team", SHIPPED_TEAMS)
def test_the_shipped_policy_grants_each_shipped_team_what_it_uses(team: str) -> None:
    shipped = load_policy(SHIPPED_POLICY)
    spec = load_team_spec(TEAMS / team / "team.yaml")
    assert team in shipped.teams, f"{team} has no grant of its own in platform.yaml"
    check_team(shipped, spec)


def test_the_vision_team_draws_its_t4_from_the_local_gpu_pool_within_its_quota() -> None:
    shipped = load_policy(SHIPPED_POLICY)
    model = load_team_spec(TEAMS / "vision" / "team.yaml").models["digit_classifier"]
    pool = shipped.pool_for(model.backend, model.resources.gpu_count, model.resources.gpu_type)
    assert pool == "local-gpu"
    assert shipped.grant("vision").gpu_quota[pool] >= model.resources.gpu_count


def test_without_a_policy_file_every_team_is_local_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POLICY_ENV, raising=False)
    monkeypatch.setattr(policy, "DEFAULT_POLICY_PATH", tmp_path / "no" / "platform.yaml")
    default = load_policy()
    assert default == PlatformPolicy()
    grant = default.grant("anyone")
    assert grant.backends == ["local"]
    assert grant.registries == ["local", "mlflow", "wandb"]
    assert default.pool_for("local", 1, "t4") is None  # no pools: nothing to admit
    # The shipped teams all load under it: a laptop needs no policy.
    check_team(default, load_team_spec(TEAMS / "fraud" / "team.yaml"))
    with pytest.raises(TeamSpecError) as error:
        check_team(default, load_team_spec(write_team(tmp_path / "t", team_document())))
    assert "built-in default policy" in str(error.value)
    assert "allowed_backends.1" in str(error.value)


def test_ml_assets_policy_names_the_file_and_a_missing_named_file_is_an_error(
    tmp_path: Path, granting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY_ENV, str(granting))
    assert load_policy().grant("payments").max_concurrent_runs == 4
    monkeypatch.setenv(POLICY_ENV, str(tmp_path / "typo.yaml"))
    with pytest.raises(
        PolicyError, match=rf"typo\.yaml: no such policy file \(named by {POLICY_ENV}"
    ):
        load_policy()


def test_a_changed_policy_file_is_read_again(granting: Path) -> None:
    assert load_policy(granting).grant("payments").max_concurrent_runs == 4
    changed = json.loads(json.dumps(GRANTING))
    changed["teams"]["payments"]["max_concurrent_runs"] = 17
    write_policy(granting, changed)
    assert load_policy(granting).grant("payments").max_concurrent_runs == 17


# --- A team cannot widen its grant ------------------------------------------------------------


def test_a_team_within_its_grant_loads(
    tmp_path: Path, granting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY_ENV, str(granting))
    spec_path = write_team(tmp_path / "payments", team_document())
    check_team(load_policy(), load_team_spec(spec_path))
    defs = team_definitions(spec_path)
    assert defs.resolve_job_def("payments_pipeline") is not None


WIDENINGS = {
    # name: (changes to the team document, field named, line fragment, words of the message)
    "backend": (
        {
            "allowed_backends": ["local", "kubernetes", "vertex"],
            "backends": {
                "kubernetes": K8S,
                "vertex": {"project": "p", "image_uri": "i", "storage_root": "gs://b/x"},
            },
            "model_backend": "vertex",
            "model_resources": {"cpu": 2},
        },
        "allowed_backends.2",
        "- vertex",
        "backend 'vertex' is not granted",
    ),
    "model backend": (
        {
            "allowed_backends": ["local", "sagemaker"],
            "backends": {
                "sagemaker": {"role_arn": "arn:r", "image_uri": "i", "storage_root": "s3://b/x"}
            },
            "model_backend": "sagemaker",
            "model_resources": {"cpu": 2},
        },
        "models.fraud_detector.backend",
        "backend: sagemaker",
        "backend 'sagemaker' is not granted",
    ),
    "registry": (
        {"registry": {"kind": "wandb"}},
        "registry.kind",
        "kind: wandb",
        "registry kind 'wandb' is not granted",
    ),
    "gpu pool without quota": (
        {"model_resources": {"gpu_count": 1, "gpu_type": "a100-80gb"}},
        "models.fraud_detector.resources.gpu_count",
        "gpu_count: 1",
        "pool 'a100', in which team 'payments' has no GPU quota",
    ),
    "more gpus than quota": (
        {"model_resources": {"gpu_count": 3, "gpu_type": "t4"}},
        "models.fraud_detector.resources.gpu_count",
        "gpu_count: 3",
        "more than team 'payments''s quota of 2 in pool 't4'",
    ),
    "gpu model without pool": (
        {"model_resources": {"gpu_count": 1, "gpu_type": "nvidia-l4"}},
        "models.fraud_detector.resources.gpu_type",
        "gpu_type: nvidia-l4",
        "no GPU pool on backend 'kubernetes' holds nvidia-l4",
    ),
    "secret of another team": (
        {"backends": {"kubernetes": {**K8S, "token": {"env": "FRAUD_K8S_TOKEN"}}}},
        "backends.kubernetes.token.env",
        "env: FRAUD_K8S_TOKEN",
        "'FRAUD_K8S_TOKEN' lacks team 'payments''s secret prefix 'PAYMENTS_'",
    ),
    "storage outside roots": (
        {"backends": {"kubernetes": {**K8S, "storage_root": "s3://acme-ml/payments-other"}}},
        "backends.kubernetes.storage_root",
        "storage_root: s3://acme-ml/payments-other",
        "outside team 'payments''s storage roots (s3://acme-ml/payments)",
    ),
    "cpu beyond quota": (
        {"model_resources": {"cpu": 12}},
        "models.fraud_detector.resources.cpu",
        "cpu: 12",
        "12 CPU cores for one job, more than team 'payments''s CPU quota of 8",
    ),
    "registry storage outside roots": (
        {"registry": {"kind": "mlflow", "artifact_root": "s3://acme-ml/fraud/mlflow"}},
        "registry.artifact_root",
        "artifact_root:",
        "'s3://acme-ml/fraud/mlflow' is outside",
    ),
}


@pytest.mark.parametrize("case", WIDENINGS, ids=list(WIDENINGS))
def test_a_team_cannot_widen_its_grant(
    case: str, tmp_path: Path, granting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes, field, fragment, words = WIDENINGS[case]
    spec_path = write_team(tmp_path / "payments", team_document(**changes))
    spec = load_team_spec(spec_path)  # the team's file is valid on its own
    with pytest.raises(TeamSpecError) as error:
        check_team(load_policy(granting), spec)
    message = str(error.value)
    problem = next((line for line in message.splitlines() if f": {field}: " in line), None)
    assert problem is not None, message
    assert problem.startswith(f"{spec_path.resolve()}, line {line_of(spec_path, fragment)}: ")
    assert words in problem
    assert f"[grant: {granting.resolve()}: teams.payments]" in problem

    # The location fails to load with the same message.
    monkeypatch.setenv(POLICY_ENV, str(granting))
    with pytest.raises(TeamSpecError) as location_error:
        team_definitions(spec_path)
    assert problem in str(location_error.value)


def test_every_excess_is_listed_at_once(tmp_path: Path, granting: Path) -> None:
    document = team_document(registry={"kind": "wandb"})
    document["backends"]["kubernetes"]["token"] = {"env": "OTHER_TOKEN"}
    spec = load_team_spec(write_team(tmp_path / "payments", document))
    with pytest.raises(TeamSpecError) as error:
        check_team(load_policy(granting), spec)
    fields = [line.split(": ")[1] for line in str(error.value).splitlines()]
    assert fields == ["registry.kind", "backends.kubernetes.token.env"]


def test_an_unlisted_team_gets_the_default_grant_and_is_told_so(
    tmp_path: Path, granting: Path
) -> None:
    spec = load_team_spec(write_team(tmp_path / "x", team_document(team="newcomers")))
    with pytest.raises(TeamSpecError, match="default \\(team 'newcomers' is not listed"):
        check_team(load_policy(granting), spec)


def test_borrowing_lets_a_job_ask_beyond_the_quota_but_never_beyond_the_pool(
    tmp_path: Path,
) -> None:
    borrowing = write_policy(tmp_path / "p.yaml", {**GRANTING, "borrowing": True})
    three_t4 = load_team_spec(
        write_team(
            tmp_path / "b", team_document(model_resources={"gpu_count": 3, "gpu_type": "t4"})
        )
    )
    check_team(load_policy(borrowing), three_t4)
    five_t4 = load_team_spec(
        write_team(
            tmp_path / "c", team_document(model_resources={"gpu_count": 5, "gpu_type": "t4"})
        )
    )
    with pytest.raises(TeamSpecError, match="more than pool 't4' holds \\(4\\)"):
        check_team(load_policy(borrowing), five_t4)


# --- Pools ------------------------------------------------------------------------------------


def test_a_job_draws_from_the_pool_of_its_backend_and_gpu_model() -> None:
    pools = PlatformPolicy.model_validate(
        {
            "pools": {
                "k8s-any": {"backend": "kubernetes", "gpus": 2},
                "t4": {"backend": "kubernetes", "gpu_type": "NVIDIA_TESLA_T4", "gpus": 8},
                "vertex-t4": {"backend": "vertex", "gpu_type": "t4", "gpus": 8},
            }
        }
    )
    assert pools.pools["t4"].gpu_type == "t4"
    assert pools.pool_for("kubernetes", 1, "nvidia-tesla-t4") == "t4"
    assert pools.pool_for("kubernetes", 1, "l4") == "k8s-any"
    assert pools.pool_for("kubernetes", 1, None) == "k8s-any"
    assert pools.pool_for("vertex", 2, "Tesla-T4") == "vertex-t4"
    assert pools.pool_for("vertex", 1, "a100") is None
    assert pools.pool_for("kubernetes", 0, "t4") is None  # CPU-only
    assert pools.pool_for("sagemaker", 1, "t4") is None


# --- A malformed policy names its file, line and field ------------------------------------------


BAD_POLICIES = {
    "unknown field": (
        "teams:\n  fraud:\n    backends: [local]\n    gpu_quotas: {t4: 1}\n",
        4,
        "teams.fraud.gpu_quotas",
        "Extra inputs are not permitted",
    ),
    "unknown backend": (
        "teams:\n  fraud:\n    backends: [local, kubernets]\n",
        3,
        "teams.fraud.backends",
        "unknown backend 'kubernets'",
    ),
    "quota in unknown pool": (
        "pools:\n  t4: {backend: kubernetes, gpus: 4}\nteams:\n  fraud:\n"
        "    backends: [kubernetes]\n    gpu_quota:\n      a100: 2\n",
        7,
        "teams.fraud.gpu_quota.a100",
        "no pool 'a100' in 'pools' (pools: t4)",
    ),
    "quota on a backend not granted": (
        "pools:\n  t4: {backend: kubernetes, gpus: 4}\nteams:\n  fraud:\n    gpu_quota: {t4: 2}\n",
        5,
        "teams.fraud.gpu_quota.t4",
        "which this grant's backends ['local'] do not include",
    ),
    "empty pool": (
        "pools:\n  t4:\n    backend: kubernetes\n    gpus: 0\n",
        4,
        "pools.t4.gpus",
        "greater than 0",
    ),
    "kueue off kubernetes": (
        "pools:\n  v:\n    backend: vertex\n    gpus: 4\n    kueue: true\n",
        2,
        "pools.v",
        "kueue pools are on kubernetes only",
    ),
    "duplicate key": (
        "teams:\n  fraud: {}\n  fraud: {}\n",
        3,
        "teams.fraud",
        "duplicate key 'fraud', first at line 2",
    ),
    "bad secret prefix": (
        "teams:\n  fraud:\n    secret_prefix: fraud_\n",
        3,
        "teams.fraud.secret_prefix",
        "String should match pattern",
    ),
    "relative storage root": (
        "teams:\n  fraud:\n    storage_roots: [data/fraud]\n",
        3,
        "teams.fraud.storage_roots",
        "neither a URI",
    ),
    "python tag": (
        "borrowing: !!python/object:os.system {}\n",
        1,
        "borrowing",
        "tag !!python/object:os.system is not allowed",
    ),
}


@pytest.mark.parametrize("case", BAD_POLICIES, ids=list(BAD_POLICIES))
def test_a_malformed_policy_names_its_file_line_and_field(case: str, tmp_path: Path) -> None:
    text, line, field, words = BAD_POLICIES[case]
    path = tmp_path / "platform.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    message = str(error.value)
    assert message.startswith(f"{path}, line {line}: {field}: "), message
    assert words in message


def test_a_policy_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "platform.yaml"
    path.write_text("- fraud\n- vision\n")
    with pytest.raises(PolicyError, match=r"platform\.yaml: the policy must be a mapping"):
        load_policy(path)


def test_a_broken_policy_fails_every_team_location_naming_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "platform.yaml"
    broken.write_text("teams:\n  fraud:\n    max_concurrent_runs: 0\n")
    monkeypatch.setenv(POLICY_ENV, str(broken))
    with pytest.raises(TeamSpecError, match=rf"{broken}, line 3: teams.fraud.max_concurrent_runs"):
        team_definitions(TEAMS / "fraud" / "team.yaml")


# --- The run queue and the schema ------------------------------------------------------------


def test_run_queue_limits_follow_each_teams_grant(granting: Path) -> None:
    limits = run_queue_limits(load_policy(granting), ["payments", "other"])
    assert limits == [
        {"key": "ml_assets/team", "value": "payments", "limit": 4},
        {"key": "ml_assets/team", "value": "other", "limit": 3},
    ]
    by_location = run_queue_limits(load_policy(granting), ["payments"], "dagster/code_location")
    assert by_location == [{"key": "dagster/code_location", "value": "payments", "limit": 4}]


def test_the_committed_policy_schema_is_what_ml_assets_schema_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert audit.main(["schema", "--policy"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == policy_json_schema()
    assert json.loads(POLICY_SCHEMA.read_text()) == printed, (
        "ml_assets/platform_data/platform.schema.json is stale; regenerate it with "
        "`ml-assets schema --policy --write ml_assets/platform_data/platform.schema.json`"
    )
    jsonschema.Draft202012Validator.check_schema(printed)
    assert "source" not in printed["properties"]


def test_the_shipped_policy_validates_against_its_schema_and_names_it() -> None:
    schema = json.loads(POLICY_SCHEMA.read_text())
    document = yaml.safe_load(SHIPPED_POLICY.read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)) == []
    assert SHIPPED_POLICY.read_text().startswith(
        "# yaml-language-server: $schema=platform.schema.json\n"
    )
    wrong = {"teams": {"fraud": {"backends": "local", "max_concurrent_runs": "3"}}}
    assert len(list(jsonschema.Draft202012Validator(schema).iter_errors(wrong))) == 2


def test_the_permissive_test_policy_grants_everything(permissive_policy: Path) -> None:
    grant = load_policy().grant("anyone")
    assert grant.backends == EVERY_BACKEND and grant.registries == EVERY_REGISTRY


def test_the_policy_knows_every_backend_and_registry_kind() -> None:
    from ml_assets.backends import BACKENDS
    from ml_assets.registries import REGISTRIES

    assert set(policy.KNOWN_BACKENDS) == set(BACKENDS)
    assert set(policy.KNOWN_REGISTRIES) == set(REGISTRIES)
