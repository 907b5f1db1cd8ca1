"""The Databricks backend for the contract suite: databricks-sdk against ``FakeDatabricks``, whose
runs really execute the staged command and upload their output to the fake's DBFS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ml_assets_testing.fake_databricks import FakeDatabricks
from ml_assets_testing.harness import BackendHarness

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobSpec
from ml_assets.backends.databricks import DatabricksSettings

STORAGE_ROOT = "dbfs:/ml_assets/contract"
WHEEL = "/Volumes/main/ml_assets/wheels/ml_assets-0.1.0-py3-none-any.whl"


def databricks_spec(command: list[str], key: str, team: str = "contract") -> JobSpec:
    """A spec whose output location follows the asset layer's rule under ``STORAGE_ROOT``."""
    spec = JobSpec(
        team=team, model="databricks", command=command, output_uri="", idempotency_key=key
    )
    return spec.model_copy(update={"output_uri": remote.output_location(STORAGE_ROOT, spec)})


def point_sdk_at(fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make ``fake`` the only workspace databricks-sdk sees in this process (transport too).

    Every other ``DATABRICKS_*`` variable goes, and the config file is one that does not exist,
    so no ``~/.databrickscfg`` profile or stray credential mixes in.
    """
    for name in list(os.environ):
        if name.startswith("DATABRICKS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    for name, value in fake.client_env.items():
        monkeypatch.setenv(name, value)
    # transport keeps one DBFS client per process, bound to the workspace it first saw.
    monkeypatch.setattr(transport, "_cache", {})


def settings_for(fake: FakeDatabricks, **settings: Any) -> DatabricksSettings:
    """Backend settings that reach ``fake``, with the contract's storage root and wheel."""
    defaults: dict[str, Any] = {"storage_root": STORAGE_ROOT, "wheel": WHEEL, "sync_seconds": 0.5}
    return DatabricksSettings(**fake.backend_settings(**{**defaults, **settings}))


def compiled_job_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Job env that lets the fake's runs cache bytecode in this test session's temp dir.

    A cluster image ships compiled bytecode; without it (``PYTHONDONTWRITEBYTECODE`` set) every
    run would compile databricks-sdk afresh, twice the CPU of importing it.
    """
    prefix = tmp_path_factory.getbasetemp() / "databricks_job_pycache"
    return {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": ""}


@pytest.fixture
def databricks_harness(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BackendHarness]:
    """The Databricks backend; its runs are processes of a loopback fake with a DBFS of its own."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    job_env = compiled_job_env(tmp_path_factory)
    with FakeDatabricks(tmp_path / "databricks", job_env=job_env) as fake:
        point_sdk_at(fake, monkeypatch, tmp_path)
        settings = settings_for(fake)

        yield BackendHarness(
            name="databricks",
            backend=settings.get_backend(),
            new_backend=settings.get_backend,
            make_spec=databricks_spec,
            scratch=scratch,
        )
