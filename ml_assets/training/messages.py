"""Both ends of a job's Dagster Pipes plumbing, without a Dagster process waiting for the job.

A job reports with ``dagster_pipes`` itself (``open_dagster_pipes()``); this module decides where
its messages go and what it is told, and lets the reconciling sensor read them later, tick by
tick, and fold them into what the UI shows:

* ``messages_location`` / ``messages_params`` / ``pipes_context`` / ``pipes_env``: the location
  of a job's messages and the ``DAGSTER_PIPES_*`` environment that points its writer there.
* ``read_new``: the messages written since a cursor, incrementally and idempotently. A half
  written message is left for the next read (or skipped, with a problem, once the job ended); a
  malformed one is skipped with a problem, never a crash.
* ``fold``: messages into a ``JobReport`` (progress, metrics and their history, logs, the
  materialization, the end); ``render_curve_png`` plots the history.

Two layouts, both under the job's output URI:

* ``messages.jsonl`` (kind ``file``): one JSON message per line, appended by
  ``dagster_pipes.PipesDefaultMessageWriter``. Local jobs write it in place; staged jobs write
  it locally and the stage wrapper uploads it whole, repeatedly. The cursor is a byte offset.
* ``messages/1.json``, ``messages/2.json``... (kind ``chunks``): the numbered chunks a
  ``dagster_pipes`` blob-store writer uploads (S3, GCS, DBFS), each chunk messages joined by
  ``\\n``. The cursor is the number of chunks already read.

Nothing here imports dagster or a cloud SDK at module level: this module runs inside jobs too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD, encode_param

from ml_assets import transport

MESSAGES_FILE = "messages.jsonl"
MESSAGES_DIR = "messages"

HISTORY_LIMIT = 10_000
LOG_LIMIT = 50
_SNIPPET = 200
_STACK_LINES = 3


# ----------------------------------------------------------------------------------------------
# Where a job's messages live, and what the job is told


@dataclass(frozen=True)
class MessagesLocation:
    """Where one job's messages are: a JSON-lines ``file`` or a folder of numbered ``chunks``."""

    kind: Literal["file", "chunks"]
    uri: str


def messages_location(output_uri: str, staged: bool) -> MessagesLocation:
    """The location of the messages of a job writing to ``output_uri``.

    Local jobs, and staged jobs (whose stage wrapper uploads ``messages.jsonl`` whole), use the
    ``file`` layout; an unstaged job writing to object storage uses a blob-store writer's
    ``chunks``.
    """
    if transport.is_local(output_uri) or staged:
        return MessagesLocation("file", transport.join(output_uri, MESSAGES_FILE))
    return MessagesLocation("chunks", transport.join(output_uri, MESSAGES_DIR))


def messages_params(output_uri: str, staged: bool) -> dict[str, Any]:
    """The ``DAGSTER_PIPES_MESSAGES`` params for a job, matching ``messages_location``.

    ``file``: ``{"path": ...}`` for ``PipesDefaultMessageWriter`` (for a staged remote job the
    path is a placeholder the stage wrapper replaces with its local file). ``chunks``:
    ``{"bucket", "key_prefix"}`` for ``PipesS3MessageWriter`` / ``PipesGCSMessageWriter``,
    ``{"path"}`` (unmounted) for ``PipesDbfsMessageWriter``.
    """
    location = messages_location(output_uri, staged)
    if location.kind == "file":
        if transport.is_local(location.uri):
            return {"path": str(transport.local_path(location.uri))}
        return {"path": location.uri}
    scheme = transport.scheme_of(location.uri)
    if scheme in ("s3", "gs"):
        rest = location.uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{output_uri!r} names no bucket")
        return {"bucket": bucket, "key_prefix": key.strip("/")}
    if scheme == "dbfs":
        return {"path": "/" + location.uri.removeprefix("dbfs:").lstrip("/")}
    raise ValueError(
        f"no dagster_pipes message writer for {output_uri!r}; "
        "use a local path or an s3://, gs:// or dbfs:/ URI"
    )


def _escaped_asset_key(parts: list[str]) -> str:
    # As Dagster's AssetKey.to_escaped_user_string; dagster_pipes.to_asset_key_path inverts it.
    return "/".join(part.replace("\\", "\\\\").replace("/", "\\/") for part in parts)


def pipes_context(
    asset_key: list[str],
    run_id: str,
    retry_number: int,
    extras: dict[str, Any],
    code_version: str | None = None,
) -> dict[str, Any]:
    """A complete ``PipesContextData`` for a job materializing the one asset ``asset_key``."""
    key = _escaped_asset_key(asset_key)
    return {
        "asset_keys": [key],
        "code_version_by_asset_key": {key: code_version},
        "provenance_by_asset_key": {key: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": run_id,
        "job_name": None,
        "retry_number": retry_number,
        "extras": dict(extras),
    }


def pipes_env(context: dict[str, Any], messages: dict[str, Any]) -> dict[str, str]:
    """The environment ``open_dagster_pipes()`` reads with its default loaders."""
    return {
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_param(messages),
    }


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
class MessageBatch:
    """The messages read since a cursor, the cursor to read from next, and what was skipped."""

    messages: list[dict[str, Any]]
    cursor: int
    problems: list[str] = field(default_factory=list)


def _snippet(data: bytes | str) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return repr(text[:_SNIPPET])


def _parse_message(line: bytes) -> tuple[dict[str, Any] | None, str | None, bool]:
    """``(message, problem, json_error)`` for one line; ``json_error`` when it is not JSON."""
    try:
        document = json.loads(line)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        return None, f"not valid JSON ({error})", True
    if not (
        isinstance(document, dict)
        and isinstance(document.get("method"), str)
        and "params" in document
        and (document["params"] is None or isinstance(document["params"], dict))
        and PIPES_PROTOCOL_VERSION_FIELD in document
    ):
        return None, "not a Dagster Pipes message", False
    return document, None, False


def _missing_is_empty(uri: str) -> bytes | None:
    try:
        return transport.read_bytes(uri)
    except transport.ObjectNotFound:
        return None


def read_new(location: MessagesLocation, cursor: int, *, final: bool = False) -> MessageBatch:
    """The messages written at ``location`` since ``cursor``.

    Reading again from the same cursor gives the same messages; the returned cursor never goes
    backwards. ``final`` means the job has ended: what is half written now never will be whole,
    so it is skipped (with a problem) instead of waited for.
    """
    if cursor < 0:
        raise ValueError(f"cursor must be >= 0, got {cursor}")
    if location.kind == "file":
        return _read_file(location.uri, cursor, final)
    if location.kind == "chunks":
        return _read_chunks(location.uri, cursor, final)
    raise ValueError(f"unknown messages location kind {location.kind!r}")


def _read_file(uri: str, cursor: int, final: bool) -> MessageBatch:
    data = _missing_is_empty(uri)
    if data is None:
        return MessageBatch([], cursor, [])
    if len(data) < cursor:
        return MessageBatch(
            [],
            cursor,
            [
                f"{uri}: the file has {len(data)} bytes, fewer than the {cursor} already read; "
                "it was replaced or truncated, nothing new is read"
            ],
        )
    messages: list[dict[str, Any]] = []
    problems: list[str] = []
    end = data.rfind(b"\n", cursor) + 1  # just past the last complete line, or 0 if none
    if end > cursor:
        messages, problems, _ = _parse_lines(data[cursor : end - 1], f"{uri}: ", cursor)
    else:
        end = cursor
    rest = data[end:]
    if final and rest:
        if rest.strip():
            problems.append(
                f"{uri}: byte {end}: job ended mid-write: {len(rest)} bytes of an unfinished "
                f"message ignored: {_snippet(rest)}"
            )
        end = len(data)
    return MessageBatch(messages, end, problems)


def _parse_lines(
    data: bytes, where: str, base: int = 0
) -> tuple[list[dict[str, Any]], list[str], bool]:
    """The Pipes messages of newline-separated ``data``; a problem per line that is not one
    (``where`` names the object; offsets count from ``base``); and whether a line was not JSON."""
    messages: list[dict[str, Any]] = []
    problems: list[str] = []
    not_json = False
    position = base
    for line in data.split(b"\n"):
        offset = position
        position += len(line) + 1
        if not line.strip():
            continue
        message, problem, json_error = _parse_message(line)
        if message is not None:
            messages.append(message)
        else:
            not_json = not_json or json_error
            problems.append(f"{where}byte {offset}: {problem}, skipped: {_snippet(line)}")
    return messages, problems, not_json


def _chunk_uri(uri: str, index: int) -> str:
    return transport.join(uri, f"{index}.json")


def _read_chunks(uri: str, cursor: int, final: bool) -> MessageBatch:
    messages: list[dict[str, Any]] = []
    problems: list[str] = []
    index = cursor
    while True:
        chunk_uri = _chunk_uri(uri, index + 1)
        data = _missing_is_empty(chunk_uri)
        if data is None:
            break
        parsed, chunk_problems, not_json = _parse_lines(data, f"{uri}: chunk {index + 1}, ")
        # An empty chunk is one being written on a file-system store.
        broken = not data.strip() or not_json
        if broken and not (final or transport.exists(_chunk_uri(uri, index + 2))):
            break  # maybe still being written: read it again next time
        if broken and not data.strip():
            chunk_problems.append(f"{uri}: chunk {index + 1} is empty, skipped")
        messages.extend(parsed)
        problems.extend(chunk_problems)
        index += 1
    return MessageBatch(messages, index, problems)


# ----------------------------------------------------------------------------------------------
# Folding messages into a report


@dataclass
class JobReport:
    """What a job has reported so far, as the UI shows it."""

    progress: float | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    message: str | None = None
    device: str | None = None
    materialization: dict[str, Any] | None = None
    materializations: int = 0
    closed: bool = False
    exception: str | None = None
    exception_name: str | None = None
    problems: list[str] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _decode_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        return {}
    return {
        name: value["raw_value"] if isinstance(value, dict) and "raw_value" in value else value
        for name, value in metadata.items()
    }


def format_exception(exception: Any) -> str:
    """A Pipes exception (``{"name", "message", "stack", "cause", ...}``) as a few lines."""
    if not isinstance(exception, dict):
        return str(exception)
    name = exception.get("name") or "Exception"
    message = str(exception.get("message") or "").strip()
    if message.startswith(str(name)):
        headline = message
    else:
        headline = f"{name}: {message}" if message else str(name)
    lines = [headline]
    stack = exception.get("stack") or []
    if isinstance(stack, list) and stack:
        frames = [str(frame).rstrip("\n") for frame in stack[-_STACK_LINES:]]
        lines.append("Last frames:")
        lines.extend(frames)
    cause = exception.get("cause")
    if isinstance(cause, dict):
        cause_message = str(cause.get("message") or "").strip()
        lines.append(f"Caused by: {cause_message or cause.get('name')}")
    return "\n".join(lines)


def _fold_custom(report: JobReport, payload: dict[str, Any]) -> None:
    progress = _number(payload.get("progress"))
    if progress is not None and not math.isnan(progress):
        report.progress = min(1.0, max(0.0, progress))
    step: int | None = None
    raw_step = _number(payload.get("step"))
    if raw_step is not None and math.isfinite(raw_step) and raw_step == int(raw_step):
        step = int(raw_step)
        report.step = step
    if isinstance(payload.get("device"), str):
        report.device = payload["device"]
    if isinstance(payload.get("message"), str):
        report.message = payload["message"]
    metrics = payload.get("metrics")
    if isinstance(metrics, dict):
        numeric = {
            str(name): value for name, raw in metrics.items() if (value := _number(raw)) is not None
        }
        if numeric:
            report.metrics.update(numeric)
            numeric.pop("step", None)
            report.history.append({"step": step, **numeric})
            if len(report.history) > HISTORY_LIMIT:
                del report.history[: len(report.history) - HISTORY_LIMIT]


def _fold_one(report: JobReport, message: dict[str, Any]) -> None:
    method = message.get("method")
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
    if method == "report_custom_message":
        if isinstance(params.get("payload"), dict):
            _fold_custom(report, params["payload"])
    elif method == "log":
        report.logs.append(f"{params.get('level', 'INFO')} {params.get('message', '')}")
        if len(report.logs) > LOG_LIMIT:
            del report.logs[: len(report.logs) - LOG_LIMIT]
    elif method == "report_asset_materialization":
        report.materialization = {
            "metadata": _decode_metadata(params.get("metadata")),
            "data_version": params.get("data_version"),
        }
        report.materializations += 1
        if report.materializations > 1:
            suffix = " materializations reported; the last one is used"
            report.problems = [p for p in report.problems if not p.endswith(suffix)]
            report.problems.append(f"{report.materializations}{suffix}")
    elif method == "closed":
        report.closed = True
        if params.get("exception"):
            report.exception = format_exception(params["exception"])
            if isinstance(params["exception"], dict):
                report.exception_name = str(params["exception"].get("name") or "") or None


def fold(report: JobReport | None, messages: list[dict[str, Any]]) -> JobReport:
    """``report`` with ``messages`` folded in; ``report`` itself is left as it was.

    Incremental: ``fold(fold(None, a), b) == fold(None, a + b)``. Methods other than logs,
    custom messages, materializations and ``closed`` are ignored.
    """
    base = report or JobReport()
    out = dataclasses.replace(
        base,
        metrics=dict(base.metrics),
        history=list(base.history),  # entries are never changed once appended
        logs=list(base.logs),
        problems=list(base.problems),
    )
    for message in messages:
        _fold_one(out, message)
    return out


# ----------------------------------------------------------------------------------------------
# The training curve


def render_curve_png(history: list[dict[str, Any]], title: str) -> bytes | None:
    """A PNG of each metric over ``step`` (or arrival order); losses on their own axes.

    None with fewer than two points. matplotlib's object-oriented Figure with the Agg canvas,
    never pyplot.
    """
    if len(history) < 2:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_step = all(isinstance(entry.get("step"), int) for entry in history)
    names: list[str] = []
    for entry in history:
        names.extend(name for name in entry if name != "step" and name not in names)
    losses = [name for name in names if "loss" in name.lower()]
    others = [name for name in names if name not in losses]
    groups = [group for group in (losses, others) if group]

    figure = Figure(figsize=(4.5 * len(groups), 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(1, len(groups), squeeze=False)[0]
    figure.suptitle(title, fontsize=12)
    for axes, group in zip(axes_list, groups, strict=True):
        for name in group:
            points = [
                (entry["step"] if by_step else index, entry[name])
                for index, entry in enumerate(history)
                if name in entry
            ]
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, lw=2, marker="o" if len(points) < 30 else None, ms=3, label=name)
        axes.set_xlabel("Step" if by_step else "Report")
        axes.set_title("Loss" if group is losses else "Metrics")
        axes.legend(loc="best")
        axes.grid(alpha=0.3)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
