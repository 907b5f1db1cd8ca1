"""The screening team's training script: logistic regression by mini-batch gradient descent,
in plain numpy, run as ``python train.py`` in the team's image. It imports no ml_assets.

The contract, as this script sees it
------------------------------------

**What it finds in its environment.** ``open_dagster_pipes()`` reads two variables the
platform sets: ``DAGSTER_PIPES_CONTEXT`` (the job's Pipes context) and
``DAGSTER_PIPES_MESSAGES`` (where its messages go). The context's ``extras`` hold:

* ``features_uri``: the features Parquet file, a local path here (any URI ``pyarrow.fs``
  understands is read too). Besides the feature columns it has ``row_id``, ``label`` (0/1) and
  ``split`` (``"train"``/``"holdout"``); the script trains on the ``train`` rows only and every
  other column is a feature;
* ``features_data_version``: the sha256 of that file's bytes. The script checks the bytes it
  read against it and reports it as the model's data version, so the model is tied to exactly
  the features it saw;
* ``hyperparameters``: the team YAML's ``trainer.hyperparameters`` (here ``epochs``,
  ``batch_size``, ``learning_rate``, ``decay``, ``l2``);
* ``seed``: ``trainer.seed``; also ``task`` and ``label``.

``ML_ASSETS_OUTPUT_URI`` names this job's own output folder.

**Where it writes its artifact.** ``model.npz`` in ``$ML_ASSETS_OUTPUT_URI``: the weights, the
bias, the standardisation (``mean``, ``scale``) and the feature column order. The team's
``predict`` function (``predict.py`` beside this file) scores it, without this script.

**What it must report**, through Dagster Pipes:

* while it trains, one ``report_custom_message`` per epoch with the keys the platform reads:
  ``progress`` (0..1), ``step`` (the epoch) and ``metrics`` (``loss``, ``accuracy``), plus
  ``device`` and ``message`` once; the platform shows them on the trained model's page while the
  job runs and draws the training curve from them;
* log lines with ``pipes.log.info``;
* at the end, exactly one ``report_asset_materialization`` with ``metadata`` naming the
  ``artifact`` (relative to the output folder), the ``device`` and the final metrics as floats,
  and ``data_version=features_data_version``. Without it the job counts as failed even if it
  exits 0.

Any exception is reported to the platform by ``open_dagster_pipes`` and exits non-zero, which the
platform records (and retries, up to the team's ``retry.max_attempts``).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_pipes import open_dagster_pipes

ARTIFACT = "model.npz"
NOT_FEATURES = ("row_id", "label", "split")
DEFAULTS: dict[str, Any] = {
    "epochs": 300,
    "batch_size": 64,
    "learning_rate": 0.1,
    "decay": 0.01,
    "l2": 0.001,
}


def read_bytes(uri: str) -> bytes:
    """A local path's bytes, or a URI's through ``pyarrow.fs`` (``file://``, ``s3://``...)."""
    if "://" not in uri:
        with open(uri, "rb") as file:
            return file.read()
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())


def write_bytes(folder: str, name: str, data: bytes) -> None:
    """``data`` as ``folder/name``, whole or not at all (a local folder, or a URI)."""
    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, f".{name}.partial")
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, os.path.join(folder, name))
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(folder.rstrip("/") + "/" + name)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def load_training_rows(extras: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``train`` rows of the features file as (x, y, feature columns), after checking the
    file is the version the platform named."""
    data = read_bytes(str(extras["features_uri"]))
    digest = hashlib.sha256(data).hexdigest()
    expected = str(extras["features_data_version"])
    if digest != expected:
        raise ValueError(
            f"{extras['features_uri']} has sha256 {digest}, not the version {expected} "
            "this job was submitted with"
        )
    table = pq.read_table(pa.BufferReader(data))
    frame = {name: table.column(name).to_numpy() for name in table.column_names}
    for column in ("label", "split"):
        if column not in frame:
            raise ValueError(f"the features file has no {column!r} column")
    columns = [name for name in table.column_names if name not in NOT_FEATURES]
    train = frame["split"] == "train"
    x = np.column_stack([frame[name].astype(np.float64) for name in columns])[train]
    y = frame["label"].astype(np.float64)[train]
    if not set(np.unique(y).tolist()) == {0.0, 1.0}:
        raise ValueError(f"the training labels must hold both 0 and 1, got {np.unique(y)}")
    return x, y, columns


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    # Average ranks over ties.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
    ends = np.r_[starts[1:], len(p)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    positives = y == 1.0
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def train(
    pipes: Any, hyperparameters: dict[str, Any], seed: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Standardise, then ``epochs`` passes of mini-batch gradient descent on the L2-penalised
    log loss, reporting the loss and accuracy on the training rows after each epoch."""
    settings = {**DEFAULTS, **hyperparameters}
    epochs, batch = int(settings["epochs"]), int(settings["batch_size"])
    rate, decay, l2 = (float(settings[k]) for k in ("learning_rate", "decay", "l2"))
    if epochs < 1 or batch < 1 or rate <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, learning_rate > 0: {settings}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    rng = np.random.default_rng(seed)
    weights = np.zeros(z.shape[1])
    bias = float(np.log(y.mean() / (1.0 - y.mean())))  # start from the base rate
    for epoch in range(1, epochs + 1):
        step = rate / (1.0 + decay * (epoch - 1))
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            error = sigmoid(z[rows] @ weights + bias) - y[rows]
            weights -= step * (z[rows].T @ error / len(rows) + l2 * weights)
            bias -= step * float(error.mean())
        p = sigmoid(z @ weights + bias)
        pipes.report_custom_message(
            {
                "progress": 0.05 + 0.9 * epoch / epochs,
                "step": epoch,
                "metrics": {
                    "loss": log_loss(y, p),
                    "accuracy": float(np.mean((p >= 0.5) == (y == 1.0))),
                },
            }
        )
    return weights, bias, mean, scale


def main() -> int:
    started = time.monotonic()
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        output = os.environ["ML_ASSETS_OUTPUT_URI"]
        x, y, columns = load_training_rows(extras)
        pipes.log.info(f"{len(y)} training rows, {len(columns)} features, {y.mean():.1%} positive")
        pipes.report_custom_message({"progress": 0.05, "device": "cpu", "message": "training"})
        hyperparameters = dict(extras.get("hyperparameters") or {})
        weights, bias, mean, scale = train(
            pipes, hyperparameters, int(extras.get("seed") or 0), x, y
        )
        buffer = io.BytesIO()
        np.savez(
            buffer,
            weights=weights,
            bias=np.float64(bias),
            mean=mean,
            scale=scale,
            columns=np.array(columns, dtype=np.str_),
        )
        write_bytes(output, ARTIFACT, buffer.getvalue())
        p = sigmoid(((x - mean) / scale) @ weights + bias)
        final = {
            "loss": log_loss(y, p),
            "accuracy": float(np.mean((p >= 0.5) == (y == 1.0))),
            "roc_auc": roc_auc(y, p),
        }
        pipes.log.info(
            f"wrote {ARTIFACT}; training loss {final['loss']:.4f}, "
            f"accuracy {final['accuracy']:.4f}, ROC AUC {final['roc_auc']:.4f}"
        )
        pipes.report_asset_materialization(
            metadata={
                "artifact": ARTIFACT,
                "device": "cpu",
                **final,
                "epochs": int(hyperparameters.get("epochs", DEFAULTS["epochs"])),
                "rows_train": len(y),
                "duration_seconds": round(time.monotonic() - started, 3),
            },
            data_version=extras["features_data_version"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
