"""The vision team's features: the 64 pixels of each 8x8 digit, scaled to [0, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml_assets.platform_data.sources import DIGIT_PIXEL_COLUMNS, DIGIT_PIXEL_MAX


def digit_pixels(raw: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The pixels as float32 in [0, 1], and the label "digit is 5 or more".

    Dividing by the fixed maximum ink count (not this table's maximum) keeps a pixel's value
    independent of which other images are in the file. The digit itself is the label's source
    and never a feature.
    """
    pixels = raw[list(DIGIT_PIXEL_COLUMNS)].to_numpy(dtype=np.float64)
    # NaN fails both comparisons, so missing pixels are caught here too.
    if not np.all((pixels >= 0) & (pixels <= DIGIT_PIXEL_MAX)):
        raise ValueError(f"digit pixels must lie in 0..{DIGIT_PIXEL_MAX} and not be missing")
    features = pd.DataFrame(
        (pixels / DIGIT_PIXEL_MAX).astype(np.float32), columns=DIGIT_PIXEL_COLUMNS, index=raw.index
    )
    features.insert(0, "row_id", raw["row_id"].astype(np.int64))
    features["label"] = (raw["digit"] >= int(params.get("positive_from", 5))).astype(np.int8)
    return features
