"""The training job of the daemon chaos test: a real process that speaks Dagster Pipes.

It imports nothing but ``dagster_pipes`` and the standard library, so hundreds of them cost
little. What it does is decided by the plan file named in its hyperparameters, keyed by the run
id of its context (one run per job chain, the same across retries):

``{"<run id>": {"seconds": 1.5, "fail": "never" | "first" | "always", "metrics": true}}``

It reports progress every half second (with a loss when ``metrics``, which gives the model a
training curve), then either raises (``first``: on attempt 1 only;
``always``: on every attempt) or writes ``model.txt`` and reports the materialization naming it,
with its own run id and attempt, so the test can tell whose result a materialization carries.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dagster_pipes import open_dagster_pipes

ARTIFACT = "model.txt"


def main() -> None:
    with open_dagster_pipes() as pipes:
        attempt = pipes.retry_number + 1
        plan_file = Path(pipes.extras["hyperparameters"]["plan"])
        plan = json.loads(plan_file.read_text())[pipes.run_id]
        seconds = float(plan["seconds"])
        steps = max(1, round(seconds / 0.5))
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            report: dict[str, object] = {"progress": step / steps, "step": step}
            if plan.get("metrics"):
                report["metrics"] = {"loss": 1.0 / step}
            pipes.report_custom_message(report)
        if plan["fail"] == "always" or (plan["fail"] == "first" and attempt == 1):
            # Retryable on purpose: the reconciler does not retry a ValueError or TypeError.
            raise RuntimeError(f"planned failure of run {pipes.run_id} on attempt {attempt}")
        output = Path(os.environ["ML_ASSETS_OUTPUT_URI"])
        (output / ARTIFACT).write_text(f"{pipes.run_id} {attempt}\n")
        pipes.report_asset_materialization(
            metadata={"artifact": ARTIFACT, "plan_run": pipes.run_id, "plan_attempt": attempt},
            data_version=str(pipes.extras.get("features_data_version") or "chaos"),
        )


if __name__ == "__main__":
    main()
