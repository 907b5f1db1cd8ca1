"""Tests for ml_assets.features: hash splits and the feature sets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_assets.datasets import (
    DIGIT_PIXEL_COLUMNS,
    MERCHANT_CATEGORIES,
    load_breast_cancer,
    load_digits,
    write_card_transactions,
)
from ml_assets.features import (
    FEATURE_COLUMNS_EXCLUDED,
    FEATURE_SETS,
    assign_split,
    build_features,
    feature_columns,
)


def test_feature_sets_constant() -> None:
    assert FEATURE_SETS == ("clinical_measurements", "transaction_risk", "digit_pixels")


def test_split_is_stable_when_rows_are_appended_or_reordered() -> None:
    first = assign_split(pd.Series(np.arange(10_000, dtype=np.int64)), 0.2, seed=5)
    grown = assign_split(pd.Series(np.arange(20_000, dtype=np.int64)), 0.2, seed=5)
    assert grown.iloc[:10_000].tolist() == first.tolist()
    shuffled_ids = pd.Series(np.random.default_rng(1).permutation(10_000), index=range(7, 10_007))
    shuffled = assign_split(shuffled_ids, 0.2, seed=5)
    assert shuffled.index.equals(shuffled_ids.index)
    assert shuffled.tolist() == first.iloc[shuffled_ids.to_numpy()].tolist()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.05])
def test_holdout_share_matches_fraction(fraction: float) -> None:
    rows = 100_000
    split = assign_split(pd.Series(np.arange(rows, dtype=np.int64) * 3 + 11), fraction, seed=0)
    assert set(split.unique()) == {"train", "holdout"}
    standard_error = math.sqrt(fraction * (1 - fraction) / rows)
    assert abs((split == "holdout").mean() - fraction) < 5 * standard_error


def test_seed_changes_the_split() -> None:
    ids = pd.Series(np.arange(50_000, dtype=np.int64))
    a = assign_split(ids, 0.2, seed=0)
    b = assign_split(ids, 0.2, seed=1)
    # Independent splits disagree on about 2 * 0.2 * 0.8 = 32% of rows.
    assert 0.29 < (a != b).mean() < 0.35


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_open_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match="holdout_fraction"):
        assign_split(pd.Series([1, 2, 3]), fraction, seed=0)


def test_split_rejects_non_integer_ids() -> None:
    with pytest.raises(ValueError, match="integers"):
        assign_split(pd.Series([1.5, 2.5]), 0.2, seed=0)


def test_clinical_measurements_keeps_measurements() -> None:
    raw = load_breast_cancer()
    features = build_features("clinical_measurements", raw, holdout_fraction=0.25, seed=3)
    measurements = [c for c in raw.columns if c not in ("row_id", "label")]
    assert list(features.columns) == ["row_id", *measurements, "label", "split"]
    assert feature_columns(features) == measurements
    assert all(features[c].dtype == np.float64 for c in measurements)
    assert features["label"].dtype == np.int8
    np.testing.assert_array_equal(features[measurements].to_numpy(), raw[measurements].to_numpy())
    assert features["split"].tolist() == assign_split(raw["row_id"], 0.25, 3).tolist()


def test_digit_pixels_scales_pixels_to_unit_range() -> None:
    raw = load_digits()
    features = build_features("digit_pixels", raw, holdout_fraction=0.2, seed=4)
    assert list(features.columns) == ["row_id", *DIGIT_PIXEL_COLUMNS, "label", "split"]
    assert feature_columns(features) == list(DIGIT_PIXEL_COLUMNS)  # the digit is never a feature
    assert all(features[c].dtype == np.float32 for c in DIGIT_PIXEL_COLUMNS)
    pixels = features[list(DIGIT_PIXEL_COLUMNS)].to_numpy()
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels * 16, raw[list(DIGIT_PIXEL_COLUMNS)].to_numpy(), atol=1e-5)
    assert features["row_id"].dtype == np.int64 and features["label"].dtype == np.int8
    assert features["row_id"].tolist() == raw["row_id"].tolist()
    assert features["label"].tolist() == raw["label"].tolist()
    assert features["split"].tolist() == assign_split(raw["row_id"], 0.2, 4).tolist()
    assert 0.15 < (features["split"] == "holdout").mean() < 0.25


def test_digit_pixels_scale_does_not_depend_on_the_other_rows() -> None:
    raw = load_digits()
    faint = raw[raw[list(DIGIT_PIXEL_COLUMNS)].max(axis=1) < 16].iloc[:5]
    assert len(faint) == 5
    alone = build_features("digit_pixels", faint)
    together = build_features("digit_pixels", raw).set_index("row_id").loc[faint["row_id"]]
    np.testing.assert_array_equal(
        alone[list(DIGIT_PIXEL_COLUMNS)].to_numpy(), together[list(DIGIT_PIXEL_COLUMNS)].to_numpy()
    )


@pytest.mark.parametrize("bad", [17, -1, np.nan])
def test_digit_pixels_rejects_values_outside_zero_to_sixteen(bad: float) -> None:
    raw = load_digits().iloc[:10].astype({"pixel_2_3": np.float64})
    raw.loc[raw.index[4], "pixel_2_3"] = bad
    with pytest.raises(ValueError, match=r"digit pixels must lie in 0\.\.16"):
        build_features("digit_pixels", raw)


def test_digit_pixels_names_a_missing_pixel() -> None:
    with pytest.raises(ValueError, match="pixel_7_7"):
        build_features("digit_pixels", load_digits().drop(columns=["pixel_7_7"]))


def _card_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": np.array([101, 102, 103, 104], dtype=np.int64),
            "customer_id": np.array([1, 1, 1, 2], dtype=np.int64),
            "timestamp": pd.to_datetime(
                ["2025-01-01 02:30", "2025-01-01 14:00", "2025-01-02 05:59", "2025-01-02 06:00"]
            ).astype("datetime64[ms]"),
            "amount": [10.0, 30.0, 20.0, 100.0],
            "merchant_category": ["grocery", "jewelry", "not_a_category", "grocery"],
            "country": ["US", "US", "FR", "GB"],
            "is_foreign": [False, False, True, False],
            "card_present": [True, False, True, True],
            "distance_from_home_km": [0.0, 12.0, 400.0, 3.0],
            "customer_age": np.array([30, 30, 30, 71], dtype=np.int16),
            "is_fraud": [False, True, False, False],
        }
    )


def test_transaction_risk_values_by_hand() -> None:
    features = build_features("transaction_risk", _card_rows())
    assert features["row_id"].tolist() == [101, 102, 103, 104]
    assert features["label"].tolist() == [0, 1, 0, 0]
    assert features["hour_of_day"].tolist() == [2, 14, 5, 6]
    assert features["is_night"].tolist() == [1, 0, 1, 0]
    assert features["is_foreign"].tolist() == [0, 0, 1, 0]
    assert features["card_present"].tolist() == [1, 0, 1, 1]
    assert features["customer_txn_count"].tolist() == [3, 3, 3, 1]
    np.testing.assert_allclose(
        features["log_amount_vs_customer_median"], np.log([10 / 20, 30 / 20, 1.0, 1.0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        features["log_amount"], np.log1p([10.0, 30.0, 20.0, 100.0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        features["log_distance_km"], np.log1p([0.0, 12.0, 400.0, 3.0]), rtol=1e-6
    )
    categories = features[[f"category_{c}" for c in MERCHANT_CATEGORIES]]
    assert categories.sum(axis=1).tolist() == [1, 1, 0, 1]  # unknown category: all zeros
    assert features["category_grocery"].tolist() == [1, 0, 0, 1]
    assert features["category_jewelry"].tolist() == [0, 1, 0, 0]


def test_transaction_risk_on_generated_table(tmp_path: Path) -> None:
    path = tmp_path / "card.parquet"
    write_card_transactions(path, 5_000, seed=2)
    raw = pd.read_parquet(path)
    features = build_features("transaction_risk", raw)
    columns = feature_columns(features)
    assert len(features) == 5_000
    assert set(FEATURE_COLUMNS_EXCLUDED).isdisjoint(columns)
    assert all(features[c].dtype.kind in "iuf" for c in columns)
    assert not features[columns].isna().any().any()
    assert features["label"].sum() == raw["is_fraud"].sum()
    # The column set is fixed, whatever categories this particular file happens to contain.
    subset = build_features("transaction_risk", raw[raw["merchant_category"] == "grocery"])
    assert feature_columns(subset) == columns


def test_unknown_feature_set_names_valid_choices() -> None:
    with pytest.raises(ValueError, match="clinical_measurements, transaction_risk"):
        build_features("images", load_breast_cancer())


def test_missing_raw_column_is_named() -> None:
    with pytest.raises(ValueError, match="customer_id"):
        build_features("transaction_risk", _card_rows().drop(columns=["customer_id"]))
