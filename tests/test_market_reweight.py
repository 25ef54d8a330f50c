"""Reweighting w(X, Z) (assets/market/reweight.py): raking a customer sample to the population's segment and
category margins, on constructed populations where the right answer is known, and the warehouse plumbing on
the hand-made warehouse of tests/test_market_occasions.py."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from assets.market import reweight as rw
from assets.market.metrics import CELL
from assets.market.occasions import build_market_occasions
from assets.market.reweight import (
    Margins,
    RakingError,
    Reweighting,
    margin_errors,
    margins_from_frames,
    occasion_weights,
    population_margins,
    population_occasions,
    rake_customers,
    sample_frames,
    weighted_units,
)
from tests.test_market_occasions import make_warehouse

CATS = ["A", "B", "C", "D", "E", "F"]


def population(rng, sizes: dict[str | None, int], rates: dict[str | None, list[float]], weeks: int = 4):
    """Customers of each segment (None: no segment) with Poisson(rate_c) occasions of category c (CATS order),
    each in a random week, buying 1 + Poisson(1) units. Returns (customers, occasions)."""
    cust, occ = [], []
    for seg, n in sizes.items():
        for _ in range(n):
            cid = f"k{len(cust):05d}"
            cust.append((cid, seg))
            for cat, lam in zip(CATS, rates[seg], strict=False):
                for _ in range(int(rng.poisson(lam))):
                    occ.append(
                        (f"o{len(occ):06d}", cid, cat, f"W{rng.integers(1, weeks + 1)}", 1 + rng.poisson(1))
                    )
    customers = pl.DataFrame(cust, schema={"customer_id": pl.Utf8, "segment": pl.Utf8}, orient="row")
    occasions = pl.DataFrame(
        occ, schema=["occasion_id", "customer_id", "category", "week", "quantity"], orient="row"
    )
    return customers, occasions


def draw(rng, customers: pl.DataFrame, occasions: pl.DataFrame, per_segment: dict[str | None, int]):
    """A sample of per_segment[s] customers of each segment, and their occasions."""
    ids = []
    for seg, k in per_segment.items():
        pool = customers.filter(pl.col("segment").is_null() if seg is None else pl.col("segment") == seg)[
            "customer_id"
        ].to_list()
        ids += list(rng.choice(pool, size=k, replace=False))
    s = customers.filter(pl.col("customer_id").is_in(ids))
    return s, occasions.filter(pl.col("customer_id").is_in(ids))


def test_raked_weights_reproduce_every_margin():
    rng = np.random.default_rng(1)
    rates = {"a": [3, 1, 0.5, 2, 1, 0.3], "b": [1, 2, 1, 0.5, 2, 0.6], None: [2, 2, 2, 2, 2, 0.4]}
    customers, occasions = population(rng, {"a": 400, "b": 300, None: 300}, rates)
    margins = margins_from_frames(occasions, customers)
    assert set(margins.segments) == {"a", "b", rw.UNKNOWN}  # a null segment reads 'unknown'
    sample, s_occ = draw(rng, customers, occasions, {"a": 120, "b": 50, None: 80})
    for kw in ({}, {"method": "logit", "bounds": (0.3, 3.0)}):
        res = rake_customers(sample, s_occ, margins, **kw)
        err = margin_errors(res.weights, sample, s_occ, margins)
        # every segment and category of the population (the ones with an occasion) is a margin
        assert err.height == len(margins.segments) + len(margins.categories) == 9
        assert err["rel_error"].max() < 1e-7, kw
        assert (
            res.info["converged"] and res.info["max_rel_error"] < 1e-7 and res.info["pooled_categories"] == []
        )
        assert res.weights["weight"].min() > 0 and res.weights.height == 250
        if kw:
            d = res.info["design_weight"]
            assert 0.3 * d < res.weights["weight"].min() and res.weights["weight"].max() < 3.0 * d


def test_uniform_sample_of_a_homogeneous_population_gets_n_over_n():
    customers = pl.DataFrame({"customer_id": [f"k{i}" for i in range(250)], "segment": "s"})
    occ = [(f"o{i}_{j}", f"k{i}", c, "W1", 1) for i in range(250) for j, c in enumerate("AAB")]
    occasions = pl.DataFrame(
        occ, schema=["occasion_id", "customer_id", "category", "week", "quantity"], orient="row"
    )
    margins = margins_from_frames(occasions, customers)
    assert margins.segments == {"s": 250.0} and margins.categories == {"A": 500.0, "B": 250.0}
    ids = customers["customer_id"].sample(50, seed=3)
    res = rake_customers(
        customers.filter(pl.col("customer_id").is_in(ids.implode())),
        occasions.filter(pl.col("customer_id").is_in(ids.implode())),
        margins,
    )
    assert res.weights["weight"].to_numpy() == pytest.approx(np.full(50, 5.0), rel=1e-9)
    assert res.info["effective_n"] == pytest.approx(50.0)


def test_over_represented_segment_is_down_weighted():
    rng = np.random.default_rng(2)
    rates = {"a": [2, 1, 1], "b": [2, 1, 1]}
    customers, occasions = population(rng, {"a": 500, "b": 500}, rates)
    sample, s_occ = draw(rng, customers, occasions, {"a": 160, "b": 40})  # a: 80% of the sample, 50% of all
    res = rake_customers(sample, s_occ, margins_from_frames(occasions, customers))
    w = res.weights.join(sample, on="customer_id")
    mean = dict(w.group_by("segment").agg(pl.col("weight").mean()).iter_rows())
    d = 1000 / 200
    assert mean["a"] < d < mean["b"]
    assert mean["a"] == pytest.approx(500 / 160, rel=0.1) and mean["b"] == pytest.approx(500 / 40, rel=0.1)
    assert (
        w.filter(pl.col("segment") == "a")["weight"].max()
        < w.filter(pl.col("segment") == "b")["weight"].min()
    )


def test_weighted_totals_of_a_20pct_sample_are_closer_to_the_population():
    """Segment a shops category A four times as often as B, segment b the reverse; units per occasion depend on
    the category only (A: 2, B: 1). A 20% sample that over-represents a overstates A's units and understates
    B's when scaled by N / n; raked weights meet the occasions of each category, hence its units exactly."""
    rng = np.random.default_rng(3)
    customers, occasions = population(rng, {"a": 1000, "b": 1000}, {"a": [4, 1], "b": [1, 4]})
    occasions = occasions.with_columns(quantity=pl.when(pl.col("category") == "A").then(2).otherwise(1))
    sample, s_occ = draw(rng, customers, occasions, {"a": 300, "b": 100})  # 400 of 2000
    res = rake_customers(sample, s_occ, margins_from_frames(occasions, customers))
    # the sample's "simulation": each occasion buys its actual units of one product for sure
    sim = s_occ.select(
        "occasion_id", "category", "week", product_id=pl.lit("p"), prob=pl.lit(1.0), expected_qty="quantity"
    )
    wu = weighted_units(sim, res.occasion_weights(s_occ))
    assert wu.columns == [*CELL, "units"]
    weighted = dict(wu.group_by("category").agg(pl.col("units").sum()).iter_rows())
    scaled = dict(s_occ.group_by("category").agg(pl.col("quantity").sum() * 5.0).iter_rows())
    truth = dict(occasions.group_by("category").agg(pl.col("quantity").sum()).iter_rows())
    for c in ("A", "B"):
        assert abs(weighted[c] - truth[c]) < 1e-6 * truth[c] < abs(scaled[c] - truth[c]), c
    assert abs(scaled["A"] - truth["A"]) > 0.1 * truth["A"]  # the bias the weights remove is large
    # and per (category, week) cell the weighted units are closer in total absolute error too
    pop = occasions.group_by("category", "week").agg(u=pl.col("quantity").sum().cast(pl.Float64))
    cells = pop.join(wu.select("category", "week", w="units"), on=["category", "week"]).join(
        s_occ.group_by("category", "week").agg(s=pl.col("quantity").sum() * 5.0), on=["category", "week"]
    )
    assert (cells["w"] - cells["u"]).abs().sum() < (cells["s"] - cells["u"]).abs().sum()


def test_sparse_margins_are_pooled_or_dropped():
    rng = np.random.default_rng(4)
    rates = {"a": [2, 2, 0, 0], "b": [2, 2, 0, 0], "t": [2, 2, 0, 0]}
    customers, occasions = population(rng, {"a": 200, "b": 200, "t": 30}, rates)
    # category C: bought by 6 customers of the population, 2 of them sampled; D: by 3, none sampled
    c_buyers, d_buyers = (
        ["k00000", "k00001", "k00002", "k00003", "k00004", "k00005"],
        ["k00300", "k00301", "k00302"],
    )
    extra = [(f"x{i}", cid, "C", "W1", 1) for i, cid in enumerate(c_buyers)]
    extra += [(f"y{i}", cid, "D", "W1", 1) for i, cid in enumerate(d_buyers)]
    occasions = pl.concat([occasions, pl.DataFrame(extra, schema=occasions.schema, orient="row")])
    margins = margins_from_frames(occasions, customers)
    keep = [
        "k00000",
        "k00001",
        *[f"k{i:05d}" for i in range(10, 60)],
        *[f"k{i:05d}" for i in range(250, 300)],
    ]
    keep += ["k00400", "k00401"]  # 2 of segment t (customers 400..429)
    sample = customers.filter(pl.col("customer_id").is_in(keep))
    s_occ = occasions.filter(pl.col("customer_id").is_in(keep))
    res = rake_customers(sample, s_occ, margins, min_customers=5)
    assert res.info["pooled_segments"] == ["t"] and res.info["pooled_categories"] == ["C", "D"]
    assert res.info["dropped"] == [] and res.info["max_rel_error"] < 1e-7
    err = margin_errors(res.weights, sample, s_occ, margins)
    pooled = err.filter(pl.col("level").is_in(["C", "D"]))
    assert pooled["weighted"].sum() == pytest.approx(pooled["target"].sum(), rel=1e-7)  # the pool is met
    assert err.filter(pl.col("level") == "D")["weighted"][0] == 0.0  # D alone cannot be
    # without C's two sampled buyers the pool has no sampled occasion: dropped, the rest still met
    s2 = sample.filter(~pl.col("customer_id").is_in(["k00000", "k00001"]))
    res2 = rake_customers(
        s2, occasions.filter(pl.col("customer_id").is_in(s2["customer_id"].implode())), margins
    )
    assert res2.info["dropped"] == ["category=(pooled)"] and res2.info["max_rel_error"] < 1e-7


def test_options_and_refusals():
    rng = np.random.default_rng(5)
    customers, occasions = population(rng, {"a": 500, "b": 500}, {"a": [3, 1], "b": [1, 3]})
    sample, s_occ = draw(rng, customers, occasions, {"a": 150, "b": 50})
    margins = margins_from_frames(occasions, customers)
    free = rake_customers(sample, s_occ, margins)
    w = free.weights["weight"]
    assert w.max() > 1.5 * 5.0
    trimmed = rake_customers(sample, s_occ, margins, trim=1.5)
    tw = trimmed.weights["weight"]
    assert tw.max() <= 1.5 * 5.0 * (1 + 1e-9) and trimmed.info["trim_rounds"] >= 1  # d = 1000 / 200
    assert trimmed.info["max_rel_error"] > free.info["max_rel_error"]  # the price of the cap, reported
    seg_only = rake_customers(sample, s_occ, margins, categories=False)
    assert seg_only.info["n_margins"] == 2
    with pytest.raises(RakingError, match="bounds"):
        rake_customers(sample, s_occ, margins, method="logit", bounds=(0.9, 1.1))  # b needs x2.5
    with pytest.raises(ValueError, match="bounds"):
        rake_customers(sample, s_occ, margins, bounds=(0.5, 2.0))
    with pytest.raises(ValueError, match="absent from the population"):
        rake_customers(sample.with_columns(segment=pl.lit("zz")), s_occ, margins)
    with pytest.raises(ValueError, match="no weight"):
        occasion_weights(occasions, free.weights)  # occasions of customers outside the sample
    with pytest.raises(ValueError, match="not in the sample"):
        rake_customers(sample.head(10), s_occ, margins)


def test_round_trip():
    rng = np.random.default_rng(6)
    customers, occasions = population(rng, {"a": 300, None: 200}, {"a": [2, 1, 1], None: [1, 1, 2]})
    sample, s_occ = draw(rng, customers, occasions, {"a": 40, None: 60})
    res = rake_customers(
        sample, s_occ, margins_from_frames(occasions, customers), method="logit", bounds=(0.2, 5.0)
    )
    text = json.dumps(res.to_dict(), allow_nan=False)
    back = Reweighting.from_dict(json.loads(text))
    assert back.to_dict() == res.to_dict() and back.weights.equals(res.weights)
    assert back.margins == res.margins and back.bounds == (0.2, 5.0)
    assert back.occasion_weights(s_occ).equals(res.occasion_weights(s_occ))
    assert Margins.from_dict(json.loads(json.dumps(res.margins.to_dict()))) == res.margins
    with pytest.raises(ValueError, match="format_version"):
        Reweighting.from_dict(json.loads(text) | {"format_version": 0})


def test_population_margins_on_the_warehouse(tmp_path):
    c = make_warehouse(tmp_path / "w.duckdb")
    try:
        # no segment column: everybody 'unknown'
        m0 = population_margins(c)
        c.execute("alter table customers add column segment varchar")
        c.execute("update customers set segment = 'gold' where customer_id in ('c1', 'c3')")
        m = population_margins(c)
        want = c.sql(
            "select e.customer_id, e.category from decision_episodes e join episode_splits s using (episode_id) "
            "where s.period = 'test'"
        ).pl()
        assert m.n_occasions == m0.n_occasions == want.height
        assert m.categories == {k: float(v) for k, v in want.group_by("category").len().iter_rows()}
        n_gold = want.filter(pl.col("customer_id").is_in(["c1", "c3"]))["customer_id"].n_unique()
        assert m.segments["gold"] == n_gold and m.n_customers == want["customer_id"].n_unique()
        assert set(m0.segments) == {rw.UNKNOWN} and m0.n_customers == m.n_customers
        assert (
            c.execute(
                "select count(*) from duckdb_tables() where table_name = 'market_occasion_rows'"
            ).fetchone()[0]
            == 0
        )
        # the population's occasions are the sampling frame: the whole market's occasions
        build_market_occasions(c)
        pop = population_occasions(c)
        occ, cust = sample_frames(c)
        assert sorted(pop["occasion_id"]) == sorted(occ["occasion_id"])
        # the sample is the whole population: every weight is 1
        res = rake_customers(cust, occ, m, min_customers=1)
        assert res.weights["weight"].to_numpy() == pytest.approx(np.ones(res.weights.height), rel=1e-9)
        ow = res.occasion_weights(occ)
        assert ow.height == occ.height and ow["weight"].to_numpy() == pytest.approx(1.0)
        # filters pass through: the week and category filters of the simulated period
        mb = population_margins(c, categories=["B"])
        assert set(mb.categories) == {"B"} and mb.n_occasions == want.filter(pl.col("category") == "B").height
    finally:
        c.close()
