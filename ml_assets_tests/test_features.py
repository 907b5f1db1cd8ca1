"""Tests for ml_assets.features: what every feature table shares, and the reference hash split.

``assign_split`` is the pandas split the library's Arrow split (``ml_assets.tables``) is tested
against; the teams' feature functions are tested in ``teams/test_team_features.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml_assets.features import FEATURE_COLUMNS_EXCLUDED, SPLITS, assign_split, feature_columns


def test_constants() -> None:
    assert FEATURE_COLUMNS_EXCLUDED == ("row_id", "label", "split")
    assert SPLITS == ("train", "holdout")


def test_feature_columns_are_all_but_the_library_columns_in_table_order() -> None:
    table = pd.DataFrame(columns=["row_id", "b", "label", "a", "split", "c"])
    assert feature_columns(table) == ["b", "a", "c"]
    assert feature_columns(pd.DataFrame(columns=["row_id", "label", "split"])) == []


def test_split_is_stable_when_rows_are_appended_or_reordered() -> None:
    first = assign_split(pd.Series(np.arange(10_000, dtype=np.int64)), 0.2, seed=5)
    grown = assign_split(pd.Series(np.arange(20_000, dtype=np.int64)), 0.2, seed=5)
    assert grown.iloc[:10_000].tolist() == first.tolist()
    shuffled_ids = pd.Series(np.random.default_rng(1).permutation(10_000), index=range(7, 10_007))
    shuffled = assign_split(shuffled_ids, 0.2, seed=5)
    assert shuffled.index.equals(shuffled_ids.index)
    assert shuffled.tolist() == first.iloc[shuffled_ids.to_numpy()].tolist()


def test_split_values_name_and_dtype() -> None:
    split = assign_split(pd.Series(np.arange(1_000, dtype=np.int64)), 0.3, seed=0)
    assert split.name == "split" and split.dtype == object
    assert set(split.unique()) == set(SPLITS)


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


def test_negative_and_unsigned_ids_are_split_too() -> None:
    signed = assign_split(pd.Series(np.array([-5, -1, 0, 7], dtype=np.int64)), 0.5, seed=3)
    unsigned = assign_split(pd.Series(np.array([0, 7], dtype=np.uint64)), 0.5, seed=3)
    assert unsigned.tolist() == signed.iloc[2:].tolist()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, True])
def test_split_rejects_fraction_outside_open_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match="holdout_fraction"):
        assign_split(pd.Series([1, 2, 3]), fraction, seed=0)


def test_split_rejects_non_integer_ids() -> None:
    with pytest.raises(ValueError, match="integers"):
        assign_split(pd.Series([1.5, 2.5]), 0.2, seed=0)


def test_split_rejects_missing_ids() -> None:
    with pytest.raises(ValueError, match="missing"):
        assign_split(pd.Series([1, None, 3], dtype="Int64"), 0.2, seed=0)
