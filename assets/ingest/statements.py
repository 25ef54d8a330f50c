"""Running the sql/ingest statements: $params filtered to the ones a statement names, {placeholders}
filled with SQL fragments (expressions of the mapping, never values). Plain logic, no dagster import.

Every ingest module calls `statements.run` through this module (not a copy of the name), so a test or a
profiler can wrap it in one place (benchmarks/ingest.py times each statement this way)."""

from __future__ import annotations

import re
from typing import Any

from resources.sql import load_sql

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def run(conn, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Execute one statement with the $params it names (DuckDB rejects unused ones) and fetch every row."""
    used = set(_PARAM.findall(sql))
    args = {k: v for k, v in (params or {}).items() if k in used}
    return conn.execute(sql, args).fetchall()


def value(conn, sql: str, params: dict[str, Any] | None = None) -> Any:
    """The first column of the first row of `run` (None without rows)."""
    rows = run(conn, sql, params)
    return rows[0][0] if rows else None


def render(name: str, parts: dict[str, str]) -> str:
    """sql/<name>.sql with its {placeholders} replaced by SQL fragments (expressions, never values)."""

    def sub(line: str) -> str:
        if line.lstrip().startswith("--"):  # comments may name placeholders; they stay as written
            return line
        return _PLACEHOLDER.sub(lambda m: parts[m.group(1)] if m.group(1) in parts else m.group(0), line)

    return "\n".join(sub(line) for line in load_sql(name).splitlines())


def first_line(text: object) -> str:
    """The first line of an error message (DuckDB's run over several lines)."""
    return (str(text).strip().splitlines() or [""])[0]
