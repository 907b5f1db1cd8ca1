"""API calls one poll makes over many in-flight jobs, per remote backend, against its fake.

    python bench/poll_calls.py [--jobs 1000] [--backends kubernetes,sagemaker,vertex,databricks]

Each backend's fake is started, ``--jobs`` jobs are submitted through the real backend and SDK,
the fake's call counters are reset, and ``backend.poll`` runs once over every handle. The jobs
are kept pending (no process started): a poll answers pending and running jobs from the same
list calls, and a thousand sleeping interpreters would only load the machine. The baseline is
what polling one job at a time would cost, one describe per job; the ratio is against it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from typing import Any

PENDING_ARGUMENTS: dict[str, dict[str, Any]] = {
    "kubernetes": {"start_processes": False},
    "sagemaker": {"running": False},
    "vertex": {},
    "databricks": {},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--backends", default=",".join(PENDING_ARGUMENTS))
    args = parser.parse_args()
    # No machine profile or credentials may leak into the fakes' SDK clients.
    os.environ["DATABRICKS_CONFIG_FILE"] = os.path.join(tempfile.mkdtemp(), "none")
    print(f"one poll over {args.jobs} in-flight jobs; baseline: {args.jobs} calls (one per job)")
    print(f"{'backend':<12} {'calls':>6} {'vs baseline':>12}  routes")
    for name in args.backends.split(","):
        fake = importlib.import_module(f"ml_assets_testing.fake_{name}")
        counted = fake.count_poll_calls(args.jobs, **PENDING_ARGUMENTS[name])
        assert counted["jobs"] == args.jobs, counted
        routes = ", ".join(f"{route} x{count}" for route, count in counted["by_route"].items())
        ratio = counted["calls"] / args.jobs
        print(f"{name:<12} {counted['calls']:>6} {ratio:>11.3f}x  {routes}", flush=True)


if __name__ == "__main__":
    main()
