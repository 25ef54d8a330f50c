"""Ingest: source files (CSV or Parquet) -> canonical tables in DuckDB, through a source mapping.

Public API (the CLI, the pipeline and the assets call these):
- `load_mapping(path_or_name) -> Mapping`: a built-in source (mappings/<name>.yaml) or a mapping YAML.
- `ensure_schema(conn)`: creates raw_transactions, products, customers, quarantined_rows, ingest_ledger.
- `ingest_source(conn, mapping, paths=None, progress=True) -> list[FileReport]`: products first, then
  customers, then transactions; `paths` overrides the mapping's globs (each file's table is told by its name,
  or pass {table: [paths]}).
- `ingest_summary(conn) -> polars.DataFrame`: per source and table, rows in/loaded/quarantined/duplicate and
  quarantined rows by reason.
- check functions (`check_txn_ids_unique`, ...) returning (passed, metadata) for the asset checks.

How a file is ingested (all in SQL, set-based; sql/ingest/*.sql):
1. Its sha256 is looked up in `ingest_ledger`: a file loaded before is skipped (nothing added). A file
   rejected before (e.g. a mapping error since fixed) is tried again, replacing its earlier quarantine rows.
2. BEGIN. The file is staged once into the temp table `_src` (so the steps below read it in parallel even when
   the Parquet file has a single row group): Parquet as typed; CSV with every column as text (DuckDB's reader
   with store_rejects: lines with a wrong field count or invalid UTF-8 are set aside).
3. File-level checks: a mapped column missing (reason missing_columns) or, in strict mode, an extra column
   (extra_columns) rejects the file: every row is quarantined with that reason, the ledger says 'rejected',
   and the report's message is a one-line error naming the columns, the file and the mapping.
4. The typed query (sql/ingest/typed_<table>.sql): the canonical columns computed with TRY_CAST and a CASE
   yielding each row's first failing check (reason codes in docs/tables.md), materialized once as `_typed`
   with a 64-bit hash of the key (`_h`). `_cand` holds the good rows whose key hash repeats in the file or
   whose key is already in the warehouse (exact semi-join on the key); `_collisions` compares those exactly:
   identical content counts as a duplicate, different content is quarantined as conflicting_<key>.
5. Good rows are inserted, bad rows go to `quarantined_rows` (raw row as JSON), customers seen in
   transactions are registered when the customer file is not exhaustive, and the ledger row is written with
   rows_in = rows_loaded + rows_quarantined + rows_duplicate. COMMIT; on any error ROLLBACK, so a failure
   mid-file leaves the warehouse exactly as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from assets.ingest.mapping import (
    KEY_COLUMN,
    ROW_COLUMN,
    TABLES,
    Mapping,
    MappingError,
    TableMapping,
    builtin_mapping_path,
    load_mapping,
    quote_ident,
    render_attributes,
    render_spec,
)
from resources.sql import load_sql

__all__ = [
    "FileReport",
    "Mapping",
    "MappingError",
    "builtin_mapping_path",
    "check_ingest_counts_add_up",
    "check_prices_non_negative",
    "check_quantities_positive",
    "check_txn_ids_unique",
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
TARGET_TABLE = {"transactions": "raw_transactions", "products": "products", "customers": "customers"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
TRUTH_FOLDER = "truth"  # the synthetic market keeps its ground truth apart there; never ingested
ID_COLUMNS = {"txn_id", "basket_id", "customer_id", "product_id"}
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


class _RejectFile(Exception):
    """Raised inside a file's transaction to reject the whole file with one reason (after a rollback)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- small SQL helpers

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _run(conn, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Execute one statement with the $params it names (DuckDB rejects unused ones) and fetch every row."""
    used = set(_PARAM.findall(sql))
    args = {k: v for k, v in (params or {}).items() if k in used}
    return conn.execute(sql, args).fetchall()


def _render(name: str, parts: dict[str, str]) -> str:
    """sql/<name>.sql with its {placeholders} replaced by SQL fragments (expressions, never values)."""

    def sub(line: str) -> str:
        if line.lstrip().startswith("--"):  # comments may name placeholders; they stay as written
            return line
        return _PLACEHOLDER.sub(lambda m: parts[m.group(1)] if m.group(1) in parts else m.group(0), line)

    return "\n".join(sub(line) for line in load_sql(name).splitlines())


def _scalar(conn, sql: str, params: dict[str, Any] | None = None) -> Any:
    rows = _run(conn, sql, params)
    return rows[0][0] if rows else None


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- schema


def ensure_schema(conn) -> None:
    """Create the ingest tables (raw_transactions, products, customers, quarantined_rows, ingest_ledger).

    A warehouse written by an older table contract (rows carrying source and file_sha256 instead of file_id)
    is refused with a one-line error naming the fix, rather than mixed with rows of the new contract."""
    old = _run(
        conn,
        "select table_name from duckdb_columns() where schema_name = 'main' and column_name = 'file_sha256' "
        "and table_name in ('raw_transactions', 'products', 'customers') order by table_name",
    )
    if old:
        path = _scalar(conn, "select path from duckdb_databases() where database_name = current_database()")
        raise MappingError(
            f"the warehouse {path} was written by an older MALLES table contract ({old[0][0]} has file_sha256 "
            "instead of file_id); delete that file (or point MALLES_DUCKDB_PATH at a new one) and ingest again"
        )
    for table in INGEST_TABLES:
        conn.execute(load_sql(f"ingest/create_{table}"))


# --------------------------------------------------------------------------- files of a mapping


def mapping_paths(
    mapping: Mapping, paths: Iterable[str | Path] | dict | None = None, log=None
) -> list[tuple[str, Path]]:
    """(table, path) pairs in load order: products, customers, transactions; each group sorted by path.

    Without `paths`, the mapping's globs. With a list of paths, each file's table is told by matching its name
    to the globs (a file matching none, or lying in a `truth/` folder, is left out with a log line); a dict
    {table: [paths]} says it directly.
    """
    log = log or log_default
    by_table: dict[str, set[Path]] = {t: set() for t in TABLES}
    if paths is None:
        for t in TABLES:
            by_table[t] |= set(mapping.expand_globs(t))
    elif isinstance(paths, dict):
        for t, ps in paths.items():
            if t not in TABLES:
                raise MappingError(f"paths: unknown table {t!r}; use transactions, products or customers")
            by_table[t] |= {Path(p) for p in ([ps] if isinstance(ps, str | Path) else ps)}
    else:
        for p in paths:
            p = Path(p)
            if TRUTH_FOLDER in p.parts[:-1]:
                log.info(f"{p}: inside a {TRUTH_FOLDER}/ folder (ground truth, never ingested); left out")
                continue
            t = mapping.table_of(p)
            if t is None:
                log.warning(f"{p}: matches none of the file patterns of mapping {mapping.label}; left out")
                continue
            by_table[t].add(p)
    return [(t, p) for t in TABLES for p in sorted(by_table[t])]


# --------------------------------------------------------------------------- ingest


def ingest_source(
    conn,
    mapping: Mapping | str | Path,
    paths: Iterable[str | Path] | dict | None = None,
    progress: bool = True,
    log=None,
) -> list[FileReport]:
    """Ingest a mapping's files (products, then customers, then transactions); one report per file."""
    log = log or log_default
    mapping = load_mapping(mapping)
    ensure_schema(conn)
    files = mapping_paths(mapping, paths, log)
    if not files:
        log.warning(f"mapping {mapping.label}: no files found (globs under {mapping.base_dir})")
    reports = []
    for table, path in _progress(files, progress, mapping.name):
        report = ingest_file(conn, mapping, table, path, log=log)
        level = logging.WARNING if report.status == "rejected" or report.rows_in == 0 else logging.INFO
        log.log(level, f"{table} {path.name}: {report.status}: {report.message}")
        reports.append(report)
    return reports


def _progress(items: list, enabled: bool, name: str):
    if not enabled or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"ingest {name}", unit="file", leave=False)


def ingest_file(conn, mapping: Mapping, table: str, path: str | Path, log=None) -> FileReport:
    """Ingest one file into one table in one transaction; see the module docstring for the steps."""
    log = log or log_default
    path = Path(path)
    t0 = time.perf_counter()
    sha = sha256_file(path)
    report = FileReport(source_file=str(path), file_sha256=sha, table_name=table, source=mapping.name)
    prev = _run(
        conn, "select status, ingested_at, source_file from ingest_ledger where file_sha256 = $s", {"s": sha}
    )
    if prev and prev[0][0] != "rejected":
        report.status = "skipped"
        report.message = (
            f"already ingested on {prev[0][1]:%Y-%m-%d %H:%M} (as {Path(prev[0][2]).name}); nothing added"
        )
        report.seconds = time.perf_counter() - t0
        return report
    reject: _RejectFile | None = None
    for _attempt in range(2):
        conn.execute("begin transaction")
        try:
            if prev:  # an earlier rejected attempt at the same content: replaced by this one
                _run(conn, load_sql("ingest/delete_quarantined_rows_of_file"), {"file_sha256": sha})
                _run(conn, load_sql("ingest/delete_ingest_ledger_entry"), {"file_sha256": sha})
            report.file_id = int(_scalar(conn, "select coalesce(max(file_id), 0) + 1 from ingest_ledger"))
            _load_file(conn, mapping, table, path, report, log, reject)
            _write_ledger(conn, report)
            conn.execute("commit")
            break
        except _RejectFile as e:
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
    _run(conn, load_sql("ingest/insert_ingest_ledger"), {**asdict(r), "file_sha256": r.file_sha256})


class _Staged:
    """A staged file: the SQL of its rows (with _row), its source columns, and CSV lines set aside."""

    def __init__(
        self,
        source_sql: str,
        columns: list[str],
        params: dict[str, Any],
        n_rejects: int = 0,
        types: dict[str, str] | None = None,
    ) -> None:
        self.source_sql = source_sql
        self.columns = columns
        self.types = types or {c: "VARCHAR" for c in columns}  # source column -> DuckDB type
        self.params = params
        self.n_rejects = n_rejects

    def raw_row_sql(self, alias: str = "s") -> str:
        """SQL of the JSON text of a staged row's source columns."""
        if not self.columns:
            return "'{}'"
        pairs = ", ".join(f"{quote_ident(c)} := {alias}.{quote_ident(c)}" for c in self.columns)
        return f"cast(to_json(struct_pack({pairs})) as varchar)"


def _load_file(conn, mapping: Mapping, table: str, path: Path, report: FileReport, log, reject) -> None:
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
    staged = _stage(conn, mapping, path, report, log)
    if staged is None:
        return
    params = {**base, **staged.params}
    if staged.n_rejects:
        _run(conn, load_sql("ingest/insert_quarantined_csv_rejects"), params)
    n_rows = _scalar(conn, f"select count(*) from {staged.source_sql}", params)
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
    typed, tparams = _typed_sql(mapping, tm, staged, available)
    params = {**params, **tparams}
    parts = {"typed": typed, "key": KEY_COLUMN[table], "target": TARGET_TABLE[table]}
    try:
        _run(conn, _render("ingest/stage_typed", parts), params)
    except Exception as e:  # noqa: BLE001 - duckdb raises several error types for a bad expression
        import duckdb

        if not isinstance(e, duckdb.Error):
            raise
        raise _RejectFile(
            "bad_expression",
            f"{path.name}: the mapping's expressions fail on this file ({_first_line(e)}); "
            f"fix the {table} columns of mapping {mapping.label} (use try_cast on text columns)",
        ) from e
    _run(conn, _render("ingest/stage_candidates", parts), params)
    _run(conn, load_sql(f"ingest/collisions_{table}"), params)
    if table == "customers":
        _run(conn, load_sql("ingest/delete_replaced_customers"), params)
    loaded = _scalar(conn, _render(f"ingest/insert_{TARGET_TABLE[table]}", parts), params)
    if table == "transactions" and not _customers_exhaustive(mapping):
        _run(conn, load_sql("ingest/register_unseen_customers"), params)
    conflict = f"conflicting_{KEY_COLUMN[table]}"
    qsql = _render(
        "ingest/insert_quarantined_rows", {"source": staged.source_sql, "raw_row": staged.raw_row_sql()}
    )
    n_bad, n_conflict, n_dup = _run(
        conn,
        "select (select count(_reason) from _typed), "
        "(select count(*) filter (where _outcome = 'conflict') from _collisions), "
        "(select count(*) filter (where _outcome = 'duplicate') from _collisions)",
    )[0]
    if n_bad or n_conflict:
        _run(conn, qsql, {**params, "conflict_reason": conflict})
    report.rows_loaded = int(loaded)
    report.rows_quarantined = int(n_bad + n_conflict + staged.n_rejects)
    report.rows_duplicate = int(n_dup)
    report.reasons = _reasons(conn, report.file_sha256)
    report.status = "loaded"
    report.message = _summary_message(report)


def _customers_exhaustive(mapping: Mapping) -> bool:
    cm = mapping.tables.get("customers")
    return bool(cm and cm.exhaustive)


def _reasons(conn, sha: str) -> dict[str, int]:
    rows = _run(
        conn,
        "select reason, count(*) from quarantined_rows where file_sha256 = $s group by reason order by reason",
        {"s": sha},
    )
    return {r: int(n) for r, n in rows}


def _summary_message(r: FileReport) -> str:
    msg = f"{r.rows_loaded:,} loaded, {r.rows_quarantined:,} quarantined, {r.rows_duplicate:,} duplicate of {r.rows_in:,} rows"
    if r.reasons:
        msg += (
            " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])) + ")"
        )
    return msg


def _column_problem(
    mapping: Mapping, tm: TableMapping, path: Path, available: list[str], log
) -> _RejectFile | None:
    """Missing mapped columns (always) or extra columns (strict mode): a one-line reason to reject the file."""
    have = set(available)
    missing = sorted(tm.required_source_columns() - have)
    if missing:
        return _RejectFile(
            "missing_columns",
            f"{path.name}: missing column(s) {', '.join(missing)} that mapping {mapping.label} reads for "
            f"{tm.table}; fix the file or the mapping (the file has: {', '.join(available)})",
        )
    extra = [] if tm.attributes and tm.attributes.include == "*" else sorted(have - tm.used_source_columns())
    if extra and mapping.strict_columns:
        return _RejectFile(
            "extra_columns",
            f"{path.name}: column(s) {', '.join(extra)} not in mapping {mapping.label} (strict_columns); "
            f"map them, list them under {tm.table}.ignore_columns, or set strict_columns: false",
        )
    if extra:
        log.warning(
            f"{path.name}: column(s) {', '.join(extra)} are not used by mapping {mapping.label}; ignored"
        )
    return None


def _reject_whole_file(conn, staged: _Staged, params: dict, report: FileReport, problem: _RejectFile) -> None:
    sql = _render(
        "ingest/insert_quarantined_file", {"source": staged.source_sql, "raw_row": staged.raw_row_sql()}
    )
    _run(conn, sql, {**params, "reason": problem.reason, "detail": problem.message})
    report.rows_loaded = 0
    report.rows_duplicate = 0
    report.rows_quarantined = report.rows_in
    report.reasons = _reasons(conn, report.file_sha256)
    report.status = "rejected"
    report.message = problem.message


# --------------------------------------------------------------------------- staging


def _stage(conn, mapping: Mapping, path: Path, report: FileReport, log) -> _Staged | None:
    """Read a file into a form the SQL can use; None when it cannot be read at all (file rejected)."""
    import duckdb

    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            desc = _run(conn, "describe select * from read_parquet($path)", {"path": str(path)})
            # one scan of the file into a temp table: later steps read it in parallel (a Parquet file with a
            # single row group is read by one thread only)
            _run(conn, load_sql("ingest/stage_parquet"), {"path": str(path)})
            return _Staged("_src", [r[0] for r in desc], {}, types={r[0]: r[1] for r in desc})
        if suffix in CSV_SUFFIXES:
            return _stage_csv(conn, mapping, path, report, log)
    except duckdb.Error as e:
        report.status = "rejected"
        report.message = f"{path.name}: cannot be read as {suffix[1:]} ({_first_line(e)}); replace the file"
        return None
    report.status = "rejected"
    report.message = f"{path.name}: unsupported file type {suffix or '(none)'}; use .csv or .parquet"
    return None


def _csv_header(path: Path, mapping: Mapping) -> list[str] | None:
    """The header line's column names (deduplicated), or None for a file without one."""
    with open(path, "rb") as f:
        head = f.readline(1 << 20)
    text = head.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return None
    row = next(
        csv.reader(io.StringIO(text), delimiter=mapping.csv["delimiter"], quotechar=mapping.csv["quote"])
    )
    names: list[str] = []
    for i, name in enumerate(row):
        name = name.strip() or f"column{i + 1}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _stage_csv(conn, mapping: Mapping, path: Path, report: FileReport, log) -> _Staged | None:
    header = _csv_header(path, mapping)
    if header is None:
        report.message = "no header line: no rows"
        log.warning(f"{path}: {report.message}")
        return None
    params = {
        "path": str(path),
        "columns": {c: "VARCHAR" for c in header},
        "delimiter": mapping.csv["delimiter"],
        "quote": mapping.csv["quote"],
        "escape": mapping.csv["escape"],
    }
    _run(conn, load_sql("ingest/stage_csv"), params)
    n_rejects = int(_scalar(conn, "select count(distinct line) from _csv_rejects") or 0)
    if n_rejects:
        n_total = _scalar(conn, "select count(*) from _src") + n_rejects
        _run(conn, load_sql("ingest/renumber_csv_rows"), {"n_total": n_total})
    return _Staged("_src", header, {}, n_rejects)


# --------------------------------------------------------------------------- canonical columns


def _typed_sql(mapping: Mapping, tm: TableMapping, staged: _Staged, available: list[str]) -> tuple[str, dict]:
    """The typed_<table> statement for this mapping and file, and its $params (the mapping's constants)."""
    have = set(available)
    params: dict[str, Any] = {}
    parts = {"source": staged.source_sql}
    for col, spec in tm.columns.items():
        sql = render_spec(spec, have, params, f"const_{col}")
        if col in ID_COLUMNS:
            # ids are text; blanks are missing. A typed (non-text) source column needs no trimming.
            typ = staged.types.get(spec.value) if spec.kind == "column" else None
            if typ is not None and typ != "VARCHAR":
                sql = f"cast({sql} as varchar)"
            else:
                sql = _blank_to_null(f"cast({sql} as varchar)")
        parts[col] = sql
    if tm.table == "transactions":
        ts_spec = tm.columns["ts"]
        if ts_spec.format:
            params["ts_format"] = ts_spec.format
            parts["ts_parse"] = "try_strptime(cast(r_ts as varchar), $ts_format)"
        else:
            parts["ts_parse"] = "try_cast(r_ts as timestamp)"
        params["customers_exhaustive"] = bool(_customers_exhaustive(mapping))
    else:
        parts["attributes"] = render_attributes(tm, available, params)
    if tm.table == "products":
        for col in ("category", "brand", "department", "description", "product_id"):
            params[f"exclude_{col}"] = list(tm.exclude.get(col, ()))
    return _render(f"ingest/typed_{tm.table}", parts), params


def _blank_to_null(text_sql: str) -> str:
    """SQL equal to nullif(trim(x), '') (DuckDB's trim strips spaces only), but trimming only the values that
    start or end with a space: most ids have none, and trim costs as much as building the id text."""
    return (
        f"(case when {text_sql} like ' %' or {text_sql} like '% ' then nullif(trim({text_sql}), '') "
        f"else nullif({text_sql}, '') end)"
    )


def landing_mappings(landing_dir: str | Path) -> list[Path]:
    """Every mapping.yaml (or .yml) in the subfolders of a landing folder, sorted."""
    root = Path(landing_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("mapping.y*ml") if p.name in {"mapping.yaml", "mapping.yml"}]
    return sorted(p for p in found if TRUTH_FOLDER not in p.relative_to(root).parts)


# --------------------------------------------------------------------------- metadata, summary and checks


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
    ensure_schema(conn)
    return conn.sql(load_sql("ingest/ingest_summary")).pl()


def table_count(conn, table: str) -> int:
    return int(_scalar(conn, f"select count(*) from {quote_ident(table)}"))


def check_txn_ids_unique(conn) -> tuple[bool, dict[str, Any]]:
    """Every txn_id of raw_transactions appears once."""
    n, distinct = _run(conn, "select count(*), count(distinct txn_id) from raw_transactions")[0]
    dups = _run(
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
    bad_sum = _run(
        conn,
        "select source_file from ingest_ledger where rows_in <> rows_loaded + rows_quarantined + rows_duplicate",
    )
    bad_q = _run(
        conn,
        "select l.source_file from ingest_ledger l left join (select file_sha256, count(*) n from quarantined_rows "
        "group by all) q using (file_sha256) where coalesce(q.n, 0) <> l.rows_quarantined",
    )
    bad_loaded = _run(
        conn,
        "select l.source_file from ingest_ledger l left join (select file_id, count(*) n from raw_transactions "
        "group by all union all select file_id, count(*) from products group by all) t using (file_id) "
        "where l.table_name in ('transactions', 'products') and coalesce(t.n, 0) <> l.rows_loaded",
    )
    files = int(_scalar(conn, "select count(*) from ingest_ledger"))
    meta = {
        "files": files,
        "files_not_adding_up": [r[0] for r in bad_sum][:5],
        "files_quarantine_mismatch": [r[0] for r in bad_q][:5],
        "files_loaded_mismatch": [r[0] for r in bad_loaded][:5],
    }
    return not (bad_sum or bad_q or bad_loaded), meta


def check_prices_non_negative(conn) -> tuple[bool, dict[str, Any]]:
    """unit_price and list_price are finite and >= 0 on every line."""
    n_bad, n = _run(
        conn,
        "select count(*) filter (where not (unit_price >= 0 and list_price >= 0 and isfinite(unit_price) "
        "and isfinite(list_price))), count(*) from raw_transactions",
    )[0]
    return n_bad == 0, {"rows": int(n), "bad_price_rows": int(n_bad)}


def check_quantities_positive(conn) -> tuple[bool, dict[str, Any]]:
    """quantity > 0 on every line."""
    n_bad, n, lo = _run(
        conn, "select count(*) filter (where not quantity > 0), count(*), min(quantity) from raw_transactions"
    )[0]
    return n_bad == 0, {
        "rows": int(n),
        "non_positive_rows": int(n_bad),
        "min_quantity": None if lo is None else int(lo),
    }
