"""The alignment stage's warehouse and MLflow side: the latest prompt dataset's files, the lora_adapters row,
the adapter logged and registered as an MLflow pyfunc model, and the plain numbers and images of the asset's
metadata. No dagster import; mlflow is imported inside the functions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resources.sql import load_sql
from resources.warehouse import table_exists

if TYPE_CHECKING:
    from assets.alignment.train import TrainResult

REGISTERED_MODEL = "malles-lora-adapter"


def latest_prompt_files(conn) -> dict[str, str]:
    """{file: path} of the latest prompt dataset indexed in sft_prompt_files, plus "run_id"."""
    if not table_exists(conn, "sft_prompt_files"):
        raise ValueError(
            "no prompt dataset: materialize sft_prompt_dataset first (no table sft_prompt_files)"
        )
    rows = conn.execute(load_sql("alignment/select_latest_prompt_files")).fetchall()
    if not rows:
        raise ValueError("no prompt dataset: sft_prompt_files is empty (materialize sft_prompt_dataset)")
    out = {file: path for _, file, path in rows}
    out["run_id"] = rows[0][0]
    return out


def write_adapter_row(conn, row: dict[str, Any]) -> None:
    """Append one row to lora_adapters (created on first use)."""
    conn.execute(load_sql("alignment/lora_adapters"))
    conn.execute(load_sql("alignment/insert_lora_adapters"), row)


class AdapterModel:
    """A tiny pyfunc wrapper so the adapter folder can be logged and registered as an MLflow model. Scoring
    goes through LLMResource(adapter=<folder>); predict only returns where the adapter and its base model are."""

    def __init__(self, base_model: str = ""):
        self.base_model = base_model
        self.adapter_path = ""

    def load_context(self, context):
        self.adapter_path = context.artifacts.get("adapter", "")

    def predict(self, context, model_input, params=None):
        return [{"adapter_path": self.adapter_path, "base_model": self.base_model}]


def log_and_register_adapter(
    adapter_dir: str | Path, base_model: str, name: str = REGISTERED_MODEL, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Log the adapter folder as an MLflow pyfunc model inside the ACTIVE run and register it under `name`
    (the version tagged with `tags`, e.g. base_model and dataset_run_id). Returns (model_uri, version)."""
    import mlflow
    import mlflow.pyfunc

    python_model = _pyfunc_wrapper(base_model)
    info = mlflow.pyfunc.log_model(
        name="adapter",
        python_model=python_model,
        artifacts={"adapter": str(adapter_dir)},
        pip_requirements=["peft", "transformers", "torch"],
    )
    version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    return info.model_uri, str(version.version)


def _pyfunc_wrapper(base_model: str):
    import mlflow.pyfunc

    class _Adapter(AdapterModel, mlflow.pyfunc.PythonModel):
        pass

    return _Adapter(base_model)


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The finite numbers only (MLflow and Dagster metadata reject or mislead on nan)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def png_markdown(path: str | Path) -> str:
    """An inline markdown image (base64) of a PNG file."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![loss curve](data:image/png;base64,{data})"


def adapter_row(
    dagster_run_id: str,
    mlflow_run_id: str,
    version: str,
    result: TrainResult,
    base_model: str,
    files: dict[str, str],
) -> dict[str, Any]:
    """The lora_adapters row of one trained adapter (nan losses stored as NULL)."""

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "dagster_run_id": dagster_run_id,
        "mlflow_run_id": mlflow_run_id,
        "registered_version": version,
        "adapter_path": result.adapter_dir,
        "base_model": base_model,
        "dataset_run_id": files.get("run_id"),
        "train_loss": num(result.train_loss),
        "eval_loss": num(result.eval_loss),
        "examples_per_sec": num(result.examples_per_sec),
    }
