"""A backend for reconciler tests whose jobs are in whatever state the test sets.

What those tests examine is the reconciler (its budget, its crash safety), not a backend: the
backends have their own contract suite against fakes that run real processes.
"""

from __future__ import annotations

from ml_assets.backends.base import JobHandle, JobSpec, JobState, JobStatus


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
