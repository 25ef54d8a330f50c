"""Evaluation stage: the reference baselines of docs/evaluation-protocol.md scored on the shared episodes and splits."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, lineage, table_metadata
from assets.evaluation import logic
from assets.evaluation.baselines import BaselineSettings
from resources.mlflow import MlflowResource
from resources.paths import data_dir


class BaselineReportConfig(dg.Config):
    seed: int = 0  # the protocol's seed: sample keys and the ranker's subsample and randomness
    max_train_episodes: int = 100_000  # lgbm fit episodes (seeded md5 subsample): keeps fitting near a minute
    clogit_max_train_episodes: int = 0  # clogit fit episodes; 0 = all (the fit takes seconds)
    max_val_episodes: int = 50_000  # lgbm early stopping and softmax temperature: val subsample
    lgbm_num_leaves: int = 31  # tree size of the ranker
    lgbm_learning_rate: float = 0.15  # boosting step
    lgbm_n_estimators: int = 150  # upper bound on trees (early stopping usually ends sooner)
    lgbm_early_stopping: int = 15  # rounds without val ndcg@1 gain before stopping
    lgbm_min_data_in_leaf: int = 200  # guards against leaves fitted to a handful of options
    lgbm_max_bin: int = 63  # histogram bins: coarser is faster, features are mostly counts and logs
    lgbm_threads: int = 2  # the machines have 2 cores
    sample_per_split: int = 0  # 0: score every episode; N > 0: the protocol's seeded N-episode sample
    clogit6_folds: int = 2  # clogit6 is fit on val: its val scores come from models fit on the other folds
    best_classic_min_val_episodes: int = (
        200  # a val analogue smaller than this: best_classic chooses on all of val
    )
    duckdb_memory_limit: str = (
        ""  # e.g. "4GB": caps DuckDB while loading; empty keeps its setting (5.4 GB peak on CJ)
    )


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "mlflow", "python"},
    deps=["option_features", "episode_splits", "decision_episodes"],
)
def baseline_report(
    context: dg.AssetExecutionContext,
    config: BaselineReportConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Reference baselines (random, popularity, repeat, conditional logits, LightGBM ranker, quantity
    baselines) on every split, and each split's best classic method chosen on val: tables
    baseline_predictions, baseline_metrics and baseline_best_classic, a plot, an MLflow run."""
    knobs = config.model_dump()
    memory_limit = knobs.pop("duckdb_memory_limit")
    settings = BaselineSettings(**knobs)
    out_dir = data_dir() / "evaluation" / context.run.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    with duckdb.get_connection() as conn:
        run = logic.build_baseline_report(
            conn, settings, log=context.log.info, duckdb_memory_limit=memory_limit
        )
        tags = lineage(context, conn)
    plot_path = logic.plot_metrics(run.metrics, out_dir / "baseline_metrics.png")
    with mlflow.start_run(run_name="baseline_report", tags=tags) as mlrun:
        logic.log_to_mlflow(run, settings, out_dir, plot_path)
    context.log.info(f"baseline_report timings (s): {run.info.get('timings')}")
    metadata = {
        **table_metadata(run.metrics),
        "metrics": dg.MetadataValue.md(logic.metrics_markdown(run.metrics, run.best_classic)),
        "plot": dg.MetadataValue.md(logic.image_markdown(plot_path)),
        "plot_path": dg.MetadataValue.path(str(plot_path)),
        **{f"plot_{k}": v for k, v in artifact_metadata(plot_path).items() if k != "path"},
        "best_classic": dg.MetadataValue.text(str(run.info.get("best_classic", ""))),
        "predictions_row_count": dg.MetadataValue.int(run.predictions.height),
        "seconds_total": float(run.info["timings"]["total"]),
        "mlflow_run_id": dg.MetadataValue.text(mlrun.info.run_id),
        "mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(mlrun)),
        **{k: float(v) for k, v in logic.headline_metrics(run.metrics).items()},
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=baseline_report, blocking=True)
def metrics_in_range(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Hit rates in [0, 1], hit@3 >= hit@1, nll >= 0, errors >= 0 and share_jsd in [0, 1] in baseline_metrics."""
    with duckdb.get_connection() as conn:
        metrics = conn.sql("select * from baseline_metrics").pl()
    problems = logic.metrics_problems(metrics)
    return dg.AssetCheckResult(
        passed=not problems and metrics.height > 0,
        metadata={"n_rows": metrics.height, "problems": dg.MetadataValue.md("\n".join(problems) or "none")},
    )


__all__ = ["BaselineReportConfig", "baseline_report", "metrics_in_range"]
