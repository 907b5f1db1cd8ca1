"""``dagster-daemon run``, started ahead of its turn.

``python chaos_daemon.py <go file> <workspace>``: the daemon chaos test starts the next daemon
while the current one still runs, so that a restart after a kill costs no import. This imports
the daemon's command line (most of a start's cost), touches ``<go file>.ready`` and waits,
touching neither the instance nor the code server, until ``<go file>`` exists. Then it is
``dagster-daemon run -w <workspace>``, through the same entry point as the console script.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    go, workspace = Path(sys.argv[1]), sys.argv[2]
    from dagster._daemon.cli import main as daemon_main

    go.with_name(go.name + ".ready").touch()
    while not go.exists():
        time.sleep(0.02)
    sys.argv = ["dagster-daemon", "run", "-w", workspace]
    daemon_main()


if __name__ == "__main__":
    main()
