"""Small Python programs that stand in for training jobs in tests: real processes that write a
real ``result.json``, wait for a signal file, sleep or fail, so every backend's behaviour is
exercised without a trainer's start-up cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def py(*lines: str) -> list[str]:
    """A command running the given Python lines in this interpreter."""
    return [sys.executable, "-c", "\n".join(lines)]


def write_result(document: dict[str, Any]) -> str:
    """Source that writes ``document`` as the job's result.json, atomically."""
    return (
        "import json, os\n"
        "out = os.environ['ML_ASSETS_OUTPUT_URI']\n"
        "with open(os.path.join(out, 'result.json.tmp'), 'w') as f:\n"
        f"    f.write({json.dumps(document)!r})\n"
        "os.replace(os.path.join(out, 'result.json.tmp'), os.path.join(out, 'result.json'))"
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
