"""Table plumbing shared by every asset that handles a team's data: Arrow in, Parquet out.

Teams bring their own dataset and feature functions, which may return a pandas DataFrame, a
polars DataFrame or a pyarrow Table. The library turns any of them into a pyarrow Table
(:func:`to_arrow`), adds the deterministic ``train``/``holdout`` column (:func:`with_split`),
writes Parquet atomically and takes the sha256 of the written bytes as the data version in
the same pass (:func:`write_parquet`), and reads Parquet back (:func:`read_parquet`).

Everything stays in Arrow: no pandas round trip, no Python string per row (the split column
is dictionary encoded, one int8 per row) and no second read of the file to hash it, so the
library's own work on a table costs little more than a bare read and write of it.

Only the standard library is imported at module level, so Dagster code locations that import
this module stay fast; pyarrow and numpy are imported inside the functions that use them.
polars is never imported: a polars DataFrame is recognised by its ``to_arrow`` method.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

SPLIT_COLUMN = "split"
SPLIT_VALUES: tuple[str, ...] = ("train", "holdout")
# Parquet codec for everything the library writes. zstd files are a third smaller than
# snappy's (207 vs 310 MiB for bench/table_io.py's 10 M rows), but pyarrow encodes on one
# thread and zstd costs about 0.5 s more there, which breaks the budget of 1.5x a polars
# read + write; snappy stays within it and every Parquet reader knows it.
PARQUET_COMPRESSION = "snappy"
# Column min/max statistics cost 15% of the write's CPU time (0.2 s at 10 M rows) and serve
# only readers that filter row groups; the library reads its tables whole, so none are written.
PARQUET_STATISTICS = False
# Rows per Parquet row group: big enough that per-group overhead is negligible, small enough
# that a reader can stream a large file group by group.
PARQUET_ROW_GROUP_ROWS = 1 << 20

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Rows hashed per step of split_column: two uint64 scratch arrays of this length (1 MiB) stay
# in the CPU cache, and memory does not grow with the table.
_SPLIT_BLOCK_ROWS = 1 << 16
_HASH_BLOCK_BYTES = 1 << 20
_SINK_BUFFER_BYTES = 1 << 20
# Values the Parquet writer encodes per step (pyarrow's default is 1024): fewer, longer steps
# cut about 3% of the write's CPU time. Pages still close at their usual 1 MiB.
_WRITE_BATCH_ROWS = 1 << 16


def to_arrow(table: Any, where: str) -> pa.Table:
    """Return ``table`` (what a team's function returned) as a pyarrow Table.

    Accepts a pyarrow Table, RecordBatch or RecordBatchReader, a pandas DataFrame (its index
    is dropped: ids belong in a column) and a polars DataFrame, recognised by its
    ``to_arrow()`` method so that ml_assets never needs polars installed. ``where`` names
    the function that produced the table, e.g. ``"dataset function mypkg.data:load"``, so a
    wrong return type points the team at their own code.
    """
    import pyarrow as pa

    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if isinstance(table, pa.RecordBatchReader):
        return table.read_all()
    # A pandas DataFrame can only exist if pandas is already imported: checking sys.modules
    # avoids importing pandas (a few tenths of a second) for every polars or Arrow table.
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(table, pandas.DataFrame):
        return pa.Table.from_pandas(table, preserve_index=False)
    convert = getattr(table, "to_arrow", None)
    if callable(convert) and not isinstance(table, type):
        converted = convert()
        if isinstance(converted, pa.Table):
            return converted
    raise TypeError(
        f"{where} returned {type(table)}, expected a pandas DataFrame, a polars DataFrame "
        "or a pyarrow Table"
    )


def _split_threshold(holdout_fraction: float) -> int:
    """The uint64 bound below which a splitmix64 hash means holdout.

    ``features.assign_split`` sends a row to holdout when ``(h >> 11) * 2**-53 < fraction``.
    Both sides are exact in float64, so that equals ``h >> 11 < ceil(fraction * 2**53)``,
    i.e. ``h < ceil(fraction * 2**53) << 11``: one integer comparison per row, same rows.
    """
    if isinstance(holdout_fraction, bool) or not 0.0 < float(holdout_fraction) < 1.0:
        raise ValueError(
            f"holdout_fraction must be strictly between 0 and 1, got {holdout_fraction!r}"
        )
    return math.ceil(float(holdout_fraction) * 2.0**53) << 11


def _splitmix64_scalar(value: int) -> int:
    value = (value + _GOLDEN_GAMMA) & _MASK64
    value = ((value ^ (value >> 30)) * _MIX1) & _MASK64
    value = ((value ^ (value >> 27)) * _MIX2) & _MASK64
    return value ^ (value >> 31)


def split_column(ids: pa.ChunkedArray | pa.Array, holdout_fraction: float, seed: int) -> pa.Array:
    """Assign each id to ``"train"`` or ``"holdout"``, as a dictionary-encoded string array.

    The decision for a row depends only on ``(id, seed, holdout_fraction)``: a splitmix64
    hash of the id, salted with the seed, compared with the fraction. Appending rows or
    reordering the table therefore never moves a row to the other side, so no model is ever
    evaluated on rows an earlier version trained on. The decisions are exactly those of
    ``ml_assets.features.assign_split``, so existing data keeps its split.

    Ids must be integers without nulls. They are hashed straight from Arrow's buffers in
    cache-sized blocks, and the result holds one int8 per row (indices into the two strings),
    so a 10 M-row table needs 10 MB for its split rather than a Python string per row.
    """
    import numpy as np
    import pyarrow as pa

    threshold = np.uint64(_split_threshold(holdout_fraction))
    if not pa.types.is_integer(ids.type):
        raise ValueError(f"row ids must be integers, got dtype {ids.type}")
    if ids.null_count:
        raise ValueError(f"row ids must not be missing ({ids.null_count} null)")
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    salt = np.uint64(_splitmix64_scalar(int(seed) & _MASK64))
    gamma, mix1, mix2 = np.uint64(_GOLDEN_GAMMA), np.uint64(_MIX1), np.uint64(_MIX2)
    shift30, shift27, shift31 = np.uint64(30), np.uint64(27), np.uint64(31)

    holdout = np.empty(len(ids), dtype=np.bool_)
    z = np.empty(_SPLIT_BLOCK_ROWS, dtype=np.uint64)
    scratch = np.empty(_SPLIT_BLOCK_ROWS, dtype=np.uint64)
    position = 0
    for chunk in chunks:
        if len(chunk) == 0:  # an empty array may have no data buffer at all
            continue
        values = _integer_values(chunk)
        for start in range(0, len(values), _SPLIT_BLOCK_ROWS):
            block = values[start : start + _SPLIT_BLOCK_ROWS]
            size = len(block)
            h, tmp = z[:size], scratch[:size]
            # Signed ids wrap to uint64 modulo 2**64, as numpy's astype does in assign_split.
            h[...] = block.view(np.uint64) if block.dtype == np.int64 else block
            # uint64 arithmetic wraps modulo 2**64, which is exactly what splitmix64 wants.
            with np.errstate(over="ignore"):
                np.bitwise_xor(h, salt, out=h)
                np.add(h, gamma, out=h)
                np.bitwise_xor(h, np.right_shift(h, shift30, out=tmp), out=h)
                np.multiply(h, mix1, out=h)
                np.bitwise_xor(h, np.right_shift(h, shift27, out=tmp), out=h)
                np.multiply(h, mix2, out=h)
                np.bitwise_xor(h, np.right_shift(h, shift31, out=tmp), out=h)
            np.less(h, threshold, out=holdout[position : position + size])
            position += size
    # bool and int8 share their layout: False/True are the indices of "train"/"holdout".
    indices = pa.Array.from_buffers(pa.int8(), len(holdout), [None, pa.py_buffer(holdout)])
    return pa.DictionaryArray.from_arrays(indices, _split_dictionary(), safe=False)


def _integer_values(chunk: pa.Array) -> Any:
    """A zero-copy numpy view of an integer array without nulls, straight from its buffer.

    ``Array.to_numpy`` would do, but its first call imports pandas (a fifth of a second),
    and nothing else on the library's path needs pandas.
    """
    import numpy as np
    import pyarrow as pa

    kind = "i" if pa.types.is_signed_integer(chunk.type) else "u"
    dtype = np.dtype(f"{kind}{chunk.type.byte_width}")
    return np.frombuffer(
        chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize
    )


def _split_dictionary() -> pa.Array:
    """The dictionary ``["train", "holdout"]``, built from buffers (pa.array imports pandas)."""
    import numpy as np
    import pyarrow as pa

    data = "".join(SPLIT_VALUES).encode()
    offsets = np.cumsum([0, *(len(value.encode()) for value in SPLIT_VALUES)], dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(SPLIT_VALUES), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def with_split(table: pa.Table, id_column: str, holdout_fraction: float, seed: int) -> pa.Table:
    """Return ``table`` with a ``split`` column (``"train"``/``"holdout"``) appended.

    The split is :func:`split_column` over ``id_column``, so it is stable across appends,
    reorders and re-runs. The other columns are shared, not copied. A table that already has
    a ``split`` column is refused rather than silently overwritten: its rows might have been
    split differently from what the library would guarantee.
    """
    if id_column not in table.column_names:
        raise ValueError(
            f"id column {id_column!r} not found; the table has columns {table.column_names}"
        )
    if SPLIT_COLUMN in table.column_names:
        raise ValueError(
            f"the table already has a {SPLIT_COLUMN!r} column; the library assigns the split "
            f"from {id_column!r}, so rename or drop it"
        )
    _split_threshold(holdout_fraction)  # a bad fraction is not the id column's fault
    try:
        split = split_column(table.column(id_column), holdout_fraction, seed)
    except ValueError as error:
        raise ValueError(f"id column {id_column!r}: {error}") from None
    return table.append_column(SPLIT_COLUMN, split)


class _HashingFile:
    """A binary file, open for writing, that feeds every block written to a sha256 digest.

    pyarrow writes through it (via a ``BufferedOutputStream``, so blocks arrive as ~1 MiB
    ``bytes``). Hashing and the file write run on a helper thread, overlapping pyarrow's
    encoding on the caller's thread; both release the GIL. The queue is bounded, so at most
    a few blocks are in flight. :meth:`finish` waits for the helper and re-raises its error.
    """

    _QUEUED_BLOCKS = 8

    def __init__(self, handle: Any, digest: Any) -> None:
        import queue
        import threading

        self._handle = handle
        self._digest = digest
        self._position = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(self._QUEUED_BLOCKS)
        self._thread = threading.Thread(target=self._drain, name="write_parquet-sha256")
        self._thread.start()
        self._finished = False
        self.closed = False

    def _drain(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._digest.update(block)
                    self._handle.write(block)
                except BaseException as error:  # handed to the writer thread by finish()
                    self._error = error

    def write(self, data: Any) -> int:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise ValueError("write to a finished hashing file")
        # pyarrow passes bytes (its own copy); anything else is copied, since the helper
        # thread still reads the block after this call returns.
        block = data if isinstance(data, bytes) else bytes(data)
        self._queue.put(block)
        self._position += len(block)
        return len(block)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def finish(self, raise_error: bool = True) -> None:
        """Wait until every block is hashed and written; raise what went wrong there."""
        self._finished = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: strings, binaries and already-encoded columns.

    Numeric columns are written plain: pyarrow's trial dictionary on a high-cardinality
    float or id column costs more time than the whole compression, then is thrown away.
    """
    import pyarrow as pa

    kinds = (
        pa.types.is_dictionary,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_string_view,
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_binary_view,
    )
    return [field.name for field in schema if any(kind(field.type) for kind in kinds)]


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> str:
    """Write ``table`` to ``path`` as Parquet and return the sha256 hex of the file's bytes.

    The digest is the table's data version: it equals :func:`file_sha256` of the file, but
    is computed while the bytes are written, so a large file is never read back. The file is
    written under a temporary name beside ``path`` and renamed into place, so readers never
    see a half-written file and a failed write leaves nothing behind. For one pyarrow
    version (its name is in the file's footer) the bytes are a pure function of the table:
    the same schema, metadata, values and row order give the same digest, however the table
    is chunked in memory.

    Strings and dictionary columns are dictionary encoded, numeric columns written plain;
    pages are compressed with :data:`PARQUET_COMPRESSION`, in row groups of
    :data:`PARQUET_ROW_GROUP_ROWS` rows, without column statistics
    (:data:`PARQUET_STATISTICS`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    digest = hashlib.sha256()
    try:
        with open(temporary, "wb") as handle:
            hashing = _HashingFile(handle, digest)
            sink = None
            try:
                # Parquet writes many small blocks (a page header is a few dozen bytes); the
                # buffer hands them over in 1 MiB blocks, so Python runs once per MiB.
                sink = pa.BufferedOutputStream(
                    pa.PythonFile(hashing, mode="w"), buffer_size=_SINK_BUFFER_BYTES
                )
                with pq.ParquetWriter(
                    sink,
                    table.schema,
                    compression=PARQUET_COMPRESSION,
                    use_dictionary=_dictionary_columns(table.schema),
                    write_statistics=PARQUET_STATISTICS,
                    write_batch_size=_WRITE_BATCH_ROWS,
                    memory_pool=_memory_pool(),
                ) as writer:
                    writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
                sink.close()
            except BaseException:
                if sink is not None:
                    with contextlib.suppress(Exception):
                        sink.close()
                hashing.finish(raise_error=False)  # the error in flight says more
                raise
            hashing.finish()
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    """Read a Parquet file into a pyarrow Table, one row group at a time.

    Each row group is decoded on its own (its columns in parallel) and the groups are joined
    without copying, so peak memory stays close to the table itself: reading the file in one
    call grows every column to its full length by doubling, which peaks near 1.5x the table.
    The file is not memory-mapped: mapped pages would count in the process's RSS on top of
    the decoded table, and plain reads of a local file are as fast. Buffers come from
    :func:`_memory_pool`.
    """
    import pyarrow as pa

    reader = _parquet_reader(os.fspath(path), _memory_pool())
    try:
        groups = [reader.read_row_group(i) for i in range(reader.num_row_groups)]
        if not groups:
            return reader.schema_arrow.empty_table()
    finally:
        reader.close()
    return pa.concat_tables(groups)


def _memory_pool() -> Any:
    """The Arrow memory pool for the library's reads and writes: jemalloc where pyarrow has it.

    pyarrow's default pool (mimalloc) takes its memory in transparent huge pages that the
    kernel zeroes on first touch; decoding a 10 M-row file into it cost 1.3-2.3 s of CPU on
    the benchmark machine against 0.9 s with jemalloc, which also peaked 100 MiB lower.
    The pool is passed per call; the process-wide default is left alone.
    """
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.default_memory_pool()


def _parquet_reader(path: str, pool: Any) -> Any:
    """A Parquet reader that allocates from ``pool``.

    ``pyarrow.parquet.ParquetFile`` always uses the default pool; the reader class beneath
    it takes a pool but is not public API, so a pyarrow that changes it falls back to
    ``ParquetFile``'s reader (same results, default pool). ``test_tables`` checks that the
    pinned pyarrow takes the fast path.
    """
    import pyarrow.parquet as pq

    try:
        from pyarrow._parquet import ParquetReader

        reader = ParquetReader(memory_pool=pool)
        reader.open(path, use_memory_map=False, pre_buffer=False)
    except (ImportError, TypeError):
        return pq.ParquetFile(path).reader
    return reader


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks.

    This is the data version of every file the pipelines produce: equal digests mean equal
    bytes, whatever the file's name or mtime, and streaming keeps memory flat for large files.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def schema_of(table: pa.Table | pa.Schema) -> list[tuple[str, str]]:
    """The ``(column name, Arrow type)`` pairs of a table, e.g. ``("row_id", "int64")``.

    Plain strings, so the list can go straight into Dagster metadata for the UI.
    """
    import pyarrow as pa

    schema = table if isinstance(table, pa.Schema) else table.schema
    return [(field.name, str(field.type)) for field in schema]
