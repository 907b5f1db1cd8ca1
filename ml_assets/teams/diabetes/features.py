"""The diabetes team's features: sex one-hot encoded, the product of BMI and blood pressure,
and the skewed serum measurements on a log scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def risk_factors(patients: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``sex`` as one 0/1 column per code in ``sex_codes`` (params, default 1 and 2, so the schema
    never depends on which codes a table holds), one product column per pair in
    ``interactions`` (params, e.g. ``[[bmi, bp]]`` gives ``bmi_x_bp``) and ``log_columns``
    (params) replaced by their logarithm (``log_<name>``); the id and the target pass through."""
    features = patients.drop(columns=["sex"])
    codes = [int(code) for code in params.get("sex_codes", [1, 2])]
    unknown = sorted(set(patients["sex"].unique().tolist()) - set(codes))
    if unknown:
        raise ValueError(f"sex codes {unknown} are not in sex_codes {codes}")
    for code in codes:
        features[f"sex_{code}"] = (patients["sex"] == code).astype("int8")
    for left, right in params.get("interactions", []):
        features[f"{left}_x_{right}"] = patients[left] * patients[right]
    for column in params.get("log_columns", []):
        if (patients[column] <= 0).any():
            raise ValueError(f"log_columns: {column!r} has values <= 0")
        features[f"log_{column}"] = np.log(features.pop(column))
    return features
