"""Simulation stage: the LLM retail agent decides on the evaluation episodes (retail_decisions) and is
measured beside the baselines on the same sample episodes (eval_report).

Thin Dagster wiring; the work is in plan.py (names, the adapter, the sample), decide.py (the agents decide)
and report.py (eval_report's metrics), SQL in sql/simulation/.
"""

import dataclasses
import time

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, log_asset_run, table_metadata
from assets.simulation import decide, plan, report
from assets.simulation.checkpoint import checkpoint_key
from resources.llm import LLMResource
from resources.mlflow import MlflowResource
from resources.paths import data_dir


class RetailDecisionsConfig(dg.Config):
    period: str = (
        "val,test"  # the primary method's episodes: 'test', 'val' or 'val,test' (val fits the hybrid)
    )
    n_per_split: int = 80  # N per split of the primary method (docs/evaluation-protocol.md; full: 2000)
    form: str = "utility"  # primary: 'utility' (yes/no per option, softmax of utilities) or 'listwise'
    use_adapter: bool = True  # use the newest lora_adapters row when there is one; zero-shot otherwise
    quantity: bool = True  # a second answer for the top option: expected units over "1".."9"
    # who answers it: 'auto' (the adapter only when its training carried the quantity answer, else the base
    # model: a choice-only adapter drifts on it), 'adapter' (the deciding model) or 'base'
    quantity_source: str = "auto"
    include_style: bool = True  # False: the primary runs without the style parameters
    include_signals: bool = True  # False: the primary runs without the commercial submodule signals
    reading: bool = True  # listwise: readers + decider when a prompt exceeds budget_tokens (off: one prompt)
    budget_tokens: int = 512  # listwise prompt budget before the multi-agent reading (CJ prompts: mean 566)
    k: int = 4  # sample mode: answers per episode and run
    runs: int = 5  # sample mode: R runs with different seeds (stability: top1_agreement, share_cv)
    temperature: float = 1.0  # sample mode: sampling temperature
    # The other rows of eval_report, each decided on the smaller variant sample. Names:
    # {zero_shot|aligned}_{utility|listwise}[_sample][_no_reading][_no_style][_no_signals]
    # quick: none (on 16 episodes a hit@1's standard error is about 0.12); the full profile names zero-shot,
    # listwise and the ablations (pipelines/profiles.py)
    variants: list[str] = []
    # False: decide only the variants (add or finish one on an evaluation whose primary is decided); the
    # primary's rows stay as they are
    primary: bool = True
    variant_n: int = 16  # episodes per variant split (a prefix of the md5 sample: a subset of the primary's;
    # full profile: 200)
    variant_splits: list[str] = ["test_all"]  # splits the variants decide (full profile: all test splits)
    seed: int = 0  # the protocol's seed of the md5 sample
    chunk_episodes: int = 16  # episodes per engine call: one progress line per chunk
    # save each decided chunk under data/simulation/checkpoints/ and, when materialized again after a stop,
    # go on from the chunks already decided (same method, settings, model, adapter and episodes); they are
    # cleared once every method of the run has finished
    resume: bool = True
    # stop deciding after this many minutes (0 = no limit) and write what is complete: every split keeps
    # the protocol's sample at the largest N decided; materialize again to go on from the checkpoint
    max_minutes: float = 0.0


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
    """The LLM retail agents' decisions on docs/evaluation-protocol.md's sample episodes: per option the utility, the choice
    probability (softmax over the choice set), the top choice and the quantity distribution of the top option
    (asked of the adapter only when its training carried the quantity answer, else of the base model:
    quantity_source).
    First the primary method (aligned utility form by default) on N episodes per split of val and test, then
    each variant named in `variants` (zero-shot, listwise, ablations; none in the quick profile, all in the
    full one) on the smaller variant sample (primary=false: the variants only). Rows of each method replace its earlier rows in retail_decisions / retail_decision_episodes.
    Episodes are decided in md5-sample order and checkpointed per chunk: a stopped run goes on where it
    stopped (resume), and max_minutes writes the protocol's sample at the largest N completed (metadata
    complete: false)."""
    runs = plan.plan_decision_runs(config)
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes > 0 else None
    meta: dict = {"methods": [], "backend": llm.backend, "model": llm.model, "complete": True}
    engines: dict[str, object] = {}
    # the checkpoints of finished methods are cleared only when every method finished: a run stopped in a
    # variant goes on next time without deciding the primary again
    done_checkpoints: list = []
    # the warehouse is opened only to read each sample and to write each method's rows: the hours of
    # deciding in between leave it free for other runs and the UI
    with duckdb.get_connection() as conn:
        adapter, reason = plan.choose_adapter(plan.latest_adapter(conn), llm.model, True)
    meta["adapter"], meta["adapter_reason"] = adapter or "none", reason
    qty_path, qty_reason = plan.quantity_model(adapter, config.quantity_source)
    meta["quantity_model"] = "adapter" if qty_path else "base"
    meta["quantity_model_reason"] = qty_reason

    def engine_of(path: str):
        if path not in engines:
            engines[path] = llm.with_adapter(path).get_engine()
        return engines[path]

    for spec in runs:
        path = adapter if spec.aligned else ""
        if spec.aligned and not adapter:
            context.log.warning(f"retail_decisions: no adapter ({reason}): {spec.method} runs zero-shot")
        method = plan.method_name(spec.settings.form, bool(path), *spec.ablation)
        if method in meta["methods"]:
            context.log.info(f"retail_decisions: {method} already decided in this run; skipped")
            continue
        # the quantity question goes to the base model unless the adapter was trained on it (quantity_model)
        qpath = qty_path if path else ""
        own_qty = spec.settings.quantity and qpath != path  # a second engine answers the quantity
        context.log.info(
            f"retail_decisions: {method} ({'adapter ' + path if path else 'zero-shot'}) on "
            f"{spec.splits or plan.parse_periods(spec.settings.period)}, n={spec.settings.n_per_split}"
            + (f"; quantity from the base model ({qty_reason})" if own_qty else "")
        )
        ckpt = None
        if config.resume:
            key = checkpoint_key(
                {
                    "method": method,
                    "settings": dataclasses.asdict(spec.settings),
                    "splits": spec.splits,
                    "adapter": path,
                    # only when it differs: checkpoints of runs that asked the adapter stay valid
                    **({"quantity_adapter": qpath} if own_qty else {}),
                    **{k: getattr(llm, k) for k in ("backend", "model", "dtype")},
                }
            )
            ckpt = data_dir() / "simulation" / "checkpoints" / f"{method}-{key}"
        with duckdb.get_connection() as conn:
            sample = plan.load_run_sample(conn, spec.settings, spec.splits)
        run = decide.run_decisions(
            None,
            engine_of(path),
            spec.settings,
            method,
            context.run.run_id,
            context.log.info,
            splits=spec.splits,
            checkpoint_dir=ckpt,
            sample=sample,
            deadline=deadline,
            qty_engine=engine_of(qpath) if own_qty else None,
        )
        with duckdb.get_connection() as conn:
            decide.write_decisions(conn, run, method)
        if not run.info["complete"]:
            meta["complete"] = False
            context.log.warning(
                f"retail_decisions: {method} stopped at max_minutes={config.max_minutes} after "
                f"{run.info['n_decided']}/{run.info['n_planned']} episodes; {run.info['n_episodes']} written "
                "(the md5 sample at a smaller N); materialize again to go on from the checkpoint"
            )
        elif run.checkpoint is not None:
            done_checkpoints.append(run.checkpoint)
        meta["methods"].append(method)
        meta[f"{method}.quantity_model"] = "adapter" if qpath else "base"
        meta |= {f"{method}.{k}": v for k, v in run.info.items()}
    if meta["complete"]:
        for store in done_checkpoints:
            store.clear()
    with duckdb.get_connection() as conn:
        rows = conn.execute("select count(*) from retail_decisions").fetchall()[0][0]
        meta |= {"dagster/row_count": int(rows)}
        meta |= log_asset_run(mlflow, context, conn, meta, params=config.model_dump())
    return dg.MaterializeResult(metadata=meta)


class EvalReportConfig(dg.Config):
    methods: list[str] = []  # LLM methods of retail_decisions to report; empty = every method present


@dg.asset(
    group_name="simulation",
    kinds={"python", "duckdb", "mlflow"},
    deps=["retail_decisions", "baseline_report"],
)
def eval_report(
    context: dg.AssetExecutionContext,
    config: EvalReportConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Metrics (docs/evaluation-protocol.md) of the LLM methods of retail_decisions per split, the calibrated hybrids of the
    primary (a * u_llm + b * s_clogit fitted on its val episodes, and the same on lgbm's score: does the LLM
    add to the best classic model?) and sample mode's stability, beside the
    baselines' predictions recomputed on the same episodes (main sample, and the smaller variants sample
    when retail_decisions decided variants):
    table eval_metrics, markdown, hit@1 plot, MLflow; source_run.<method> names the retail_decisions run
    each method's rows come from."""
    out_dir = data_dir() / "simulation" / context.run.run_id
    with duckdb.get_connection() as conn:
        metrics, fits, gaps = report.build_report(conn, config.methods or None, log=context.log.info)
        report.write_report(conn, metrics, gaps)
        plot = report.plot_hit1(metrics, out_dir / "eval_hit1.png")
        csv = out_dir / "eval_metrics.csv"
        metrics.write_csv(csv)
        gaps_csv = out_dir / "eval_vs_best_classic.csv"
        gaps.write_csv(gaps_csv)
        md = report.report_markdown(metrics, fits, gaps)
        context.log.info("eval_report:\n" + md)
        meta = {
            **table_metadata(metrics),
            "metrics": dg.MetadataValue.md(md),
            "plot_path": dg.MetadataValue.path(str(plot)),
            **{f"plot_{k}": v for k, v in artifact_metadata(plot).items() if k != "path"},
            **report.headline_metrics(metrics.filter(pl.col("sample") == "main")),
            **{
                f"variants/{k}": v
                for k, v in report.headline_metrics(metrics.filter(pl.col("sample") == "variants")).items()
            },
            **{k: v for fit in fits for k, v in fit.as_metadata().items()},
            # the protocol's bar: the paired difference against each split's best classic (chosen on val)
            **{
                f"vs_best_classic/{r['method']}/{r['split']}": dg.MetadataValue.float(r["diff"])
                for r in gaps.iter_rows(named=True)
            },
            # lineage: the retail_decisions run behind each LLM row (its metadata names model and adapter)
            **{
                f"source_run.{method}": dg.MetadataValue.text(runs)
                for method, runs in report.decision_sources(conn).items()
            },
        }
        meta |= log_asset_run(
            mlflow, context, conn, meta, params=config.model_dump(), artifacts=[plot, csv, gaps_csv]
        )
    return dg.MaterializeResult(metadata=meta)


SIMULATION_ASSETS = [retail_decisions, eval_report]

__all__ = [
    "SIMULATION_ASSETS",
    "RetailDecisionsConfig",
    "EvalReportConfig",
    "retail_decisions",
    "eval_report",
]
