"""The platform policy: what each team may use, decided by the platform team, not by the teams.

One YAML file of the platform location (``ml_assets/platform_data/platform.yaml``, or the file
named by ``ML_ASSETS_POLICY``) grants each team its backends, GPU quota per pool, CPU quota,
registry kinds, storage roots, the prefix its secrets' environment variables must carry and its
run limit. A team's own YAML can only ask for a part of its grant: ``check_team`` fails the
team's location at load otherwise, naming both files and the field.

Without a policy file every team may use the local backend only, with the local, MLflow and W&B
registries, so a laptop needs no policy.

This module is plain data (pydantic): it imports neither Dagster nor any SDK.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from ml_assets.backends.shapes import normalize_gpu_type
from ml_assets.tags import TEAM_TAG

if TYPE_CHECKING:
    from ml_assets.teams.spec import TeamSpec

__all__ = [
    "DEFAULT_POLICY_PATH",
    "POLICY_ENV",
    "GpuPool",
    "PlatformPolicy",
    "PolicyError",
    "TeamGrant",
    "check_team",
    "load_policy",
    "normalize_gpu_type",
    "policy_json_schema",
    "run_queue_limits",
]

POLICY_ENV = "ML_ASSETS_POLICY"
"""Environment variable holding the path of the policy file."""

DEFAULT_POLICY_PATH = Path(__file__).parent / "platform_data" / "platform.yaml"
"""The platform location's policy, used when ``ML_ASSETS_POLICY`` is not set."""

# The compute backends a policy may name. Kept here rather than read from the backend table so
# this module stays importable without the backends package's plugin machinery.
KNOWN_BACKENDS = ("local", "kubernetes", "sagemaker", "vertex", "databricks")
KNOWN_REGISTRIES = ("local", "mlflow", "wandb", "sagemaker")

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_TEAM = r"^[a-z][a-z0-9_]{0,40}$"


class PolicyError(ValueError):
    """A policy file that cannot be used, with the file, line and field that are wrong."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


class GpuPool(_Data):
    """A set of GPUs that jobs draw from: all of one backend, optionally of one GPU model."""

    gpus: int = Field(gt=0, description="Capacity of the pool in GPUs.")
    backend: str = Field(
        description="The backend this pool's GPUs are on: local, kubernetes, sagemaker, "
        "vertex or databricks.",
        json_schema_extra={"enum": list(KNOWN_BACKENDS)},
    )
    gpu_type: str | None = Field(
        None,
        description="The GPU model the pool holds, e.g. 't4' or 'a100-80gb' (any spelling: "
        "'nvidia-tesla-t4' is 't4'); omit it for any GPU model on the backend.",
    )
    kueue: bool = Field(
        False,
        description="Kubernetes only: Kueue admits the pool's jobs (each Job is labelled with "
        "its team's LocalQueue), not the library.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return _known(value, KNOWN_BACKENDS, "backend")

    @field_validator("gpu_type")
    @classmethod
    def _normalized(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = normalize_gpu_type(value)
        if not name:
            raise ValueError("an empty GPU type; omit gpu_type for any GPU model")
        return name

    @model_validator(mode="after")
    def _kueue_on_kubernetes(self) -> GpuPool:
        if self.kueue and self.backend != "kubernetes":
            raise ValueError(f"kueue pools are on kubernetes only, not {self.backend}")
        return self


class TeamGrant(_Data):
    """What one team may use. Its own YAML may ask for less, never for more."""

    backends: list[str] = Field(
        default_factory=lambda: ["local"],
        description="Compute backends the team may use.",
        json_schema_extra={"items": {"enum": list(KNOWN_BACKENDS), "type": "string"}},
    )
    gpu_quota: dict[str, int] = Field(
        default_factory=dict,
        description="Pool name -> GPUs the team's jobs may hold at once in that pool.",
    )
    cpu_quota: float | None = Field(
        None, gt=0, description="CPU cores the team's jobs in flight may hold at once."
    )
    registries: list[str] = Field(
        default_factory=lambda: ["local", "mlflow", "wandb"],
        description="Registry kinds the team may use: local, mlflow, wandb, sagemaker.",
        json_schema_extra={"items": {"enum": list(KNOWN_REGISTRIES), "type": "string"}},
    )
    storage_roots: list[str] = Field(
        default_factory=list,
        description="URI or path prefixes the team's storage and job outputs must sit under; "
        "empty: no restriction.",
    )
    secret_prefix: str | None = Field(
        None,
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Every environment variable the team's YAML reads ({env: NAME}) must "
        "start with this, e.g. PAYMENTS_.",
    )
    max_concurrent_runs: int = Field(
        3, ge=1, description="Dagster runs of the team's location at once (the run queue)."
    )
    kueue_queue: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The team's Kueue LocalQueue, for pools with kueue: true.",
    )
    ui_read_only: bool = Field(False, description="The team-scoped webserver is read-only.")

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        for name in value:
            _known(name, KNOWN_BACKENDS, "backend")
        return value

    @field_validator("registries")
    @classmethod
    def _known_registries(cls, value: list[str]) -> list[str]:
        for name in value:
            _known(name, KNOWN_REGISTRIES, "registry kind")
        return value

    @field_validator("gpu_quota")
    @classmethod
    def _positive_quota(cls, value: dict[str, int]) -> dict[str, int]:
        for pool, gpus in value.items():
            if gpus < 0:
                raise ValueError(f"the quota in pool {pool!r} is negative ({gpus})")
        return value

    @field_validator("storage_roots")
    @classmethod
    def _absolute_roots(cls, value: list[str]) -> list[str]:
        for root in value:
            if "://" not in root and not root.startswith("/"):
                raise ValueError(
                    f"storage root {root!r} is neither a URI (s3://bucket/prefix) nor an "
                    "absolute path"
                )
        return value


class PlatformPolicy(_Data):
    """GPU pools, and a grant per team; a team the policy does not list gets ``default``."""

    pools: dict[str, GpuPool] = Field(
        default_factory=dict, description="GPU pools by name, e.g. t4, a100-80gb."
    )
    teams: dict[str, TeamGrant] = Field(default_factory=dict, description="Grants by team.")
    default: TeamGrant = Field(
        default_factory=TeamGrant, description="The grant of a team not listed in 'teams'."
    )
    borrowing: bool = Field(
        False,
        description="A team may use other teams' idle quota in a pool, within the pool's capacity.",
    )
    source: SkipJsonSchema[str] = Field("", exclude=True)

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, GpuPool]) -> dict[str, GpuPool]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"pool name {name!r} must match {_NAME}")
        return value

    @field_validator("teams")
    @classmethod
    def _team_names(cls, value: dict[str, TeamGrant]) -> dict[str, TeamGrant]:
        for name in value:
            if not re.match(_TEAM, name):
                raise ValueError(f"team name {name!r} must match {_TEAM}")
        return value

    @model_validator(mode="after")
    def _quotas_fit_pools(self) -> PlatformPolicy:
        for team, grant in self._grants():
            for pool_name, gpus in grant.gpu_quota.items():
                pool = self.pools.get(pool_name)
                field = (*team, "gpu_quota", pool_name)
                if pool is None:
                    known = ", ".join(self.pools) or "none"
                    raise _PolicyFieldError(
                        field, f"no pool {pool_name!r} in 'pools' (pools: {known})"
                    )
                if pool.backend not in grant.backends:
                    raise _PolicyFieldError(
                        field,
                        f"pool {pool_name!r} is on backend {pool.backend!r}, which this grant's "
                        f"backends {grant.backends} do not include",
                    )
                if gpus > pool.gpus:
                    raise _PolicyFieldError(
                        field, f"{gpus} GPUs is more than the pool holds ({pool.gpus})"
                    )
        return self

    def _grants(self) -> Iterator[tuple[tuple[str, ...], TeamGrant]]:
        yield ("default",), self.default
        for name, grant in self.teams.items():
            yield ("teams", name), grant

    def grant(self, team: str) -> TeamGrant:
        """What ``team`` may use: its own entry, or the default grant."""
        return self.teams.get(team, self.default)

    def pool_for(self, backend: str, gpu_count: int, gpu_type: str | None) -> str | None:
        """The pool a job draws from: None for a CPU-only job or when no pool matches
        (a GPU job on a backend with pools but no match is an error at load).

        A pool of the job's exact GPU model wins over a pool of any model on the backend; among
        equals the first pool in the file wins.
        """
        if gpu_count <= 0:
            return None
        wanted = normalize_gpu_type(gpu_type) if gpu_type else None
        any_model: str | None = None
        for name, pool in self.pools.items():
            if pool.backend != backend:
                continue
            if pool.gpu_type is None:
                any_model = any_model or name
            elif wanted is not None and pool.gpu_type == wanted:
                return name
        return any_model

    def pools_on(self, backend: str) -> list[str]:
        """The pools of ``backend``, in file order."""
        return [name for name, pool in self.pools.items() if pool.backend == backend]


class _PolicyFieldError(ValueError):
    """A cross-field error of the policy, with its field path from the top of the file."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# --- Loading ----------------------------------------------------------------------------------

_cache: dict[tuple[str, int, int], PlatformPolicy] = {}
_cache_lock = threading.Lock()


def policy_path(path: str | Path | None = None) -> tuple[Path, bool]:
    """The policy file to read, and whether someone named it (an argument or the environment)
    rather than it being the platform location's default."""
    if path is not None and str(path):
        return Path(path), True
    named = os.environ.get(POLICY_ENV, "")
    if named:
        return Path(named), True
    return DEFAULT_POLICY_PATH, False


def load_policy(path: str | Path | None = None) -> PlatformPolicy:
    """The platform policy in ``path`` (default: ``$ML_ASSETS_POLICY``, else the platform
    location's ``platform.yaml``), read once per version of the file.

    No file at the default place means the built-in ``PlatformPolicy()``: every team local only.
    A file named explicitly that does not exist is an error rather than a silent fall-back, so a
    typo in ``ML_ASSETS_POLICY`` cannot quietly change what teams may use. A file that is not a
    valid policy raises ``PolicyError`` naming the file, the line and the field.
    """
    file, named = policy_path(path)
    try:
        stat = file.stat()
    except FileNotFoundError:
        if named:
            raise PolicyError(
                f"{file}: no such policy file"
                + (f" (named by {POLICY_ENV})" if path is None else "")
            ) from None
        return PlatformPolicy()
    except OSError as exc:
        raise PolicyError(f"{file}: cannot read the policy: {exc}") from None
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    policy = _read_policy(file)
    with _cache_lock:
        _cache[key] = policy
    return policy


def _read_policy(file: Path) -> PlatformPolicy:
    # The team files' loader and its limits (size, depth, aliases, duplicate keys, tags).
    from ml_assets.teams.spec import TeamSpecError, _describe, _joined, _plain, _read_yaml

    try:
        raw, root = _read_yaml(file, "policy")
    except TeamSpecError as exc:
        raise PolicyError(str(exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{file}: the policy must be a mapping with 'pools' and 'teams'")
    try:
        policy = PlatformPolicy.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            context_error = error.get("ctx", {}).get("error")
            if isinstance(context_error, _PolicyFieldError):
                loc, message = (*error["loc"], *context_error.loc), context_error.message
            else:
                loc, message = tuple(error["loc"]), _plain(error["msg"])
            problems.append(_describe(file, root, loc, message))
        raise PolicyError(_joined(problems)) from None
    return policy.model_copy(update={"source": str(file.resolve())})


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors (``ml-assets schema --policy``)."""
    schema = PlatformPolicy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ml_assets platform policy"
    return schema


# --- Checking a team against its grant --------------------------------------------------------


def check_team(policy: PlatformPolicy, team: TeamSpec) -> None:
    """Raise ``TeamSpecError`` when ``team`` asks for more than ``policy`` grants it.

    Every problem is listed, each naming the team's YAML (with the line of the field), the
    policy file and the field.
    """
    from ml_assets.teams.spec import TeamSpecError

    problems = [f"{_where(team, loc)}: {message}" for loc, message in _excess(policy, team)]
    if not problems:
        return
    policy_file = policy.source or "the built-in default policy (no policy file: local only)"
    grant = (
        f"teams.{team.team}"
        if team.team in policy.teams
        else f"default (team {team.team!r} is not listed under teams)"
    )
    raise TeamSpecError(
        "\n".join(f"{problem} [grant: {policy_file}: {grant}]" for problem in problems)
    )


def _where(team: TeamSpec, loc: tuple[str | int, ...]) -> str:
    from ml_assets.teams.spec import _describe, _read_yaml

    field = ".".join(str(part) for part in loc)
    source = team._source
    if source is None:
        return f"team {team.team!r} (not loaded from a file): {field}"
    try:
        _, root = _read_yaml(source)
    except Exception:  # the file changed since it loaded: the field alone still helps
        root = None
    return _describe(source, root, loc, "").removesuffix(": ")


def _excess(policy: PlatformPolicy, team: TeamSpec) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(field of the team's YAML, what is wrong) for each thing the team asks beyond its grant."""
    grant = policy.grant(team.team)
    for index, backend in enumerate(team.allowed_backends):
        if backend not in grant.backends:
            yield (
                ("allowed_backends", index),
                f"backend {backend!r} is not granted to team {team.team!r} by the platform "
                f"policy (granted: {', '.join(grant.backends) or 'none'})",
            )
    for name, model in team.models.items():
        if model.backend not in grant.backends:
            yield (
                ("models", name, "backend"),
                f"backend {model.backend!r} is not granted to team {team.team!r} "
                f"(granted: {', '.join(grant.backends) or 'none'})",
            )
        yield from _gpu_excess(policy, team.team, grant, name, model)
        if grant.cpu_quota is not None and model.resources.cpu > grant.cpu_quota:
            yield (
                ("models", name, "resources", "cpu"),
                f"{model.resources.cpu:g} CPU cores for one job, more than team {team.team!r}'s "
                f"CPU quota of {grant.cpu_quota:g}",
            )
    if team.registry.kind not in grant.registries:
        yield (
            ("registry", "kind"),
            f"registry kind {team.registry.kind!r} is not granted to team {team.team!r} "
            f"(granted: {', '.join(grant.registries) or 'none'})",
        )
    if grant.secret_prefix is not None:
        for loc, name in _env_names(team):
            if not name.startswith(grant.secret_prefix):
                yield (
                    loc,
                    f"environment variable {name!r} lacks team {team.team!r}'s secret prefix "
                    f"{grant.secret_prefix!r}: a team reads only its own secrets",
                )
    if grant.storage_roots:
        for loc, uri in _storage_uris(team):
            if not _under_any(uri, grant.storage_roots):
                yield (
                    loc,
                    f"{uri!r} is outside team {team.team!r}'s storage roots "
                    f"({', '.join(grant.storage_roots)})",
                )


def _gpu_excess(
    policy: PlatformPolicy, team: str, grant: TeamGrant, name: str, model: Any
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    resources = model.resources
    if resources.gpu_count <= 0:
        return
    loc = ("models", name, "resources", "gpu_count")
    pool = policy.pool_for(model.backend, resources.gpu_count, resources.gpu_type)
    if pool is None:
        on_backend = policy.pools_on(model.backend)
        if on_backend:
            kinds = ", ".join(f"{p} ({policy.pools[p].gpu_type or 'any GPU'})" for p in on_backend)
            yield (
                ("models", name, "resources", "gpu_type"),
                f"no GPU pool on backend {model.backend!r} holds "
                f"{resources.gpu_type or 'an unnamed GPU type'!s}; its pools: {kinds}",
            )
        return
    quota = grant.gpu_quota.get(pool, 0)
    capacity = policy.pools[pool].gpus
    if quota <= 0:
        yield (
            loc,
            f"{resources.gpu_count} GPU(s) from pool {pool!r}, in which team {team!r} has no "
            "GPU quota",
        )
    elif resources.gpu_count > quota and not policy.borrowing:
        yield (
            loc,
            f"{resources.gpu_count} GPUs at once, more than team {team!r}'s quota of {quota} in "
            f"pool {pool!r}: the job could never be admitted",
        )
    elif resources.gpu_count > capacity:
        yield (
            loc,
            f"{resources.gpu_count} GPUs at once, more than pool {pool!r} holds ({capacity}): "
            "the job could never be admitted",
        )


def _env_names(team: TeamSpec) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every ``{env: NAME}`` in the team's backend, registry and serving settings."""
    for section, data in (
        ("backends", team.backends),
        ("registry", team.registry.settings),
        ("serving", team.serving.model_dump(exclude_none=True)),
    ):
        yield from _walk_env(data, (section,))


def _walk_env(
    value: Any, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            yield (*loc, "env"), value["env"]
            return
        for key, item in value.items():
            yield from _walk_env(item, (*loc, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_env(item, (*loc, index))


# Settings that say where a team's data and artifacts are written.
_BACKEND_STORAGE_KEYS = ("storage_root",)
_REGISTRY_STORAGE_KEYS = ("storage_root", "root", "artifact_root", "dir")


def _storage_uris(team: TeamSpec) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Where the team's settings put its data and artifacts, literal values only (a value read
    from the environment is checked when its job runs, not here)."""
    for backend, settings in team.backends.items():
        for key, value in (settings or {}).items():
            if key in _BACKEND_STORAGE_KEYS and isinstance(value, str):
                yield ("backends", backend, key), value
    for key, value in team.registry.settings.items():
        if key in _REGISTRY_STORAGE_KEYS and isinstance(value, str):
            yield ("registry", key), value
    prefix = team.serving.kserve_storage_uri_prefix
    if prefix:
        yield ("serving", "kserve_storage_uri_prefix"), prefix


def _under_any(uri: str, roots: list[str]) -> bool:
    return any(_under(uri, root) for root in roots)


def _under(uri: str, root: str) -> bool:
    """Whether ``uri`` is ``root`` or inside it, by path segments (``s3://b/ab`` is not under
    ``s3://b/a``)."""
    uri, root = uri.rstrip("/"), root.rstrip("/")
    if "://" not in uri and "://" not in root:
        uri, root = os.path.normpath(uri), os.path.normpath(root)
    return uri == root or uri.startswith(root + "/")


def run_queue_limits(
    policy: PlatformPolicy, teams: list[str], key: str = TEAM_TAG
) -> list[dict[str, Any]]:
    """Dagster run-queue ``tag_concurrency_limits`` entries, one per team: at most the team's
    ``max_concurrent_runs`` runs tagged ``key=<team>`` run at once.

    With ``key="dagster/code_location"`` and location names as ``teams`` it is the limit per
    code location that the Helm values use; with the default key it fits dagster.yaml, where
    every run of a team carries the ``ml_assets/team`` tag.
    """
    return [
        {"key": key, "value": team, "limit": policy.grant(team).max_concurrent_runs}
        for team in teams
    ]
