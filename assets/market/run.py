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

A run is keyed by (engine, population, weighting, calibrated, mean_field):
- population 'all': the simulated period's customers (settings.customers / customer_ids), weighting 'none';
- population 'sample' (settings.sample_customers > 0): a seeded sample of those customers (a subset of them,
  the same md5 order) for the sample engines (the LLM's, whose cost is per occasion), each run twice, its
  units counted N / n times ('scaled') and with the raked weights (reweight.py: segment and per-category
  occasion margins of the population; 'raked'). The weights count in the mean field's state too, and the
  history's background leaves out every population occasion (the weighted sample stands for them). Both are
  scored against the population's actual units, and vs_population_jsd compares each with the same engine's
  population run when there is one (the reweighting's error before and after).
- calibrated: the engine's calibration f (calibrate.py: temperature and OTHER shift on the probabilities,
  isotonic quantity), fitted on the val market, applied (settings.calibrate); the calibration table gives
  nll, ECE and quantity MAE before and after on the simulated period's occasions (without the mean field).
- stability (settings.stability_seeds > 0): sample mode over that many seeds, with and without the mean
  field, for settings.stability_engines on the population (stability.py): share_cv_cw and top-1 agreement.

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
from typing import Any

import polars as pl

from assets.market import calibrate, meanfield, metrics, reweight, stability
from assets.market.classic import (
    PersistenceEngine,
    _market_tables_set_aside,
    fit_classic_engines,
    load_history,
    load_market_actuals,
    load_market_frame,
)
from assets.market.engine import ChoiceEngine
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions, market_summary
from resources.sql import load_sql

# sample runs with the mean field: every one ('all'), the uncalibrated raked run only ('raked': on a CPU each
# mean-field pass of an LLM engine re-scores nearly every prompt, because the sample's weights move pop_28d),
# or none
SAMPLE_MEAN_FIELD = ("all", "raked", "none")
HISTORY_DAYS = 28  # the protocol's window (best sellers, pop_28d, persistence): not a knob
TABLES = ("market_metrics", "market_units", "market_residuals", "market_calibration", "market_stability")
RUN_KEYS = {
    "engine": pl.Utf8,
    "population": pl.Utf8,  # 'all' or 'sample'
    "weighting": pl.Utf8,  # 'none' (population), 'scaled' (N / n) or 'raked' (sample)
    "calibrated": pl.Boolean,
    "mean_field": pl.Boolean,
}
METRICS_SCHEMA = {
    **RUN_KEYS,
    "share_jsd_cw": pl.Float64,
    "units_wape_pw": pl.Float64,
    "vs_population_jsd": pl.Float64,  # sample runs: share_jsd_cw against the same engine's population run
    "coverage": pl.Float64,
    "n_occasions": pl.Int64,
    "n_customers": pl.Int64,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
    "iterations": pl.Int64,
    "converged": pl.Boolean,
    "final_residual": pl.Float64,
    "seconds": pl.Float64,
}
UNITS_SCHEMA = {
    **RUN_KEYS,
    "category": pl.Utf8,
    "week": pl.Utf8,
    "product_id": pl.Utf8,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
}
CELLS_SCHEMA = {
    **RUN_KEYS,
    "category": pl.Utf8,
    "week": pl.Utf8,
    "sim_units": pl.Float64,
    "actual_units": pl.Float64,
    "jsd": pl.Float64,
}
RESIDUALS_SCHEMA = {
    **RUN_KEYS,
    "iteration": pl.Int64,
    "residual": pl.Float64,
    "residual_purchases": pl.Float64,
    "seconds": pl.Float64,
}
CALIBRATION_SCHEMA = {"population": pl.Utf8, **calibrate.REPORT_SCHEMA}
STABILITY_SCHEMA = {"engine": pl.Utf8, **stability.SUMMARY_SCHEMA}


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
    calibrate: bool  # also run each engine calibrated (f fitted on val) and report before / after
    sample_customers: int  # > 0: a seeded sample of N of the customers for the sample engines, raked
    sample_engines: list[str]  # names of ENGINES run on the sample (scaled and raked)
    sample_mean_field: str  # SAMPLE_MEAN_FIELD: which sample runs also run with the mean field
    stability_seeds: int  # > 0: sample mode over seeds 0..N-1 for the stability engines
    stability_engines: list[str]  # names among `engines` (population runs)
    use_adapter: bool  # llm / hybrid: the newest adapter (read by the asset's llm_engine provider)
    llm_val_occasions: int  # llm / hybrid: val market occasions scored to fit OTHER and the hybrid (0 = all)
    augment_token_budget: int  # llm_aug / hybrid_aug: mean tokens per scored prompt (0 = every field kept)
    llm_max_iter: int  # > 0: mean-field passes at most for the LLM engines (each pass re-scores); 0 = max_iter
    llm_signals: str  # llm.LLM_SIGNALS: what the LLM engines read inside the mean field
    # () -> (Engine, info) of the language model for the llm and hybrid engines (market_llm_engine's), or None
    llm_engine: Callable[[], tuple[Any, dict[str, Any]]] | None = field(
        default=None, compare=False, repr=False
    )

    def sample_filters(self) -> dict[str, Any]:
        """build_market_occasions' filters of the customer sample: the population's, N customers."""
        return self.occasion_filters() | {"customers": self.sample_customers}

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
    """llm and hybrid, and llm_aug and hybrid_aug (the same with input augmentation, augment.py: imputed
    demographics, the shelf's trend and the season, and with settings.augment_token_budget > 0 the fields kept
    by attention control) from one language model; the two families share the warehouse's score cache."""
    from assets.market.augment import AugmentSettings
    from assets.market.llm import fit_llm_engines

    if settings.llm_engine is None:
        raise ValueError(
            f"engines {list(names)} need a language model: run them through the market_simulation or whatif "
            "asset (its llm resource), or give MarketSettings.llm_engine"
        )
    engine, info = settings.llm_engine()
    out: dict[str, ChoiceEngine] = {}
    for suffix, augment in (
        ("", None),
        ("_aug", AugmentSettings(token_budget=settings.augment_token_budget)),
    ):
        wanted = [n for n in names if n in (f"llm{suffix}", f"hybrid{suffix}")]
        if not wanted:
            continue
        fitted = fit_llm_engines(
            conn, engine, base=LLM_BASE, seed=settings.seed, classic=built.get(LLM_BASE),
            val_occasions_limit=settings.llm_val_occasions, m_options=settings.m_options,
            history_days=HISTORY_DAYS, log=log, model_info=info, augment=augment, name=f"llm{suffix}",
        )  # fmt: skip
        for engine in fitted.values():
            engine.llm_signals = settings.llm_signals
        out |= {n: fitted[n.replace(suffix, "")] for n in wanted}
    return out


LLM_BASE = "clogit"  # the hybrid's classic half and the source of OTHER's quantities for the LLM
ENGINES: dict[str, EngineSpec] = {
    "clogit": EngineSpec(_classic),
    "clogit6": EngineSpec(_classic),
    "lgbm": EngineSpec(_classic),
    "persistence": EngineSpec(_persistence, mean_field=False),
    "llm": EngineSpec(_llm, needs=(LLM_BASE,)),
    "hybrid": EngineSpec(_llm, needs=(LLM_BASE,)),
    "llm_aug": EngineSpec(_llm, needs=(LLM_BASE,)),
    "hybrid_aug": EngineSpec(_llm, needs=(LLM_BASE,)),
}
LLM_ENGINES = ("llm", "hybrid", "llm_aug", "hybrid_aug")


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

    metrics: pl.DataFrame  # METRICS_SCHEMA: one row per run (RUN_KEYS)
    cells: pl.DataFrame  # CELLS_SCHEMA: per run and (category, week): units and the JSD
    units: pl.DataFrame  # UNITS_SCHEMA: per run and (category, week, product or other)
    residuals: pl.DataFrame  # RESIDUALS_SCHEMA: per mean-field run and iteration
    calibration: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CALIBRATION_SCHEMA))
    stability: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=STABILITY_SCHEMA))
    results: dict[str, meanfield.MeanFieldResult] = field(default_factory=dict)  # mean-field runs (no frames)
    summary: dict[str, Any] = field(default_factory=dict)  # market_summary of the period's occasions
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    engine_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # the LLM's cache counts per engine
    fitted: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # JSON-safe: calibration/<engine>, reweighting
    stability_results: dict[str, stability.StabilityResult] = field(default_factory=dict)  # per engine


@dataclass
class _Market:
    """One simulated market: its options, occasions, history and what its runs are scored against."""

    frame: pl.DataFrame  # load_market_frame
    occasions: pl.DataFrame  # market_occasions
    history: meanfield.MarketHistory
    act_units: pl.DataFrame  # the population's actual units per cell (metrics.actual_units)
    coverage: float | None
    population: str = "all"
    weights: dict[str, pl.DataFrame | None] = field(default_factory=lambda: {"none": None})

    @property
    def occ_cw(self) -> pl.DataFrame:
        return self.occasions.select("occasion_id", "category", week="iso_week")


@dataclass
class _Collect:
    """The rows of every run, as they come."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    cells: list[pl.DataFrame] = field(default_factory=list)
    units: list[pl.DataFrame] = field(default_factory=list)
    residuals: list[pl.DataFrame] = field(default_factory=list)
    sim: dict[tuple, pl.DataFrame] = field(default_factory=dict)  # (engine, calibrated, mean_field) -> units
    decisions: dict[tuple, pl.DataFrame] = field(
        default_factory=dict
    )  # (engine, population) -> no-MF decisions
    results: dict[str, meanfield.MeanFieldResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    conn: Any = None  # the warehouse: engines with a persistent cache save it after every run


def _sim_units(decisions: pl.DataFrame, market: _Market, weights: pl.DataFrame | None) -> pl.DataFrame:
    sim = decisions.join(market.occ_cw, on="occasion_id")
    return metrics.simulated_units(sim) if weights is None else reweight.weighted_units(sim, weights)


def _run_one(
    name: str, engine: ChoiceEngine, cal: bool, mf: bool, weighting: str, market: _Market,
    settings: MarketSettings, out: _Collect, log,
) -> None:  # fmt: skip
    """One run: the mean field (or one pass) on the market with the weighting's weights, scored."""
    weights = market.weights[weighting]
    t = time.perf_counter()
    cap = settings.llm_max_iter if name in LLM_ENGINES and settings.llm_max_iter > 0 else settings.max_iter
    res = meanfield.run_mean_field(
        engine, market.frame, market.occasions, market.history, alpha=settings.alpha, epsilon=settings.epsilon,
        max_iter=cap, own_history=settings.own_history, mean_field=mf, weights=weights,
        log=lambda s: log(f"{name}: {s}"),
    )  # fmt: skip
    seconds = time.perf_counter() - t
    if out.conn is not None:  # a stopped run keeps its scores
        save_engines(out.conn, {name: engine})
    sim = _sim_units(res.decisions, market, weights)
    jsd, per = metrics.share_jsd_cw(sim, market.act_units)
    wape = metrics.units_wape_pw(sim, market.act_units)
    keys = metrics.CELL
    units = sim.rename({"units": "sim_units"}).join(
        market.act_units.rename({"units": "actual_units"}), on=keys, how="full", coalesce=True
    )
    units = units.with_columns(pl.col("sim_units", "actual_units").fill_null(0.0)).sort(keys)
    vs_pop = None
    if market.population == "all":
        out.sim[(name, cal, mf)] = sim
        if not mf:
            out.decisions[(name, cal)] = res.decisions
    elif (name, cal, mf) in out.sim:
        vs_pop, _ = metrics.share_jsd_cw(sim, out.sim[(name, cal, mf)])
    key = {"engine": name, "population": market.population, "weighting": weighting, "calibrated": cal}
    key["mean_field"] = mf
    out.rows.append(
        key
        | {
            "share_jsd_cw": jsd,
            "units_wape_pw": wape,
            "vs_population_jsd": vs_pop,
            "coverage": market.coverage,
            "n_occasions": market.occasions.height,
            "n_customers": market.occasions["customer_id"].n_unique(),
            "sim_units": float(units["sim_units"].sum()),
            "actual_units": float(units["actual_units"].sum()),
            "iterations": res.iterations,
            "converged": res.converged if mf else None,
            "final_residual": res.residuals[-1] if res.residuals else None,
            "seconds": seconds,
        }
    )
    lits = {k: pl.lit(v) for k, v in key.items()}
    out.cells.append(per.with_columns(**lits))
    out.units.append(units.with_columns(**lits))
    label = run_label(key)
    out.timings[f"run:{label}"] = seconds
    if mf:
        out.results[label] = replace(res, decisions=pl.DataFrame(), state=pl.DataFrame())
        out.residuals.append(
            pl.DataFrame(
                {
                    "iteration": range(1, res.iterations + 1),
                    "residual": res.residuals,
                    "residual_purchases": res.residuals_purchases,
                    "seconds": res.seconds,
                }
            ).with_columns(**lits)
        )
    log(
        f"{label}: share_jsd_cw {jsd:.4f}, units_wape_pw {wape:.4f}, {res.iterations} iterations, {seconds:.1f} s"
    )


def _sample_mf(which: str, weighting: str, calibrated: bool) -> bool:
    """Whether a sample run of this weighting and calibration also runs with the mean field (SAMPLE_MEAN_FIELD)."""
    return which == "all" or (which == "raked" and weighting == "raked" and not calibrated)


def run_label(key: dict[str, Any]) -> str:
    """A run's name: engine[+cal][ sample raked|scaled][ + mean field]."""
    s = key["engine"] + ("+cal" if key["calibrated"] else "")
    if key["population"] != "all":
        s += f" {key['population']} {key['weighting']}"
    return s + (" + mean field" if key["mean_field"] else "")


def _variants(name: str, engine: ChoiceEngine, cals: dict[str, calibrate.Calibration]):
    yield False, engine
    if name in cals:
        yield True, calibrate.CalibratedEngine(engine, cals[name])


def fit_calibrations(conn, engines: dict[str, ChoiceEngine], settings: MarketSettings, log) -> dict:
    """name -> Calibration of each engine with a mean field (persistence is a control and stays as it is),
    fitted on the val market; the LLM engines on settings.llm_val_occasions of its occasions."""
    todo = {n: e for n, e in engines.items() if ENGINES[n].mean_field}
    if not todo:
        return {}
    frame, actuals = calibrate.load_val_market(conn, settings.m_options, seed=settings.seed)
    return {
        n: calibrate.fit_calibration_frames(
            e,
            frame,
            actuals,
            seed=settings.seed,
            log=log,
            max_occasions=settings.llm_val_occasions if n in LLM_ENGINES else 0,
        )  # fmt: skip
        for n, e in todo.items()
    }


def _population_market(conn, settings: MarketSettings) -> _Market:
    occasions = conn.sql("select * from market_occasions").pl()
    frame = load_market_frame(conn)
    options = frame.filter(pl.col("product_id") != OTHER).select("occasion_id", "product_id")
    act_units = metrics.actual_units(load_market_actuals(conn), options)
    _, history = meanfield.observed_state(conn, occasions, HISTORY_DAYS)
    return _Market(frame, occasions, history, act_units, metrics.coverage(act_units))


def _sample_market(conn, settings: MarketSettings, pop: _Market, log) -> tuple[_Market, reweight.Reweighting]:
    """The customer sample's market (built with the population's tables set aside and restored), its raked
    and N / n weights, and the population's history with the sample's heads only (module docstring)."""
    if settings.customer_ids:
        raise ValueError("sample_customers needs the population as a filter (customers), not customer_ids")
    with _market_tables_set_aside(conn):
        build_market_occasions(conn, m_options=settings.m_options, seed=settings.seed,
                               history_days=HISTORY_DAYS, **settings.sample_filters())  # fmt: skip
        occasions = conn.sql("select * from market_occasions").pl()
        frame = load_market_frame(conn)
        occ_s, cust_s = reweight.sample_frames(conn)
        customers = reweight.load_customers(conn)
    missing = occasions.join(pop.occasions, on="occasion_id", how="anti")
    if missing.height:
        raise ValueError(
            f"{missing.height} sample occasions are not the population's (is the sample a subset?)"
        )
    margins = reweight.margins_from_frames(pop.occasions.select("customer_id", "category"), customers)
    rw = reweight.rake_customers(cust_s, occ_s, margins)
    n_pop, n = pop.occasions["customer_id"].n_unique(), occasions["customer_id"].n_unique()
    scaled = occasions.select("occasion_id", weight=pl.lit(n_pop / n, dtype=pl.Float64))
    heads = pop.history.heads.join(occasions.select("occasion_id"), on="occasion_id", how="semi")
    log(
        f"market sample: {n} of {n_pop} customers, {occasions.height} of {pop.occasions.height} occasions; "
        f"raked weights {rw.weights['weight'].min():.2f}..{rw.weights['weight'].max():.2f} (N / n "
        f"{n_pop / n:.2f}), margin error {rw.info.get('max_rel_error', float('nan')):.2e}"
    )
    market = _Market(
        frame, occasions, replace(pop.history, heads=heads), pop.act_units, pop.coverage, population="sample",
        weights={"scaled": scaled, "raked": rw.occasion_weights(occasions)},
    )  # fmt: skip
    return market, rw


def simulate_market(conn, settings: MarketSettings, log=print) -> MarketRun:
    """The market simulation of settings.period (module docstring); writes market_occasions and market_options
    (build_market_occasions: the population's), not the result tables (write_market_tables)."""
    names = check_engine_names(settings.engines)  # before any work
    sample_names = check_engine_names(settings.sample_engines) if settings.sample_customers > 0 else []
    if settings.sample_mean_field not in SAMPLE_MEAN_FIELD:
        raise ValueError(
            f"sample_mean_field {settings.sample_mean_field!r}: use one of {', '.join(SAMPLE_MEAN_FIELD)}"
        )
    from assets.market.llm import check_llm_signals

    check_llm_signals(settings.llm_signals)  # before any work
    stab = [n for n in settings.stability_engines if settings.stability_seeds > 0]
    if set(stab) - set(names):
        raise ValueError(f"stability_engines {sorted(set(stab) - set(names))} are not among engines {names}")
    t = time.perf_counter()
    build_market_occasions(
        conn, m_options=settings.m_options, seed=settings.seed, history_days=HISTORY_DAYS,
        **settings.occasion_filters(),
    )  # fmt: skip
    if conn.execute("select count(*) from market_occasions").fetchone()[0] == 0:
        raise ValueError(f"no occasions in period {settings.period!r} with these filters")
    summary = market_summary(conn)
    timings = {"occasions": time.perf_counter() - t}
    log(
        f"market: {summary['occasions']} occasions, {summary['option_rows']} options, "
        f"{summary['categories']} categories, {summary['weeks']} weeks, coverage {summary['coverage']:.3f}, "
        f"{timings['occasions']:.1f} s"
    )
    t = time.perf_counter()
    engines = build_engines(conn, list(dict.fromkeys([*names, *sample_names])), settings, log)
    timings["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    cals = fit_calibrations(conn, engines, settings, log) if settings.calibrate else {}
    timings["calibration_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    pop = _population_market(conn, settings)
    timings["observed_state"] = time.perf_counter() - t
    out = _Collect(timings=timings, conn=conn)
    for name in (n for n in names if n in engines):
        for cal, engine in _variants(name, engines[name], cals):
            for mf in (False, True) if ENGINES[name].mean_field else (False,):
                _run_one(name, engine, cal, mf, "none", pop, settings, out, log)
    calib = []
    if cals:
        actuals = load_market_actuals(conn)
        for name in (n for n in names if n in cals):
            rep = calibrate.calibration_report(
                engines[name], calibrate.CalibratedEngine(engines[name], cals[name]), pop.frame, actuals,
                decisions=out.decisions.get((name, False)),
            )  # fmt: skip
            calib.append(rep.with_columns(engine=pl.lit(name), population=pl.lit("all")))
    fitted: dict[str, dict[str, Any]] = {f"calibration/{n}": c.to_dict() for n, c in cals.items()}
    if sample_names:
        t = time.perf_counter()
        sample, rw = _sample_market(conn, settings, pop, log)
        fitted["reweighting"] = rw.to_dict()
        out.timings["sample_market"] = time.perf_counter() - t
        for name in (n for n in sample_names if n in engines):
            for cal, engine in _variants(name, engines[name], cals):
                for weighting in ("scaled", "raked"):
                    for mf in (False, True) if ENGINES[name].mean_field else (False,):
                        if mf and not _sample_mf(settings.sample_mean_field, weighting, cal):
                            continue
                        _run_one(name, engine, cal, mf, weighting, sample, settings, out, log)
    stab_rows, stab_results = [], {}
    for name in (n for n in stab if n in engines):
        t = time.perf_counter()
        res = stability.run_stability(
            engines[name], pop.frame, pop.occasions, pop.history, seeds=range(settings.stability_seeds),
            alpha=settings.alpha, epsilon=settings.epsilon, max_iter=settings.max_iter,
            own_history=settings.own_history, log=lambda s, n=name: log(f"{n}: {s}"),
        )  # fmt: skip
        stab_rows.append(res.summary.with_columns(engine=pl.lit(name)))
        stab_results[name] = res
        out.timings[f"stability:{name}"] = time.perf_counter() - t
    save_engines(conn, engines)
    return MarketRun(
        metrics=pl.DataFrame(out.rows, schema=METRICS_SCHEMA),
        cells=_stack(out.cells, CELLS_SCHEMA),
        units=_stack(out.units, UNITS_SCHEMA),
        residuals=_stack(out.residuals, RESIDUALS_SCHEMA),
        calibration=_stack(calib, CALIBRATION_SCHEMA),
        stability=_stack(stab_rows, STABILITY_SCHEMA),
        results=out.results,
        summary=summary,
        timings=out.timings,
        engine_stats={n: e.stats() for n, e in engines.items() if callable(getattr(e, "stats", None))},
        fitted=fitted,
        stability_results=stab_results,
    )


def _stack(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The frames in `schema`'s column order and types (an empty frame of that schema when none)."""
    cast = [f.select(pl.col(c).cast(t) for c, t in schema.items()) for f in frames]
    return pl.concat(cast) if cast else pl.DataFrame(schema=schema)


def write_market_tables(conn, run: MarketRun) -> None:
    """Replace the TABLES (sql/market/<table>.sql) with the run's frames."""
    frames = (run.metrics, run.units, run.residuals, run.calibration, run.stability)
    for table, frame in zip(TABLES, frames, strict=True):
        conn.register(f"staged_{table}", frame.to_arrow())
        try:
            conn.execute(load_sql(f"market/{table}"))
        finally:
            conn.unregister(f"staged_{table}")
