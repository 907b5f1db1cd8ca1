"""Feature engineering, as pure functions from a raw table to a model-ready table.

A feature table has numeric feature columns, an int8 ``label`` (0/1), a ``split`` column
(``"train"``/``"holdout"``) and an int64 ``row_id`` that identifies the raw row. ``row_id``,
``label`` and ``split`` are never features; use :func:`feature_columns` to select the rest.

Only the standard library is imported at module level, so Dagster code locations that import
this module stay fast; numpy and pandas are imported inside the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_assets.datasets import DIGIT_PIXEL_COLUMNS, DIGIT_PIXEL_MAX, MERCHANT_CATEGORIES

if TYPE_CHECKING:
    import pandas as pd

FEATURE_SETS: tuple[str, ...] = ("clinical_measurements", "transaction_risk", "digit_pixels")
FEATURE_COLUMNS_EXCLUDED: tuple[str, ...] = ("row_id", "label", "split")
SPLITS: tuple[str, ...] = ("train", "holdout")

_MASK64 = (1 << 64) - 1
_NIGHT_END_HOUR = 6
_CARD_COLUMNS = (
    "transaction_id",
    "customer_id",
    "timestamp",
    "amount",
    "merchant_category",
    "is_foreign",
    "card_present",
    "distance_from_home_km",
    "customer_age",
    "is_fraud",
)


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


def _clinical_measurements(raw: pd.DataFrame) -> pd.DataFrame:
    import numpy as np

    _require_columns(raw, ("row_id", "label"), "clinical_measurements")
    measurements = [c for c in raw.columns if c not in ("row_id", "label")]
    features = raw[measurements].astype(np.float64)
    features.insert(0, "row_id", raw["row_id"].astype(np.int64))
    features["label"] = raw["label"].astype(np.int8)
    return features


def _transaction_risk(raw: pd.DataFrame) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    _require_columns(raw, _CARD_COLUMNS, "transaction_risk")
    amount = raw["amount"].to_numpy(dtype=np.float64)
    hour = pd.to_datetime(raw["timestamp"]).dt.hour.to_numpy().astype(np.int8)
    customer = raw["customer_id"]
    # Per-customer context is label-free, so it cannot leak the target; it is computed over the
    # whole table, as a feature store would over the customer's recent history.
    customer_count = customer.groupby(customer, sort=False).transform("size")
    customer_median = raw["amount"].groupby(customer, sort=False).transform("median")
    # Codes come from the fixed category list, so a file missing a category (or holding an
    # unknown one, which becomes all zeros) still yields the same columns in the same order.
    codes = pd.Categorical(raw["merchant_category"], categories=MERCHANT_CATEGORIES).codes

    columns: dict[str, Any] = {
        "row_id": raw["transaction_id"].to_numpy(dtype=np.int64),
        "log_amount": np.log1p(amount).astype(np.float32),
        "hour_of_day": hour,
        "is_night": (hour < _NIGHT_END_HOUR).astype(np.int8),
        "is_foreign": raw["is_foreign"].to_numpy().astype(np.int8),
        "card_present": raw["card_present"].to_numpy().astype(np.int8),
        "log_distance_km": np.log1p(raw["distance_from_home_km"].to_numpy(np.float64)).astype(
            np.float32
        ),
        "customer_age": raw["customer_age"].to_numpy().astype(np.float32),
        "customer_txn_count": customer_count.to_numpy().astype(np.int32),
        "log_amount_vs_customer_median": (
            np.log(np.maximum(amount, 0.01))
            - np.log(np.maximum(customer_median.to_numpy(np.float64), 0.01))
        ).astype(np.float32),
    }
    for code, category in enumerate(MERCHANT_CATEGORIES):
        columns[f"category_{category}"] = (codes == code).astype(np.int8)
    columns["label"] = raw["is_fraud"].to_numpy().astype(np.int8)
    return pd.DataFrame(columns, index=raw.index)


def _digit_pixels(raw: pd.DataFrame) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    _require_columns(raw, ("row_id", *DIGIT_PIXEL_COLUMNS, "label"), "digit_pixels")
    pixels = raw[list(DIGIT_PIXEL_COLUMNS)].to_numpy(dtype=np.float64)
    # NaN fails both comparisons, so missing pixels are caught here too.
    if not np.all((pixels >= 0) & (pixels <= DIGIT_PIXEL_MAX)):
        raise ValueError(f"digit pixels must lie in 0..{DIGIT_PIXEL_MAX} and not be missing")
    # Dividing by the fixed maximum (not this table's) keeps a pixel's value independent of
    # which other images happen to be in the file.
    features = pd.DataFrame(
        (pixels / DIGIT_PIXEL_MAX).astype(np.float32), columns=DIGIT_PIXEL_COLUMNS, index=raw.index
    )
    features.insert(0, "row_id", raw["row_id"].astype(np.int64))
    features["label"] = raw["label"].astype(np.int8)
    return features


def _require_columns(raw: pd.DataFrame, required: tuple[str, ...], feature_set: str) -> None:
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise ValueError(f"feature set {feature_set!r} needs raw columns {missing} (missing)")


def build_features(
    feature_set: str, raw: pd.DataFrame, holdout_fraction: float = 0.2, seed: int = 0
) -> pd.DataFrame:
    """Build the model-ready feature table ``feature_set`` from its raw source table.

    ``clinical_measurements`` takes :func:`ml_assets.datasets.load_breast_cancer` output and
    keeps the 30 measurements as float64 features. ``transaction_risk`` takes the card table
    and derives log amount, hour of day, a night flag, foreign and card-present flags, log
    distance from home, customer age, one-hot merchant categories (fixed list) and per-customer
    context (transaction count, log amount relative to the customer's median amount).
    ``digit_pixels`` takes :func:`ml_assets.datasets.load_digits` output and keeps the 64
    pixels, scaled from 0..16 to float32 in [0, 1]; ``digit``, the label's source, is dropped.
    All steps are vectorised so tens of millions of rows fit in seconds-to-minutes and memory
    stays a small multiple of the raw table.

    Every result has ``row_id`` first, then the features, then ``label`` (int8 0/1) and
    ``split`` from :func:`assign_split` over ``row_id``, and a fresh RangeIndex.
    """
    if feature_set == "clinical_measurements":
        features = _clinical_measurements(raw)
    elif feature_set == "transaction_risk":
        features = _transaction_risk(raw)
    elif feature_set == "digit_pixels":
        features = _digit_pixels(raw)
    else:
        raise ValueError(
            f"unknown feature set {feature_set!r}; valid choices: {', '.join(FEATURE_SETS)}"
        )
    labels = set(features["label"].unique().tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"label must be 0/1, found values {sorted(labels)}")
    features["split"] = assign_split(features["row_id"], holdout_fraction, seed)
    return features.reset_index(drop=True)
