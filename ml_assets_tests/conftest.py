"""Fixtures shared across the suite: an isolated ml_assets home and Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest


@pytest.fixture
def ml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ML_ASSETS_HOME for one test; local jobs still running afterwards are cancelled,
    so a failing test leaves no detached process behind."""
    home = tmp_path / "ml_home"
    monkeypatch.setenv("ML_ASSETS_HOME", str(home))
    yield home
    from ml_assets.backends.base import JobHandle
    from ml_assets.backends.local import LocalBackend

    backend = LocalBackend()
    for recorded in home.glob("jobs/*/*/*/handle.json"):
        backend.cancel(JobHandle.model_validate_json(recorded.read_text()))


@pytest.fixture
def sqlite_instance(ml_home: Path) -> Iterator[dg.DagsterInstance]:
    """A real, temporary SQLite-backed Dagster instance."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def instance(sqlite_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The instance most tests use: SQLite, as in `dagster dev`."""
    return sqlite_instance


POSTGRES = {"hostname": "127.0.0.1", "port": 5432, "username": "postgres", "password": ""}


def _postgres_admin():  # type: ignore[no-untyped-def]
    import psycopg2

    connection = psycopg2.connect(
        host=POSTGRES["hostname"],
        port=POSTGRES["port"],
        user=POSTGRES["username"],
        dbname="test",
        connect_timeout=3,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """The name of a fresh database on the local PostgreSQL server, dropped afterwards.

    Skipped with the reason when no server answers, except on CI, where it must run.
    """
    import os
    import uuid

    try:
        admin = _postgres_admin()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    name = f"ml_assets_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_instance(ml_home: Path, postgres_database: str) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance on a fresh database of the local PostgreSQL server (dagster-postgres).

    Skipped with the reason when no server answers, except on CI, where it must run.
    """
    storage = {"postgres": {"postgres_db": {**POSTGRES, "db_name": postgres_database}}}
    with dg.instance_for_test(overrides={"storage": storage}) as test_instance:
        yield test_instance


EVERY_BACKEND = ["local", "kubernetes", "sagemaker", "vertex", "databricks"]
EVERY_REGISTRY = ["local", "mlflow", "wandb", "sagemaker"]


def write_policy(path: Path, policy: dict[str, object]) -> Path:
    """Write the platform policy ``policy`` (the YAML document as a dict) to ``path``."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture
def permissive_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A platform policy, in ``ML_ASSETS_POLICY``, that grants every team every backend and
    registry kind with no GPU pools: for tests of a backend or registry, not of the policy."""
    path = write_policy(
        tmp_path / "policy" / "platform.yaml",
        {"default": {"backends": EVERY_BACKEND, "registries": EVERY_REGISTRY}},
    )
    monkeypatch.setenv("ML_ASSETS_POLICY", str(path))
    return path
