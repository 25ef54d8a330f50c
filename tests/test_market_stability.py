"""Stability of the market simulation in sample mode (assets/market/stability.py).

The toy market of tests/test_market_meanfield.py (18 occasions) and a crowd market built here like it: two
categories (A: A1, A2, A3; B: B1, B2, B3), a history window of W = 3 days, `customers` customers with one
occasion a day in each category, actual products drawn by a seeded generator (shares 0.6, 0.3, 0.1), a
skewed pre-period history. The
engine is that file's PopLogit (u = beta log1p(pop_28d), OTHER 0, one unit).
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from assets.market import meanfield as mf
from assets.market import metrics as MM
from assets.market import stability as st
from tests.test_market_meanfield import PopLogit, toy_market

W = 3
START = date(2024, 3, 4)  # a Monday: days 0..6 are ISO week 2024-W10, 7..13 2024-W11
CATEGORIES = {
    "A": {"A1": ("X", 1.0), "A2": ("X", 1.5), "A3": ("Y", 2.0)},
    "B": {"B1": ("Z", 3.0), "B2": ("Z", 2.5), "B3": ("V", 4.0)},
}
QUIET = {"log": lambda s: None}


def crowd_market(customers: int, days: int, seed: int = 0):
    """(purchases, occasions, options, history) of the module docstring's crowd market."""
    rng = np.random.default_rng(seed)
    rows, occ = [], []

    def buy(basket, customer, k, category, product):
        brand, price = CATEGORIES[category][product]
        rows.append((basket, customer, product, category, brand, START + timedelta(days=k), 1, price, True))

    for cat, products in CATEGORIES.items():
        names = list(products)
        for j in range(30):  # before the period, skewed to the first product
            buy(f"h{cat}{j}", f"x{j}", -1 - j % W, cat, names[rng.choice(3, p=[0.5, 0.3, 0.2])])
        for k in range(days):
            for c in range(customers):
                product = names[rng.choice(3, p=[0.6, 0.3, 0.1])]
                oid = f"o{k:02d}c{c:03d}{cat}"
                buy(oid, f"c{c:03d}", k, cat, product)
                occ.append((oid, oid, f"c{c:03d}", cat, START + timedelta(days=k), product, 1))
    cols = ["basket_id", "customer_id", "product_id", "category", "brand", "day", "units", "unit_price"]
    purchases = pl.DataFrame(rows, schema=[*cols, "is_merchandise"], orient="row")
    occ_cols = ["occasion_id", "basket_id", "customer_id", "category", "day", "actual_product_id"]
    occasions = pl.DataFrame(occ, schema=[*occ_cols, "actual_quantity"], orient="row")
    options = pl.DataFrame(
        [(o[0], p, CATEGORIES[o[3]][p][1]) for o in occ for p in CATEGORIES[o[3]]],
        schema=["occasion_id", "product_id", "price"],
        orient="row",
    ).with_columns(
        pl.lit(0, pl.Int64).alias("pop_28d"),
        pl.lit(0, pl.Int64).alias("pop_total"),
        pl.lit(False).alias("is_new"),
        pl.lit(0, pl.Int64).alias("cust_product_purchases"),
        pl.lit(None, pl.Float64).alias("ref_price"),
        pl.lit(0.0).alias("ref_price_gap"),
        pl.lit(None, pl.Float64).alias("prod_mean_qty_28d"),
    )
    state, history = mf.observed_state(purchases, occasions, history_days=W)
    options = mf.signals_from_state(options, occasions, state, history, own_history=True)
    return purchases, occasions, options, history


def test_identical_seeds_are_perfectly_stable_and_different_seeds_are_not():
    """Identical seeds: CV 0 and every agreement 1, in both modes; different seeds: CV > 0 and agreement < 1.
    The frames hold what the summary is computed from."""
    purchases, occasions, options = toy_market()
    _, history = mf.observed_state(purchases, occasions, history_days=W)
    same = st.run_stability(PopLogit(1.5), options, occasions, history, seeds=(5, 5, 5), alpha=1.0, **QUIET)
    assert same.summary.columns == list(st.SUMMARY_SCHEMA) and same.summary["mean_field"].to_list() == [
        False,
        True,
    ]
    for r in same.summary.iter_rows(named=True):
        assert r["share_cv_cw"] == 0.0 and r["seeds"] == 3
        assert r["top1_agreement"] == r["cell_top1_all"] == r["cell_top1_pairwise"] == 1.0
    diff = st.run_stability(PopLogit(1.5), options, occasions, history, seeds=range(5), alpha=1.0, **QUIET)
    for r in diff.summary.iter_rows(named=True):
        assert r["share_cv_cw"] > 0.05 and r["top1_agreement"] < 1.0
    mfr = diff.summary.row(1, named=True)
    assert mfr["converged"] and 1 <= mfr["iterations_mean"] <= 7  # DAYS + 1 passes at most
    assert diff.summary.row(0, named=True)["converged"] is None and diff.summary["iterations_mean"][0] == 0.0
    assert diff.runs.height == 10 and diff.runs["seed"].to_list() == [0, 1, 2, 3, 4] * 2
    assert diff.runs.filter(pl.col("mean_field"))["converged"].all()
    # the summary's share_cv_cw is the protocol's over the units frame, and the mean of the cells' CVs
    for (flag,), part in diff.units.group_by("mean_field"):
        runs = [g.drop("mean_field", "seed") for _, g in part.group_by("seed", maintain_order=True)]
        want = diff.summary.filter(pl.col("mean_field") == flag)["share_cv_cw"].item()
        assert MM.share_cv_cw(runs) == pytest.approx(want, abs=1e-12)
        cells = diff.cells.filter(pl.col("mean_field") == flag)
        assert cells["cv"].drop_nulls().mean() == pytest.approx(want, abs=1e-12)
    # one unit per occasion in every run (one draw, one unit)
    per_run = diff.units.group_by("mean_field", "seed").agg(pl.col("units").sum())
    assert (per_run["units"] == occasions.height).all()
    with pytest.raises(ValueError, match="sample_seed"):
        st.run_stability(PopLogit(1.5), options, occasions, history, sample_seed=1)


def test_expected_mode_is_the_mean_of_many_draws():
    """Law of large numbers on the crowd market (800 occasions, 400 a cell): the mean over R = 10 seeds of the
    sample-mode units per (category, week, product) is the expected-mode run's, within 4 standard errors of the
    seeds' mean (and within 0.03 of the share without the mean field, where the draws are independent), both
    without the mean field (exact in expectation) and with it (the state's noise is small against its size, so
    the sampled fixed point's mean is the expected one's). The two modes' targets differ."""
    _, occasions, options, history = crowd_market(customers=100, days=4)
    engine = PopLogit(beta=0.8)
    seeds = range(10)
    res = st.run_stability(engine, options, occasions, history, seeds=seeds, alpha=1.0, max_iter=10, **QUIET)
    occ_cw = occasions.select("occasion_id", "category", MM.iso_week("day"))
    shares = {}
    for flag in (False, True):
        expected = mf.run_mean_field(engine, options, occasions, history, mean_field=flag, alpha=1.0, **QUIET)
        want = MM.simulated_units(expected.decisions.join(occ_cw, on="occasion_id"))
        got = (
            res.units.filter(pl.col("mean_field") == flag)
            .group_by(MM.CELL)
            .agg(mean=pl.col("units").mean(), se=pl.col("units").std() / len(seeds) ** 0.5)
        )
        both = want.join(got, on=MM.CELL, how="full", coalesce=True)
        assert both.height == 8 and both.null_count().sum_horizontal().item() == 0
        # polars' parallel sums: the last digit may move
        assert both.group_by(MM.CW).agg(pl.col("units").sum())["units"].to_list() == pytest.approx(
            [400.0, 400.0]
        )
        gap = (both["units"] - both["mean"]).abs()
        assert (gap <= 4.0 * both["se"]).all() and both["se"].min() > 0.0, (flag, both)
        if not flag:
            assert (gap / 400.0).max() < 0.03, both
        assert both["units"].min() > 5.0  # every product, OTHER included, has a share worth comparing
        shares[flag] = want.sort(MM.CELL)["units"] / 400.0
        if flag:
            assert expected.converged and res.summary.row(1, named=True)["converged"]
    assert (shares[True] - shares[False]).abs().max() > 0.05  # two different targets, each met
    assert res.summary["share_cv_cw"].min() > 0.0


def test_weights_report_and_plot(tmp_path):
    """Weights (through mean_field_kwargs) count in the units as in the state: twice the units with weight 2,
    the same CV; the markdown table and the PNG plot (a Figure, no pyplot)."""
    from matplotlib.figure import Figure

    _, occasions, options, history = crowd_market(customers=6, days=9, seed=1)
    two = occasions.select("occasion_id", weight=pl.lit(2.0))
    run = {"seeds": (0, 1, 2), "mean_field": (False,), **QUIET}
    plain = st.run_stability(PopLogit(0.8), options, occasions, history, **run)
    heavy = st.run_stability(PopLogit(0.8), options, occasions, history, weights=two, **run)
    assert heavy.units["units"].equals(plain.units["units"] * 2.0)
    assert heavy.summary["share_cv_cw"].item() == pytest.approx(
        plain.summary["share_cv_cw"].item(), abs=1e-12
    )
    assert plain.units.select(MM.CW).unique().height == 4  # two categories x two ISO weeks
    full = st.run_stability(PopLogit(0.8), options, occasions, history, seeds=(0, 1, 2), alpha=1.0, **QUIET)
    md = full.markdown()
    assert md.count("\n") == 3 and "| without | 3 |" in md and "| with | 3 |" in md
    fig = st.plot_stability(full, tmp_path / "plots" / "stability.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert (tmp_path / "plots" / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
