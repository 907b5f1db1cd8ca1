"""Machine shapes and GPU names, shared by every backend and by the platform policy.

One GPU naming scheme: a GPU type is its lower-case short name (``t4``, ``a10g``, ``l4``,
``a100-80gb``); ``nvidia-tesla-t4``, ``Tesla-T4``, ``NVIDIA_TESLA_T4`` and ``t4`` are the same.

One picker: ``smallest_fit`` chooses, from a backend's table of ``MachineShape``, the smallest
shape with the requested GPU type and at least the requested GPUs, vCPUs and memory, ordered
by GPU count, then vCPUs, then memory (the table's order breaks ties). A team may name machines
outright with a backend's ``machine_types`` setting: ``"cpu"`` for every CPU-only job,
``"<gpu_type>:<count>"`` for GPU jobs (the smallest listed count that is at least the one
asked for).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml_assets.backends.base import Resources

CPU_KEY = "cpu"


def normalize_gpu_type(gpu_type: str) -> str:
    """The short name of a GPU type: ``nvidia-tesla-t4`` and ``NVIDIA_A100_80GB`` become ``t4``
    and ``a100-80gb``."""
    name = gpu_type.strip().lower().replace("_", "-")
    for prefix in ("nvidia-", "tesla-"):
        name = name.removeprefix(prefix)
    return name


@dataclass(frozen=True)
class MachineShape:
    """One machine a backend can run a job on: its name, vCPUs, memory (GiB) and GPUs."""

    name: str
    cpu: float
    memory_gb: float
    gpu_count: int = 0
    gpu_type: str | None = None  # normalized; None for a machine without GPUs

    def fits(self, resources: Resources, gpu_type: str | None) -> bool:
        return (
            self.gpu_type == gpu_type
            and self.gpu_count >= resources.gpu_count
            and self.cpu >= resources.cpu
            and self.memory_gb >= resources.memory_gb
        )


def family(
    gpu_type: str | None, rows: Iterable[tuple[str, int, float, float]]
) -> list[MachineShape]:
    """Shapes from ``(name, GPUs, vCPUs, GiB)`` rows that share one GPU type."""
    kind = normalize_gpu_type(gpu_type) if gpu_type else None
    return [MachineShape(name, cpu, memory, gpus, kind) for name, gpus, cpu, memory in rows]


def requested_gpu_type(resources: Resources, default_gpu_type: str | None = None) -> str | None:
    """The normalized GPU type a request asks for (``default_gpu_type`` if it names none).

    Raises ``ValueError`` for a GPU type without GPUs, and for GPUs without a type when there
    is no default.
    """
    if not resources.gpu_count:
        if resources.gpu_type:
            raise ValueError(
                f"gpu_type {resources.gpu_type!r} is set but gpu_count is 0; set gpu_count"
            )
        return None
    gpu_type = resources.gpu_type or default_gpu_type
    if not gpu_type:
        raise ValueError(f"gpu_count={resources.gpu_count} needs a gpu_type")
    return normalize_gpu_type(gpu_type)


def _override(overrides: Mapping[str, str], gpu_type: str | None, gpus: int) -> MachineShape | None:
    if gpu_type is None:
        name = overrides.get(CPU_KEY)
        return MachineShape(name, 0, 0) if name else None
    listed = []
    for key, name in overrides.items():
        kind, _, count = key.rpartition(":")
        if kind and count.isdigit() and normalize_gpu_type(kind) == gpu_type and int(count) >= gpus:
            listed.append(MachineShape(name, 0, 0, int(count), gpu_type))
    return min(listed, key=lambda shape: shape.gpu_count, default=None)


def known_gpu_types(shapes: Iterable[MachineShape], overrides: Mapping[str, str]) -> list[str]:
    """Every GPU type the table or the ``machine_types`` overrides offer, sorted."""
    types = {shape.gpu_type for shape in shapes if shape.gpu_type}
    types |= {normalize_gpu_type(key.rpartition(":")[0]) for key in overrides if ":" in key}
    return sorted(types)


def smallest_fit(
    shapes: Iterable[MachineShape],
    resources: Resources,
    *,
    where: str,
    overrides: Mapping[str, str] | None = None,
    default_gpu_type: str | None = None,
) -> MachineShape:
    """The smallest shape for ``resources``; see the module docstring for the rule.

    An override wins over the table; its shape carries the overridden GPU count and no
    vCPUs or memory (the service knows them). ``where`` names the backend in errors.

    Raises ``ValueError`` for an unknown GPU type (naming the known ones), a GPU type without
    GPUs, and a request larger than every machine of its kind (naming the largest).
    """
    table = list(shapes)
    overrides = overrides or {}
    gpu_type = requested_gpu_type(resources, default_gpu_type)
    known = known_gpu_types(table, overrides)
    if gpu_type is not None and gpu_type not in known:
        raise ValueError(
            f"unknown GPU type {resources.gpu_type or default_gpu_type!r} for {where}; known "
            f"types: {', '.join(known)} (an 'nvidia-'/'tesla-' prefix is optional), or add "
            f"'<gpu_type>:<count>' to the backend's machine_types setting"
        )
    chosen = _override(overrides, gpu_type, resources.gpu_count)
    if chosen is not None:
        return chosen
    order = {shape.name: index for index, shape in enumerate(table)}
    fits = [shape for shape in table if shape.fits(resources, gpu_type)]
    if fits:
        return min(fits, key=lambda s: (s.gpu_count, s.cpu, s.memory_gb, order[s.name]))
    what = f"{resources.gpu_count} x {gpu_type} GPUs, " if gpu_type else ""
    kind = [shape for shape in table if shape.gpu_type == gpu_type]
    largest = max(kind, key=lambda s: (s.gpu_count, s.cpu, s.memory_gb), default=None)
    biggest = (
        f"; the largest is {largest.name} ({largest.gpu_count} GPUs, {largest.cpu:g} vCPUs, "
        f"{largest.memory_gb:g} GiB)"
        if largest
        else ""
    )
    raise ValueError(
        f"no {where} machine offers {what}{resources.cpu:g} vCPUs and {resources.memory_gb:g} "
        f"GiB{biggest}; ask for less, or name a machine in the backend's machine_types setting"
    )
