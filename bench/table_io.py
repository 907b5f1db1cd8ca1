"""What the library's own work on a table costs, against a bare polars read + write of it.

A representative feature table (an int64 id, eleven numeric columns, a string category and a
bool label, shaped like the card-transaction features) is generated once and written to
Parquet in a temporary directory. Then each measurement runs in a fresh interpreter, so its
peak RSS is its own:

1. baseline: ``pl.read_parquet(src)`` then ``df.write_parquet(dst)``;
2. library: ``tables.read_parquet(src)``, ``tables.with_split(...)``, then
   ``tables.write_parquet(...)``, which also returns the file's sha256.

Wall time runs from just before the read to just after the write (imports happen before
it, in both); peak RSS is the child's VmHWM, all of it, imports included. Each figure is the
median of ``--repeat`` runs, baseline and library alternating. The budget is 1.5x the
baseline for both; the script exits 1 when either ratio is over it. Wall times swing with
whatever else runs on the machine (polars uses every core, pyarrow's writer one), so the
1-minute load average is printed with the results; compare runs on a quiet machine.
Usage: ``python bench/table_io.py [--rows 10000000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ml_assets.platform_data.sources import MERCHANT_CATEGORIES

BUDGET = 1.5
GENERATE_CHUNK_ROWS = 1_000_000


def generate(path: str, rows: int) -> None:
    """Write the benchmark table to ``path`` chunk by chunk (deterministic in ``rows``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    categories = pa.array(MERCHANT_CATEGORIES, type=pa.string())
    writer = None
    for start in range(0, rows, GENERATE_CHUNK_ROWS):
        size = min(GENERATE_CHUNK_ROWS, rows - start)
        rng = np.random.default_rng([7, start])
        amount = np.round(rng.lognormal(3.5, 1.0, size), 2)
        hour = rng.integers(0, 24, size).astype(np.int8)
        columns = {
            "row_id": np.arange(start, start + size, dtype=np.int64) + 1,
            "customer_id": rng.integers(100_001, 100_001 + rows // 40 + 1, size),
            "amount": amount,
            "log_amount": np.log1p(amount).astype(np.float32),
            "hour_of_day": hour,
            "is_night": (hour < 6).astype(np.int8),
            "is_foreign": (rng.random(size) < 0.05).astype(np.int8),
            "card_present": (rng.random(size) < 0.7).astype(np.int8),
            "log_distance_km": np.log1p(np.round(rng.lognormal(1.6, 1.2, size), 1)).astype(
                np.float32
            ),
            "customer_age": np.round(18 + rng.gamma(3.0, 9.0, size)).astype(np.float32),
            "customer_txn_count": rng.poisson(40, size).astype(np.int32),
            "log_amount_vs_customer_median": rng.normal(0.0, 0.7, size).astype(np.float32),
        }
        arrays = {name: pa.array(values) for name, values in columns.items()}
        codes = pa.array(rng.integers(0, len(MERCHANT_CATEGORIES), size).astype(np.int32))
        arrays["merchant_category"] = pa.DictionaryArray.from_arrays(codes, categories).cast(
            pa.string()
        )
        arrays["label"] = pa.array(rng.random(size) < 0.015)
        chunk = pa.table(arrays)
        if writer is None:
            writer = pq.ParquetWriter(path, chunk.schema, compression="zstd")
        writer.write_table(chunk)
    assert writer is not None
    writer.close()


def _peak_rss_mib() -> float:
    # VmHWM belongs to this process's own address space. ru_maxrss would not do: Linux carries
    # it over from the parent across fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str, src: str, dst: str) -> None:
    """One measurement, in this (fresh) process; prints a JSON line for the parent."""
    result: dict[str, object] = {}
    if mode == "baseline":
        import polars as pl

        start = time.perf_counter()
        frame = pl.read_parquet(src)
        frame.write_parquet(dst)
        seconds = time.perf_counter() - start
    else:
        import numpy  # noqa: F401  (imported before the clock starts, like polars above)
        import pyarrow.parquet  # noqa: F401

        from ml_assets import tables

        start = time.perf_counter()
        table = tables.read_parquet(src)
        table = tables.with_split(table, "row_id", holdout_fraction=0.2, seed=0)
        result["sha256"] = tables.write_parquet(table, dst)
        seconds = time.perf_counter() - start
    result.update(seconds=seconds, peak_rss_mib=_peak_rss_mib())
    print(json.dumps(result))


def _run_child(mode: str, src: Path, dst: Path) -> dict[str, float | str]:
    dst.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(src), str(dst)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.rows)
        return
    if args.child:
        child(*args.child)
        return

    from ml_assets.tables import file_sha256

    with tempfile.TemporaryDirectory(prefix="table_io_") as workdir:
        src, dst = Path(workdir) / "source.parquet", Path(workdir) / "output.parquet"
        # Generated in a child too, so this process stays small while the others run.
        subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--generate", str(src)],
            check=True,
        )
        runs: dict[str, list[dict[str, float | str]]] = {"baseline": [], "library": []}
        for _ in range(args.repeat):
            for mode in ("baseline", "library"):
                runs[mode].append(_run_child(mode, src, dst))
        # Outside any timing: the digest returned while writing is the file's.
        if runs["library"][-1]["sha256"] != file_sha256(dst):
            raise SystemExit("FAIL: write_parquet's digest differs from the written file's")
        library_bytes = dst.stat().st_size
        source_bytes = src.stat().st_size

    def median(mode: str, key: str) -> float:
        return statistics.median(float(run[key]) for run in runs[mode])

    print(
        f"rows {args.rows:,}; source {source_bytes / 2**20:.0f} MiB Parquet (zstd); "
        f"library output {library_bytes / 2**20:.0f} MiB; median of {args.repeat} fresh "
        f"processes; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':<26}{'wall s':>8}{'peak RSS MiB':>14}   runs (s)")
    labels = {"baseline": "baseline (polars r+w)", "library": "library (r+split+w+hash)"}
    for mode, label in labels.items():
        each = " ".join(f"{float(run['seconds']):.2f}" for run in runs[mode])
        print(
            f"{label:<26}{median(mode, 'seconds'):>8.2f}{median(mode, 'peak_rss_mib'):>14.0f}"
            f"   {each}"
        )
    time_ratio = median("library", "seconds") / median("baseline", "seconds")
    rss_ratio = median("library", "peak_rss_mib") / median("baseline", "peak_rss_mib")
    print(f"{'ratio library/baseline':<26}{time_ratio:>7.2f}x{rss_ratio:>13.2f}x")
    verdict = "PASS" if time_ratio <= BUDGET and rss_ratio <= BUDGET else "FAIL"
    print(
        f"budget {BUDGET}x: time {'PASS' if time_ratio <= BUDGET else 'FAIL'}, "
        f"memory {'PASS' if rss_ratio <= BUDGET else 'FAIL'} -> {verdict}"
    )
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
