"""Small DuckDB and file helpers shared by every stage (no Dagster import, so plain logic can use them).

duckdb 2.x: a result must be read to the end before the next query on the same connection, and relations
have no `.fetchone()`; these helpers always `fetchall()`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def quote_ident(name: str) -> str:
    """A SQL identifier in double quotes (embedded quotes doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def scalar(conn, sql: str, params: dict[str, Any] | None = None) -> Any:
    """One value from a query: the first column of the first row, or None when there is no row."""
    rows = conn.execute(sql, params or {}).fetchall()
    return rows[0][0] if rows else None


def table_exists(conn, name: str) -> bool:
    """Whether a table or view of that name exists in the connection's catalog."""
    n = scalar(conn, "select count(*) from information_schema.tables where table_name = $name", {"name": name})
    return bool(n)


def table_count(conn, table: str) -> int:
    """Rows of a table (0 when it does not exist)."""
    if not table_exists(conn, table):
        return 0
    return int(scalar(conn, f"select count(*) from {quote_ident(table)}"))


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
