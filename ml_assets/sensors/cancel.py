"""Cancel and retry training from the UI: ``<team>_cancel_training`` and ``<team>_retry_training``.

Each job's only config is which model (a choice among the team's models, the first by default)
and optionally which of its jobs, so "Launch run" works as the launchpad opens it. Neither job
waits for anything: each records an observation on the trained-model asset that the team's
reconciler acts on, as it does for the trained-model step's own submissions.

- Cancel records ``cancel_requested`` for the model's jobs in flight (and asks the backend to
  stop them); the reconciler records ``cancelled`` when the job has stopped.
- Retry resubmits the exact spec of a job that failed for good (``failed``: its attempts used
  up, or its retry not submitted) as the next attempt of the same run, and records the new
  submission, which the reconciler then follows like any other. The attempt's key comes from the
  failed job, so a second launch finds the job already resubmitted and submits nothing.

Both read the trained-model asset's event log, where every job's submission record (with its
spec) and outcome is kept (see ``ml_assets.sensors.reconciler``).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import (
    QUEUED,
    SUBMITTED,
    admission_pool,
    for_attempt,
    queue_event,
    submission_event,
    submit,
)
from ml_assets.backends import backend_resource_keys, resource_backend
from ml_assets.backends.base import JobHandle, JobSpec
from ml_assets.sensors.reconciler import (
    CANCEL_REQUESTED,
    CANCELLED,
    FAILED,
    MATERIALIZED,
    RETRIED,
    TERMINAL_EVENTS,
)
from ml_assets.tags import ADMISSION_TAG, EVENT_TAG, JOB_ID_TAG, TEAM_TAG
from ml_assets.teams.spec import TeamSpec

PAGE = 1000


@dataclass
class TrainingJob:
    """One training job of a model, as the event log tells it."""

    job_id: str
    handle: JobHandle
    spec: JobSpec
    run_id: str
    attempt: int
    code_version: str
    features_storage_id: int | None
    submitted_at: int  # the storage id of its submission record
    outcome: str = ""  # materialized, retried, failed or cancelled; empty while in flight
    outcome_at: int = 0
    retry_job_id: str = ""
    cancel_requested: bool = False
    # Waiting for GPUs in the admission queue, not submitted (its handle is only the would-be
    # one: the job's name and key).
    queued: bool = False

    @property
    def in_flight(self) -> bool:
        return not self.outcome

    def describe(self) -> str:
        if self.in_flight and self.queued:
            return f"is queued for GPU, not yet submitted (attempt {self.attempt})"
        if self.in_flight:
            return f"is still in flight (attempt {self.attempt})"
        return {
            MATERIALIZED: "succeeded",
            RETRIED: f"failed and was retried automatically as {self.retry_job_id}",
            FAILED: "failed for good",
            CANCELLED: "was cancelled",
        }.get(self.outcome, self.outcome)


def training_jobs(instance: dg.DagsterInstance, model: ModelContext) -> dict[str, TrainingJob]:
    """Every training job of ``model`` recorded on its trained-model asset, oldest first.

    Folded as the reconciler folds: a submission record starts tracking a job (again, if it
    comes after an outcome), an outcome ends it.
    """
    key = model.keys.trained
    records = sorted(
        [*_all(instance.fetch_observations, key), *_all(instance.fetch_materializations, key)],
        key=lambda r: r.storage_id,
    )
    jobs: dict[str, TrainingJob] = {}
    for record in records:
        event = record.asset_event
        tags = (event.tags if event is not None else None) or {}
        kind, job_id = tags.get(EVENT_TAG), tags.get(JOB_ID_TAG)
        if event is None or not job_id:
            continue
        known = jobs.get(job_id)
        if kind == QUEUED and (known is None or not known.in_flight):
            waiting = _queued_job(job_id, event, record.storage_id)
            if waiting is not None:
                jobs[job_id] = waiting
            continue
        entry = tags.get(ADMISSION_TAG)
        if kind == SUBMITTED and entry and entry in jobs and jobs[entry].queued:
            del jobs[entry]  # the queued entry was admitted and is now this submitted job
            known = jobs.get(job_id)
        if kind == SUBMITTED and (known is None or not known.in_flight):
            try:
                job: Any = event.metadata["job"].value
                jobs[job_id] = TrainingJob(
                    job_id=job_id,
                    handle=JobHandle.model_validate(job["handle"]),
                    spec=JobSpec.model_validate(job["spec"]),
                    run_id=job["run_id"],
                    attempt=job["attempt"],
                    code_version=job.get("code_version", ""),
                    features_storage_id=job.get("features_storage_id"),
                    submitted_at=record.storage_id,
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # unreadable, e.g. written by an older release: the reconciler skips it
        elif known is None or not known.in_flight:
            continue
        elif kind == CANCEL_REQUESTED:
            known.cancel_requested = True
        elif kind in TERMINAL_EVENTS:
            known.outcome, known.outcome_at = str(kind), record.storage_id
            retry = event.metadata.get("retry_job_id")
            known.retry_job_id = str(retry.value) if retry is not None else ""
    return jobs


def _queued_job(job_id: str, event: Any, storage_id: int) -> TrainingJob | None:
    """A job from its queued record, or None when the record is unreadable."""
    try:
        job: Any = event.metadata["job"].value
        spec = JobSpec.model_validate(job["spec"])
        return TrainingJob(
            job_id=job_id,
            handle=JobHandle.for_spec(spec.backend, spec, {}),
            spec=spec,
            run_id=job["run_id"],
            attempt=job["attempt"],
            code_version=job.get("code_version", ""),
            features_storage_id=job.get("features_storage_id"),
            submitted_at=storage_id,
            queued=True,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _all(fetch: Any, key: dg.AssetKey) -> Iterator[dg.EventLogRecord]:
    cursor = None
    while True:
        result = fetch(dg.AssetRecordsFilter(asset_key=key), limit=PAGE, cursor=cursor)
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def _config_class(team: TeamSpec, job_id_help: str) -> type[dg.Config]:
    """A config with a choice of the team's models, the first by default, and a job id."""
    names = tuple(team.models)

    class TrainingJobConfig(dg.Config):
        model: Literal[names] = Field(  # type: ignore[valid-type]
            default=names[0], description=f"One of {team.team}'s models: {', '.join(names)}."
        )
        job_id: str = Field(default="", description=job_id_help)

    return TrainingJobConfig


def _default_run_config(op_name: str, config: dg.Config) -> dg.RunConfig:
    """The launchpad's starting config: every field written out, so it shows what to change."""
    return dg.RunConfig(ops={op_name: config})


def build_cancel_job(team: TeamSpec) -> dg.JobDefinition:
    """``<team>_cancel_training``: cancel a model's jobs in flight; the reconciler records the
    outcome."""
    config_class = _config_class(
        team, "Cancel only this job; empty cancels every job of the model in flight."
    )
    op_name = f"{team.team}_cancel_training_op"

    @dg.op(name=op_name, required_resource_keys=backend_resource_keys(team.allowed_backends))
    def cancel_training(context: dg.OpExecutionContext, config: config_class) -> None:  # type: ignore[valid-type]
        values: Any = config
        model = ModelContext(team, values.model)
        jobs = training_jobs(context.instance, model)
        targets = [
            job for job in jobs.values() if job.in_flight and values.job_id in ("", job.job_id)
        ]
        if values.job_id and not targets:
            known = jobs.get(values.job_id)
            raise dg.Failure(
                description=f"training job {values.job_id} of {model.name} "
                + (known.describe() if known else "is not recorded")
                + "; there is nothing to cancel."
            )
        if not targets:
            context.log.warning(f"{model.name} has no training job in flight to cancel")
        for job in targets:
            if job.queued:
                # Never submitted: the reconciler drops it from the queue and records it
                # cancelled (it alone submits admitted jobs, so the two cannot cross).
                context.log.info(
                    f"cancel requested for {job.job_id}, queued for GPU: the "
                    f"{team.team}_training_reconciler sensor removes it from the queue, and it "
                    "is never submitted"
                )
                context.log_event(
                    dg.AssetObservation(
                        asset_key=model.keys.trained,
                        description=f"Cancel requested for training job {job.job_id}, queued "
                        "for GPU: it leaves the queue unsubmitted.",
                        metadata={"status": CANCEL_REQUESTED, "job_id": job.job_id},
                        tags={
                            EVENT_TAG: CANCEL_REQUESTED,
                            JOB_ID_TAG: job.job_id,
                            ADMISSION_TAG: job.job_id,
                        },
                    )
                )
                continue
            resource_backend(context.resources, job.handle.backend).cancel(job.handle)
            context.log.info(
                f"cancel requested for {job.job_id} on {job.handle.backend}; the "
                f"{team.team}_training_reconciler sensor records `cancelled` when it has stopped"
            )
            context.log_event(
                dg.AssetObservation(
                    asset_key=model.keys.trained,
                    description=f"Cancel requested for training job {job.job_id}.",
                    metadata={"status": CANCEL_REQUESTED, "job_id": job.job_id},
                    tags={EVENT_TAG: CANCEL_REQUESTED, JOB_ID_TAG: job.job_id},
                )
            )

    @dg.job(
        name=f"{team.team}_cancel_training",
        description="Cancel a model's training in flight: pick the model (default: "
        f"{next(iter(team.models))}) and launch. Models: {', '.join(team.models)}.",
        tags={TEAM_TAG: team.team},
        config=_default_run_config(op_name, config_class()),
    )
    def cancel_job() -> None:
        cancel_training()

    return cancel_job


def retry_target(jobs: dict[str, TrainingJob], model: str, job_id: str) -> TrainingJob:
    """The job to retry: ``job_id``, or the model's latest job that failed for good. Raises
    ``dg.Failure`` saying why when there is none, or when it did not fail for good."""
    if job_id:
        job = jobs.get(job_id)
        if job is None:
            recent = ", ".join(list(jobs)[-3:]) or "none"
            raise dg.Failure(
                description=f"{model} has no training job {job_id} (its latest: {recent})."
            )
        if job.outcome != FAILED:
            raise dg.Failure(
                description=f"training job {job_id} of {model} {job.describe()}; only a job "
                "that failed for good can be retried."
            )
        return job
    failed = [job for job in jobs.values() if job.outcome == FAILED]
    if not failed:
        raise dg.Failure(description=f"{model} has no training job that failed for good.")
    return max(failed, key=lambda job: job.outcome_at)


def build_retry_job(team: TeamSpec) -> dg.JobDefinition:
    """``<team>_retry_training``: resubmit a model's job that failed for good, now."""
    config_class = _config_class(
        team, "Retry this job; empty retries the model's latest job that failed for good."
    )
    op_name = f"{team.team}_retry_training_op"
    sensor = f"{team.team}_training_reconciler"

    @dg.op(name=op_name, required_resource_keys=backend_resource_keys(team.allowed_backends))
    def retry_training(context: dg.OpExecutionContext, config: config_class) -> None:  # type: ignore[valid-type]
        values: Any = config
        model = ModelContext(team, values.model)
        jobs = training_jobs(context.instance, model)
        failed = retry_target(jobs, model.name, values.job_id)
        attempt = failed.attempt + 1
        # The next attempt of the same run: its idempotency key follows from the failed job, so
        # a second launch finds it recorded, and the backend's submit returns the same job.
        spec = for_attempt(failed.spec, run_id=failed.run_id, attempt=attempt)
        again = next(
            (j for j in jobs.values() if j.handle.idempotency_key == spec.idempotency_key), None
        )
        if again is not None:
            context.log.info(
                f"{failed.job_id} was already retried as {again.job_id}, which "
                f"{again.describe()}; nothing submitted"
            )
            return
        later = [job for job in jobs.values() if job.submitted_at > failed.outcome_at]
        if later and not values.job_id:
            raise dg.Failure(
                description=f"{model.name}'s latest job that failed for good is "
                f"{failed.job_id}, but {later[-1].job_id} was submitted since and "
                f"{later[-1].describe()}; set job_id: {failed.job_id} to retry it anyway."
            )
        pool = admission_pool(spec)
        if pool is not None:
            context.log_event(
                queue_event(
                    model,
                    spec,
                    pool,
                    run_id=failed.run_id,
                    attempt=attempt,
                    code_version=failed.code_version,
                    features_storage_id=failed.features_storage_id,
                )
            )
            context.log.info(
                f"queued {failed.job_id}'s retry as {spec.job_name} (attempt {attempt} of run "
                f"{failed.run_id}) for GPU in pool {pool}: the platform's admission sensor "
                f"admits it and the {sensor} sensor then submits it"
            )
            return
        handle = submit(resource_backend(context.resources, failed.handle.backend), spec)
        context.log.info(
            f"resubmitted {failed.job_id} as {handle.job_id} on {handle.backend} (attempt "
            f"{attempt} of run {failed.run_id}); the {sensor} sensor records the model when it "
            "finishes, and evaluation and the rest follow automatically"
        )
        context.log_event(
            submission_event(
                model,
                handle,
                spec,
                run_id=failed.run_id,
                attempt=attempt,
                code_version=failed.code_version,
                features_storage_id=failed.features_storage_id,
            )
        )

    @dg.job(
        name=f"{team.team}_retry_training",
        description="Retry now a model's training job that failed for good: pick the model "
        f"(default: {next(iter(team.models))}) and launch; it reruns the same job as a new "
        f"attempt. Models: {', '.join(team.models)}.",
        tags={TEAM_TAG: team.team},
        config=_default_run_config(op_name, config_class()),
    )
    def retry_job() -> None:
        retry_training()

    return retry_job
