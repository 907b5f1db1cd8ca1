"""Wall time of ``ml-assets audit <team>/<model> --stage production`` on a registry of 100 versions.

    python bench/audit_time.py [--versions 100] [--repeat 7] [--kinds local,sagemaker,...]

For each registry kind it registers ``--versions`` versions of one model (each with a full
lineage document and a promotion note), makes the last one production, then runs the audit
command as a fresh process ``--repeat`` times, text and JSON. The baseline, measured in the same
run, is a bare ``python -c pass``: the figures are medians in seconds and as a ratio to it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
from ml_assets_testing.mlflow_server import mlflow_server
from sklearn.linear_model import LogisticRegression

from ml_assets.registries import team_registry
from ml_assets.registries.base import PRODUCTION, RegistrationRequest

MODEL = "bench.model"


def lineage(index: int) -> dict[str, object]:
    digest = f"{index:064x}"
    return {
        "dataset": {"data_version": digest, "run_id": f"run-d{index}", "code_version": "c1"},
        "features": {"data_version": digest, "run_id": f"run-f{index}", "code_version": "c2"},
        "training": {"job_id": f"job-{index}", "backend": "local", "artifact_sha256": digest},
        "evaluation": {"run_id": f"run-e{index}", "verdict": "all thresholds met"},
        "registration": {"run_id": f"run-r{index}"},
    }


@contextlib.contextmanager
def registry_settings(kind: str, root: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """The registry kind and YAML settings for a bench registry under ``root``."""
    if kind == "mlflow-server":
        with mlflow_server(root / "server") as url:
            yield "mlflow", {"tracking_uri": url}
        return
    if kind == "mlflow-sqlite":
        yield "mlflow", {}
        return
    if kind == "wandb-offline":
        os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
        yield "wandb", {"mode": "offline"}
        return
    if kind == "sagemaker":
        from ml_assets_testing.moto_server import REGION, TEST_ENVIRONMENT, moto_server

        os.environ.update(TEST_ENVIRONMENT)
        with moto_server(buckets=["bench-registry"]) as url:
            yield (
                "sagemaker",
                {
                    "storage_root": "s3://bench-registry/registry",
                    "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sklearn:1",
                    "region_name": REGION,
                    "endpoint_url": url,
                },
            )
        return
    yield kind, {}


def fill(kind: str, settings: dict[str, object], home: Path, versions: int) -> float:
    registry = team_registry(kind, dict(settings), "bench", home)
    artifact = home / "model.joblib"
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    joblib.dump({"estimator": model, "feature_columns": ["x"]}, artifact)
    started = time.perf_counter()
    for index in range(1, versions + 1):
        version = registry.register(
            RegistrationRequest(
                model_name=MODEL,
                artifact_path=str(artifact),
                job_id=f"job-{index}",
                metrics={"holdout_roc_auc": 0.9 + index / 10_000},
                params={"C": 1.0},
                lineage=lineage(index),
            )
        )
        registry.annotate(
            MODEL,
            version.version,
            {"promotion": {"decision": "promoted", "at": "2026-11-25T00:00:00"}},
        )
    registry.set_alias(MODEL, str(versions), PRODUCTION)
    return time.perf_counter() - started


def timed(command: list[str], env: dict[str, str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--kinds", default="local,mlflow-server,mlflow-sqlite,wandb-offline,sagemaker"
    )
    args = parser.parse_args()
    baseline = timed([sys.executable, "-c", "pass"], dict(os.environ), args.repeat)
    print(f"baseline `python -c pass`: {baseline:.3f} s")
    print(f"{'registry':<15} {'fill':>8} {'audit text':>12} {'ratio':>7} {'audit json':>12}")
    for kind_name in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            with registry_settings(kind_name, root) as (kind, settings):
                env = {**os.environ, "ML_ASSETS_HOME": str(root / "home")}
                os.environ["ML_ASSETS_HOME"] = env["ML_ASSETS_HOME"]
                (root / "home").mkdir()
                fill_seconds = fill(kind, settings, root / "home", args.versions)
                spec = root / "team.yaml"
                registry_yaml = "".join(f"  {k}: {v}\n" for k, v in settings.items())
                spec.write_text(f"team: bench\nregistry:\n  kind: {kind}\n{registry_yaml}")
                command = [
                    sys.executable,
                    "-m",
                    "ml_assets.audit",
                    "audit",
                    "bench/model",
                    "--stage",
                    PRODUCTION,
                    "--spec",
                    str(spec),
                ]
                text = timed(command, env, args.repeat)
                as_json = timed([*command, "--json"], env, args.repeat)
                print(
                    f"{kind_name:<15} {fill_seconds:7.1f}s {text:11.3f}s "
                    f"{text / baseline:6.1f}x {as_json:11.3f}s"
                )


if __name__ == "__main__":
    main()
