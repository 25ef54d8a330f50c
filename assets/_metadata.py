"""The standard Dagster metadata every asset emits (docs/conventions.md section 7) and lineage tags."""

import hashlib
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from resources.paths import PROJECT_ROOT
from resources.warehouse import sha256_file  # noqa: F401 - importable from here too

_POLARS_TO_TYPE = {
    pl.Utf8: "string",
    pl.Int64: "int64",
    pl.Int32: "int32",
    pl.Float64: "float64",
    pl.Float32: "float32",
    pl.Boolean: "bool",
    pl.Date: "date",
}


def _type_name(dtype: pl.DataType) -> str:
    for k, v in _POLARS_TO_TYPE.items():
        if dtype == k:
            return v
    return str(dtype)


def table_metadata(df: pl.DataFrame, row_count: int | None = None, preview_rows: int = 5) -> dict[str, Any]:
    """row_count, column schema and a 5-row markdown preview of a table (or of a sample of it)."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=_type_name(dtype)) for name, dtype in df.schema.items()]
    )
    head = df.head(preview_rows)
    try:
        preview = head.to_pandas().to_markdown(index=False)
    except ImportError:  # tabulate is optional
        preview = str(head)
    return {
        "dagster/row_count": dg.MetadataValue.int(int(df.height if row_count is None else row_count)),
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(preview),
    }


def artifact_metadata(path: str | Path) -> dict[str, Any]:
    """path, size_bytes and sha256 of a file artifact."""
    p = Path(path)
    return {
        "path": dg.MetadataValue.path(str(p)),
        "size_bytes": dg.MetadataValue.int(p.stat().st_size),
        "sha256": dg.MetadataValue.text(sha256_file(p)),
    }


@cache
def code_version() -> str:
    """The git commit of the project (with '+dirty' when the tree has changes), or 'unknown'. Read once per
    process (pipelines/definitions.py asks at import): a commit made while a run of hours is going on is not
    the code that run executes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(conn) -> str:
    """A hash of the ingest ledger (the content hashes of every file loaded): the warehouse's data version."""
    try:
        rows = conn.execute("select file_sha256 from ingest_ledger order by file_sha256").fetchall()
    except Exception:  # noqa: BLE001 - no ledger yet
        return "empty"
    return hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()[:16]


def lineage(context: dg.AssetExecutionContext, conn) -> dict[str, str]:
    """Tags that tie a figure to its Dagster run, code and data versions (also used as MLflow tags)."""
    keys = sorted(k.to_user_string() for k in context.selected_asset_keys)
    return {
        "dagster_run_id": context.run.run_id,
        "dagster_asset": ",".join(keys),
        "code_version": code_version(),
        "data_version": data_version(conn),
    }


def _numeric(metadata: dict[str, Any]) -> dict[str, float]:
    """The plain numbers of a metadata dict (MetadataValue ints/floats included), for MLflow metrics."""
    out: dict[str, float] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            continue
        out[_clean_key(key)] = float(raw)
    return out


def _clean_key(key: str) -> str:
    """A metadata key as MLflow accepts it (alphanumerics, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _short_texts(metadata: dict[str, Any], limit: int = 500) -> dict[str, str]:
    """The short texts of a metadata dict (plain strings, text and path values, lists of strings), as MLflow
    tags "meta.<key>": the model, adapter, backend and source runs travel with the MLflow run, not only with
    the Dagster event. Markdown, JSON and tables stay in Dagster."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, dg.MetadataValue) and not isinstance(
            value, dg.TextMetadataValue | dg.PathMetadataValue
        ):
            continue
        raw = getattr(value, "value", value)
        if type(raw) in (list, tuple) and all(isinstance(x, str) for x in raw):  # not records
            raw = ", ".join(raw)
        if isinstance(raw, str) and len(raw) <= limit:
            out["meta." + _clean_key(key)] = raw
    return out


def log_asset_run(
    mlflow,
    context: dg.AssetExecutionContext,
    conn,
    metadata: dict[str, Any],
    params: dict[str, Any] | None = None,
    artifacts: list[str | Path] = (),
) -> dict[str, Any]:
    """Log one asset's materialization to MLflow (its numeric metadata as metrics, its short texts as
    "meta." tags, its config as params, lineage as tags) and return the metadata that links the Dagster
    event to that MLflow run."""
    import mlflow as mlflow_lib

    tags = lineage(context, conn)
    with mlflow.start_run(run_name=tags["dagster_asset"], tags={**_short_texts(metadata), **tags}) as run:
        if params:
            mlflow_lib.log_params({k: str(v)[:500] for k, v in params.items()})
        numbers = _numeric(metadata)
        if numbers:
            mlflow_lib.log_metrics(numbers)
        for path in artifacts:
            mlflow_lib.log_artifact(str(path))
    return {
        "mlflow_run_id": dg.MetadataValue.text(run.info.run_id),
        "mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(run)),
        "code_version": dg.MetadataValue.text(tags["code_version"]),
        "data_version": dg.MetadataValue.text(tags["data_version"]),
    }
