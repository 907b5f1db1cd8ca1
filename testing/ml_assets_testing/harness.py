"""The harness the shared backend contract suite drives each backend through."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_assets.backends.base import Backend, JobSpec


@dataclass
class BackendHarness:
    """One backend under test, plus what the contract tests need to drive it.

    Attributes:
        name: short label shown in test ids.
        backend: the backend object the tests submit through.
        new_backend: builds a fresh, independent backend object (as a restarted process
            would), to show a job can be re-attached from its handle alone.
        make_spec: ``(command, key) -> JobSpec`` with an output location this backend can use,
            which the test reads and its jobs (staged or not) write through
            ``ml_assets.transport``.
        scratch: a local directory that both jobs and the test can read and write.
    """

    name: str
    backend: Backend
    new_backend: Callable[[], Backend]
    make_spec: Callable[[list[str], str], JobSpec]
    scratch: Path


def adopt_fixtures(
    namespace: dict[str, Any], directory: Path, prefix: str, suffix: str
) -> list[str]:
    """Import each ``<prefix>*.py`` in ``directory``; bind its fixtures named ``*<suffix>`` into
    ``namespace`` (a conftest's ``globals()``), which makes them fixtures of that directory.

    Only names the module defines count, not ones it imports. Returns the names adopted.
    """
    names = []
    for path in sorted(directory.glob(f"{prefix}*.py")):
        spec = importlib.util.spec_from_file_location(f"_ml_assets_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        for name, value in vars(module).items():
            if name.endswith(suffix) and getattr(value, "__module__", None) == module.__name__:
                namespace[name] = value
                names.append(name)
    return names
