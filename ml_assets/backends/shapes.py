"""Machine shapes and GPU names, shared by every backend and by the platform policy.

One GPU naming scheme: a GPU type is its lower-case short name (``t4``, ``a10g``, ``l4``,
``a100-80gb``); ``nvidia-tesla-t4``, ``Tesla-T4``, ``NVIDIA_TESLA_T4`` and ``t4`` are the same.
"""

from __future__ import annotations


def normalize_gpu_type(gpu_type: str) -> str:
    """The short name of a GPU type: ``nvidia-tesla-t4`` and ``NVIDIA_A100_80GB`` become ``t4``
    and ``a100-80gb``."""
    name = gpu_type.strip().lower().replace("_", "-")
    for prefix in ("nvidia-", "tesla-"):
        name = name.removeprefix(prefix)
    return name
