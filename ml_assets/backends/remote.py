"""What every remote backend shares: the staged command, and reading a finished job's outcome.

A remote job runs ``ml_assets.training.stage``, which gives the real command a local output
directory and uploads it to the job's ``output_uri`` in object storage (see
``ml_assets.transport``): ``result.json`` on success, ``failure.json`` on a non-zero exit, and
``job.log``/``progress.json`` as it goes. So a backend needs its service only for the job's
state; the result, the failure message and the progress read the same way everywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ml_assets import transport
from ml_assets.backends.base import JobSpec, JobState, JobStatus

STAGE_MODULE = "ml_assets.training.stage"
NO_RESULT = "the job exited successfully without writing result.json"


def staged_command(spec: JobSpec, sync_seconds: float = 10.0) -> list[str]:
    """The container command that runs ``spec.command`` and ships its output to ``output_uri``."""
    return [
        "python",
        "-m",
        STAGE_MODULE,
        "--output-uri",
        spec.output_uri,
        "--sync-seconds",
        f"{sync_seconds:g}",
        "--",
        *spec.command,
    ]


def output_location(storage_root: str, spec: JobSpec) -> str:
    """Where a remote job writes: ``<storage_root>/jobs/<team>/<model>/<job name>``."""
    return transport.join(storage_root, "jobs", spec.team, spec.model, spec.job_name)


def _read_json(uri: str) -> Any:
    with contextlib.suppress(transport.ObjectNotFound):
        return transport.read_json(uri)
    return None


def progress(output_uri: str) -> float | None:
    """The fraction the job last reported in ``progress.json``, if any."""
    document = _read_json(transport.join(output_uri, "progress.json"))
    if isinstance(document, dict) and isinstance(document.get("fraction"), int | float):
        return max(0.0, min(1.0, float(document["fraction"])))
    return None


def finished_status(
    job_id: str, state: JobState, output_uri: str, service_message: str = ""
) -> JobStatus:
    """The status of a job its service reports as ended (``state`` terminal).

    Success needs ``result.json`` in the output; a failure's message is the staged
    ``failure.json`` (the command's exit status and last log lines), or the service's own.
    """
    if state == JobState.SUCCEEDED:
        result_uri = transport.join(output_uri, "result.json")
        if transport.exists(result_uri):
            return JobStatus(job_id=job_id, state=state, progress=1.0, result_uri=result_uri)
        return JobStatus(job_id=job_id, state=JobState.FAILED, message=NO_RESULT)
    if state == JobState.FAILED:
        failure = _read_json(transport.join(output_uri, "failure.json"))
        staged = failure.get("message", "") if isinstance(failure, dict) else ""
        message = "; ".join(part for part in (service_message, staged) if part)
        return JobStatus(job_id=job_id, state=state, message=message or "the job failed")
    return JobStatus(job_id=job_id, state=state, message=service_message)


def log_tail(text: str, tail: int) -> str:
    """The last ``tail`` lines of ``text``."""
    lines = text.splitlines()
    return "\n".join(lines[-tail:]) if tail > 0 else ""


def read_log(output_uri: str, tail: int) -> str:
    """The last lines of the staged ``job.log`` (empty before the first upload)."""
    with contextlib.suppress(transport.ObjectNotFound):
        return log_tail(
            transport.read_bytes(transport.join(output_uri, "job.log")).decode(errors="replace"),
            tail,
        )
    return ""
