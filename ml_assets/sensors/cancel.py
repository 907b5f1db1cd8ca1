"""An explicit cancel: a job a user launches from the UI to stop a model's training in flight."""

import dagster as dg
from pydantic import Field

from ml_assets.assets.common import EVENT_TAG, JOB_ID_TAG, ModelContext
from ml_assets.sensors.reconciler import CANCEL_REQUESTED, ReconcilerCursor, fold_events
from ml_assets.teams.spec import TeamSpec


class CancelTrainingConfig(dg.Config):
    """Which training to stop."""

    model: str = Field(description="The model whose in-flight training jobs to cancel.")
    job_id: str = Field(
        default="", description="Cancel only this job; empty cancels all of the model's jobs."
    )


def build_cancel_job(team: TeamSpec) -> dg.JobDefinition:
    """``<team>_cancel_training``: cancel a model's jobs; the reconciler records the outcome."""

    @dg.op(name=f"{team.team}_cancel_training_op")
    def cancel_training(context: dg.OpExecutionContext, config: CancelTrainingConfig) -> None:
        if config.model not in team.models:
            raise dg.Failure(
                description=f"unknown model {config.model!r}; {team.team} has: "
                + ", ".join(team.models)
            )
        inflight = fold_events(context.instance, team, ReconcilerCursor()).inflight
        targets = [
            job
            for job in inflight.values()
            if job.model == config.model and config.job_id in ("", job.handle.job_id)
        ]
        if not targets:
            context.log.warning(f"{config.model} has no training job in flight to cancel")
        key = ModelContext(team, config.model).keys.trained
        for job in targets:
            team.load_backend(job.handle.backend).cancel(job.handle)
            context.log.info(f"cancel requested for {job.handle.job_id} on {job.handle.backend}")
            context.log_event(
                dg.AssetObservation(
                    asset_key=key,
                    description=f"Cancel requested for training job {job.handle.job_id}.",
                    metadata={"status": CANCEL_REQUESTED, "job_id": job.handle.job_id},
                    tags={EVENT_TAG: CANCEL_REQUESTED, JOB_ID_TAG: job.handle.job_id},
                )
            )

    @dg.job(
        name=f"{team.team}_cancel_training",
        description="Cancel a model's training jobs in flight (set `model`, optionally `job_id`).",
        tags={"ml_assets/team": team.team},
    )
    def cancel_job() -> None:
        cancel_training()

    return cancel_job
