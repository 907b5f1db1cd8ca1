"""What every remote backend shares: the container's command and env, and a finished job's status.

A job runs in one of two shapes (``JobSpec.staged``):

* **staged** (the default): the container runs ``ml_assets.training.stage``, which gives the real
  command a local output directory and uploads it to the job's ``output_uri`` in object storage
  (see ``ml_assets.transport``): ``job.log`` and the Pipes ``messages.jsonl`` as it goes,
  everything at the end, plus ``failure.json`` on a non-zero exit. The image needs ml_assets.
* **unstaged**: the container runs ``spec.command`` as it is, with ``ML_ASSETS_OUTPUT_URI`` set
  to ``output_uri``; the job writes there itself (boto3, a ``dagster_pipes`` blob-store writer,
  ...). For images that do not contain ml_assets.

Either way the job reports through Dagster Pipes messages in its output, and the reconciler,
not the backend, reads them: a job whose service says it ended well is ``SUCCEEDED`` with
``result_uri`` = its output location, and whether it produced a model is for its messages to
say. A backend needs its service only for the job's state; a failure's message adds the staged
``failure.json`` (the exit status and last log lines) to the service's own.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ml_assets import transport
from ml_assets.backends.base import JobSpec, JobState, JobStatus

STAGE_MODULE = "ml_assets.training.stage"
OUTPUT_URI_ENV = "ML_ASSETS_OUTPUT_URI"
FAILURE_FILE = "failure.json"
LOG_FILE = "job.log"


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


def container_command(spec: JobSpec, sync_seconds: float = 10.0) -> list[str]:
    """What the container runs: the staged command, or ``spec.command`` as it is if unstaged."""
    if not spec.command:
        raise ValueError("a JobSpec needs a non-empty command")
    return staged_command(spec, sync_seconds) if spec.staged else list(spec.command)


def container_env(spec: JobSpec) -> dict[str, str]:
    """The job's environment: ``spec.env``, plus ``ML_ASSETS_OUTPUT_URI`` for an unstaged job.

    (A staged job's wrapper sets ``ML_ASSETS_OUTPUT_URI`` itself, to its local directory.)
    """
    env = dict(spec.env)
    if not spec.staged:
        env[OUTPUT_URI_ENV] = spec.output_uri
    return env


def output_location(storage_root: str, spec: JobSpec) -> str:
    """Where a remote job writes: ``<storage_root>/jobs/<team>/<model>/<job name>``."""
    return transport.join(storage_root, "jobs", spec.team, spec.model, spec.job_name)


def _read_json(uri: str) -> Any:
    with contextlib.suppress(transport.ObjectNotFound):
        return transport.read_json(uri)
    return None


def finished_status(
    job_id: str, state: JobState, output_uri: str, service_message: str = ""
) -> JobStatus:
    """The status of a job its service reports as ended (``state`` terminal).

    Success is the service's word alone: ``result_uri`` is the job's output location, where
    its Pipes messages and artifacts are. A failure's message is the service's own plus the
    staged ``failure.json`` (the command's exit status and last log lines), if there is one.
    """
    if state == JobState.SUCCEEDED:
        return JobStatus(job_id=job_id, state=state, message=service_message, result_uri=output_uri)
    if state == JobState.FAILED:
        failure = _read_json(transport.join(output_uri, FAILURE_FILE))
        staged = failure.get("message", "") if isinstance(failure, dict) else ""
        message = "; ".join(part for part in (service_message, staged) if part)
        return JobStatus(job_id=job_id, state=state, message=message or "the job failed")
    return JobStatus(job_id=job_id, state=state, message=service_message)


def log_tail(text: str, tail: int) -> str:
    """The last ``tail`` lines of ``text``."""
    lines = text.splitlines()
    return "\n".join(lines[-tail:]) if tail > 0 else ""


def read_log(output_uri: str, tail: int) -> str:
    """The last lines of the staged ``job.log`` (empty before the first upload, or unstaged)."""
    with contextlib.suppress(transport.ObjectNotFound):
        return log_tail(
            transport.read_bytes(transport.join(output_uri, LOG_FILE)).decode(errors="replace"),
            tail,
        )
    return ""
