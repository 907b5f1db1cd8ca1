"""The team YAML is validated on load, and each mistake names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ml_assets.teams.spec import TeamSpecError, load_team_spec

TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(text)
    return path


def _with(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    spec = yaml.safe_load((TEAMS / "fraud" / "team.yaml").read_text())
    edit(spec)
    return _write(tmp_path, yaml.safe_dump(spec, sort_keys=False))


@pytest.mark.parametrize("team", ["fraud", "clinical", "vision"])
def test_shipped_specs_load(team: str) -> None:
    spec = load_team_spec(TEAMS / team / "team.yaml")
    assert spec.team == team
    assert spec.owner_tags[0] == f"team:{team}"
    assert spec.models


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _with(tmp_path, lambda s: s["models"]["fraud_detector"].pop("trainer"))
    with pytest.raises(TeamSpecError) as raised:
        load_team_spec(path)
    message = str(raised.value)
    assert str(path) in message
    assert "models.fraud_detector.trainer: Field required" in message
    assert ", line " in message


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    path = _with(
        tmp_path, lambda s: s["models"]["fraud_detector"]["retry"].update(max_attempts="x")
    )
    with pytest.raises(
        TeamSpecError, match=r"models\.fraud_detector\.retry\.max_attempts: .*integer"
    ):
        load_team_spec(path)


def test_unknown_backend_lists_the_choices(tmp_path: Path) -> None:
    text = (
        (TEAMS / "fraud" / "team.yaml")
        .read_text()
        .replace("    backend: local", "    backend: sagemkr")
    )
    path = _write(tmp_path, text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "sagemkr" in row)
    with pytest.raises(TeamSpecError) as raised:
        load_team_spec(path)
    assert f"{path}, line {line}: models.fraud_detector.backend: unknown backend 'sagemkr'" in str(
        raised.value
    )
    assert "choose one of: local" in str(raised.value)


def test_backend_outside_allowed_backends_is_refused(tmp_path: Path) -> None:
    path = _with(tmp_path, lambda s: s.update(allowed_backends=[]))
    with pytest.raises(TeamSpecError, match=r"models\.fraud_detector\.backend: .*allowed_backends"):
        load_team_spec(path)


def test_unknown_threshold_metric(tmp_path: Path) -> None:
    path = _with(
        tmp_path,
        lambda s: s["models"]["fraud_detector"]["evaluation"]["thresholds"].update(min_auroc=0.9),
    )
    with pytest.raises(
        TeamSpecError, match=r"evaluation\.thresholds: unknown threshold 'min_auroc'"
    ):
        load_team_spec(path)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = _with(tmp_path, lambda s: s["models"]["fraud_detector"].update(hyperparams={}))
    with pytest.raises(TeamSpecError, match=r"models\.fraud_detector\.hyperparams: Extra inputs"):
        load_team_spec(path)


def test_bad_model_name(tmp_path: Path) -> None:
    path = _with(
        tmp_path, lambda s: s["models"].update({"Bad-Name": s["models"]["fraud_detector"]})
    )
    with pytest.raises(TeamSpecError, match=r"models\.Bad-Name"):
        load_team_spec(path)


def test_not_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "team: [unclosed")
    with pytest.raises(TeamSpecError, match=r"not valid YAML"):
        load_team_spec(path)


def test_remote_backend_without_its_settings_names_the_missing_field(tmp_path: Path) -> None:
    def edit(spec: dict) -> None:  # type: ignore[type-arg]
        spec["allowed_backends"] = ["local", "kubernetes"]
        spec["models"]["fraud_detector"]["backend"] = "kubernetes"

    with pytest.raises(TeamSpecError) as raised:
        load_team_spec(_with(tmp_path, edit))
    message = str(raised.value)
    assert "backends.kubernetes.image: required, not set" in message
    assert "needs a backends.kubernetes section" in message


def test_backend_settings_are_validated_by_the_backend(tmp_path: Path) -> None:
    def edit(spec: dict) -> None:  # type: ignore[type-arg]
        spec["allowed_backends"] = ["local", "sagemaker"]
        spec["backends"] = {
            "sagemaker": {"role_arn": "arn:aws:iam::1:role/r", "max_runtime_seconds": "soon"}
        }

    with pytest.raises(TeamSpecError, match=r"line \d+: backends\.sagemaker\.") as raised:
        load_team_spec(_with(tmp_path, edit))
    assert "team.yaml" in str(raised.value)


def test_unknown_registry_setting_lists_what_it_takes(tmp_path: Path) -> None:
    path = _with(tmp_path, lambda s: s.update(registry={"kind": "mlflow", "trackin_uri": "x"}))
    with pytest.raises(
        TeamSpecError, match=r"registry\.trackin_uri: unknown setting .*tracking_uri"
    ):
        load_team_spec(path)


def test_unknown_sagemaker_serving_key_is_refused(tmp_path: Path) -> None:
    path = _with(tmp_path, lambda s: s.update(serving={"sagemaker": {"role": "x"}}))
    with pytest.raises(TeamSpecError, match=r"serving\.sagemaker: unknown keys \['role'\]"):
        load_team_spec(path)
