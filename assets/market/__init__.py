"""The market over time (issue: the market simulation): occasions of a period replayed as a population, each
deciding among a consideration set plus an outside option "other", scored at the market level
(docs/evaluation-protocol.md, "Market-level evaluation"). The asset market_simulation runs it.

Modules (plain functions, no dagster import; this file holds the thin asset only):
- occasions.py: the occasions of a period and their consideration sets with option features;
- engine.py: the one decision interface (ChoiceEngine.decide) every engine answers;
- classic.py: the classic engines (clogit, clogit6, lgbm) and persistence;
- meanfield.py: the mean field (the market's signals recomputed from the simulated state, to a fixed point);
- metrics.py: the market-level metrics (share_jsd_cw, units_wape_pw, coverage, persistence, residuals,
  share_cv_cw, expected calibration error, elasticities and diversion ratios);
- calibrate.py: calibration f (temperature and OTHER shift of the probabilities, isotonic quantity);
- reweight.py: raking a customer sample to the population's segment and category margins;
- stability.py: sample mode over seeds (share_cv_cw, top-1 agreement);
- llm.py: the aligned LLM and its hybrid as engines (prompt cache in market_llm_cache);
- run.py: the engine registry (ENGINES, build_engines), simulate_market and the result tables;
- report.py: the markdown, metadata values and plots of a run;
- scenario.py, counterfactual.py: what-if scenarios (a scenario YAML) through the market simulation.
"""

import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, log_asset_run, table_metadata
from assets.market import counterfactual as wi
from assets.market import report, run
from resources.llm import LLMResource
from resources.mlflow import MlflowResource
from resources.paths import data_dir


def llm_engine_provider(llm: LLMResource, conn, use_adapter: bool, log=print):
    """() -> (Engine, model info) for the llm and hybrid engines: the newest adapter of lora_adapters when
    use_adapter and it fits the resource's model (as retail_decisions chooses it), else the model zero-shot.
    The adapter is chosen now; the model loads only when an LLM engine is built."""
    from assets.simulation import plan

    adapter, reason = plan.choose_adapter(plan.latest_adapter(conn), llm.model, use_adapter)

    def provide():
        res = llm.with_adapter(adapter)
        log(f"market: language model {res.model}, adapter {adapter or 'none'} ({reason})")
        return res.get_engine(), {**res.model_info(), "adapter_reason": reason}

    return provide


class MarketSimulationConfig(dg.Config):
    period: str = "test"  # the simulated period: 'train', 'val' or 'test' (episode_splits)
    categories: int = 5  # the N categories with the most actual units in the period; 0 = all
    category_ids: list[str] = []  # exactly these categories instead (overrides `categories` when non-empty)
    weeks: int = 8  # the period's first N ISO weeks (the test period is 8 weeks); 0 = all
    customers: int = 0  # a seeded sample of N customers (md5 of seed|customer_id); 0 = all
    customer_ids: list[str] = []  # exactly these customers instead (overrides `customers` when non-empty)
    m_options: int = 20  # M: own products, then the 28-day best sellers, up to M per occasion (protocol)
    # names of run.ENGINES; each runs with and without the mean field (persistence, the control: once)
    engines: list[str] = ["clogit", "clogit6", "lgbm", "persistence"]
    # Mean field. Every signal of day d reads days < d only (causal in time), so the undamped iteration is
    # exact after at most D + 1 passes (D = the occasion days: 56 in an 8-week period, hence max_iter 60);
    # damping only slows it (alpha 0.5 needs more than twice as many passes: meanfield.py's docstring).
    alpha: float = 1.0  # m_k+1 = (1 - alpha) m_k + alpha F(m_k); 1 = undamped
    epsilon: float = 1e-3  # converged when the residual (units and purchases) is below this
    max_iter: int = 60  # passes at most (D + 1 = 57 for 8 weeks)
    own_history: bool = False  # also recompute the customer's own-history columns (signals about 8x slower)
    seed: int = 0  # the customer sample's seed and the baseline models' seed (as baseline_report's)
    use_adapter: bool = True  # llm / hybrid: the newest lora_adapters adapter; zero-shot when off or none
    # llm / hybrid: the val market occasions scored to fit OTHER's constants and the hybrid's weights, the
    # smallest md5(seed|occasion_id) first (0 = all); their scores stay in market_llm_cache for the next fit
    llm_val_occasions: int = 2000
    # llm_aug / hybrid_aug (input augmentation: imputed demographics, trend, season): the token budget of a
    # scored prompt under which attention control keeps the most influential fields; 0 = keep every field
    augment_token_budget: int = 0
    calibrate: bool = True  # also run each engine with its calibration f (fitted on val): table before/after
    # a seeded sample of N of the customers (a subset of `customers`' sample) on which sample_engines run,
    # their units counted N_pop / n times ('scaled') and with raked weights ('raked'); 0 = no sample run
    sample_customers: int = 0
    sample_engines: list[str] = ["llm", "hybrid", "clogit", "lgbm"]
    # which sample runs also run with the mean field: 'raked' (the uncalibrated raked run only), 'all', 'none'
    sample_mean_field: str = "raked"
    # > 0: mean-field passes at most for the LLM engines (on a CPU each pass re-scores nearly every prompt)
    llm_max_iter: int = 0
    # the LLM engines in the mean field: 'mean_field' (they read its signals: re-scored at every pass) or
    # 'observed' (scored once on the observed signals; the hybrid's mean field moves its classic half only)
    llm_signals: str = "mean_field"
    stability_seeds: int = 0  # > 0: sample mode over seeds 0..N-1, with and without the mean field
    stability_engines: list[str] = ["clogit"]  # names among `engines`


@dg.asset(
    group_name="market",
    kinds={"duckdb", "python", "mlflow"},
    deps=["option_features", "episode_splits", "baseline_report", "lora_adapter"],
)
def market_simulation(
    context: dg.AssetExecutionContext,
    config: MarketSimulationConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """The market simulation of a period (docs/evaluation-protocol.md "Market-level evaluation"): occasions and
    consideration sets (tables market_occasions, market_options), each engine run with and without the mean
    field, calibrated or not, and scored on share_jsd_cw / units_wape_pw against the actual units next to
    persistence (tables market_metrics, market_units, market_residuals); the LLM engines on a raked customer
    sample; calibration before/after (market_calibration) and stability over seeds (market_stability); plots,
    the fitted calibrations and raking weights as JSON, and an MLflow run."""
    cfg = config.model_dump()
    out_dir = data_dir() / "market" / context.run.run_id
    with duckdb.get_connection() as conn:
        provider = llm_engine_provider(llm, conn, config.use_adapter, log=context.log.info)
        settings = run.MarketSettings(**cfg, llm_engine=provider)
        result = run.simulate_market(conn, settings, log=context.log.info)
        run.write_market_tables(conn, result)
        plots = report.plot_report(result, out_dir)
        tables = {"metrics": result.metrics, "cells": result.cells, "calibration": result.calibration}
        csvs = [out_dir / f"market_{k}.csv" for k in (*tables, "stability")]
        for path, frame in zip(csvs, (*tables.values(), result.stability), strict=True):
            frame.write_csv(path)
        fitted = out_dir / "market_fitted.json"  # the calibrations and the raking weights, to load again
        fitted.write_text(json.dumps(result.fitted, indent=1, sort_keys=True))
        md = report.report_markdown(result)
        context.log.info("market_simulation:\n" + md)
        meta = {
            **table_metadata(result.metrics),
            "metrics": dg.MetadataValue.md(md),
            **{k: dg.MetadataValue.path(str(p)) for k, p in plots.items()},
            **{f"plot_{k}": v for k, v in artifact_metadata(plots["plot"]).items() if k != "path"},
            **report.headline_metrics(result.metrics),
            **report.table_headlines(result),
            "occasions": result.summary["occasions"],
            "coverage": float(result.summary["coverage"]),
            **{f"seconds/{k}": float(v) for k, v in result.timings.items() if not k.startswith("run:")},
            **{f"llm_cache/{n}/{k}": v for n, st in result.engine_stats.items() for k, v in st.items()},
        }
        if result.results:  # docs/conventions.md section 7, for the engine of the residual plot
            name, res = next(iter(result.results.items()))
            meta |= {"residual_run": dg.MetadataValue.text(name), "iterations": res.iterations}
            meta |= {
                "converged": res.converged,
                "final_residual": float((res.residuals or [float("nan")])[-1]),
            }
        meta |= log_asset_run(
            mlflow,
            context,
            conn,
            meta,
            params=config.model_dump(),
            artifacts=[*plots.values(), *csvs, fitted],
        )
    return dg.MaterializeResult(metadata=meta)


class WhatIfConfig(dg.Config):
    # the scenario YAML (scenarios/README.md); "" = none: the asset is skipped (`malles run` names the example
    # scenario of a built-in source, pipelines/profiles.py SOURCE_SCENARIOS)
    scenario: str = ""
    # a name of run.ENGINES: 'hybrid' (the aligned LLM with clogit, the default), 'llm', or a classic control
    # ('clogit', 'clogit6', 'lgbm': the fast path)
    engine: str = "hybrid"
    period: str = "test"  # the simulated period: 'train', 'val' or 'test'
    category_ids: list[str] = []  # these categories; empty = the scenario's affected categories
    weeks: int = 8  # the period's first N ISO weeks; 0 = all
    customers: int = 0  # a seeded sample of N customers (md5 of seed|customer_id); 0 = all
    m_options: int = 20  # M: own products, then the 28-day best sellers, up to M per occasion
    alpha: float = 1.0  # mean-field damping (1 = undamped: exact after D + 1 passes)
    epsilon: float = 1e-3  # mean-field convergence threshold on the residual
    max_iter: int = 60  # mean-field passes at most
    own_history: bool = False  # also recompute the customer's own-history columns
    bootstrap: int = 200  # B bootstrap replicates over customers for the intervals (0 = none)
    top_k: int = 10  # the elasticity matrix's products: the category's top K by baseline units (0 = none)
    elasticity_categories: int = 1  # the first N affected categories get an elasticity matrix
    seed: int = 0  # the customer sample, the baseline fit and the bootstrap's seed
    use_adapter: bool = True  # llm / hybrid: the newest lora_adapters adapter; zero-shot when off or none
    # llm / hybrid: the val market occasions scored to fit OTHER's constants and the hybrid's weights, the
    # smallest md5(seed|occasion_id) first (0 = all); their scores stay in market_llm_cache for the next fit
    llm_val_occasions: int = 2000
    augment_token_budget: int = 0  # llm_aug / hybrid_aug: tokens per scored prompt (0 = every field kept)
    # the LLM engines in the mean field: 'observed' (scored once per run on the observed signals, so a what-if
    # scores only the prompts its interventions change; the hybrid's mean field moves its classic half only)
    # or 'mean_field' (they read its signals: re-scored at every pass)
    llm_signals: str = "observed"


@dg.asset(
    group_name="market",
    kinds={"duckdb", "python", "mlflow"},
    deps=["option_features", "episode_splits", "baseline_report", "lora_adapter"],
)
def whatif(
    context: dg.AssetExecutionContext,
    config: WhatIfConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """A what-if scenario (scenarios/*.yaml) through the market simulation: the market with and without its
    interventions, both through the mean field; per product and category the change in units, revenue and
    share with bootstrap intervals over customers (table whatif_effects), the affected category's price
    elasticity matrix (whatif_elasticities) and the diversion ratios of its delistings (whatif_diversion),
    keyed by scenario and engine; plots and an MLflow run. Without a scenario (whatif.scenario empty; `malles
    run` names a built-in source's example) it is skipped and says so in its metadata."""
    from assets.market.scenario import load_scenario

    cfg = config.model_dump()
    if not config.scenario:
        context.log.info("whatif: no scenario given (whatif.scenario): nothing simulated")
        return dg.MaterializeResult(metadata={"skipped": dg.MetadataValue.text("no scenario given")})
    out_dir = data_dir() / "market" / "whatif" / context.run.run_id
    with duckdb.get_connection() as conn:
        settings = wi.WhatIfSettings(
            **{k: v for k, v in cfg.items() if k not in ("scenario", "category_ids", "engine")},
            engine=config.engine,
            category_ids=tuple(config.category_ids),
            llm_engine=llm_engine_provider(llm, conn, config.use_adapter, log=context.log.info),
        )
        scenario = load_scenario(config.scenario, conn)  # one line naming the fix, before any work
        result = wi.run_whatif(conn, scenario, settings, log=context.log.info)
        wi.write_whatif_tables(conn, result)
        plots = {"units_plot": wi.plot_units_change(result.effects, out_dir / "whatif_units.png")}
        heat = wi.plot_elasticities(result.elasticities, out_dir / "whatif_elasticities.png")
        plots |= {"elasticity_plot": heat} if heat else {}
        csvs = [out_dir / f"{t}.csv" for t in wi.TABLES]
        for path, frame in zip(csvs, (result.effects, result.elasticities, result.diversion), strict=True):
            frame.write_csv(path)
        md = wi.effects_markdown(result.effects)
        context.log.info(f"whatif {scenario.name} ({settings.engine}):\n{md}")
        meta = {
            **table_metadata(result.effects),
            "scenario": dg.MetadataValue.text(scenario.name),
            "engine": dg.MetadataValue.text(settings.engine),
            "effects": dg.MetadataValue.md(md),
            **{k: dg.MetadataValue.path(str(p)) for k, p in plots.items()},
            **wi.headline(result),
        }
        meta |= log_asset_run(mlflow, context, conn, meta, params=cfg, artifacts=[*plots.values(), *csvs])
    return dg.MaterializeResult(metadata=meta)


MARKET_ASSETS = [market_simulation, whatif]

__all__ = ["MARKET_ASSETS", "MarketSimulationConfig", "WhatIfConfig", "market_simulation", "whatif"]
