"""The wine team's rows: scikit-learn's bundled chemical analyses of 178 wines from three
cultivars (no network needed)."""

from __future__ import annotations

import re

import pandas as pd


def load_wines() -> pd.DataFrame:
    """One row per wine: a stable ``wine_id``, the 13 measurements (snake_case) and the
    ``cultivar`` as a name (``cultivar_0`` ... ``cultivar_2``)."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: re.sub(r"[^0-9a-z]+", "_", c.lower()).strip("_"))
    frame.insert(0, "wine_id", range(len(frame)))
    names = [f"cultivar_{i}" for i in range(len(bunch.target_names))]
    frame["cultivar"] = [names[i] for i in bunch.target]
    return frame
