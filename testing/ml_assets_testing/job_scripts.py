"""Small Python programs that stand in for training jobs in tests: real processes that write a
file into their output, report their environment, wait for a signal file, sleep or fail, so every
backend's behaviour is exercised without a trainer's start-up cost."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

OUTPUT_FILE = "out.json"


def py(*lines: str) -> list[str]:
    """A command running the given Python lines in this interpreter.

    The program is one line (``exec`` of the source's literal): SageMaker's ContainerEntrypoint
    members must match ``.*``, which no line break does.
    """
    return [sys.executable, "-c", f"exec({chr(10).join(lines)!r})"]


def python_file(directory: Path, *lines: str) -> list[str]:
    """A command ``python <file>`` running the given lines from a new file in ``directory``.

    The shape every backend can run unstaged (Databricks runs only Python files).
    """
    path = directory / f"job_{uuid.uuid4().hex[:10]}.py"
    path.write_text("\n".join(lines) + "\n")
    return ["python", str(path)]


def write_output(document: dict[str, Any], name: str = OUTPUT_FILE) -> str:
    """Source that writes ``document`` as JSON to ``name`` in ``$ML_ASSETS_OUTPUT_URI``.

    Through ``ml_assets.transport``, so it works for a staged job's local folder and an unstaged
    job's ``s3://``, ``gs://`` or ``dbfs:/`` output alike (atomically for a local folder).
    """
    return (
        "import json, os\n"
        "from ml_assets import transport\n"
        f"doc = json.loads({json.dumps(document)!r})\n"
        "transport.write_json(transport.join(os.environ['ML_ASSETS_OUTPUT_URI'], "
        f"{name!r}), doc)"
    )


def write_env(names: list[str], name: str = OUTPUT_FILE) -> str:
    """Source that writes ``{name: os.environ.get(name)}`` for ``names`` like ``write_output``."""
    return (
        "import os\n"
        "from ml_assets import transport\n"
        f"doc = {{n: os.environ.get(n) for n in {names!r}}}\n"
        "transport.write_json(transport.join(os.environ['ML_ASSETS_OUTPUT_URI'], "
        f"{name!r}), doc)"
    )


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """Source that blocks until ``path`` exists, exiting 3 after ``timeout`` seconds."""
    return (
        "import os, time\n"
        f"deadline = time.time() + {timeout}\n"
        f"while not os.path.exists({str(path)!r}):\n"
        "    if time.time() > deadline: raise SystemExit(3)\n"
        "    time.sleep(0.02)"
    )
