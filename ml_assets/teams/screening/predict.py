"""Scoring the screening model: the ``model.npz`` its training script writes, read with numpy.

The evaluation, promotion and serving assets call :func:`malignancy_probability` (the team
YAML's ``predict``); it needs neither the training script nor dagster_pipes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def malignancy_probability(artifact_path: Path, features: pd.DataFrame) -> np.ndarray:
    """The probability that each row is malignant (label 1), as a 1-D float array.

    Columns are selected by name in the order the model was trained on, so extra columns are
    ignored and a missing one is a ValueError naming it.
    """
    with np.load(artifact_path, allow_pickle=False) as model:
        columns = [str(name) for name in model["columns"]]
        weights, bias = model["weights"], float(model["bias"])
        mean, scale = model["mean"], model["scale"]
    missing = [name for name in columns if name not in features.columns]
    if missing:
        raise ValueError(f"features are missing model columns: {', '.join(missing)}")
    x = features[columns].to_numpy(dtype=np.float64)
    z = ((x - mean) / scale) @ weights + bias
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)
