"""Benchmark: ingest the full Complete Journey transactions (1.47M lines) into a fresh temporary warehouse.

Prints rows/s and the ratio against DuckDB's bare `create table t as select * from read_parquet(...)` of the
same file, measured in the same run (ratio = bare seconds / ingest seconds; target >= 0.5, i.e. the ingest
takes at most twice the bare read). Also printed, for context: the "canonical floor", a bare CTAS of the same
file cast to the canonical columns (text ids, no checks), i.e. what writing the contract's types costs alone.
Each measurement is repeated (fresh warehouse files every time) and the median is reported. Figures only;
nothing is asserted.

    python benchmarks/ingest.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.env import set_offline_env  # noqa: E402

set_offline_env()

import duckdb  # noqa: E402

from assets.ingest import logic  # noqa: E402

CANONICAL_FLOOR = """
create table t as
select
    cast(basket_id as varchar) || ':' || cast(file_row_number + 1 as varchar) as txn_id,
    cast(basket_id as varchar) as basket_id,
    transaction_timestamp as ts,
    cast(household_id as varchar) as customer_id,
    cast(product_id as varchar) as product_id,
    quantity,
    sales_value / quantity as unit_price,
    (sales_value + retail_disc + coupon_match_disc) / quantity as list_price,
    'retail' as channel
from read_parquet($path, file_row_number = true)
"""


def timed_sql(folder: Path, name: str, sql: str, path: Path) -> float:
    conn = duckdb.connect(str(folder / f"{name}.duckdb"))
    t0 = time.perf_counter()
    conn.execute(sql, {"path": str(path)}).fetchall()
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def timed_ingest(folder: Path, mapping, data: Path) -> tuple[float, logic.FileReport]:
    conn = duckdb.connect(str(folder / "warehouse.duckdb"))
    logic.ingest_source(
        conn,
        mapping,
        paths={"products": [data / "products.parquet"], "customers": [data / "demographics.parquet"]},
        progress=False,
    )
    t0 = time.perf_counter()
    (report,) = logic.ingest_source(
        conn, mapping, paths={"transactions": [data / "transactions.parquet"]}, progress=False
    )
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="measurements of each kind (median reported)")
    args = ap.parse_args()
    mapping = logic.load_mapping("completejourney")
    data = mapping.base_dir
    path = data / "transactions.parquet"
    bare, floor, ingest = [], [], []
    report = None
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="malles-bench-") as tmp:
            folder = Path(tmp)
            bare.append(
                timed_sql(folder, f"bare{i}", "create table t as select * from read_parquet($path)", path)
            )
            seconds, report = timed_ingest(folder, mapping, data)
            ingest.append(seconds)
            floor.append(timed_sql(folder, f"floor{i}", CANONICAL_FLOOR, path))
    assert report is not None
    b, f, s = statistics.median(bare), statistics.median(floor), statistics.median(ingest)
    print(f"Complete Journey transactions: {path}")
    print(f"  rows in          {report.rows_in:>12,}")
    print(f"  rows loaded      {report.rows_loaded:>12,}")
    print(f"  rows quarantined {report.rows_quarantined:>12,}  {dict(sorted(report.reasons.items()))}")
    print(f"  rows duplicate   {report.rows_duplicate:>12,}")
    print(
        f"  counts add up    {report.rows_in == report.rows_loaded + report.rows_quarantined + report.rows_duplicate}"
    )
    print(f"median of {args.repeats} runs (seconds; each run: {', '.join(f'{x:.2f}' for x in ingest)})")
    print(
        f"  ingest (validate + load + quarantine + ledger)  {s:6.2f} s  {report.rows_in / s:>12,.0f} rows/s"
    )
    print(
        f"  bare CTAS from read_parquet                     {b:6.2f} s  {report.rows_in / b:>12,.0f} rows/s"
    )
    print(
        f"  canonical floor (text ids, no checks)           {f:6.2f} s  {report.rows_in / f:>12,.0f} rows/s"
    )
    print(f"ratio bare / ingest   {b / s:.2f}   (target >= 0.5)")
    print(
        f"ratio floor / ingest  {f / s:.2f}   (the part of the ingest time that the contract's types cost alone)"
    )


if __name__ == "__main__":
    main()
