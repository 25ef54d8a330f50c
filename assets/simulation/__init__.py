"""Simulation stage: the LLM retail agent decides on the evaluation episodes (retail_decisions) and is
measured beside the baselines on the same sample episodes (simulation_report).

Thin Dagster wiring; the work is in logic.py, SQL in sql/simulation/.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, log_asset_run, table_metadata
from assets.simulation import logic
from resources.llm import LLMResource
from resources.mlflow import MlflowResource
from resources.paths import data_dir

LLM_FIELDS = ("backend", "model", "adapter", "dtype", "batch_size", "threads", "prefix_reuse", "device")


class RetailDecisionsConfig(dg.Config):
    period: str = "test"  # episodes decided: 'test', 'val' or 'val,test' (val utilities feed calibration)
    n_per_split: int = (
        200  # EVALUATION.md's sample size N per split: 200 keeps the quick profile fast; full: 2000
    )
    form: str = "utility"  # 'utility' (yes/no per option, softmax of utilities) or 'listwise' (one label)
    use_adapter: bool = True  # use the newest lora_adapters row when there is one; zero-shot otherwise
    quantity: bool = True  # a second answer for the top option: expected units over "1".."9"
    include_style: bool = True  # False: ablation without the style parameters
    include_signals: bool = True  # False: ablation without the commercial submodule signals
    seed: int = 0  # the protocol's seed of the md5 sample
    chunk_episodes: int = 16  # episodes per engine call: one progress line per chunk


@dg.asset(
    group_name="simulation",
    kinds={"python", "pytorch", "duckdb"},
    # lora_adapter: the newest adapter is used when there is one (use_adapter); zero-shot otherwise
    deps=["sft_prompt_dataset", "lora_adapter"],
)
def retail_decisions(
    context: dg.AssetExecutionContext,
    config: RetailDecisionsConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """The LLM retail agent's decisions on EVALUATION.md's sample episodes: per option the utility, the choice
    probability (softmax over the choice set), the top choice and the expected quantity of the top option.
    Rows of this variant (method) replace its earlier rows in retail_decisions / retail_decision_episodes."""
    settings = logic.DecisionSettings(**config.model_dump(exclude={"use_adapter"}))
    with duckdb.get_connection() as conn:
        adapter, reason = logic.choose_adapter(logic.latest_adapter(conn), llm.model, config.use_adapter)
        method = logic.method_name(config.form, bool(adapter), config.include_style, config.include_signals)
        context.log.info(
            f"retail_decisions: {method} ({'adapter ' + adapter if adapter else 'zero-shot'}: {reason})"
        )
        used = LLMResource(**{**{k: getattr(llm, k) for k in LLM_FIELDS}, "adapter": adapter or llm.adapter})
        run = logic.run_decisions(
            conn, used.get_engine(), settings, method, context.run.run_id, log=context.log.info
        )
        logic.write_decisions(conn, run, method)
        meta = {
            **table_metadata(run.decisions),
            "method": method,
            "backend": used.backend,
            "model": used.model,
            "adapter": used.adapter or "none",
            "adapter_reason": reason,
            **run.info,
        }
        meta |= log_asset_run(mlflow, context, conn, meta, params=config.model_dump() | {"method": method})
    return dg.MaterializeResult(metadata=meta)


class SimulationReportConfig(dg.Config):
    methods: list[str] = []  # LLM methods of retail_decisions to report; empty = every method present


@dg.asset(
    group_name="simulation",
    kinds={"python", "duckdb", "mlflow"},
    deps=["retail_decisions", "baseline_report"],
)
def simulation_report(
    context: dg.AssetExecutionContext,
    config: SimulationReportConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Metrics (EVALUATION.md) of the LLM variants of retail_decisions per split, beside the baselines'
    predictions recomputed on the same sample episodes: table simulation_metrics, markdown, hit@1 plot, MLflow."""
    out_dir = data_dir() / "simulation" / context.run.run_id
    with duckdb.get_connection() as conn:
        metrics = logic.build_report(conn, config.methods or None, log=context.log.info)
        logic.write_report(conn, metrics)
        plot = logic.plot_hit1(metrics, out_dir / "simulation_hit1.png")
        csv = out_dir / "simulation_metrics.csv"
        metrics.write_csv(csv)
        md = logic.report_markdown(metrics)
        context.log.info("simulation_report:\n" + md)
        meta = {
            **table_metadata(metrics),
            "metrics": dg.MetadataValue.md(md),
            "plot_path": dg.MetadataValue.path(str(plot)),
            **{f"plot_{k}": v for k, v in artifact_metadata(plot).items() if k != "path"},
            **logic.headline_metrics(metrics),
        }
        meta |= log_asset_run(mlflow, context, conn, meta, params=config.model_dump(), artifacts=[plot, csv])
    return dg.MaterializeResult(metadata=meta)


SIMULATION_ASSETS = [retail_decisions, simulation_report]

__all__ = [
    "SIMULATION_ASSETS",
    "RetailDecisionsConfig",
    "SimulationReportConfig",
    "retail_decisions",
    "simulation_report",
]
