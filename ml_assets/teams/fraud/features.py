"""The fraud team's features from the platform's card-transaction table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml_assets.platform_data.sources import MERCHANT_CATEGORIES

_NIGHT_END_HOUR = 6


def transaction_risk(raw: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Per-transaction risk features: log amount, hour and night flag, foreign and card-present
    flags, log distance from home, age, one-hot merchant category (a fixed list, so a file
    missing a category still has its column), and per-customer context (transaction count,
    log amount relative to the customer's median amount). The label stays ``is_fraud`` and
    the id ``transaction_id``; the team YAML names both."""
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
        "transaction_id": raw["transaction_id"].to_numpy(dtype=np.int64),
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
    columns["is_fraud"] = raw["is_fraud"].to_numpy().astype(np.int8)
    return pd.DataFrame(columns, index=raw.index)
