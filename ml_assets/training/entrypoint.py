"""Train one model inside a compute job: ``python -m ml_assets.training.entrypoint --job JSON``.

The job document is ``{"trainer": str, "hyperparameters": {...}, "features_uri": path,
"output_uri": dir, "seed": int}`` (``hyperparameters`` and ``seed`` are optional, and
``output_uri`` defaults to ``$ML_ASSETS_OUTPUT_URI``, which every backend sets). The job
reads the feature Parquet file, fits the trainer on the rows whose ``split`` is ``"train"``
and writes into ``output_uri``:

* ``progress.json`` - ``{"fraction": 0..1, "message": str}``, replaced at each milestone;
* ``model.joblib`` - ``{"estimator", "feature_columns", "trainer", "hyperparameters"}``;
* ``result.json`` - the result document returned by :func:`run_job`.

``result.json`` appears only after the model file is in place (written to a temporary file and
renamed), so its presence is the success signal a backend polls for. On failure the traceback
goes to stderr, the exit status is non-zero and there is no ``result.json``.

This module runs where neither dagster nor any cloud SDK is installed: it writes local files only
(``ml_assets.training.stage`` ships them to object storage on remote backends), and reads local
paths, or downloads a remote ``features_uri`` through ``ml_assets.transport``, which imports the
store's SDK only then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from ml_assets import transport
from ml_assets.datasets import file_sha256
from ml_assets.evaluation import TrainedModel, predict_scores
from ml_assets.features import feature_columns
from ml_assets.files import write_json_atomic
from ml_assets.training.trainers import build_estimator

MODEL_FILE = "model.joblib"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"

_REQUIRED_KEYS = ("trainer", "features_uri", "output_uri")
_OPTIONAL_KEYS = ("hyperparameters", "seed")
# Every backend tells the job where to write; a job document may also name it itself.
OUTPUT_ENV = "ML_ASSETS_OUTPUT_URI"
_LOG_PREFIX = "[ml_assets.training]"


def _say(message: str) -> None:
    print(f"{_LOG_PREFIX} {message}", flush=True)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``.

    Pollers (the backend, the reconciling sensor) read these files while the job runs; a rename
    within one directory is atomic, so they see the old file or the new one, never a torn one.
    """
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _local_path(uri: str, key: str) -> Path:
    if not transport.is_local(uri):
        raise ValueError(
            f"{key} {uri!r} is not a local path; the training entrypoint writes local files "
            "only (ml_assets.training.stage ships them to object storage)"
        )
    return transport.local_path(uri).resolve()


def _input_path(uri: str) -> Path:
    """A local copy of an input: the path itself, or a download from object storage (whose
    SDK ``transport`` imports only then)."""
    if transport.is_local(uri):
        return _local_path(uri, "features_uri")
    _say(f"downloading {uri}")
    return transport.fetch(uri)


def parse_job(job: Any) -> dict[str, Any]:
    """Validate a job document and fill in defaults (``hyperparameters={}``, ``seed=0``).

    Unknown keys are rejected rather than ignored, so a misspelt ``hyperparameter`` fails the
    job instead of silently training with defaults.
    """
    if not isinstance(job, dict):
        raise ValueError(f"job must be a JSON object, got {type(job).__name__}")
    if "output_uri" not in job and os.environ.get(OUTPUT_ENV):
        job = {**job, "output_uri": os.environ[OUTPUT_ENV]}
    missing = [key for key in _REQUIRED_KEYS if key not in job]
    if missing:
        raise ValueError(f"job is missing required keys: {', '.join(missing)}")
    unknown = sorted(set(job) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        allowed = ", ".join(_REQUIRED_KEYS + _OPTIONAL_KEYS)
        raise ValueError(f"job has unknown keys: {', '.join(unknown)} (allowed: {allowed})")
    for key in _REQUIRED_KEYS:
        if not isinstance(job[key], str) or not job[key]:
            raise ValueError(f"job {key} must be a non-empty string, got {job[key]!r}")
    hyperparameters = job.get("hyperparameters", {})
    if not isinstance(hyperparameters, dict):
        raise ValueError(f"job hyperparameters must be an object, got {hyperparameters!r}")
    seed = job.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"job seed must be an integer, got {seed!r}")
    return {
        "trainer": job["trainer"],
        "hyperparameters": hyperparameters,
        "features_uri": job["features_uri"],
        "output_uri": job["output_uri"],
        "seed": seed,
    }


class _Progress:
    def __init__(self, output: Path) -> None:
        self.path = output / PROGRESS_FILE
        self.fraction = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.fraction = fraction
        write_json_atomic(self.path, {"fraction": fraction, "message": message})
        _say(f"{fraction:4.0%} {message}")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one training job in this process and return its result document.

    The document (also written to ``<output_uri>/result.json``) is::

        {"metrics": {"train_roc_auc", "train_accuracy", "train_log_loss"},
         "artifact_uri": abs path of model.joblib, "data_version": sha256 of the features file,
         "features_uri", "trainer", "hyperparameters", "seed", "feature_columns",
         "rows_train", "rows_holdout", "duration_seconds"}

    Raises on any problem (bad job, unreadable features, single-class training rows, or the
    estimator's own errors); then no ``result.json`` exists in ``output_uri``.
    """
    started = time.monotonic()
    spec = parse_job(job)
    output = _local_path(spec["output_uri"], "output_uri")
    output.mkdir(parents=True, exist_ok=True)
    # A retry into the same directory must not leave an earlier attempt's success visible.
    (output / RESULT_FILE).unlink(missing_ok=True)
    progress = _Progress(output)
    progress(0.0, f"starting {spec['trainer']} job")
    try:
        result = _train(spec, output, progress, started)
    except BaseException as error:
        # Best effort: the original error matters more than a failed progress update.
        with contextlib.suppress(OSError):
            progress(progress.fraction, f"failed: {type(error).__name__}: {error}")
        raise
    return result


def _train(
    spec: dict[str, Any], output: Path, progress: _Progress, started: float
) -> dict[str, Any]:
    features_path = _input_path(spec["features_uri"])
    # Hashing first pins the version to the bytes this job read: features files are immutable
    # per run, so the hash and the parsed table describe the same file.
    data_version = file_sha256(features_path)
    frame = pd.read_parquet(features_path)
    for column in ("label", "split"):
        if column not in frame.columns:
            raise ValueError(f"features file {features_path} has no {column!r} column")
    columns = feature_columns(frame)
    if not columns:
        raise ValueError(f"features file {features_path} has no feature columns")
    is_train = (frame["split"] == "train").to_numpy()
    train = frame.loc[is_train]
    rows_holdout = int((frame["split"] == "holdout").sum())
    labels = train["label"].to_numpy().astype(np.int64)
    classes = sorted(set(np.unique(labels).tolist()))
    if classes != [0, 1]:
        raise ValueError(
            f"training rows must contain both classes 0 and 1, found {classes} "
            f"in {len(train)} rows with split == 'train'"
        )
    progress(
        0.2, f"loaded {len(train)} train / {rows_holdout} holdout rows, {len(columns)} features"
    )

    estimator = build_estimator(spec["trainer"], spec["hyperparameters"], spec["seed"])
    estimator.fit(train[columns], labels)
    progress(0.8, f"fitted {type(estimator).__name__}")

    model = TrainedModel(estimator=estimator, feature_columns=tuple(columns))
    scores = predict_scores(model, train)
    metrics = {
        "train_roc_auc": float(roc_auc_score(labels, scores)),
        "train_accuracy": float(accuracy_score(labels, (scores >= 0.5).astype(np.int64))),
        "train_log_loss": float(log_loss(labels, scores, labels=[0, 1])),
    }
    artifact = output / MODEL_FILE
    bundle = {
        "estimator": estimator,
        "feature_columns": list(columns),
        "trainer": spec["trainer"],
        "hyperparameters": spec["hyperparameters"],
    }
    _write_atomically(artifact, lambda temporary: joblib.dump(bundle, temporary))
    progress(0.95, f"wrote {artifact}")

    result = {
        "metrics": metrics,
        "artifact_uri": str(artifact),
        "data_version": data_version,
        "features_uri": spec["features_uri"],
        "trainer": spec["trainer"],
        "hyperparameters": spec["hyperparameters"],
        "seed": spec["seed"],
        "feature_columns": list(columns),
        "rows_train": len(train),
        "rows_holdout": rows_holdout,
        "duration_seconds": round(time.monotonic() - started, 3),
    }
    write_json_atomic(output / RESULT_FILE, result)
    progress(1.0, "done: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parse ``--job``, run it, return the exit status (0 ok, 1 failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m ml_assets.training.entrypoint", description="Train one model."
    )
    parser.add_argument("--job", required=True, help="the job document as a JSON object")
    arguments = parser.parse_args(argv)
    try:
        job = json.loads(arguments.job)
        run_job(job)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
