"""Tests for the platform's raw sources (ml_assets.platform_data.sources): the breast-cancer and
digits loaders and the synthetic card-transaction table."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.platform_data.sources import (
    COUNTRIES,
    DIGIT_PIXEL_COLUMNS,
    DIGIT_PIXEL_MAX,
    DIGIT_POSITIVE_FROM,
    MERCHANT_CATEGORIES,
    load_breast_cancer,
    load_digits,
    write_card_transactions,
)
from ml_assets.tables import file_sha256

CARD_ROWS = 50_000


@pytest.fixture(scope="module")
def card_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("card") / "card.parquet"
    write_card_transactions(path, CARD_ROWS, seed=7)
    return path


@pytest.fixture(scope="module")
def card(card_path: Path) -> pd.DataFrame:
    return pd.read_parquet(card_path)


def test_breast_cancer_shape_names_and_flipped_label() -> None:
    frame = load_breast_cancer()
    assert frame.shape == (569, 32)
    assert all(c.isidentifier() and c == c.lower() for c in frame.columns)
    assert {"mean_radius", "worst_concave_points", "row_id", "label"} <= set(frame.columns)
    assert frame["row_id"].dtype == np.int64
    assert frame["row_id"].tolist() == list(range(569))
    # The dataset has 212 malignant and 357 benign tumours; malignant must be label 1.
    assert frame["label"].value_counts().to_dict() == {0: 357, 1: 212}
    by_label = frame.groupby("label")["mean_radius"].mean()
    assert by_label[1] > by_label[0]  # malignant tumours are larger


def test_digits_shape_columns_and_types() -> None:
    frame = load_digits()
    assert frame.shape == (1797, 67)
    assert list(frame.columns) == ["row_id", *DIGIT_PIXEL_COLUMNS, "digit", "label"]
    assert DIGIT_PIXEL_COLUMNS[:3] == ("pixel_0_0", "pixel_0_1", "pixel_0_2")
    assert DIGIT_PIXEL_COLUMNS[-1] == "pixel_7_7"
    assert frame["row_id"].dtype == np.int64 and frame["row_id"].tolist() == list(range(1797))
    assert all(frame[c].dtype == np.int8 for c in [*DIGIT_PIXEL_COLUMNS, "digit", "label"])
    pixels = frame[list(DIGIT_PIXEL_COLUMNS)]
    assert pixels.min().min() == 0 and pixels.max().max() == DIGIT_PIXEL_MAX == 16


def test_digits_pixels_are_the_bundled_images_row_major() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    frame = load_digits()
    np.testing.assert_array_equal(
        frame[list(DIGIT_PIXEL_COLUMNS)].to_numpy().reshape(-1, 8, 8), bunch.images
    )
    assert (frame["pixel_3_5"].to_numpy() == bunch.images[:, 3, 5]).all()
    np.testing.assert_array_equal(frame["digit"].to_numpy(), bunch.target)


def test_digits_label_is_five_to_nine_and_balanced() -> None:
    frame = load_digits()
    assert DIGIT_POSITIVE_FROM == 5
    assert (frame["label"] == (frame["digit"] >= 5).astype(np.int8)).all()
    # 182 + 181 + 179 + 174 + 180 images show 5..9.
    assert frame["label"].value_counts().to_dict() == {0: 901, 1: 896}


def test_digits_are_deterministic(tmp_path: Path) -> None:
    first, again = load_digits(), load_digits()
    pd.testing.assert_frame_equal(first, again)
    first.to_parquet(tmp_path / "a.parquet", index=False)
    again.to_parquet(tmp_path / "b.parquet", index=False)
    assert file_sha256(tmp_path / "a.parquet") == file_sha256(tmp_path / "b.parquet")


def test_card_schema_and_row_count(card_path: Path) -> None:
    schema = pq.read_schema(card_path)
    expected = {
        "transaction_id": pa.int64(),
        "customer_id": pa.int64(),
        "timestamp": pa.timestamp("ms"),
        "amount": pa.float64(),
        "merchant_category": pa.string(),
        "country": pa.string(),
        "is_foreign": pa.bool_(),
        "card_present": pa.bool_(),
        "distance_from_home_km": pa.float64(),
        "customer_age": pa.int16(),
        "is_fraud": pa.bool_(),
    }
    assert {field.name: field.type for field in schema} == expected
    assert pq.read_metadata(card_path).num_rows == CARD_ROWS


def test_card_content_is_realistic(card: pd.DataFrame) -> None:
    assert card["transaction_id"].is_unique and card["transaction_id"].is_monotonic_increasing
    assert card["timestamp"].is_monotonic_increasing
    span_days = (card["timestamp"].max() - card["timestamp"].min()) / pd.Timedelta(days=1)
    assert 85 < span_days <= 90
    hours = card["timestamp"].dt.hour.value_counts()
    assert hours.loc[[2, 3, 4]].sum() * 10 < hours.loc[[16, 17, 18]].sum()
    shares = card["merchant_category"].value_counts(normalize=True)
    assert set(shares.index) <= set(MERCHANT_CATEGORIES) and len(shares) >= 8
    assert shares.max() > 3 * shares.min()
    assert 0.02 < card["is_foreign"].mean() < 0.1
    assert set(card["country"]) <= set(COUNTRIES)
    assert (card["country"].str.len() == 2).all()
    assert (card["distance_from_home_km"] > 0).all() and (card["amount"] > 0).all()
    assert card["customer_age"].between(18, 95).all()
    assert 500 < card["customer_id"].nunique() < 5_000


def test_fraud_rate_within_band(card: pd.DataFrame) -> None:
    assert 0.01 <= card["is_fraud"].mean() <= 0.02


def test_fraud_is_riskier_where_designed(card: pd.DataFrame) -> None:
    fraud = card["is_fraud"]
    night = card["timestamp"].dt.hour < 6
    assert fraud[night].mean() > 2 * fraud[~night].mean()
    assert fraud[card["is_foreign"]].mean() > 3 * fraud[~card["is_foreign"]].mean()
    assert fraud[~card["card_present"]].mean() > 2 * fraud[card["card_present"]].mean()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first, again, other = (tmp_path / f"{n}.parquet" for n in ("first", "again", "other"))
    write_card_transactions(first, 20_000, seed=3)
    write_card_transactions(again, 20_000, seed=3)
    write_card_transactions(other, 20_000, seed=4)
    assert file_sha256(first) == file_sha256(again)
    assert file_sha256(first) != file_sha256(other)


def test_chunking_does_not_change_content(tmp_path: Path) -> None:
    rows = 150_000  # spans several internal generation blocks
    calls: list[tuple[int, int]] = []
    write_card_transactions(tmp_path / "one.parquet", rows, seed=11)
    written = write_card_transactions(
        tmp_path / "many.parquet",
        rows,
        seed=11,
        chunk_rows=7_777,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert written == rows
    one = pq.read_table(tmp_path / "one.parquet")
    many = pq.read_table(tmp_path / "many.parquet")
    assert one.equals(many)
    assert pq.read_metadata(tmp_path / "many.parquet").num_row_groups == math.ceil(rows / 7_777)
    assert len(calls) == math.ceil(rows / 7_777)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert calls[-1] == (rows, rows) and {total for _, total in calls} == {rows}


def test_single_row_table(tmp_path: Path) -> None:
    assert write_card_transactions(tmp_path / "one.parquet", 1) == 1
    assert pq.read_table(tmp_path / "one.parquet").num_rows == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rows": 0}, "rows must be an integer >= 1"),
        ({"rows": -5}, "rows must be an integer >= 1"),
        ({"rows": 2.5}, "rows must be an integer >= 1"),
        ({"rows": 10, "chunk_rows": 0}, "chunk_rows"),
        ({"rows": 10, "seed": -1}, "seed"),
    ],
)
def test_invalid_arguments_raise_and_write_nothing(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_card_transactions(tmp_path / "bad.parquet", **arguments)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_file_sha256_streams_across_blocks(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).bytes(int(2.5 * 2**20))
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)
