"""Backend settings: plain pydantic models of what a team's ``backends:`` section may say.

Each backend declares its settings as a ``BackendSettings`` subclass; the class validates a
team's YAML when the spec loads (without Dagster or any SDK), documents the settings, and
builds the ``Backend`` (``get_backend``). A value written ``{env: NAME}`` is read from the
environment in one place, ``with_env_values``, only when a backend is built; while a spec is
validated it stands as an ``EnvRef``, the variable's name, so no value is read or shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ml_assets.backends.base import Backend, Resources
from ml_assets.backends.remote import RetryPolicy
from ml_assets.backends.shapes import MachineShape, smallest_fit


class UnknownSettings(ValueError):
    """Settings a backend does not take: ``names`` (sorted), with ``known``, the ones it takes."""

    def __init__(self, backend: str, names: list[str], known: list[str]) -> None:
        super().__init__(
            f"unknown settings for {backend}: {', '.join(names)}; it takes: " + ", ".join(known)
        )
        self.names = names
        self.known = known


class BackendSettings(BaseModel):
    """Settings of one compute backend. ``get_backend`` builds the ``Backend`` object.

    A setting the class does not declare is refused, whatever its value, naming the settings
    it takes.
    """

    model_config = ConfigDict(frozen=True)

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


class RemoteSettings(BackendSettings):
    """The settings every remote backend shares, under the same names everywhere.

    Every call to the service runs under one ``RetryPolicy`` built from ``max_attempts``,
    ``retry_backoff_seconds`` and ``retry_timeout_seconds``; ``request_timeout_seconds`` bounds
    one HTTP request. Durations end in ``_seconds`` in every backend's settings.
    """

    sync_seconds: float = Field(
        10.0, gt=0, description="How often a running staged job uploads its log and messages."
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one API call.")
    max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts per API call (the first included) on throttling, 5xx or "
        "a lost connection.",
    )
    retry_backoff_seconds: float = Field(
        0.5,
        ge=0,
        description="Wait before the second attempt; it doubles each time (30 s at most).",
    )
    retry_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest time one call is retried."
    )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_seconds=self.retry_backoff_seconds,
            timeout_seconds=self.retry_timeout_seconds,
        )


class MachineSettings(RemoteSettings):
    """Settings of a remote backend whose jobs run on machines from a table of shapes."""

    machine_types: dict[str, str] = Field(
        default_factory=dict,
        description="Machine overrides: 'cpu' or '<gpu_type>:<count>' -> the service's name for "
        "a machine type (instance or node type).",
    )
    default_gpu_type: str = Field("t4", description="GPU type of a job that names none.")

    def machine(
        self, table: tuple[MachineShape, ...], resources: Resources, where: str
    ) -> MachineShape:
        """The smallest shape of ``table`` for ``resources``, overrides first."""
        return smallest_fit(
            table,
            resources,
            where=where,
            overrides=self.machine_types,
            default_gpu_type=self.default_gpu_type,
        )


class LocalSettings(BackendSettings):
    """Jobs as detached processes on the machine that runs the Dagster step."""

    python_executable: str | None = None
    start_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a submitted job may show no runner before it fails."
    )
    cancel_grace_seconds: float = Field(
        5.0, ge=0, description="How long cancel waits after SIGTERM before SIGKILL."
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description="Variables of the submitting process that jobs get besides the basics "
        "(path, locale, Python, GPU); nothing else, no credentials, reaches a local job.",
    )

    def get_backend(self) -> Backend:
        from ml_assets.backends.local import LocalBackend

        return LocalBackend(
            python_executable=self.python_executable,
            start_timeout_seconds=self.start_timeout_seconds,
            cancel_grace_seconds=self.cancel_grace_seconds,
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


class EnvRef(str):
    """An ``{env: NAME}`` setting while a spec is validated: the variable's name, not its value."""


def with_env_refs(value: Any) -> Any:
    """Every ``{env: NAME}`` mapping in a YAML value replaced by ``EnvRef("NAME")``."""
    return _replace_env(value, lambda name, _where: EnvRef(name))


class MissingEnvironmentVariable(KeyError):
    """A setting written ``{env: NAME}`` whose variable is not set."""


class UnusableEnvironmentVariable(ValueError):
    """A setting written ``{env: NAME}`` whose value no client could send as it is."""


def with_env_values(value: Any, where: str = "") -> Any:
    """Every ``{env: NAME}`` in a YAML value replaced by the variable's value, read now.

    Building a backend this way needs no Dagster context; a missing variable is an error that
    names it and the setting. Surrounding whitespace is dropped, and a value with a control
    character left inside is refused, naming the variable and never showing the value.
    """

    def read(name: str, setting: str) -> str:
        if name not in os.environ:
            raise MissingEnvironmentVariable(
                f"setting {setting or '<root>'} reads environment variable {name}, which is not set"
            )
        # A secret put in the environment from a file (a mounted Secret, an env file) often
        # keeps the file's last newline. HTTP clients refuse such a header and quote it whole,
        # secret and all, in an error that the failed step would then record.
        value = os.environ[name].strip()
        if any(char < " " or char == "\x7f" for char in value):
            raise UnusableEnvironmentVariable(
                f"setting {setting or '<root>'} reads environment variable {name}, whose value "
                "holds a control character (a line break, a tab...); the value is not shown"
            )
        return value

    return _replace_env(value, read, where)
