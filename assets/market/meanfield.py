"""The mean field of the market simulation (docs/design.md mechanism 5; docs/evaluation-protocol.md
"Market-level evaluation"). Plain functions, no dagster import.

The state m: per (product_id, day) of the simulated period, purchases (popularity counts purchases: the sum of
choice probabilities), units (prob x expected_qty) and unit_price_sum (prob x the option's price: the paid unit
prices the reference price averages). m covers the whole market: what the occasions do not decide (other
customers, the basket's other products of the category besides the occasion's actual product, categories or
weeks not simulated) stays at its observed value; each occasion adds its choice probabilities. m_0 = observed:
each occasion's actual purchase with probability 1.

Iteration (run_mean_field): signals from m_k -> engine.decide -> F(m_k) = the state of the decisions (an
engine with an `observing(options)` context, the LLM engines, is inside it for the passes: with llm_signals
"observed" they hold their utilities at the options as given, llm.py);
m_{k+1} = (1 - alpha) m_k + alpha F(m_k). The damping is carried on the per-(occasion, product) choices, whose
aggregate is m (linear), so the agents' own histories (own_history=True) follow the same damped choices.
residual_k = metrics.fixed_point_residual(m_{k+1}, m_k) on units (the protocol's); converged when it and the
same residual on purchases (what the signals read) are below epsilon.

Columns recomputed (signals_from_state; every other column is left as it is):
- market: pop_28d (purchases in d - W .. d - 1, W = history_days), pop_total (purchases before d), is_new
  (pop_total == 0), prod_mean_qty_28d (units / purchases in the window, null without purchases), ref_price's
  market part (mean paid unit price in the window) and ref_price_gap; history = observed days before the
  period + m inside it. The features carry no rank-of-sales column and no stock.
- own_history=True: cust_product_purchases, cust_brand_purchases (merchandise of the occasion's category and the
  option's brand), cust_mean_qty (units / purchases in the category: the outside option counts, it is a purchase
  of the category), days_since_cust_purchase and ref_price's customer part (prob-weighted mean paid price), from
  the observed history with each earlier occasion's actual purchase replaced by its (damped) choice probabilities.
  Without it these stay observed, and ref_price is kept where the customer had bought the product.

Readings that needed a choice:
- the period is [first occasion day, last occasion day + 1); counts become expected counts (Float64); is_new
  keeps "no purchase before d": any probability mass makes a product not new from d + 1.
- days_since_cust_purchase counts from the last day on which the customer's expected purchases of the product
  reach 0.5 (an observed purchase is 1); the counts themselves are not thresholded.
- the outside option's mass is a purchase of some product outside the set: no product's popularity gets it.
- an option without a price (a scenario product never sold, given none) adds its purchases but no price.
- not recomputed: the sets (set_rank, source), prices, discount_depth, log_price, rel_price, and
  cust_category_purchases (the occasions are given visits of the category, whatever is chosen).
- causality: every signal at day d reads days < d only, so F on day t depends on m before t (a strictly lower
  triangular Jacobian in time): alpha = 1 is exact after at most D + 1 passes (D = the occasion days) and alpha < 1
  only slows it (the first day closes its gap as (1 - alpha)^k; tests/test_market_meanfield.py measures it).
  Damping would matter for a signal of day d itself (stock left that day), which no column is yet.

Sample mode (run_mean_field(sample_seed=s); docs/evaluation-protocol.md "Stability (sample mode)"):
- each occasion draws one option from the engine's probabilities by inverse CDF over its options in
  product_id order (as text, OTHER included): the first option whose cumulative prob exceeds u x the
  occasion's total, with u = int(md5("{s}|{occasion_id}")[:13], 16) / 16**13 in [0, 1) (the protocol's hash
  reading; 52 bits, exact in a float64). u is a common random number: the same in every pass, so one pass is
  a deterministic map of m and, the signals being causal, alpha = 1 reaches the exact fixed point of the
  sampled market within D + 1 passes as in expected mode. The coupling is monotone: a small change of the
  probabilities moves few draws.
- the returned decisions keep DECISIONS_SCHEMA with prob one-hot on the drawn option (1.0, every other 0.0)
  and the engine's probabilities in an extra column prob_model; expected_qty is the engine's (the drawn
  option's expected units: quantities are not sampled). So every use of prob x expected_qty (state_of,
  choices_of, metrics.simulated_units, scoring) reads one sampled market unchanged.
- damping (alpha < 1) damps the state, never the draws: each pass draws one-hot choices from the engine's
  probabilities at the signals of the damped m_k, and m_{k+1} = (1 - alpha) m_k + alpha (their state), as in
  expected mode. A fixed point is the same as alpha = 1's (one-hot draws that reproduce themselves); on the
  way the state is fractional (a mix of earlier draws) and only the returned decisions are one-hot.
- mean_field=False draws once from the engine's probabilities on the options as given.

Weights (run_mean_field(weights=frame of occasion_id, weight)), for a customer sample raked to stand for the
population: each occasion's simulated purchases, units and unit_price_sum count `weight` times in the market
state m (state_of), so in every market signal (pop_28d, pop_total, is_new, prod_mean_qty_28d, the market
ref_price), in m_0 (the actual purchases weighted alike) and in the residuals. Not weighted: the customer's own
history (own_history: a customer's own purchases count once), the background and the days before the period
(observed), and the returned decisions (per occasion; the caller weights the units it scores). Every occasion
needs one finite weight >= 0. Caution: history.background holds every observed purchase of the period that is
no occasion's actual purchase, the customers outside the sample included; with weights that stand for them,
build the history so that the background leaves out what the weighted sample stands for.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.market.engine import check_decisions, with_other_rows
from assets.market.metrics import OTHER, fixed_point_residual

KEYS = ["occasion_id", "product_id"]
VALUES = ["purchases", "units", "unit_price_sum"]
STATE_COLUMNS = ["product_id", "day", *VALUES]
CHOICE_COLUMNS = [*KEYS, "prob", "units", "unit_price_sum"]
MARKET_COLUMNS = ("pop_28d", "pop_total", "is_new", "prod_mean_qty_28d", "ref_price", "ref_price_gap")
OWN_COLUMNS = ("cust_product_purchases", "cust_brand_purchases", "cust_mean_qty", "days_since_cust_purchase")
BUY_THRESHOLD = 0.5  # expected purchases on a day that make it a purchase day (days_since_cust_purchase)
ZERO = 1e-9  # a window sum below this is 0 (float residue of cumulative differences)
UNIFORM_HEX = 13  # hex digits of md5 read as a sample mode's uniform: 52 bits, exact in a float64
PURCHASES_SQL = """
select p.basket_id, p.customer_id, p.product_id, k.category, k.brand, p.day, p.units, p.unit_price,
       p.is_merchandise
from episode_purchases as p
join products as k on k.product_id = p.product_id
where p.day < $end
"""  # keyed_purchases of sql/features: the purchases option_features counts


@dataclass
class MarketHistory:
    """What the signals need besides m (observed_state builds it)."""

    start: date  # the period's first day (first occasion day)
    end: date  # the day after its last occasion day
    history_days: int  # W: pop_28d's window is d - W .. d - 1
    product_days: pl.DataFrame  # STATE_COLUMNS: observed purchases of every product, days < end
    background: pl.DataFrame  # STATE_COLUMNS in the period: observed minus the occasions' actual purchases
    heads: pl.DataFrame  # CHOICE_COLUMNS: each occasion's actual purchase with prob 1 (the observed choices)
    own_products: pl.DataFrame  # customer_id, product_id, day, purchases, unit_price_sum (heads removed)
    own_brands: pl.DataFrame  # customer_id, category, brand, day, purchases (merchandise, heads removed)
    own_categories: pl.DataFrame  # customer_id, category, day, purchases, units (merchandise, heads removed)
    products: pl.DataFrame  # product_id, category, brand


@dataclass
class MeanFieldResult:
    decisions: pl.DataFrame  # the last iteration's DECISIONS_SCHEMA rows (on the signals of the last m_k)
    state: pl.DataFrame  # the final m (STATE_COLUMNS)
    residuals: list[float] = field(default_factory=list)  # per iteration, on units (the protocol's)
    residuals_purchases: list[float] = field(default_factory=list)  # the same on purchases
    iterations: int = 0
    converged: bool = False
    seconds: list[float] = field(default_factory=list)  # per iteration, all of it
    signal_seconds: list[float] = field(default_factory=list)  # per iteration, signals_from_state
    engine_seconds: list[float] = field(default_factory=list)  # per iteration, engine.decide
    alpha: float = 0.5
    epsilon: float = 1e-3
    sample_seed: int | None = None  # None: expected mode; else sample mode with this seed

    def metadata(self) -> dict[str, Any]:
        """docs/conventions.md §7 (iterations, converged, final_residual) plus the residual per iteration."""
        return {
            "iterations": self.iterations,
            "converged": self.converged,
            "final_residual": self.residuals[-1] if self.residuals else None,
            "residuals": [float(r) for r in self.residuals],
            "residuals_purchases": [float(r) for r in self.residuals_purchases],
            "alpha": self.alpha,
            "epsilon": self.epsilon,
            "sample_seed": self.sample_seed,
            "seconds_per_iteration": float(np.mean(self.seconds or [0.0])),
            "signal_seconds_per_iteration": float(np.mean(self.signal_seconds or [0.0])),
            "engine_seconds_per_iteration": float(np.mean(self.engine_seconds or [0.0])),
        }


def _state(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return frame.group_by(by).agg(
        purchases=pl.len().cast(pl.Float64),
        units=pl.col("units").cast(pl.Float64).sum(),
        unit_price_sum=pl.col("unit_price").cast(pl.Float64).sum(),
    )


def _own(frame: pl.DataFrame, by: list[str], start: date) -> pl.DataFrame:
    """by, day, purchases, units, unit_price_sum per day in the period; before it one row per group on its last
    purchase day (its totals: the same sums and last purchase day for any d >= start, far fewer rows)."""
    inside = _state(frame.filter(pl.col("day") >= start), [*by, "day"])
    pre = frame.filter(pl.col("day") < start)
    pre = _state(pre, by).join(pre.group_by(by).agg(pl.col("day").max()), on=by)
    return pl.concat([inside, pre.select(inside.columns)])


def observed_state(
    source, occasions: pl.DataFrame, history_days: int = 28, products: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, MarketHistory]:
    """(m_0, history): the observed state of the period per (product_id, day) and what the windows need.

    source: a DuckDB connection (episode_purchases joined to products, as option_features counts) or a frame of
    purchases (basket_id, customer_id, product_id, category, brand, day, units, unit_price, is_merchandise).
    occasions: market_occasions rows (occasion_id, basket_id, customer_id, category, day, actual_product_id).
    products: product_id, category, brand (read from the connection; from the purchases frame when None).
    """
    start, last = occasions["day"].min(), occasions["day"].max()
    end = last + timedelta(days=1)
    if isinstance(source, pl.DataFrame):
        purchases = source.filter(pl.col("day") < end)
    else:
        purchases = source.sql(PURCHASES_SQL, params={"end": end}).pl()
        products = source.sql("select distinct product_id, category, brand from products").pl()
    if products is None:
        products = purchases.select("product_id", "category", "brand").unique("product_id")
    heads = occasions.select("occasion_id", "basket_id", product_id="actual_product_id")
    flagged = purchases.join(heads, on=["basket_id", "product_id"], how="left")
    n_heads = flagged["occasion_id"].is_not_null().sum()
    if n_heads != occasions.height:
        raise ValueError(f"{occasions.height - n_heads} occasions' actual purchases are not in the purchases")
    rest = flagged.filter(pl.col("occasion_id").is_null())
    in_period = pl.col("day") >= start
    mine = rest.join(occasions.select("customer_id").unique(), on="customer_id", how="semi")
    merch = mine.filter(pl.col("is_merchandise"))
    history = MarketHistory(
        start=start,
        end=end,
        history_days=int(history_days),
        product_days=_state(purchases, ["product_id", "day"]).select(STATE_COLUMNS),
        background=_state(rest.filter(in_period), ["product_id", "day"]).select(STATE_COLUMNS),
        heads=flagged.filter(pl.col("occasion_id").is_not_null()).select(
            "occasion_id",
            "product_id",
            prob=pl.lit(1.0),
            units=pl.col("units").cast(pl.Float64),
            unit_price_sum=pl.col("unit_price").cast(pl.Float64),
        ),
        own_products=_own(mine, ["customer_id", "product_id"], start).drop("units"),
        own_brands=_own(
            merch.filter(pl.col("brand").is_not_null()), ["customer_id", "category", "brand"], start
        ).drop("units", "unit_price_sum"),
        own_categories=_own(merch, ["customer_id", "category"], start).drop("unit_price_sum"),
        products=products.select("product_id", "category", "brand").unique("product_id"),
    )
    observed = _state(purchases.filter(in_period), ["product_id", "day"]).select(STATE_COLUMNS)
    return observed.sort("product_id", "day"), history


def choices_of(decisions: pl.DataFrame, options: pl.DataFrame | None = None) -> pl.DataFrame:
    """CHOICE_COLUMNS of decisions (prob, expected_qty) or of choices (prob, units[, unit_price_sum]); the
    paid unit price of a simulated purchase is the option's price (from `options` when given)."""
    units = pl.col("prob") * pl.col("expected_qty")
    out = decisions if "units" in decisions.columns else decisions.with_columns(units=units)
    if "unit_price_sum" not in out.columns:
        if options is not None and "price" not in out.columns:
            out = out.join(options.select(*KEYS, "price"), on=KEYS, how="left")
        price = pl.col("price") if "price" in out.columns else pl.lit(None)
        out = out.with_columns(unit_price_sum=(pl.col("prob") * price.cast(pl.Float64)).fill_null(0.0))
    return out.select(CHOICE_COLUMNS).with_columns(pl.col("prob", "units", "unit_price_sum").cast(pl.Float64))


def state_of(
    decisions: pl.DataFrame,
    occasions: pl.DataFrame,
    history: MarketHistory | None = None,
    options: pl.DataFrame | None = None,
    weights: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The state (STATE_COLUMNS) of decisions or choices: per (product, day) the sum of probabilities, of
    prob x expected_qty and of prob x price, OTHER left out; plus the history's background when given (the
    whole market's m; without it only the occasions' part). weights (occasion_id, weight): each occasion's
    part counts `weight` times (an occasion without a row counts once; check_weights makes them complete)."""
    c = choices_of(decisions, options).filter(pl.col("product_id") != OTHER)
    c = c.join(occasions.select("occasion_id", "day"), on="occasion_id").rename({"prob": "purchases"})
    if weights is not None:
        c = c.join(weights.select("occasion_id", "weight"), on="occasion_id", how="left")
        c = c.with_columns(pl.col(VALUES) * pl.col("weight").cast(pl.Float64).fill_null(1.0))
    parts = [c.select(STATE_COLUMNS)] + ([history.background] if history is not None else [])
    return pl.concat(parts).group_by("product_id", "day").agg(pl.col(VALUES).sum()).sort("product_id", "day")


def check_weights(weights: pl.DataFrame, occasions: pl.DataFrame) -> pl.DataFrame:
    """occasion_id, weight (Float64) of every occasion; ValueError for a missing, repeated, null, negative or
    non-finite weight."""
    missing = {"occasion_id", "weight"} - set(weights.columns)
    if missing:
        raise ValueError(f"weights lack columns {sorted(missing)}")
    w = weights.select("occasion_id", pl.col("weight").cast(pl.Float64))
    if w["occasion_id"].is_duplicated().any():
        raise ValueError("weights repeat an occasion_id")
    lacking = occasions.select("occasion_id").join(w, on="occasion_id", how="anti").height
    if lacking:
        raise ValueError(f"{lacking} occasions have no weight")
    bad = w.filter(pl.col("weight").is_null() | ~pl.col("weight").is_finite() | (pl.col("weight") < 0))
    if bad.height:
        raise ValueError(f"{bad.height} weights are null, negative or not finite (e.g. {bad.row(0)})")
    return w


def occasion_uniforms(occasion_ids, seed: int) -> pl.DataFrame:
    """occasion_id, _u: each occasion's common random number of sample mode, int(md5("{seed}|{occasion_id}")
    [:13], 16) / 16**13 in [0, 1) (module docstring); the seed written as a plain integer."""
    ids = pl.Series("occasion_id", occasion_ids, dtype=pl.Utf8).unique(maintain_order=True)
    scale = float(16**UNIFORM_HEX)
    u = [
        int(hashlib.md5(f"{int(seed)}|{o}".encode()).hexdigest()[:UNIFORM_HEX], 16) / scale
        for o in ids.to_list()
    ]
    return pl.DataFrame({"occasion_id": ids, "_u": pl.Series(u, dtype=pl.Float64)})


def sample_decisions(decisions: pl.DataFrame, uniforms: pl.DataFrame) -> pl.DataFrame:
    """The decisions of one draw per occasion (module docstring, sample mode): the same rows in the same order,
    prob one-hot on the drawn option and the engine's prob in prob_model. uniforms: occasion_uniforms."""
    d = decisions.drop("prob_model", strict=False).with_row_index("_row")
    s = d.sort("occasion_id", "product_id").join(
        uniforms.select("occasion_id", "_u"), on="occasion_id", how="left", maintain_order="left"
    )
    if s["_u"].is_null().any():
        raise ValueError("an occasion of the decisions has no uniform")
    cum = pl.col("prob").cum_sum().over("occasion_id")
    s = s.with_columns(_c=cum).with_columns(_t=pl.col("_c").last().over("occasion_id"))
    # the first option whose cumulative prob exceeds u x total; the row that reaches the total is the fallback
    hit = (pl.col("_c") > pl.col("_u") * pl.col("_t")) | (pl.col("_c") >= pl.col("_t"))
    s = s.with_columns(_hit=hit).with_columns(
        _pick=pl.col("_hit") & (pl.col("_hit").cast(pl.Int64).cum_sum().over("occasion_id") == 1)
    )
    cols = [c for c in d.columns if c != "_row"]
    return s.sort("_row").select(
        *[pl.col("_pick").cast(pl.Float64).alias("prob") if c == "prob" else pl.col(c) for c in cols],
        prob_model=pl.col("prob").cast(pl.Float64),
    )


def _damp(prev: pl.DataFrame, new: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """(1 - alpha) prev + alpha new per (occasion, product); a key on one side counts 0 on the other."""
    if alpha == 1.0:
        return new
    cols = ["prob", "units", "unit_price_sum"]
    both = pl.concat(
        [prev.with_columns(pl.col(cols) * (1.0 - alpha)), new.with_columns(pl.col(cols) * alpha)]
    )
    return both.group_by(KEYS).agg(pl.col(cols).sum())


def _market_part(rows: pl.DataFrame, state: pl.DataFrame, h: MarketHistory) -> dict[str, np.ndarray]:
    """Window and total sums of every row (product_id, _day in [start, end)) from observed days before the
    period and m inside it: dense (product, day) arrays from start - W to end, cumulated once."""
    w = h.history_days
    d0 = h.start - timedelta(days=w)
    n_days = (h.end - d0).days
    keys = rows.select("product_id").unique(maintain_order=True).with_row_index("p")
    n_p = keys.height
    pre = h.product_days.filter(pl.col("day") < h.start)
    inside = state.filter((pl.col("day") >= h.start) & (pl.col("day") < h.end))
    dense = pl.concat([pre.filter(pl.col("day") >= d0), inside.select(STATE_COLUMNS)]).join(
        keys, on="product_id"
    )
    flat = (dense["p"].cast(pl.Int64) * n_days + (dense["day"] - d0).dt.total_days()).to_numpy()
    arrays = [np.bincount(flat, weights=dense[c].to_numpy(), minlength=n_p * n_days) for c in VALUES]
    cum = np.zeros((len(VALUES), n_p, n_days + 1))
    cum[:, :, 1:] = np.cumsum(np.stack(arrays).reshape(len(VALUES), n_p, n_days), axis=2)
    base = keys.join(
        pre.filter(pl.col("day") < d0).group_by("product_id").agg(pl.col("purchases").sum()),
        on="product_id",
        how="left",
        maintain_order="left",
    )["purchases"].fill_null(0.0)
    p = rows.join(keys, on="product_id", how="left", maintain_order="left")["p"].to_numpy()
    i = (rows["_day"] - d0).dt.total_days().to_numpy()
    win = cum[:, p, i] - cum[:, p, i - w]
    win[np.abs(win) < ZERO] = 0.0
    return {"n": win[0], "units": win[1], "price": win[2], "total": base.to_numpy()[p] + cum[0, p, i]}


def _cumulate(rows: pl.DataFrame, events: pl.DataFrame, by: list[str], values: list[str]) -> pl.DataFrame:
    """rows (with _row, _day and the `by` columns) + cum_<value> summed over the events of days < _day of the
    same `by`, and last_buy (the last such day with purchases >= BUY_THRESHOLD); null where there is none.
    The `by` groups become integers g and (g, day) one sorted key: one asof join, no string keys."""
    keys = rows.select(by).unique().with_row_index("_g")
    key = pl.col("_g").cast(pl.Int64) * 1_000_000 + pl.col("day").cast(pl.Int64)  # days since 1970 < 1e6
    cums = [f"cum_{v}" for v in values]
    ev = (
        events.join(keys, on=by)
        .group_by("_g", "day")
        .agg(pl.col(values).sum())
        .sort("_g", "day")
        .select(
            key.alias("_key"),
            pl.col("_g").alias("_g_ev"),
            *[pl.col(v).cum_sum().over("_g").alias(c) for v, c in zip(values, cums, strict=True)],
            last_buy=pl.when(pl.col("purchases") >= BUY_THRESHOLD)
            .then(pl.col("day"))
            .forward_fill()
            .over("_g"),
        )
    )
    left = rows.join(keys, on=by, how="left", maintain_order="left").with_columns(day=pl.col("_day"))
    j = left.select("_row", "_g", _key=key).sort("_key").join_asof(ev, on="_key", allow_exact_matches=False)
    same = pl.col("_g_ev") == pl.col("_g")
    out = j.select("_row", *[pl.when(same).then(pl.col(c)).alias(c) for c in [*cums, "last_buy"]])
    return out.sort("_row")


def _own_events(choices: pl.DataFrame, occasions: pl.DataFrame, h: MarketHistory) -> tuple[pl.DataFrame, ...]:
    """(products, brands, categories) events: the observed ones without the occasions' actual purchases, plus
    the choices (OTHER counts for the category only)."""
    c = choices.join(occasions.select("occasion_id", "customer_id", "day", "category"), on="occasion_id")
    c = c.rename({"prob": "purchases"})
    prod = c.filter(pl.col("product_id") != OTHER).join(
        h.products.select("product_id", pl.col("category").alias("_pcat"), "brand"), on="product_id"
    )
    products = pl.concat([h.own_products, prod.select(h.own_products.columns)])
    brands = prod.filter(pl.col("brand").is_not_null()).with_columns(category=pl.col("_pcat"))
    brands = pl.concat([h.own_brands, brands.select(h.own_brands.columns)])
    cats = pl.concat([h.own_categories, c.select(h.own_categories.columns)])
    return products, brands, cats


def _column(rows: pl.DataFrame, name: str) -> pl.Series:
    """rows[name] as Float64, all null when the options lack it."""
    return (
        rows[name].cast(pl.Float64)
        if name in rows.columns
        else pl.repeat(None, rows.height, dtype=pl.Float64, eager=True)
    )


def signals_from_state(
    options: pl.DataFrame,
    occasions: pl.DataFrame,
    state: pl.DataFrame,
    pre_history: MarketHistory,
    choices: pl.DataFrame | None = None,
    own_history: bool = False,
) -> pl.DataFrame:
    """`options` with the market's columns recomputed from `state` (module docstring), and with own_history the
    customer's own columns from `choices` (CHOICE_COLUMNS or decisions; None: the observed choices). Same rows,
    same order, same columns; OTHER rows and products unknown to the history keep their values."""
    h = pre_history
    occ = occasions.select("occasion_id", _customer="customer_id", _category="category", _day="day")
    opts = options.with_row_index("_row").join(occ, on="occasion_id", how="left", maintain_order="left")
    if opts["_day"].is_null().any() or not opts["_day"].is_between(h.start, h.end, closed="left").all():
        raise ValueError(f"every option's occasion must be an occasion of the period [{h.start}, {h.end})")
    known = (pl.col("product_id") != OTHER) & pl.col("product_id").is_in(h.products["product_id"].implode())
    rows = opts.filter(known)
    price = _column(rows, "price")
    m = _market_part(rows, state, h)
    n = m["n"]
    with np.errstate(divide="ignore", invalid="ignore"):
        market_ref = np.where(n > 0, m["price"] / n, np.nan)
        new = {
            "pop_28d": n,
            "pop_total": m["total"],
            "is_new": m["total"] == 0,
            "prod_mean_qty_28d": np.where(n > 0, m["units"] / n, np.nan),
        }
    new = {k: pl.Series(k, v) if v.dtype == bool else pl.Series(k, v).fill_nan(None) for k, v in new.items()}
    market_ref = pl.Series(market_ref).fill_nan(None)
    if own_history:
        chosen = h.heads if choices is None else choices_of(choices, options)
        products, brands, cats = _own_events(chosen, occasions, h)
        r = rows.select(
            "_row", "_day", customer_id="_customer", product_id="product_id", category="_category"
        ).join(h.products.select("product_id", "brand"), on="product_id", how="left", maintain_order="left")
        cp = _cumulate(r, products, ["customer_id", "product_id"], ["purchases", "unit_price_sum"])
        branded = r.filter(pl.col("brand").is_not_null())
        cb = _cumulate(branded, brands, ["customer_id", "category", "brand"], ["purchases"])
        cb = r.select("_row").join(cb, on="_row", how="left", maintain_order="left")
        cc = _cumulate(r, cats, ["customer_id", "category"], ["purchases", "units"])
        bought = cp["cum_purchases"].fill_null(0.0)
        own_ref = pl.select(pl.when(bought > 0).then(cp["cum_unit_price_sum"] / bought)).to_series()
        ref = pl.coalesce(own_ref, market_ref, price)
        new |= {
            "cust_product_purchases": bought,
            "cust_brand_purchases": cb["cum_purchases"].fill_null(0.0),
            "cust_mean_qty": cc["cum_units"] / cc["cum_purchases"],
            "days_since_cust_purchase": (r["_day"] - cp["last_buy"]).dt.total_days().cast(pl.Float64),
        }
    else:
        had = _column(rows, "cust_product_purchases").fill_null(0.0) > 0
        keep = pl.when(had).then(_column(rows, "ref_price"))
        ref = pl.select(keep.otherwise(pl.coalesce(market_ref, price))).to_series()
    gap = pl.select(pl.when(ref > 0).then((price - ref) / ref).otherwise(0.0)).to_series()
    new |= {"ref_price": ref, "ref_price_gap": gap}
    out = [c for c in new if c in options.columns]
    dtype = {c: pl.Boolean if c == "is_new" else pl.Float64 for c in out}
    patch = rows.select("_row", *[new[c].cast(dtype[c]).alias(f"{c}_new") for c in out])
    merged = opts.join(patch, on="_row", how="left", maintain_order="left")
    return merged.with_columns(
        pl.when(known).then(pl.col(f"{c}_new")).otherwise(pl.col(c).cast(dtype[c])).alias(c) for c in out
    ).select(options.columns)


def run_mean_field(
    engine,
    options: pl.DataFrame,
    occasions: pl.DataFrame,
    pre_history: MarketHistory,
    alpha: float = 0.5,
    epsilon: float = 1e-3,
    max_iter: int = 20,
    own_history: bool = False,
    mean_field: bool = True,
    log: Callable[[str], Any] = print,
    sample_seed: int | None = None,
    weights: pl.DataFrame | None = None,
) -> MeanFieldResult:
    """The damped fixed point m = F(m) from m_0 = observed (module docstring). mean_field=False: one engine pass
    on the options as given (the signals stay observed), iterations 0. sample_seed: sample mode (one draw per
    occasion, prob one-hot, the engine's prob in prob_model); None: expected mode. weights (occasion_id,
    weight): each occasion counts `weight` times in the market state; None: once."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    opts = with_other_rows(options)
    w = None if weights is None else check_weights(weights, occasions)
    uniforms = None if sample_seed is None else occasion_uniforms(occasions["occasion_id"], sample_seed)

    def drawn(decisions: pl.DataFrame) -> pl.DataFrame:
        check_decisions(opts, decisions)
        return decisions if uniforms is None else sample_decisions(decisions, uniforms)

    result = MeanFieldResult(
        decisions=pl.DataFrame(), state=pl.DataFrame(), alpha=alpha, epsilon=epsilon, sample_seed=sample_seed
    )
    if not mean_field:
        result.decisions = drawn(engine.decide(opts))
        result.state = state_of(choices_of(result.decisions, opts), occasions, pre_history, weights=w)
        return result
    choices = pre_history.heads
    state = state_of(choices, occasions, pre_history, weights=w)
    result.state = state
    hold = getattr(engine, "observing", None)  # an engine holding a part at the options as given (llm.py)
    with hold(opts) if callable(hold) else nullcontext():
        for k in range(max_iter):
            t0 = time.perf_counter()
            signals = signals_from_state(opts, occasions, state, pre_history, choices, own_history)
            t1 = time.perf_counter()
            decisions = engine.decide(signals)
            t2 = time.perf_counter()
            decisions = drawn(decisions)
            choices = _damp(choices, choices_of(decisions, opts), alpha)
            nxt = state_of(choices, occasions, pre_history, weights=w)
            res = fixed_point_residual(nxt, state)
            res_p = fixed_point_residual(*(f.with_columns(units="purchases") for f in (nxt, state)))
            state = nxt
            result.decisions, result.state, result.iterations = decisions, state, k + 1
            result.residuals.append(res)
            result.residuals_purchases.append(res_p)
            result.signal_seconds.append(t1 - t0)
            result.engine_seconds.append(t2 - t1)
            result.seconds.append(time.perf_counter() - t0)
            log(f"mean field {k + 1}: residual {res:.3g} (purchases {res_p:.3g}), {result.seconds[-1]:.2f} s")
            if res < epsilon and res_p < epsilon:
                result.converged = True
                break
    return result


def plot_residuals(result: MeanFieldResult, path: str | Path) -> Path:
    """A PNG of the residual per iteration (log y; a residual of exactly 0 is drawn at 1e-16), epsilon dashed."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    k = np.arange(1, len(result.residuals) + 1)
    ax.semilogy(k, np.maximum(result.residuals, 1e-16), marker="o", label="units (protocol)")
    if result.residuals_purchases:
        ax.semilogy(k, np.maximum(result.residuals_purchases, 1e-16), marker=".", ls=":", label="purchases")
    ax.axhline(result.epsilon, color="grey", ls="--", lw=1, label=f"epsilon {result.epsilon:g}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("iteration k")
    ax.set_ylabel("max |m_k+1 - m_k| / max(1, m_k)")
    ax.set_title(f"mean field, alpha {result.alpha:g}, converged: {result.converged}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
