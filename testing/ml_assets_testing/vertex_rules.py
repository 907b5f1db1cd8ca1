"""What Vertex AI checks in a ``CreateCustomJob`` request, from its documentation.

* The body must parse as the ``google.cloud.aiplatform.v1.CustomJob`` message (the official
  protos): an unknown field, a wrong type or an unknown enum value is ``400 INVALID_ARGUMENT``,
  as Google's JSON front end answers.
* ``displayName``: required, at most 128 characters.
* ``labels`` (the CustomJob reference and the resource-labels rules): at most 64; keys and
  values at most 64 characters of lowercase letters (international ones too), digits, ``_`` and
  ``-``; keys start with a letter and are not empty.
* ``jobSpec.workerPoolSpecs``: at least one; the first pool has exactly one replica (it is the
  primary replica); every pool has a ``machineSpec.machineType`` and exactly one of
  ``containerSpec`` (with ``imageUri``) or ``pythonPackageSpec``; a boot disk is ``pd-ssd``,
  ``pd-standard`` or ``hyperdisk-balanced`` of 100 to 64,000 GB.
* machine types and GPUs (custom-training compute and Compute Engine GPU machine types):
  the machine type must be one offered for custom training; accelerator-optimized machines
  come with a fixed GPU model and count (``a2-highgpu-{1,2,4,8}g`` and ``a2-megagpu-16g``: A100
  40GB; ``a2-ultragpu-{1,2,4,8}g``: A100 80GB; ``a3-highgpu-{1,2,4,8}g``: H100 80GB;
  ``a3-megagpu-8g``: H100 Mega; ``a3-ultragpu-8g``: H200; ``g2-standard-{4,8,12,16,32}``: one L4,
  ``g2-standard-24``: 2, ``-48``: 4, ``-96``: 8), which the request must name exactly; other GPUs
  attach only to N1 machines, in the counts Compute Engine offers (T4 and P4: 1, 2, 4; P100: 1,
  2, 4; V100: 1, 2, 4, 8) and only up to a number of vCPUs per count (T4: 48, 48, 96; P4: 24, 48,
  96; P100: 16, 32, 64; V100: 12, 24, 48, 96); no other machine takes a GPU; a count needs a
  type and a type needs a positive count. K80s are past end of support.
* ``jobSpec.baseOutputDirectory.outputUriPrefix``: a ``gs://`` URI.
"""

from __future__ import annotations

import json
from typing import Any

DISPLAY_NAME_MAX = 128
LABELS_MAX = 64
LABEL_TEXT_MAX = 64
BOOT_DISK_TYPES = ("pd-ssd", "pd-standard", "hyperdisk-balanced")
BOOT_DISK_GB = (100, 64_000)

# Machine types offered for custom training that come without GPUs, with their vCPUs.
CPU_MACHINES: dict[str, int] = {
    **{f"e2-standard-{n}": n for n in (4, 8, 16, 32)},
    **{f"e2-highmem-{n}": n for n in (2, 4, 8, 16)},
    **{f"e2-highcpu-{n}": n for n in (16, 32)},
    **{f"n2-standard-{n}": n for n in (4, 8, 16, 32, 48, 64, 80)},
    **{f"n2-highmem-{n}": n for n in (2, 4, 8, 16, 32, 48, 64, 80)},
    **{f"n2-highcpu-{n}": n for n in (16, 32, 48, 64, 80)},
    **{f"c2-standard-{n}": n for n in (4, 8, 16, 30, 60)},
    **{f"m1-ultramem-{n}": n for n in (40, 80, 160)},
    "m1-megamem-96": 96,
}
# N1 machine types: the only ones GPUs attach to.
N1_MACHINES: dict[str, int] = {
    **{f"n1-standard-{n}": n for n in (4, 8, 16, 32, 64, 96)},
    **{f"n1-highmem-{n}": n for n in (2, 4, 8, 16, 32, 64, 96)},
    **{f"n1-highcpu-{n}": n for n in (16, 32, 64, 96)},
}
# Accelerator-optimized machine types: the GPU model and count each one comes with.
FIXED_GPU_MACHINES: dict[str, tuple[str, int]] = {
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA_H100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("NVIDIA_H100_MEGA_80GB", 8),
    "a3-ultragpu-8g": ("NVIDIA_H200_141GB", 8),
    **{f"g2-standard-{n}": ("NVIDIA_L4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2),
    "g2-standard-48": ("NVIDIA_L4", 4),
    "g2-standard-96": ("NVIDIA_L4", 8),
}
# GPUs that attach to N1 machines: count -> the most vCPUs the machine may have.
N1_GPUS: dict[str, dict[int, int]] = {
    "NVIDIA_TESLA_T4": {1: 48, 2: 48, 4: 96},
    "NVIDIA_TESLA_P4": {1: 24, 2: 48, 4: 96},
    "NVIDIA_TESLA_P100": {1: 16, 2: 32, 4: 64},
    "NVIDIA_TESLA_V100": {1: 12, 2: 24, 4: 48, 8: 96},
}


def machine_problem(machine_type: str, accelerator: str, count: int) -> str | None:
    """Why Vertex AI would refuse this ``machineSpec`` for custom training, or ``None``.

    ``accelerator`` is the ``AcceleratorType`` name (``""`` or ``ACCELERATOR_TYPE_UNSPECIFIED``
    for none).
    """
    accelerator = "" if accelerator == "ACCELERATOR_TYPE_UNSPECIFIED" else accelerator
    if count < 0:
        return f"acceleratorCount must not be negative, got {count}"
    if count and not accelerator:
        return f"acceleratorCount {count} is set but acceleratorType is not"
    if accelerator and count == 0:
        return f"acceleratorType {accelerator} needs a positive acceleratorCount"
    if accelerator == "NVIDIA_TESLA_K80":
        return "NVIDIA_TESLA_K80 has reached end of support"
    if machine_type in FIXED_GPU_MACHINES:
        gpu, fixed = FIXED_GPU_MACHINES[machine_type]
        if accelerator != gpu or count != fixed:
            return (
                f'Machine type "{machine_type}" comes with {fixed} x {gpu}; set acceleratorType '
                f"{gpu} and acceleratorCount {fixed} (got {count} x {accelerator or 'none'})"
            )
        return None
    if machine_type in N1_MACHINES:
        if not accelerator:
            return None
        offers = N1_GPUS.get(accelerator)
        if offers is None:
            return f'Accelerator "{accelerator}" is not supported for machine type "{machine_type}"'
        if count not in offers:
            counts = ", ".join(str(n) for n in offers)
            return (
                f"{accelerator} is offered in counts of {counts} per machine, not {count} "
                f'(machine type "{machine_type}")'
            )
        vcpus = N1_MACHINES[machine_type]
        if vcpus > offers[count]:
            return (
                f'Machine type "{machine_type}" has {vcpus} vCPUs; {count} x {accelerator} '
                f"supports at most {offers[count]}"
            )
        return None
    if machine_type in CPU_MACHINES:
        if accelerator:
            return (
                f'Accelerator "{accelerator}" is not supported for machine type '
                f'"{machine_type}": only N1 machine types take attached GPUs'
            )
        return None
    return f'Machine type "{machine_type}" is not supported for custom training'


def _label_text_ok(text: str, *, key: bool) -> bool:
    if len(text) > LABEL_TEXT_MAX or (key and not text):
        return False
    if key and not (text[0].isalpha() and not text[0].isupper()):
        return False
    return all(
        (char.isalpha() and not char.isupper()) or char.isdigit() or char in "_-" for char in text
    )


def label_problem(labels: dict[str, str]) -> str | None:
    if len(labels) > LABELS_MAX:
        return f"at most {LABELS_MAX} labels are allowed, got {len(labels)}"
    for key, value in labels.items():
        if not _label_text_ok(key, key=True):
            return (
                f"invalid label key {key!r}: keys have 1 to {LABEL_TEXT_MAX} lowercase letters, "
                "digits, '_' or '-', starting with a letter"
            )
        if not _label_text_ok(value, key=False):
            return (
                f"invalid label value {value!r} of {key!r}: values have at most "
                f"{LABEL_TEXT_MAX} lowercase letters, digits, '_' or '-'"
            )
    return None


def parse_custom_job(body: bytes) -> Any:
    """The ``CustomJob`` message of a request body; ``ValueError`` with the parse error."""
    from google.cloud.aiplatform_v1.types import CustomJob
    from google.protobuf.json_format import ParseError

    try:
        return CustomJob.from_json(body or b"{}", ignore_unknown_fields=False)
    except (ParseError, json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"Invalid JSON payload received. {error}") from None


def custom_job_problem(job: Any) -> str | None:
    """Why Vertex AI would refuse this ``CustomJob`` (a parsed message), or ``None``."""
    if not job.display_name or len(job.display_name) > DISPLAY_NAME_MAX:
        return f"displayName must have 1 to {DISPLAY_NAME_MAX} characters"
    problem = label_problem(dict(job.labels))
    if problem:
        return problem
    pools = list(job.job_spec.worker_pool_specs)
    if not pools:
        return "jobSpec.workerPoolSpecs is required"
    for index, pool in enumerate(pools):
        where = f"jobSpec.workerPoolSpecs[{index}]"
        if index == 0 and pool.replica_count != 1:
            return f"{where}.replicaCount must be 1 (the first pool is the primary replica)"
        if index > 0 and pool.replica_count < 0:
            return f"{where}.replicaCount must not be negative"
        machine = pool.machine_spec
        if not machine.machine_type:
            return f"{where}.machineSpec.machineType is required"
        problem = machine_problem(
            machine.machine_type, machine.accelerator_type.name, machine.accelerator_count
        )
        if problem:
            return f"{where}.machineSpec: {problem}"
        task = pool._pb.WhichOneof("task")
        if task is None:
            return f"{where}: one of containerSpec or pythonPackageSpec is required"
        if task == "container_spec" and not pool.container_spec.image_uri:
            return f"{where}.containerSpec.imageUri is required"
        disk = pool.disk_spec
        if disk.boot_disk_type and disk.boot_disk_type not in BOOT_DISK_TYPES:
            return f"{where}.diskSpec.bootDiskType must be one of {', '.join(BOOT_DISK_TYPES)}"
        low, high = BOOT_DISK_GB
        if disk.boot_disk_size_gb and not low <= disk.boot_disk_size_gb <= high:
            return f"{where}.diskSpec.bootDiskSizeGb must be between {low} and {high}"
    output = job.job_spec.base_output_directory.output_uri_prefix
    if output and not output.startswith("gs://"):
        return f"baseOutputDirectory.outputUriPrefix must be a gs:// URI, got {output!r}"
    return None
