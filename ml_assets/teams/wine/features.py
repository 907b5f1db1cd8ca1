"""The wine team's features: the measurements on a log scale where they are skewed, plus two
ratios that tell the cultivars apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def chemistry(wines: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``log_columns`` (params) on a log scale, the flavanoid share of phenols and the colour
    per unit of hue; the id and the cultivar pass through."""
    features = wines.copy()
    for column in params.get("log_columns", []):
        features[f"log_{column}"] = np.log1p(features.pop(column))
    features["flavanoid_share"] = wines["flavanoids"] / wines["total_phenols"]
    features["colour_per_hue"] = wines["color_intensity"] / wines["hue"]
    return features
