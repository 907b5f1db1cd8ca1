"""Backends as Dagster resources: typed settings from a team's YAML, secrets only via EnvVar.

A team's ``backends:`` section holds one mapping per backend; each is validated by that
backend's ``BackendResource`` subclass when the location loads, and a value written as
``{env: NAME}`` becomes ``dg.EnvVar("NAME")``, read from the environment only when the backend
is built, so it never appears in the YAML, the UI or metadata.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field, model_validator

from ml_assets.backends.base import Backend


class UnknownSettings(ValueError):
    """Settings a backend does not take: ``names`` (sorted), with ``known``, the ones it takes."""

    def __init__(self, backend: str, names: list[str], known: list[str]) -> None:
        super().__init__(
            f"unknown settings for {backend}: {', '.join(names)}; it takes: " + ", ".join(known)
        )
        self.names = names
        self.known = known


class BackendResource(dg.ConfigurableResource):
    """Settings of one compute backend. ``get_backend`` builds the ``Backend`` object.

    A setting the class does not declare is refused when the resource is built, whatever its
    value: a Dagster resource would otherwise ignore a misspelt scalar (the backend then runs
    with the default) and fail on a list or mapping with a dump of its config type.
    """

    @classmethod
    def setting_names(cls) -> list[str]:
        """The settings the backend takes, in the order the class declares them."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.setting_names()
            unknown = sorted(str(key) for key in data if key not in known)
            if unknown:
                raise UnknownSettings(cls.__name__, unknown, known)
        return data

    def get_backend(self) -> Backend:
        raise NotImplementedError


class LocalBackendResource(BackendResource):
    """Jobs as detached processes on the machine that runs the Dagster step."""

    python_executable: str | None = None
    start_timeout_s: float = 10.0
    cancel_grace_s: float = 5.0
    pass_env: list[str] = Field(
        default_factory=list,
        description="Variables of the submitting process that jobs get besides the basics "
        "(path, locale, Python, GPU); nothing else, no credentials, reaches a local job.",
    )

    def get_backend(self) -> Backend:
        from ml_assets.backends.local import LocalBackend

        return LocalBackend(
            python_executable=self.python_executable,
            start_timeout_s=self.start_timeout_s,
            cancel_grace_s=self.cancel_grace_s,
            pass_env=self.pass_env,
        )


def _replace_env(value: Any, replace: Callable[[str, str], Any], where: str = "") -> Any:
    """``value`` with every ``{env: NAME}`` mapping in it replaced by ``replace(NAME, where)``,
    ``where`` being the dotted path of the setting."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return replace(value["env"], where)
        return {
            key: _replace_env(item, replace, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_replace_env(item, replace, where) for item in value]
    return value


def with_env_vars(value: Any) -> Any:
    """Turn every ``{env: NAME}`` mapping in a YAML value into ``dg.EnvVar("NAME")``."""
    return _replace_env(value, lambda name, _where: dg.EnvVar(name))


class MissingEnvironmentVariable(KeyError):
    """A setting written ``{env: NAME}`` whose variable is not set."""


def with_env_values(value: Any, where: str = "") -> Any:
    """Every ``{env: NAME}`` in a YAML value replaced by the variable's value, read now.

    Building a backend this way needs no Dagster context; a missing variable is an error that
    names it and the setting.
    """

    def read(name: str, setting: str) -> str:
        if name not in os.environ:
            raise MissingEnvironmentVariable(
                f"setting {setting or '<root>'} reads environment variable {name}, which is not set"
            )
        return os.environ[name]

    return _replace_env(value, read, where)
