"""``shapes.smallest_fit``: the one machine-shape picker every backend uses, and its GPU names."""

from __future__ import annotations

import pytest

from ml_assets.backends import databricks, sagemaker, vertex
from ml_assets.backends.base import Resources
from ml_assets.backends.shapes import MachineShape, family, normalize_gpu_type, smallest_fit

TABLE = (
    MachineShape("small", 2, 8),
    MachineShape("wide", 8, 16),
    MachineShape("tall", 4, 64),
    MachineShape("huge", 64, 256),
    *family(
        "nvidia-tesla-t4",
        [("t4-1", 1, 4, 16), ("t4-1-big", 1, 16, 64), ("t4-4", 4, 48, 192)],
    ),
    *family("a100", [("a100-8", 8, 96, 1152)]),
)


def fit(resources: Resources, **options: object) -> str:
    return smallest_fit(TABLE, resources, where="the test cloud", **options).name  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("resources", "name"),
    [
        (Resources(cpu=1, memory_gb=1), "small"),
        (Resources(cpu=2, memory_gb=8), "small"),  # exactly the shape fits it
        (Resources(cpu=3, memory_gb=8), "tall"),  # fewer vCPUs first: 4 before 8
        (Resources(cpu=6, memory_gb=8), "wide"),
        (Resources(cpu=4, memory_gb=20), "tall"),
        (Resources(cpu=9, memory_gb=1), "huge"),
        (Resources(gpu_count=1, gpu_type="t4"), "t4-1"),
        (Resources(gpu_count=1, gpu_type="NVIDIA_TESLA_T4", cpu=8), "t4-1-big"),
        (Resources(gpu_count=2, gpu_type="Tesla-T4"), "t4-4"),  # at least 2: the 4-GPU shape
        (Resources(gpu_count=1, gpu_type="nvidia-a100"), "a100-8"),
    ],
)
def test_the_smallest_shape_with_at_least_the_request_wins(resources: Resources, name: str) -> None:
    assert fit(resources) == name


def test_fewer_gpus_win_over_fewer_vcpus() -> None:
    # 1 GPU with 16 vCPUs beats 4 GPUs with 48: GPUs are what a job pays for first.
    assert fit(Resources(gpu_count=1, gpu_type="t4", cpu=10)) == "t4-1-big"
    assert fit(Resources(gpu_count=1, gpu_type="t4", cpu=20)) == "t4-4"


def test_gpus_without_a_type_take_the_default_and_a_type_without_gpus_is_refused() -> None:
    assert fit(Resources(gpu_count=1), default_gpu_type="nvidia-tesla-t4") == "t4-1"
    with pytest.raises(ValueError, match="gpu_count=1 needs a gpu_type"):
        fit(Resources(gpu_count=1))
    with pytest.raises(ValueError, match="gpu_type 't4' is set but gpu_count is 0"):
        fit(Resources(gpu_type="t4"))


def test_an_unknown_gpu_type_names_every_known_one() -> None:
    with pytest.raises(ValueError) as raised:
        fit(Resources(gpu_count=1, gpu_type="nvidia-h200"))

    assert "unknown GPU type 'nvidia-h200' for the test cloud; known types: a100, t4" in str(
        raised.value
    )


def test_a_request_beyond_every_shape_names_the_largest() -> None:
    with pytest.raises(ValueError, match=r"offers 100 vCPUs and 2 GiB; the largest is huge"):
        fit(Resources(cpu=100))
    with pytest.raises(ValueError, match=r"offers 8 x t4 GPUs, .*the largest is t4-4 \(4 GPUs"):
        fit(Resources(gpu_count=8, gpu_type="t4"))


def test_machine_types_overrides_win_and_take_the_smallest_listed_count() -> None:
    overrides = {"cpu": "custom-cpu", "t4:1": "custom-t4-1", "nvidia-tesla-t4:8": "custom-t4-8"}

    assert fit(Resources(cpu=500), overrides=overrides) == "custom-cpu"
    assert fit(Resources(gpu_count=1, gpu_type="t4"), overrides=overrides) == "custom-t4-1"
    chosen = smallest_fit(
        TABLE, Resources(gpu_count=2, gpu_type="t4"), where="x", overrides=overrides
    )
    assert (chosen.name, chosen.gpu_count) == ("custom-t4-8", 8)
    # An override adds a GPU type the table lacks; beyond its counts the request is refused.
    assert fit(Resources(gpu_count=8, gpu_type="b200"), overrides={"b200:8": "b"}) == "b"
    with pytest.raises(ValueError, match="16 x b200"):
        fit(Resources(gpu_count=16, gpu_type="b200"), overrides={"b200:8": "b"})


def test_one_gpu_naming_scheme() -> None:
    names = ("nvidia-tesla-t4", "Tesla-T4", "NVIDIA_TESLA_T4", "t4", " T4 ")
    assert {normalize_gpu_type(name) for name in names} == {"t4"}
    assert normalize_gpu_type("NVIDIA_A100_80GB") == "a100-80gb"
    every_table = (*sagemaker.INSTANCE_SHAPES, *vertex.MACHINE_SHAPES, *databricks.NODE_TYPES)
    for shape in every_table:
        assert shape.gpu_type is None or shape.gpu_type == normalize_gpu_type(shape.gpu_type)
        assert (shape.gpu_type is None) == (shape.gpu_count == 0), shape


@pytest.mark.parametrize(
    "resources",
    [
        Resources(),
        Resources(cpu=8, memory_gb=60),
        Resources(gpu_count=1, gpu_type="nvidia-tesla-t4"),
        Resources(gpu_count=4, gpu_type="t4", cpu=16, memory_gb=64),
        Resources(gpu_count=8, gpu_type="a100"),
    ],
)
def test_every_backend_picks_a_shape_that_meets_the_request(resources: Resources) -> None:
    for table, where in (
        (sagemaker.INSTANCE_SHAPES, "SageMaker"),
        (vertex.MACHINE_SHAPES, "Vertex AI"),
        (databricks.NODE_TYPES, "Databricks"),
    ):
        shape = smallest_fit(table, resources, where=where)
        assert shape.gpu_count >= resources.gpu_count, (where, shape)
        assert shape.cpu >= resources.cpu and shape.memory_gb >= resources.memory_gb, shape
        smaller = [s for s in table if s.fits(resources, shape.gpu_type) and s != shape]
        key = (shape.gpu_count, shape.cpu, shape.memory_gb)
        assert all(key <= (s.gpu_count, s.cpu, s.memory_gb) for s in smaller), (where, shape)
