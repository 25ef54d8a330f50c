"""The DuckDB warehouse (dagster-duckdb's DuckDBResource)."""

from dagster_duckdb import DuckDBResource

from resources.paths import data_dir


def warehouse(path: str | None = None) -> DuckDBResource:
    """The warehouse resource: `path`, or data/malles.duckdb by default."""
    return DuckDBResource(database=str(path or data_dir() / "malles.duckdb"))
