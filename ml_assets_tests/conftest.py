"""Fixtures shared across the suite: an isolated ml_assets home and Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest


@pytest.fixture
def ml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ML_ASSETS_HOME for one test."""
    home = tmp_path / "ml_home"
    monkeypatch.setenv("ML_ASSETS_HOME", str(home))
    return home


@pytest.fixture
def instance(ml_home: Path) -> Iterator[dg.DagsterInstance]:
    """A real, temporary SQLite-backed Dagster instance."""
    with dg.instance_for_test() as test_instance:
        yield test_instance
