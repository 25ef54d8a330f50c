"""Named SQL files: sql/<stage>/<table>.sql, one statement per file."""

from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


@cache
def load_sql(name: str) -> str:
    """load_sql("ingest/raw_transactions") -> contents of sql/ingest/raw_transactions.sql"""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"no SQL file {path}: is the project installed editable (pip install -e .)?")
    return path.read_text(encoding="utf-8")
