"""What the remote backends share (``ml_assets.backends.remote``) and the staging wrapper their
staged jobs run (``ml_assets.training.stage``): the container's command and env, a finished job's
status, and a job's Dagster Pipes messages carried from its local scratch folder to its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster_pipes import encode_param
from ml_assets_testing.job_scripts import wait_for_file

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobSpec, JobState

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
