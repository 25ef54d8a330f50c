"""The mean field of the market simulation (assets/market/meanfield.py).

A toy market (frames, no warehouse): category A with products A1, A2 (brand X, prices 1.0 and 1.5) and A3
(brand Y, 2.0), history window W = 3 days, period days 0..5 after START (day k = START + k). Customers c1, c2,
c3 (i = 0, 1, 2) each have one occasion a day, o{k}{c}, one unit of actual product A{(k + i + 1) % 3 + 1}:

    day   0   1   2   3   4   5
    c1   A2  A3  A1  A2  A3  A1
    c2   A3  A1  A2  A3  A1  A2      (o2c2: 2 units of A2, and 1 of A3 besides: a background purchase)
    c3   A1  A2  A3  A1  A2  A3

Before the period: A1 x2 on day -1 and x1 on day -2, A2 x1 on day -3 (other customers); c1 bought A1 on day -4
and A3 on day -5 (outside every window: pop_total only).

The engine (PopLogit): u_j = beta log(1 + pop_28d) + gamma log(1 + cust_product_purchases), u_OTHER = 0, one
unit. Because every signal reads days < d only, the exact fixed point is a forward pass over the days
(reference_fixed_point, written plainly).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from datetime import date, timedelta

import polars as pl
import pytest

from assets.market import meanfield as mf
from assets.market.engine import DECISIONS_SCHEMA, ChoiceEngine, with_other_rows
from assets.market.metrics import OTHER, fixed_point_residual
from tests.test_market_occasions import make_warehouse

START = date(2024, 3, 4)
W = 3
W28 = 28  # the warehouse's window (build_market_occasions' history_days)
DAYS = 6
CUSTOMERS = ("c1", "c2", "c3")
PRODUCTS = {"A1": ("X", 1.0), "A2": ("X", 1.5), "A3": ("Y", 2.0)}  # brand, price


def day(k: int) -> date:
    return START + timedelta(days=k)


def purchase(basket, customer, k, product, units=1):
    brand, price = PRODUCTS[product]
    return (basket, customer, product, "A", brand, day(k), units, price, True)


def toy_market() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(purchases, occasions, options) of the module docstring's toy market."""
    rows = [
        purchase("p1", "c9", -1, "A1"),
        purchase("p2", "c9", -1, "A1"),
        purchase("p3", "c9", -2, "A1"),
        purchase("p4", "c8", -3, "A2"),
        purchase("p5", "c1", -5, "A3"),
        purchase("p6", "c1", -4, "A1"),
    ]
    occ = []
    for k in range(DAYS):
        for i, c in enumerate(CUSTOMERS):
            product = f"A{(k + i + 1) % 3 + 1}"  # the table above
            units = 2 if (k, c) == (2, "c2") else 1
            rows.append(purchase(f"o{k}{c}", c, k, product, units))
            occ.append((f"o{k}{c}", f"o{k}{c}", c, "A", day(k), product, units))
    rows.append(purchase("o2c2", "c2", 2, "A3"))  # the basket's other product of A: background
    cols = ["basket_id", "customer_id", "product_id", "category", "brand", "day", "units", "unit_price"]
    purchases = pl.DataFrame(rows, schema=[*cols, "is_merchandise"], orient="row")
    occasions = pl.DataFrame(
        occ,
        schema=[
            "occasion_id",
            "basket_id",
            "customer_id",
            "category",
            "day",
            "actual_product_id",
            "actual_quantity",
        ],
        orient="row",
    )
    options = pl.DataFrame(
        [(o[0], p, PRODUCTS[p][1]) for o in occ for p in PRODUCTS],
        schema=["occasion_id", "product_id", "price"],
        orient="row",
    ).with_columns(
        pl.lit(0, pl.Int64).alias("pop_28d"),
        pl.lit(0, pl.Int64).alias("pop_total"),
        pl.lit(False).alias("is_new"),
        pl.lit(0, pl.Int64).alias("cust_product_purchases"),
        pl.lit(0, pl.Int64).alias("cust_brand_purchases"),
        pl.lit(None, pl.Float64).alias("days_since_cust_purchase"),
        pl.lit(None, pl.Float64).alias("ref_price"),
        pl.lit(0.0).alias("ref_price_gap"),
        pl.lit(None, pl.Float64).alias("cust_mean_qty"),
        pl.lit(None, pl.Float64).alias("prod_mean_qty_28d"),
    )
    # the observed features: the signals of the observed state with the observed choices (test (c) checks this
    # reading against the features SQL on a warehouse)
    state, history = mf.observed_state(purchases, occasions, history_days=W)
    options = mf.signals_from_state(options, occasions, state, history, own_history=True)
    return purchases, occasions, options


class PopLogit(ChoiceEngine):
    """u = beta log1p(pop_28d) + gamma log1p(cust_product_purchases), OTHER 0, one unit; keeps what it saw."""

    name = "pop_logit"

    def __init__(self, beta: float, gamma: float = 0.0):
        self.beta, self.gamma, self.seen = beta, gamma, []

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        self.seen.append(options)
        feat = self.beta * pl.col("pop_28d").cast(pl.Float64).log1p()
        feat = feat + self.gamma * pl.col("cust_product_purchases").cast(pl.Float64).log1p()
        u = pl.when(pl.col("product_id") == OTHER).then(0.0).otherwise(feat)
        return options.select("occasion_id", "product_id", utility=u).with_columns(
            prob=pl.col("utility").exp() / pl.col("utility").exp().sum().over("occasion_id"),
            expected_qty=pl.lit(1.0),
        )


def reference_fixed_point(
    purchases: pl.DataFrame,
    occasions: pl.DataFrame,
    beta: float,
    weight: float = 1.0,
    seed: int | None = None,
) -> dict:
    """The exact fixed point in plain Python: days in order, each occasion's probabilities from the purchases
    of days d - W .. d - 1 (observed before the period and outside the occasions, simulated inside), each
    occasion counting `weight` times. seed: sample mode, the occasion's one draw (uniform_of) instead."""
    heads = set(zip(occasions["basket_id"], occasions["actual_product_id"], strict=True))
    counts: dict = defaultdict(float)
    for b, p, d in purchases.select("basket_id", "product_id", "day").iter_rows():
        if (b, p) not in heads:
            counts[(p, d)] += 1.0
    for o in occasions.sort("day").iter_rows(named=True):
        d = o["day"]
        pops = {p: sum(counts[(p, d - timedelta(days=j))] for j in range(1, W + 1)) for p in PRODUCTS}
        expu = {p: math.exp(beta * math.log1p(v)) for p, v in pops.items()}
        total = sum(expu.values()) + 1.0  # OTHER: exp(0)
        probs = {p: e / total for p, e in expu.items()}
        if seed is not None:
            pick = draw({**probs, OTHER: 1.0 / total}, uniform_of(seed, o["occasion_id"]))
            probs = {p: float(p == pick) for p in PRODUCTS}
        for p, q in probs.items():
            counts[(p, d)] += weight * q
    return {k: v for k, v in counts.items() if k[1] >= START and v > 0}


def uniform_of(seed: int, occasion_id: str) -> float:
    """The module docstring's common random number, written out: md5("{seed}|{occasion_id}"), 13 hex digits."""
    return int(hashlib.md5(f"{seed}|{occasion_id}".encode()).hexdigest()[:13], 16) / 16**13


def draw(probs: dict, u: float) -> str:
    """Inverse CDF in product_id order (as text: "other" after "A3"): the first option whose cumulative prob
    exceeds u x the total."""
    cum, keys = [], sorted(probs)
    for k in keys:
        cum.append((cum[-1] if cum else 0.0) + probs[k])
    return next(k for k, c in zip(keys, cum, strict=True) if c > u * cum[-1] or c >= cum[-1])


def as_dict(state: pl.DataFrame) -> dict:
    return {(p, d): v for p, d, v in state.select("product_id", "day", "purchases").iter_rows() if v > 0}


def max_gap(a: dict, b: dict) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) / max(1.0, b.get(k, 0.0)) for k in set(a) | set(b))


def test_observed_state_and_background():
    purchases, occasions, _ = toy_market()
    state, history = mf.observed_state(purchases, occasions, history_days=W)
    assert (history.start, history.end) == (START, day(DAYS))
    got = as_dict(state)
    assert got[("A3", day(2))] == 2.0  # o2c3's actual A3 and o2c2's background A3
    assert sum(got.values()) == 3 * DAYS + 1
    assert as_dict(history.background) == {("A3", day(2)): 1.0}
    assert history.heads.height == occasions.height and (history.heads["prob"] == 1.0).all()
    assert state.filter((pl.col("product_id") == "A3") & (pl.col("day") == day(2)))["units"].item() == 2.0
    # a missing actual purchase is an error, never a silent double count
    with pytest.raises(ValueError, match="not in the purchases"):
        mf.observed_state(purchases.filter(pl.col("basket_id") != "o0c1"), occasions, history_days=W)


def test_converges_to_the_fixed_point():
    """(a) positive feedback: converged below epsilon, m* = the plain forward fixed point, and m* = F(m*)."""
    purchases, occasions, options = toy_market()
    state0, history = mf.observed_state(purchases, occasions, history_days=W)
    engine = PopLogit(beta=1.5)
    res = mf.run_mean_field(
        engine, options, occasions, history, alpha=0.5, epsilon=1e-6, max_iter=80, log=lambda s: None
    )
    ref = reference_fixed_point(purchases, occasions, beta=1.5)
    assert res.converged and res.residuals[-1] < 1e-6 and res.iterations == len(res.residuals)
    assert max_gap(as_dict(state0), ref) > 0.3  # the observed state is far from it: the loop had work to do
    assert max_gap(as_dict(res.state), ref) < 1e-5
    # F(m*) through the public functions
    opts = with_other_rows(options)
    f = mf.state_of(
        engine.decide(mf.signals_from_state(opts, occasions, res.state, history)), occasions, history
    )
    assert fixed_point_residual(f, res.state) < 1e-5
    # the residual is the protocol's: max |m_k+1 - m_k| / max(1, m_k), and it decreased to below epsilon
    assert res.residuals[0] > 0.1 and res.residuals[-1] < res.residuals[0]
    assert len(res.seconds) == len(res.signal_seconds) == res.iterations


def test_undamped_is_exact_after_the_days_damping_only_slows():
    """(b) a strong negative feedback (beta = -4: sold out of favour). Signals read days < d only, so the map is
    causal: undamped (alpha = 1) iteration is exact after at most DAYS + 1 passes; damping reaches the same
    fixed point, more slowly. Damping cannot beat alpha = 1 here (the module docstring says why)."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    ref = reference_fixed_point(purchases, occasions, beta=-4.0)
    quiet = {"log": lambda s: None, "epsilon": 1e-9, "max_iter": 100}
    undamped = mf.run_mean_field(PopLogit(-4.0), options, occasions, history, alpha=1.0, **quiet)
    damped = mf.run_mean_field(PopLogit(-4.0), options, occasions, history, alpha=0.5, **quiet)
    assert undamped.converged and undamped.iterations <= DAYS + 1 and undamped.residuals[-1] < 1e-12
    assert damped.converged and damped.iterations > 2 * undamped.iterations
    assert max_gap(as_dict(undamped.state), ref) < 1e-9 and max_gap(as_dict(damped.state), ref) < 1e-7


def test_signals_reproduce_the_features_sql(tmp_path):
    """(c) with the observed state, the recomputed columns are option_features' (market_options) exactly; and a
    purchase added to m moves the windows that hold its day, no other."""
    from assets.market.occasions import build_market_occasions

    conn = make_warehouse(tmp_path / "w.duckdb")
    build_market_occasions(conn)
    occasions = conn.sql("select * from market_occasions").pl()
    options = conn.sql("select * from market_options").pl()
    state, history = mf.observed_state(conn, occasions)
    conn.close()
    assert options.height > 50
    for own in (False, True):
        got = mf.signals_from_state(options, occasions, state, history, own_history=own)
        assert got.columns == options.columns and got.select("occasion_id", "product_id").equals(
            options.select("occasion_id", "product_id")
        )
        for col in mf.MARKET_COLUMNS + mf.OWN_COLUMNS:
            a, b = options[col], got[col]
            if col in ("pop_28d", "pop_total", "is_new", "cust_product_purchases", "cust_brand_purchases"):
                assert a.cast(b.dtype).equals(b), (own, col)  # counts: exactly
            else:
                assert a.is_null().equals(b.is_null()), (own, col)
                assert ((a - b).abs().fill_null(0.0) < 1e-12).all(), (own, col)
    # +2.5 purchases of A10 on day 59 (inside the period, which starts on day 45) and +7 on day 31 (before it:
    # the observed history is used there, never the state): exactly the A10 options whose window holds day 59
    # gain 2.5 in pop_28d, those after day 59 in pop_total; nothing else moves
    d59, d31 = (date(2024, 1, 1) + timedelta(days=n) for n in (59, 31))
    extra = pl.DataFrame(
        {
            "product_id": ["A10", "A10"],
            "day": [d59, d31],
            "purchases": [2.5, 7.0],
            "units": [2.5, 7.0],
            "unit_price_sum": [5.0, 14.0],
        }
    )
    moved = mf.signals_from_state(options, occasions, pl.concat([state, extra]), history)
    base = mf.signals_from_state(options, occasions, state, history)
    d = base.join(occasions.select("occasion_id", "day"), on="occasion_id", maintain_order="left")["day"]
    a10 = base["product_id"] == "A10"
    in_window = a10 & (d > d59) & (d <= d59 + timedelta(days=W28))
    assert in_window.sum() >= 1 and (a10 & (d <= d59)).sum() >= 1  # t60|A and c4's day-60 occasions; 45, 55
    assert (moved["pop_28d"] - base["pop_28d"]).to_list() == [2.5 if w else 0.0 for w in in_window]
    assert (moved["pop_total"] - base["pop_total"]).to_list() == [2.5 if x else 0.0 for x in a10 & (d > d59)]
    row = moved.filter((pl.col("occasion_id") == "t60|A") & (pl.col("product_id") == "A10"))
    assert row.select("pop_28d", "pop_total").row(0) == (4 + 2.5, 4 + 2.5)  # c2's days 35, 40, 45, 55


def test_own_history_switch():
    """(d) own_history follows the simulated choices for the customer's later occasions; without it, no."""
    purchases, occasions, options = toy_market()
    state, history = mf.observed_state(purchases, occasions, history_days=W)
    # o1c1 (c1, day 1) actually bought A3; simulate it as A2 0.55, A3 0.3 (at a paid price of 2.4), OTHER 0.15
    # with 2 units each but A2's 1; every other occasion as observed
    sim = history.heads.filter(pl.col("occasion_id") != "o1c1").vstack(
        pl.DataFrame(
            {
                "occasion_id": ["o1c1"] * 3,
                "product_id": ["A2", "A3", OTHER],
                "prob": [0.55, 0.3, 0.15],
                "units": [0.55, 0.6, 0.3],
                "unit_price_sum": [0.55 * 1.5, 0.3 * 2.4, 0.0],
            }
        )
    )

    def at(frame, occasion, product, col):
        return frame.filter((pl.col("occasion_id") == occasion) & (pl.col("product_id") == product))[
            col
        ].item()

    off = mf.signals_from_state(options, occasions, state, history, choices=sim, own_history=False)
    on = mf.signals_from_state(options, occasions, state, history, choices=sim, own_history=True)
    assert off.equals(
        options
    )  # the switch off: observed own columns (and the observed state: observed market)
    # c1 before day 3: A3 (day -5), A1 (-4), A2 (day 0), o1c1 (day 1: observed A3), A1 (day 2)
    observed = [at(options, "o3c1", p, "cust_product_purchases") for p in PRODUCTS]
    assert observed == [2.0, 1.0, 2.0]
    assert [at(on, "o3c1", p, "cust_product_purchases") for p in PRODUCTS] == pytest.approx([2.0, 1.55, 1.3])
    assert at(on, "o3c1", "A3", "cust_brand_purchases") == pytest.approx(1.3)  # brand Y: A3 only
    assert at(on, "o3c1", "A1", "cust_brand_purchases") == pytest.approx(3.55)  # brand X: A1 x2 + A2 x1.55
    # the last purchase day: A3's is day -5 now (0.3 < 0.5 on day 1), A2's day 1 (0.55)
    assert [at(options, "o3c1", p, "days_since_cust_purchase") for p in ("A2", "A3")] == [3.0, 2.0]
    assert [at(on, "o3c1", p, "days_since_cust_purchase") for p in ("A2", "A3")] == [2.0, 8.0]
    # the category: 5 purchases and 5 units observed before day 3; simulated, o1c1 is 1 purchase of 1.45 units
    assert at(options, "o3c1", "A1", "cust_mean_qty") == 1.0
    assert at(on, "o3c1", "A1", "cust_mean_qty") == pytest.approx(5.45 / 5)
    assert at(on, "o3c1", "A3", "ref_price") == pytest.approx((2.0 + 0.3 * 2.4) / 1.3)  # prob-weighted
    assert at(on, "o3c1", "A3", "ref_price_gap") == pytest.approx(2.0 / ((2.0 + 0.72) / 1.3) - 1)
    # o1c1's own day and the other customers do not see its choices
    for o in ("o1c1", "o3c2", "o5c3"):
        assert on.filter(pl.col("occasion_id") == o).equals(options.filter(pl.col("occasion_id") == o)), o
    # and through the loop: an engine that reads habit decides differently with the switch on
    eng = {k: PopLogit(beta=0.5, gamma=2.0) for k in (False, True)}
    quiet = {"log": lambda s: None, "epsilon": 1e-6, "max_iter": 60}
    runs = {k: mf.run_mean_field(eng[k], options, occasions, history, own_history=k, **quiet) for k in eng}
    assert runs[True].converged and runs[False].converged
    diff = runs[True].decisions.join(runs[False].decisions, on=["occasion_id", "product_id"])
    assert (diff["prob"] - diff["prob_right"]).abs().max() > 0.01
    # the first occasion of every customer has no earlier simulated choice: identical either way
    first = diff.filter(pl.col("occasion_id").str.starts_with("o0"))
    assert (first["prob"] - first["prob_right"]).abs().max() < 1e-12


def test_without_mean_field_the_options_are_unchanged(tmp_path):
    """(e) mean_field=False: one engine pass on the options as given; with it, the first pass also sees them
    (m_0 = observed), later passes see the recomputed signals."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    engine = PopLogit(beta=1.5)
    res = mf.run_mean_field(engine, options, occasions, history, mean_field=False, log=lambda s: None)
    assert len(engine.seen) == 1 and engine.seen[0].equals(with_other_rows(options))
    assert res.iterations == 0 and res.residuals == [] and not res.converged
    engine = PopLogit(beta=1.5)
    res = mf.run_mean_field(engine, options, occasions, history, max_iter=3, log=lambda s: None)
    assert engine.seen[0].equals(with_other_rows(options))
    assert not engine.seen[1]["pop_28d"].equals(engine.seen[0]["pop_28d"])
    png = mf.plot_residuals(res, tmp_path / "plots" / "residuals.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = res.metadata()
    assert (
        meta["iterations"] == 3
        and meta["final_residual"] == res.residuals[-1]
        and len(meta["residuals"]) == 3
    )


QUIET = {"log": lambda s: None}


def test_sample_mode_draws_one_option_by_the_occasions_uniform():
    """(f) sample mode without the mean field: one draw per occasion by inverse CDF with the occasion's md5
    uniform; prob one-hot, the engine's prob in prob_model, the rows and their order kept; the same seed gives
    the same draws, other seeds other draws; sample_seed=None keeps expected mode's frame (no prob_model)."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    engine = PopLogit(beta=1.5)
    expected = mf.run_mean_field(engine, options, occasions, history, mean_field=False, **QUIET).decisions
    assert expected.columns == list(DECISIONS_SCHEMA)
    u = mf.occasion_uniforms(occasions["occasion_id"], 7)
    assert u["_u"].to_list() == [uniform_of(7, o) for o in occasions["occasion_id"]]
    assert ((u["_u"] >= 0) & (u["_u"] < 1)).all()
    picks = {}
    for seed in (7, 7, 8, 9):
        res = mf.run_mean_field(
            engine, options, occasions, history, mean_field=False, sample_seed=seed, **QUIET
        )
        d = res.decisions
        assert d.columns == [*DECISIONS_SCHEMA, "prob_model"] and res.sample_seed == seed
        assert d.select("occasion_id", "product_id").equals(expected.select("occasion_id", "product_id"))
        assert d["prob_model"].equals(expected["prob"]) and d["expected_qty"].equals(expected["expected_qty"])
        assert set(d["prob"].to_list()) == {0.0, 1.0}
        assert (
            d.group_by("occasion_id").agg(pl.col("prob").sum())["prob"].to_list() == [1.0] * occasions.height
        )
        for o, part in d.partition_by("occasion_id", as_dict=True).items():
            probs = dict(zip(part["product_id"], part["prob_model"], strict=True))
            assert part.filter(pl.col("prob") == 1.0)["product_id"].item() == draw(
                probs, uniform_of(seed, o[0])
            )
        picks.setdefault(seed, []).append(d.filter(pl.col("prob") == 1.0).sort("occasion_id")["product_id"])
    assert picks[7][0].equals(picks[7][1])
    assert not picks[7][0].equals(picks[8][0]) and not picks[8][0].equals(picks[9][0])
    # the state is that of the draws: one purchase per occasion on its drawn product (OTHER left out)
    res = mf.run_mean_field(engine, options, occasions, history, mean_field=False, sample_seed=7, **QUIET)
    inside = res.state.join(history.background, on=["product_id", "day"], how="left")
    n_other = (picks[7][0] == OTHER).sum()
    assert (
        inside["purchases"].sum() - inside["purchases_right"].fill_null(0.0).sum()
        == occasions.height - n_other
    )


@pytest.mark.parametrize("beta", [1.5, -4.0])
def test_sample_mode_undamped_is_the_exact_forward_fixed_point(beta):
    """(g) the uniforms are common random numbers, so a pass is a deterministic map; the signals are causal, so
    alpha = 1 reaches the sampled market's exact fixed point (a forward pass drawing day by day with the same
    uniforms) within DAYS + 1 passes, with residual exactly 0; the feedback changes draws."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    moved = 0
    for seed in (0, 1, 2, 3):
        engine = PopLogit(beta)
        res = mf.run_mean_field(
            engine,
            options,
            occasions,
            history,
            alpha=1.0,
            epsilon=1e-9,
            max_iter=50,
            sample_seed=seed,
            **QUIET,
        )
        assert res.converged and res.iterations <= DAYS + 1 and res.residuals[-1] == 0.0
        ref = reference_fixed_point(purchases, occasions, beta, seed=seed)
        assert max_gap(as_dict(res.state), ref) < 1e-12
        # the decisions are the draws at the fixed point's signals: prob_model is the engine's there
        again = engine.decide(mf.signals_from_state(with_other_rows(options), occasions, res.state, history))
        both = res.decisions.join(again, on=["occasion_id", "product_id"])
        assert (both["prob_model"] - both["prob_right"]).abs().max() < 1e-12
        once = mf.run_mean_field(
            PopLogit(beta), options, occasions, history, mean_field=False, sample_seed=seed
        )
        moved += (once.decisions["prob"] != res.decisions["prob"]).sum()
    assert moved > 0  # the loop had work to do: the observed signals draw differently


def test_sample_mode_damping_damps_the_state_not_the_draws():
    """(h) alpha = 0.5 in sample mode: the state is a damped mix of one-hot draws (fractional on the way), the
    returned decisions are one-hot, and it ends at the undamped fixed point, more slowly."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    run = {"epsilon": 1e-9, "max_iter": 100, "sample_seed": 3, **QUIET}
    undamped = mf.run_mean_field(PopLogit(-4.0), options, occasions, history, alpha=1.0, **run)
    two = mf.run_mean_field(PopLogit(-4.0), options, occasions, history, alpha=0.5, **{**run, "max_iter": 2})
    damped = mf.run_mean_field(PopLogit(-4.0), options, occasions, history, alpha=0.5, **run)
    assert set(two.decisions["prob"].to_list()) == {0.0, 1.0}
    frac = two.state["purchases"] - two.state["purchases"].round(0)
    assert frac.abs().max() > 0.1  # after two damped passes the state is a mix of draws
    assert damped.converged and damped.iterations > 2 * undamped.iterations
    assert damped.decisions["prob"].equals(undamped.decisions["prob"])
    assert max_gap(as_dict(damped.state), as_dict(undamped.state)) < 1e-7


def test_weights_count_each_occasion_in_the_market_state():
    """(i) weights: each occasion's simulated purchases count `weight` times in the market state that feeds the
    signals (the fixed point moves: a forward pass with weight 2 is the reference); the background and the
    pre-period stay observed; the customer's own history counts once; a bad weights frame is an error."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    two = occasions.select("occasion_id", weight=pl.lit(2.0))
    quiet = {"epsilon": 1e-9, "max_iter": 50, **QUIET}
    # without the mean field: the state is the background plus twice the occasions' part
    once = mf.run_mean_field(
        PopLogit(1.5), options, occasions, history, mean_field=False, weights=two, **QUIET
    )
    part = mf.state_of(once.decisions, occasions, options=with_other_rows(options))
    want = pl.concat([history.background, part.with_columns(pl.col(mf.VALUES) * 2.0)])
    want = want.group_by("product_id", "day").agg(pl.col(mf.VALUES).sum())
    assert fixed_point_residual(once.state, want) < 1e-12
    assert fixed_point_residual(*(f.with_columns(units="purchases") for f in (once.state, want))) < 1e-12
    # with the mean field, expected and sample mode: the weighted forward pass
    for seed in (None, 4):
        res = mf.run_mean_field(
            PopLogit(1.5), options, occasions, history, alpha=1.0, weights=two, sample_seed=seed, **quiet
        )
        ref2 = reference_fixed_point(purchases, occasions, 1.5, weight=2.0, seed=seed)
        ref1 = reference_fixed_point(purchases, occasions, 1.5, weight=1.0, seed=seed)
        assert res.converged and max_gap(as_dict(res.state), ref2) < 1e-9
        assert max_gap(ref2, ref1) > 0.5  # ignoring the weights would miss it by far
    plain = mf.run_mean_field(PopLogit(1.5), options, occasions, history, alpha=1.0, **quiet)
    ones = two.with_columns(weight=pl.lit(1.0))
    unit = mf.run_mean_field(PopLogit(1.5), options, occasions, history, alpha=1.0, weights=ones, **quiet)
    assert plain.state.equals(unit.state)
    # an engine that reads only the customer's own history decides the same with any weights
    own = {"alpha": 1.0, "own_history": True, **quiet}
    runs = [
        mf.run_mean_field(PopLogit(0.0, gamma=2.0), options, occasions, history, weights=w, **own)
        for w in (None, two)
    ]
    assert runs[0].converged and runs[1].converged
    both = runs[0].decisions.join(runs[1].decisions, on=["occasion_id", "product_id"])
    assert both.height == runs[0].decisions.height and (both["prob"] - both["prob_right"]).abs().max() < 1e-12
    for bad, msg in (
        (two.head(5), "have no weight"),
        (two.with_columns(weight=pl.lit(-1.0)), "negative"),
        (pl.concat([two, two.head(1)]), "repeat"),
        (two.rename({"weight": "w"}), "lack columns"),
    ):
        with pytest.raises(ValueError, match=msg):
            mf.run_mean_field(PopLogit(1.5), options, occasions, history, weights=bad, **QUIET)


@pytest.fixture(scope="module")
def synthetic_market(tmp_path_factory):
    """The default synthetic market (300 customers) through the features stage and build_market_occasions, as
    tests/test_market_occasions.py's fixture builds it: (occasions, options, observed state, history)."""
    import duckdb as ddb

    from assets.features import logic as features
    from assets.market.occasions import build_market_occasions
    from assets.synthetic.generator import SynthConfig, generate_market

    root = tmp_path_factory.mktemp("synth_mf")
    generate_market(root / "synth", SynthConfig())
    conn = ddb.connect(str(root / "s.duckdb"))
    tx, pr = (str(root / "synth" / f"{n}.parquet") for n in ("transactions", "products"))
    conn.execute("create table raw_transactions as select * from read_parquet($f)", {"f": tx})
    conn.execute(
        "create table products as select product_id, category, brand, true as is_merchandise from read_parquet($f)",
        {"f": pr},
    )
    features.configure_connection(conn, threads=2, memory_limit="2GB")
    features.build_decision_episodes(conn)
    features.build_option_features(conn)
    features.build_episode_splits(conn)
    build_market_occasions(conn)
    occasions = conn.sql("select * from market_occasions").pl()
    options = conn.sql("select * from market_options").pl()
    state, history = mf.observed_state(conn, occasions)
    conn.close()
    return occasions, options, state, history


def test_synthetic_market_signals_and_timing(synthetic_market):
    """(c) at scale: on the synthetic market's test period the observed state reproduces every recomputed
    column of market_options (both switches); the seconds of one recomputation are printed."""
    occasions, options, state, history = synthetic_market
    assert occasions.height > 3000 and options.height > 40_000
    for own in (False, True):
        start = time.perf_counter()
        got = mf.signals_from_state(options, occasions, state, history, own_history=own)
        seconds = time.perf_counter() - start
        print(f"\nsignals_from_state own_history={own}: {seconds:.3f} s for {options.height} options")
        for col in mf.MARKET_COLUMNS + mf.OWN_COLUMNS:
            a, b = options[col].cast(got[col].dtype), got[col]
            assert a.is_null().equals(b.is_null()), (own, col)
            if b.dtype == pl.Boolean:
                assert a.equals(b), (own, col)
            else:
                assert ((a - b).abs().fill_null(0.0) <= 1e-12 * (1.0 + a.abs().fill_null(0.0))).all(), (
                    own,
                    col,
                )
    # a full pass of the loop with the toy engine: the popularity feedback moves the state off the observed one
    res = mf.run_mean_field(PopLogit(beta=0.8), options, occasions, history, max_iter=2, log=print)
    assert res.iterations == 2 and res.residuals[0] > 0.01
    print(
        f"mean field on {options.height} options: seconds per iteration {[round(s, 2) for s in res.seconds]}"
    )
