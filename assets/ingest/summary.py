"""Ingest metadata, summary and the asset checks' functions (each returns (passed, metadata)).
Plain logic, no dagster import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from assets.ingest import statements as sq
from assets.ingest.mapping import TARGET_TABLE
from resources.sql import load_sql
from resources.warehouse import quote_ident, scalar, table_count

if TYPE_CHECKING:
    from assets.ingest.logic import FileReport


def table_sample(conn, table: str, n: int = 5) -> tuple[pl.DataFrame, int]:
    """The first rows of a warehouse table (for a preview and its schema) and its row count."""
    return conn.sql(f"select * from {quote_ident(table)} limit {int(n)}").pl(), table_count(conn, table)


def run_metadata(reports: list[FileReport], asset: str | None) -> dict[str, Any]:
    """Plain metadata of one ingest run for one asset (None: every table): per-file counts as a markdown
    table (key files_md), totals as ints, quarantined rows by reason as a markdown table (key
    quarantined_by_reason_md) and as ints (quarantined/<reason>)."""
    table = {v: k for k, v in TARGET_TABLE.items()}.get(asset) if asset else None
    rs = [r for r in reports if table is None or r.table_name == table]
    lines = [
        "| file | table | status | rows in | loaded | quarantined | duplicates | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        lines.append(
            f"| {Path(r.source_file).name} | {r.table_name} | {r.status} | {r.rows_in} | {r.rows_loaded} | "
            f"{r.rows_quarantined} | {r.rows_duplicate} | {r.seconds:.2f} |"
        )
    reasons: dict[str, int] = {}
    for r in rs:
        for k, v in r.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
    rmd = ["| reason | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(reasons.items())]
    meta: dict[str, Any] = {
        "files_md": "\n".join(lines),
        "files": len(rs),
        "files_loaded": sum(r.status == "loaded" for r in rs),
        "files_skipped": sum(r.status == "skipped" for r in rs),
        "files_rejected": sum(r.status == "rejected" for r in rs),
        "rows_in": sum(r.rows_in for r in rs),
        "rows_loaded": sum(r.rows_loaded for r in rs),
        "rows_quarantined": sum(r.rows_quarantined for r in rs),
        "rows_duplicate": sum(r.rows_duplicate for r in rs),
        "quarantined_by_reason_md": "\n".join(rmd),
    }
    meta.update({f"quarantined/{k}": v for k, v in sorted(reasons.items())})
    return meta


def ingest_summary(conn) -> pl.DataFrame:
    """Per source and table: files, rows in/loaded/quarantined/duplicate, quarantined rows by reason (JSON)."""
    from assets.ingest.logic import ensure_schema

    ensure_schema(conn)
    return conn.sql(load_sql("ingest/ingest_summary")).pl()


def check_txn_ids_unique(conn) -> tuple[bool, dict[str, Any]]:
    """Every txn_id of raw_transactions appears once."""
    n, distinct = sq.run(conn, "select count(*), count(distinct txn_id) from raw_transactions")[0]
    dups = sq.run(
        conn,
        "select txn_id from raw_transactions group by txn_id having count(*) > 1 order by txn_id limit 5",
    )
    return n == distinct, {
        "rows": int(n),
        "distinct_txn_ids": int(distinct),
        "example_duplicates": [d[0] for d in dups],
    }


def check_ingest_counts_add_up(conn) -> tuple[bool, dict[str, Any]]:
    """For every ledger row rows_in = loaded + quarantined + duplicate, and the tables hold what it says:
    quarantined_rows per file = rows_quarantined; raw_transactions and products rows per file = rows_loaded."""
    bad_sum = sq.run(
        conn,
        "select source_file from ingest_ledger where rows_in <> rows_loaded + rows_quarantined + rows_duplicate",
    )
    bad_q = sq.run(
        conn,
        "select l.source_file from ingest_ledger l left join (select file_sha256, table_name, count(*) n "
        "from quarantined_rows group by all) q using (file_sha256, table_name) "
        "where coalesce(q.n, 0) <> l.rows_quarantined",
    )
    bad_loaded = sq.run(
        conn,
        "select l.source_file from ingest_ledger l left join (select file_id, count(*) n from raw_transactions "
        "group by all union all select file_id, count(*) from products group by all) t using (file_id) "
        "where l.table_name in ('transactions', 'products') and coalesce(t.n, 0) <> l.rows_loaded",
    )
    files = int(scalar(conn, "select count(*) from ingest_ledger"))
    meta = {
        "files": files,
        "files_not_adding_up": [r[0] for r in bad_sum][:5],
        "files_quarantine_mismatch": [r[0] for r in bad_q][:5],
        "files_loaded_mismatch": [r[0] for r in bad_loaded][:5],
    }
    return not (bad_sum or bad_q or bad_loaded), meta


def check_prices_non_negative(conn) -> tuple[bool, dict[str, Any]]:
    """unit_price and list_price are finite and >= 0 on every line."""
    n_bad, n = sq.run(
        conn,
        "select count(*) filter (where not (unit_price >= 0 and list_price >= 0 and isfinite(unit_price) "
        "and isfinite(list_price))), count(*) from raw_transactions",
    )[0]
    return n_bad == 0, {"rows": int(n), "bad_price_rows": int(n_bad)}


def check_quantities_positive(conn) -> tuple[bool, dict[str, Any]]:
    """quantity > 0 on every line."""
    n_bad, n, lo = sq.run(
        conn, "select count(*) filter (where not quantity > 0), count(*), min(quantity) from raw_transactions"
    )[0]
    return n_bad == 0, {
        "rows": int(n),
        "non_positive_rows": int(n_bad),
        "min_quantity": None if lo is None else int(lo),
    }
