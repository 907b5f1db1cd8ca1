"""The trained-model asset: submits a training job and returns without waiting for it.

The step records the job's handle as an ``AssetObservation`` and ends in seconds; the team's
reconciling sensor materializes the asset when the job finishes, however long that takes.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_pipes import decode_param

from ml_assets import storage, transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata
from ml_assets.backends import backend_resource_key
from ml_assets.backends.base import (
    Backend,
    JobHandle,
    JobSpec,
    Resources,
    idempotency_key,
    job_name_for,
)
from ml_assets.policy import PlatformPolicy, load_policy
from ml_assets.tags import ADMISSION_TAG, EVENT_TAG, JOB_ID_TAG, KUEUE_QUEUE_LABEL
from ml_assets.teams.spec import TrainerSpec
from ml_assets.training.builtin import BUILTIN_TRAINERS
from ml_assets.training.messages import messages_params, pipes_context, pipes_env

CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"

TRAINING_LOGIC_VERSION = "2"
RUNNER = ["python", "-m", "ml_assets.training.runner"]
SUBMITTED = "submitted"
# A GPU job waiting for its pool and its team's quota; the platform's admission sensor records
# ``admitted`` and the team's reconciler then submits it (see ml_assets.sensors.admission).
QUEUED = "queued"
ADMITTED = "admitted"
ADMISSION_SENSOR = "gpu_admission"
TRAINING_CHECK = "training_succeeded"


def build_job_spec(
    model: ModelContext,
    *,
    run_id: str,
    features_uri: str,
    features_data_version: str,
    home: Path,
    storage_root: str | None,
    policy: PlatformPolicy | None = None,
) -> JobSpec:
    """The first attempt of the job that trains ``model`` on one features file.

    A function trainer runs the library's runner (staged, so its image needs ml_assets); a
    command trainer runs the team's command in the team's image as it is. Either way the job
    gets its Dagster Pipes context (the extras below) and message location in its environment.
    Jobs write under ``<storage_root>/jobs/<team>/<model>/`` when the backend has object storage
    (a remote backend's ``storage_root`` setting), else under ``<home>/jobs/``.
    """
    jobs_root = transport.join(storage_root, "jobs") if storage_root else str(home / "jobs")
    spec, team = model.spec, model.team.team
    trainer = spec.trainer
    extras = {
        "trainer": trainer.reference,
        "hyperparameters": trainer.hyperparameters,
        "seed": trainer.seed,
        "task": spec.task,
        "features_uri": features_uri,
        "features_data_version": features_data_version,
        "label": "label",
    }
    if trainer.reference is not None:
        command, staged, working_dir = list(RUNNER), True, None
    else:
        command, staged = list(trainer.command or []), False
        working_dir = trainer.working_dir
        if working_dir is None and spec.backend == "local" and model.team.folder:
            working_dir = str(model.team.folder)
    draft = JobSpec(
        team=team,
        model=model.name,
        command=command,
        output_uri=transport.join(jobs_root, team, model.name, "draft"),
        idempotency_key="draft",
        backend=spec.backend,
        resources=spec.resources,
        env=pipes_env(pipes_context([team, model.name], run_id, 0, extras), {}),
        labels={
            "ml-assets-team": team,
            "ml-assets-model": model.name,
            **kueue_labels(team, spec.backend, spec.resources, policy or load_policy()),
        },
        image=trainer.image,
        staged=staged,
        working_dir=working_dir,
    )
    return for_attempt(draft, run_id=run_id, attempt=1)


def job_extras(spec: JobSpec) -> dict[str, Any]:
    """The Pipes extras a job was given (its trainer, features, hyperparameters...)."""
    context = decode_param(spec.env[CONTEXT_ENV])["data"]
    extras: dict[str, Any] = context["extras"]
    return extras


def for_attempt(spec: JobSpec, *, run_id: str, attempt: int) -> JobSpec:
    """The same job for another attempt: its own key, its own output folder beside the rest,
    and a Pipes context and message location to match."""
    key = idempotency_key(spec.team, spec.model, run_id, attempt)
    output = transport.sibling(spec.output_uri, job_name_for(spec.team, spec.model, key))
    context = pipes_context([spec.team, spec.model], run_id, attempt - 1, job_extras(spec))
    env = {
        **spec.env,
        **pipes_env(context, messages_params(output, spec.staged)),
    }
    return spec.model_copy(update={"idempotency_key": key, "output_uri": output, "env": env})


def kueue_labels(
    team: str, backend: str, resources: Resources, policy: PlatformPolicy
) -> dict[str, str]:
    """The label that hands a job to Kueue when its GPU pool is Kueue's, else nothing."""
    pool = policy.pool_for(backend, resources.gpu_count, resources.gpu_type)
    if pool is None or not policy.pools[pool].kueue:
        return {}
    queue = policy.grant(team).kueue_queue
    if not queue:
        raise ValueError(
            f"{policy.source or 'the platform policy'}: GPU pool {pool!r} is admitted by Kueue, "
            f"but teams.{team}.kueue_queue names no LocalQueue for team {team!r}"
        )
    return {KUEUE_QUEUE_LABEL: queue}


def admission_pool(spec: JobSpec, policy: PlatformPolicy | None = None) -> str | None:
    """The GPU pool whose admission queue ``spec`` waits in before it is submitted: None for a
    job that asks for no GPU, that no pool holds, or whose pool Kueue admits."""
    policy = policy or load_policy()
    pool = policy.pool_for(spec.backend, spec.resources.gpu_count, spec.resources.gpu_type)
    if pool is None or policy.pools[pool].kueue:
        return None
    return pool


def queue_event(
    model: ModelContext,
    spec: JobSpec,
    pool: str,
    *,
    run_id: str,
    attempt: int,
    code_version: str | None,
    features_storage_id: int | None,
) -> dg.AssetObservation:
    """The durable record of a job waiting for GPUs: everything its submission needs later
    (the exact spec, as a submission record holds it), keyed by the job's name."""
    entry = spec.job_name
    gpus = spec.resources.gpu_count
    record = {
        "spec": spec.model_dump(mode="json"),
        "run_id": run_id,
        "attempt": attempt,
        "code_version": code_version or "",
        "features_storage_id": features_storage_id,
        "features_uri": job_extras(spec).get("features_uri", ""),
        "team": spec.team,
        "pool": pool,
        "gpus": gpus,
    }
    return dg.AssetObservation(
        asset_key=model.keys.trained,
        description=f"queued for GPU: job {entry} (attempt {attempt}) waits for {gpus} GPU(s) "
        f"of pool {pool}; the {ADMISSION_SENSOR} sensor admits it when the pool and team "
        f"{spec.team}'s quota there have room.",
        metadata={
            "status": QUEUED,
            "job_id": entry,
            "team": spec.team,
            "model": spec.model,
            "pool": pool,
            "gpus": gpus,
            "attempt": attempt,
            "idempotency_key": spec.idempotency_key,
            "job": dg.MetadataValue.json(record),
        },
        tags={EVENT_TAG: QUEUED, JOB_ID_TAG: entry, ADMISSION_TAG: entry},
    )


def submit(backend: Backend, spec: JobSpec) -> JobHandle:
    """Submit ``spec``, its output folder made first when it is a path: a team's script writes
    its messages and artifact there itself, and a shared volume has no folder for a new job."""
    if transport.is_local(spec.output_uri):
        transport.local_path(spec.output_uri).mkdir(parents=True, exist_ok=True)
    return backend.submit(spec)


def stage_features(features_path: str, data_version: str, storage_root: str | None) -> str:
    """Where the job reads its features: the local file, or a copy in the backend's storage.

    Copies are named by content hash, so a file is uploaded once however many jobs read it.
    """
    if not storage_root or transport.is_local(storage_root):
        return features_path
    target = transport.join(storage_root, "inputs", f"{data_version}.parquet")
    if not transport.exists(target):
        transport.upload_file(Path(features_path), target)
    return target


def submission_event(
    model: ModelContext,
    handle: JobHandle,
    spec: JobSpec,
    *,
    run_id: str,
    attempt: int,
    code_version: str | None,
    features_storage_id: int | None,
    admission: str | None = None,
) -> dg.AssetObservation:
    """The durable record of a job in flight: what the sensor needs to find it again, and the
    exact spec, so that a retry reruns the same job even if the team's YAML changed since.
    ``admission`` is the queue entry of a job that waited for GPUs."""
    record = {
        "handle": handle.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "run_id": run_id,
        "attempt": attempt,
        "code_version": code_version or "",
        "features_storage_id": features_storage_id,
        "features_uri": job_extras(spec).get("features_uri", ""),
    }
    return dg.AssetObservation(
        asset_key=model.keys.trained,
        description=f"Job {handle.job_id} submitted to {handle.backend}, attempt {attempt}.",
        metadata={
            "status": "submitted",
            "job_id": handle.job_id,
            "backend": handle.backend,
            "attempt": attempt,
            "output": dg.MetadataValue.path(handle.output_uri),
            "job": dg.MetadataValue.json(record),
        },
        tags={
            EVENT_TAG: SUBMITTED,
            JOB_ID_TAG: handle.job_id,
            **({ADMISSION_TAG: admission} if admission else {}),
        },
    )


def build_training_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>`` asset: submit the training job; the sensor materializes it later."""
    spec, keys = model.spec, model.keys

    settings = model.asset_settings(_trainer_kind(spec.trainer), spec.backend)

    # A multi-asset so the step may end without the model or its check: the reconciler
    # records both when the job finishes (a skippable output, a check the step does not run).
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                keys.trained,
                deps=[keys.features],
                skippable=True,
                description=(
                    f"{spec.description or model.name} — {spec.task} model trained by "
                    f"{spec.trainer.label} on the {spec.backend} backend. Materialized by the "
                    f"{model.team.team}_training_reconciler sensor when the job finishes."
                ),
                code_version=code_version(TRAINING_LOGIC_VERSION, spec.trainer.model_dump()),
                group_name=settings["group_name"],
                owners=settings["owners"],
                tags=settings["tags"],
                kinds=settings["kinds"],
            )
        ],
        check_specs=[
            dg.AssetCheckSpec(
                TRAINING_CHECK,
                asset=keys.trained,
                description="The latest training job that ended produced a model. The "
                "reconciler records it; a failure that retries did not fix turns it red, with "
                "the message, the log tail and the attempts, and the next good job turns it "
                "green.",
            )
        ],
        can_subset=True,
        name=keys.trained.to_python_identifier(),
        pool="gpu" if spec.resources.gpu_count else None,
        required_resource_keys={backend_resource_key(spec.backend)},
    )
    def trained_model(context: dg.AssetExecutionContext) -> Iterator[Any]:
        features = latest_metadata(context.instance, keys.features, prefer_run=context.run_id)
        resource = getattr(context.resources, backend_resource_key(spec.backend))
        storage_root = getattr(resource, "storage_root", None)
        job_spec = build_job_spec(
            model,
            run_id=context.run_id,
            features_uri=stage_features(
                str(features["path"]), str(features["data_version"]), storage_root
            ),
            features_data_version=str(features["data_version"]),
            home=storage.home(context.instance),
            storage_root=storage_root,
        )
        pool = admission_pool(job_spec)
        if pool is not None:
            # No GPU is promised yet: record the job as waiting and end the step; the platform's
            # admission sensor and the team's reconciler submit it when its turn comes.
            queued = queue_event(
                model,
                job_spec,
                pool,
                run_id=context.run_id,
                attempt=1,
                code_version=context.assets_def.code_versions_by_key.get(keys.trained),
                features_storage_id=features["__storage_id__"],
            )
            context.log.info(
                f"Training job {job_spec.job_name} asks for {job_spec.resources.gpu_count} "
                f"GPU(s) of pool {pool}: it is queued for GPU, not submitted. The "
                f"{ADMISSION_SENSOR} sensor admits it in fair-share order when the pool and "
                f"{model.team.team}'s quota have room; the {model.team.team}_training_reconciler "
                "sensor then submits it. The steps after this one are skipped in this run, not "
                "stopped."
            )
            yield queued
            return
        backend = resource.get_backend()
        handle = submit(backend, job_spec)
        try:
            handed = (
                f"Training job {handle.job_id} was submitted to {handle.backend} and handed to "
                f"the {model.team.team}_training_reconciler sensor. The steps after this one "
                "are skipped in this run, not stopped: evaluation, registration and the rest run "
                "automatically when the sensor records the model."
            )
            context.log.info(handed)
            event = submission_event(
                model,
                handle,
                job_spec,
                run_id=context.run_id,
                attempt=1,
                code_version=context.assets_def.code_versions_by_key.get(keys.trained),
                features_storage_id=features["__storage_id__"],
            )
            yield dg.AssetObservation(
                asset_key=event.asset_key,
                description=handed,
                metadata={
                    **event.metadata,
                    "handed_to": f"{model.team.team}_training_reconciler",
                },
                tags=event.tags,
            )
        except BaseException:
            # The run was terminated while recording the job: leave nothing running untracked.
            backend.cancel(handle)
            raise

    return trained_model


def _trainer_kind(trainer: TrainerSpec) -> str:
    """The kind the UI shows for how the model is trained."""
    if trainer.function is None:
        return "docker"
    if trainer.function == "torch_mlp":
        return "pytorch"
    return "scikit-learn" if trainer.function in BUILTIN_TRAINERS else "python"
