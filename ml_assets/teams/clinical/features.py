"""The clinical team's features: the 30 cell-nucleus measurements as they are, as floats."""

from __future__ import annotations

from typing import Any

import pandas as pd


def measurements(raw: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Every measurement column as float64, with the row id and the malignant label."""
    measured = [c for c in raw.columns if c not in ("row_id", "label")]
    features = raw[measured].astype("float64")
    features.insert(0, "row_id", raw["row_id"].astype("int64"))
    features["label"] = raw["label"].astype("int8")
    return features
