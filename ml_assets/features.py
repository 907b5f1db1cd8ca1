"""What every feature table shares, whatever team function built it.

A feature table, as the library stores it, has an integer ``row_id`` that identifies the row,
the team's feature columns, the ``label`` (0/1 for binary tasks, class labels for multiclass,
numbers for regression) and a ``split`` column (``"train"``/``"holdout"``). ``row_id``,
``label`` and ``split`` are never features; use :func:`feature_columns` to select the rest.

Only the standard library is imported at module level, so Dagster code locations that import
this module stay fast; numpy and pandas are imported inside the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FEATURE_COLUMNS_EXCLUDED: tuple[str, ...] = ("row_id", "label", "split")
SPLITS: tuple[str, ...] = ("train", "holdout")

_MASK64 = (1 << 64) - 1


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The model input columns of a feature table, in table order (all but row_id/label/split)."""
    return [str(c) for c in features.columns if c not in FEATURE_COLUMNS_EXCLUDED]


def _splitmix64_scalar(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _splitmix64(values: Any) -> Any:
    import numpy as np

    # uint64 arithmetic wraps modulo 2**64, which is exactly what splitmix64 wants.
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_split(row_ids: pd.Series, holdout_fraction: float, seed: int) -> pd.Series:
    """Assign each row id to ``"train"`` or ``"holdout"`` by hashing ``(row_id, seed)``.

    The decision for a row depends only on its id, the seed and the fraction (a splitmix64 hash
    mapped to [0, 1) and compared with ``holdout_fraction``), so appending rows or reordering
    the table never moves an existing row to the other side, and no model is ever evaluated on
    rows an earlier version trained on. Returns an object-dtype Series aligned with ``row_ids``.
    """
    import numpy as np
    import pandas as pd

    if isinstance(holdout_fraction, bool) or not 0.0 < float(holdout_fraction) < 1.0:
        raise ValueError(
            f"holdout_fraction must be strictly between 0 and 1, got {holdout_fraction!r}"
        )
    if row_ids.dtype.kind not in "iu":
        raise ValueError(f"row ids must be integers, got dtype {row_ids.dtype}")
    if row_ids.isna().any():
        raise ValueError("row ids must not be missing")
    keys = row_ids.to_numpy().astype(np.uint64, copy=False)
    salt = np.uint64(_splitmix64_scalar(int(seed) & _MASK64))
    uniform = (_splitmix64(keys ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    # Indexing a two-element object array shares two str objects across all rows; building the
    # strings per row would cost tens of bytes each at tens of millions of rows.
    names = np.array(["train", "holdout"], dtype=object)
    labels = names[(uniform < float(holdout_fraction)).astype(np.intp)]
    return pd.Series(labels, index=row_ids.index, name="split", dtype=object)
