"""The team YAML is validated on load, and each mistake names the file, line and field; the
committed JSON Schema that editors use is the one the code generates, and accepts every team."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ml_assets import audit
from ml_assets.teams.spec import TeamSpecError, load_team_spec, team_json_schema

TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"
SCHEMA_FILE = TEAMS / "team.schema.json"
SCHEMA_COMMENT = "# yaml-language-server: $schema=../team.schema.json"
SHIPPED = sorted(path.parent.name for path in TEAMS.glob("*/team.yaml"))
FRAUD_TEXT = (TEAMS / "fraud" / "team.yaml").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(text)
    return path


def _with(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    spec = yaml.safe_load((TEAMS / "fraud" / "team.yaml").read_text())
    edit(spec)
    return _write(tmp_path, yaml.safe_dump(spec, sort_keys=False))


def _replaced(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    """The fraud team's YAML with ``old`` replaced by ``new``, and the replaced text."""
    assert FRAUD_TEXT.count(old) == 1, old
    text = FRAUD_TEXT.replace(old, new)
    return _write(tmp_path, text), text


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, row in enumerate(text.splitlines(), 1) if fragment in row)


def _error(path: Path) -> str:
    with pytest.raises(TeamSpecError) as raised:
        load_team_spec(path)
    return str(raised.value)


def test_every_team_folder_is_shipped_with_a_spec() -> None:
    assert {"clinical", "fraud", "vision", "wine"} <= set(SHIPPED)


@pytest.mark.parametrize("team", SHIPPED)
def test_shipped_specs_load(team: str) -> None:
    spec = load_team_spec(TEAMS / team / "team.yaml")
    assert spec.team == team
    assert spec.owner_tags[0] == f"team:{team}"
    assert spec.folder == (TEAMS / team).resolve()
    assert spec.models
    for model in spec.models.values():
        assert model.trainer.reference is not None or model.trainer.command
        assert (model.dataset.asset is None) != (model.dataset.function is None)


@pytest.mark.parametrize("team", SHIPPED)
def test_shipped_specs_start_with_the_schema_comment(team: str) -> None:
    first_line = (TEAMS / team / "team.yaml").read_text().splitlines()[0]
    assert first_line == SCHEMA_COMMENT


def test_shipped_specs_use_each_kind_of_source_and_trainer() -> None:
    models = [
        m for team in SHIPPED for m in load_team_spec(TEAMS / team / "team.yaml").models.values()
    ]
    assert {m.task for m in models} >= {"binary", "multiclass"}
    assert any(m.dataset.asset for m in models) and any(m.dataset.function for m in models)
    assert any(":" in (m.trainer.function or "") for m in models)
    assert any(m.trainer.function == "torch_mlp" for m in models)
    wine = load_team_spec(TEAMS / "wine" / "team.yaml").models["cultivar_classifier"]
    assert wine.trainer.reference == "ml_assets.teams.wine.train:fit"
    fraud = load_team_spec(TEAMS / "fraud" / "team.yaml").models["fraud_detector"]
    assert fraud.trainer.reference == "ml_assets.training.builtin:hist_gradient_boosting"
    assert (fraud.features.label, fraud.features.id_column) == ("is_fraud", "transaction_id")
    assert fraud.dataset.asset_path == ["platform", "raw_card_transactions"]


# --- module:function references -----------------------------------------------------------

TRAINER = "      function: hist_gradient_boosting"
FEATURES = "      function: ml_assets.teams.fraud.features:transaction_risk"


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        (TRAINER, "      function: nosuch.mod:fit", "trainer.function", "module 'nosuch.mod'"),
        (
            TRAINER,
            "      function: ml_assets.teams.wine.train:nofit",
            "trainer.function",
            "module 'ml_assets.teams.wine.train' (",
        ),
        (FEATURES, "      function: nosuch.mod:fit", "features.function", "module 'nosuch.mod'"),
        (
            FEATURES,
            "      function: ml_assets.teams.fraud.features:nosuch",
            "features.function",
            "module 'ml_assets.teams.fraud.features' (",
        ),
        (
            "      asset: platform/raw_card_transactions",
            "      function: nosuch.mod:load",
            "dataset.function",
            "module 'nosuch.mod'",
        ),
        (
            "    backend: local",
            "    backend: local\n    predict: ml_assets.teams.wine.train:nopredict",
            "predict",
            "defines no 'nopredict' at top level",
        ),
        (
            "        max_brier_score: 0.05",
            "        max_brier_score: 0.05\n      metrics: [nosuch.metrics:lift]",
            "evaluation.metrics.0",
            "module 'nosuch.metrics'",
        ),
    ],
    ids=[
        "trainer-module",
        "trainer-attribute",
        "features-module",
        "features-attribute",
        "dataset-module",
        "predict-attribute",
        "metric-module",
    ],
)
def test_a_reference_that_does_not_exist_names_file_line_field_and_what_is_missing(
    tmp_path: Path, old: str, new: str, field: str, problem: str
) -> None:
    path, text = _replaced(tmp_path, old, new)
    message = _error(path)
    reference = re.search(r"(nosuch|ml_assets)[\w.]*:\w+", new)
    assert reference is not None
    line = _line_of(text, reference.group(0))
    assert f"{path}, line {line}: models.fraud_detector.{field}: " in message
    assert problem in message


def test_a_missing_module_says_it_cannot_be_found(tmp_path: Path) -> None:
    path, _ = _replaced(tmp_path, TRAINER, "      function: nosuch.mod:fit")
    assert "module 'nosuch.mod' cannot be found" in _error(path)


def test_a_missing_attribute_names_the_module_file_and_attribute(tmp_path: Path) -> None:
    path, _ = _replaced(tmp_path, TRAINER, "      function: ml_assets.teams.wine.train:nofit")
    message = _error(path)
    assert str(TEAMS.resolve() / "wine" / "train.py") in message
    assert "defines no 'nofit' at top level" in message


@pytest.mark.parametrize("value", ["no colon here", "pkg.mod:", "pkg mod:fit", "pkg.mod:f-x"])
def test_a_malformed_reference_is_refused(tmp_path: Path, value: str) -> None:
    path, _ = _replaced(tmp_path, FEATURES, f"      function: {value!r}")
    message = _error(path)
    assert "models.fraud_detector.features.function" in message


def test_an_unknown_builtin_trainer_lists_the_builtins(tmp_path: Path) -> None:
    path, text = _replaced(tmp_path, TRAINER, "      function: hgb")
    message = _error(path)
    assert f"line {_line_of(text, 'hgb')}: models.fraud_detector.trainer.function" in message
    assert "unknown trainer 'hgb'" in message
    assert "hist_gradient_boosting" in message and "torch_mlp" in message


def test_the_library_does_not_import_a_team_module_to_check_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "team_code_that_must_not_run.py"
    module.write_text("raise RuntimeError('imported at load')\n\ndef fit(train, h, c):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, _ = _replaced(tmp_path, TRAINER, "      function: team_code_that_must_not_run:fit")
    spec = load_team_spec(path)
    assert spec.models["fraud_detector"].trainer.reference == "team_code_that_must_not_run:fit"
    assert "team_code_that_must_not_run" not in sys.modules


# --- one of dataset.asset / dataset.function, trainer.function / trainer.command ------------

DATASET = "      asset: platform/raw_card_transactions"


@pytest.mark.parametrize(
    "new",
    [
        DATASET + "\n      function: ml_assets.teams.wine.data:load_wines",
        "      max_rows: 1000",
    ],
    ids=["both", "neither"],
)
def test_dataset_needs_exactly_one_of_asset_and_function(tmp_path: Path, new: str) -> None:
    path, text = _replaced(tmp_path, DATASET, new)
    message = _error(path)
    line = _line_of(text, "dataset:")
    assert f"{path}, line {line}: models.fraud_detector.dataset: " in message
    assert "give exactly one of 'asset' (an asset key) or 'function'" in message


@pytest.mark.parametrize(
    "new",
    [TRAINER + "\n      command: [python, train.py]", "      seed: 3"],
    ids=["both", "neither"],
)
def test_trainer_needs_exactly_one_of_function_and_command(tmp_path: Path, new: str) -> None:
    path, text = _replaced(tmp_path, TRAINER, new)
    message = _error(path)
    line = _line_of(text, "trainer:")
    assert f"{path}, line {line}: models.fraud_detector.trainer: " in message
    assert "give exactly one of 'function' or 'command'" in message


def test_image_without_command_is_refused(tmp_path: Path) -> None:
    path, text = _replaced(tmp_path, TRAINER, "      image: registry.example.com/fraud:1")
    message = _error(path)
    assert f"{path}, line {_line_of(text, 'trainer:')}: models.fraud_detector.trainer" in message
    assert "'command'" in message


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        (
            TRAINER,
            TRAINER + "\n      image: registry.example.com/fraud:1",
            "trainer.image",
            "'image' goes with 'command'",
        ),
        (
            DATASET,
            DATASET + "\n      params: {rows: 10}",
            "dataset.params",
            "params go with 'function', not 'asset'",
        ),
        (
            DATASET,
            "      asset: 'platform/raw card transactions'",
            "dataset.asset",
            "is not an asset key",
        ),
    ],
    ids=["trainer.image", "dataset.params", "dataset.asset"],
)
def test_a_cross_field_mistake_names_its_full_field_and_line(
    tmp_path: Path, old: str, new: str, field: str, problem: str
) -> None:
    path, text = _replaced(tmp_path, old, new)
    message = _error(path)
    line = _line_of(text, new.splitlines()[-1].strip())
    assert f"{path}, line {line}: models.fraud_detector.{field}: " in message
    assert problem in message


def test_a_command_trainer_loads(tmp_path: Path) -> None:
    path, _ = _replaced(
        tmp_path,
        TRAINER,
        "      image: registry.example.com/fraud:1\n      command: [python, train.py]",
    )
    trainer = load_team_spec(path).models["fraud_detector"].trainer
    assert trainer.reference is None
    assert trainer.label == "registry.example.com/fraud:1 python train.py"


def test_unknown_task_and_table_format_list_the_choices(tmp_path: Path) -> None:
    path, _ = _replaced(tmp_path, "    task: binary", "    task: ranking")
    message = _error(path)
    assert "models.fraud_detector.task" in message
    assert all(task in message for task in ("binary", "multiclass", "regression"))
    path, _ = _replaced(
        tmp_path, "      label: is_fraud", "      label: is_fraud\n      table_format: spark"
    )
    message = _error(path)
    assert "models.fraud_detector.features.table_format" in message
    assert all(kind in message for kind in ("pandas", "polars", "pyarrow"))


# --- the JSON Schema editors use ---------------------------------------------------------


def _committed_schema() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return document


def test_the_committed_schema_is_what_ml_assets_schema_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert audit.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == team_json_schema()
    assert _committed_schema() == printed, (
        "ml_assets/teams/team.schema.json is stale; regenerate it with "
        "`ml-assets schema --write ml_assets/teams/team.schema.json`"
    )


def test_ml_assets_schema_write_writes_the_same_document(tmp_path: Path) -> None:
    target = tmp_path / "team.schema.json"
    assert audit.main(["schema", "--write", str(target)]) == 0
    assert json.loads(target.read_text()) == _committed_schema()
    assert target.read_text() == SCHEMA_FILE.read_text()


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = _committed_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("team", SHIPPED)
def test_the_schema_accepts_every_shipped_team(team: str) -> None:
    document = yaml.safe_load((TEAMS / team / "team.yaml").read_text())
    validator = jsonschema.Draft202012Validator(_committed_schema())
    assert [error.message for error in validator.iter_errors(document)] == []


def _mutants() -> list[tuple[str, Any]]:
    def unknown_top_level_key(spec: dict[str, Any]) -> None:
        spec["colour"] = "blue"

    def unknown_trainer_key(spec: dict[str, Any]) -> None:
        spec["models"]["fraud_detector"]["trainer"]["hyperparams"] = {}

    def unknown_task(spec: dict[str, Any]) -> None:
        spec["models"]["fraud_detector"]["task"] = "ranking"

    def malformed_reference(spec: dict[str, Any]) -> None:
        spec["models"]["fraud_detector"]["features"]["function"] = "not a reference"

    def no_models(spec: dict[str, Any]) -> None:
        del spec["models"]

    return [
        (f.__name__, f)
        for f in (
            unknown_top_level_key,
            unknown_trainer_key,
            unknown_task,
            malformed_reference,
            no_models,
        )
    ]


@pytest.mark.parametrize(("name", "mutate"), _mutants(), ids=[n for n, _ in _mutants()])
def test_the_schema_rejects_a_mutant_the_loader_rejects(
    tmp_path: Path, name: str, mutate: Any
) -> None:
    document = yaml.safe_load(FRAUD_TEXT)
    mutate(document)
    validator = jsonschema.Draft202012Validator(_committed_schema())
    assert list(validator.iter_errors(document)), f"the schema accepted the mutant {name}"
    with pytest.raises(TeamSpecError):
        load_team_spec(_write(tmp_path, yaml.safe_dump(document, sort_keys=False)))


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
        lambda s: s["models"]["fraud_detector"]["evaluation"]["thresholds"].update(
            at_least_auroc=0.9
        ),
    )
    with pytest.raises(
        TeamSpecError, match=r"evaluation\.thresholds: unknown threshold 'at_least_auroc'"
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
    assert "backends.kubernetes.image_uri: required, not set" in message
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


# --- Hostile or broken files: each is a TeamSpecError naming the file (and line and field) ----


def _load_in_child(path: Path, timeout_s: float = 30.0) -> tuple[str, str]:
    """``load_team_spec(path)`` in a child process with a 2 GiB address-space limit: the
    outcome ('ok', 'TeamSpecError' or another exception's name, 'timeout') and the message."""
    import subprocess

    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from ml_assets.teams.spec import load_team_spec\n"
        "try:\n"
        "    load_team_spec(sys.argv[1])\n"
        "    print('ok')\n"
        "except BaseException as exc:\n"
        "    print(type(exc).__name__)\n"
        "    print(exc)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return "timeout", ""
    outcome, _, message = done.stdout.partition("\n")
    return outcome or f"exit {done.returncode}: {done.stderr[-500:]}", message.strip()


def _problem(path: Path) -> str:
    """The TeamSpecError message of loading ``path``, which starts with the path, without it
    (the test's folder name is in the path)."""
    message = _error(path)
    assert message.startswith(str(path)), message[:300]
    return message.removeprefix(str(path))


HYPERPARAMETERS = "      hyperparameters:"


def test_non_utf8_bytes_name_the_file_line_and_byte_offset(tmp_path: Path) -> None:
    data = FRAUD_TEXT.encode().replace(b"Detects fraudulent", b"Detects fraudul\xe9nt")
    path = tmp_path / "team.yaml"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    message = _problem(path)
    assert message.startswith(f", line {_line_of(FRAUD_TEXT, 'Detects')}: ")
    assert "UTF-8" in message
    assert f"byte offset {offset}" in message


def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    path, text = _replaced(tmp_path, "        max_iter: 200", f"        max_iter: {deep}")
    message = _problem(path)
    assert message.startswith(f", line {_line_of(text, 'max_iter')}: ")
    assert "models.fraud_detector.trainer.hyperparameters.max_iter" in message
    assert "levels deep" in message
    assert len(message) < 1000


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("!!float 'abc'", "abc"),
        ("!!int twelve", "twelve"),
        ("!!bool maybe", "maybe"),
        ("!!int ''", "!!int"),
        ("!!python/object/apply:os.system ['true']", "!!python/object/apply:os.system"),
        ("!secret x", "!secret"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
    ],
)
def test_a_bad_tag_or_tagged_value_names_the_line(tmp_path: Path, value: str, problem: str) -> None:
    rate = "        learning_rate: "
    path, text = _replaced(tmp_path, rate + "0.1", rate + value)
    message = _problem(path)
    assert message.startswith(f", line {_line_of(text, 'learning_rate')}: ")
    assert problem in message


@pytest.mark.parametrize(
    "value",
    ["prod", "[prod, staging]", "{name: prod}", "[]", "{}", "null"],
    ids=["scalar", "list", "mapping", "empty-list", "empty-mapping", "null"],
)
def test_an_unknown_backend_setting_is_refused_with_the_known_ones(
    tmp_path: Path, value: str
) -> None:
    path, text = _replaced(
        tmp_path,
        "allowed_backends: [local]\n",
        f"allowed_backends: [local]\nbackends:\n  local:\n    namepsace: {value}\n",
    )
    message = _problem(path)
    assert message.startswith(
        f", line {_line_of(text, 'namepsace')}: backends.local.namepsace: unknown setting"
    )
    assert "python_executable, start_timeout_seconds, cancel_grace_seconds, pass_env" in message
    assert "Dagster" not in message and len(message) < 500


def test_an_unknown_kubernetes_setting_is_refused_not_ignored(tmp_path: Path) -> None:
    path, text = _replaced(
        tmp_path,
        "allowed_backends: [local]\n",
        "allowed_backends: [local, kubernetes]\nbackends:\n  kubernetes:\n"
        "    image_uri: ghcr.io/acme/ml:1\n    storage_root: s3://bucket/jobs\n"
        "    namepsace: prod\n",
    )
    message = _problem(path)
    assert f"line {_line_of(text, 'namepsace')}: backends.kubernetes.namepsace" in message
    assert "namespace" in message


def test_the_backend_resource_itself_refuses_unknown_settings() -> None:
    from pydantic import ValidationError

    from ml_assets.backends import backend_resource, backend_settings, configured_settings

    for build in (backend_resource, backend_settings, configured_settings):
        with pytest.raises(ValidationError, match="namepsace"):
            build("local", {"namepsace": ["x"]})


@pytest.mark.timeout(120)
def test_an_alias_bomb_under_backends_is_refused_quickly(tmp_path: Path) -> None:
    levels = ["    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "\n".join(levels)
    path, _ = _replaced(
        tmp_path,
        "allowed_backends: [local]\n",
        f"allowed_backends: [local]\nbackends:\n  local:\n{bomb}\n",
    )
    outcome, message = _load_in_child(path, timeout_s=60)
    assert outcome == "TeamSpecError", (outcome, message[:500])
    assert message.startswith(f"{path}, line ")
    assert "aliases" in message.removeprefix(str(path))


def test_a_scalar_unknown_backend_setting_does_not_load(tmp_path: Path) -> None:
    path, _ = _replaced(
        tmp_path,
        "allowed_backends: [local]\n",
        "allowed_backends: [local]\nbackends:\n  local:\n    start_timeout: 30\n",
    )
    assert "backends.local.start_timeout: unknown setting" in _error(path)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("team: fraud\n", "team: fraud\nteam: payments\n", "team"),
        ("        max_iter: 200\n", "        max_iter: 200\n        max_iter: 5\n", "max_iter"),
        ("      label: is_fraud\n", "      label: is_fraud\n      'label': y\n", "label"),
        (
            "    retry:\n      max_attempts: 2\n",
            "    retry:\n      max_attempts: 2\n    retry: {max_attempts: 3}\n",
            "retry",
        ),
    ],
    ids=["top-level", "hyperparameter", "quoted", "mapping-value"],
)
def test_a_duplicate_key_names_both_lines(tmp_path: Path, old: str, new: str, key: str) -> None:
    path, text = _replaced(tmp_path, old, new)
    lines = [i for i, row in enumerate(text.splitlines(), 1) if re.match(rf"\s*'?{key}'?:", row)]
    assert len(lines) == 2
    message = _problem(path)
    assert message.startswith(f", line {lines[1]}: ")
    assert f"duplicate key '{key}'" in message
    assert f"line {lines[0]}" in message


@pytest.mark.parametrize(
    "value",
    ["&loop [1, *loop]", "&loop {a: 1, b: *loop}", "&loop\n          - *loop"],
    ids=["list", "mapping", "block"],
)
def test_a_recursive_value_is_refused_at_load(tmp_path: Path, value: str) -> None:
    text = FRAUD_TEXT.replace(TRAINER, "      function: ml_assets.teams.wine.train:fit").replace(
        HYPERPARAMETERS + "\n", f"{HYPERPARAMETERS}\n        layers: {value}\n"
    )
    path = _write(tmp_path, text)
    message = _problem(path)
    assert message.startswith(f", line {_line_of(text, '*loop')}: ")
    assert "models.fraud_detector.trainer.hyperparameters.layers." in message
    assert "recursive" in message


def test_aliases_that_are_not_recursive_still_load(tmp_path: Path) -> None:
    path, _ = _replaced(
        tmp_path,
        "  - fraud-ml@example.com\n",
        "  - &owner fraud-ml@example.com\n  - team:fraud\n",
    )
    assert load_team_spec(path).owners == ["fraud-ml@example.com", "team:fraud"]


@pytest.mark.parametrize(
    "owner", ["fraud ml", "team:", "fraud-ml@", "@example.com", "Fraud <f@example.com>"]
)
def test_an_owner_dagster_would_refuse_is_refused_at_load(tmp_path: Path, owner: str) -> None:
    path, text = _replaced(tmp_path, "  - fraud-ml@example.com", f"  - {owner!r}")
    message = _problem(path)
    assert message.startswith(f", line {_line_of(text, repr(owner))}: owners.0: ")
    assert "email" in message and "team:" in message


@pytest.mark.parametrize("owner", ["ml-oncall@example.co.uk", "team:risk", "team:fraud"])
def test_an_owner_the_spec_accepts_dagster_accepts(tmp_path: Path, owner: str) -> None:
    import dagster as dg

    path, _ = _replaced(tmp_path, "  - fraud-ml@example.com", f"  - {owner!r}")
    spec = load_team_spec(path)
    dg.AssetSpec("x", owners=spec.owner_tags)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    backend: local", "    backend: {value}"),
        ("      function: hist_gradient_boosting", "      function: {value}"),
        ("      asset: platform/raw_card_transactions", "      asset: a {value}"),
        ("        max_iter: 200", "        ? {value}\n        : 200"),
    ],
    ids=["backend", "trainer", "asset", "key"],
)
def test_a_huge_value_is_cut_in_the_message(tmp_path: Path, old: str, new: str) -> None:
    value = "x" * 1_000_000
    path, _ = _replaced(tmp_path, old, new.format(value=value))
    message = _problem(path)
    assert message.startswith(", line ")
    assert len(message) < 2000
    assert re.search(r"x{190}…' \(100000[02] characters\)", message), message[:1000]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path, _ = _replaced(tmp_path, "description: Detects", "description: " + "x" * (1 << 20))
    message = _problem(path)
    assert message.startswith(": ")
    assert "1 MiB" in message and len(message) < 300


def test_many_problems_make_a_bounded_message(tmp_path: Path) -> None:
    extra = "".join(f"k{i}: {'y' * 300}\n" for i in range(2000))
    path = _write(tmp_path, FRAUD_TEXT + extra)
    message = _problem(path)
    assert message.startswith(", line ")
    assert len(message) < 8000
    assert "more problems" in message
