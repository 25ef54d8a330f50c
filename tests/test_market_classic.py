"""The classic engines of the market simulation (assets/market/classic.py).

Two warehouses: the hand-made one of tests/test_market_occasions.py (make_warehouse: plumbing, persistence and
quantities worked out by hand) and its synthetic market (the `synthetic` fixture: 300 customers, 52 weeks), where
the fitted models mean something (price, scenario products, the end-to-end first look).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from assets.evaluation.baselines import BaselineSettings
from assets.evaluation.clogit import ClogitResult
from assets.evaluation.options import feature_names
from assets.market import classic, metrics
from assets.market.classic import (
    ClassicEngine,
    OtherQuantity,
    PersistenceEngine,
    fit_classic_engines,
    fit_other_constant,
    fit_scale_and_other,
    load_market_actuals,
    load_market_frame,
)
from assets.market.engine import check_decisions
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions
from tests.test_market_occasions import make_warehouse, synthetic  # noqa: F401 - synthetic is a fixture

KEYS = ["occasion_id", "product_id"]
FEATURE_COLUMNS = [  # the option_features columns the models read (select_fit_options.sql)
    "pop_28d",
    "pop_total",
    "is_new",
    "cust_product_purchases",
    "cust_brand_purchases",
    "cust_category_purchases",
    "days_since_cust_purchase",
    "discount_depth",
    "log_price",
    "rel_price",
    "ref_price_gap",
]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The hand-made warehouse with its test market built, and engines fitted on it (tiny: degenerate fits)."""
    c = make_warehouse(tmp_path_factory.mktemp("classic") / "w.duckdb")
    build_market_occasions(c)
    before = c.sql("select * from market_options order by all").pl()
    engines = fit_classic_engines(c, settings=BaselineSettings(lgbm_min_data_in_leaf=1), log=lambda _: None)
    after = c.sql("select * from market_options order by all").pl()
    yield c, engines, before.equals(after, null_equal=True)
    c.close()


def test_engines_keep_the_interface_on_the_small_warehouse(small):
    c, engines, restored = small
    assert restored  # fitting built the val market and put the test market back
    assert set(engines) == {"clogit", "clogit6", "lgbm", "persistence"}
    frame = load_market_frame(c)
    assert frame.filter(pl.col("product_id") == OTHER).height == 15  # one OTHER row per occasion
    for name, engine in engines.items():
        d = engine.decide(frame)
        check_decisions(frame, d)
        assert engine.name == name and d.height == frame.height
    # without the OTHER rows the engines add them (the interface's with_other_rows)
    bare = frame.filter(pl.col("product_id") != OTHER)
    d = engines["clogit6"].decide(bare)
    assert d.filter(pl.col("product_id") == OTHER).height == 15
    check_decisions(frame, d)


def test_quantities(small):
    c, engines, _ = small
    frame = load_market_frame(c)
    d = engines["clogit6"].decide(frame).filter(pl.col("occasion_id") == "t60|A")
    qty = dict(zip(d["product_id"], d["expected_qty"], strict=True))
    # c1's purchases of A before day 60: 14 units in 10 purchases (A04's two lines are one purchase of 5)
    assert all(q == pytest.approx(1.4) for p, q in qty.items() if p != OTHER)
    # OTHER: A's units per purchase in days 32..59 (15 purchases of one unit; wholesale is not retail)
    assert qty[OTHER] == pytest.approx(1.0)
    # bB50|B (c2, day 50): c2 bought B1 once before (day 20): cust_mean_qty 1; B's window 22..49: 3 units in 3
    d = engines["clogit"].decide(frame).filter(pl.col("occasion_id") == "bB80|B")
    # c2 before day 80: B1 (day 20, 1 unit), B1 (day 50, 2 units): 1.5; B's days 52..79: B2 1, B3 1 -> 1.0
    qty = dict(zip(d["product_id"], d["expected_qty"], strict=True))
    assert qty["B1"] == pytest.approx(1.5) and qty[OTHER] == pytest.approx(1.0)
    # the rule: cust_mean_qty, else prod_mean_qty_28d, else 1 (not rounded); non-positive reads 1
    rows = pl.DataFrame(
        {"cust_mean_qty": [1.6, None, None, None], "prod_mean_qty_28d": [3.0, 2.4, None, 0.0]},
        schema={"cust_mean_qty": pl.Float64, "prod_mean_qty_28d": pl.Float64},
    )
    assert rows.select(classic.product_qty())["cust_mean_qty"].to_list() == [1.6, 2.4, 1.0, 1.0]
    # OTHER's quantity: the window, else the val mean of the category, else the overall val mean
    hist = pl.DataFrame(
        {
            "category": ["X", "X", "X"],
            "day": pl.Series(["2024-01-01", "2024-01-20", "2024-02-01"]).str.to_date(),
            "units": [4.0, 6.0, 100.0],
            "purchases": [2.0, 2.0, 1.0],
        }
    )
    oq = OtherQuantity(hist, {"X": 7.0, "Y": 3.0}, overall=2.5, window=28)
    occ = pl.DataFrame(
        {
            "occasion_id": ["a", "b", "c", "d"],
            "category": ["X", "X", "Y", "Z"],
            "day": pl.Series(["2024-01-25", "2024-03-30", "2024-01-25", "2024-01-25"]).str.to_date(),
        }
    )
    # a: days 2023-12-28..2024-01-24 hold 10 units in 4 purchases; b: nothing in the window -> X's 7.0
    assert oq.per_occasion(occ).to_list() == [2.5, 7.0, 3.0, 2.5]


def test_persistence_engine_equals_metrics_persistence(small):
    c, engines, _ = small
    frame = load_market_frame(c)
    d = engines["persistence"].decide(frame)
    occ = c.sql("select occasion_id, category, day from market_occasions").pl()
    opts = c.sql("select occasion_id, product_id from market_options").pl()
    hist = c.sql(
        "select category, product_id, day, sum(units) as units, count(*) as purchases from episode_purchases "
        "where is_merchandise group by all"
    ).pl()
    want = metrics.persistence(occ, opts, hist).select(*KEYS, "prob", "expected_qty").sort(KEYS)
    got = d.select(*KEYS, "prob", "expected_qty").sort(KEYS)
    assert got.equals(want)
    assert d["utility"].is_nan().all()
    # by hand: A's 15 purchases of one unit in days 32..59; A10 4, A01 3; c1's own A03 none
    p = dict(zip(*d.filter(pl.col("occasion_id") == "t60|A").select("product_id", "prob"), strict=True))
    assert p["A10"] == pytest.approx(4 / 15) and p["A01"] == pytest.approx(3 / 15) and p["A03"] == 0.0
    with pytest.raises(ValueError, match="category and day"):
        PersistenceEngine(engines["persistence"].history).decide(frame.drop("category", "day"))


# ------------------------------------------------------------------ OTHER's constant on simulated data


def simulate_market(rng, n: int, alpha: dict[str, float], beta: float = -1.0, scale: float = 1.0):
    """n occasions of 0..8 options with log_price ~ N(0, 1) (utility = beta x log_price), the OTHER constant of
    the occasion's category; choices drawn from the softmax. Returns (options, actual)."""
    cats = list(alpha)
    rows, actual = [], []
    for g in range(n):
        cat = cats[g % len(cats)]
        k = int(rng.integers(0, 9))
        x = rng.normal(size=k)
        u = np.append(scale * beta * x, alpha[cat])
        p = np.exp(u - u.max())
        pick = int(rng.choice(k + 1, p=p / p.sum()))
        oid = f"o{g:06d}"
        rows += [
            {"occasion_id": oid, "product_id": f"p{j}", "log_price": x[j], "category": cat} for j in range(k)
        ]
        rows.append({"occasion_id": oid, "product_id": OTHER, "log_price": None, "category": cat})
        actual.append({"occasion_id": oid, "product_id": OTHER if pick == k else f"p{pick}"})
    # every other feature of the models unknown (null: read as 0, rel_price as 1)
    nulls = [c for c in FEATURE_COLUMNS if c != "log_price"]
    options = pl.DataFrame(rows).with_columns(pl.lit(None, pl.Float64).alias(c) for c in nulls)
    return options, pl.DataFrame(actual)


def test_other_constant_recovered_on_simulated_data():
    rng = np.random.default_rng(7)
    truth = {"a": -1.0, "b": 0.5, "c": 1.5}
    options, actual = simulate_market(rng, 30_000, truth)
    # the engine's path: a conditional logit with a known coefficient (log_price -1, every other feature 0)
    names = feature_names()
    coef = np.array([-1.0 if n == "log_price" else 0.0 for n in names])
    model = ClogitResult(coef, None, 0.0, 0, names, True)
    engine = ClassicEngine("clogit", model).fit_other(options, actual, prior_sd=1.0)
    for cat, a in truth.items():  # about 10,000 occasions each: a standard error near 0.03
        assert engine.other_by_category[cat] == pytest.approx(a, abs=0.1)
    assert -1.0 < engine.other_constant < 1.5
    # the same with a single category: the global constant itself
    options, actual = simulate_market(rng, 20_000, {"only": -0.7})
    engine = ClassicEngine("clogit", model).fit_other(options, actual)
    assert engine.other_constant == pytest.approx(-0.7, abs=0.08)
    # decide() then gives OTHER the fitted share: predicted P(OTHER) summed ~ OTHER chosen
    d = engine.decide(options)
    n_other = actual.filter(pl.col("product_id") == OTHER).height
    assert d.filter(pl.col("product_id") == OTHER)["prob"].sum() == pytest.approx(n_other, rel=0.02)


def test_other_constant_function_and_prior():
    rng = np.random.default_rng(3)
    n = 50_000
    lse = rng.normal(1.0, 1.5, size=n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-(-2.0 - lse)))
    a0, by_cat = fit_other_constant(lse, y)
    assert a0 == pytest.approx(-2.0, abs=0.06) and by_cat == {}
    # empty sets (-inf) carry no information; a category that never chose OTHER stays finite, below the global
    lse2 = np.concatenate([lse, [-np.inf] * 100, rng.normal(1.0, 1.5, size=30)])
    y2 = np.concatenate([y, [True] * 100, [False] * 30])
    cats = ["main"] * n + ["empty"] * 100 + ["never"] * 30
    a0b, by_cat = fit_other_constant(lse2, y2, cats, prior_sd=1.0)
    assert a0b == pytest.approx(a0, abs=0.01) and "empty" not in by_cat
    assert a0 - 3.0 < by_cat["never"] < a0 and by_cat["main"] == pytest.approx(a0, abs=0.01)
    assert fit_other_constant([], []) == (0.0, {})


def test_lgbm_scale_and_other_recovered():
    """lgbm: the softmax temperature of its scores and OTHER's constant, jointly by maximum likelihood."""
    rng = np.random.default_rng(11)
    options, actual = simulate_market(rng, 20_000, {"x": -0.3}, beta=1.0, scale=1.8)
    opts = options.join(actual.rename({"product_id": "act"}), on="occasion_id").sort(KEYS)
    is_other = (opts["product_id"] == OTHER).to_numpy()
    occ = opts["occasion_id"]
    starts = np.flatnonzero((occ != occ.shift(1)).fill_null(True).to_numpy())
    offsets = np.append(starts, opts.height)
    chosen = np.flatnonzero((opts["product_id"] == opts["act"]).to_numpy())
    inv_t, a = fit_scale_and_other(opts["log_price"].fill_null(0.0).to_numpy(), offsets, is_other, chosen)
    assert inv_t == pytest.approx(1.8, abs=0.1) and a == pytest.approx(-0.3, abs=0.1)


# ------------------------------------------------------------------------------ the synthetic market


@pytest.fixture(scope="module")
def synth_engines(synthetic):  # noqa: F811 - the imported fixture
    """Engines fitted on the synthetic market, and its test market (M = 20) as frames."""
    engines = fit_classic_engines(synthetic, log=lambda _: None)
    build_market_occasions(synthetic)
    return engines, load_market_frame(synthetic), load_market_actuals(synthetic)


def test_higher_price_lower_prob_under_clogit(synth_engines):
    engines, frame, _ = synth_engines
    base = (
        frame.filter((pl.col("product_id") != OTHER) & (pl.col("list_price") > 0) & (pl.col("ref_price") > 0))
        .head(1)
        .to_dicts()[0]
    )

    def at_price(product_id: str, price: float) -> dict:
        """The same option at another price: the features that read the price follow it."""
        ref, lp = base["ref_price"], base["list_price"]
        return base | {
            "product_id": product_id,
            "price": price,
            "log_price": math.log(price + 0.01),
            "discount_depth": 1 - price / lp,
            "ref_price_gap": (price - ref) / ref,
        }

    p0 = base["price"]
    rows = pl.DataFrame([at_price("cheap", p0), at_price("dear", 1.2 * p0)], schema=frame.schema)
    rows = rows.with_columns(rel_price=pl.col("price") / pl.col("price").mean())
    d = engines["clogit"].decide(rows)
    check_decisions(rows.vstack(rows.head(1).with_columns(product_id=pl.lit(OTHER))), d)
    prob = dict(zip(d["product_id"], d["prob"], strict=True))
    assert prob["cheap"] > prob["dear"] > 0
    util = dict(zip(d["product_id"], d["utility"], strict=True))
    assert util["cheap"] - util["dear"] > 0.05


def test_scenario_product_gets_a_probability(synth_engines, synthetic):  # noqa: F811
    engines, frame, _ = synth_engines
    c = synthetic
    cat = frame["category"].mode().sort()[0]
    c.execute("insert into products values ('SCEN1', $c, 'new brand', true)", {"c": cat})
    c.execute(
        "create or replace table scen as select $c as category, 'SCEN1' as product_id, 2.0 as price",
        {"c": cat},
    )
    build_market_occasions(c, scenario_products="scen")
    sframe = load_market_frame(c)
    build_market_occasions(c)  # back to the plain test market
    s = sframe.filter(pl.col("product_id") == "SCEN1")
    assert s.height == frame.filter(pl.col("category") == cat)["occasion_id"].n_unique()
    assert (s["pop_total"] == 0).all() and s["is_new"].all()
    for name in ("clogit", "clogit6", "lgbm"):
        d = engines[name].decide(sframe)
        check_decisions(sframe, d)
        p = d.filter(pl.col("product_id") == "SCEN1")["prob"]
        assert (p > 0).all() and p.mean() > 1e-4, name


def market_nll(d: pl.DataFrame, actual: pl.DataFrame) -> tuple[float, int]:
    """(mean -log P(actual choice) over the occasions where it is > 0, number where it is 0): the actual
    choice is the actual product when in the set, else OTHER."""
    a = actual.select("occasion_id", pl.col("product_id").alias("act"))
    j = d.join(a, on="occasion_id")
    inside = j.group_by("occasion_id").agg((pl.col("product_id") == pl.col("act")).any().alias("in"))
    j = j.join(inside, on="occasion_id")
    hit = j.filter(
        pl.when(pl.col("in"))
        .then(pl.col("product_id") == pl.col("act"))
        .otherwise(pl.col("product_id") == OTHER)
    )
    zero = int((hit["prob"] <= 0).sum())
    return float(-(hit.filter(pl.col("prob") > 0)["prob"].log()).mean()), zero


def test_end_to_end_first_look(synth_engines):
    """Every engine on the synthetic market's test period: the market metrics against the actual units and
    against persistence's units (a first look on test data, printed)."""
    engines, frame, actual = synth_engines
    options = frame.filter(pl.col("product_id") != OTHER).select(KEYS)
    act_units = metrics.actual_units(actual, options)
    occ = frame.group_by("occasion_id").agg(pl.col("category", "week").first())
    decisions = {n: e.decide(frame) for n, e in engines.items()}
    sim = {n: metrics.simulated_units(d.join(occ, on="occasion_id")) for n, d in decisions.items()}
    lines = [
        f"\nsynthetic market, test period: {occ.height} occasions, {options.height} options, coverage "
        f"{metrics.coverage(act_units):.3f}, {act_units['units'].sum():.0f} actual units",
        f"{'engine':<12} {'share_jsd_cw':>12} {'units_wape_pw':>13} {'nll (P=0)':>12} {'units':>8} {'P(other)':>8} "
        f"{'jsd vs pers':>11} {'wape vs pers':>12}",
    ]
    out = {}
    for name, su in sim.items():
        jsd, _ = metrics.share_jsd_cw(su, act_units)
        wape = metrics.units_wape_pw(su, act_units)
        jsd_p, _ = metrics.share_jsd_cw(su, sim["persistence"])
        wape_p = metrics.units_wape_pw(su, sim["persistence"])
        p_other = decisions[name].filter(pl.col("product_id") == OTHER)["prob"].mean()
        nll, zero = market_nll(decisions[name], actual)
        out[name] = (jsd, wape)
        lines.append(
            f"{name:<12} {jsd:>12.4f} {wape:>13.4f} {nll:>6.3f} ({zero:>3}) {su['units'].sum():>8.0f} {p_other:>8.4f} "
            f"{jsd_p:>11.4f} {wape_p:>12.4f}"
        )
    print("\n".join(lines))
    for jsd, wape in out.values():
        assert 0 <= jsd < 0.5 and 0 <= wape < 1.5
    for name in ("clogit", "clogit6", "lgbm"):
        total = sim[name]["units"].sum()
        assert total == pytest.approx(act_units["units"].sum(), rel=0.2), name
