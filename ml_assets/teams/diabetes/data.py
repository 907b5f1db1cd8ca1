"""The diabetes team's rows: scikit-learn's bundled diabetes study, 442 patients with ten
baseline measurements and a measure of disease progression one year later (no network needed)."""

from __future__ import annotations

import pandas as pd

# scikit-learn's names for the six blood-serum measurements, and what they measure.
SERUM = {
    "s1": "total_cholesterol",
    "s2": "ldl",
    "s3": "hdl",
    "s4": "cholesterol_hdl_ratio",
    "s5": "log_triglycerides",
    "s6": "glucose",
}


def load_patients() -> pd.DataFrame:
    """One row per patient: a stable ``patient_id`` (the bundled file's order), ``age``,
    ``sex`` (1 or 2, as coded in the study), ``bmi``, mean blood pressure ``bp``, the six serum
    measurements under readable names, and the target ``progression``, all in original units."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.data.rename(columns=SERUM)
    frame["sex"] = frame["sex"].astype("int64")
    frame.insert(0, "patient_id", range(len(frame)))
    frame["patient_id"] = frame["patient_id"].astype("int64")
    frame["progression"] = bunch.target.astype("float64")
    return frame
