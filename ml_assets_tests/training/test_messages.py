"""Tests for the deferred Pipes plumbing: real files, real dagster_pipes writers, real children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from dagster_pipes import (
    PIPES_PROTOCOL_VERSION,
    PIPES_PROTOCOL_VERSION_FIELD,
    PipesBufferedFilesystemMessageWriterChannel,
    PipesDbfsMessageWriter,
    PipesDefaultContextLoader,
    PipesFileMessageWriterChannel,
    PipesS3MessageWriter,
    decode_param,
)

from ml_assets.training.messages import (
    MESSAGES_DIR,
    MESSAGES_FILE,
    JobReport,
    MessagesLocation,
    fold,
    messages_location,
    messages_params,
    pipes_context,
    pipes_env,
    read_new,
    render_curve_png,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _message(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    return {
        PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION,
        "method": method,
        "params": params,
    }


def _custom(**payload: Any) -> dict[str, Any]:
    return _message("report_custom_message", {"payload": payload})


def _log(text: str, level: str = "INFO") -> dict[str, Any]:
    return _message("log", {"message": text, "level": level})


def _materialization(data_version: str, **metadata: Any) -> dict[str, Any]:
    encoded = {name: {"raw_value": value, "type": "__infer__"} for name, value in metadata.items()}
    params = {"asset_key": "team/model", "data_version": data_version, "metadata": encoded}
    return _message("report_asset_materialization", params)


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


def _write_file(path: Path, messages: list[dict[str, Any]]) -> None:
    """Append with dagster_pipes' own file channel (what PipesDefaultMessageWriter uses)."""
    channel = PipesFileMessageWriterChannel(str(path))
    for message in messages:
        channel.write_message(message)  # type: ignore[arg-type]


def _write_chunk(directory: Path, index: int, messages: list[dict[str, Any]]) -> None:
    """One chunk as dagster_pipes' file-system blob store writes it (format checked below)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = "\n".join(json.dumps(message) for message in messages)
    channel = PipesBufferedFilesystemMessageWriterChannel(str(directory))
    channel.upload_messages_chunk(StringIO(payload), index)


def _child_env(env: dict[str, str]) -> dict[str, str]:
    python_path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": python_path, **env}


# ----------------------------------------------------------------------------------------------
# Locations and params


def test_location_and_params_for_each_kind_of_output(tmp_path: Path) -> None:
    local = str(tmp_path / "out")
    assert messages_location(local, staged=False) == MessagesLocation(
        "file", f"{local}/{MESSAGES_FILE}"
    )
    assert messages_location(local, staged=True).kind == "file"
    assert messages_params(local, staged=False) == {"path": f"{local}/{MESSAGES_FILE}"}
    assert messages_params(f"file://{local}", staged=False) == {"path": f"{local}/{MESSAGES_FILE}"}

    # Staged remote jobs write messages.jsonl locally; the stage wrapper uploads it whole.
    assert messages_location("s3://bucket/runs/7", staged=True) == MessagesLocation(
        "file", "s3://bucket/runs/7/messages.jsonl"
    )
    assert set(messages_params("s3://bucket/runs/7", staged=True)) == {"path"}

    # Unstaged remote jobs use a blob-store writer's numbered chunks.
    assert messages_location("s3://bucket/runs/7/", staged=False) == MessagesLocation(
        "chunks", f"s3://bucket/runs/7/{MESSAGES_DIR}"
    )
    assert messages_params("s3://bucket/runs/7", staged=False) == {
        "bucket": "bucket",
        "key_prefix": "runs/7/messages",
    }
    assert messages_params("gs://b/x/y", staged=False) == {
        "bucket": "b",
        "key_prefix": "x/y/messages",
    }
    assert messages_params("dbfs:/x/y", staged=False) == {"path": "/x/y/messages"}
    assert messages_location("dbfs:/x/y", staged=False).uri == "dbfs:/x/y/messages"


def test_chunk_params_are_what_the_dagster_pipes_writers_take_and_land_where_we_read(
    tmp_path: Path,
) -> None:
    class FolderS3Client:
        """put_object into tmp_path/<bucket>/<key>: S3 for the writer (the reader is real)."""

        def put_object(self, Body: str, Bucket: str, Key: str) -> None:
            target = tmp_path / Bucket / Key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(Body)

    output_uri = "s3://bucket/runs/7"
    channel = PipesS3MessageWriter(client=FolderS3Client()).make_channel(
        messages_params(output_uri, staged=False)
    )
    messages = [_log("one"), _custom(progress=0.5)]
    channel.upload_messages_chunk(StringIO("\n".join(json.dumps(m) for m in messages)), 1)

    remote = messages_location(output_uri, staged=False)
    local = MessagesLocation("chunks", remote.uri.replace("s3://", f"{tmp_path}/"))
    assert read_new(local, 0).messages == messages

    dbfs_channel = PipesDbfsMessageWriter().make_channel(messages_params("dbfs:/x/y", False))
    assert dbfs_channel._path == "/dbfs/x/y/messages"


def test_pipes_env_is_read_by_the_default_loaders() -> None:
    context = pipes_context(["team", "a/b"], "run-1", 2, {"lr": 0.1}, code_version="v3")
    env = pipes_env(context, {"path": "/tmp/m.jsonl"})
    assert decode_param(env["DAGSTER_PIPES_MESSAGES"]) == {"path": "/tmp/m.jsonl"}
    params = decode_param(env["DAGSTER_PIPES_CONTEXT"])
    with PipesDefaultContextLoader().load_context(params) as loaded:
        assert loaded == context
    # every key of PipesContextData, so every PipesContext property works
    assert set(context) == {
        "asset_keys",
        "code_version_by_asset_key",
        "provenance_by_asset_key",
        "partition_key",
        "partition_key_range",
        "partition_time_window",
        "run_id",
        "job_name",
        "retry_number",
        "extras",
    }


_CHILD = """
import json, sys
from dagster_pipes import open_dagster_pipes, to_asset_key_path

with open_dagster_pipes() as context:
    print(json.dumps({
        "asset_key": to_asset_key_path(context.asset_key),
        "extras": dict(context.extras),
        "run_id": context.run_id,
        "retry_number": context.retry_number,
        "code_version": context.code_version,
        "provenance": context.provenance,
        "is_partition_step": context.is_partition_step,
    }))
    context.log.info("starting")
    context.report_custom_message({"progress": 0.5, "step": 1, "metrics": {"loss": 0.7}})
    context.report_custom_message({"progress": 1.0, "step": 2, "metrics": {"loss": 0.4}})
    context.report_asset_materialization(metadata={"auc": 0.93}, data_version="abc")
    context.log.warning("done")
    if sys.argv[1] == "fail":
        raise ValueError("boom")
"""


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_child_process_round_trip_through_open_dagster_pipes(tmp_path: Path, outcome: str) -> None:
    output_uri = str(tmp_path / "out")
    Path(output_uri).mkdir()
    context = pipes_context(["team", "churn/v2"], "run-1", 2, {"lr": 0.1, "epochs": 3}, "v3")
    env = pipes_env(context, messages_params(output_uri, staged=False))
    script = tmp_path / "job.py"  # a file, so the stack of a failure shows its source lines
    script.write_text(_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), outcome],
        env=_child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode == 0) == (outcome == "ok"), done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "asset_key": ["team", "churn/v2"],
        "extras": {"lr": 0.1, "epochs": 3},
        "run_id": "run-1",
        "retry_number": 2,
        "code_version": "v3",
        "provenance": None,
        "is_partition_step": False,
    }

    location = messages_location(output_uri, staged=False)
    assert Path(location.uri) == tmp_path / "out" / MESSAGES_FILE
    batch = read_new(location, 0, final=True)
    assert batch.problems == []
    assert batch.cursor == (tmp_path / "out" / MESSAGES_FILE).stat().st_size
    assert [m["method"] for m in batch.messages] == [
        "opened",
        "log",
        "report_custom_message",
        "report_custom_message",
        "report_asset_materialization",
        "log",
        "closed",
    ]
    report = fold(None, batch.messages)
    assert report.logs == ["INFO starting", "WARNING done"]
    assert report.progress == 1.0 and report.step == 2
    assert report.metrics == {"loss": 0.4}
    assert report.history == [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.4}]
    assert report.materialization == {"metadata": {"auc": 0.93}, "data_version": "abc"}
    assert report.closed
    if outcome == "ok":
        assert report.exception is None
    else:
        assert report.exception is not None
        assert report.exception.startswith("ValueError: boom")
        assert 'raise ValueError("boom")' in report.exception
    assert report.problems == []


# ----------------------------------------------------------------------------------------------
# Reading the file kind


def test_a_line_written_in_two_halves_is_returned_once_complete_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / MESSAGES_FILE
    location = MessagesLocation("file", str(path))
    assert read_new(location, 0) == read_new(location, 0, final=False)
    assert read_new(location, 0).messages == [] and read_new(location, 0).cursor == 0

    first, second = _log("first"), _custom(progress=0.25, metrics={"loss": 1.5})
    head, tail = _line(second)[:20], _line(second)[20:]
    path.write_bytes(_line(first) + head)

    batch = read_new(location, 0)
    assert batch.messages == [first]
    assert batch.cursor == len(_line(first))
    assert batch.problems == []
    again = read_new(location, batch.cursor)
    assert again.messages == [] and again.cursor == batch.cursor and again.problems == []

    with path.open("ab") as handle:
        handle.write(tail)
    completed = read_new(location, batch.cursor)
    assert completed.messages == [second]
    assert completed.cursor == path.stat().st_size
    assert read_new(location, completed.cursor).messages == []
    # from the start, each message once
    assert read_new(location, 0).messages == [first, second]


def test_a_job_killed_mid_write_leaves_a_partial_line_skipped_when_final(tmp_path: Path) -> None:
    output_uri = str(tmp_path)
    env = pipes_env(
        pipes_context(["team", "model"], "run-9", 0, {}), messages_params(output_uri, False)
    )
    path = tmp_path / MESSAGES_FILE
    writer = f"""
import json, sys, time
from dagster_pipes import open_dagster_pipes
context = open_dagster_pipes()
context.log.info("epoch 1")
context.report_custom_message({{"progress": 0.3}})
# a big message, appended piece by piece as a slow writer would
with open({str(path)!r}, "a", encoding="utf-8") as handle:
    handle.write('{{"__dagster_pipes_version": "0.1", "method": "log", "params": {{"message": "')
    handle.flush()
    print("writing", flush=True)
    while True:
        handle.write("x" * 65536)
        handle.flush()
        time.sleep(0.01)
"""
    child = subprocess.Popen(
        [sys.executable, "-c", writer],
        env=_child_env(env),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    size = path.stat().st_size

    location = messages_location(output_uri, staged=False)
    running = read_new(location, 0)
    assert [m["method"] for m in running.messages] == ["opened", "log", "report_custom_message"]
    assert running.problems == []
    partial = size - running.cursor
    assert partial > 65536

    ended = read_new(location, running.cursor, final=True)
    assert ended.messages == []
    assert ended.cursor == size
    assert len(ended.problems) == 1
    assert (
        f"job ended mid-write: {partial} bytes of an unfinished message ignored"
        in (ended.problems[0])
    )
    assert str(path) in ended.problems[0]
    # everything before it is kept when the whole file is read at the end
    whole = read_new(location, 0, final=True)
    assert whole.messages == running.messages
    assert whole.cursor == size and len(whole.problems) == 1
    report = fold(None, whole.messages)
    assert report.progress == 0.3 and report.logs == ["INFO epoch 1"] and not report.closed


def test_a_malformed_line_in_the_middle_is_skipped_with_a_clear_problem(tmp_path: Path) -> None:
    path = tmp_path / MESSAGES_FILE
    before, after = _log("before"), _log("after")
    not_json = b"{this is not json " + b"y" * 300 + b"\n"
    not_pipes = b'{"hello": "world"}\n'
    path.write_bytes(_line(before) + not_json + not_pipes + _line(after))
    location = MessagesLocation("file", str(path))

    batch = read_new(location, 0)
    assert batch.messages == [before, after]
    assert batch.cursor == path.stat().st_size
    assert len(batch.problems) == 2
    first, second = batch.problems
    assert str(path) in first
    assert f"byte {len(_line(before))}:" in first
    assert "not valid JSON" in first
    assert "{this is not json " + "y" * 182 in first and "y" * 183 not in first  # 200 chars
    assert f"byte {len(_line(before)) + len(not_json)}:" in second
    assert "not a Dagster Pipes message" in second and '{"hello": "world"}' in second
    # and it is no different on the final read
    assert read_new(location, 0, final=True) == batch


def test_rereading_from_old_cursors_is_idempotent_and_cursors_never_go_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / MESSAGES_FILE
    location = MessagesLocation("file", str(path))
    ticks = [
        [_message("opened", {"extras": {}}), _custom(progress=0.1, device="cuda:0")],
        [_custom(step=1, metrics={"loss": 0.9, "acc": 0.5}), _log("epoch 1")],
        [],
        [_custom(step=2, metrics={"loss": 0.5, "acc": "n/a"}), _materialization("v1", auc=0.8)],
        [_custom(progress=1.0), _message("closed", {})],
    ]
    report: JobReport | None = None
    cursor = 0
    cursors = [0]
    batches = []
    for tick in ticks:
        _write_file(path, tick)
        with path.open("ab") as handle:  # a half-written next line each tick
            handle.write(b'{"__dagster_pipes_version": "0.1", "met')
        batch = read_new(location, cursor)
        assert batch.messages == tick
        assert read_new(location, cursor) == batch  # same cursor, same answer
        batches.append((cursor, batch))
        report, cursor = fold(report, batch.messages), batch.cursor
        cursors.append(cursor)
        # drop the half line again, as the writer would finish it (here: rewrite)
        data = path.read_bytes()
        path.write_bytes(data[: data.rfind(b"\n") + 1])
    assert cursors == sorted(cursors)
    for old_cursor, old_batch in batches:
        assert read_new(location, old_cursor).messages[: len(old_batch.messages)] == (
            old_batch.messages
        )

    everything = [m for tick in ticks for m in tick]
    assert read_new(location, 0).messages == everything
    assert report == fold(None, everything)
    assert report.progress == 1.0 and report.step == 2 and report.device == "cuda:0"
    assert report.metrics == {"loss": 0.5, "acc": 0.5}  # "n/a" ignored
    assert report.history == [{"step": 1, "loss": 0.9, "acc": 0.5}, {"step": 2, "loss": 0.5}]
    assert report.materialization == {"metadata": {"auc": 0.8}, "data_version": "v1"}

    # a file replaced by a shorter one never moves the cursor back
    path.write_bytes(_line(_log("new")))
    shrunk = read_new(location, cursor)
    assert shrunk.cursor == cursor and shrunk.messages == [] and len(shrunk.problems) == 1


# ----------------------------------------------------------------------------------------------
# Reading the chunks kind


def test_chunks_written_by_dagster_pipes_own_upload_loop_are_read(tmp_path: Path) -> None:
    directory = tmp_path / MESSAGES_DIR
    directory.mkdir()
    channel = PipesBufferedFilesystemMessageWriterChannel(str(directory), interval=0)
    messages = [_message("opened", {"extras": {}}), _log("hi"), _custom(progress=0.4)]
    with channel.buffered_upload_loop():
        for message in messages:
            channel.write_message(message)  # type: ignore[arg-type]
    assert (directory / "1.json").exists()
    batch = read_new(MessagesLocation("chunks", str(directory)), 0)
    assert batch.messages == messages and batch.cursor == 1 and batch.problems == []


def test_chunks_missing_then_appearing_are_read_in_order_once(tmp_path: Path) -> None:
    directory = tmp_path / MESSAGES_DIR
    location = MessagesLocation("chunks", str(directory))
    nothing = read_new(location, 0)
    assert nothing.messages == [] and nothing.cursor == 0 and nothing.problems == []

    _write_chunk(directory, 1, [_log("a"), _log("b")])
    first = read_new(location, 0)
    assert first.messages == [_log("a"), _log("b")] and first.cursor == 1
    assert read_new(location, 1).messages == [] and read_new(location, 1).cursor == 1

    _write_chunk(directory, 2, [_log("c")])
    _write_chunk(directory, 3, [_log("d")])
    later = read_new(location, 1)
    assert later.messages == [_log("c"), _log("d")] and later.cursor == 3
    assert read_new(location, 0).messages == [_log(x) for x in "abcd"]
    assert read_new(location, 0, final=True) == read_new(location, 0)


def test_a_chunk_written_in_two_halves_is_read_once_complete(tmp_path: Path) -> None:
    directory = tmp_path / MESSAGES_DIR
    location = MessagesLocation("chunks", str(directory))
    _write_chunk(directory, 1, [_log("a")])
    body = "\n".join(json.dumps(m) for m in [_log("b"), _custom(progress=0.5)])
    chunk = directory / "2.json"
    chunk.write_text(body[: len(body) - 10])  # a file-system store, mid-write

    waiting = read_new(location, 0)
    assert waiting.messages == [_log("a")] and waiting.cursor == 1 and waiting.problems == []
    assert read_new(location, 1) == read_new(location, 1)
    assert read_new(location, 1).cursor == 1

    chunk.write_text(body)
    done = read_new(location, 1)
    assert done.messages == [_log("b"), _custom(progress=0.5)] and done.cursor == 2
    assert read_new(location, 2).messages == []

    # an empty chunk is one being created: wait for it
    (directory / "3.json").write_text("")
    assert read_new(location, 2).cursor == 2


def test_a_malformed_chunk_followed_by_a_good_one_is_skipped_with_a_problem(
    tmp_path: Path,
) -> None:
    directory = tmp_path / MESSAGES_DIR
    location = MessagesLocation("chunks", str(directory))
    _write_chunk(directory, 1, [_log("a")])
    (directory / "2.json").write_text(json.dumps(_log("b")) + '\n{"__dagster_pipes_version": "0.')

    # alone at the end of a running job it may still be being written
    assert read_new(location, 1).cursor == 1

    _write_chunk(directory, 3, [_log("c")])
    batch = read_new(location, 1)
    assert batch.messages == [_log("b"), _log("c")]  # the good message in it is kept
    assert batch.cursor == 3
    assert len(batch.problems) == 1
    problem = batch.problems[0]
    assert str(directory) in problem and "chunk 2" in problem and "not valid JSON" in problem
    assert '{"__dagster_pipes_version": "0.' in problem


def test_a_broken_last_chunk_is_skipped_when_the_job_has_ended(tmp_path: Path) -> None:
    directory = tmp_path / MESSAGES_DIR
    location = MessagesLocation("chunks", str(directory))
    _write_chunk(directory, 1, [_log("a"), {"not": "pipes"}, _log("b")])
    (directory / "2.json").write_text("{garbage")

    running = read_new(location, 0)
    assert running.messages == [_log("a"), _log("b")] and running.cursor == 1
    assert len(running.problems) == 1 and "not a Dagster Pipes message" in running.problems[0]

    ended = read_new(location, 1, final=True)
    assert ended.messages == [] and ended.cursor == 2
    assert len(ended.problems) == 1 and "chunk 2" in ended.problems[0]


# ----------------------------------------------------------------------------------------------
# Folding


def test_messages_after_the_materialization_are_still_folded() -> None:
    messages = [
        _custom(progress=0.5, step=5, metrics={"loss": 1.0}),
        _materialization("v1", auc=0.7, path="/tmp/a"),
        _log("uploading"),
        _custom(progress=1.7, step=6, metrics={"loss": 0.5}, message="almost done"),
        _materialization("v2", auc=0.9),
        _log("finished", "WARNING"),
        _message("closed", {}),
    ]
    report = fold(None, messages)
    assert report.progress == 1.0  # clamped
    assert report.step == 6 and report.message == "almost done"
    assert report.logs == ["INFO uploading", "WARNING finished"]
    assert report.materialization == {"metadata": {"auc": 0.9}, "data_version": "v2"}
    assert report.problems == ["2 materializations reported; the last one is used"]
    assert report.closed and report.exception is None
    three = fold(report, [_materialization("v3")])
    assert three.problems == ["3 materializations reported; the last one is used"]
    assert three.materialization == {"metadata": {}, "data_version": "v3"}
    assert report.problems == ["2 materializations reported; the last one is used"]  # pure


def test_fold_is_incremental_at_every_split_and_bounded() -> None:
    messages = [
        _custom(step=i, metrics={"loss": 1 / (i + 1)}, progress=i / 60) for i in range(60)
    ] + [_log(f"line {i}") for i in range(60)]
    messages.insert(30, _materialization("a"))
    messages.insert(90, _materialization("b"))
    whole = fold(None, messages)
    for split in range(len(messages) + 1):
        assert fold(fold(None, messages[:split]), messages[split:]) == whole
    assert len(whole.logs) == 50 and whole.logs[-1] == "INFO line 59"
    assert len(whole.history) == 60

    many = fold(None, [_custom(metrics={"loss": float(i)}) for i in range(10_005)])
    assert len(many.history) == 10_000
    assert many.history[0] == {"step": None, "loss": 5.0}


def test_render_curve_png() -> None:
    assert render_curve_png([], "t") is None
    assert render_curve_png([{"step": 1, "loss": 1.0}], "t") is None
    history = [
        {"step": 1, "loss": 1.0, "val_loss": 1.1, "accuracy": 0.5},
        {"step": 2, "loss": 0.6, "val_loss": 0.8, "accuracy": 0.7},
        {"step": 3, "loss": 0.4, "accuracy": 0.8},
    ]
    png = render_curve_png(history, "churn")
    assert png is not None and png.startswith(b"\x89PNG")
    no_steps = render_curve_png([{"step": None, "acc": 0.1}, {"step": None, "acc": 0.2}], "t")
    assert no_steps is not None and no_steps.startswith(b"\x89PNG")
