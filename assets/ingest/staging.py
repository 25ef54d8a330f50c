"""Staging one source file: read it once into the temp table `_src` (Parquet as typed, CSV as text), and
build the typed_<table> statement of its canonical columns. Plain logic, no dagster import.

A file that cannot be read raises `FileRejected` with its real cause in one line; the caller rolls the
file's transaction back and records the rejection (DuckDB aborts a transaction on any error, so nothing may
run in it after the failure)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from assets.ingest import statements as sq
from assets.ingest.mapping import Mapping, TableMapping, render_attributes, render_spec
from resources.sql import load_sql
from resources.warehouse import quote_ident

PARQUET_SUFFIXES = {".parquet", ".pq"}
CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
ID_COLUMNS = {"txn_id", "basket_id", "customer_id", "product_id"}


class FileRejected(Exception):
    """The whole file is rejected with one reason code and a one-line message naming the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Plausibility bounds of transaction lines (None: no bound). Built from IngestConfig, which holds the
    defaults; a line outside them is quarantined as implausible_timestamp or quantity_out_of_range."""

    ts_min: datetime | None = None
    ts_max: datetime | None = None
    quantity_min: int | None = None
    quantity_max: int | None = None


class Staged:
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


def stage(conn, mapping: Mapping, path: Path, log) -> Staged | None:
    """Read a file into `_src`; None for a CSV without a header line (no rows). FileRejected when the file
    cannot be read (truncated Parquet, broken CSV) or has an unsupported type."""
    import duckdb

    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES | CSV_SUFFIXES:
        raise FileRejected(
            "unreadable_file",
            f"{path.name}: unsupported file type {suffix or '(none)'}; use .csv or .parquet",
        )
    try:
        if suffix in PARQUET_SUFFIXES:
            desc = sq.run(conn, "describe select * from read_parquet($path)", {"path": str(path)})
            # one scan of the file into a temp table: later steps read it in parallel (a Parquet file with a
            # single row group is read by one thread only)
            sq.run(conn, load_sql("ingest/stage_parquet"), {"path": str(path)})
            return Staged("_src", [r[0] for r in desc], {}, types={r[0]: r[1] for r in desc})
        return _stage_csv(conn, mapping, path, log)
    except duckdb.Error as e:
        raise FileRejected(
            "unreadable_file",
            f"{path.name}: cannot be read as {suffix[1:]} ({sq.first_line(e)}); replace the file",
        ) from e


def csv_header(path: Path, mapping: Mapping) -> tuple[list[str] | None, bool]:
    """The header line's column names (deduplicated; None for a file without one), and whether the header
    ends in CRLF while the rows end in LF (an export glued from two tools)."""
    with open(path, "rb") as f:
        head = f.readline(1 << 20)
        second = f.readline(1 << 20)
    mixed = head.endswith(b"\r\n") and second.endswith(b"\n") and not second.endswith(b"\r\n")
    text = head.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return None, mixed
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
    return names, mixed


def _stage_csv(conn, mapping: Mapping, path: Path, log) -> Staged | None:
    header, mixed = csv_header(path, mapping)
    if header is None:
        log.warning(f"{path}: no header line: no rows")
        return None
    if mixed:
        log.warning(
            f"{path.name}: the header line ends in CRLF, the rows in LF; read with the rows' line ends"
        )
    params = {
        "path": str(path),
        "columns": {c: "VARCHAR" for c in header},
        "delimiter": mapping.csv["delimiter"],
        "quote": mapping.csv["quote"],
        "escape": mapping.csv["escape"],
        # DuckDB takes the line end from the header line; a lenient parser reads LF rows under a CRLF header
        # (lines with a wrong field count are still set aside in _csv_rejects)
        "strict_mode": not mixed,
    }
    sq.run(conn, load_sql("ingest/stage_csv"), params)
    n_rejects = int(sq.value(conn, "select count(distinct line) from _csv_rejects") or 0)
    if n_rejects:
        n_total = sq.value(conn, "select count(*) from _src") + n_rejects
        sq.run(conn, load_sql("ingest/renumber_csv_rows"), {"n_total": n_total})
    return Staged("_src", header, {}, n_rejects)


# --------------------------------------------------------------------------- canonical columns


def typed_sql(
    mapping: Mapping, tm: TableMapping, staged: Staged, available: list[str], limits: Limits | None
) -> tuple[str, dict]:
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
                sql = blank_to_null(f"cast({sql} as varchar)")
        parts[col] = sql
    if tm.table == "transactions":
        ts_spec = tm.columns["ts"]
        if ts_spec.format:
            params["ts_format"] = ts_spec.format
            parts["ts_parse"] = "try_strptime(cast(r_ts as varchar), $ts_format)"
        else:
            parts["ts_parse"] = "try_cast(r_ts as timestamp)"
        params["customers_exhaustive"] = customers_exhaustive(mapping)
        lim = limits or Limits()
        params.update(
            ts_min=lim.ts_min, ts_max=lim.ts_max, quantity_min=lim.quantity_min, quantity_max=lim.quantity_max
        )
    else:
        parts["attributes"] = render_attributes(tm, available, params)
    if tm.table == "products":
        for col in ("category", "brand", "department", "description", "product_id"):
            params[f"exclude_{col}"] = list(tm.exclude.get(col, ()))
    return sq.render(f"ingest/typed_{tm.table}", parts), params


def customers_exhaustive(mapping: Mapping) -> bool:
    cm = mapping.tables.get("customers")
    return bool(cm and cm.exhaustive)


def blank_to_null(text_sql: str) -> str:
    """SQL equal to nullif(trim(x), '') (DuckDB's trim strips spaces only), but trimming only the values that
    start or end with a space: most ids have none, and trim costs as much as building the id text."""
    return (
        f"(case when {text_sql} like ' %' or {text_sql} like '% ' then nullif(trim({text_sql}), '') "
        f"else nullif({text_sql}, '') end)"
    )
