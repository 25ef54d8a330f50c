"""Market-level metrics (docs/evaluation-protocol.md, "Market-level evaluation") on hand-computed examples."""

import datetime
import math

import numpy as np
import polars as pl
import pytest

from assets.market import metrics as MM
from assets.market.metrics import OTHER

CELL_SCHEMA = {"category": pl.Utf8, "week": pl.Utf8, "product_id": pl.Utf8, "units": pl.Float64}


def units(rows):
    """rows: (category, week, product_id, units)."""
    return pl.DataFrame(rows, schema=CELL_SCHEMA, orient="row")


def as_dict(df):
    return {(r["category"], r["week"], r["product_id"]): r["units"] for r in df.iter_rows(named=True)}


def test_iso_week_uses_the_iso_year():
    df = pl.DataFrame(
        {"day": [datetime.date(2019, 12, 30), datetime.date(2021, 1, 3), datetime.date(2020, 3, 31)]}
    )
    assert df.select(MM.iso_week("day"))["week"].to_list() == ["2020-W01", "2020-W53", "2020-W14"]


def test_units_by_cell_sums_prob_times_qty_and_sends_outside_products_to_other():
    sim = pl.DataFrame(
        [
            ("o1", "c1", "W1", "A", 0.5, 2.0),  # 1.0
            ("o1", "c1", "W1", "B", 0.25, 1.0),  # 0.25
            ("o1", "c1", "W1", OTHER, 0.25, 3.0),  # 0.75
            ("o2", "c1", "W1", "A", 0.5, 1.0),  # 0.5
            ("o2", "c1", "W1", "C", 0.25, 2.0),  # 0.5
            ("o2", "c1", "W1", OTHER, 0.25, 1.0),  # 0.25
            ("o3", "c1", "W2", "B", float("nan"), 1.0),  # NaN prob: 0 units
            ("o3", "c1", "W2", OTHER, 1.0, None),  # null qty: 0 units
        ],
        schema=["occasion_id", "category", "week", "product_id", "prob", "expected_qty"],
        orient="row",
    )
    options = pl.DataFrame(
        {"occasion_id": ["o1", "o1", "o2", "o2", "o3"], "product_id": ["A", "B", "A", "C", "B"]}
    )
    actual = pl.DataFrame(
        [
            ("o1", "c1", "W1", "A", 2),  # in the set
            ("o2", "c1", "W1", "B", 3),  # B is not among o2's options: other
            ("o3", "c1", "W2", "D", 1),  # outside: other
            ("o4", "c2", "W1", "E", 4),  # an occasion without options: other
            ("o5", "c2", "W1", "E", None),  # null quantity: 0
        ],
        schema=["occasion_id", "category", "week", "product_id", "quantity"],
        orient="row",
    )
    s, a = MM.units_by_cell(sim, actual, options)
    assert as_dict(s) == {
        ("c1", "W1", "A"): 1.5,
        ("c1", "W1", "B"): 0.25,
        ("c1", "W1", "C"): 0.5,
        ("c1", "W1", OTHER): 1.0,
        ("c1", "W2", "B"): 0.0,
        ("c1", "W2", OTHER): 0.0,
    }
    assert as_dict(a) == {
        ("c1", "W1", "A"): 2.0,
        ("c1", "W1", OTHER): 3.0,
        ("c1", "W2", OTHER): 1.0,
        ("c2", "W1", OTHER): 4.0,
    }
    assert MM.coverage(a) == pytest.approx(2.0 / 10.0, abs=1e-15)


# sim and actual units of four (category, week) cells:
#   (c1, W1): sim A 2, B 2; actual A 4, other 4: p = (.5, .5, 0), q = (.5, 0, .5), m = (.5, .25, .25):
#             KL(p||m) = KL(q||m) = .5 log2(2) = .5, so JSD = .5; weight 8
#   (c1, W2): sim A 3; actual A 2: JSD 0; weight 2
#   (c2, W1): no sim; actual other 5: JSD 1 (nothing predicted); weight 5
#   (c2, W2): sim B 4; no actual: JSD null, weight 0
SIM = [("c1", "W1", "A", 2.0), ("c1", "W1", "B", 2.0), ("c1", "W2", "A", 3.0), ("c2", "W2", "B", 4.0)]
ACT = [("c1", "W1", "A", 4.0), ("c1", "W1", OTHER, 4.0), ("c1", "W2", "A", 2.0), ("c2", "W1", OTHER, 5.0)]


def test_share_jsd_cw_by_hand():
    fig, per = MM.share_jsd_cw(units(SIM), units(ACT))
    assert fig == pytest.approx((0.5 * 8 + 0.0 * 2 + 1.0 * 5) / 15, abs=1e-12)  # 0.6
    rows = {(r["category"], r["week"]): r for r in per.iter_rows(named=True)}
    assert set(rows) == {("c1", "W1"), ("c1", "W2"), ("c2", "W1"), ("c2", "W2")}
    assert rows["c1", "W1"]["jsd"] == pytest.approx(0.5, abs=1e-12)
    assert rows["c1", "W1"]["sim_units"] == 4.0 and rows["c1", "W1"]["actual_units"] == 8.0
    assert rows["c1", "W2"]["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert rows["c2", "W1"]["jsd"] == 1.0
    assert rows["c2", "W2"]["jsd"] is None and rows["c2", "W2"]["actual_units"] == 0.0


def test_share_jsd_cw_disjoint_supports_is_one_and_duplicate_rows_sum():
    fig, _ = MM.share_jsd_cw(
        units([("c", "W", "A", 1.0), ("c", "W", "A", 1.0)]), units([("c", "W", "B", 3.0)])
    )
    assert fig == pytest.approx(1.0, abs=1e-12)


def test_share_jsd_cw_nan_units_count_zero():
    fig, per = MM.share_jsd_cw(
        units([("c", "W", "A", 1.0), ("c", "W", "B", float("nan"))]),
        units([("c", "W", "A", 1.0), ("c", "W", "B", 1.0)]),
    )
    # p = (1, 0), q = (.5, .5), m = (.75, .25): .5 log2(4/3) + .5 (.5 log2(2/3) + .5 log2(2))
    want = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert fig == pytest.approx(want, abs=1e-12)
    assert per["sim_units"].to_list() == [1.0]


def test_share_jsd_cw_empty_and_zero_actual():
    fig, per = MM.share_jsd_cw(units([]), units([]))
    assert fig is None and per.height == 0
    fig, per = MM.share_jsd_cw(units([("c", "W", "A", 2.0)]), units([("c", "W", "A", 0.0)]))
    assert fig is None and per["jsd"].to_list() == [None]


def test_units_wape_pw_by_hand():
    # |2-4| + |2-0| + |0-4| + |3-2| + |0-5| + |4-0| = 18 over 15 actual units
    assert MM.units_wape_pw(units(SIM), units(ACT)) == pytest.approx(18 / 15, abs=1e-12)
    assert MM.units_wape_pw(units(ACT), units(ACT)) == 0.0
    assert MM.units_wape_pw(units([]), units([])) is None
    assert MM.units_wape_pw(units(SIM), units([("c1", "W1", "A", 0.0)])) is None


def test_coverage():
    assert MM.coverage(units(ACT)) == pytest.approx(6 / 15, abs=1e-15)
    assert MM.coverage(units([("c", "W", OTHER, 3.0)])) == 0.0
    assert MM.coverage(units([])) is None


def D(day):
    return datetime.date(2020, 3, day)


def test_persistence_by_hand():
    history = pl.DataFrame(
        [
            ("c1", "A", D(2), 100, 1),  # d - 29 for d = Mar 31: outside; inside for d = Mar 3 (Feb 4..Mar 2)
            ("c1", "A", D(3), 4, 2),  # d - 28: inside
            ("c1", "A", D(30), 2, 1),  # d - 1: inside
            ("c1", "A", D(31), 50, 1),  # d itself: outside
            ("c1", "B", D(10), 3, 3),
            ("c1", "C", D(15), 3, 1),  # C is outside the set: other
            ("c2", "D", D(15), 7, 1),  # another category
        ],
        schema=["category", "product_id", "day", "units", "purchases"],
        orient="row",
    )
    occasions = pl.DataFrame(
        [("o1", "c1", D(31)), ("o2", "c9", D(31)), ("o3", "c1", D(31)), ("o4", "c1", D(3))],
        schema=["occasion_id", "category", "day"],
        orient="row",
    )
    options = pl.DataFrame(
        {"occasion_id": ["o1", "o1", "o1", "o1", "o2", "o4"], "product_id": ["A", "B", "S", "D", "X", "A"]}
    )
    out = MM.persistence(occasions, options, history)
    got = {
        (r["occasion_id"], r["product_id"]): (r["prob"], r["expected_qty"]) for r in out.iter_rows(named=True)
    }
    # o1: window Mar 3..30: A 6 units / 3 purchases, B 3/3, C 3/1: U = 12, P = 7
    assert got["o1", "A"] == pytest.approx((6 / 12, 2.0))
    assert got["o1", "B"] == pytest.approx((3 / 12, 1.0))
    assert got["o1", "S"] == pytest.approx((0.0, 12 / 7))  # no purchase: the category's units per purchase
    assert got["o1", "D"] == pytest.approx((0.0, 12 / 7))  # D sells under c2 only: 0 units in c1
    assert got["o1", OTHER] == pytest.approx((3 / 12, 3.0))
    # o2: the category sold nothing: all to other, every quantity 1
    assert got["o2", "X"] == (0.0, 1.0) and got["o2", OTHER] == (1.0, 1.0)
    # o3: no options: everything is other
    assert got["o3", OTHER] == pytest.approx((1.0, 12 / 7))
    # o4: window Feb 4..Mar 2: only A's 100 units in 1 purchase
    assert got["o4", "A"] == (1.0, 100.0) and got["o4", OTHER] == (0.0, 100.0)
    assert len(got) == 10
    assert set(out.columns) >= {
        "occasion_id",
        "category",
        "day",
        "week",
        "product_id",
        "prob",
        "expected_qty",
    }
    assert out.filter(pl.col("occasion_id") == "o1")["week"].unique().to_list() == ["2020-W14"]
    # scored by the same functions: o1 + o3 in (c1, 2020-W14); sim other = 3/12*3 + 12/7
    sim = MM.simulated_units(out)
    d = as_dict(sim)
    assert d["c1", "2020-W14", "A"] == pytest.approx(1.0)
    assert d["c1", "2020-W14", OTHER] == pytest.approx(0.75 + 12 / 7)
    assert d["c9", "2020-W14", OTHER] == 1.0


def test_fixed_point_residual():
    key = {"product_id": pl.Utf8, "day": pl.Date, "units": pl.Float64}
    prev = pl.DataFrame([("A", D(1), 10.0), ("A", D(2), 0.5), ("B", D(1), 3.0)], schema=key, orient="row")
    nxt = pl.DataFrame([("A", D(1), 12.0), ("A", D(2), 0.2), ("C", D(1), 0.4)], schema=key, orient="row")
    # A1: 2/10 = .2; A2: .3/max(1, .5) = .3; B1: 3/3 = 1 (missing from next: 0); C1: .4/1
    assert MM.fixed_point_residual(nxt, prev) == 1.0
    nxt_b = nxt.vstack(pl.DataFrame([("B", D(1), 3.0)], schema=key, orient="row"))
    assert MM.fixed_point_residual(nxt_b, prev) == pytest.approx(0.4, abs=1e-15)
    assert MM.fixed_point_residual(prev, prev) == 0.0
    assert MM.fixed_point_residual(pl.DataFrame(schema=key), pl.DataFrame(schema=key)) == 0.0
    broken = pl.DataFrame([("A", D(1), float("nan"))], schema=key, orient="row")
    assert math.isnan(MM.fixed_point_residual(broken, prev))


def test_share_cv_cw_uses_sample_std():
    r1 = units([("c", "W", "A", 1.0), ("c", "W", "B", 2.0), ("c", "W", "Z", 0.0)])
    r2 = units([("c", "W", "A", 3.0)])
    # A: (1, 3) mean 2, sample std sqrt(2); B: (2, 0) mean 1, std sqrt(2); Z mean 0: left out
    want = (math.sqrt(2) / 2 + math.sqrt(2) / 1) / 2
    assert MM.share_cv_cw([r1, r2]) == pytest.approx(want, abs=1e-12)
    assert MM.share_cv_cw([r1, r2]) != pytest.approx(0.75)  # population std would give (.5 + 1) / 2
    assert MM.share_cv_cw([r1, r1, r1]) == 0.0
    assert MM.share_cv_cw([r1]) is None
    assert MM.share_cv_cw([units([("c", "W", "A", 0.0)]), units([])]) is None


def test_share_cv_cells_are_share_cv_cw_cell_by_cell():
    r1 = units([("c", "W", "A", 1.0), ("c", "W", "B", 2.0), ("c", "W", "Z", 0.0)])
    r2 = units([("c", "W", "A", 3.0)])
    cells = MM.share_cv_cells([r1, r2])
    assert cells.columns == [*MM.CELL, "mean", "std", "cv"] and cells["product_id"].to_list() == [
        "A",
        "B",
        "Z",
    ]
    assert cells["mean"].to_list() == [2.0, 1.0, 0.0]
    assert cells["std"].to_list() == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0], abs=1e-12)
    assert cells["cv"].to_list()[:2] == pytest.approx([math.sqrt(2) / 2, math.sqrt(2)], abs=1e-12)
    assert cells["cv"][2] is None  # mean 0: no CV, left out of share_cv_cw
    assert cells["cv"].drop_nulls().mean() == pytest.approx(MM.share_cv_cw([r1, r2]), abs=1e-12)
    assert MM.share_cv_cells([r1]).height == 0


def test_cell_top1_agreement_by_hand():
    # cell (c, W1): tops A, A, B; cell (c, W2): A ties with OTHER at 2 units in run 1 (A < "other": A), B
    # wins outright in run 2, A in run 3; cell (d, W1): B in every run; cell (d, W2): units only in run 1
    r1 = units([("c", "W1", "A", 3.0), ("c", "W1", "B", 1.0), ("c", "W2", "A", 2.0), ("c", "W2", OTHER, 2.0),
                ("d", "W1", "B", 1.0), ("d", "W2", "A", 1.0)])  # fmt: skip
    r2 = units([("c", "W1", "A", 2.0), ("c", "W2", "B", 5.0), ("d", "W1", "B", 2.0), ("d", "W2", "A", 0.0)])
    r3 = units([("c", "W1", "B", 4.0), ("c", "W1", "A", 1.0), ("c", "W2", "A", 1.0), ("d", "W1", "B", 0.5)])
    top = MM.top_products(r1)
    assert top.rows() == [("c", "W1", "A"), ("c", "W2", "A"), ("d", "W1", "B"), ("d", "W2", "A")]
    assert MM.top_products(r2).height == 3  # (d, W2) has no unit in run 2: no top product
    every, pairwise = MM.cell_top1_agreement([r1, r2, r3])
    # cells c/W1, c/W2, d/W1, d/W2; the same in all runs: d/W1 only
    assert every == pytest.approx(1 / 4, abs=1e-12)
    # pairs (1,2): c/W1, d/W1 = 2/4; (1,3): c/W2, d/W1 = 2/4; (2,3): d/W1 = 1/4
    assert pairwise == pytest.approx((0.5 + 0.5 + 0.25) / 3, abs=1e-12)
    assert MM.cell_top1_agreement([r1, r1]) == (1.0, 1.0)
    assert MM.cell_top1_agreement([r1]) == (None, None)
    assert MM.cell_top1_agreement([units([]), units([])]) == (None, None)


def test_expected_calibration_error_by_hand():
    p = [0.05, 0.1, 0.95, 1.0, 1.0, 0.5]
    h = [0, 1, 1, 1, 0, 1]
    # 10 bins: .05 -> 0 (gap .05), .1 -> 1 (.9), .5 -> 5 (.5), .95 and both 1.0 -> 9: |2.95 - 2| = .95
    assert MM.expected_calibration_error(p, h, bins=10) == pytest.approx(2.4 / 6, abs=1e-12)
    # 15 bins: .99 -> bin 14 and 1.0 -> bin 14 too: |(.99 + 1) / 2 - .5| = .495 (apart it would be .505)
    assert MM.expected_calibration_error([0.99, 1.0], [1, 0]) == pytest.approx(0.495, abs=1e-12)
    assert MM.expected_calibration_error(np.array([1.0]), np.array([True])) == 0.0
    assert MM.expected_calibration_error([0.0], [1.0]) == 1.0
    assert MM.expected_calibration_error([0.4, 0.4], [0.5, 0.5]) == pytest.approx(0.1, abs=1e-12)  # tie hits


def test_expected_calibration_error_edges():
    assert MM.expected_calibration_error([], []) is None
    assert MM.expected_calibration_error([0.5, float("nan")], [1, 0]) is None
    with pytest.raises(ValueError):
        MM.expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        MM.expected_calibration_error([0.5, 0.5], [1])


def test_own_price_elasticity_and_error():
    # (99 - 103) / 0.02 / 100 = -2 (the mean of the two sides, 101, would give -1.98)
    assert MM.own_price_elasticity(103.0, 99.0, 100.0) == pytest.approx(-2.0, abs=1e-12)
    assert MM.own_price_elasticity(11.0, 9.0, 10.0, rel_step=0.05) == pytest.approx(-2.0, abs=1e-12)
    e = MM.own_price_elasticity([103.0, 1.0], [99.0, 1.0], [100.0, 0.0])
    assert e[0] == pytest.approx(-2.0, abs=1e-12) and math.isnan(e[1])
    # scored: (-2.2, -2) -> .1; (-1, -2) -> .5; (nan, -1) -> inf; truth 0 not scored: median .5
    est = [-2.2, -1.0, 0.5, float("nan")]
    truth = [-2.0, -2.0, 0.0, -1.0]
    assert MM.elasticity_error(est, truth) == pytest.approx(0.5, abs=1e-12)
    assert MM.elasticity_error([-2.2, -1.0], [-2.0, -2.0]) == pytest.approx(0.3, abs=1e-12)
    assert MM.elasticity_error([1.0], [0.0]) is None
    assert MM.elasticity_error([], []) is None


def test_diversion_ratios():
    before = pl.DataFrame({"product_id": ["J", "A", OTHER], "units": [10.0, 5.0, 5.0]})
    after = pl.DataFrame({"product_id": ["A", OTHER], "units": [12.0, 8.0]})  # total 20 conserved
    d = MM.diversion_ratios(before, after, "J")
    assert d["product_id"].to_list() == ["A", OTHER]
    assert d["diversion"].to_list() == pytest.approx([0.7, 0.3], abs=1e-15)
    assert d["diversion"].sum() == pytest.approx(1.0, abs=1e-12)
    # a product only after (B) counts 0 before; total grows by 1: ratios sum to 1.1
    after2 = pl.DataFrame({"product_id": ["A", "B", OTHER], "units": [11.0, 2.0, 8.0]})
    d2 = MM.diversion_ratios(before, after2, "J")
    assert dict(d2.iter_rows()) == pytest.approx({"A": 0.6, "B": 0.2, OTHER: 0.3}, abs=1e-15)
    with pytest.raises(ValueError):
        MM.diversion_ratios(before.filter(pl.col("product_id") != "J"), after, "J")
