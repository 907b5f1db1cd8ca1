"""The server-side checks of an AWS JSON-protocol service, from botocore's own service model.

botocore validates a request client-side only for required members, types and minimum
lengths; the service itself also enforces each shape's ``pattern``, ``max``, ``enum`` and
numeric range. ``request_errors(service, action, body)`` walks the action's input shape in the
model (``botocore/data/<service>/<version>/service-2.json``) over a decoded request body and
returns AWS's own messages for every violation, e.g. ``Value 'a\\tb' at 'tags.1.member.value'
failed to satisfy constraint: Member must satisfy regular expression pattern:
^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$``. A member of the wrong JSON type raises
``SerializationError`` (the service's ``SerializationException``).

Patterns are Java regular expressions matched against the whole value; the ``regex`` module
reads their ``\\p{..}`` classes. Without it, ``\\p{L}``/``\\p{N}``/``\\p{Z}`` are approximated
with Python's Unicode classes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

MAX_REPORTED = 10


class SerializationError(ValueError):
    """A member whose JSON type does not fit its shape."""


@functools.cache
def service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


_SPACE_SEPARATORS = "\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _python_pattern(pattern: str) -> str:
    """A Java pattern for Python's ``re`` (only when the ``regex`` module is missing)."""
    return (
        pattern.replace(r"\p{L}", r"\w")
        .replace(r"\p{N}", r"\d")
        .replace(r"\p{Z}", _SPACE_SEPARATORS)
    )


@functools.cache
def _matcher(pattern: str) -> Callable[[str], bool] | None:
    try:
        import regex

        compiled = regex.compile(pattern)
        return lambda value: compiled.fullmatch(value) is not None
    except ImportError:
        try:
            fallback = re.compile(_python_pattern(pattern))
        except re.error:
            return None
        return lambda value: fallback.fullmatch(value) is not None
    except Exception:  # a pattern neither engine reads constrains nothing here
        return None


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list | dict):
        return "'[...]'" if isinstance(value, list) else "'{...}'"
    return f"'{value}'"


def _anchored(pattern: str) -> str:
    return pattern if pattern.startswith("^") else f"^{pattern}$"


class _Walker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, value: Any, path: str, constraint: str) -> None:
        self.errors.append(
            f"Value {_show(value)} at '{path}' failed to satisfy constraint: {constraint}"
        )

    def walk(self, shape: Any, value: Any, path: str) -> None:
        kind = shape.type_name
        if value is None:
            return
        if kind == "structure":
            if not isinstance(value, dict):
                raise SerializationError(
                    f"Start of structure or map expected at '{path or 'request'}'"
                )
            for name in shape.required_members:
                if value.get(name) is None:
                    here = f"{path}.{_camel(name)}" if path else _camel(name)
                    self.errors.append(
                        f"Value null at '{here}' failed to satisfy constraint: Member must not "
                        "be null"
                    )
            for name, member in shape.members.items():
                if name in value:
                    here = f"{path}.{_camel(name)}" if path else _camel(name)
                    self.walk(member, value[name], here)
            return
        metadata = shape.metadata
        if kind == "list":
            if not isinstance(value, list):
                raise SerializationError(f"Start of list expected at '{path}'")
            self._length(value, path, metadata)
            for index, item in enumerate(value, start=1):
                self.walk(shape.member, item, f"{path}.{index}.member")
            return
        if kind == "map":
            if not isinstance(value, dict):
                raise SerializationError(f"Start of map expected at '{path}'")
            self._length(value, path, metadata)
            for key, item in value.items():
                self._string(shape.key, key, path, "Map keys must satisfy constraint: ")
                if shape.value.type_name == "string" and isinstance(item, str):
                    self._string(shape.value, item, path, "Map value must satisfy constraint: ")
                else:
                    self.walk(shape.value, item, path)
            return
        if kind == "string":
            if not isinstance(value, str):
                raise SerializationError(f"Expected a string at '{path}'")
            self._string(shape, value, path, "")
            return
        if kind in ("integer", "long", "float", "double"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SerializationError(f"Expected a number at '{path}'")
            if "min" in metadata and value < metadata["min"]:
                self.fail(
                    value,
                    path,
                    f"Member must have value greater than or equal to {metadata['min']}",
                )
            if "max" in metadata and value > metadata["max"]:
                self.fail(
                    value, path, f"Member must have value less than or equal to {metadata['max']}"
                )
            return
        if kind == "boolean" and not isinstance(value, bool):
            raise SerializationError(f"Expected a boolean at '{path}'")

    def _length(self, value: Any, path: str, metadata: dict[str, Any]) -> None:
        if "min" in metadata and len(value) < metadata["min"]:
            self.fail(
                value, path, f"Member must have length greater than or equal to {metadata['min']}"
            )
        if "max" in metadata and len(value) > metadata["max"]:
            self.fail(
                value, path, f"Member must have length less than or equal to {metadata['max']}"
            )

    def _string(self, shape: Any, value: str, path: str, prefix: str) -> None:
        metadata = shape.metadata
        if "min" in metadata and len(value) < metadata["min"]:
            self.fail(
                value,
                path,
                f"{prefix}Member must have length greater than or equal to {metadata['min']}",
            )
        if "max" in metadata and len(value) > metadata["max"]:
            self.fail(
                value,
                path,
                f"{prefix}Member must have length less than or equal to {metadata['max']}",
            )
        pattern = metadata.get("pattern")
        matcher = _matcher(pattern) if pattern else None
        if matcher is not None and not matcher(value):
            self.fail(
                value,
                path,
                f"{prefix}Member must satisfy regular expression pattern: {_anchored(pattern)}",
            )
        enum = getattr(shape, "enum", None)
        if enum and value not in enum:
            self.fail(
                value, path, f"{prefix}Member must satisfy enum value set: [{', '.join(enum)}]"
            )


def request_errors(service: str, action: str, body: Any) -> list[str]:
    """Every constraint of the ``action`` input shape that ``body`` breaks (empty if none, or
    if the model has no such action). Raises ``SerializationError`` for a mistyped member."""
    model = service_model(service)
    if action not in model.operation_names:
        return []
    shape = model.operation_model(action).input_shape
    if shape is None:
        return []
    walker = _Walker()
    walker.walk(shape, body, "")
    return walker.errors


def validation_message(errors: list[str]) -> str:
    """AWS's ``ValidationException`` message for ``errors``."""
    shown = errors[:MAX_REPORTED]
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} validation {noun} detected: " + "; ".join(shown)
