"""The team spec: one YAML file declares a model team, its owners and its models.

The file is validated when the team's code location loads. A mistake fails the location with a
``TeamSpecError`` that names the file, the line and the field, e.g.::

    ml_assets/teams/payments/team.yaml, line 18: models.churn_model.backend: unknown backend
    'sagemkr'; choose one of: local
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ml_assets.backends import BACKENDS, backend_settings
from ml_assets.backends.base import Resources
from ml_assets.evaluation import threshold_key_is_valid
from ml_assets.references import check_reference
from ml_assets.registries import setting_names
from ml_assets.training.builtin import (
    BUILTIN_TRAINERS,
    HyperparameterError,
    check_builtin_hyperparameters,
)

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")]


class TeamSpecError(ValueError):
    """A team YAML file that cannot be used, with the file, line and field that are wrong."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _reference(value: str) -> str:
    """A team's ``module:function``, checked without importing the module."""
    return check_reference(value)


FunctionRef = Annotated[
    str,
    AfterValidator(_reference),
    Field(
        description="A function of the team's code as 'package.module:function'.",
        json_schema_extra={"pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"},
    ),
]
TableFormat = Literal["pandas", "polars", "pyarrow"]
Task = Literal["binary", "multiclass", "regression"]


class DatasetSpec(_Spec):
    """Where a model's rows come from: an upstream asset, or a function of the team's."""

    asset: str | None = Field(
        None,
        description="An asset key ('platform/raw_events'), from any location, whose "
        "latest materialization has a 'path' to a Parquet file.",
    )
    function: FunctionRef | None = Field(
        None, description="'module:function' called as function(**params); returns a table."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    max_rows: int | None = Field(None, ge=100, description="Keep at most this many rows.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.asset is None) == (self.function is None):
            raise ValueError("give exactly one of 'asset' (an asset key) or 'function'")
        if self.asset is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", self.asset):
            raise _FieldError(
                ("asset",), f"{self.asset!r} is not an asset key like 'platform/raw_x'"
            )
        if self.asset is not None and self.params:
            raise _FieldError(("params",), "params go with 'function', not 'asset'")
        return self

    @property
    def asset_path(self) -> list[str]:
        return (self.asset or "").split("/")


class FeaturesSpec(_Spec):
    """The team's feature function and what the library needs to split and score its output."""

    function: FunctionRef | None = Field(
        None,
        description="'module:function' called as function(table, params) and returning the "
        "feature table; omit it to use the dataset's columns as they are.",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    table_format: TableFormat = Field(
        "pandas", description="What the feature function receives: pandas, polars or pyarrow."
    )
    label: str = Field("label", min_length=1, description="The label column of the output.")
    id_column: str = Field(
        "row_id", min_length=1, description="An integer column that identifies each row."
    )
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


class TrainerSpec(_Spec):
    """How the model is trained: a Python function run by the library's job runner, or a
    command in the team's own image that reports through Dagster Pipes."""

    function: str | None = Field(
        None,
        description="'module:function' called as function(train, hyperparameters, context), or "
        f"a built-in trainer: {', '.join(BUILTIN_TRAINERS)}.",
    )
    image: str | None = Field(None, description="The team's container image for 'command'.")
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="The command the image runs; it reports through dagster-pipes and need not "
        "import ml_assets.",
    )
    working_dir: str | None = Field(
        None, description="The command's working directory (default on local: the team folder)."
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("function")
    @classmethod
    def _known_function(cls, value: str | None) -> str | None:
        if value is None or value in BUILTIN_TRAINERS:
            return value
        if ":" not in value:
            raise ValueError(
                f"unknown trainer {value!r}; give 'module:function' or a built-in trainer: "
                + ", ".join(BUILTIN_TRAINERS)
            )
        return check_reference(value)

    @model_validator(mode="after")
    def _one_way(self) -> TrainerSpec:
        if (self.function is None) == (self.command is None):
            raise ValueError("give exactly one of 'function' or 'command' (with 'image')")
        if self.image is not None and self.command is None:
            raise _FieldError(("image",), "'image' goes with 'command'")
        return self

    @property
    def reference(self) -> str | None:
        """The function as 'module:function', built-in names resolved."""
        if self.function is None:
            return None
        return BUILTIN_TRAINERS.get(self.function, self.function)

    @property
    def label(self) -> str:
        """A short name for descriptions: the function, or the image and command."""
        if self.function is not None:
            return self.function
        return f"{self.image or 'command'} {' '.join(self.command or [])}"


class EvaluationSpec(_Spec):
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="min_<metric> / max_<metric> over any metric the evaluation computes, a "
        "metric function gives or the training job reports (as train/<name>).",
    )
    metrics: list[FunctionRef] = Field(
        default_factory=list,
        description="Extra metric functions 'module:function' called as f(y_true, y_pred).",
    )
    decision_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Binary tasks only.")

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if not threshold_key_is_valid(key):
                raise ValueError(
                    f"unknown threshold {key!r}; use min_<metric> or max_<metric>, "
                    "e.g. min_roc_auc or max_rmse"
                )
        return value


class RetrySpec(_Spec):
    max_attempts: int = Field(2, ge=1, le=10, description="Total attempts, the first included.")


class PromotionSpec(_Spec):
    """What a registered version must show before it becomes the production version."""

    primary_metric: str | None = Field(
        None,
        description="Compared between challenger and champion (default: roc_auc for binary, "
        "macro_f1 for multiclass, rmse for regression).",
    )
    min_improvement: float = Field(
        0.0, description="The challenger must beat the champion by at least this much."
    )
    max_drift_psi: float = Field(
        0.25, gt=0, description="Largest population stability index of any feature allowed."
    )
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Allowed [low, high] per training-data column."
    )

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and not threshold_key_is_valid(f"min_{value}"):
            raise ValueError(f"{value!r} is not a metric name")
        return value


class ModelSpec(_Spec):
    description: str = ""
    task: Task = Field("binary", description="binary, multiclass or regression.")
    dataset: DatasetSpec
    features: FeaturesSpec
    trainer: TrainerSpec
    predict: FunctionRef | None = Field(
        None,
        description="'module:function' called as predict(artifact_path, features) when the "
        "artifact is not a scikit-learn-style estimator saved by the runner.",
    )
    backend: str = "local"
    resources: Resources = Field(default_factory=Resources)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return _one_of(value, tuple(BACKENDS), "backend")

    @model_validator(mode="after")
    def _builtin_hyperparameters(self) -> ModelSpec:
        """A built-in trainer's hyperparameters and task, checked now rather than at fit."""
        if self.trainer.function is not None:
            try:
                check_builtin_hyperparameters(
                    self.trainer.function, self.task, self.trainer.hyperparameters
                )
            except HyperparameterError as exc:
                raise _FieldError(("trainer", *exc.field), exc.message) from None
        return self


class RegistrySpec(_Spec):
    """``kind`` plus that registry's own settings, e.g. ``tracking_uri`` for MLflow."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: Literal["local", "mlflow", "wandb", "sagemaker"] = "local"

    @model_validator(mode="after")
    def _known_settings(self) -> RegistrySpec:
        accepted = setting_names(self.kind)
        for name in self.settings:
            if name not in accepted:
                raise _FieldError(
                    (name,),
                    f"unknown setting for the {self.kind} registry; it takes: "
                    + ", ".join(accepted),
                )
        return self

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ServingSpec(_Spec):
    """What the serving-spec asset produces for each promoted version."""

    kserve_namespace: str = "models"
    kserve_storage_uri_prefix: str | None = Field(
        None, description="Where the deploy copies artifacts (e.g. s3://bucket/models)."
    )
    sagemaker: dict[str, Any] | None = Field(
        None,
        description="Create a SageMaker model and endpoint config through boto3 for each "
        "production version. Keys: role_arn (required), image_uri and model_data_url (needed "
        "unless the registry is SageMaker's), instance_type, initial_instance_count, "
        "endpoint_name, region_name, endpoint_url.",
    )

    @field_validator("sagemaker")
    @classmethod
    def _known_sagemaker_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        import inspect

        from ml_assets.serving.sagemaker import sagemaker_endpoint_spec

        accepted = [p for p in inspect.signature(sagemaker_endpoint_spec).parameters][1:]
        unknown = sorted(set(value) - set(accepted))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; it takes: {', '.join(accepted)}")
        if "role_arn" not in value:
            raise ValueError("role_arn is required")
        return value


class TeamSpec(_Spec):
    team: Identifier
    description: str = ""
    owners: list[str] = Field(min_length=1, description="Emails or 'team:<name>' entries.")
    allowed_backends: list[str] = Field(default_factory=lambda: ["local"])
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings per backend, e.g. kubernetes: {namespace: ..., image_uri: ...}; "
        "a value written {env: NAME} is read from the environment variable NAME.",
    )
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    models: dict[Identifier, ModelSpec] = Field(min_length=1)
    _source: Path | None = PrivateAttr(None)

    @field_validator("owners")
    @classmethod
    def _owners_dagster_accepts(cls, value: list[str]) -> list[str]:
        for index, owner in enumerate(value):
            if not owner_is_valid(owner):
                raise _FieldError(
                    (index,),
                    f"{_cut(owner)!r} is not an owner Dagster accepts: give an email address "
                    "(name@example.com) or 'team:<name>'",
                )
        return value

    @field_validator("allowed_backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        for name in value:
            _one_of(name, tuple(BACKENDS), "backend")
        return value

    @model_validator(mode="after")
    def _backends_allowed(self) -> TeamSpec:
        for name, model in self.models.items():
            if model.backend not in self.allowed_backends:
                raise _FieldError(
                    ("models", name, "backend"),
                    f"backend {model.backend!r} is not in this team's allowed_backends "
                    f"{self.allowed_backends}",
                )
        for name in self.backends:
            if name not in self.allowed_backends:
                raise _FieldError(
                    ("backends", name),
                    f"settings for backend {name!r}, which is not in allowed_backends "
                    f"{self.allowed_backends}",
                )
        from ml_assets.backends.settings import UnknownSettings

        for name in self.allowed_backends:
            try:
                backend_settings(name, self.backends.get(name))
            except ValidationError as exc:
                first = exc.errors()[0]
                unknown = first.get("ctx", {}).get("error")
                if isinstance(unknown, UnknownSettings):
                    others = ", ".join(_cut(other, 60) for other in unknown.names[1:11])
                    raise _FieldError(
                        ("backends", name, unknown.names[0]),
                        f"unknown setting of the {name} backend"
                        + (f" (also unknown: {others})" if others else "")
                        + "; it takes: "
                        + ", ".join(unknown.known),
                    ) from None
                where: tuple[str | int, ...] = ("backends", name, *first["loc"])
                message = _plain(first["msg"])
                if first["loc"] and first["loc"][0] not in (self.backends.get(name) or {}):
                    message = "required, not set"
                if name not in self.backends:
                    message += f" (backend {name!r} needs a backends.{name} section)"
                raise _FieldError(where, message) from None
        return self

    @property
    def folder(self) -> Path | None:
        """The folder of the team's YAML file, when it was loaded from one."""
        return self._source.parent if self._source else None

    @property
    def owner_tags(self) -> list[str]:
        """Dagster owners for every asset of the team: the team itself, then its people."""
        return [f"team:{self.team}", *(o for o in self.owners if o != f"team:{self.team}")]


class _FieldError(ValueError):
    """A cross-field error raised from a model validator, carrying the field's path relative to
    that model."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def load_team_spec(path: str | Path) -> TeamSpec:
    """Read and validate a team YAML file, or raise ``TeamSpecError`` naming file and field."""
    path = Path(path)
    raw, root = _read_yaml(path)
    if not isinstance(raw, dict):
        raise TeamSpecError(f"{path}: the team spec must be a mapping with 'team' and 'models'")
    try:
        spec = TeamSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            context_error = error.get("ctx", {}).get("error")
            if isinstance(context_error, _FieldError):
                # The error's own path is relative to the model that raised it.
                loc = (*error["loc"], *context_error.loc)
                message = context_error.message
            else:
                loc, message = tuple(error["loc"]), _plain(error["msg"])
            problems.append(_describe(path, root, loc, message))
        raise TeamSpecError(_joined(problems)) from None
    spec._source = path.resolve()
    return spec


# --- Reading the YAML: limits checked while composing, before anything expands aliases -------

MAX_FILE_BYTES = 1 << 20
"""A team file larger than this (1 MiB) is refused unread."""
MAX_DEPTH = 50
"""Collections nested deeper than this, aliases included, are refused."""
MAX_NODES = 20_000
"""Values in the document with every alias counted at each use, i.e. as a tree; more is refused
as soon as the count passes it (an "alias bomb" is small on disk and expands to billions)."""
MAX_SHOWN = 200
"""Characters of a value or key shown in a message; longer ones are cut."""
MAX_MESSAGE = 4_000
"""Characters of a TeamSpecError message; further problems are counted, not listed."""

_CORE = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(
    _CORE + name
    for name in ("null", "bool", "int", "float", "str", "seq", "map", "timestamp", "merge")
)
_READ_KEYS = frozenset(_CORE + name for name in ("null", "bool", "int", "float", "timestamp"))
_KINDS: dict[str, type[yaml.Node]] = {
    _CORE + "seq": yaml.SequenceNode,
    _CORE + "map": yaml.MappingNode,
}
_KIND_NAMES: dict[type[yaml.Node], str] = {
    yaml.ScalarNode: "a single value",
    yaml.SequenceNode: "a list",
    yaml.MappingNode: "a mapping",
}


class _Refused(yaml.YAMLError):
    """A document the team loader will not use, at ``mark`` and ``field``."""

    def __init__(self, mark: yaml.Mark | None, field: str, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.field = field
        self.message = message


class _TeamLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the checks a file from anyone needs, all made on the composed
    node graph, in which an alias is a second reference to one node, never a copy:

    * nesting deeper than ``MAX_DEPTH`` (PyYAML would recurse until ``RecursionError``);
    * an alias inside the collection it names (a recursive value, which every later walk of the
      data, JSON included, would follow for ever);
    * more than ``MAX_NODES`` values in the document, each alias counted as a copy of what it
      names (its size is known, computed bottom-up when its node was composed), refused as soon
      as the running count passes the limit, so a bomb is never expanded;
    * a key given twice in one mapping (PyYAML keeps the last one silently);
    * tags beyond plain data: null, booleans, numbers, strings, timestamps, lists, mappings
      and ``<<`` merges; ``!!binary``, ``!!set``, ``!!python/...`` or ``!local`` are refused;
    * a tagged scalar that cannot be read (``!!float 'abc'``) is a YAML error at its line.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str] = []
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._size: dict[int, int] = {}  # values in a node, itself included, aliases expanded
        self._total = 0  # values so far in the document, aliases expanded
        self._height: dict[int, int] = {}  # collections nested in a node, itself included

    def _field(self, *more: str) -> str:
        return _cut(".".join(_cut(part, 60) for part in (*self._path, *more))) or "<top level>"

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if isinstance(index, yaml.ScalarNode):
            self._path.append(str(index.value))
        elif isinstance(index, int):
            self._path.append(str(index))
        elif index is not None:
            self._path.append("<key>")
        try:
            if self.check_event(yaml.AliasEvent):
                return self._compose_alias(parent, index)
            return self._compose_new(parent, index)
        finally:
            if index is not None:
                self._path.pop()

    def _compose_alias(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if event.anchor in self._open_anchors:
            raise _Refused(
                event.start_mark,
                self._field(),
                f"alias *{_cut(event.anchor, 60)} is inside the value &{_cut(event.anchor, 60)} "
                "it names: a recursive value cannot be used",
            )
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if self._depth + self._height[id(node)] > MAX_DEPTH:
            raise _Refused(
                event.start_mark,
                self._field(),
                f"alias *{_cut(event.anchor, 60)} nests values more than {MAX_DEPTH} levels deep",
            )
        self._count(self._size[id(node)], event.start_mark)
        return node

    def _count(self, values: int, mark: yaml.Mark) -> None:
        self._total += values
        if self._total > MAX_NODES:
            raise _Refused(
                mark,
                self._field(),
                f"the file holds more than {MAX_NODES:,} values, counting each use of an alias "
                "as a copy of the value it names; use fewer aliases or values",
            )

    def _compose_new(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection and self._depth >= MAX_DEPTH:
            raise _Refused(
                event.start_mark, self._field(), f"nested more than {MAX_DEPTH} levels deep"
            )
        self._count(1, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
        if node is None:
            return None
        if node.tag == _CORE + "merge" and not (
            isinstance(parent, yaml.MappingNode) and index is None
        ):
            node.tag = _CORE + "str"  # '<<' is a merge only as a key
        if node.tag not in _PLAIN_TAGS:
            raise _Refused(
                node.start_mark,
                self._field(),
                f"tag {_cut(_short_tag(node.tag), 60)} is not allowed: the file holds plain "
                "data (mappings, lists, strings, numbers, booleans, null)",
            )
        self._check_value(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            self._check_keys(node)
            children = [part for pair in node.value for part in pair]
        self._size[id(node)] = 1 + sum(self._size[id(child)] for child in children)
        self._height[id(node)] = (
            0
            if isinstance(node, yaml.ScalarNode)
            else 1 + max((self._height[id(child)] for child in children), default=0)
        )
        return node

    def _check_value(self, node: yaml.Node) -> None:
        """Refuse, with its field, a node its tag cannot read: ``!!str [1]``, ``!!int x``."""
        kind = _KINDS.get(node.tag, yaml.ScalarNode)
        if node.tag != _CORE + "merge" and not isinstance(node, kind):
            raise _Refused(
                node.start_mark,
                self._field(),
                f"{_short_tag(node.tag)} needs {_KIND_NAMES[kind]}, not {_KIND_NAMES[type(node)]}",
            )
        if isinstance(node, yaml.ScalarNode) and node.tag in _READ_KEYS:
            try:
                self.construct_object(node)
            except yaml.constructor.ConstructorError as exc:
                raise _Refused(
                    node.start_mark, self._field(), exc.problem or "unreadable"
                ) from None

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, Any], yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise _Refused(
                    key.start_mark,
                    self._field("<key>"),
                    f"a key must be a single value, not {_KIND_NAMES[type(key)]}",
                )
            if key.tag == _CORE + "merge" and not (
                isinstance(value, yaml.MappingNode)
                or (
                    isinstance(value, yaml.SequenceNode)
                    and all(isinstance(item, yaml.MappingNode) for item in value.value)
                )
            ):
                raise _Refused(
                    value.start_mark,
                    self._field("<<"),
                    "<< merges a mapping (*alias) or a list of them into this mapping",
                )
            # 1 and 0x1, or true and True, are one key once read; others compare as written
            read = key.tag in _READ_KEYS
            first = seen.setdefault(
                (key.tag, self.construct_object(key) if read else key.value), key
            )
            if first is not key:
                raise _Refused(
                    key.start_mark,
                    self._field(str(key.value)),
                    f"duplicate key {_cut(str(key.value))!r}, first at line "
                    f"{first.start_mark.line + 1}; remove one of them",
                )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a scalar its tag cannot read: int('twelve'), float('abc')
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{_short_tag(node.tag)} value {_cut(str(node.value))!r} cannot be read: "
                f"{_cut(str(exc))}",
                node.start_mark,
            ) from None


# A lone '=' is a string here, not YAML 1.1's "value" tag, which nothing constructs.
_TeamLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _CORE + "value"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


def _read_yaml(path: Path, what: str = "team spec") -> tuple[Any, yaml.Node | None]:
    """The data of the YAML file ``path`` (a ``what``: the team spec, or the platform policy)
    and its node graph (for line numbers), or a ``TeamSpecError`` that starts with the path and,
    where there is one, the line."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TeamSpecError(f"{path}: cannot read the {what}: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise TeamSpecError(
            f"{path}: the file is larger than a {what} may be ({MAX_FILE_BYTES:,} bytes, "
            "1 MiB); it is read no further"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise TeamSpecError(
            f"{path}, line {bad_line}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start} ({exc.reason}); save the file as UTF-8"
        ) from None
    loader: _TeamLoader | None = None
    try:
        loader = _TeamLoader(text)
        root = loader.get_single_node()
        raw = loader.construct_document(root) if root is not None else None
    except _Refused as exc:
        line = f", line {exc.mark.line + 1}" if exc.mark else ""
        raise TeamSpecError(_cut(f"{path}{line}: {exc.field}: {exc.message}", 1_000)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "not valid"
        if exc.context and exc.problem:
            context_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            problem = f"{exc.problem} ({exc.context}{context_line})"
        column = f" (column {mark.column + 1})" if mark else ""
        raise TeamSpecError(
            _cut(f"{path}{line}: not valid YAML: {_shortened(problem)}{column}", 1_000)
        ) from None
    except yaml.reader.ReaderError as exc:
        line_number = text.count("\n", 0, exc.position) + 1
        raise TeamSpecError(
            f"{path}, line {line_number}: not valid YAML: character #x{exc.character:04x} "
            f"is not allowed in YAML ({exc.reason})"
        ) from None
    except yaml.YAMLError as exc:
        raise TeamSpecError(f"{path}: not valid YAML: {_cut(str(exc))}") from None
    except RecursionError:  # a guard: nesting is limited above
        raise TeamSpecError(f"{path}: nested too deeply to read") from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, root


# An asset owner is an email address or 'team:<name>'. Dagster checks owners when the location
# is built; this rule accepts no owner that Dagster refuses (test_spec checks it against
# Dagster), so a spec that loads builds.
_EMAIL = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9._%+-]*"  # the local part, from a letter, digit or underscore
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,7}"
)


def owner_is_valid(owner: str) -> bool:
    """Whether ``owner`` is an owner a Dagster asset takes: an email address or 'team:<name>'."""
    return (owner.startswith("team:") and len(owner) > len("team:")) or bool(
        _EMAIL.fullmatch(owner)
    )


def _cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")


def _shortened(message: str) -> str:
    """``message`` with every long quoted value in it cut, whoever wrote the message."""

    def cut(match: re.Match[str]) -> str:
        quoted = match.group()
        inner = quoted[1:-1]
        if len(inner) <= MAX_SHOWN:
            return quoted
        return f"{quoted[0]}{inner[:MAX_SHOWN]}…{quoted[0]} ({len(inner)} characters)"

    return _QUOTED.sub(cut, message)


def _joined(problems: list[str]) -> str:
    """The problems, one a line, as many as fit in ``MAX_MESSAGE`` characters."""
    shown: list[str] = []
    size = 0
    for problem in problems:
        if shown and size + len(problem) > MAX_MESSAGE:
            break
        shown.append(problem)
        size += len(problem) + 1
    hidden = len(problems) - len(shown)
    if hidden:
        shown.append(f"… and {hidden} more problems")
    return "\n".join(shown)


def team_json_schema() -> dict[str, Any]:
    """The JSON Schema of a team YAML file, for editors (``ml-assets schema``)."""
    schema = TeamSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ml_assets team"
    return schema


def _plain(message: str) -> str:
    return re.sub(r"^(Value|Assertion) error, ", "", message)


def _describe(path: Path, root: yaml.Node | None, loc: tuple[Any, ...], message: str) -> str:
    field = ".".join(_cut(str(part), 60) for part in loc) or "<top level>"
    line = _line_of(root, loc)
    where = f"{path}, line {line}" if line else str(path)
    return _cut(f"{where}: {field}: {_shortened(message)}", 1_000)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc`` that exists in the file."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
