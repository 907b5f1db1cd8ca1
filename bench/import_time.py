"""How long a team code location takes to import, against a bare ``import dagster``.

Dagster imports a code location again for every run and every step, so this is paid often.
Each figure is the median of fresh interpreter processes, measured in the same run as the
baseline. Usage: ``python bench/import_time.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

TARGETS = {
    "import dagster (baseline)": "dagster",
    "platform_data location": "ml_assets.platform_data.definitions",
    "fraud location": "ml_assets.teams.fraud.definitions",
    "clinical location": "ml_assets.teams.clinical.definitions",
}
PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def measure(module: str, repeat: int) -> float:
    """Median wall time of importing ``module`` in a fresh interpreter."""
    times = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "import dagster"], check=True)  # warm the file cache
    results = {name: measure(module, args.repeat) for name, module in TARGETS.items()}
    baseline = results["import dagster (baseline)"]
    print(f"{'target':<28}{'median s':>10}{'x dagster':>11}")
    for name, seconds in results.items():
        print(f"{name:<28}{seconds:>10.3f}{seconds / baseline:>11.2f}")


if __name__ == "__main__":
    main()
