"""What a Kubernetes API server checks in a ``batch/v1`` Job before it stores it.

Written from the Kubernetes API reference and its documented object syntax, not from any client:

* decoding (``400 BadRequest``): the body must be a JSON object; a field of the wrong JSON type
  cannot be decoded; a resource quantity must follow the quantity grammar
  (``resource.Quantity``: ``<signedNumber><suffix>``, suffixes ``Ki Mi Gi Ti Pi Ei``, ``m k M G
  T P E`` or an ``e``/``E`` exponent). Unknown and duplicate fields are handled per the request's
  ``fieldValidation``: ``Strict`` fails the request, ``Warn`` (the default since 1.23) drops them
  with a ``Warning`` header, ``Ignore`` drops them silently. The schema is the one the official
  client's model classes carry (``openapi_types``/``attribute_map``, generated from the
  server's own OpenAPI document).
* validation (``422 Invalid``, one cause per problem): object names (a Job's name is a DNS-1123
  subdomain, and at most 63 characters because it becomes the ``job-name`` label of its pods),
  label keys and values, annotation keys, container names, images, env var names, volume and
  mount names, image pull and termination message policies, a Job's restart policy (``Never`` or
  ``OnFailure``), non-negative counts, ``spec.selector`` only with ``manualSelector``, node
  selectors, tolerations (key syntax, ``Exists`` with no value, an empty key only with
  ``Exists``, ``tolerationSeconds`` only with ``NoExecute``, known operators and effects) and
  container resources (standard or domain-qualified names, no negative amounts, requests at
  most the limits, extended resources such as ``nvidia.com/gpu`` whole, limited and with
  requests equal to limits).

Messages follow the API server's ``field.Error`` wording, e.g. ``spec.template.spec.tolerations[0].
operator: Invalid value: ...: value must be empty when `operator` is 'Exists'``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# -- object syntax ------------------------------------------------------------------------------

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63
ANNOTATIONS_MAX_BYTES = 256 * 1024

_DNS1123_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_QUALIFIED_NAME_FMT = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = rf"({_QUALIFIED_NAME_FMT})?"
_ENV_VAR_NAME_FMT = r"[-._a-zA-Z][-._a-zA-Z0-9]*"

_DNS1123_LABEL = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)
_QUALIFIED_NAME = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE = re.compile(_LABEL_VALUE_FMT)
_ENV_VAR_NAME = re.compile(_ENV_VAR_NAME_FMT)

# The quantity grammar of resource.Quantity, and the looser expression its parser reports.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(\d+(\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?"
)
QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Decimal | int] = {"m": Decimal("0.001"), "k": 10**3, "M": 10**6}
_DECIMAL |= {"G": 10**9, "T": 10**12}
_DECIMAL |= {"P": 10**15, "E": 10**18}

TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
JOB_RESTART_POLICIES = ("OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
_STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
# Resources the scheduler may overcommit; every other (extended) resource is counted whole.
_OVERCOMMITTABLE = ("cpu", "memory", "ephemeral-storage")


def dns1123_label_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.fullmatch(value):
        problems.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
            "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
            f"'123-abc', regex used for validation is '{_DNS1123_LABEL_FMT}')"
        )
    return problems


def dns1123_subdomain_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            f"'example.com', regex used for validation is '{_DNS1123_SUBDOMAIN_FMT}')"
        )
    return problems


def qualified_name_problems(value: str) -> list[str]:
    """A label key or annotation key: ``[prefix/]name`` (prefix a DNS subdomain)."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
        problems: list[str] = []
    elif len(parts) == 2:
        prefix, name = parts
        problems = (
            ["prefix part must be non-empty"]
            if not prefix
            else [f"prefix part {p}" for p in dns1123_subdomain_problems(prefix)]
        )
    else:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
            f"'123-abc', regex used for validation is '{_QUALIFIED_NAME_FMT}') with an optional "
            "DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        return [*problems, "name part must be non-empty"]
    if len(name) > QUALIFIED_NAME_MAX:
        problems.append(f"name part must be no more than {QUALIFIED_NAME_MAX} characters")
    if not _QUALIFIED_NAME.fullmatch(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
            f"'123-abc', regex used for validation is '{_QUALIFIED_NAME_FMT}')"
        )
    return problems


def label_value_problems(value: str) -> list[str]:
    problems = []
    if len(value) > LABEL_VALUE_MAX:
        problems.append(f"must be no more than {LABEL_VALUE_MAX} characters")
    if not _LABEL_VALUE.fullmatch(value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', "
            "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  "
            f"or 'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE_FMT}')"
        )
    return problems


def parse_quantity(raw: Any) -> Decimal:
    """The value of a resource quantity (a JSON string or number); ``ValueError`` if malformed."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(QUANTITY_MESSAGE)
    text = raw if isinstance(raw, str) else repr(raw)
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise ValueError(QUANTITY_MESSAGE)
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise ValueError(QUANTITY_MESSAGE) from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * Decimal(_DECIMAL[suffix])
    if suffix:
        return number.scaleb(int(suffix[1:]))
    return number


# -- errors -------------------------------------------------------------------------------------


def _go_repr(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FieldError:
    """One validation error, worded as the API server's ``field.Error``."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    field: str
    detail: str = ""
    value: Any = None

    def __str__(self) -> str:
        if self.reason == "FieldValueRequired":
            return f"{self.field}: Required value" + (f": {self.detail}" if self.detail else "")
        if self.reason == "FieldValueNotSupported":
            return f"{self.field}: Unsupported value: {_go_repr(self.value)}: {self.detail}"
        if self.reason == "FieldValueDuplicate":
            return f"{self.field}: Duplicate value: {_go_repr(self.value)}"
        if self.reason == "FieldValueNotFound":
            return f"{self.field}: Not found: {_go_repr(self.value)}"
        if self.reason == "FieldValueTooLong":
            return f"{self.field}: Too long: {self.detail}"
        if self.reason == "FieldValueForbidden":
            return f"{self.field}: Forbidden: {self.detail}"
        return f"{self.field}: Invalid value: {_go_repr(self.value)}: {self.detail}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": str(self), "field": self.field}


def _invalid(field: str, value: Any, problems: list[str]) -> list[FieldError]:
    return [FieldError("FieldValueInvalid", field, "; ".join(problems), value)] if problems else []


def _not_supported(field: str, value: Any, allowed: tuple[str, ...]) -> FieldError:
    supported = ", ".join(json.dumps(item) for item in allowed)
    return FieldError("FieldValueNotSupported", field, f"supported values: {supported}", value)


def _required(field: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field, detail)


# -- decoding: schema, unknown fields, types, quantities ----------------------------------------


class DecodeError(ValueError):
    """The body cannot be decoded into the kind (the API server's 400 BadRequest)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded object: the body without unknown fields, and what was dropped."""

    body: dict[str, Any]
    unknown: list[str]
    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    seen: set[str] = set()
    dupes: list[str] = []
    for key, value in pairs:
        if key in seen:
            dupes.append(key)
        seen.add(key)
        result[key] = value
    if dupes:
        result["\0duplicates"] = dupes
    return result


def load_json(raw: bytes) -> Any:
    """JSON with each object's duplicate keys recorded (under a key no real field can have)."""
    return json.loads(raw, object_pairs_hook=_pairs_hook)


@functools.cache
def _models() -> Any:
    # The official client's models carry the server's schema; loading them takes a second or
    # two, so only the first request that needs them pays.
    from kubernetes.client import models

    return models


_LIST = re.compile(r"list\[(?P<item>.+)\]")
_DICT = re.compile(r"dict\[str, (?P<value>.+)\]")
_QUANTITY_MAPS = {"limits", "requests", "overhead"}


def _type_name(kind: str) -> str:
    return {"int": "int32", "str": "string", "bool": "bool", "float": "float64"}.get(kind, kind)


def _decode(
    value: Any,
    kind: str,
    path: str,
    go_struct: str,
    unknown: list[str],
    duplicates: list[str],
) -> Any:
    """``value`` checked against the client model type ``kind``; unknown fields dropped."""
    if value is None:
        return None
    if kind == "object" or (kind == "datetime" and isinstance(value, str)):
        return value
    wrong = None
    if kind in ("str", "datetime"):
        wrong = not isinstance(value, str)
    elif kind == "int":
        wrong = isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
    elif kind == "float":
        wrong = isinstance(value, bool) or not isinstance(value, int | float)
    elif kind == "bool":
        wrong = not isinstance(value, bool)
    if wrong is not None:
        if wrong:
            raise DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{go_struct}.{path} of type {_type_name(kind)}"
            )
        return value
    list_match = _LIST.fullmatch(kind)
    if list_match:
        if not isinstance(value, list):
            raise DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{go_struct}.{path} of type []{list_match['item']}"
            )
        return [
            _decode(item, list_match["item"], f"{path}[{index}]", go_struct, unknown, duplicates)
            for index, item in enumerate(value)
        ]
    dict_match = _DICT.fullmatch(kind)
    if dict_match:
        if not isinstance(value, dict):
            raise DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{go_struct}.{path} of type map[string]{dict_match['value']}"
            )
        value = dict(value)
        for key in value.pop("\0duplicates", []):
            duplicates.append(f"{path}.{key}")
        leaf = path.rpartition(".")[2]
        if leaf in _QUANTITY_MAPS:
            for name, amount in value.items():
                try:
                    parse_quantity(amount)
                except ValueError as error:
                    raise DecodeError(str(error)) from None
                if not isinstance(amount, str):
                    value[name] = str(amount)
            return value
        return {
            key: _decode(
                item, dict_match["value"], f"{path}[{key}]", go_struct, unknown, duplicates
            )
            for key, item in value.items()
        }
    model = getattr(_models(), kind, None)
    if model is None:
        return value
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
            f"{go_struct}.{path} of type {kind}"
        )
    json_names = {json_name: attr for attr, json_name in model.attribute_map.items()}
    decoded: dict[str, Any] = {}
    for key in value.get("\0duplicates", []):
        duplicates.append(f"{path}.{key}" if path else key)
    for key, item in value.items():
        if key == "\0duplicates":
            continue
        child = f"{path}.{key}" if path else key
        attr = json_names.get(key)
        if attr is None:
            unknown.append(child)
            continue
        decoded[key] = _decode(
            item, model.openapi_types[attr], child, go_struct, unknown, duplicates
        )
    return decoded


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def decode(body: Any, model: str, kind: str) -> Decoded:
    """Decode ``body`` as the client model ``model`` (e.g. ``"V1Job"``) of kind ``kind``.

    Raises ``DecodeError`` (the API server's 400) for a body of the wrong shape or type and for
    a malformed quantity.
    """
    if not isinstance(body, dict):
        raise DecodeError(f"json: cannot unmarshal {_json_kind(body)} into Go value of type {kind}")
    unknown: list[str] = []
    duplicates: list[str] = []
    try:
        decoded = _decode(body, model, "", kind, unknown, duplicates)
    except DecodeError as error:
        raise DecodeError(
            f'{kind} in version "v1" cannot be handled as a {kind}: {error}'
        ) from None
    return Decoded(decoded, unknown, duplicates)


# -- validation ---------------------------------------------------------------------------------


def _labels(labels: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (labels or {}).items():
        errors += _invalid(path, key, qualified_name_problems(str(key)))
        errors += _invalid(path, value, label_value_problems(str(value)))
    return errors


def _annotations(annotations: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    total = 0
    for key, value in (annotations or {}).items():
        errors += _invalid(path, key, qualified_name_problems(str(key).lower()))
        total += len(str(key)) + len(str(value))
    if total > ANNOTATIONS_MAX_BYTES:
        errors.append(
            FieldError(
                "FieldValueTooLong",
                path,
                f"may not be more than {ANNOTATIONS_MAX_BYTES} bytes",
                "",
            )
        )
    return errors


def object_meta_errors(
    metadata: dict[str, Any], *, name_rule: str = "subdomain"
) -> list[FieldError]:
    errors: list[FieldError] = []
    name = metadata.get("name") or ""
    if not name and not metadata.get("generateName"):
        errors.append(_required("metadata.name", "name or generateName is required"))
    elif name:
        check = dns1123_label_problems if name_rule == "label" else dns1123_subdomain_problems
        errors += _invalid("metadata.name", name, check(name))
    errors += _labels(metadata.get("labels"), "metadata.labels")
    errors += _annotations(metadata.get("annotations"), "metadata.annotations")
    return errors


def toleration_errors(tolerations: list[dict[str, Any]], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, toleration in enumerate(tolerations):
        here = f"{path}[{index}]"
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or ""
        value = toleration.get("value") or ""
        effect = toleration.get("effect") or ""
        if key:
            errors += _invalid(f"{here}.key", key, qualified_name_problems(key))
        elif operator != "Exists":
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    f"{here}.operator",
                    'operator must be Exists when `key` is empty, which means "match all values '
                    'and all keys"',
                    operator,
                )
            )
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    f"{here}.effect",
                    "effect must be 'NoExecute' when `tolerationSeconds` is set",
                    effect,
                )
            )
        if operator in ("Equal", ""):
            errors += _invalid(f"{here}.operator", value, label_value_problems(value))
        elif operator == "Exists":
            if value:
                errors.append(
                    FieldError(
                        "FieldValueInvalid",
                        f"{here}.operator",
                        "value must be empty when `operator` is 'Exists'",
                        toleration,
                    )
                )
        else:
            errors.append(_not_supported(f"{here}.operator", operator, TOLERATION_OPERATORS))
        if effect and effect not in TAINT_EFFECTS:
            errors.append(_not_supported(f"{here}.effect", effect, TAINT_EFFECTS))
    return errors


def _resource_name_errors(name: str, path: str) -> list[FieldError]:
    if name in _STANDARD_CONTAINER_RESOURCES or name.startswith("hugepages-"):
        return []
    problems = qualified_name_problems(name)
    if problems:
        return _invalid(path, name, problems)
    if "/" not in name:
        return _invalid(path, name, ["must be a standard resource for containers"])
    if name.split("/")[0].endswith("kubernetes.io"):
        return _invalid(path, name, ["must be a standard resource type or fully qualified"])
    return []


def _format_quantity(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


def resource_errors(resources: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    limits = {k: parse_quantity(v) for k, v in (resources.get("limits") or {}).items()}
    requests = {k: parse_quantity(v) for k, v in (resources.get("requests") or {}).items()}
    for section, amounts in (("limits", limits), ("requests", requests)):
        for name, amount in amounts.items():
            here = f"{path}.{section}[{name}]"
            errors += _resource_name_errors(name, here)
            raw = (resources.get(section) or {})[name]
            if amount < 0:
                errors += _invalid(here, raw, ["must be greater than or equal to 0"])
            whole = name in _OVERCOMMITTABLE or name.startswith("hugepages-")
            if not whole and amount != amount.to_integral_value():
                errors += _invalid(here, raw, ["must be an integer"])
    for name, requested in requests.items():
        limit = limits.get(name)
        overcommittable = name in _OVERCOMMITTABLE
        raw = (resources.get("requests") or {})[name]
        if limit is None:
            if not overcommittable and not name.startswith("hugepages-"):
                errors.append(
                    _required(
                        f"{path}.limits", "Limit must be set for non overcommitable resources"
                    )
                )
            continue
        if overcommittable and requested > limit:
            limit_raw = (resources.get("limits") or {})[name]
            errors += _invalid(
                f"{path}.requests",
                raw,
                [f"must be less than or equal to {name} limit of {limit_raw}"],
            )
        elif not overcommittable and requested != limit:
            limit_raw = (resources.get("limits") or {})[name]
            errors += _invalid(
                f"{path}.requests[{name}]",
                raw,
                [f"must be equal to {name} limit of {limit_raw}"],
            )
    return errors


def _container_errors(
    container: dict[str, Any], path: str, volumes: set[str], names: set[str]
) -> list[FieldError]:
    errors: list[FieldError] = []
    name = container.get("name") or ""
    if not name:
        errors.append(_required(f"{path}.name"))
    else:
        errors += _invalid(f"{path}.name", name, dns1123_label_problems(name))
        if name in names:
            errors.append(FieldError("FieldValueDuplicate", f"{path}.name", value=name))
        names.add(name)
    if not (container.get("image") or "").strip():
        errors.append(_required(f"{path}.image"))
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        errors.append(_not_supported(f"{path}.imagePullPolicy", policy, PULL_POLICIES))
    message_policy = container.get("terminationMessagePolicy")
    if message_policy is not None and message_policy not in TERMINATION_MESSAGE_POLICIES:
        errors.append(
            _not_supported(
                f"{path}.terminationMessagePolicy", message_policy, TERMINATION_MESSAGE_POLICIES
            )
        )
    for index, variable in enumerate(container.get("env") or []):
        here = f"{path}.env[{index}].name"
        env_name = variable.get("name") or ""
        if not env_name:
            errors.append(_required(here))
        elif not _ENV_VAR_NAME.fullmatch(env_name):
            errors += _invalid(
                here,
                env_name,
                [
                    "a valid environment variable name must consist of alphabetic characters, "
                    "digits, '_', '-', or '.', and must not start with a digit (e.g. "
                    "'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for "
                    f"validation is '{_ENV_VAR_NAME_FMT}')"
                ],
            )
    for index, mount in enumerate(container.get("volumeMounts") or []):
        here = f"{path}.volumeMounts[{index}]"
        mount_name = mount.get("name") or ""
        if not mount_name:
            errors.append(_required(f"{here}.name"))
        elif mount_name not in volumes:
            errors.append(FieldError("FieldValueNotFound", f"{here}.name", value=mount_name))
        if not mount.get("mountPath"):
            errors.append(_required(f"{here}.mountPath"))
    errors += resource_errors(container.get("resources") or {}, f"{path}.resources")
    return errors


def pod_spec_errors(spec: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        here = f"{path}.volumes[{index}].name"
        volume_name = volume.get("name") or ""
        if not volume_name:
            errors.append(_required(here))
            continue
        errors += _invalid(here, volume_name, dns1123_label_problems(volume_name))
        if volume_name in volumes:
            errors.append(FieldError("FieldValueDuplicate", here, value=volume_name))
        volumes.add(volume_name)
        sources = [key for key, source in volume.items() if key != "name" and source is not None]
        if len(sources) != 1:
            errors.append(
                FieldError(
                    "FieldValueForbidden" if sources else "FieldValueRequired",
                    f"{path}.volumes[{index}]",
                    "may not specify more than 1 volume type"
                    if sources
                    else "must specify a volume type",
                )
            )
    containers = spec.get("containers") or []
    if not containers:
        errors.append(_required(f"{path}.containers"))
    names: set[str] = set()
    for index, container in enumerate(containers):
        errors += _container_errors(container, f"{path}.containers[{index}]", volumes, names)
    for key, value in (spec.get("nodeSelector") or {}).items():
        errors += _invalid(f"{path}.nodeSelector", key, qualified_name_problems(key))
        errors += _invalid(f"{path}.nodeSelector", value, label_value_problems(value))
    errors += toleration_errors(spec.get("tolerations") or [], f"{path}.tolerations")
    account = spec.get("serviceAccountName")
    if account:
        errors += _invalid(
            f"{path}.serviceAccountName", account, dns1123_subdomain_problems(account)
        )
    return errors


def job_errors(job: dict[str, Any], *, update: bool = False) -> list[FieldError]:
    """Every validation error of a decoded ``batch/v1`` Job (after name generation); with
    ``update``, of a stored Job after a change (its selector is the server's own then)."""
    metadata = job.get("metadata") or {}
    errors = object_meta_errors(metadata)
    name = metadata.get("name") or ""
    # The name becomes the job-name label of the Job's pods, so it must be a label value too.
    if name and len(name) > LABEL_VALUE_MAX:
        errors += _invalid(
            "spec.template.labels",
            name,
            [f"must be no more than {LABEL_VALUE_MAX} characters"],
        )
    spec = job.get("spec") or {}
    if not spec:
        return [*errors, _required("spec.template")]
    for count in ("parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"):
        if (spec.get(count) or 0) < 0:
            errors += _invalid(f"spec.{count}", spec[count], ["must be greater than or equal to 0"])
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline <= 0:
        errors += _invalid("spec.activeDeadlineSeconds", deadline, ["must be greater than 0"])
    if not update and spec.get("selector") is not None and not spec.get("manualSelector"):
        errors += _invalid("spec.selector", spec["selector"], ["`selector` will be auto-generated"])
    template = spec.get("template") or {}
    errors += _labels((template.get("metadata") or {}).get("labels"), "spec.template.labels")
    pod_spec = template.get("spec") or {}
    policy = pod_spec.get("restartPolicy")
    if policy not in JOB_RESTART_POLICIES:
        if not policy:
            errors.append(
                _required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"')
            )
        else:
            errors.append(
                _not_supported("spec.template.spec.restartPolicy", policy, JOB_RESTART_POLICIES)
            )
    errors += pod_spec_errors(pod_spec, "spec.template.spec")
    return errors
