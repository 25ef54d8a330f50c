"""The only dg.Definitions of MALLES. The resource set is chosen by $PIPELINE_ENV ('local' or 'gpu').

Environment variables read here (and only here):
- PIPELINE_ENV: 'local' (CPU, default) or 'gpu'.
- MALLES_DATA_DIR: the data folder (default: data/ at the project root).
- MALLES_DUCKDB_PATH: the warehouse file (default: $MALLES_DATA_DIR/malles.duckdb).
- MLFLOW_TRACKING_URI: any MLflow tracking URI (default: sqlite:///$MALLES_DATA_DIR/mlflow.db).
"""

import os

import dagster as dg

from pipelines.env import set_offline_env

set_offline_env()

from assets import alignment, evaluation, features, ingest, market, prompts, simulation, synthetic  # noqa: E402
from assets._metadata import code_version  # noqa: E402
from pipelines.jobs import JOBS  # noqa: E402
from pipelines.schedules import SCHEDULES  # noqa: E402
from pipelines.sensors import SENSORS  # noqa: E402
from resources.duckdb import warehouse  # noqa: E402
from resources.llm import LLMResource  # noqa: E402
from resources.mlflow import MlflowResource  # noqa: E402

STAGE_MODULES = [ingest, synthetic, features, prompts, alignment, simulation, evaluation, market]


def _mlflow() -> MlflowResource:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))
    return MlflowResource()


def build_resources(env: str) -> dict:
    """The resources for one environment: 'local' (CPU, hf backend) or 'gpu' (vLLM backend)."""
    if env not in RESOURCE_ENVS:
        raise ValueError(f"PIPELINE_ENV={env!r} is unknown: set it to one of {sorted(RESOURCE_ENVS)}")
    common = {"duckdb": warehouse(os.environ.get("MALLES_DUCKDB_PATH")), "mlflow": _mlflow()}
    if env == "gpu":
        # vLLM on one GPU: prefix caching, LoRA served unmerged (pip install -e '.[gpu]')
        return {**common, "llm": LLMResource(backend="vllm", device="cuda", batch_size=256)}
    # CPU: transformers, fp32 exact scores, 2 threads, the embedded default model
    return {**common, "llm": LLMResource(backend="hf")}


RESOURCE_ENVS = ("local", "gpu")

code_version()  # the commit this process runs, read now rather than when a long run logs

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(STAGE_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(STAGE_MODULES),
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=build_resources(os.environ.get("PIPELINE_ENV", "local")),
)
