"""Name-to-class tables for pluggable parts (backends, registries), imported on first use."""

from __future__ import annotations

import importlib
from typing import Any


def plugin_class(table: dict[str, str], name: str, what: str) -> Any:
    """The class registered as ``table[name]`` (``"module:Class"``), imported only now."""
    try:
        target = table[name]
    except KeyError:
        choices = ", ".join(table)
        raise ValueError(f"unknown {what} {name!r}; choose one of: {choices}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_plugin(table: dict[str, str], name: str, what: str, **settings: Any) -> Any:
    """Instantiate ``table[name]`` with ``settings``; a location never pays for unused SDKs."""
    return plugin_class(table, name, what)(**settings)
