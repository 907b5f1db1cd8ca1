"""The library's job runner: runs a team's training function inside a compute job.

``python -m ml_assets.training.runner`` is the command of every job whose trainer is a Python
function (a team's ``module:function`` or a built-in). It speaks Dagster Pipes like any team
script: it opens ``dagster_pipes`` from the environment the backend was given, reads the job's
extras (the function, hyperparameters, seed, task and the features file), and then:

1. reads the features Parquet file and keeps the rows whose ``split`` is ``"train"``;
2. calls ``fit(train, hyperparameters, context)``; the function may report progress, metrics and
   log lines through ``context`` while it runs;
3. saves what ``fit`` returned: an estimator object is written as ``model.joblib`` with its
   feature columns and classes; a path (or ``None`` after writing ``context.artifact_dir``) is
   taken as the artifact as it is;
4. scores a saved estimator on the training rows, and reports one asset materialization with
   the artifact, the metrics, the device, the row counts and the data version of the features.

Files go to ``$ML_ASSETS_OUTPUT_URI``, a local folder (the stage wrapper ships it to object
storage on remote backends). A failure raises, which Pipes reports as the ``closed`` message's
exception, and the process exits 1. This module imports neither dagster nor any cloud SDK.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_ENV = "ML_ASSETS_OUTPUT_URI"
MODEL_FILE = "model.joblib"
ARTIFACT_DIR = "artifact"
LABEL = "label"
SPLIT = "split"
ROW_ID = "row_id"
NOT_FEATURES = (ROW_ID, LABEL, SPLIT)


@dataclass
class TrainContext:
    """What a training function gets besides its rows and hyperparameters.

    ``report`` and ``log`` reach the trained-model asset's page while the job runs;
    ``artifact_dir`` is where a function that saves its own artifact writes it.
    """

    seed: int
    task: str
    output_dir: Path
    feature_columns: tuple[str, ...]
    classes: tuple[Any, ...] | None
    label_column: str = LABEL
    device: str = "cpu"
    _pipes: Any = field(default=None, repr=False)

    @property
    def artifact_dir(self) -> Path:
        path = self.output_dir / ARTIFACT_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def report(
        self,
        *,
        progress: float | None = None,
        metrics: dict[str, float] | None = None,
        step: int | None = None,
        message: str | None = None,
    ) -> None:
        """Send progress (0..1), metrics at a step, or a status line to the asset's page."""
        payload: dict[str, Any] = {}
        if progress is not None:
            payload["progress"] = max(0.0, min(1.0, float(progress)))
        if metrics:
            payload["metrics"] = {name: float(value) for name, value in metrics.items()}
        if step is not None:
            payload["step"] = int(step)
        if message:
            payload["message"] = message
        if payload and self._pipes is not None:
            self._pipes.report_custom_message(payload)

    def log(self, message: str) -> None:
        """A log line, in the job's log and on the asset's page."""
        print(f"[ml_assets.runner] {message}", flush=True)
        if self._pipes is not None:
            self._pipes.log.info(message)

    def set_device(self, device: str) -> None:
        """Record the device the model really trained on, e.g. ``cuda (NVIDIA T4)``."""
        self.device = device
        self.report(message=f"training on {device}")
        if self._pipes is not None:
            self._pipes.report_custom_message({"device": device})

    def epoch_callback(self, low: float = 0.1, high: float = 0.9) -> Any:
        """A callback ``(epoch, epochs, loss)`` reporting progress and the loss per epoch."""

        def callback(epoch: int, epochs: int, loss: float) -> None:
            self.report(
                progress=low + (high - low) * epoch / max(1, epochs),
                step=epoch,
                metrics={"train_loss": loss},
            )

        return callback


def _features_path(uri: str) -> Path:
    from ml_assets import transport

    if transport.is_local(uri):
        return transport.local_path(uri)
    return transport.fetch(uri)


def run(pipes: Any, output_dir: Path) -> dict[str, Any]:
    """Train as the module docstring says; returns the reported metadata."""
    import numpy as np
    import pyarrow.parquet as pq

    from ml_assets.references import resolve
    from ml_assets.tables import file_sha256

    started = time.monotonic()
    extras = pipes.extras
    task = str(extras.get("task", "binary"))
    reference = str(extras["trainer"])
    hyperparameters = dict(extras.get("hyperparameters") or {})
    features_path = _features_path(str(extras["features_uri"]))
    data_version = file_sha256(features_path)
    frame = pq.read_table(features_path).to_pandas()
    for column in (LABEL, SPLIT):
        if column not in frame.columns:
            raise ValueError(f"features file {features_path} has no {column!r} column")
    columns = tuple(str(c) for c in frame.columns if c not in NOT_FEATURES)
    train = frame.loc[(frame[SPLIT] == "train").to_numpy(), [*columns, LABEL]]
    rows_holdout = int((frame[SPLIT] == "holdout").sum())
    classes = None
    if task != "regression":
        classes = tuple(np.unique(frame[LABEL].to_numpy()).tolist())
        present = set(np.unique(train[LABEL].to_numpy()).tolist())
        if len(present) < 2:
            raise ValueError(f"the training rows hold a single class {sorted(present)}")
    context = TrainContext(
        seed=int(extras.get("seed", 0)),
        task=task,
        output_dir=output_dir,
        feature_columns=columns,
        classes=classes,
        _pipes=pipes,
    )
    context.log(f"{len(train)} train / {rows_holdout} holdout rows, {len(columns)} features")
    context.report(progress=0.1, message=f"fitting {reference}")
    fit = resolve(reference)
    returned = fit(train, hyperparameters, context)
    context.report(progress=0.9, message="fitted")

    artifact, flavour = _save(returned, context, reference, hyperparameters)
    metrics = _train_metrics(artifact, flavour, train, context)
    metadata: dict[str, Any] = {
        "artifact": artifact.relative_to(output_dir).as_posix(),
        "flavour": flavour,
        "device": context.device,
        "trainer": reference,
        "rows_train": len(train),
        "rows_holdout": rows_holdout,
        "duration_seconds": round(time.monotonic() - started, 3),
        **metrics,
    }
    pipes.report_asset_materialization(metadata=metadata, data_version=data_version)
    context.report(progress=1.0, message="done")
    return metadata


def _save(
    returned: Any, context: TrainContext, reference: str, hyperparameters: dict[str, Any]
) -> tuple[Path, str]:
    import joblib

    from ml_assets.files import write_atomically

    output = context.output_dir
    if returned is None:
        artifact = output / ARTIFACT_DIR
        if not artifact.exists() or not any(artifact.iterdir()):
            raise ValueError(
                f"{reference} returned None but wrote nothing to context.artifact_dir ({artifact})"
            )
        return artifact, "folder"
    if isinstance(returned, str | os.PathLike):
        artifact = Path(returned).resolve()
        if not artifact.exists() or output.resolve() not in (artifact, *artifact.parents):
            raise ValueError(f"{reference} returned {artifact}, which is not inside {output}")
        return artifact, "folder" if artifact.is_dir() else "file"
    bundle = {
        "estimator": returned,
        "feature_columns": list(context.feature_columns),
        "task": context.task,
        "classes": list(context.classes) if context.classes is not None else None,
        "trainer": reference,
        "hyperparameters": hyperparameters,
    }
    artifact = output / MODEL_FILE
    write_atomically(artifact, lambda temporary: joblib.dump(bundle, temporary))
    return artifact, "joblib"


def _train_metrics(
    artifact: Path, flavour: str, train: Any, context: TrainContext
) -> dict[str, float]:
    """Metrics of a saved estimator on its own training rows, through the same loader and
    scorer that evaluation uses (so a model that cannot be loaded fails here, in the job)."""
    if flavour != "joblib":
        return {}
    from ml_assets.evaluation import evaluate, load_model, predict

    model = load_model(artifact)
    predictions = predict(model, train, context.task, context.classes)
    scored = evaluate(
        context.task, train[LABEL].to_numpy(), predictions, classes=context.classes
    ).metrics
    return {name: float(value) for name, value in scored.items() if name != "n"}


def main() -> int:
    """Open Pipes from the environment, train, and return the exit status."""
    from dagster_pipes import open_dagster_pipes

    output = Path(os.environ.get(OUTPUT_ENV) or os.getcwd()).resolve()
    output.mkdir(parents=True, exist_ok=True)
    try:
        with open_dagster_pipes() as pipes:
            run(pipes, output)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
