"""The trained-model asset: submits a training job and returns without waiting for it.

The step records the job's handle as an ``AssetObservation`` and ends in seconds; the team's
reconciling sensor materializes the asset when the job finishes, however long that takes.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ml_assets import storage, transport
from ml_assets.assets.common import (
    EVENT_TAG,
    JOB_ID_TAG,
    ModelContext,
    code_version,
    latest_metadata,
)
from ml_assets.backends.base import JobHandle, JobSpec, idempotency_key, job_name_for

TRAINING_LOGIC_VERSION = "1"
ENTRYPOINT = ["python", "-m", "ml_assets.training.entrypoint"]
SUBMITTED = "submitted"


def build_job_spec(
    model: ModelContext, *, run_id: str, features_uri: str, home: Path, storage_root: str | None
) -> JobSpec:
    """The first attempt of the job that trains ``model`` on one features file.

    Jobs write under ``<storage_root>/jobs/<team>/<model>/`` when the backend has object storage
    (a remote backend's ``storage_root`` setting), else under ``<home>/jobs/``. The command does
    not name its output location (the backend passes it as ``ML_ASSETS_OUTPUT_URI``), so a retry
    is the same spec under another key: see ``for_attempt``.
    """
    jobs_root = transport.join(storage_root, "jobs") if storage_root else str(home / "jobs")
    spec, team = model.spec, model.team.team
    job = {
        "trainer": spec.trainer.name,
        "hyperparameters": spec.trainer.hyperparameters,
        "features_uri": features_uri,
        "seed": spec.trainer.seed,
    }
    draft = JobSpec(
        team=team,
        model=model.name,
        command=[*ENTRYPOINT, "--job", json.dumps(job, sort_keys=True)],
        output_uri=transport.join(jobs_root, team, model.name, "draft"),
        idempotency_key="draft",
        backend=spec.backend,
        resources=spec.resources,
        labels={"ml-assets-team": team, "ml-assets-model": model.name},
    )
    return for_attempt(draft, run_id=run_id, attempt=1)


def for_attempt(spec: JobSpec, *, run_id: str, attempt: int) -> JobSpec:
    """The same job for another attempt: its own key and its own output folder beside the rest."""
    key = idempotency_key(spec.team, spec.model, run_id, attempt)
    output = transport.sibling(spec.output_uri, job_name_for(spec.team, spec.model, key))
    return spec.model_copy(update={"idempotency_key": key, "output_uri": output})


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
) -> dg.AssetObservation:
    """The durable record of a job in flight: what the sensor needs to find it again, and the
    exact spec, so that a retry reruns the same job even if the team's YAML changed since."""
    record = {
        "handle": handle.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "run_id": run_id,
        "attempt": attempt,
        "code_version": code_version or "",
        "features_storage_id": features_storage_id,
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
        tags={EVENT_TAG: SUBMITTED, JOB_ID_TAG: handle.job_id},
    )


def build_training_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>`` asset: submit the training job; the sensor materializes it later."""
    spec, keys = model.spec, model.keys

    @dg.asset(
        key=keys.trained,
        deps=[keys.features],
        output_required=False,
        description=(
            f"{spec.description or model.name} — trained with {spec.trainer.name} on the "
            f"{spec.backend} backend. Materialized by the {model.team.team}_training_reconciler "
            "sensor when the job finishes."
        ),
        code_version=code_version(TRAINING_LOGIC_VERSION, spec.trainer.model_dump()),
        pool="gpu" if spec.resources.gpu_count else None,
        **model.asset_settings(
            "pytorch" if spec.trainer.name == "torch_mlp" else "scikit-learn", spec.backend
        ),
    )
    def trained_model(context: dg.AssetExecutionContext) -> Iterator[Any]:
        features = latest_metadata(context.instance, keys.features, prefer_run=context.run_id)
        storage_root = model.team.storage_root(spec.backend)
        job_spec = build_job_spec(
            model,
            run_id=context.run_id,
            features_uri=stage_features(
                str(features["path"]), str(features["data_version"]), storage_root
            ),
            home=storage.home(context.instance),
            storage_root=storage_root,
        )
        backend = model.team.load_backend(spec.backend)
        handle = backend.submit(job_spec)
        try:
            context.log.info(
                f"submitted {handle.job_id} to {handle.backend}; this step ends now and the "
                f"{model.team.team}_training_reconciler sensor records the model when it finishes"
            )
            yield submission_event(
                model,
                handle,
                job_spec,
                run_id=context.run_id,
                attempt=1,
                code_version=context.assets_def.code_versions_by_key.get(keys.trained),
                features_storage_id=features["__storage_id__"],
            )
        except BaseException:
            # The run was terminated while recording the job: leave nothing running untracked.
            backend.cancel(handle)
            raise

    return trained_model
