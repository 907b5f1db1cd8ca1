"""What the remote backends share (``ml_assets.backends.remote``) and the staging wrapper their
staged jobs run (``ml_assets.training.stage``): the container's command and env, a finished job's
status, and a job's Dagster Pipes messages carried from its local scratch folder to its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest
from dagster_pipes import encode_param
from ml_assets_testing.job_scripts import wait_for_file

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import HandleDetails, InvalidHandle, JobHandle, JobSpec, JobState

pytestmark = pytest.mark.timeout(60)


def spec(**fields: object) -> JobSpec:
    values: dict[str, object] = {
        "team": "fraud",
        "model": "gbm",
        "command": ["python", "train.py"],
        "output_uri": "s3://bucket/jobs/fraud/gbm/x",
        "idempotency_key": "fraud/gbm/run/0",
        "env": {"DAGSTER_PIPES_CONTEXT": "ctx"},
        **fields,
    }
    return JobSpec.model_validate(values)


def test_a_staged_job_runs_the_wrapper_and_an_unstaged_one_its_own_command() -> None:
    staged, unstaged = spec(), spec(staged=False)

    assert remote.container_command(staged, 3) == remote.staged_command(staged, 3)
    assert remote.container_env(staged) == {"DAGSTER_PIPES_CONTEXT": "ctx"}
    assert remote.container_command(unstaged, 3) == ["python", "train.py"]
    assert remote.container_env(unstaged) == {
        "DAGSTER_PIPES_CONTEXT": "ctx",
        "ML_ASSETS_OUTPUT_URI": "s3://bucket/jobs/fraud/gbm/x",
    }
    with pytest.raises(ValueError, match="non-empty command"):
        remote.container_command(spec(command=[]))


def test_a_finished_job_is_judged_by_its_service_alone(tmp_path: Path) -> None:
    output = str(tmp_path / "job")

    succeeded = remote.finished_status("j", JobState.SUCCEEDED, output)
    failed = remote.finished_status("j", JobState.FAILED, output, "the service says no")
    transport.write_json(transport.join(output, "failure.json"), {"message": "exit status 2: x"})
    staged_failure = remote.finished_status("j", JobState.FAILED, output, "the service says no")

    assert succeeded.state == JobState.SUCCEEDED and succeeded.result_uri == output
    assert failed.message == "the service says no" and failed.result_uri is None
    assert staged_failure.message == "the service says no; exit status 2: x"


PIPES_JOB = """
import os, sys
from pathlib import Path
from dagster_pipes import open_dagster_pipes

out = Path(os.environ["ML_ASSETS_OUTPUT_URI"])
with open_dagster_pipes() as pipes:
    pipes.log.info("started in " + str(out))
    (out / "model.bin").write_bytes(b"weights")
    {wait}
    pipes.report_asset_materialization(metadata={{"auc": 0.9}})
"""


def pipes_context() -> dict[str, object]:
    key = "fraud/gbm"
    return {
        "asset_keys": [key],
        "code_version_by_asset_key": {key: None},
        "provenance_by_asset_key": {key: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run",
        "job_name": None,
        "retry_number": 0,
        "extras": {},
    }


def test_stage_points_pipes_at_its_scratch_and_uploads_the_messages(tmp_path: Path) -> None:
    output = tmp_path / "output"
    go = tmp_path / "go"
    placeholder = encode_param({"path": "/placeholder/messages.jsonl"})
    env = {
        **os.environ,
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": pipes_context()}),
        "DAGSTER_PIPES_MESSAGES": placeholder,
    }
    wait = wait_for_file(go).replace("\n", "\n    ")
    command = [sys.executable, "-c", PIPES_JOB.format(wait=wait)]
    staged = remote.staged_command(spec(command=command, output_uri=str(output)), 0.1)
    stage = subprocess.Popen(
        [sys.executable, *staged[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        # While the job runs, its messages so far reach the output with the log.
        deadline = time.monotonic() + 30
        while "started in" not in _text(output / "messages.jsonl"):
            assert stage.poll() is None, "the staged job ended early"
            assert time.monotonic() < deadline, "no messages were synced while the job ran"
            time.sleep(0.05)
        go.touch()
        assert stage.wait(timeout=30) == 0
    finally:
        stage.kill()
        stage.wait()

    messages = [json.loads(line) for line in _text(output / "messages.jsonl").splitlines()]
    methods = [message["method"] for message in messages]
    assert methods[0] == "opened" and methods[-1] == "closed"
    assert "report_asset_materialization" in methods
    log = next(m for m in messages if m["method"] == "log")
    scratch = log["params"]["message"].removeprefix("started in ")
    assert scratch != str(output) and not Path(scratch).exists()  # a local folder, now gone
    assert (output / "model.bin").read_bytes() == b"weights"
    assert not Path("/placeholder/messages.jsonl").exists()


def test_stage_leaves_the_pipes_messages_alone_when_the_job_has_none(tmp_path: Path) -> None:
    output = tmp_path / "output"
    report = (
        "import json, os; json.dump(os.environ.get('DAGSTER_PIPES_MESSAGES'), "
        "open(os.path.join(os.environ['ML_ASSETS_OUTPUT_URI'], 'seen.json'), 'w'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_MESSAGES"}

    staged = remote.staged_command(
        spec(command=[sys.executable, "-c", report], output_uri=str(output))
    )
    subprocess.run(
        [sys.executable, *staged[1:]],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=30,
    )

    assert json.loads((output / "seen.json").read_text()) is None
    assert not (output / "messages.jsonl").exists()


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# --- the RemoteBackend template, over a service held in memory ---------------------------------


class Flaky(Exception):
    """What the in-memory service raises for a call that may go through next time."""


class MemoryDetails(HandleDetails):
    serial: int


class MemoryService:
    """Jobs by name, each with a state and its owner's key; ``faults[hook]`` errors to raise."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, object]] = {}
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, list[Exception]] = {}

    def hit(self, hook: str) -> None:
        self.calls[hook] += 1
        pending = self.faults.get(hook)
        if pending:
            raise pending.pop(0)


class MemoryBackend(remote.RemoteBackend[MemoryDetails]):
    name = "memory"
    service = "Memory"
    details_type = MemoryDetails
    states: ClassVar[Mapping[str, JobState]] = {
        "Waiting": JobState.QUEUED,
        "Busy": JobState.RUNNING,
        "Done": JobState.SUCCEEDED,
        "Done/Broken": JobState.FAILED,
        "Stopped": JobState.CANCELLED,
    }

    def __init__(self, service: MemoryService, attempts: int = 3) -> None:
        super().__init__(remote.RetryPolicy(max_attempts=attempts, backoff_seconds=0.001))
        self.memory = service

    def is_transient(self, error: Exception) -> bool:
        return isinstance(error, Flaky)

    def prepare(self, spec: JobSpec) -> dict[str, str]:
        return {"name": spec.job_name}

    def _native(self, name: str) -> remote.NativeJob | None:
        job = self.memory.jobs.get(name)
        return None if job is None else remote.NativeJob(str(job["state"]), key=str(job["key"]))

    def find(self, spec: JobSpec) -> MemoryDetails | None:
        self.memory.hit("find")
        job = self._native(spec.job_name)
        if job is None:
            return None
        self.check_owner(spec.job_name, job, spec.idempotency_key)
        return MemoryDetails(serial=int(self.memory.jobs[spec.job_name]["serial"]))  # type: ignore[call-overload]

    def create(self, spec: JobSpec, request: dict[str, str]) -> MemoryDetails:
        self.memory.calls["create attempts"] += 1
        if request["name"] in self.memory.jobs:
            raise remote.JobExists(request["name"])
        serial = len(self.memory.jobs) + 1
        self.memory.jobs[request["name"]] = {
            "state": "Waiting",
            "key": spec.idempotency_key,
            "serial": serial,
        }
        self.memory.hit("create")  # a fault here is an answer lost after the job was made
        return MemoryDetails(serial=serial)

    def list_jobs(self, jobs: remote.Listed[MemoryDetails]) -> dict[str, remote.NativeJob]:
        self.memory.hit("list")
        found = {handle.job_id: self._native(handle.job_id) for handle, _ in jobs}
        return {job_id: job for job_id, job in found.items() if job is not None}

    def get_job(self, handle: JobHandle, details: MemoryDetails) -> remote.NativeJob | None:
        self.memory.hit("get")
        return self._native(handle.job_id)

    def stop(self, handle: JobHandle, details: MemoryDetails) -> None:
        self.memory.hit("stop")
        self.memory.jobs[handle.job_id]["state"] = "Stopped"


def test_a_create_whose_answer_is_lost_is_found_not_made_again() -> None:
    service = MemoryService()
    service.faults["create"] = [Flaky("answer lost")]
    backend = MemoryBackend(service)

    handle = backend.submit(spec())

    assert list(service.jobs) == [spec().job_name]
    assert handle.details == {"serial": 1} and handle.backend == "memory"
    # Found by the find that follows the lost answer, not sent a second time.
    assert service.calls["create attempts"] == 1 and service.calls["find"] == 2
    assert backend.submit(spec()) == handle
    assert service.calls["create attempts"] == 1


def test_a_name_taken_meanwhile_is_found_and_a_name_of_another_key_is_a_conflict() -> None:
    service = MemoryService()
    backend = MemoryBackend(service)
    # Another process made the job between our find and our create: JobExists, then found.
    real_find = backend.find
    raced = iter([None])

    def find_after_a_race(job: JobSpec) -> MemoryDetails | None:
        first = next(raced, "found")
        if first is None:
            service.jobs[job.job_name] = {"state": "Busy", "key": job.idempotency_key, "serial": 7}
            return None
        return real_find(job)

    backend.find = find_after_a_race  # type: ignore[method-assign]
    assert backend.submit(spec()).details == {"serial": 7}

    other = spec(idempotency_key="fraud/gbm/run/9")
    service.jobs[other.job_name] = {"state": "Busy", "key": "someone else", "serial": 8}
    with pytest.raises(remote.KeyConflict, match="belongs to idempotency key 'someone else'"):
        MemoryBackend(service).submit(other)


def test_transient_errors_are_retried_up_to_max_attempts_and_others_at_once() -> None:
    service = MemoryService()
    backend = MemoryBackend(service, attempts=3)
    handle = backend.submit(spec())
    service.faults["list"] = [Flaky("1"), Flaky("2")]

    assert backend.poll([handle])[handle.job_id].state == JobState.QUEUED
    assert service.calls["list"] == 3

    service.faults["list"] = [Flaky("1"), Flaky("2"), Flaky("3")]
    with pytest.raises(Flaky, match="3"):
        backend.poll([handle])
    service.faults["list"] = [ValueError("not worth a retry")]
    with pytest.raises(ValueError):
        backend.poll([handle])
    assert service.calls["list"] == 7


def test_poll_maps_native_states_and_remembers_finished_ones(tmp_path: Path) -> None:
    service = MemoryService()
    backend = MemoryBackend(service)
    handles = {}
    for state in ("Waiting", "Busy", "Done", "Done/Broken", "Stopped", "Vanishing/Odd"):
        job = spec(idempotency_key=f"k-{state}", output_uri=str(tmp_path / state.replace("/", "-")))
        handles[state] = backend.submit(job)
        service.jobs[job.job_name]["state"] = state
    gone = handles["Busy"].model_copy(update={"job_id": "gone"})

    statuses = backend.poll([*handles.values(), gone])

    assert {state: statuses[h.job_id].state for state, h in handles.items()} == {
        "Waiting": JobState.QUEUED,
        "Busy": JobState.RUNNING,
        "Done": JobState.SUCCEEDED,
        "Done/Broken": JobState.FAILED,  # the whole name first, then up to its '/'
        "Stopped": JobState.CANCELLED,
        "Vanishing/Odd": JobState.RUNNING,  # unknown: in flight, never a guessed ending
    }
    assert statuses["gone"].state == JobState.FAILED and "Memory has no job gone" in (
        statuses["gone"].message
    )
    assert service.calls["get"] == 1  # only the job the list did not show
    service.calls.clear()
    finished = [handles[state] for state in ("Done", "Done/Broken", "Stopped")]
    assert backend.poll(finished) == {h.job_id: statuses[h.job_id] for h in finished}
    assert service.calls == Counter()


def test_cancel_is_idempotent_and_a_job_that_ended_meanwhile_is_left_alone() -> None:
    service = MemoryService()
    backend = MemoryBackend(service)
    handle = backend.submit(spec())

    backend.cancel(handle)
    backend.cancel(handle)

    assert service.calls["stop"] == 1
    assert backend.poll([handle])[handle.job_id].state == JobState.CANCELLED
    racing = backend.submit(spec(idempotency_key="k2"))

    def refuse(handle: JobHandle, details: MemoryDetails) -> None:
        service.jobs[handle.job_id]["state"] = "Done"  # it ended just before the stop
        raise RuntimeError("cannot stop a job that has ended")

    backend.stop = refuse  # type: ignore[method-assign]
    backend.cancel(racing)  # no error: the job is over
    assert service.jobs[racing.job_id]["state"] == "Done"


def test_a_handle_of_another_backend_or_with_the_wrong_details_is_refused() -> None:
    backend = MemoryBackend(MemoryService())
    handle = backend.submit(spec())

    with pytest.raises(InvalidHandle, match=r"belongs to backend 'local', not 'memory'"):
        backend.poll([handle.model_copy(update={"backend": "local"})])
    with pytest.raises(InvalidHandle, match=r"does not fit the memory backend.*serial"):
        backend.cancel(handle.model_copy(update={"details": {"serial": "seven"}}))
    with pytest.raises(InvalidHandle, match=r"extra: Extra inputs are not permitted"):
        backend.logs(handle.model_copy(update={"details": {"serial": 1, "extra": 1}}))
