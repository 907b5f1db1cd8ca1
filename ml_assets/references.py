"""``module:function`` references to a team's own code: checked when a location loads, imported
when they run.

A team names its dataset, feature, training, predict and metric functions in its YAML. The
location must load fast (Dagster re-imports it for every run and step) and must not pay for the
libraries a training function imports, so :func:`check_reference` finds the module without
executing it and reads its source for a top-level definition of the attribute. Only
:func:`resolve` imports, inside the step or job that calls the function.

Standard library only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

_REFERENCE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)


class BadReference(ValueError):
    """A ``module:function`` that does not name an existing function."""


def split_reference(reference: str) -> tuple[str, str]:
    """``("pkg.module", "function")`` from ``"pkg.module:function"``, or a ValueError."""
    if not isinstance(reference, str) or not _REFERENCE.match(reference):
        raise BadReference(f"{reference!r} is not a 'package.module:function' reference")
    module, _, attribute = reference.partition(":")
    return module, attribute


def check_reference(reference: str) -> str:
    """Raise a ValueError naming the module or the attribute unless ``reference`` exists.

    The module is located with ``importlib.util.find_spec`` (which imports its parent packages,
    never the module itself) and its source is parsed for a top-level ``def``, ``class``,
    assignment or import of the attribute. A module without Python source (an extension) is
    imported, since there is nothing to read.
    """
    module, attribute = split_reference(reference)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise BadReference(f"module {module!r} cannot be found: {exc}") from None
    if spec is None:
        raise BadReference(
            f"module {module!r} cannot be found (is its package installed, or on PYTHONPATH?)"
        )
    origin = spec.origin
    if origin and origin.endswith(".py"):
        names = _top_level_names(origin)
        if attribute not in names:
            raise BadReference(
                f"module {module!r} ({origin}) defines no {attribute!r} at top level"
            )
        return reference
    try:
        resolve(reference)
    except ImportError as exc:
        raise BadReference(f"module {module!r} cannot be imported: {exc}") from None
    return reference


@lru_cache(maxsize=256)
def _top_level_names(path: str) -> frozenset[str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise BadReference(f"{path} cannot be read as Python: {exc}") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def resolve(reference: str) -> Callable[..., Any]:
    """Import ``module`` and return its ``function``; errors name the module and attribute."""
    module_name, attribute = split_reference(reference)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"module {module_name!r} of {reference!r} cannot be imported: {exc}"
        ) from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise TypeError(f"{reference} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]
