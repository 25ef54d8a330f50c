"""Ingest: source files (CSV or Parquet) -> canonical tables in DuckDB, through a source mapping.

Public API (the CLI, the pipeline and the assets call these; the modules beside this one hold the parts):
- `load_mapping(path_or_name) -> Mapping`: a built-in source (mappings/<name>.yaml) or a mapping YAML.
- `ensure_schema(conn)`: creates raw_transactions, products, customers, quarantined_rows, ingest_ledger.
- `ingest_source(conn, mapping, paths=None, progress=True, limits=None) -> list[FileReport]`: products
  first, then customers, then transactions; `paths` overrides the mapping's globs (each file's tables are told
  by its name, or pass {table: [paths]}); `limits` are the plausibility bounds of transaction lines.
- `connect_warehouse(path, wait_s)`: a DuckDB connection that waits a bounded time for another process's
  lock, saying what it waits for, then fails with one line naming the holder (lock.py).
- `mapping_paths`, `landing_mappings` (files.py); `ingest_summary`, `run_metadata`, `table_sample` and the
  check functions (`check_txn_ids_unique`, ...) returning (passed, metadata) (summary.py).

How a file is ingested into one table (all in SQL, set-based; sql/ingest/*.sql):
1. Its (sha256, table) is looked up in `ingest_ledger`: a file loaded into that table before is skipped
   (nothing added); the same file may feed several tables (a one-file export). A file rejected before (e.g.
   a mapping error since fixed) is tried again, replacing its earlier quarantine rows.
2. BEGIN. The file is staged once into the temp table `_src` (staging.py): Parquet as typed; CSV with every
   column as text (DuckDB's reader with store_rejects: lines with a wrong field count or invalid UTF-8 are
   set aside). A file that cannot be read at all (truncated Parquet, ...) is rolled back and recorded in the
   ledger as rejected (reason unreadable_file) with its real cause in one line; the next file goes on.
3. File-level checks: a mapped column missing (reason missing_columns) or, in strict mode, an extra column
   (extra_columns) rejects the file: every row is quarantined with that reason, the ledger says 'rejected',
   and the report's message is a one-line error naming the columns, the file and the mapping.
4. The typed query (sql/ingest/typed_<table>.sql): the canonical columns computed with TRY_CAST and a CASE
   yielding each row's first failing check (reason codes in docs/tables.md and docs/ingest-notes.md),
   materialized once as `_typed` with a 64-bit hash of the key (`_h`). `_cand` holds the good rows whose key
   hash repeats in the file or whose key is already in the warehouse (exact semi-join on the key);
   `_collisions` compares those exactly: identical content counts as a duplicate, different content is
   quarantined as conflicting_<key>; a product listed under several categories keeps its most frequent
   one and the rows of the others are quarantined as other_category.
5. Good rows are inserted, bad rows go to `quarantined_rows` (raw row as JSON), customers seen in
   transactions are registered when the customer file is not exhaustive, and the ledger row is written with
   rows_in = rows_loaded + rows_quarantined + rows_duplicate. COMMIT; on any error ROLLBACK, so a failure
   mid-file leaves the warehouse exactly as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assets.ingest import statements as sq
from assets.ingest.files import TRUTH_FOLDER, landing_mappings, mapping_paths
from assets.ingest.lock import WarehouseLocked, connect_warehouse
from assets.ingest.mapping import (
    KEY_COLUMN,
    ROW_COLUMN,
    TARGET_TABLE,
    Mapping,
    MappingError,
    TableMapping,
    builtin_mapping_path,
    load_mapping,
)
from assets.ingest.staging import FileRejected, Limits, Staged, customers_exhaustive, stage, typed_sql
from assets.ingest.summary import (
    check_ingest_counts_add_up,
    check_prices_non_negative,
    check_quantities_positive,
    check_txn_ids_unique,
    ingest_summary,
    run_metadata,
    table_sample,
)
from resources.sql import load_sql
from resources.warehouse import sha256_file

__all__ = [
    "TRUTH_FOLDER",
    "FileRejected",
    "FileReport",
    "Limits",
    "Mapping",
    "MappingError",
    "WarehouseLocked",
    "builtin_mapping_path",
    "check_ingest_counts_add_up",
    "check_prices_non_negative",
    "check_quantities_positive",
    "check_txn_ids_unique",
    "connect_warehouse",
    "ensure_schema",
    "ingest_file",
    "ingest_source",
    "ingest_summary",
    "landing_mappings",
    "load_mapping",
    "mapping_paths",
    "run_metadata",
    "table_sample",
]

log_default = logging.getLogger("malles.ingest")

INGEST_TABLES = ("raw_transactions", "products", "customers", "quarantined_rows", "ingest_ledger")
TEMP_TABLES = ("_src", "_typed", "_cand", "_collisions", "_csv_rejects", "_csv_reject_scans")


@dataclass
class FileReport:
    """What happened to one file. Invariant: rows_in = rows_loaded + rows_quarantined + rows_duplicate."""

    source_file: str
    file_sha256: str
    table_name: str  # 'transactions', 'products' or 'customers'
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    status: str = "loaded"  # 'loaded', 'skipped' (loaded before: nothing added) or 'rejected'
    message: str = ""
    reasons: dict[str, int] = field(default_factory=dict)  # quarantined rows by reason code
    source: str = ""  # the mapping's source name
    seconds: float = 0.0
    file_id: int = (
        0  # ingest_ledger.file_id: the short id every loaded row of the file carries (0: not loaded)
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- schema


def ensure_schema(conn) -> None:
    """Create the ingest tables (raw_transactions, products, customers, quarantined_rows, ingest_ledger).

    A warehouse written by an older table contract (rows carrying source and file_sha256 instead of file_id)
    is refused with a one-line error naming the fix, rather than mixed with rows of the new contract. A
    ledger keyed by the file hash alone (before one file could feed several tables) is re-keyed in place."""
    old = sq.run(
        conn,
        "select table_name from duckdb_columns() where schema_name = 'main' and column_name = 'file_sha256' "
        "and table_name in ('raw_transactions', 'products', 'customers') order by table_name",
    )
    if old:
        path = sq.value(conn, "select path from duckdb_databases() where database_name = current_database()")
        raise MappingError(
            f"the warehouse {path} was written by an older MALLES table contract ({old[0][0]} has file_sha256 "
            "instead of file_id); delete that file (or point MALLES_DUCKDB_PATH at a new one) and ingest again"
        )
    if sq.value(conn, load_sql("ingest/ledger_keyed_by_hash_only")):
        conn.execute("alter table ingest_ledger rename to _ingest_ledger_hash_keyed")
        conn.execute(load_sql("ingest/create_ingest_ledger"))
        conn.execute("insert into ingest_ledger select * from _ingest_ledger_hash_keyed")
        conn.execute("drop table _ingest_ledger_hash_keyed")
    for table in INGEST_TABLES:
        conn.execute(load_sql(f"ingest/create_{table}"))


# --------------------------------------------------------------------------- ingest


def ingest_source(
    conn,
    mapping: Mapping | str | Path,
    paths: Iterable[str | Path] | dict | None = None,
    progress: bool = True,
    log=None,
    limits: Limits | None = None,
) -> list[FileReport]:
    """Ingest a mapping's files (products, then customers, then transactions); one report per file and table.
    `limits` (None: none) are the plausibility bounds of transaction lines (IngestConfig holds the defaults)."""
    log = log or log_default
    mapping = load_mapping(mapping)
    ensure_schema(conn)
    files = mapping_paths(mapping, paths, log)
    if not files:
        log.warning(f"mapping {mapping.label}: no files found (globs under {mapping.base_dir})")
    reports = []
    for table, path in _progress(files, progress, mapping.name):
        report = ingest_file(conn, mapping, table, path, log=log, limits=limits)
        level = logging.WARNING if report.status == "rejected" or report.rows_in == 0 else logging.INFO
        log.log(level, f"{table} {path.name}: {report.status}: {report.message}")
        reports.append(report)
    return reports


def _progress(items: list, enabled: bool, name: str):
    if not enabled or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"ingest {name}", unit="file", leave=False)


def ingest_file(
    conn, mapping: Mapping, table: str, path: str | Path, log=None, limits: Limits | None = None
) -> FileReport:
    """Ingest one file into one table in one transaction; see the module docstring for the steps."""
    log = log or log_default
    path = Path(path)
    t0 = time.perf_counter()
    sha = sha256_file(path)
    key = {"file_sha256": sha, "table_name": table}
    report = FileReport(source_file=str(path), file_sha256=sha, table_name=table, source=mapping.name)
    prev = sq.run(conn, load_sql("ingest/ledger_entry"), key)
    if prev and prev[0][0] != "rejected":
        report.status = "skipped"
        report.message = (
            f"already ingested into {table} on {prev[0][1]:%Y-%m-%d %H:%M} (as {Path(prev[0][2]).name}); "
            "nothing added"
        )
        report.seconds = time.perf_counter() - t0
        return report
    reject: FileRejected | None = None
    for _attempt in range(2):
        conn.execute("begin transaction")
        try:
            if prev:  # an earlier rejected attempt at the same content: replaced by this one
                sq.run(conn, load_sql("ingest/delete_quarantined_rows_of_file"), key)
                sq.run(conn, load_sql("ingest/delete_ingest_ledger_entry"), key)
            report.file_id = int(sq.value(conn, "select coalesce(max(file_id), 0) + 1 from ingest_ledger"))
            _load_file(conn, mapping, table, path, report, log, reject, limits)
            _write_ledger(conn, report)
            conn.execute("commit")
            break
        except FileRejected as e:
            # DuckDB has aborted the transaction: roll back first, then record the rejection in a new one
            conn.execute("rollback")
            if reject is not None:  # pragma: no cover - the whole-file path itself failed
                raise
            reject = e
            report = FileReport(source_file=str(path), file_sha256=sha, table_name=table, source=mapping.name)
        except BaseException:
            conn.execute("rollback")
            raise
        finally:
            _drop_temp(conn)
    report.seconds = time.perf_counter() - t0
    if report.status == "rejected":
        log.error(report.message)
    return report


def _drop_temp(conn) -> None:
    for t in TEMP_TABLES:
        try:
            conn.execute(f"drop table if exists temp.{t}")
        except Exception:  # noqa: BLE001 - an aborted transaction; the rollback drops them anyway
            pass


def _write_ledger(conn, r: FileReport) -> None:
    if r.rows_in != r.rows_loaded + r.rows_quarantined + r.rows_duplicate:
        raise RuntimeError(
            f"{r.source_file}: counts do not add up (in {r.rows_in} != loaded {r.rows_loaded} + quarantined "
            f"{r.rows_quarantined} + duplicate {r.rows_duplicate}); nothing was written"
        )
    sq.run(conn, load_sql("ingest/insert_ingest_ledger"), {**asdict(r), "file_sha256": r.file_sha256})


def _load_file(
    conn,
    mapping: Mapping,
    table: str,
    path: Path,
    report: FileReport,
    log,
    reject: FileRejected | None,
    limits: Limits | None,
) -> None:
    tm = mapping.tables[table]
    base = {
        "source_file": str(path),
        "file_sha256": report.file_sha256,
        "file_id": report.file_id,
        "table_name": table,
        "source": mapping.name,
    }
    if path.stat().st_size == 0:
        report.message = "empty file: no rows"
        log.warning(f"{path}: {report.message}")
        return
    if reject is not None and reject.reason == "unreadable_file":  # nothing to quarantine row by row
        report.status, report.message = "rejected", reject.message
        return
    staged = stage(conn, mapping, path, log)
    if staged is None:
        report.message = "no header line: no rows"
        return
    params = {**base, **staged.params}
    if staged.n_rejects:
        sq.run(conn, load_sql("ingest/insert_quarantined_csv_rejects"), params)
    n_rows = sq.value(conn, f"select count(*) from {staged.source_sql}")
    report.rows_in = n_rows + staged.n_rejects
    if report.rows_in == 0:
        report.message = "no data rows (header only)"
        log.warning(f"{path}: {report.message}")
        return
    available = [c for c in staged.columns if c != ROW_COLUMN]
    problem = reject
    if problem is None:
        problem = _column_problem(mapping, tm, path, available, log)
    if problem is not None:
        _reject_whole_file(conn, staged, params, report, problem)
        return
    typed, tparams = typed_sql(mapping, tm, staged, available, limits)
    params = {**params, **tparams}
    parts = {"typed": typed, "key": KEY_COLUMN[table], "target": TARGET_TABLE[table]}
    try:
        sq.run(conn, sq.render("ingest/stage_typed", parts), params)
    except Exception as e:  # noqa: BLE001 - duckdb raises several error types for a bad expression
        import duckdb

        if not isinstance(e, duckdb.Error):
            raise
        raise FileRejected(
            "bad_expression",
            f"{path.name}: the mapping's expressions fail on this file ({sq.first_line(e)}); "
            f"fix the {table} columns of mapping {mapping.label} (use try_cast on text columns)",
        ) from e
    sq.run(conn, sq.render("ingest/stage_candidates", parts), params)
    sq.run(conn, load_sql(f"ingest/collisions_{table}"), params)
    if table == "customers":
        sq.run(conn, load_sql("ingest/delete_replaced_customers"), params)
    loaded = sq.value(conn, sq.render(f"ingest/insert_{TARGET_TABLE[table]}", parts), params)
    if table == "transactions" and not customers_exhaustive(mapping):
        sq.run(conn, load_sql("ingest/register_unseen_customers"), params)
    qsql = sq.render(
        "ingest/insert_quarantined_rows", {"source": staged.source_sql, "raw_row": staged.raw_row_sql()}
    )
    n_bad, n_set_aside, n_dup = sq.run(conn, load_sql("ingest/count_outcomes"))[0]
    if n_bad or n_set_aside:
        sq.run(conn, qsql, {**params, "conflict_reason": f"conflicting_{KEY_COLUMN[table]}"})
    report.rows_loaded = int(loaded)
    report.rows_quarantined = int(n_bad + n_set_aside + staged.n_rejects)
    report.rows_duplicate = int(n_dup)
    report.reasons = _reasons(conn, report)
    report.status = "loaded"
    report.message = _summary_message(report)


def _reasons(conn, r: FileReport) -> dict[str, int]:
    rows = sq.run(
        conn,
        "select reason, count(*) from quarantined_rows where file_sha256 = $s and table_name = $t "
        "group by reason order by reason",
        {"s": r.file_sha256, "t": r.table_name},
    )
    return {reason: int(n) for reason, n in rows}


def _summary_message(r: FileReport) -> str:
    msg = f"{r.rows_loaded:,} loaded, {r.rows_quarantined:,} quarantined, {r.rows_duplicate:,} duplicate of {r.rows_in:,} rows"
    if r.reasons:
        msg += (
            " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])) + ")"
        )
    return msg


def _column_problem(
    mapping: Mapping, tm: TableMapping, path: Path, available: list[str], log
) -> FileRejected | None:
    """Missing mapped columns (always) or extra columns (strict mode): a one-line reason to reject the file."""
    have = set(available)
    missing = sorted(tm.required_source_columns() - have)
    if missing:
        return FileRejected(
            "missing_columns",
            f"{path.name}: missing column(s) {', '.join(missing)} that mapping {mapping.label} reads for "
            f"{tm.table}; fix the file or the mapping (the file has: {', '.join(available)})",
        )
    extra = [] if tm.attributes and tm.attributes.include == "*" else sorted(have - tm.used_source_columns())
    if extra and mapping.strict_columns:
        return FileRejected(
            "extra_columns",
            f"{path.name}: column(s) {', '.join(extra)} not in mapping {mapping.label} (strict_columns); "
            f"map them, list them under {tm.table}.ignore_columns, or set strict_columns: false",
        )
    if extra:
        log.warning(
            f"{path.name}: column(s) {', '.join(extra)} are not used by mapping {mapping.label}; ignored"
        )
    return None


def _reject_whole_file(conn, staged: Staged, params: dict, report: FileReport, problem: FileRejected) -> None:
    sql = sq.render(
        "ingest/insert_quarantined_file", {"source": staged.source_sql, "raw_row": staged.raw_row_sql()}
    )
    sq.run(conn, sql, {**params, "reason": problem.reason, "detail": problem.message})
    report.rows_loaded = 0
    report.rows_duplicate = 0
    report.rows_quarantined = report.rows_in
    report.reasons = _reasons(conn, report)
    report.status = "rejected"
    report.message = problem.message
