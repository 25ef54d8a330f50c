"""Ingest stage: source files (CSV or Parquet, any source mapped to the canonical schema) -> DuckDB tables.

Thin Dagster wiring; the work is in `assets/ingest/logic.py` (and the mapping format in `mapping.py`).
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import data_version, log_asset_run, table_metadata
from assets.ingest import logic
from resources.mlflow import MlflowResource

GROUP = "ingest"
ASSET_OF_TABLE = {"transactions": "raw_transactions", "products": "products", "customers": "customers"}
DESCRIPTIONS = {
    "raw_transactions": "Canonical transaction lines (txn_id, basket_id, ts, customer_id, product_id, quantity, "
    "unit_price, list_price, channel) of every ingested source, appended per file.",
    "products": "One row per product: category, brand, department, description, attributes (JSON) and "
    "is_merchandise (false for the non-merchandise the mapping excludes).",
    "customers": "One row per customer: segment and attributes (JSON); customers seen only in transactions "
    "are registered with a NULL segment when the customer file is not exhaustive.",
    "quarantined_rows": "Every input row that was not loaded and is not a duplicate: source file, row number, "
    "raw row (JSON), reason code and detail.",
}


class IngestConfig(dg.Config):
    # built-in source names (mappings/<name>.yaml) or paths to mapping YAMLs (globs relative to the YAML)
    sources: list[str] = ["completejourney"]
    # if set, every subfolder of it holding a mapping.yaml is ingested too (new files land there)
    landing_dir: str = ""
    # plausibility bounds of transaction lines: outside them a line is quarantined (implausible_timestamp,
    # quantity_out_of_range) instead of loaded; a typo'd year or a 2^63 quantity never reaches the features
    ts_min: str = "1990-01-01"  # earliest plausible ts (ISO date or timestamp)
    ts_max: str = ""  # latest plausible ts; empty = one day after the run starts
    quantity_min: int = 1  # fewest units on a line
    quantity_max: int = 1_000_000  # most units on a line


def ingest_limits(config: IngestConfig) -> logic.Limits:
    """The plausibility bounds of an ingest config (ts_max empty: one day after now)."""
    from datetime import datetime, timedelta

    ts_max = datetime.fromisoformat(config.ts_max) if config.ts_max else datetime.now() + timedelta(days=1)
    return logic.Limits(
        ts_min=datetime.fromisoformat(config.ts_min) if config.ts_min else None,
        ts_max=ts_max,
        quantity_min=config.quantity_min,
        quantity_max=config.quantity_max,
    )


@dg.multi_asset(
    name="ingest",
    specs=[
        dg.AssetSpec(k, group_name=GROUP, kinds={"duckdb"}, description=d) for k, d in DESCRIPTIONS.items()
    ],
)
def ingest(
    context: dg.AssetExecutionContext, config: IngestConfig, duckdb: DuckDBResource, mlflow: MlflowResource
):
    """Ingest the configured sources (and the landing folder's mappings) file by file into DuckDB."""
    mappings = [logic.load_mapping(s) for s in config.sources]
    if config.landing_dir:
        mappings += [logic.load_mapping(str(p)) for p in logic.landing_mappings(config.landing_dir)]
    reports: list[logic.FileReport] = []
    limits = ingest_limits(config)
    with duckdb.get_connection() as conn:
        logic.ensure_schema(conn)
        for mapping in mappings:
            context.log.info(f"ingesting source {mapping.name} ({mapping.label})")
            reports += logic.ingest_source(conn, mapping, progress=True, log=context.log, limits=limits)
        version = data_version(conn)
        totals = logic.run_metadata(reports, None)
        tracking = log_asset_run(mlflow, context, conn, totals, params=config.model_dump())
        for asset in DESCRIPTIONS:
            run_meta = logic.run_metadata(reports, None if asset == "quarantined_rows" else asset)
            sample, n = logic.table_sample(conn, asset)
            metadata = {
                **table_metadata(sample, row_count=n),
                **{k: (dg.MetadataValue.md(v) if k.endswith("_md") else v) for k, v in run_meta.items()},
                **tracking,
            }
            yield dg.MaterializeResult(
                asset_key=asset, metadata=metadata, data_version=dg.DataVersion(version)
            )
    rejected = [r for r in reports if r.status == "rejected"]
    for r in rejected:
        context.log.error(f"rejected {r.source_file}: {r.message}")


def _check(fn, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as conn:
        passed, metadata = fn(conn)
    return dg.AssetCheckResult(passed=bool(passed), metadata=metadata)


@dg.asset_check(asset="raw_transactions", description="Every txn_id of raw_transactions appears once.")
def txn_ids_unique(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _check(logic.check_txn_ids_unique, duckdb)


@dg.asset_check(
    asset="raw_transactions",
    description="For every ingested file rows_in = loaded + quarantined + duplicate, and the tables hold "
    "exactly the loaded and quarantined rows the ledger records.",
)
def ingest_counts_add_up(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _check(logic.check_ingest_counts_add_up, duckdb)


@dg.asset_check(asset="raw_transactions", description="unit_price and list_price are finite and >= 0.")
def prices_non_negative(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _check(logic.check_prices_non_negative, duckdb)


@dg.asset_check(asset="raw_transactions", description="quantity > 0 on every transaction line.")
def quantities_positive(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _check(logic.check_quantities_positive, duckdb)
