"""The audit trail of one model version, from the registry alone, and the ``ml-assets`` command.

``ml-assets audit <team>/<model> [--stage production | --version N] [--json]`` prints, for the
version at that stage (or that number), the chain that produced it: the content hashes of the
dataset and features it read, the code versions of every step, the training job and backend,
hyperparameters, metrics and evaluation verdict, the Dagster run of each step, and the
promotion decision with its checks (and any rollback).

It reads only the team's YAML (for its registry) and the registry, never the Dagster instance,
and imports no dagster, so it answers in well under a second on a local registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ml_assets import storage
from ml_assets.registries import team_registry
from ml_assets.registries.base import ModelRegistry, ModelVersion
from ml_assets.teams.spec import TeamSpecError, load_team_spec

TEAMS_DIR = Path(__file__).parent / "teams"


class AuditError(LookupError):
    """The version asked for cannot be found, with what to try instead."""


def find_version(
    registry: ModelRegistry, model_name: str, stage: str | None, version: str | None
) -> ModelVersion:
    """The version named by number, or the one holding the alias ``stage``."""
    if version:
        found = registry.get_version(model_name, version)
        if found is None:
            raise AuditError(
                f"{model_name} has no version {version} in the {registry.name} registry"
            )
        return found
    alias = stage or "production"
    found = registry.get_by_alias(model_name, alias)
    if found is None:
        raise AuditError(
            f"{model_name} has no version at stage {alias!r} in the {registry.name} registry; "
            "pass --version N to audit a version by number"
        )
    return found


def audit_record(version: ModelVersion) -> dict[str, Any]:
    """The version's audit chain as one JSON-serialisable document."""
    lineage = version.lineage
    return {
        "model": version.model_name,
        "version": version.version,
        "registry": version.registry,
        "uri": version.uri,
        "aliases": version.aliases,
        "job_id": version.job_id,
        "metrics": version.metrics,
        "hyperparameters": lineage.get("params", {}),
        "dataset": lineage.get("dataset", {}),
        "features": lineage.get("features", {}),
        "training": lineage.get("training", {}),
        "evaluation": lineage.get("evaluation", {}),
        "registration": lineage.get("registration", {}),
        "promotion": version.notes.get("promotion"),
        "rollback": version.notes.get("rollback"),
        "serving": version.notes.get("serving"),
    }


def _line(label: str, value: Any) -> str:
    return f"  {label:<18} {value if value not in (None, '') else '-'}"


def format_text(record: dict[str, Any]) -> str:
    """The audit chain as text, one step per block, read from the data to the decision."""
    dataset, features = record["dataset"], record["features"]
    training, evaluation = record["training"], record["evaluation"]
    lines = [
        f"{record['model']} version {record['version']} "
        f"[{', '.join(record['aliases']) or 'no alias'}] in the {record['registry']} registry",
        _line("uri", record["uri"]),
        "dataset",
        _line("asset", dataset.get("asset")),
        _line("data version", dataset.get("data_version")),
        _line("code version", dataset.get("code_version")),
        _line("run", dataset.get("run_id")),
        "features",
        _line("asset", features.get("asset")),
        _line("data version", features.get("data_version")),
        _line("code version", features.get("code_version")),
        _line("run", features.get("run_id")),
        "training",
        _line("job", f"{training.get('job_id')} on {training.get('backend')}"),
        _line("trainer", training.get("trainer")),
        _line("hyperparameters", json.dumps(record["hyperparameters"], sort_keys=True)),
        _line("code version", training.get("code_version")),
        _line("submitted by run", training.get("submitted_by_run")),
        _line("artifact sha256", training.get("artifact_sha256")),
        "evaluation",
        _line("metrics", ", ".join(f"{k} {v:.4f}" for k, v in sorted(record["metrics"].items()))),
        _line("thresholds", json.dumps(evaluation.get("thresholds", {}), sort_keys=True)),
        _line("verdict", evaluation.get("verdict")),
        _line("code version", evaluation.get("code_version")),
        _line("run", evaluation.get("run_id")),
        "registration",
        _line("code version", record["registration"].get("code_version")),
        _line("run", record["registration"].get("run_id")),
    ]
    promotion = record.get("promotion")
    lines.append("promotion")
    if promotion:
        lines.append(_line("decision", f"{promotion['decision']} at {promotion['at']}"))
        lines.append(_line("run", promotion.get("run_id")))
        lines.append(_line("replaced version", promotion.get("previous_production")))
        for name, check in promotion.get("checks", {}).items():
            verdict = "passed" if check.get("passed") else "FAILED"
            lines.append(_line(name, f"{verdict}: {check.get('summary', '')}"))
    else:
        lines.append(_line("decision", "not yet decided"))
    rollback = record.get("rollback")
    if rollback:
        lines.append("rollback")
        lines.append(
            _line(
                "production",
                f"{rollback['from_version']} -> {rollback['to_version']} at "
                f"{rollback['at']} ({rollback.get('reason', '')})",
            )
        )
        lines.append(_line("run", rollback.get("run_id")))
    serving = record.get("serving")
    if serving:
        lines.append("serving")
        lines.append(_line("ready", f"{serving.get('ready')}; spec {serving.get('spec')}"))
    return "\n".join(lines)


def registry_from_yaml(spec_path: Path) -> tuple[str, ModelRegistry]:
    """The team name and registry from a team YAML, loaded and checked as its location would."""
    try:
        spec = load_team_spec(spec_path)
    except TeamSpecError as error:
        raise AuditError(str(error)) from None
    registry = team_registry(spec.registry.kind, spec.registry.settings, spec.team, storage.home())
    return spec.team, registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml-assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="print the lineage chain of a model version")
    audit.add_argument("model", help="<team>/<model>, e.g. payments/churn_model")
    which = audit.add_mutually_exclusive_group()
    which.add_argument("--stage", help="an alias: production (default), challenger, archived")
    which.add_argument("--version", help="a version number")
    audit.add_argument("--json", action="store_true", help="print JSON instead of text")
    audit.add_argument(
        "--spec", type=Path, help="the team's YAML (default: ml_assets/teams/<team>/team.yaml)"
    )
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of team.yaml files, for editors"
    )
    schema.add_argument("--write", type=Path, help="write it to this file instead")
    schema.add_argument(
        "--policy", action="store_true", help="the platform policy's schema instead"
    )
    from ml_assets.deploy import add_deploy_parser, run_deploy

    add_deploy_parser(commands)
    from ml_assets.views import add_view_command, run_view

    add_view_command(commands)
    args = parser.parse_args(argv)
    if args.command == "view":
        return run_view(args)
    if args.command == "schema":
        return _print_schema(args.write, args.policy)
    if args.command == "deploy":
        return run_deploy(args)
    team, _, model = args.model.partition("/")
    if not team or not model:
        parser.error(f"expected <team>/<model>, got {args.model!r}")
    spec_path = args.spec or TEAMS_DIR / team / "team.yaml"
    try:
        if not spec_path.exists():
            raise AuditError(f"{spec_path}: no such team spec; pass --spec PATH")
        team_name, registry = registry_from_yaml(spec_path)
        version = find_version(registry, f"{team_name}.{model}", args.stage, args.version)
    except AuditError as error:
        print(f"ml-assets audit: {error}", file=sys.stderr)
        return 2
    record = audit_record(version)
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else format_text(record))
    return 0


def _print_schema(target: Path | None, policy: bool = False) -> int:
    from ml_assets.policy import policy_json_schema
    from ml_assets.teams.spec import team_json_schema

    document = policy_json_schema() if policy else team_json_schema()
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if target is None:
        sys.stdout.write(text)
    else:
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
