"""Data-quality and drift measures for the promotion gate, on plain pandas frames.

* ``schema_differences``: columns missing, unexpected or of another kind than in a reference;
* ``null_counts``: nulls per column;
* ``range_violations``: values outside declared ``[low, high]`` bounds;
* ``population_stability``: the population stability index (PSI) of each numeric column of a
  current sample against a reference sample, on the reference's decile bins; columns that are
  not numeric (or boolean) in both samples, such as string labels or categories, are skipped.
  By the usual rule of thumb, below 0.1 is stable, 0.1 to 0.25 a moderate shift, above 0.25 a
  large one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PSI_BINS = 10
# Floor for empty bins, so one empty bin gives a large but finite PSI rather than infinity.
_PSI_EPSILON = 1e-4
_NUMERIC_KINDS = ("int", "float", "bool")


def column_kind(series: pd.Series) -> str:
    """A coarse type: ``int``, ``float``, ``bool``, ``datetime`` or ``string``."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return "string"


def schema_of(frame: pd.DataFrame) -> dict[str, str]:
    return {str(name): column_kind(frame[name]) for name in frame.columns}


def schema_differences(current: dict[str, str], reference: dict[str, str]) -> list[str]:
    """Human-readable differences of ``current`` from ``reference`` (empty when they agree)."""
    problems = [f"missing column {name!r}" for name in reference if name not in current]
    problems += [f"unexpected column {name!r}" for name in current if name not in reference]
    problems += [
        f"column {name!r} is {kind}, was {reference[name]}"
        for name, kind in current.items()
        if name in reference and kind != reference[name]
    ]
    return problems


def null_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Columns with at least one null, and how many."""
    counts = frame.isna().sum()
    return {str(name): int(count) for name, count in counts.items() if count}


def range_violations(
    frame: pd.DataFrame, ranges: dict[str, tuple[float, float]]
) -> dict[str, dict[str, Any]]:
    """For each ranged column with values out of bounds: how many, and the extremes seen."""
    found: dict[str, dict[str, Any]] = {}
    for name, (low, high) in ranges.items():
        if name not in frame.columns:
            found[name] = {"rows": len(frame), "problem": "column missing"}
            continue
        values = pd.to_numeric(frame[name], errors="coerce")
        unreadable = values.isna() & frame[name].notna()
        if unreadable.any():
            found[name] = {"rows": int(unreadable.sum()), "problem": "values are not numbers"}
            continue
        outside = (values < low) | (values > high)
        if outside.any():
            found[name] = {
                "rows": int(outside.sum()),
                "min": float(values.min()),
                "max": float(values.max()),
                "allowed": [low, high],
            }
    return found


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (1-D numeric arrays)."""
    reference = reference[np.isfinite(reference)]
    current = current[np.isfinite(current)]
    if len(reference) == 0 or len(current) == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    if len(edges) < 2:  # a constant reference: any change of value is all drift
        same = float(np.mean(current == reference[0]))
        edges = np.array([reference[0] - 0.5, reference[0] + 0.5])
        expected = np.array([1.0, _PSI_EPSILON])
        actual = np.array([same, 1.0 - same])
    else:
        # Outer bins open to infinity, so values beyond the reference's range still count.
        inner = edges[1:-1]
        expected = np.bincount(
            np.searchsorted(inner, reference, side="right"), minlength=len(edges) - 1
        ) / len(reference)
        actual = np.bincount(
            np.searchsorted(inner, current, side="right"), minlength=len(edges) - 1
        ) / len(current)
    expected = np.clip(expected, _PSI_EPSILON, None)
    actual = np.clip(actual, _PSI_EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def population_stability(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> dict[str, float]:
    """PSI per column of ``columns`` that is numeric (or boolean) in both frames."""
    scores = {}
    for name in columns:
        if name not in reference.columns or name not in current.columns:
            continue
        if not all(column_kind(f[name]) in _NUMERIC_KINDS for f in (reference, current)):
            continue
        ref = pd.to_numeric(reference[name], errors="coerce").to_numpy(dtype=float)
        cur = pd.to_numeric(current[name], errors="coerce").to_numpy(dtype=float)
        scores[name] = round(psi(ref, cur), 6)
    return scores
