"""Team-scoped views: a webserver that shows one team's code location and the platform data.

``ml-assets view <team>`` reads the full workspace (``workspace.yaml``, or the gRPC workspace
of the production topology), writes a workspace file holding only the team's location and
``platform_data``, and replaces itself with ``dagster-webserver`` on that file, read-only when
the platform policy's ``ui_read_only`` says so for the team.

This narrows what one webserver shows and allows; it is not access control. Every webserver
reads and writes the same instance storage: whoever holds its credentials, or runs another
webserver on the full workspace, sees and launches everything.

The workspace helpers here are plain YAML handling (no Dagster import), shared with the
production topology's launcher.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

PLATFORM_LOCATION = "platform_data"
"""The location of the platform's raw data, upstream of every team."""

# Workspace entry kinds whose file paths Dagster resolves against the workspace file's folder.
_FILE_KINDS = ("python_file",)
_ENTRY_KINDS = ("python_module", "python_file", "python_package", "grpc_server")


class WorkspaceError(ValueError):
    """A workspace file that cannot be read or lacks a location, naming the file."""


def location_name(entry: dict[str, Any], source: Path) -> str:
    """The code location name of one ``load_from`` entry, as Dagster would name it."""
    kinds = [kind for kind in _ENTRY_KINDS if kind in entry]
    if len(kinds) != 1:
        raise WorkspaceError(
            f"{source}: a load_from entry must have exactly one of {', '.join(_ENTRY_KINDS)}; "
            f"got {sorted(entry)}"
        )
    (kind,) = kinds
    target = entry[kind]
    if isinstance(target, str):
        # The short form (``python_module: pkg.mod``) names the location after its target.
        return target
    if not isinstance(target, dict):
        raise WorkspaceError(f"{source}: load_from.{kind} must be a string or a mapping")
    name = target.get("location_name")
    if name:
        return str(name)
    if kind == "grpc_server":
        return f"{target.get('host', 'localhost')}:{target.get('port') or target.get('socket')}"
    return str(
        target.get("module_name") or target.get("package_name") or target.get("relative_path")
    )


def read_workspace(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``load_from`` entries of a workspace file by location name, in file order, with
    file paths made absolute so that the entries work from a file written anywhere else."""
    source = Path(path)
    try:
        document = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise WorkspaceError(f"{source}: cannot read the workspace: {exc}") from None
    except yaml.YAMLError as exc:
        raise WorkspaceError(f"{source}: not valid YAML: {exc}") from None
    entries = document.get("load_from") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise WorkspaceError(f"{source}: no 'load_from' list of code locations")
    located: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise WorkspaceError(f"{source}: each load_from entry must be a mapping")
        name = location_name(entry, source)
        if name in located:
            raise WorkspaceError(f"{source}: location {name!r} is declared twice")
        located[name] = _rebased(entry, source.resolve().parent)
    return located


def _rebased(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    rebased: dict[str, Any] = {}
    for kind, target in entry.items():
        if kind in _FILE_KINDS:
            if isinstance(target, str):
                target = {"relative_path": target}
            target = dict(target)
            for key in ("relative_path", "working_directory"):
                if target.get(key) and not Path(target[key]).is_absolute():
                    target[key] = str(folder / target[key])
        rebased[kind] = target
    return rebased


def team_workspace(entries: dict[str, dict[str, Any]], team: str, source: Path) -> dict[str, Any]:
    """A workspace document with exactly the team's location and the platform data."""
    missing = [name for name in (team, PLATFORM_LOCATION) if name not in entries]
    if missing:
        raise WorkspaceError(
            f"{source}: no code location named {', '.join(repr(name) for name in missing)} "
            f"(locations: {', '.join(entries) or 'none'})"
        )
    return {"load_from": [entries[PLATFORM_LOCATION], entries[team]]}


def write_team_workspace(workspace: str | Path, team: str, target: str | Path) -> Path:
    """Write the team's scoped workspace, read from ``workspace``, to ``target``."""
    source = Path(workspace)
    document = team_workspace(read_workspace(source), team, source)
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Team-scoped view of {source.resolve()} for team {team!r}: its location and the\n"
        "# platform data only. Written by `ml-assets view`; edits are overwritten.\n"
    )
    out.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return out


def read_only_for(team: str, policy_path: str | Path | None = None) -> bool:
    """Whether the platform policy makes the team's view read-only."""
    from ml_assets.policy import load_policy

    return load_policy(policy_path).grant(team).ui_read_only


def webserver_command(
    workspace: str | Path, *, host: str, port: int, read_only: bool, path_prefix: str = ""
) -> list[str]:
    """The ``dagster-webserver`` command serving ``workspace``, with this Python's Dagster."""
    command = [
        sys.executable,
        "-m",
        "dagster_webserver",
        "-w",
        str(workspace),
        "-h",
        host,
        "-p",
        str(port),
    ]
    if path_prefix:
        command += ["-l", path_prefix]
    if read_only:
        command.append("--read-only")
    return command


def default_view_path(team: str) -> Path:
    """Where a team's view workspace goes: beside the instance (``$DAGSTER_HOME/views``), or
    in the user's cache folder when no instance home is set."""
    dagster_home = os.environ.get("DAGSTER_HOME")
    root = Path(dagster_home) / "views" if dagster_home else Path.home() / ".cache" / "ml_assets"
    return root / f"{team}.workspace.yaml"


def add_view_command(commands: Any) -> None:
    """Add ``view`` to the ``ml-assets`` command's subcommands."""
    view = commands.add_parser(
        "view",
        help="run a webserver showing only one team's location and the platform data",
        description="Write a workspace with only the team's code location and platform_data, "
        "then run dagster-webserver on it (read-only when the platform policy says so). This "
        "scopes what the page shows; it is not authentication.",
    )
    view.add_argument("team", help="the team's code location name, e.g. payments")
    view.add_argument(
        "-w",
        "--workspace",
        type=Path,
        default=Path("workspace.yaml"),
        help="the full workspace to take the two locations from (default: ./workspace.yaml)",
    )
    view.add_argument(
        "--out",
        type=Path,
        help="where to write the team's workspace (default: $DAGSTER_HOME/views/"
        "<team>.workspace.yaml, or ~/.cache/ml_assets/ without DAGSTER_HOME)",
    )
    view.add_argument("--host", default="127.0.0.1", help="the webserver's host")
    view.add_argument("-p", "--port", type=int, default=3000, help="the webserver's port")
    view.add_argument(
        "--policy",
        type=Path,
        help="the platform policy (default: $ML_ASSETS_POLICY or the "
        "platform location's platform.yaml)",
    )
    view.add_argument(
        "--read-only",
        action="store_true",
        help="read-only even when the policy allows more (it can only narrow the policy)",
    )
    view.add_argument(
        "--print",
        dest="dry_run",
        action="store_true",
        help="write the workspace and print the command instead of running it",
    )


def run_view(args: argparse.Namespace) -> int:
    """``ml-assets view``: write the team's workspace, then exec the webserver on it."""
    from ml_assets.policy import PolicyError

    target = args.out or default_view_path(args.team)
    try:
        read_only = read_only_for(args.team, args.policy) or args.read_only
        written = write_team_workspace(args.workspace, args.team, target)
    except (WorkspaceError, PolicyError) as error:
        print(f"ml-assets view: {error}", file=sys.stderr)
        return 2
    command = webserver_command(written, host=args.host, port=args.port, read_only=read_only)
    mode = "read-only" if read_only else "read-write"
    print(
        f"ml-assets view: {args.team} + {PLATFORM_LOCATION} ({mode}) from {written}",
        file=sys.stderr,
    )
    if args.dry_run:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached: exec replaces this process
