"""Name-to-class tables for pluggable parts (backends, registries), imported on first use."""

from __future__ import annotations

import importlib
from typing import Any


def load_plugin(table: dict[str, str], name: str, what: str, **settings: Any) -> Any:
    """Instantiate ``table[name]`` (``"module:Class"``) with ``settings``.

    The module is imported only now, so a location never pays for SDKs it does not use.
    """
    try:
        target = table[name]
    except KeyError:
        choices = ", ".join(table)
        raise ValueError(f"unknown {what} {name!r}; choose one of: {choices}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)(**settings)
