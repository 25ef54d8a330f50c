"""What-if scenarios through the market simulation (docs/evaluation-protocol.md "Market-level evaluation"): the
market with and without a scenario (scenario.py), both through the mean field, per product and category, plus
the affected category's price-elasticity matrix and every delisting's diversion ratios. No dagster import.

Readings that needed a choice:
- One market: occasions and sets built once (default: the affected categories, those of the targets and new
  products; the warehouse's market tables set aside and restored), the engine fitted once; the scenario's
  options are apply_scenario(baseline options).
- The scenario's mean field knows the new products (they start new and gain popularity as they sell); a
  delisted product's observed background purchases (other customers and baskets) in its window leave the
  state and the own-product history. Background purchases keep their observed prices.
- Units = prob x expected_qty; revenue = units x the option's price (OTHER: no price, revenue 0); share =
  units / category units (OTHER included).
- Intervals: engines give expectations (no sample mode): a paired bootstrap over customers, B seeded
  multinomial draws recomputing every aggregate from both runs' per-occasion decisions (no re-simulation).
- Elasticities around the baseline: per top-K product j, the mean field with j's price x (1 -+ step)
  (apply_scenario; list price along) on the category's occasions only (no signal crosses categories),
  warm-started from the baseline's fixed point with a tighter epsilon; E[i, j] for i in the top K and OTHER.
- Diversion: per delist intervention (run alone when the scenario holds others) and category of its group G:
  (after_k - before_k) / (before_G - after_G), OTHER included, from units and from purchases; purchases are
  conserved per occasion (sum 1), units need not be (the sum is reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.market import meanfield, run
from assets.market.classic import load_market_frame
from assets.market.metrics import OTHER, own_price_elasticity
from assets.market.occasions import build_market_occasions
from assets.market.scenario import Intervention, Scenario, apply_scenario, new_products_frame
from resources.sql import load_sql
from resources.warehouse import table_exists

KEYS = ["occasion_id", "product_id"]
OCC_COLUMNS = ("customer_id", "category", "day", "week", "period")
TABLES = ("whatif_effects", "whatif_elasticities", "whatif_diversion")
S, F, N = pl.Utf8, pl.Float64, pl.Int64
EFFECTS_SCHEMA = dict(scenario=S, engine=S, level=S, category=S, product_id=S, metric=S, before=F, after=F)
EFFECTS_SCHEMA |= dict(change=F, change_pct=F, change_lo=F, change_hi=F, n_boot=N)
ELASTICITIES_SCHEMA = dict(scenario=S, engine=S, category=S, product_id=S, price_product_id=S, elasticity=F)
ELASTICITIES_SCHEMA |= dict(units_base=F, units_minus=F, units_plus=F)
DIVERSION_SCHEMA = dict(scenario=S, engine=S, delisting=N, category=S, delisted=S, product_id=S)
DIVERSION_SCHEMA |= dict(units_before=F, units_after=F, diversion=F, diversion_purchases=F)


@dataclass(frozen=True)
class WhatIfSettings:
    """The knobs of one what-if (WhatIfConfig holds the same with comments)."""

    engine: str = "hybrid"  # a name of run.ENGINES
    period: str = "test"
    category_ids: tuple[str, ...] = ()  # empty: the scenario's affected categories
    weeks: int = 8  # 0 = all
    customers: int = 0  # a seeded sample of N customers; 0 = all
    m_options: int = 20
    alpha: float = 1.0
    epsilon: float = 1e-3
    max_iter: int = 60
    own_history: bool = False
    bootstrap: int = 200  # B replicates over customers (0: no interval)
    top_k: int = 10  # products of the elasticity matrix (0: none)
    elasticity_categories: int = 1  # the first N affected categories get a matrix
    elasticity_step: float = 0.01  # the central difference's relative price step
    elasticity_epsilon: float = 1e-4  # the warm-started runs' mean-field threshold
    confidence: float = 0.95
    seed: int = 0
    use_adapter: bool = True  # llm / hybrid: the newest adapter (read by the asset's llm_engine provider)
    llm_val_occasions: int = 2000  # llm / hybrid: val market occasions scored for their fit (0 = all)
    augment_token_budget: int = 0  # llm_aug / hybrid_aug: tokens per scored prompt (0 = every field kept)
    llm_signals: str = "observed"  # llm.LLM_SIGNALS: the LLM engines' utilities scored once per run
    # () -> (Engine, model info) for the llm and hybrid engines (run.MarketSettings.llm_engine), or None
    llm_engine: Callable[[], tuple[Any, dict[str, Any]]] | None = field(
        default=None, compare=False, repr=False
    )

    def market(self, categories: list[str]) -> run.MarketSettings:
        same = (
            "period",
            "weeks",
            "customers",
            "m_options",
            "alpha",
            "epsilon",
            "max_iter",
            "own_history",
            "seed",
            "use_adapter",
            "llm_val_occasions",
            "augment_token_budget",
            "llm_signals",
        )
        kw = {k: getattr(self, k) for k in same} | {"categories": 0, "category_ids": list(categories)}
        none = {"calibrate": False, "sample_customers": 0, "sample_engines": [], "stability_seeds": 0}
        none |= {"sample_mean_field": "none", "llm_max_iter": 0}
        return run.MarketSettings(
            **kw,
            **none,
            stability_engines=[],
            customer_ids=[],
            engines=[self.engine],
            llm_engine=self.llm_engine,
        )


@dataclass
class WhatIfResult:
    effects: pl.DataFrame  # EFFECTS_SCHEMA (tidy: one row per level, category, product, metric)
    elasticities: pl.DataFrame  # ELASTICITIES_SCHEMA
    diversion: pl.DataFrame  # DIVERSION_SCHEMA
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def affected_categories(conn, scenario: Scenario) -> list[str]:
    """Categories of the targets (products, brands and/or categories) and new products, in scenario order."""
    out: list[str] = []
    q = "select distinct category from products where {} order by category"
    for iv in scenario.interventions:
        if iv.type == "new_product":
            found = [iv.product["category"]]
        elif iv.categories and not iv.products:
            found = list(iv.categories)
        else:
            col, v = ("product_id", iv.products) if iv.products else ("brand", iv.brands)
            found = conn.execute(q.format(f"list_contains($v, {col})"), {"v": list(v)}).fetchall()
        out += [f[0] if isinstance(f, tuple) else f for f in found]
    return list(dict.fromkeys(out))


@contextmanager
def _market_tables_aside(conn):
    """The warehouse's market_occasions / market_options are kept aside while the what-if builds its own."""
    both = ("market_occasions", "market_options")
    names = [n for n in both if table_exists(conn, n)]
    [conn.execute(f"alter table {n} rename to {n}__whatif_saved") for n in names]  # fixed names only
    try:
        yield
    finally:
        [conn.execute(f"drop table if exists {n}") for n in both]
        [conn.execute(f"alter table {n}__whatif_saved rename to {n}") for n in names]


def scenario_options(frame, occasions, scenario: Scenario, products) -> pl.DataFrame:
    """load_market_frame rows with the scenario applied; new products' rows get their occasion's columns."""
    cols = [c for c in OCC_COLUMNS if c in frame.columns]
    occ = frame.select("occasion_id", *cols).unique("occasion_id")
    out = apply_scenario(frame.drop(cols), occasions, scenario, products)
    return out.join(occ, on="occasion_id", how="left").sort(KEYS)


def scenario_history(h: meanfield.MarketHistory, occasions, scenario: Scenario) -> meanfield.MarketHistory:
    """The history of the scenario's mean field (module docstring): new products known, delisted ones gone."""
    new = new_products_frame(scenario).select("product_id", "category", "brand")
    products = pl.concat([h.products, new.cast(h.products.schema)]).unique("product_id", keep="first")
    start = occasions["day"].min()
    iso = (pl.col("day").dt.truncate("1w") - pl.lit(start).dt.truncate("1w")).dt.total_days() // 7 + 1
    clock = [((pl.col("day") - pl.lit(start)).dt.total_days() + 1).alias("_d"), iso.alias("_w")]
    catalog = products.select("product_id", _brand="brand", _category="category")

    def without_delisted(frame: pl.DataFrame) -> pl.DataFrame:
        rows = frame.with_columns(clock).join(catalog, on="product_id", how="left")
        gone = pl.lit(False)
        for iv in scenario.interventions:
            if iv.type == "delist":
                period = iv.period or scenario.period
                inside = (pl.col("day") >= start) & (period.contains() if period else True)
                gone = gone | (iv.matches() & inside).fill_null(False)
        return rows.filter(~gone).select(frame.columns)

    bg, own = without_delisted(h.background), without_delisted(h.own_products)
    return replace(h, products=products, background=bg, own_products=own)


def add_new_products(engine, scenario: Scenario) -> None:
    """An engine reading product texts (a prompt context: the LLM, the hybrids) learns the new products'."""
    new = new_products_frame(scenario)
    for e in (engine, getattr(engine, "llm", None)):
        ctx = getattr(e, "context", None)
        prods = getattr(ctx, "products", None)
        if new.height and isinstance(prods, pl.DataFrame):
            add = new.select(pl.col(c) if c in new.columns else pl.lit(None).alias(c) for c in prods.columns)
            keep = prods.filter(~pl.col("product_id").is_in(new["product_id"].implode()))
            ctx.products = pl.concat([keep, add.cast(prods.schema)])


def occasion_rows(decisions: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """customer_id, category, product_id, prob, units, revenue per (occasion, option) of a run."""
    price = frame.select(*KEYS, pl.col("price").cast(pl.Float64))
    occ = frame.select("occasion_id", "customer_id", "category").unique("occasion_id")
    d = decisions.join(price, on=KEYS, how="left").join(occ, on="occasion_id", how="left")
    units = pl.col("prob") * pl.col("expected_qty")
    revenue = (units * pl.col("price")).fill_null(0.0)
    return d.select(*KEYS[:1], "customer_id", "category", "product_id", "prob", units=units, revenue=revenue)


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={k: v for k, v in schema.items() if k not in ("scenario", "engine")})


def _keyed(frames: list[pl.DataFrame] | pl.DataFrame, key: dict, schema: dict) -> pl.DataFrame:
    f = pl.concat(frames) if isinstance(frames, list) and frames else frames
    if not isinstance(f, pl.DataFrame) or not f.height:
        return pl.DataFrame(schema=schema)
    return f.with_columns(**key).select(pl.col(c).cast(d) for c, d in schema.items())


def _sort_keys(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("category", pl.col("product_id") == OTHER, "product_id")


def effects_frame(base, after, n_boot: int, seed: int, conf: float) -> pl.DataFrame:
    """Per product and category: units, revenue and share before / after / change, with the bootstrap interval
    of the change over customers (module docstring). Columns of EFFECTS_SCHEMA but scenario and engine."""
    from scipy.sparse import csr_matrix

    by = ["customer_id", "category", "product_id"]
    agg = [pl.col("units").sum(), pl.col("revenue").sum()]
    b, a = base.group_by(by).agg(agg), after.group_by(by).agg(agg)
    j = b.join(a, on=by, how="full", coalesce=True, suffix="_a").fill_null(0.0)
    keys = _sort_keys(j.select("category", "product_id").unique()).with_row_index("k")
    cust = j.select("customer_id").unique().sort("customer_id").with_row_index("c")
    j = j.join(keys, on=["category", "product_id"]).join(cust, on="customer_id")
    n_c, n_k = cust.height, keys.height
    cats = keys["category"].unique(maintain_order=True)
    cat_of = (keys["category"].rank("dense") - 1).cast(pl.Int64).to_numpy()  # keys are sorted by category
    to_cat = csr_matrix((np.ones(n_k), (np.arange(n_k), cat_of)), shape=(n_k, cats.len()))
    rng = np.random.default_rng(seed)
    w = np.vstack([np.ones(n_c), rng.multinomial(n_c, np.full(n_c, 1.0 / n_c), size=n_boot)])  # row 0: point
    ci, ki = j["c"].to_numpy(), j["k"].to_numpy()
    per = {c: np.asarray((csr_matrix((j[c].to_numpy(), (ci, ki)), shape=(n_c, n_k)).T @ w.T).T)
           for c in ("units", "units_a", "revenue", "revenue_a")}  # fmt: skip
    lo_q, hi_q = 50 * (1 - conf), 50 * (1 + conf)
    rows = []
    for level, names, cat_names in (("product", keys, cat_of), ("category", cats.to_frame(), None)):
        vals = {c: v if cat_names is not None else np.asarray(v @ to_cat) for c, v in per.items()}
        metrics = {"units": ("units", "units_a"), "revenue": ("revenue", "revenue_a")}
        if level == "product":
            cu = {c: np.asarray(per[c] @ to_cat)[:, cat_of] for c in ("units", "units_a")}
            with np.errstate(divide="ignore", invalid="ignore"):
                vals |= {"share": vals["units"] / cu["units"], "share_a": vals["units_a"] / cu["units_a"]}
            metrics["share"] = ("share", "share_a")
        for metric, (x0, x1) in metrics.items():
            change = vals[x1] - vals[x0]
            boot = change[1:]
            with np.errstate(all="ignore"):
                none = np.full((2, change.shape[1]), np.nan)
                lo, hi = np.nanpercentile(boot, [lo_q, hi_q], axis=0) if n_boot else none
                pct = np.where(vals[x0][0] != 0, 100 * change[0] / vals[x0][0], np.nan)
            for i, r in enumerate(names.iter_rows(named=True)):
                rows.append(dict(level=level, category=r["category"], product_id=r.get("product_id"),
                                 metric=metric, before=vals[x0][0, i], after=vals[x1][0, i], change=change[0, i],
                                 change_pct=pct[i], change_lo=lo[i], change_hi=hi[i], n_boot=n_boot))  # fmt: skip
    return _frame(rows, EFFECTS_SCHEMA).fill_nan(None)


def _units(res: meanfield.MeanFieldResult, frame: pl.DataFrame) -> pl.DataFrame:
    return occasion_rows(res.decisions, frame).group_by("category", "product_id").agg(pl.col("units").sum())


def elasticity_matrix(
    engine, frame, occasions, history, base, category, products, s, mf, log
) -> pl.DataFrame:
    """ELASTICITIES_SCHEMA rows (but scenario, engine) of `category`'s top-K products (module docstring)."""
    occ = occasions.filter(pl.col("category") == category)
    fr = frame.filter(pl.col("occasion_id").is_in(occ["occasion_id"].implode()))
    u0 = _units(base, frame).filter(pl.col("category") == category)
    top = u0.filter(pl.col("product_id") != OTHER).sort(["units", "product_id"], descending=[True, False])
    top = top.head(s.top_k)["product_id"].to_list()
    warm = replace(history, heads=meanfield.choices_of(base.decisions.join(fr.select(KEYS), on=KEYS), fr))
    rows = _sort_keys(u0.filter(pl.col("product_id").is_in([*top, OTHER])))
    out = []
    for j in top:
        t0, got = time.perf_counter(), {}
        for sign in (-1, 1):
            iv = Intervention("price", products=(j,), change_pct=100.0 * sign * s.elasticity_step)
            opts = scenario_options(fr, occ, Scenario("elasticity", "", None, (iv,)), products)
            res = mf(engine, opts, occ, warm, epsilon=s.elasticity_epsilon, log=lambda _: None)
            u = rows.select("product_id").join(_units(res, opts), on="product_id", how="left")
            got[sign] = u["units"].fill_null(0.0)
        e = own_price_elasticity(got[-1], got[1], rows["units"], s.elasticity_step)
        out += [dict(category=category, product_id=p, price_product_id=j, elasticity=e[i], units_base=u,
                     units_minus=got[-1][i], units_plus=got[1][i]) for i, (p, u) in enumerate(rows.select(
                         "product_id", "units").iter_rows())]  # fmt: skip
        log(f"whatif: elasticities for the price of {j} ({category}): {time.perf_counter() - t0:.1f} s")
    return _frame(out, ELASTICITIES_SCHEMA).fill_nan(None)


def diversion_frame(delisting: int, base_rows, after_rows, gone: set) -> pl.DataFrame:
    """DIVERSION_SCHEMA rows (but scenario, engine) of one delisting whose products are `gone`."""
    agg = [pl.col("units").sum(), pl.col("prob").sum()]
    b = base_rows.group_by("category", "product_id").agg(agg)
    a = after_rows.group_by("category", "product_id").agg(agg)
    j = b.join(a, on=["category", "product_id"], how="full", coalesce=True, suffix="_a").fill_null(0.0)
    out = []
    for cat in j.filter(pl.col("product_id").is_in(list(gone)))["category"].unique().sort():
        c = j.filter(pl.col("category") == cat)
        g = c.filter(pl.col("product_id").is_in(list(gone)))
        lost_u = float((g["units"] - g["units_a"]).sum())
        lost_p = float((g["prob"] - g["prob_a"]).sum())
        if lost_u <= 0 or lost_p <= 0:
            continue  # the delisted products sold nothing in the simulated occasions
        ids = ",".join(sorted(g["product_id"]))
        for r in _sort_keys(c.filter(~pl.col("product_id").is_in(list(gone)))).iter_rows(named=True):
            out.append(dict(delisting=delisting, category=cat, delisted=ids, product_id=r["product_id"],
                            units_before=r["units"], units_after=r["units_a"],
                            diversion=(r["units_a"] - r["units"]) / lost_u,
                            diversion_purchases=(r["prob_a"] - r["prob"]) / lost_p))  # fmt: skip
    return _frame(out, DIVERSION_SCHEMA)


def run_whatif(
    conn, scenario: Scenario, settings: WhatIfSettings, log: Callable[[str], Any] = print
) -> WhatIfResult:
    """The what-if of `scenario` (validated: load_scenario(path, conn)) on the warehouse (module docstring)."""
    s = settings
    run.check_engine_names([s.engine])  # before any work
    from assets.market.llm import check_llm_signals

    check_llm_signals(s.llm_signals)
    timings: dict[str, float] = {}
    marks = [time.perf_counter()]

    def lap(name: str) -> None:  # the seconds since the last lap
        marks.append(time.perf_counter())
        timings[name] = marks[-1] - marks[-2]

    cats = list(s.category_ids) or affected_categories(conn, scenario)
    ms = s.market(cats)
    with _market_tables_aside(conn):
        build_market_occasions(conn, m_options=s.m_options, seed=s.seed, history_days=run.HISTORY_DAYS,
                               **ms.occasion_filters())  # fmt: skip
        occasions = conn.sql("select * from market_occasions").pl()
        if occasions.height == 0:
            raise ValueError(f"no occasions in period {s.period!r} for categories {cats}: nothing to compare")
        frame = load_market_frame(conn)
        products = conn.sql("select product_id, category, brand from products").pl()
        _, history = meanfield.observed_state(conn, occasions, run.HISTORY_DAYS)
        lap("occasions")
        log(f"whatif {scenario.name}: {occasions.height} occasions of {cats}, {timings['occasions']:.1f} s")
        engine = run.build_engines(conn, [s.engine], ms, log).get(s.engine)
        lap("fit")
    if engine is None:
        raise ValueError(f"engine {s.engine!r} could not be built on this warehouse")
    add_new_products(engine, scenario)
    uses_mf = run.ENGINES[s.engine].mean_field

    def mf(eng, opts, occ, hist, **kw):
        kw = {"alpha": s.alpha, "epsilon": s.epsilon, "log": lambda m: log(f"{s.engine}: {m}")} | kw
        return meanfield.run_mean_field(eng, opts, occ, hist, max_iter=s.max_iter, own_history=s.own_history,
                                        mean_field=uses_mf, **kw)  # fmt: skip

    def scenario_run(sc: Scenario):
        opts = scenario_options(frame, occasions, sc, products)
        return opts, mf(engine, opts, occasions, scenario_history(history, occasions, sc))

    base = mf(engine, frame, occasions, history)
    lap("baseline")
    scen_frame, after = scenario_run(scenario)
    lap("scenario")
    base_rows, after_rows = occasion_rows(base.decisions, frame), occasion_rows(after.decisions, scen_frame)
    effects = effects_frame(base_rows, after_rows, s.bootstrap, s.seed, s.confidence)
    lap("bootstrap")
    elasticities = [elasticity_matrix(engine, frame, occasions, history, base, c, products, s, mf, log)
                    for c in cats[: s.elasticity_categories] if s.top_k > 0]  # fmt: skip
    lap("elasticities")
    div, base_ids = [], base_rows["product_id"].unique()
    for i, iv in enumerate(scenario.interventions, 1):
        if iv.type != "delist":
            continue
        alone = scenario if len(scenario.interventions) == 1 else replace(scenario, interventions=(iv,))
        opts, res = (scen_frame, after) if alone is scenario else scenario_run(alone)
        kept = opts.group_by("product_id").len()
        was = frame.group_by("product_id").len().join(kept, on="product_id", how="left", suffix="_a")
        gone = set(was.filter(pl.col("len_a").fill_null(0) < pl.col("len"))["product_id"]) & set(base_ids)
        div.append(diversion_frame(i, base_rows, occasion_rows(res.decisions, opts), gone))
    lap("diversion")
    run.save_engines(conn, {s.engine: engine})
    key = {"scenario": pl.lit(scenario.name), "engine": pl.lit(s.engine)}
    stack = [(effects, EFFECTS_SCHEMA), (elasticities, ELASTICITIES_SCHEMA), (div, DIVERSION_SCHEMA)]
    frames = [_keyed(f, key, sch) for f, sch in stack]
    sums = frames[2].group_by("delisting", "category").agg(pl.col("diversion", "diversion_purchases").sum())
    summary = {
        "scenario": scenario.name, "engine": s.engine, "categories": cats, "occasions": occasions.height,
        "customers": occasions["customer_id"].n_unique(), "bootstrap": s.bootstrap,
        "baseline": base.metadata(), "after": after.metadata(),
        "diversion_sums": sums.sort("delisting", "category").to_dicts(),
        **({"engine_stats": engine.stats()} if callable(getattr(engine, "stats", None)) else {}),
    }  # fmt: skip
    return WhatIfResult(*frames, summary=summary, timings=timings)


def write_whatif_tables(conn, result: WhatIfResult) -> None:
    """Create the whatif tables if needed and replace this (scenario, engine)'s rows (sql/market/whatif_*)."""
    params = {"scenario": result.summary["scenario"], "engine": result.summary["engine"]}
    for table, frame in zip(TABLES, (result.effects, result.elasticities, result.diversion), strict=True):
        conn.execute(load_sql(f"market/{table}"))
        conn.register(f"staged_{table}", frame.to_arrow())
        try:
            conn.execute(load_sql(f"market/{table}_replace"), params)
        finally:
            conn.unregister(f"staged_{table}")


def headline(result: WhatIfResult) -> dict[str, float | int]:
    """Plain values for the metadata and MLflow: sizes, seconds per step, units change per category, the
    median own elasticity and the diversion sums."""
    out = {k: result.summary[k] for k in ("occasions", "customers")}
    out |= {f"seconds/{k}": float(v) for k, v in result.timings.items()}
    cats = result.effects.filter((pl.col("level") == "category") & (pl.col("metric") == "units"))
    out |= {f"units_change/{c}": float(v) for c, v in cats.select("category", "change").iter_rows()}
    own = result.elasticities.filter(pl.col("product_id") == pl.col("price_product_id"))["elasticity"]
    own = own.drop_nulls()
    out |= {"own_elasticity_median": float(own.median())} if own.len() else {}
    for d in result.summary["diversion_sums"]:
        out[f"diversion_sum/{d['delisting']}/{d['category']}"] = float(d["diversion"])
        out[f"diversion_sum_purchases/{d['delisting']}/{d['category']}"] = float(d["diversion_purchases"])
    return out


def effects_markdown(effects: pl.DataFrame, max_products: int = 15) -> str:
    """Markdown: the categories, then the products with the largest absolute unit change."""

    def f(v, fmt=".1f") -> str:
        return "" if v is None else format(v, fmt)

    cols = (
        "level",
        "category",
        "product",
        "units before",
        "after",
        "change",
        "interval",
        "change %",
        "share change",
    )
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    units = effects.filter(pl.col("metric") == "units")
    share = effects.filter(pl.col("metric") == "share").select("category", "product_id", share="change")
    cats = units.filter(pl.col("level") == "category")
    prods = units.filter(pl.col("level") == "product").join(share, on=["category", "product_id"], how="left")
    prods = prods.sort(pl.col("change").abs(), descending=True).head(max_products)
    for r in pl.concat([cats.with_columns(share=pl.lit(None, pl.Float64)), prods]).iter_rows(named=True):
        lines.append(
            f"| {r['level']} | {r['category']} | {r['product_id'] or ''} | {f(r['before'])} | {f(r['after'])} | "
            f"{f(r['change'], '+.2f')} | [{f(r['change_lo'], '+.2f')}, {f(r['change_hi'], '+.2f')}] | "
            f"{f(r['change_pct'], '+.1f')} | {f(r['share'], '+.4f')} |"
        )
    return "\n".join(lines)


def plot_units_change(effects: pl.DataFrame, path: str | Path, max_products: int = 30) -> Path:
    """A PNG: the change in units per product (bars, the largest changes) with the bootstrap interval."""
    from matplotlib.figure import Figure

    p = effects.filter((pl.col("level") == "product") & (pl.col("metric") == "units"))
    p = p.sort(pl.col("change").abs(), descending=True).head(max_products).sort("category", "change")
    y = p["change"].to_numpy()
    err = [np.nan_to_num(y - p[c].fill_null(np.nan).to_numpy()) for c in ("change_lo", "change_hi")]
    fig = Figure(figsize=(max(5.0, 0.32 * len(y) + 2), 3.8))
    ax = fig.subplots()
    ax.bar(range(len(y)), y, color=["C3" if v < 0 else "C0" for v in y], capsize=2,
           yerr=np.vstack([np.maximum(err[0], 0), np.maximum(-err[1], 0)]))  # fmt: skip
    ax.set_xticks(range(len(y)), p["product_id"].to_list(), rotation=70, fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="change in units (after - before)")
    ax.set_title(f"units change per product, {int(p['n_boot'].max() or 0)} bootstrap replicates", fontsize=9)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_elasticities(elasticities: pl.DataFrame, path: str | Path) -> Path | None:
    """A PNG heatmap of each category's elasticity matrix (rows: whose units, columns: whose price)."""
    from matplotlib.figure import Figure

    if elasticities.height == 0:
        return None
    cats = elasticities["category"].unique(maintain_order=True).to_list()
    k = elasticities["price_product_id"].n_unique()
    fig = Figure(figsize=(max(4.5, 0.55 * k + 2.5) * len(cats), max(3.5, 0.45 * k + 2)))
    for ax, cat in zip(np.atleast_1d(fig.subplots(1, len(cats))), cats, strict=True):
        e = elasticities.filter(pl.col("category") == cat)
        m = e.pivot(on="price_product_id", index="product_id", values="elasticity")
        v = m.drop("product_id").to_numpy().astype(float)
        lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
        fig.colorbar(ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim), ax=ax, shrink=0.8)
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6) if np.isfinite(x) else None
        ax.set_xticks(range(v.shape[1]), m.columns[1:], rotation=70, fontsize=7)
        ax.set_yticks(range(v.shape[0]), m["product_id"].to_list(), fontsize=7)
        ax.set(xlabel="price of", ylabel="units of")
        ax.set_title(f"{cat}: price elasticities", fontsize=9)
    return _save(fig, path)
