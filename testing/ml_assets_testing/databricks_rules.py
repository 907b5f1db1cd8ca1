"""What a Databricks workspace (on AWS) checks in a Jobs API ``runs/submit`` request.

From the Jobs and Clusters API references and the compute and library documentation:

* Request shape: every field must be one the Jobs API defines (the request fields of
  ``JobsAPI.submit`` and the ``SubmitTask``/``ClusterSpec``/``Library``/... dataclasses of
  ``databricks-sdk``, generated from the API's own specification), and every enum field one of
  its values; anything else is ``400 MALFORMED_REQUEST``.
* Tasks: 1 to 100; ``task_key`` required, unique, at most 100 characters of ``[A-Za-z0-9_-]``;
  exactly one task type; compute given by at most one of ``new_cluster``,
  ``existing_cluster_id``, ``job_cluster_key`` or ``environment_key``. A
  ``python_wheel_task`` names its ``package_name`` and ``entry_point``; a
  ``spark_python_task``'s ``python_file`` is absolute (a workspace path) or a cloud URI unless
  its source is Git. ``idempotency_token`` at most 64 characters;
  ``timeout_seconds`` not negative.
* New clusters: ``spark_version`` one of the workspace's runtimes (``SPARK_VERSIONS``, served by
  ``clusters/spark-versions``); ``node_type_id`` and ``driver_node_type_id`` among its node types
  (``NODE_TYPES``, served by ``clusters/list-node-types``; the GPU ones as listed in "GPU-enabled
  compute" for AWS, the P3 family deprecated); ``num_workers`` (not negative) or ``autoscale``;
  a GPU node type needs a GPU ML runtime (``-gpu-ml-``) unless the cluster runs its own image,
  a GPU ML runtime needs GPU node types, and Photon runtimes do not run on GPU node types;
  Databricks Container Services (``docker_image``) do not support the ML runtimes; at most 45
  ``custom_tags``, keys at most 127 and values at most 255 characters of letters, digits,
  spaces and ``_.:/=+-@``, no key starting with ``aws:``.
* Libraries: exactly one source each; ``whl``/``jar``/``egg``/``requirements`` paths are
  workspace files (``/Workspace/...``), Unity Catalog volumes (``/Volumes/...``), cloud object
  storage (``s3://``, ``s3a://``, ``gs://``, ``abfss://``) or DBFS (``dbfs:/``); a ``whl`` path
  ends in ``.whl``. Installing libraries from the DBFS root is disabled by default from
  Databricks Runtime 15.0 (14.3 LTS is the last runtime that installs them; mounts under
  ``dbfs:/mnt/`` and ``dbfs:/Volumes/`` are not the root); Python eggs are not supported from
  14.0; ``requirements.txt`` libraries need 15.0 or above.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from typing import Any

MAX_TASKS = 100
MAX_TASK_KEY = 100
MAX_TOKEN = 64
MAX_CUSTOM_TAGS = 45
_TASK_KEY = re.compile(r"[A-Za-z0-9_-]+")  # the API's [\w-], ASCII as in its Java regex
_TAG_TEXT = re.compile(r"[\w .:/=+\-@]*")
_TASK_TYPES = (
    "notebook_task",
    "spark_jar_task",
    "spark_python_task",
    "spark_submit_task",
    "python_wheel_task",
    "pipeline_task",
    "sql_task",
    "dbt_task",
    "run_job_task",
    "condition_task",
    "for_each_task",
    "clean_rooms_notebook_task",
    "dashboard_task",
    "dbt_cloud_task",
    "dbt_platform_task",
    "gen_ai_compute_task",
    "power_bi_task",
)
_LIBRARY_PATH_PREFIXES = (
    "/Workspace/",
    "/Volumes/",
    "dbfs:/",
    "s3://",
    "s3a://",
    "gs://",
    "abfss://",
)
_NOT_DBFS_ROOT = ("dbfs:/mnt/", "dbfs:/Volumes/")


@dataclasses.dataclass(frozen=True)
class NodeType:
    node_type_id: str
    num_cores: int
    memory_gb: float
    num_gpus: int = 0
    deprecated: bool = False

    def as_json(self) -> dict[str, Any]:
        gpu = self.num_gpus > 0
        family = self.node_type_id.split(".")[0]
        return {
            "node_type_id": self.node_type_id,
            "instance_type_id": self.node_type_id,
            "description": self.node_type_id,
            "memory_mb": int(self.memory_gb * 1024),
            "num_cores": float(self.num_cores),
            "num_gpus": self.num_gpus,
            "category": "GPU Accelerated" if gpu else "General Purpose",
            "is_deprecated": self.deprecated,
            "is_hidden": False,
            "support_ebs_volumes": True,
            "support_cluster_tags": True,
            "support_port_forwarding": True,
            "photon_worker_capable": not gpu,
            "photon_driver_capable": not gpu,
            "node_instance_type": {
                "instance_type_id": self.node_type_id,
                "instance_family": f"EC2 {family} Family vCPUs",
            },
        }


def _family(
    name: str,
    sizes: dict[str, tuple[int, float]],
    gpus: dict[str, int] | None = None,
    deprecated: bool = False,
) -> list[NodeType]:
    return [
        NodeType(f"{name}.{size}", cores, memory, (gpus or {}).get(size, 0), deprecated)
        for size, (cores, memory) in sizes.items()
    ]


# A documented subset of the node types a Databricks on AWS workspace lists.
NODE_TYPES: dict[str, NodeType] = {
    node.node_type_id: node
    for node in [
        *_family(
            "m5",
            {
                "large": (2, 8),
                "xlarge": (4, 16),
                "2xlarge": (8, 32),
                "4xlarge": (16, 64),
                "8xlarge": (32, 128),
                "12xlarge": (48, 192),
                "16xlarge": (64, 256),
                "24xlarge": (96, 384),
            },
        ),
        *_family(
            "m5d", {"large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32), "4xlarge": (16, 64)}
        ),
        *_family(
            "i3",
            {
                "xlarge": (4, 30.5),
                "2xlarge": (8, 61),
                "4xlarge": (16, 122),
                "8xlarge": (32, 244),
                "16xlarge": (64, 488),
            },
        ),
        *_family(
            "r5",
            {
                "large": (2, 16),
                "xlarge": (4, 32),
                "2xlarge": (8, 64),
                "4xlarge": (16, 128),
                "8xlarge": (32, 256),
            },
        ),
        *_family(
            "c5", {"xlarge": (4, 8), "2xlarge": (8, 16), "4xlarge": (16, 32), "9xlarge": (36, 72)}
        ),
        *_family(
            "g4dn",
            {
                "xlarge": (4, 16),
                "2xlarge": (8, 32),
                "4xlarge": (16, 64),
                "8xlarge": (32, 128),
                "16xlarge": (64, 256),
                "12xlarge": (48, 192),
            },
            {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4},
        ),
        *_family(
            "g5",
            {
                "xlarge": (4, 16),
                "2xlarge": (8, 32),
                "4xlarge": (16, 64),
                "8xlarge": (32, 128),
                "16xlarge": (64, 256),
                "12xlarge": (48, 192),
                "24xlarge": (96, 384),
                "48xlarge": (192, 768),
            },
            {
                "xlarge": 1,
                "2xlarge": 1,
                "4xlarge": 1,
                "8xlarge": 1,
                "16xlarge": 1,
                "12xlarge": 4,
                "24xlarge": 4,
                "48xlarge": 8,
            },
        ),
        *_family(
            "g6",
            {
                "xlarge": (4, 16),
                "2xlarge": (8, 32),
                "4xlarge": (16, 64),
                "8xlarge": (32, 128),
                "16xlarge": (64, 256),
                "12xlarge": (48, 192),
                "24xlarge": (96, 384),
                "48xlarge": (192, 768),
            },
            {
                "xlarge": 1,
                "2xlarge": 1,
                "4xlarge": 1,
                "8xlarge": 1,
                "16xlarge": 1,
                "12xlarge": 4,
                "24xlarge": 4,
                "48xlarge": 8,
            },
        ),
        *_family(
            "p3",
            {"2xlarge": (8, 61), "8xlarge": (32, 244), "16xlarge": (64, 488)},
            {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8},
            deprecated=True,
        ),
        *_family("p4d", {"24xlarge": (96, 1152)}, {"24xlarge": 8}),
        *_family("p4de", {"24xlarge": (96, 1152)}, {"24xlarge": 8}),
        *_family("p5", {"48xlarge": (192, 2048)}, {"48xlarge": 8}),
    ]
}

# (version, Spark, Scala) of the runtimes the workspace offers; each comes as a standard,
# Photon, CPU ML and GPU ML runtime.
_RUNTIMES = [
    ("13.3", "3.4.1", "2.12"),
    ("14.3", "3.5.0", "2.12"),
    ("15.4", "3.5.0", "2.12"),
    ("16.4", "3.5.2", "2.12"),
    ("17.3", "4.0.0", "2.13"),
]


def _spark_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for version, spark, scala in _RUNTIMES:
        lts = f"{version} LTS"
        tail = f"Apache Spark {spark}, Scala {scala}"
        versions[f"{version}.x-scala{scala}"] = f"{lts} (includes {tail})"
        versions[f"{version}.x-photon-scala{scala}"] = f"{lts} Photon (includes {tail})"
        versions[f"{version}.x-cpu-ml-scala{scala}"] = f"{lts} ML (includes {tail})"
        versions[f"{version}.x-gpu-ml-scala{scala}"] = f"{lts} ML (includes {tail}, GPU)"
    return versions


SPARK_VERSIONS: dict[str, str] = _spark_versions()


def runtime_version(spark_version: str) -> tuple[int, int]:
    major, minor = spark_version.split(".")[:2]
    return int(major), int(minor)


# -- request shape ------------------------------------------------------------------------------


class MalformedRequest(ValueError):
    """The request does not parse as the API's request object."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def _check_shape(value: Any, kind: Any, path: str) -> None:
    kind = _unwrap_optional(kind)
    if value is None:
        return
    origin = typing.get_origin(kind)
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            raise MalformedRequest(f"Expected an array for {path}")
        (item,) = typing.get_args(kind)
        for index, element in enumerate(value):
            _check_shape(element, item, f"{path}[{index}]")
        return
    if origin in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            raise MalformedRequest(f"Expected an object for {path}")
        _, item = typing.get_args(kind)
        for key, element in value.items():
            _check_shape(element, item, f"{path}.{key}")
        return
    if inspect.isclass(kind) and issubclass(kind, enum.Enum):
        allowed = [member.value for member in kind]
        if value not in allowed:
            raise MalformedRequest(
                f"Invalid value {value!r} for {path}; expected one of {', '.join(allowed)}"
            )
        return
    if inspect.isclass(kind) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise MalformedRequest(f"Expected an object for {path}")
        fields = _hints(kind)
        for key, element in value.items():
            if key not in fields:
                raise MalformedRequest(f'Unrecognized field "{key}" at {path}')
            _check_shape(element, fields[key], f"{path}.{key}")
        return
    expected: Any = {str: str, int: int, bool: bool, float: (int, float)}.get(kind)
    if expected is not None and (
        not isinstance(value, expected) or (kind is int and isinstance(value, bool))
    ):
        raise MalformedRequest(f"Expected a {kind.__name__} for {path}, got {value!r}")


def check_submit_shape(body: Any) -> None:
    """Raise ``MalformedRequest`` unless ``body`` is a ``runs/submit`` request object."""
    from databricks.sdk.service import jobs

    if not isinstance(body, dict):
        raise MalformedRequest("Expected a JSON object")
    parameters = inspect.signature(jobs.JobsAPI.submit).parameters
    hints = typing.get_type_hints(jobs.JobsAPI.submit)
    for key, value in body.items():
        if key not in parameters or key == "self":
            raise MalformedRequest(f'Unrecognized field "{key}"')
        _check_shape(value, hints[key], key)


# -- validation ---------------------------------------------------------------------------------


def _library_problem(
    library: dict[str, Any], runtime: tuple[int, int] | None, where: str
) -> str | None:
    sources = [key for key, value in library.items() if value]
    if len(sources) != 1:
        return f"{where}: exactly one library source is required, got {sources or 'none'}"
    kind = sources[0]
    if kind in ("pypi", "maven", "cran"):
        needed = "coordinates" if kind == "maven" else "package"
        if not (library[kind] or {}).get(needed):
            return f"{where}.{kind}.{needed} is required"
        return None
    path = str(library[kind])
    if not path.startswith(_LIBRARY_PATH_PREFIXES):
        return (
            f"{where}.{kind}: {path!r} is not a supported library location; use a workspace file "
            "(/Workspace/...), a Unity Catalog volume (/Volumes/...) or cloud object storage"
        )
    if kind == "whl" and not path.endswith(".whl"):
        return f"{where}.whl: {path!r} is not a wheel file (.whl)"
    if runtime is None:
        return None
    if path.startswith("dbfs:/") and not path.startswith(_NOT_DBFS_ROOT) and runtime >= (15, 0):
        return (
            f"{where}.{kind}: installing libraries from the DBFS root ({path}) is disabled on "
            f"Databricks Runtime {runtime[0]}.{runtime[1]} (15.0 and above); store the library "
            "in a Unity Catalog volume (/Volumes/...) or as a workspace file (/Workspace/...)"
        )
    if kind == "egg" and runtime >= (14, 0):
        return f"{where}.egg: Python egg libraries are not supported on Databricks Runtime 14.0+"
    if kind == "requirements" and runtime < (15, 0):
        return f"{where}.requirements: requirements.txt libraries need Databricks Runtime 15.0+"
    return None


def _tags_problem(tags: dict[str, Any], where: str) -> str | None:
    if len(tags) > MAX_CUSTOM_TAGS:
        return f"{where}: at most {MAX_CUSTOM_TAGS} custom tags are allowed, got {len(tags)}"
    for key, value in tags.items():
        text = str(value)
        if not 1 <= len(key) <= 127 or not _TAG_TEXT.fullmatch(key):
            return f"{where}: invalid tag key {key!r} (1-127 letters, digits, spaces, _.:/=+-@)"
        if key.lower().startswith("aws:"):
            return f"{where}: tag keys starting with 'aws:' are reserved: {key!r}"
        if len(text) > 255 or not _TAG_TEXT.fullmatch(text):
            return (
                f"{where}: invalid value {text!r} of tag {key!r} (at most 255 letters, digits, "
                "spaces, _.:/=+-@)"
            )
    return None


def cluster_problem(cluster: dict[str, Any], where: str) -> str | None:
    version = cluster.get("spark_version")
    if not version:
        return f"{where}.spark_version is required"
    if version not in SPARK_VERSIONS:
        return f"{where}: Invalid spark version {version}."
    node_types = [cluster.get("node_type_id"), cluster.get("driver_node_type_id")]
    if not node_types[0] and not cluster.get("instance_pool_id"):
        return f"{where}.node_type_id is required"
    for node_type in node_types:
        if node_type and node_type not in NODE_TYPES:
            return f"{where}: Node type {node_type} is not supported by this workspace."
    if cluster.get("num_workers") is None and not cluster.get("autoscale"):
        return f"{where}: num_workers or autoscale is required"
    if (cluster.get("num_workers") or 0) < 0:
        return f"{where}.num_workers must not be negative"
    gpu = any(node_type and NODE_TYPES[node_type].num_gpus for node_type in node_types)
    own_image = bool((cluster.get("docker_image") or {}).get("url"))
    if own_image and "-ml-" in version:
        return (
            f"{where}: Databricks Container Services (docker_image) do not support Databricks "
            f"Runtime ML ({version}); use a standard runtime"
        )
    if gpu and "photon" in version:
        return f"{where}: Photon runtimes ({version}) do not run on GPU node types"
    if gpu and "-gpu-ml-" not in version and not own_image:
        return (
            f"{where}: GPU node type {node_types[0]} needs a GPU ML runtime "
            f"(*-gpu-ml-*), not {version}"
        )
    if "-gpu-ml-" in version and not gpu:
        return f"{where}: the GPU runtime {version} needs a GPU node type, not {node_types[0]}"
    return _tags_problem(cluster.get("custom_tags") or {}, f"{where}.custom_tags")


def _task_problem(task: dict[str, Any], where: str) -> str | None:
    key = task.get("task_key") or ""
    if not key or len(key) > MAX_TASK_KEY or not _TASK_KEY.fullmatch(key):
        return f"{where}.task_key must be 1-{MAX_TASK_KEY} characters of [A-Za-z0-9_-]: {key!r}"
    kinds = [kind for kind in _TASK_TYPES if task.get(kind)]
    if len(kinds) != 1:
        return f"{where}: exactly one task type is required, got {kinds or 'none'}"
    compute = [
        k
        for k in ("new_cluster", "existing_cluster_id", "job_cluster_key", "environment_key")
        if task.get(k)
    ]
    if len(compute) > 1:
        return f"{where}: only one of {', '.join(compute)} may be given"
    wheel = task.get("python_wheel_task")
    if wheel and not (wheel.get("package_name") and wheel.get("entry_point")):
        return f"{where}.python_wheel_task needs package_name and entry_point"
    python = task.get("spark_python_task")
    if python:
        file = python.get("python_file") or ""
        if not file:
            return f"{where}.spark_python_task.python_file is required"
        if python.get("source") != "GIT" and not (
            file.startswith("/") or "://" in file or file.startswith("dbfs:/")
        ):
            return (
                f"{where}.spark_python_task.python_file {file!r} must be an absolute workspace "
                "path or a cloud URI"
            )
    runtime = None
    cluster = task.get("new_cluster")
    if cluster:
        problem = cluster_problem(cluster, f"{where}.new_cluster")
        if problem:
            return problem
        runtime = runtime_version(cluster["spark_version"])
    for index, library in enumerate(task.get("libraries") or []):
        problem = _library_problem(library, runtime, f"{where}.libraries[{index}]")
        if problem:
            return problem
    return None


def submit_problem(body: dict[str, Any]) -> str | None:
    """Why the workspace would refuse this (well-formed) ``runs/submit`` body, or ``None``."""
    token = body.get("idempotency_token")
    if token is not None and len(token) > MAX_TOKEN:
        return f"idempotency_token must have at most {MAX_TOKEN} characters"
    if (body.get("timeout_seconds") or 0) < 0:
        return "timeout_seconds must not be negative"
    tasks = body.get("tasks") or []
    if not 1 <= len(tasks) <= MAX_TASKS:
        return f"a run needs 1 to {MAX_TASKS} tasks, got {len(tasks)}"
    keys = [task.get("task_key") for task in tasks]
    if len(set(keys)) != len(keys):
        return "task_key values must be unique within a run"
    for index, task in enumerate(tasks):
        problem = _task_problem(task, f"tasks[{index}]")
        if problem:
            return problem
    return None
