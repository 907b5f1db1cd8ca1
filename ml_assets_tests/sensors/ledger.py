"""A backend for reconciler tests whose jobs are in whatever state the test sets.

What those tests examine is the reconciler (its budget, its crash safety), not a backend: the
backends have their own contract suite against fakes that run real processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ml_assets.assets.common import ModelContext
from ml_assets.assets.training import build_job_spec
from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus
from ml_assets.teams.spec import TeamSpec, load_team_spec


class Ledger:
    """Jobs by id with the state the test gave them; submit is idempotent by job name."""

    name = "local"

    def __init__(self) -> None:
        self.states: dict[str, JobState] = {}
        self.polled = 0

    def submit(self, spec: JobSpec) -> JobHandle:
        self.states.setdefault(spec.job_name, JobState.QUEUED)
        return JobHandle.for_spec(self.name, spec, {})

    def poll(self, handles: list[JobHandle]) -> dict[str, JobStatus]:
        self.polled += 1
        return {h.job_id: JobStatus(job_id=h.job_id, state=self.states[h.job_id]) for h in handles}

    def cancel(self, handle: JobHandle) -> None:
        self.states[handle.job_id] = JobState.CANCELLED

    def logs(self, handle: JobHandle, tail: int = 100) -> str:
        return "the last lines of the job's log"


TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"


def clinical_team() -> TeamSpec:
    """The clinical team, whose one model the reconciler tests train."""
    return load_team_spec(TEAMS / "clinical" / "team.yaml")


def clinical_job(home: Path, run_id: str) -> tuple[ModelContext, JobSpec]:
    """The model and the first attempt's spec of a clinical training job submitted by ``run_id``."""
    model = ModelContext(clinical_team(), "tumor_classifier")
    spec = build_job_spec(
        model,
        run_id=run_id,
        features_uri="/data/features.parquet",
        features_data_version="abc123",
        home=home,
        storage_root=None,
    )
    return model, spec


def write_messages(folder: str | Path, *messages: tuple[str, dict[str, object]]) -> None:
    """A job's Pipes ``messages.jsonl`` in ``folder``: one line per ``(method, params)``."""
    lines = [
        json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})
        for method, params in messages
    ]
    Path(folder, "messages.jsonl").write_text("".join(line + "\n" for line in lines))


def report_model(folder: str | Path) -> None:
    """What a job that trained writes: its artifact and the materialization naming it."""
    Path(folder, "model.joblib").write_bytes(b"m")
    write_messages(
        folder, ("report_asset_materialization", {"metadata": {"artifact": "model.joblib"}})
    )
