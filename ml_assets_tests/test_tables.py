"""Tests for ml_assets.tables: Arrow conversion, the split column, hashed Parquet writes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets import tables
from ml_assets.features import assign_split

WHERE = "dataset function mypkg.data:load"


def _frame(rows: int = 1_000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "row_id": np.arange(rows, dtype=np.int64) * 7 + 3,
            "amount": rng.lognormal(3.0, 1.0, rows),
            "category": pa.array(rng.choice(["a", "bb", "ccc"], rows)),
            "label": rng.random(rows) < 0.1,
        }
    )


def _split_strings(array: pa.Array) -> list[str]:
    return array.cast(pa.string()).to_pylist()


def test_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, ml_assets.tables; "
        "print([m for m in ('numpy', 'pandas', 'pyarrow', 'polars') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_to_arrow_accepts_pyarrow_tables_and_readers() -> None:
    table = _frame()
    assert tables.to_arrow(table, WHERE) is table
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=100))
    assert tables.to_arrow(reader, WHERE).equals(table)


def test_to_arrow_accepts_pandas_and_drops_the_index() -> None:
    frame = pd.DataFrame({"row_id": [5, 6, 7], "x": [0.5, 1.5, 2.5]}, index=[10, 20, 30])
    table = tables.to_arrow(frame, WHERE)
    assert table.column_names == ["row_id", "x"]
    assert table.column("row_id").to_pylist() == [5, 6, 7]
    assert table.schema.field("row_id").type == pa.int64()


def test_to_arrow_accepts_polars() -> None:
    frame = pl.DataFrame({"row_id": [1, 2, 3], "name": ["a", "b", "c"]})
    table = tables.to_arrow(frame, WHERE)
    assert isinstance(table, pa.Table)
    assert table.column("row_id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["a", "b", "c"]


@pytest.mark.parametrize(
    "value",
    [[{"row_id": 1}], {"row_id": [1]}, None, pl.LazyFrame({"row_id": [1]}), pl.Series([1])],
    ids=["list", "dict", "none", "polars-lazy", "polars-series"],
)
def test_to_arrow_rejects_anything_else(value: object) -> None:
    with pytest.raises(TypeError) as raised:
        tables.to_arrow(value, WHERE)
    assert str(raised.value) == (
        f"{WHERE} returned {type(value)}, expected a pandas DataFrame, a polars DataFrame "
        "or a pyarrow Table"
    )


@pytest.mark.parametrize("seed", [0, 1, 42, -3, 2**64 + 5])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.05, 1e-6, 0.999])
def test_split_matches_features_assign_split(seed: int, fraction: float) -> None:
    rng = np.random.default_rng(seed % 1_000)
    ids = rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64, endpoint=True)
    expected = assign_split(pd.Series(ids), fraction, seed).tolist()
    whole = pa.array(ids)
    chunked = pa.chunked_array([whole.slice(0, 1), whole.slice(1, 12_345), whole.slice(12_346)])
    for column in (whole, chunked):
        assert _split_strings(tables.split_column(column, fraction, seed)) == expected


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint32, np.uint64])
def test_split_matches_assign_split_for_every_integer_width(dtype: type) -> None:
    info = np.iinfo(dtype)
    ids = np.random.default_rng(1).integers(info.min, info.max, 5_000, dtype=dtype, endpoint=True)
    expected = assign_split(pd.Series(ids), 0.3, 9).tolist()
    assert _split_strings(tables.split_column(pa.array(ids), 0.3, 9)) == expected


def test_split_is_dictionary_encoded_with_int8_indices() -> None:
    split = tables.split_column(pa.array(np.arange(100_000)), 0.2, 0)
    assert split.type == pa.dictionary(pa.int8(), pa.string())
    assert split.dictionary.to_pylist() == ["train", "holdout"]
    assert 0.18 < np.asarray(split.indices).mean() < 0.22


def test_split_is_stable_when_rows_are_appended_or_reordered() -> None:
    first = _split_strings(tables.split_column(pa.array(np.arange(10_000)), 0.2, 5))
    grown = _split_strings(tables.split_column(pa.array(np.arange(20_000)), 0.2, 5))
    assert grown[:10_000] == first
    order = np.random.default_rng(1).permutation(10_000)
    shuffled = _split_strings(tables.split_column(pa.array(order), 0.2, 5))
    assert shuffled == [first[i] for i in order]


def test_split_of_empty_ids_and_empty_chunks() -> None:
    empty = tables.split_column(pa.array([], type=pa.int64()), 0.2, 0)
    assert len(empty) == 0
    assert empty.type == pa.dictionary(pa.int8(), pa.string())
    ids = pa.chunked_array([pa.array([], type=pa.int32()), pa.array([1, 2], type=pa.int32())])
    expected = assign_split(pd.Series([1, 2], dtype=np.int32), 0.5, 1).tolist()
    assert _split_strings(tables.split_column(ids, 0.5, 1)) == expected


def test_with_split_appends_the_column_and_shares_the_rest() -> None:
    table = _frame()
    split = tables.with_split(table, "row_id", 0.25, 3)
    assert split.column_names == [*table.column_names, "split"]
    assert split.select(table.column_names).equals(table)
    expected = assign_split(table.column("row_id").to_pandas(), 0.25, 3).tolist()
    assert split.column("split").to_pylist() == expected


def test_with_split_names_a_missing_id_column() -> None:
    with pytest.raises(ValueError, match="'transaction_id' not found"):
        tables.with_split(_frame(), "transaction_id", 0.2, 0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (pa.array([1.5, 2.5]), "'row_id'.*integers, got dtype double"),
        (pa.array(["1", "2"]), "'row_id'.*integers, got dtype string"),
        (pa.array([1, None, 3], type=pa.int64()), "'row_id'.*must not be missing"),
    ],
)
def test_with_split_rejects_bad_ids(values: pa.Array, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tables.with_split(pa.table({"row_id": values}), "row_id", 0.2, 0)


def test_with_split_refuses_an_existing_split_column() -> None:
    table = _frame().append_column("split", pa.array(["train"] * 1_000))
    with pytest.raises(ValueError, match="already has a 'split' column"):
        tables.with_split(table, "row_id", 0.2, 0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, True])
def test_split_rejects_fraction_outside_open_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match="holdout_fraction"):
        tables.with_split(_frame(), "row_id", fraction, 0)


def test_write_parquet_returns_the_sha256_of_the_written_bytes(tmp_path: Path) -> None:
    table = tables.with_split(_frame(300_000), "row_id", 0.2, 0)
    path = tmp_path / "out" / "features.parquet"
    digest = tables.write_parquet(table, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == tables.file_sha256(path)
    assert tables.read_parquet(path).equals(table)


def test_equal_tables_give_equal_hashes(tmp_path: Path) -> None:
    table = _frame(50_000)
    same = _frame(50_000)
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=7_777))
    digests = {
        tables.write_parquet(t, tmp_path / f"{i}.parquet")
        for i, t in enumerate((table, same, rechunked))
    }
    assert len(digests) == 1
    changed = table.set_column(1, "amount", pa.array(np.zeros(50_000)))
    assert tables.write_parquet(changed, tmp_path / "changed.parquet") not in digests


def test_write_parquet_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    tables.write_parquet(_frame(10), path)
    digest = tables.write_parquet(_frame(20), path)
    assert [p.name for p in tmp_path.iterdir()] == ["features.parquet"]
    assert tables.read_parquet(path).num_rows == 20
    assert digest == tables.file_sha256(path)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "features.parquet"
    digest = tables.write_parquet(_frame(10), path)

    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", fail)
    with pytest.raises(OSError, match="disk full"):
        tables.write_parquet(_frame(20), path)
    assert [p.name for p in tmp_path.iterdir()] == ["features.parquet"]
    assert tables.file_sha256(path) == digest


def test_failure_while_hashing_is_raised_and_cleaned_up(tmp_path: Path) -> None:
    class BrokenDigest:
        def update(self, data: bytes) -> None:
            raise RuntimeError("hash failed")

    handle = (tmp_path / "x").open("wb")
    sink = tables._HashingFile(handle, BrokenDigest())
    sink.write(b"abc")
    with pytest.raises(RuntimeError, match="hash failed"):
        sink.finish()
    handle.close()


def test_polars_and_pandas_tables_round_trip(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "row_id": [3, 1, 2],
            "name": ["x", "y", "x"],
            "kind": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
        }
    )
    table = tables.with_split(tables.to_arrow(frame, WHERE), "row_id", 0.5, 0)
    digest = tables.write_parquet(table, tmp_path / "polars.parquet")
    assert digest == tables.file_sha256(tmp_path / "polars.parquet")
    back = tables.read_parquet(tmp_path / "polars.parquet")
    assert back.column("name").to_pylist() == ["x", "y", "x"]
    assert back.column("kind").to_pylist() == ["u", "v", "u"]
    pandas_table = tables.to_arrow(pd.DataFrame({"row_id": [1, 2], "s": ["a", "b"]}), WHERE)
    tables.write_parquet(pandas_table, tmp_path / "pandas.parquet")
    assert tables.read_parquet(tmp_path / "pandas.parquet").equals(pandas_table)


def test_read_parquet_joins_row_groups_and_reads_empty_files(tmp_path: Path) -> None:
    table = _frame(5_000)
    pq.write_table(table, tmp_path / "groups.parquet", row_group_size=1_000)
    back = tables.read_parquet(tmp_path / "groups.parquet")
    assert back.equals(table)
    assert back.column("row_id").num_chunks == 5
    empty = table.slice(0, 0)
    tables.write_parquet(empty, tmp_path / "empty.parquet")
    assert tables.read_parquet(tmp_path / "empty.parquet").equals(empty)


def test_reads_allocate_from_the_given_pool(tmp_path: Path) -> None:
    # read_parquet relies on pyarrow's non-public ParquetReader taking a memory pool; if a
    # pyarrow upgrade breaks that, it silently falls back to the default pool, and this fails.
    # The pool must outlive every buffer taken from it, so it is one of pyarrow's static
    # pools (a proxy pool collected before the table would crash the interpreter).
    pq.write_table(_frame(10_000), tmp_path / "t.parquet")
    pool = pa.system_memory_pool()
    before = pool.bytes_allocated()
    reader = tables._parquet_reader(str(tmp_path / "t.parquet"), pool)
    group = reader.read_row_group(0)
    reader.close()
    assert group.num_rows == 10_000
    assert pool.bytes_allocated() - before > group.nbytes // 2


def test_schema_of_lists_names_and_arrow_types() -> None:
    table = tables.with_split(_frame(10), "row_id", 0.2, 0)
    expected = [
        ("row_id", "int64"),
        ("amount", "double"),
        ("category", "string"),
        ("label", "bool"),
        ("split", "dictionary<values=string, indices=int8, ordered=0>"),
    ]
    assert tables.schema_of(table) == expected
    assert tables.schema_of(table.schema) == expected
