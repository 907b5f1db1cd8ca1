"""The platform's raw data sources, as pure functions behind the platform location's assets.

Three sources exist: scikit-learn's bundled breast-cancer table and handwritten-digit images
(small, real, offline) and a synthetic card-transaction table with a fraud label (large,
deterministic, any size up to tens of millions of rows). Their files are versioned by
:func:`ml_assets.tables.file_sha256`, like every file the pipelines write.

Only the standard library is imported at module level: Dagster code locations import this module
when they load, and numpy/pandas/pyarrow/scikit-learn would make that slow.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The 8x8 digit images, one column per pixel, row-major (the names scikit-learn gives them).
DIGIT_IMAGE_SIZE = 8
DIGIT_PIXEL_MAX = 16
DIGIT_PIXEL_COLUMNS: tuple[str, ...] = tuple(
    f"pixel_{row}_{column}" for row in range(DIGIT_IMAGE_SIZE) for column in range(DIGIT_IMAGE_SIZE)
)
# The pipelines are binary; a digits model answers "is this digit 5 or more?".
DIGIT_POSITIVE_FROM = 5

# Fixed vocabularies of the synthetic card table. Feature engineering encodes categories against
# this list (never against the categories present in one file), so codes stay stable.
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "online_retail",
    "travel",
    "electronics",
    "entertainment",
    "health",
    "utilities",
    "jewelry",
)
COUNTRIES: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "MX", "BR", "IN", "AU",
)  # fmt: skip

# Rows are generated in fixed blocks, each from its own random stream keyed by (seed, block).
# That is what makes the table independent of ``chunk_rows``: a chunk is just a slice of blocks.
_BLOCK_ROWS = 1 << 16
_CUSTOMER_STREAM = 0
_BLOCK_STREAM = 1
_ROWS_PER_CUSTOMER = 40
_FIRST_TRANSACTION_ID = 1
_FIRST_CUSTOMER_ID = 100_001

_DAYS = 90
_START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00, a Wednesday
# Relative transaction volume by hour of day and by weekday (Monday first).
_HOUR_WEIGHTS = (
    0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1.5, 3.0, 4.5, 5.0, 5.5, 6.5,
    7.5, 6.5, 6.0, 6.0, 6.5, 7.5, 8.0, 7.0, 5.5, 4.0, 2.5, 1.2,
)  # fmt: skip
_WEEKDAY_WEIGHTS = (0.95, 0.95, 1.0, 1.0, 1.1, 1.2, 0.9)
_START_WEEKDAY = 2

# Legitimate and fraudulent category mixes, and a typical-ticket multiplier per category.
_CATEGORY_P_LEGIT = (0.24, 0.16, 0.11, 0.14, 0.03, 0.04, 0.08, 0.07, 0.09, 0.04)
_CATEGORY_P_FRAUD = (0.06, 0.04, 0.05, 0.32, 0.14, 0.20, 0.06, 0.02, 0.01, 0.10)
_CATEGORY_AMOUNT = (1.0, 0.8, 1.1, 1.3, 4.0, 3.0, 0.9, 1.2, 2.0, 5.0)
_CATEGORY_P_CARD_PRESENT = (0.95, 0.9, 0.97, 0.0, 0.3, 0.6, 0.8, 0.9, 0.5, 0.85)
_COUNTRY_P_HOME = (0.34, 0.12, 0.11, 0.09, 0.06, 0.06, 0.04, 0.06, 0.03, 0.04, 0.03, 0.02)

# Fraud model: a base log-odds, raised at night and for elderly customers, plus a per-customer
# exposure term. A share of fraud ("stealth") mimics the owner's behaviour, which keeps a good
# model's ROC AUC near 0.9 rather than 1.0.
_FRAUD_BASE_LOGIT = -4.4
_FRAUD_NIGHT_LOGIT = 1.4
_FRAUD_ELDERLY_LOGIT = 0.4
_FRAUD_CUSTOMER_SD = 0.6
_STEALTH_FRAUD_SHARE = 0.15
_P_FOREIGN_LEGIT = 0.04
_P_FOREIGN_FRAUD = 0.35
_CARD_PRESENT_FRAUD_FACTOR = 0.3


def _snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def load_breast_cancer() -> pd.DataFrame:
    """Return scikit-learn's bundled Wisconsin breast-cancer table (569 rows, no network).

    Columns: the 30 measurements with snake_case names (``mean_radius`` ... ``worst_fractal_
    dimension``), an int64 ``row_id`` (0..568) and an int8 ``label`` where 1 = malignant.
    scikit-learn codes malignant as 0; it is flipped here so the positive class is the one a
    screening model is meant to find, which is what precision/recall and ROC AUC assume.
    """
    import numpy as np
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    bunch = sklearn_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [_snake_case(str(column)) for column in frame.columns]
    malignant = int(list(bunch.target_names).index("malignant"))
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    frame["label"] = (bunch.target.to_numpy() == malignant).astype(np.int8)
    return frame.reset_index(drop=True)


def load_digits() -> pd.DataFrame:
    """Return scikit-learn's bundled handwritten-digit images (1,797 rows, no network).

    Columns: an int64 ``row_id`` (0..1796, the bundled file's order, so it is stable), the 64
    pixels ``pixel_0_0`` ... ``pixel_7_7`` of each 8x8 image (row-major, int8 ink counts in
    0..16), the int8 ``digit`` (0..9) and an int8 ``label``. The pipelines are binary, so the
    label is ``1`` when the digit is 5..9 and ``0`` for 0..4: 896 positives (49.9%), so a
    constant scores ROC AUC 0.5, while the classes differ in shape (e.g. 5/6/8/9 against 0/3/4)
    enough that a small network separates them almost perfectly. ``digit`` is kept for
    analysis; it is the label's source and must never be a feature.
    """
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits(as_frame=True)
    pixels = bunch.data[list(DIGIT_PIXEL_COLUMNS)].to_numpy()
    digits = bunch.target.to_numpy()
    return pd.DataFrame(
        {
            "row_id": np.arange(len(digits), dtype=np.int64),
            **{name: pixels[:, i].astype(np.int8) for i, name in enumerate(DIGIT_PIXEL_COLUMNS)},
            "digit": digits.astype(np.int8),
            "label": (digits >= DIGIT_POSITIVE_FROM).astype(np.int8),
        }
    )


def _card_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("transaction_id", pa.int64(), nullable=False),
            pa.field("customer_id", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("ms"), nullable=False),
            pa.field("amount", pa.float64(), nullable=False),
            pa.field("merchant_category", pa.string(), nullable=False),
            pa.field("country", pa.string(), nullable=False),
            pa.field("is_foreign", pa.bool_(), nullable=False),
            pa.field("card_present", pa.bool_(), nullable=False),
            pa.field("distance_from_home_km", pa.float64(), nullable=False),
            pa.field("customer_age", pa.int16(), nullable=False),
            pa.field("is_fraud", pa.bool_(), nullable=False),
        ]
    )


class _Customers:
    """Per-customer attributes, shared by every block so a customer behaves consistently."""

    def __init__(self, count: int, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng([seed, _CUSTOMER_STREAM])
        activity = rng.gamma(shape=1.5, scale=1.0, size=count)
        self.activity_cdf = np.cumsum(activity) / activity.sum()
        self.amount_scale = rng.lognormal(mean=math.log(35.0), sigma=0.7, size=count)
        self.home_country = _draw_codes(rng, _COUNTRY_P_HOME, count)
        self.age = np.clip(np.round(18 + rng.gamma(shape=3.0, scale=9.0, size=count)), 18, 95)
        self.fraud_exposure = rng.normal(0.0, _FRAUD_CUSTOMER_SD, size=count)


def _draw_codes(rng: np.random.Generator, probabilities: tuple[float, ...], size: int) -> Any:
    import numpy as np

    cdf = np.cumsum(np.asarray(probabilities, dtype=np.float64))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _timestamps_ms(positions: Any, rows: int) -> Any:
    """Map row positions to times so the table is time-ordered and follows the daily rhythm.

    Row ``i`` lands at quantile ``(i + u) / rows`` of the 90-day intensity, with ``u`` uniform:
    stratified sampling, so times are non-decreasing in ``transaction_id`` like a real ledger.
    """
    import numpy as np

    hours = np.arange(_DAYS * 24)
    weekday = (_START_WEEKDAY + hours // 24) % 7
    weights = np.asarray(_HOUR_WEIGHTS)[hours % 24] * np.asarray(_WEEKDAY_WEIGHTS)[weekday]
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])
    target = positions / rows * cumulative[-1]
    bins = np.clip(np.searchsorted(cumulative, target, side="right") - 1, 0, len(weights) - 1)
    hour_offset = (target - cumulative[bins]) / weights[bins]
    milliseconds = np.floor((bins + np.clip(hour_offset, 0.0, 1.0 - 1e-12)) * 3_600_000.0)
    return _START_MS + milliseconds.astype(np.int64)


def _generate_block(block: int, rows: int, seed: int, customers: _Customers) -> dict[str, Any]:
    """Generate the columns of one fixed block as numpy arrays (categories as integer codes)."""
    import numpy as np

    start = block * _BLOCK_ROWS
    size = min(_BLOCK_ROWS, rows - start)
    rng = np.random.default_rng([seed, _BLOCK_STREAM, block])
    # Every draw below has a fixed size and order, so a block's content depends only on
    # (seed, block, rows): never on how blocks are grouped into written chunks.
    positions = np.arange(start, start + size, dtype=np.float64) + rng.random(size)
    timestamp_ms = _timestamps_ms(positions, rows)
    customer = np.minimum(
        np.searchsorted(customers.activity_cdf, rng.random(size), side="right"),
        len(customers.activity_cdf) - 1,
    )
    hour = (timestamp_ms // 3_600_000) % 24
    night = hour < 6
    age = customers.age[customer]

    logit = (
        _FRAUD_BASE_LOGIT
        + _FRAUD_NIGHT_LOGIT * night
        + _FRAUD_ELDERLY_LOGIT * (age >= 70)
        + customers.fraud_exposure[customer]
    )
    fraud = rng.random(size) < 1.0 / (1.0 + np.exp(-logit))
    # Stealth fraud draws its behaviour from the legitimate distributions below.
    looks_fraudulent = fraud & (rng.random(size) >= _STEALTH_FRAUD_SHARE)

    category = np.where(
        looks_fraudulent,
        _draw_codes(rng, _CATEGORY_P_FRAUD, size),
        _draw_codes(rng, _CATEGORY_P_LEGIT, size),
    )
    is_foreign = rng.random(size) < np.where(looks_fraudulent, _P_FOREIGN_FRAUD, _P_FOREIGN_LEGIT)
    p_present = np.asarray(_CATEGORY_P_CARD_PRESENT)[category]
    p_present = np.where(looks_fraudulent, p_present * _CARD_PRESENT_FRAUD_FACTOR, p_present)
    card_present = rng.random(size) < p_present

    # Owners spend around their own scale; fraudsters spend without knowing it.
    category_amount = np.asarray(_CATEGORY_AMOUNT)[category]
    legit_amount = customers.amount_scale[customer] * rng.lognormal(0.0, 0.6, size)
    fraud_amount = rng.lognormal(math.log(120.0), 0.9, size)
    amount = np.where(looks_fraudulent, fraud_amount, legit_amount) * category_amount
    amount = np.round(np.clip(amount, 0.5, 50_000.0), 2)

    near = rng.lognormal(math.log(5.0), 1.0, size)
    remote = rng.lognormal(math.log(50.0), 1.5, size)
    abroad = np.exp(rng.uniform(math.log(300.0), math.log(9_000.0), size))
    distance = np.where(looks_fraudulent | ~card_present, remote, near)
    distance = np.where(is_foreign, abroad, distance)
    distance = np.round(np.clip(distance, 0.1, 20_000.0), 1)

    home = customers.home_country[customer]
    shift = rng.integers(1, len(COUNTRIES), size)
    country = np.where(is_foreign, (home + shift) % len(COUNTRIES), home)

    return {
        "transaction_id": np.arange(start, start + size, dtype=np.int64) + _FIRST_TRANSACTION_ID,
        "customer_id": customer.astype(np.int64) + _FIRST_CUSTOMER_ID,
        "timestamp": timestamp_ms,
        "amount": amount,
        "merchant_category": category.astype(np.int32),
        "country": country.astype(np.int32),
        "is_foreign": is_foreign,
        "card_present": card_present,
        "distance_from_home_km": distance,
        "customer_age": age.astype(np.int16),
        "is_fraud": fraud,
    }


def _to_table(columns: dict[str, Any], schema: Any) -> Any:
    import pyarrow as pa

    arrays = []
    for field in schema:
        values = columns[field.name]
        if field.name == "merchant_category":
            dictionary = pa.array(MERCHANT_CATEGORIES, type=pa.string())
            array = pa.DictionaryArray.from_arrays(pa.array(values), dictionary).cast(pa.string())
        elif field.name == "country":
            dictionary = pa.array(COUNTRIES, type=pa.string())
            array = pa.DictionaryArray.from_arrays(pa.array(values), dictionary).cast(pa.string())
        else:
            array = pa.array(values, type=field.type)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def write_card_transactions(
    path: str | os.PathLike[str],
    rows: int,
    seed: int = 7,
    chunk_rows: int = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write a synthetic card-transaction table with a fraud label to one Parquet file.

    The table is ordered by time over 90 days (with a daily and weekly rhythm) and has the
    columns ``transaction_id`` (int64, unique, increasing), ``customer_id`` (int64),
    ``timestamp`` (timestamp[ms], cardholder local time), ``amount`` (float64, log-normal
    around each customer's own scale), ``merchant_category`` and ``country`` (string),
    ``is_foreign`` and ``card_present`` (bool), ``distance_from_home_km`` (float64),
    ``customer_age`` (int16) and ``is_fraud`` (bool, about 1.5% true). Fraud is more likely at
    night and for elderly customers, and fraud usually looks different (foreign, card not
    present, large for the customer, far from home, online/electronics/travel/jewelry), but
    about one fraud in seven imitates the owner, so the signal is learnable yet noisy.

    Generation is deterministic in ``(rows, seed)`` and independent of ``chunk_rows``, which
    only sets how many rows are held in memory and written per Parquet row group; rows are
    produced with numpy's ``default_rng``. The file is written to a temporary name beside
    ``path`` and renamed at the end, so readers never see a half-written file. ``progress``
    is called as ``progress(rows_done, rows)`` after each chunk. Returns the rows written.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    import numpy as np
    import pyarrow.parquet as pq

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    schema = _card_schema()
    customers = _Customers(max(1, math.ceil(rows / _ROWS_PER_CUSTOMER)), seed)
    cached_block: tuple[int, dict[str, Any]] | None = None

    try:
        with pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                pieces: list[dict[str, Any]] = []
                for block in range(start // _BLOCK_ROWS, (stop - 1) // _BLOCK_ROWS + 1):
                    # A block straddling two chunks is generated once and reused.
                    if cached_block is None or cached_block[0] != block:
                        cached_block = (block, _generate_block(block, rows, seed, customers))
                    block_start = block * _BLOCK_ROWS
                    low = max(start, block_start) - block_start
                    high = min(stop, block_start + _BLOCK_ROWS) - block_start
                    pieces.append({name: v[low:high] for name, v in cached_block[1].items()})
                columns = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
                writer.write_table(_to_table(columns, schema), row_group_size=stop - start)
                if progress is not None:
                    progress(stop, rows)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return rows
