"""Values for the official Dagster Helm chart, generated from the platform policy and the
workspace: ``ml-assets deploy helm-values``.

What the values set up, on top of the chart's defaults:

* one ``dagster-user-deployments`` entry per code location of the workspace, each its own gRPC
  code server running ``dagster api grpc --module-name <the location's module>`` in the image
  built from ``deploy/Dockerfile``; a team's code server (and, through
  ``includeConfigInLaunchedRuns``, each run it launches) gets its own Kubernetes Secret
  ``ml-assets-<team>-secrets`` as environment variables, and no other team's;
* the platform policy as a ConfigMap (``extraManifests``) mounted into every code server, with
  ``ML_ASSETS_POLICY`` pointing at it: the values and the policy the code servers enforce come
  from the same file, and a policy change needs no new image;
* ``ML_ASSETS_HOME`` on one shared volume claim (datasets, features, local registry);
* PostgreSQL instance storage on an external server, its password in a Secret managed outside
  the chart (``global.postgresqlSecretName``);
* the ``K8sRunLauncher``;
* the run queue: at most ``max_concurrent_runs`` runs of each team's location at once, by the
  ``dagster/code_location`` tag Dagster puts on every run.

Kubernetes names allow no ``_``, and the chart uses a deployment's name as its code location's
name and its Service's host name, so a location named ``platform_data`` in ``workspace.yaml`` is
``platform-data`` in the cluster.

This module imports neither Dagster nor any SDK.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ml_assets.policy import PlatformPolicy, load_policy, policy_path, run_queue_limits
from ml_assets.tags import KUBERNETES_TEAM_LABEL, TEAM_TAG

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKSPACE = REPO / "workspace.yaml"
DEFAULT_VALUES = REPO / "deploy" / "helm" / "values.yaml"

POLICY_CONFIGMAP = "ml-assets-policy"
POLICY_MOUNT = "/etc/ml_assets"
HOME_MOUNT = "/var/lib/ml_assets"
CODE_SERVER_PORT = 3030
IMAGE_UID = 10001  # the non-root user of deploy/Dockerfile
GENERATED_BY = "ml-assets deploy helm-values"


class DeployError(ValueError):
    """The workspace or the options cannot be turned into Helm values."""


@dataclass(frozen=True)
class HelmOptions:
    """What the values need beyond the policy and the workspace: where the image is, and the
    names of things the platform creates outside the chart."""

    image_repository: str = "registry.example.com/ml-assets"
    image_tag: str = "0.1.0"
    image_pull_policy: str = "IfNotPresent"
    postgres_host: str = "postgresql.dagster.svc.cluster.local"
    postgres_port: int = 5432
    postgres_database: str = "dagster"
    postgres_user: str = "dagster"
    postgres_secret: str = "ml-assets-postgresql"
    home_claim: str = "ml-assets-home"
    secret_name: str = "ml-assets-{team}-secrets"
    image_pull_secrets: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Location:
    """One code location of the workspace."""

    name: str  # as in workspace.yaml
    module: str
    team: str | None  # the team whose location it is; None for the platform's own

    @property
    def deployment(self) -> str:
        """The name in the cluster: a DNS label, which Kubernetes requires of Service names."""
        return kubernetes_name(self.name)


def kubernetes_name(name: str) -> str:
    """``name`` as a DNS-1035 label: lower case, ``-`` for anything else, at most 63 chars."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha() or len(label) > 63:
        raise DeployError(f"{name!r} cannot be made a Kubernetes name (a DNS label)")
    return label


def read_locations(workspace: Path, policy: PlatformPolicy) -> list[Location]:
    """The workspace's code locations, in file order. Only ``python_module`` entries can become
    code servers in the image (a file path or a remote gRPC server has no module to run)."""
    try:
        document = yaml.safe_load(workspace.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"{workspace}: cannot read the workspace: {exc}") from None
    entries = document.get("load_from") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DeployError(f"{workspace}: no 'load_from' list of code locations")
    locations: list[Location] = []
    for index, entry in enumerate(entries):
        target = entry.get("python_module") if isinstance(entry, dict) else None
        if isinstance(target, str):
            target = {"module_name": target}
        if not isinstance(target, dict) or not isinstance(target.get("module_name"), str):
            raise DeployError(
                f"{workspace}: load_from.{index}: only python_module entries can be deployed "
                "as code servers of the image"
            )
        module = target["module_name"]
        name = str(target.get("location_name") or module)
        locations.append(Location(name, module, _team_of(name, module, policy)))
    names = [location.deployment for location in locations]
    for name in names:
        if names.count(name) > 1:
            raise DeployError(f"{workspace}: two locations are both {name!r} in Kubernetes")
    return locations


def _team_of(name: str, module: str, policy: PlatformPolicy) -> str | None:
    """The team of a location: the ``team`` of the team.yaml beside its module, else its name
    when the policy grants a team of that name; None for a location that is no team's."""
    package = module.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        team_file = Path(folder) / "team.yaml"
        if team_file.is_file():
            document = yaml.safe_load(team_file.read_text())
            if isinstance(document, dict) and isinstance(document.get("team"), str):
                return document["team"]
    return name if name in policy.teams else None


def helm_values(
    policy: PlatformPolicy,
    locations: list[Location],
    options: HelmOptions | None = None,
    policy_text: str | None = None,
) -> dict[str, Any]:
    """The chart values: a document to write as YAML, over the chart's own defaults."""
    options = options or HelmOptions()
    image = {
        "repository": options.image_repository,
        "tag": options.image_tag,
        "pullPolicy": options.image_pull_policy,
    }
    pull_secrets = [{"name": name} for name in options.image_pull_secrets]
    # Separate copies of shared parts, so the YAML has no anchors and aliases.
    values: dict[str, Any] = {
        "global": {
            "postgresqlSecretName": options.postgres_secret,
            "dagsterHome": "/opt/dagster/dagster_home",
            "serviceAccountName": "",
            "celeryConfigSecretName": "dagster-celery-config-secret",
            "dagsterInstanceConfigMap": "dagster-instance",
        },
        "imagePullSecrets": pull_secrets,
        "dagsterWebserver": {"image": dict(image)},
        "dagster-user-deployments": {
            "enabled": True,
            "enableSubchart": True,
            "imagePullSecrets": copy.deepcopy(pull_secrets),
            "deployments": [_deployment(loc, image, options) for loc in locations],
        },
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {
                "k8sRunLauncher": {
                    "imagePullPolicy": options.image_pull_policy,
                    "loadInclusterConfig": True,
                    "envConfigMaps": [],
                    "envSecrets": [],
                    "envVars": [],
                    "volumeMounts": [],
                    "volumes": [],
                }
            },
        },
        "postgresql": {
            "enabled": False,
            "postgresqlHost": options.postgres_host,
            "postgresqlUsername": options.postgres_user,
            "postgresqlPassword": "",
            "postgresqlDatabase": options.postgres_database,
            "postgresqlParams": {},
            "service": {"port": options.postgres_port},
        },
        "generatePostgresqlPasswordSecret": False,
        "generateCeleryConfigSecret": False,
        "rabbitmq": {"enabled": False},
        "redis": {"enabled": False},
        "flower": {"enabled": False},
        "dagsterDaemon": {
            "image": dict(image),
            "runCoordinator": {
                "enabled": True,
                "type": "QueuedRunCoordinator",
                "config": {
                    "queuedRunCoordinator": {
                        "tagConcurrencyLimits": location_run_limits(policy, locations),
                    }
                },
            },
        },
        "migrate": {"enabled": False, "extraContainers": [], "initContainers": []},
        "ui": {},
        "telemetry": {"enabled": False},
    }
    if policy_text is not None:
        if "{{" in policy_text:
            # The chart renders extra manifests as templates.
            raise DeployError("the policy file must not contain '{{' (Helm would read a template)")
        values["extraManifests"] = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": POLICY_CONFIGMAP},
                "data": {"platform.yaml": policy_text},
            }
        ]
    return values


def instance_run_queue(policy: PlatformPolicy) -> dict[str, Any]:
    """The run-queue part of a ``dagster.yaml`` (no Helm): one limit per team the policy lists,
    by the ``ml_assets/team`` tag every run of a team carries, and for any other team the
    largest of those limits and the default grant's.

    Dagster holds a run while any limit its tags match is full, so the catch-all per-team limit
    must not be lower than a listed team's own, or it would cap that team instead.
    """
    limits = run_queue_limits(policy, list(policy.teams))
    catch_all = max([policy.default.max_concurrent_runs, *(x["limit"] for x in limits)])
    limits.append(
        {"key": TEAM_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": catch_all}
    )
    return {"concurrency": {"runs": {"tag_concurrency_limits": limits}}}


def location_run_limits(policy: PlatformPolicy, locations: list[Location]) -> list[dict[str, Any]]:
    """One run-queue limit per code location, by the ``dagster/code_location`` tag: a team's
    ``max_concurrent_runs``, and the default grant's for a location that is no team's."""
    return [
        {
            "key": "dagster/code_location",
            "value": location.deployment,
            "limit": (
                policy.grant(location.team) if location.team else policy.default
            ).max_concurrent_runs,
        }
        for location in locations
    ]


def _deployment(location: Location, image: dict[str, str], options: HelmOptions) -> dict[str, Any]:
    deployment: dict[str, Any] = {
        "name": location.deployment,
        "image": dict(image),
        "dagsterApiGrpcArgs": ["--module-name", location.module],
        "port": CODE_SERVER_PORT,
        "includeConfigInLaunchedRuns": {"enabled": True},
        "env": {
            "ML_ASSETS_POLICY": f"{POLICY_MOUNT}/platform.yaml",
            "ML_ASSETS_HOME": HOME_MOUNT,
        },
        "labels": {"ml-assets/location": location.deployment},
        # The image's user; fsGroup makes the shared home volume writable by it.
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
        },
        "volumes": [
            {"name": "policy", "configMap": {"name": POLICY_CONFIGMAP}},
            {"name": "home", "persistentVolumeClaim": {"claimName": options.home_claim}},
        ],
        "volumeMounts": [
            {"name": "policy", "mountPath": POLICY_MOUNT, "readOnly": True},
            {"name": "home", "mountPath": HOME_MOUNT},
        ],
    }
    if location.team is not None:
        deployment["labels"][KUBERNETES_TEAM_LABEL] = kubernetes_name(location.team)
        # Optional, so a team with no secrets yet still starts; a team's secrets reach only
        # its own code server and the runs it launches.
        deployment["envSecrets"] = [
            {
                "name": options.secret_name.format(team=kubernetes_name(location.team)),
                "optional": True,
            }
        ]
    return deployment


def render(values: dict[str, Any], policy_source: str, workspace: Path) -> str:
    """The values as YAML with a header saying where they come from."""
    header = (
        f"# Generated by `{GENERATED_BY}` from the platform policy and the workspace; do not\n"
        "# edit: change the policy or workspace.yaml and regenerate. Install with the official\n"
        "# chart of the Dagster version the image has:\n"
        "#   helm upgrade --install dagster dagster/dagster --version 1.13.27 -f values.yaml\n"
        f"# policy: {_shown(policy_source)}\n"
        f"# workspace: {_shown(str(workspace))}\n"
    )
    body = yaml.dump(values, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    return header + body


class _Dumper(yaml.SafeDumper):
    """Writes a text of several lines (the policy) as a YAML block, readable in the file."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _shown(path: str) -> str:
    """``path`` relative to the repository when inside it, so the file is the same anywhere."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def generate(
    policy_file: str | Path | None = None,
    workspace: str | Path | None = None,
    options: HelmOptions | None = None,
) -> str:
    """The values file's text, from the policy (default: ``$ML_ASSETS_POLICY`` or the platform
    location's) and the workspace (default: this repository's)."""
    path, _ = policy_path(policy_file)
    policy = load_policy(path)
    workspace_path = Path(workspace) if workspace else DEFAULT_WORKSPACE
    locations = read_locations(workspace_path, policy)
    text = path.read_text() if path.is_file() else yaml.safe_dump(policy.model_dump())
    values = helm_values(policy, locations, options, policy_text=text)
    return render(values, policy.source or "built-in default", workspace_path)


# --- The chart's schema ---------------------------------------------------------------------


def merged(defaults: Any, values: Any) -> Any:
    """``values`` over ``defaults`` as Helm merges them: maps key by key, anything else (lists
    included) replaced, and a null removing the key."""
    if not isinstance(defaults, dict) or not isinstance(values, dict):
        return copy.deepcopy(values)
    result = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def offline_schema(schema: Any) -> Any:
    """``schema`` without its remote ``$ref``s (Kubernetes definitions on the web), which
    cannot be resolved offline; each becomes no constraint."""
    if isinstance(schema, dict):
        return {
            key: offline_schema(value)
            for key, value in schema.items()
            if not (key == "$ref" and isinstance(value, str) and value.startswith("http"))
        }
    if isinstance(schema, list):
        return [offline_schema(item) for item in schema]
    return schema


def schema_errors(
    values: dict[str, Any],
    chart_defaults: dict[str, Any],
    schema: dict[str, Any],
    subchart_schema: dict[str, Any],
) -> list[str]:
    """Every error of ``values`` (merged over the chart's defaults) against the main chart's
    values schema and, for the user deployments, the subchart's, as ``path: message``."""
    from jsonschema import Draft202012Validator

    full = merged(chart_defaults, values)
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<top>'}: {error.message}"
        for error in Draft202012Validator(offline_schema(schema)).iter_errors(full)
    ]
    subchart = dict(full["dagster-user-deployments"])
    # What Helm hands the subchart besides its own section: the globals, and the subchart's
    # own top-level settings that mirror them.
    glob = full.get("global", {})
    subchart.setdefault("global", glob)
    subchart.setdefault("dagsterHome", glob.get("dagsterHome"))
    subchart.setdefault("postgresqlSecretName", glob.get("postgresqlSecretName"))
    subchart.setdefault("celeryConfigSecretName", glob.get("celeryConfigSecretName"))
    subchart.setdefault("serviceAccount", {"create": True, "name": "", "annotations": {}})
    errors.extend(
        f"dagster-user-deployments (subchart) "
        f"{'.'.join(str(p) for p in error.absolute_path) or '<top>'}: {error.message}"
        for error in Draft202012Validator(offline_schema(subchart_schema)).iter_errors(subchart)
    )
    return errors


# --- The command ---------------------------------------------------------------------------


def add_deploy_parser(commands: Any) -> None:
    """``ml-assets deploy helm-values``: the arguments, on the ``ml-assets`` parser."""
    deploy = commands.add_parser("deploy", help="generate deployment files from the policy")
    kinds = deploy.add_subparsers(dest="deploy_command", required=True)
    helm = kinds.add_parser(
        "helm-values",
        help="values for the official Dagster Helm chart: one code server per location",
    )
    queue = kinds.add_parser(
        "run-queue",
        help="the run-queue limits per team for a dagster.yaml, from the policy",
    )
    queue.add_argument("--policy", type=Path, help="policy file (default as for helm-values)")
    defaults = HelmOptions()
    helm.add_argument(
        "--policy",
        type=Path,
        help="policy file (default: $ML_ASSETS_POLICY or ml_assets/platform_data/platform.yaml)",
    )
    helm.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_WORKSPACE,
        help="workspace file (default: this repository's workspace.yaml)",
    )
    helm.add_argument("--image-repository", default=defaults.image_repository)
    helm.add_argument("--image-tag", default=defaults.image_tag)
    helm.add_argument(
        "--image-pull-policy",
        default=defaults.image_pull_policy,
        choices=["Always", "IfNotPresent", "Never"],
    )
    helm.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        help="a Secret for pulling the image (repeatable)",
    )
    helm.add_argument("--postgres-host", default=defaults.postgres_host)
    helm.add_argument("--postgres-port", type=int, default=defaults.postgres_port)
    helm.add_argument("--postgres-database", default=defaults.postgres_database)
    helm.add_argument("--postgres-user", default=defaults.postgres_user)
    helm.add_argument(
        "--postgres-secret",
        default=defaults.postgres_secret,
        help="Secret holding the password under 'postgresql-password'",
    )
    helm.add_argument(
        "--home-claim",
        default=defaults.home_claim,
        help="PersistentVolumeClaim (ReadWriteMany) mounted as ML_ASSETS_HOME",
    )
    helm.add_argument(
        "--secret-name",
        default=defaults.secret_name,
        help="each team's Secret, '{team}' replaced by the team's name",
    )
    helm.add_argument("--write", type=Path, help="write to this file instead of printing")
    helm.add_argument(
        "--check", type=Path, help="exit 1 if this file differs from what would be generated"
    )


def run_deploy(args: argparse.Namespace) -> int:
    if args.deploy_command == "run-queue":
        try:
            policy = load_policy(args.policy)
        except ValueError as error:
            print(f"ml-assets deploy: {error}", file=sys.stderr)
            return 2
        sys.stdout.write(yaml.safe_dump(instance_run_queue(policy), sort_keys=False))
        return 0
    options = HelmOptions(
        image_repository=args.image_repository,
        image_tag=args.image_tag,
        image_pull_policy=args.image_pull_policy,
        postgres_host=args.postgres_host,
        postgres_port=args.postgres_port,
        postgres_database=args.postgres_database,
        postgres_user=args.postgres_user,
        postgres_secret=args.postgres_secret,
        home_claim=args.home_claim,
        secret_name=args.secret_name,
        image_pull_secrets=tuple(args.image_pull_secret),
    )
    try:
        text = generate(args.policy, args.workspace, options)
    except (DeployError, ValueError) as error:
        print(f"ml-assets deploy: {error}", file=sys.stderr)
        return 2
    if args.check is not None:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(f"ml-assets deploy: {args.check} is stale; regenerate it", file=sys.stderr)
            return 1
        return 0
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
