"""What the W&B registry leaves in offline run folders, read back with wandb's own log reader.

The contract suite checks the registry's answers; these tests check that each operation really
landed in W&B's transaction logs (``<dir>/wandb/offline-run-*/run-*.wandb``), which is what
``wandb sync`` uploads later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ml_assets.registries.base import CHALLENGER, PRODUCTION, RegistrationRequest
from ml_assets.registries.wandb import REGISTRATION_FILE, WandbRegistry, artifact_name

pytestmark = pytest.mark.timeout(120)


@dataclass
class LoggedArtifact:
    name: str
    type: str
    digest: str
    aliases: set[str]
    metadata: dict[str, Any]
    files: set[str]


@dataclass
class OfflineRun:
    """The records of one offline run that these tests look at."""

    folder: str
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[LoggedArtifact] = field(default_factory=list)
    exited: bool = False


def offline_runs(registry: WandbRegistry) -> list[OfflineRun]:
    """Every offline run under the registry's dir, in folder-name order (the sync order)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    runs = []
    for folder in sorted((registry.dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        run = OfflineRun(folder=folder.name)
        store = DataStore()
        store.open_for_scan(str(log))
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.job_type = record.run.job_type
                run.config.update(_values(record.run.config.update))
            elif kind == "config":
                run.config.update(_values(record.config.update))
            elif kind == "summary":
                run.summary.update(_values(record.summary.update))
            elif kind == "artifact":
                artifact = record.artifact
                run.artifacts.append(
                    LoggedArtifact(
                        name=artifact.name,
                        type=artifact.type,
                        digest=artifact.digest,
                        aliases=set(artifact.aliases),
                        metadata=json.loads(artifact.metadata),
                        files={entry.path for entry in artifact.manifest.contents},
                    )
                )
            elif kind == "exit":
                run.exited = True
        store.close()
        runs.append(run)
    return runs


def _values(items: Any) -> dict[str, Any]:
    """Top-level key/JSON-value updates of a config or summary record (nested ones skipped)."""
    return {item.key: json.loads(item.value_json) for item in items if item.key}


def request(model_name: str, artifact: Path, job_id: str) -> RegistrationRequest:
    return RegistrationRequest(
        model_name=model_name,
        artifact_path=str(artifact),
        job_id=job_id,
        metrics={"holdout_roc_auc": 0.91},
        params={"C": 0.5, "features": ["x", "y"]},
        lineage={"features_data_version": f"sha-{job_id}", "runs": {"training": ["r1", {"n": 2}]}},
    )


def test_artifact_names_keep_safe_characters_and_replace_the_rest() -> None:
    assert artifact_name("team.model_ab12-cd") == "team.model_ab12-cd"
    assert artifact_name("team/model:v1 beta") == "team-model-v1-beta"
    assert len(artifact_name("m" * 300)) == 128


def test_a_registration_is_one_finished_run_logging_the_model_artifact(
    wandb_registry: WandbRegistry, artifact: Path, model_name: str
) -> None:
    version = wandb_registry.register(request(model_name, artifact, "job-a"))

    (run,) = offline_runs(wandb_registry)
    assert run.exited, "the run was not finished"
    assert run.job_type == "register-model"
    assert run.config["C"] == 0.5 and run.config["features"] == ["x", "y"]
    assert run.config["ml_assets"] == {
        "operation": "register",
        "model_name": model_name,
        "version": "1",
        "job_id": "job-a",
        "link_to": f"wandb-registry-model/{artifact_name(model_name)}",
    }
    assert run.summary["holdout_roc_auc"] == pytest.approx(0.91)
    (logged,) = run.artifacts
    assert (logged.name, logged.type, logged.aliases) == (
        artifact_name(model_name),
        "model",
        {"latest"},
    )
    assert logged.files == {artifact.name, REGISTRATION_FILE}
    assert logged.metadata == {
        "job_id": "job-a",
        "metrics": {"holdout_roc_auc": 0.91},
        "lineage": {
            "features_data_version": "sha-job-a",
            "runs": {"training": ["r1", {"n": 2}]},
            "params": {"C": 0.5, "features": ["x", "y"]},
        },
        "notes": {},
    }
    assert version.lineage == logged.metadata["lineage"]
    assert version.uri == f"wandb://ml-assets-tests/{artifact_name(model_name)}:v0"

    wandb_registry.register(request(model_name, artifact, "job-b"))
    wandb_registry.register(request(model_name, artifact, "job-a"))  # already there: no run
    runs = offline_runs(wandb_registry)
    assert [r.config["ml_assets"]["job_id"] for r in runs] == ["job-a", "job-b"]
    # Same model file, different job: the registration file keeps them two W&B versions.
    assert runs[0].artifacts[0].digest != runs[1].artifacts[0].digest


def test_alias_moves_relog_the_same_versions_in_operation_order(
    wandb_registry: WandbRegistry, artifact: Path, model_name: str
) -> None:
    for job in ("job-a", "job-b"):
        wandb_registry.register(request(model_name, artifact, job))
    wandb_registry.set_alias(model_name, "1", PRODUCTION)
    wandb_registry.set_alias(model_name, "2", CHALLENGER)
    wandb_registry.set_alias(model_name, "2", PRODUCTION)

    runs = offline_runs(wandb_registry)
    assert [r.job_type for r in runs] == ["register-model"] * 2 + ["set-model-alias"] * 3
    assert all(r.exited for r in runs)
    first, second = (r.artifacts[0].digest for r in runs[:2])

    # Version 1 gets production; W&B's "latest" is handed back to version 2 in the same run.
    moved = runs[2].artifacts
    assert [(a.digest, a.aliases) for a in moved] == [
        (first, {PRODUCTION, "latest"}),
        (second, {"latest"}),
    ]
    assert runs[2].config["ml_assets"]["aliases"] == {PRODUCTION: "1"}
    # The move: version 2 is logged again, unchanged, now holding production too.
    (promoted,) = runs[4].artifacts
    assert promoted.digest == second
    assert promoted.aliases == {PRODUCTION, CHALLENGER, "latest"}
    assert runs[4].config["ml_assets"]["aliases"] == {PRODUCTION: "2", CHALLENGER: "2"}


def test_deleting_an_alias_is_recorded_and_annotations_relog_metadata(
    wandb_registry: WandbRegistry, artifact: Path, model_name: str
) -> None:
    wandb_registry.register(request(model_name, artifact, "job-a"))
    wandb_registry.set_alias(model_name, "1", CHALLENGER)
    wandb_registry.delete_alias(model_name, CHALLENGER)
    wandb_registry.delete_alias(model_name, CHALLENGER)  # nothing to delete: no run
    wandb_registry.annotate(model_name, "1", {"promotion": {"decision": "promoted"}})

    runs = offline_runs(wandb_registry)
    assert [r.job_type for r in runs] == [
        "register-model",
        "set-model-alias",
        "delete-model-alias",
        "annotate-model",
    ]
    deleted = runs[2]
    assert deleted.artifacts == []
    assert deleted.config["ml_assets"]["alias"] == CHALLENGER
    assert deleted.config["ml_assets"]["aliases"] == {}
    (annotated,) = runs[3].artifacts
    assert annotated.digest == runs[0].artifacts[0].digest
    assert annotated.metadata["notes"] == {"promotion": {"decision": "promoted"}}
    assert annotated.metadata["job_id"] == "job-a"


def test_a_changed_staged_file_is_refused_rather_than_logged_as_a_new_version(
    wandb_registry: WandbRegistry, artifact: Path, model_name: str
) -> None:
    wandb_registry.register(request(model_name, artifact, "job-a"))
    (staged,) = (wandb_registry.dir / "ml_assets_registry").rglob(artifact.name)
    staged.write_bytes(b"not the registered model")

    with pytest.raises(ValueError, match="would make a new W&B version"):
        wandb_registry.set_alias(model_name, "1", PRODUCTION)
    assert wandb_registry.get_by_alias(model_name, PRODUCTION) is None


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        WandbRegistry(project="p", mode="shared", dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no version 3"):
        WandbRegistry(project="p", mode="offline", dir=tmp_path).set_alias("m", "3", PRODUCTION)


def test_models_whose_names_map_to_one_artifact_are_refused(
    wandb_registry: WandbRegistry, artifact: Path
) -> None:
    wandb_registry.register(request("team/a", artifact, "job-a"))
    with pytest.raises(ValueError, match="share the W&B artifact name 'team-a'"):
        wandb_registry.register(request("team:a", artifact, "job-b"))
