"""The market simulation run (docs/evaluation-protocol.md "Market-level evaluation"): build the occasions and
consideration sets of a period, fit the engines, run each engine with and without the mean field, and score
every run against the actual units, next to persistence. Plain functions, no dagster import; the asset
market_simulation (assets/market/__init__.py) wires them.

The engine registry is ENGINES, a plain dict name -> EngineSpec(build, mean_field, needs). `build(conn, names,
settings, log)` returns {name: ChoiceEngine} for every name of `names` it serves; names sharing one build
function are built by one call (the classic engines share one fit of the baseline models). A spec with
`needs` (the LLM family needs its base engine, clogit) is built after those and called with a fifth
argument, the engines built so far, so that a base asked for in the same run is fitted once. Another engine
family adds itself with register_engine(name, build). mean_field=False marks an engine that does not read the
market's signals (persistence reads the observed history only): it runs once, without the mean field.
The LLM engines (llm, hybrid) need a language model: settings.llm_engine, a callable the asset fills from its
llm resource (assets/market/__init__.py); without it they answer with a one-line error naming the fix.

Readings that needed a choice:
- A run "without mean field" is one engine pass on the options as built (the signals observed);
  iterations 0, converged and final_residual null. Persistence has only that run.
- Actual units count a product outside the set to "other" (metrics.actual_units); every run of a period shares
  them, so coverage is one figure per period.
- The OTHER constants are fitted on the whole val period's market (fit_classic_engines), whatever categories,
  weeks or customers the simulated period keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from assets.market import meanfield, metrics
from assets.market.classic import (
    PersistenceEngine,
    fit_classic_engines,
    load_history,
    load_market_actuals,
    load_market_frame,
)
from assets.market.engine import ChoiceEngine
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions, market_summary
from resources.sql import load_sql

HISTORY_DAYS = 28  # the protocol's window (best sellers, pop_28d, persistence): not a knob
TABLES = ("market_metrics", "market_units", "market_residuals")
METRICS_SCHEMA = {
    "engine": pl.Utf8,
    "mean_field": pl.Boolean,
    "share_jsd_cw": pl.Float64,
    "units_wape_pw": pl.Float64,
    "coverage": pl.Float64,
    "n_occasions": pl.Int64,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
    "iterations": pl.Int64,
    "converged": pl.Boolean,
    "final_residual": pl.Float64,
    "seconds": pl.Float64,
}
UNITS_SCHEMA = {
    "engine": pl.Utf8,
    "mean_field": pl.Boolean,
    "category": pl.Utf8,
    "week": pl.Utf8,
    "product_id": pl.Utf8,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
}
CELLS_SCHEMA = {
    "engine": pl.Utf8,
    "mean_field": pl.Boolean,
    "category": pl.Utf8,
    "week": pl.Utf8,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
    "jsd": pl.Float64,
}
RESIDUALS_SCHEMA = {
    "engine": pl.Utf8,
    "iteration": pl.Int64,
    "residual": pl.Float64,
    "residual_purchases": pl.Float64,
    "seconds": pl.Float64,
}


@dataclass(frozen=True)
class MarketSettings:
    """The knobs of one market simulation, as MarketSimulationConfig holds them (it has the defaults)."""

    period: str  # 'train', 'val' or 'test'
    categories: int  # the top-N categories by actual units; 0 = all
    category_ids: list[str]  # exactly these categories (overrides `categories` when non-empty)
    weeks: int  # the period's first N ISO weeks; 0 = all
    customers: int  # a seeded sample of N customers; 0 = all
    customer_ids: list[str]  # exactly these customers (overrides `customers` when non-empty)
    m_options: int  # M, the consideration set's size before scenario products
    engines: list[str]  # names of ENGINES
    alpha: float  # mean-field damping (1 = undamped)
    epsilon: float  # mean-field convergence threshold on the residual
    max_iter: int  # mean-field passes at most
    own_history: bool  # the mean field also recomputes the customer's own-history columns
    seed: int  # customer sample and baseline fit seed
    use_adapter: bool  # llm / hybrid: the newest adapter (read by the asset's llm_engine provider)
    llm_val_occasions: int  # llm / hybrid: val market occasions scored to fit OTHER and the hybrid (0 = all)
    # () -> (Engine, info) of the language model for the llm and hybrid engines (market_llm_engine's), or None
    llm_engine: Callable[[], tuple[Any, dict[str, Any]]] | None = field(
        default=None, compare=False, repr=False
    )

    def occasion_filters(self) -> dict[str, Any]:
        """build_market_occasions' filters: an int N, a list of ids, or None (no filter)."""
        return {
            "period": self.period,
            "categories": list(self.category_ids) or (self.categories or None),
            "weeks": self.weeks or None,
            "customers": list(self.customer_ids) or (self.customers or None),
        }


EngineBuild = Callable[[Any, Sequence[str], MarketSettings, Callable[[str], Any]], dict[str, ChoiceEngine]]


@dataclass(frozen=True)
class EngineSpec:
    build: EngineBuild  # (conn, the names it serves in this run, settings, log[, built]) -> {name: engine}
    mean_field: bool = True  # False: the engine reads no market signal; one run without the mean field
    needs: tuple[str, ...] = ()  # engines built first and passed to build as `built` (module docstring)


def _classic(conn, names, settings: MarketSettings, log) -> dict[str, ChoiceEngine]:
    return fit_classic_engines(
        conn, tuple(names), seed=settings.seed, m_options=settings.m_options,
        history_days=HISTORY_DAYS, with_persistence=False, log=log,
    )  # fmt: skip


def _persistence(conn, names, settings: MarketSettings, log) -> dict[str, ChoiceEngine]:
    return {"persistence": PersistenceEngine(load_history(conn), HISTORY_DAYS)}


def _llm(conn, names, settings: MarketSettings, log, built) -> dict[str, ChoiceEngine]:
    from assets.market.llm import fit_llm_engines

    if settings.llm_engine is None:
        raise ValueError(
            f"engines {list(names)} need a language model: run them through the market_simulation or whatif "
            "asset (its llm resource), or give MarketSettings.llm_engine"
        )
    engine, info = settings.llm_engine()
    fitted = fit_llm_engines(
        conn, engine, base=LLM_BASE, seed=settings.seed, classic=built.get(LLM_BASE),
        val_occasions_limit=settings.llm_val_occasions,
        m_options=settings.m_options, history_days=HISTORY_DAYS, log=log, model_info=info,
    )  # fmt: skip
    return {n: fitted[n] for n in names if n in fitted}


LLM_BASE = "clogit"  # the hybrid's classic half and the source of OTHER's quantities for the LLM
ENGINES: dict[str, EngineSpec] = {
    "clogit": EngineSpec(_classic),
    "clogit6": EngineSpec(_classic),
    "lgbm": EngineSpec(_classic),
    "persistence": EngineSpec(_persistence, mean_field=False),
    "llm": EngineSpec(_llm, needs=(LLM_BASE,)),
    "hybrid": EngineSpec(_llm, needs=(LLM_BASE,)),
}
LLM_ENGINES = ("llm", "hybrid")


def register_engine(
    name: str, build: EngineBuild, mean_field: bool = True, needs: tuple[str, ...] = ()
) -> None:
    """Add (or replace) an engine of the registry."""
    ENGINES[name] = EngineSpec(build, mean_field, tuple(needs))


def check_engine_names(names: Sequence[str]) -> list[str]:
    """The names without repeats, in order; a one-line ValueError for none or an unknown one."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        what = f"unknown engines {unknown}" if unknown else "no engine named"
        raise ValueError(f"{what}; known engines: {', '.join(ENGINES)}")
    return names


def build_engines(conn, names: Sequence[str], settings: MarketSettings, log=print) -> dict[str, ChoiceEngine]:
    """{name: engine} for `names` (ENGINES), in their order; one build call per build function."""
    names = check_engine_names(names)
    needed = [d for n in names for d in ENGINES[n].needs if d not in names]
    todo = [*dict.fromkeys(needed), *names]
    built: dict[str, ChoiceEngine] = {}
    for phase in (False, True):  # the specs without needs first
        for build in dict.fromkeys(ENGINES[n].build for n in todo if bool(ENGINES[n].needs) is phase):
            served = [n for n in todo if ENGINES[n].build is build]
            built |= (
                build(conn, served, settings, log, built) if phase else build(conn, served, settings, log)
            )
    missing = [n for n in names if n not in built]
    if missing:
        log(f"market: engines {missing} could not be built (nothing to fit on): left out")
    return {n: built[n] for n in names if n in built}


def save_engines(conn, engines: dict[str, ChoiceEngine]) -> None:
    """Let every engine that keeps state across runs (the LLM's utility cache) write it to the warehouse."""
    for engine in engines.values():  # an engine saved twice (hybrid and llm share a cache) appends nothing
        save = getattr(engine, "save", None)
        if callable(save):
            save(conn)


@dataclass
class MarketRun:
    """What simulate_market returns."""

    metrics: pl.DataFrame  # METRICS_SCHEMA: one row per (engine, mean_field) run
    cells: pl.DataFrame  # CELLS_SCHEMA: per run and (category, week): units and the JSD
    units: pl.DataFrame  # UNITS_SCHEMA: per run and (category, week, product or other)
    residuals: pl.DataFrame  # RESIDUALS_SCHEMA: per mean-field run and iteration
    results: dict[str, meanfield.MeanFieldResult] = field(default_factory=dict)  # mean-field runs (no frames)
    summary: dict[str, Any] = field(default_factory=dict)  # market_summary of the period's occasions
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    engine_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # the LLM's cache counts per engine


def _score(decisions: pl.DataFrame, occ_cw: pl.DataFrame, act_units: pl.DataFrame):
    """(share_jsd_cw, units_wape_pw, per-(category, week) cells, per-cell units) of one run."""
    sim = metrics.simulated_units(decisions.join(occ_cw, on="occasion_id"))
    jsd, per = metrics.share_jsd_cw(sim, act_units)
    wape = metrics.units_wape_pw(sim, act_units)
    keys = metrics.CELL
    units = sim.rename({"units": "sim_units"}).join(
        act_units.rename({"units": "actual_units"}), on=keys, how="full", coalesce=True
    )
    units = units.with_columns(pl.col("sim_units", "actual_units").fill_null(0.0)).sort(keys)
    return jsd, wape, per, units


def simulate_market(conn, settings: MarketSettings, log=print) -> MarketRun:
    """The market simulation of settings.period (module docstring); writes market_occasions and market_options
    (build_market_occasions), not the result tables (write_market_tables)."""
    names = check_engine_names(settings.engines)  # before any work
    t = time.perf_counter()
    timings = {"occasions": 0.0}
    build_market_occasions(
        conn, m_options=settings.m_options, seed=settings.seed, history_days=HISTORY_DAYS,
        **settings.occasion_filters(),
    )  # fmt: skip
    occasions = conn.sql("select * from market_occasions").pl()
    if occasions.height == 0:
        raise ValueError(f"no occasions in period {settings.period!r} with these filters")
    summary = market_summary(conn)
    timings["occasions"] = time.perf_counter() - t
    log(
        f"market: {summary['occasions']} occasions, {summary['option_rows']} options, "
        f"{summary['categories']} categories, {summary['weeks']} weeks, coverage {summary['coverage']:.3f}, "
        f"{timings['occasions']:.1f} s"
    )
    t = time.perf_counter()
    engines = build_engines(conn, names, settings, log)
    timings["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    frame = load_market_frame(conn)
    options = frame.filter(pl.col("product_id") != OTHER).select("occasion_id", "product_id")
    act_units = metrics.actual_units(load_market_actuals(conn), options)
    cover = metrics.coverage(act_units)
    occ_cw = occasions.select("occasion_id", "category", week="iso_week")
    _, history = meanfield.observed_state(conn, occasions, HISTORY_DAYS)
    timings["observed_state"] = time.perf_counter() - t
    rows, cells, units, residuals, results = [], [], [], [], {}
    for name, engine in engines.items():
        for mf in (False, True) if ENGINES[name].mean_field else (False,):
            t = time.perf_counter()
            res = meanfield.run_mean_field(
                engine, frame, occasions, history, alpha=settings.alpha, epsilon=settings.epsilon,
                max_iter=settings.max_iter, own_history=settings.own_history, mean_field=mf,
                log=lambda s, n=name: log(f"{n}: {s}"),
            )  # fmt: skip
            seconds = time.perf_counter() - t
            jsd, wape, per, cell_units = _score(res.decisions, occ_cw, act_units)
            run_keys = {"engine": pl.lit(name), "mean_field": pl.lit(mf)}
            rows.append(
                {
                    "engine": name,
                    "mean_field": mf,
                    "share_jsd_cw": jsd,
                    "units_wape_pw": wape,
                    "coverage": cover,
                    "n_occasions": occasions.height,
                    "sim_units": float(cell_units["sim_units"].sum()),
                    "actual_units": float(cell_units["actual_units"].sum()),
                    "iterations": res.iterations,
                    "converged": res.converged if mf else None,
                    "final_residual": res.residuals[-1] if res.residuals else None,
                    "seconds": seconds,
                }
            )
            cells.append(per.with_columns(**run_keys))
            units.append(cell_units.with_columns(**run_keys))
            timings[f"run:{name}:{'mf' if mf else 'none'}"] = seconds
            if mf:
                results[name] = replace(res, decisions=pl.DataFrame(), state=pl.DataFrame())
                residuals.append(
                    pl.DataFrame(
                        {
                            "engine": name,
                            "iteration": range(1, res.iterations + 1),
                            "residual": res.residuals,
                            "residual_purchases": res.residuals_purchases,
                            "seconds": res.seconds,
                        }
                    )
                )
            log(
                f"{name} ({'with' if mf else 'without'} mean field): share_jsd_cw {jsd:.4f}, units_wape_pw "
                f"{wape:.4f}, {res.iterations} iterations, {seconds:.1f} s"
            )
    save_engines(conn, engines)
    return MarketRun(
        metrics=pl.DataFrame(rows, schema=METRICS_SCHEMA),
        cells=_stack(cells, CELLS_SCHEMA),
        units=_stack(units, UNITS_SCHEMA),
        residuals=_stack(residuals, RESIDUALS_SCHEMA),
        results=results,
        summary=summary,
        timings=timings,
        engine_stats={n: e.stats() for n, e in engines.items() if callable(getattr(e, "stats", None))},
    )


def _stack(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The frames in `schema`'s column order and types (an empty frame of that schema when none)."""
    cast = [f.select(pl.col(c).cast(t) for c, t in schema.items()) for f in frames]
    return pl.concat(cast) if cast else pl.DataFrame(schema=schema)


def write_market_tables(conn, run: MarketRun) -> None:
    """Replace market_metrics, market_units and market_residuals (sql/market/<table>.sql) with the run's frames."""
    for table, frame in zip(TABLES, (run.metrics, run.units, run.residuals), strict=True):
        conn.register(f"staged_{table}", frame.to_arrow())
        try:
            conn.execute(load_sql(f"market/{table}"))
        finally:
            conn.unregister(f"staged_{table}")


# --- the report ------------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    return f"{row['engine']}{' + mean field' if row['mean_field'] else ''}"


def metrics_markdown(frame: pl.DataFrame) -> str:
    """A markdown table of the metrics, one line per run."""
    head = (
        "| run | share_jsd_cw | units_wape_pw | sim / actual units | iterations | converged | residual | s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def num(v, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for r in frame.iter_rows(named=True):
        lines.append(
            f"| {_label(r)} | {num(r['share_jsd_cw'], '.4f')} | {num(r['units_wape_pw'], '.4f')} | "
            f"{r['sim_units']:.0f} / {r['actual_units']:.0f} | {r['iterations']} | "
            f"{'' if r['converged'] is None else r['converged']} | {num(r['final_residual'], '.2e')} | "
            f"{r['seconds']:.1f} |"
        )
    if frame.height:
        r = frame.row(0, named=True)
        lines.append(f"\n{r['n_occasions']} occasions, coverage {num(r['coverage'], '.3f')}")
    return "\n".join(lines)


def headline_metrics(frame: pl.DataFrame) -> dict[str, float | int | bool]:
    """Plain values per run for the metadata: <metric>/<engine>[/mean_field]."""
    out: dict[str, float | int | bool] = {}
    for r in frame.iter_rows(named=True):
        key = r["engine"] + ("/mean_field" if r["mean_field"] else "")
        for m in ("share_jsd_cw", "units_wape_pw", "final_residual"):
            if r[m] is not None:
                out[f"{m}/{key}"] = float(r[m])
        if r["mean_field"]:
            out[f"iterations/{key}"] = int(r["iterations"])
            out[f"converged/{key}"] = bool(r["converged"])
        out[f"seconds/{key}"] = float(r["seconds"])
    return out


def plot_metrics(frame: pl.DataFrame, path: str | Path) -> Path:
    """A PNG: share_jsd_cw and units_wape_pw per engine, without and with the mean field; engines without a
    mean-field run (persistence) as a dashed line."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mf_engines = frame.filter(pl.col("mean_field"))["engine"].unique(maintain_order=True).to_list()
    lines = frame.filter(~pl.col("engine").is_in(mf_engines))
    fig = Figure(figsize=(4.0 + 1.2 * len(mf_engines), 3.6))
    for ax, metric in zip(fig.subplots(1, 2), ("share_jsd_cw", "units_wape_pw"), strict=True):
        for i, (mf, label) in enumerate(((False, "without mean field"), (True, "with mean field"))):
            vals = []
            for e in mf_engines:
                v = frame.filter((pl.col("engine") == e) & (pl.col("mean_field") == mf))[metric]
                vals.append(float("nan") if v.len() == 0 or v[0] is None else v[0])
            ax.bar([k + (i - 0.5) * 0.38 for k in range(len(mf_engines))], vals, 0.38, label=label)
        for j, r in enumerate(lines.iter_rows(named=True)):
            if r[metric] is not None:
                ax.axhline(r[metric], color=f"C{j + 2}", ls="--", lw=1.2, label=r["engine"])
        ax.set_xticks(range(len(mf_engines)), mf_engines, fontsize=8)
        ax.set_xlim(-0.8, max(len(mf_engines), 1) - 0.2)
        ax.set_title(metric + " (lower is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    return path


def plot_report(run: MarketRun, out_dir: str | Path) -> dict[str, Path]:
    """The metrics plot and the residual plot of the first engine with a mean-field run (when there is one)."""
    out_dir = Path(out_dir)
    paths = {"plot": plot_metrics(run.metrics, out_dir / "market_metrics.png")}
    if run.results:
        name, res = next(iter(run.results.items()))
        paths["residual_plot"] = meanfield.plot_residuals(res, out_dir / f"market_residuals_{name}.png")
    return paths
