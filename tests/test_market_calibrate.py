"""Calibration f of a market engine (assets/market/calibrate.py): temperature and OTHER shift on simulated
markets where the truth is known, the isotonic quantity curve on a biased engine, the JSON round trip, and the
plumbing on the hand-made warehouse of tests/test_market_occasions.py with a classic engine."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from assets.evaluation.baselines import BaselineSettings
from assets.market.calibrate import (
    CalibratedEngine,
    Calibration,
    calibration_report,
    decision_scores,
    fit_calibration,
    fit_calibration_frames,
    utilities_reproduce_probs,
)
from assets.market.classic import fit_classic_engines, load_market_actuals, load_market_frame
from assets.market.engine import ChoiceEngine, check_decisions
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions
from tests.test_market_occasions import make_warehouse

KEYS = ["occasion_id", "product_id"]


class FrameEngine(ChoiceEngine):
    """An engine whose decisions are given: decide() returns the rows of the options asked for."""

    def __init__(self, decisions: pl.DataFrame, name: str = "given") -> None:
        self.decisions, self.name = decisions, name

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        return self.decisions.join(options.select(KEYS), on=KEYS, how="semi").sort(KEYS)


def simulated_market(rng, n: int, true_t: float = 1.0, true_shift: float = 0.0, qty_bias: float = 1.0):
    """n occasions of 0..8 options with utilities u ~ N(0, 1.5^2) and OTHER's utility 0.3. The engine says
    prob = softmax(u); the actual choice is drawn from softmax(u / true_t + true_shift [OTHER]). Quantities:
    each option has a true mean m in {1, 2, 3, 4}, the actual units are 1 + Poisson(m - 1), the engine says
    qty_bias x m. Returns (decisions, actuals)."""
    oid, pid, util, prob, qty, act = [], [], [], [], [], []
    for g in range(n):
        k = int(rng.integers(0, 9))
        u = np.append(rng.normal(0.0, 1.5, size=k), 0.3)
        m = np.append(rng.integers(1, 5, size=k), 2).astype(float)
        p_engine = np.exp(u - u.max())
        p_engine /= p_engine.sum()
        z = u / true_t + true_shift * (np.arange(k + 1) == k)
        p_true = np.exp(z - z.max())
        pick = int(rng.choice(k + 1, p=p_true / p_true.sum()))
        o = f"o{g:06d}"
        names = [f"p{j}" for j in range(k)] + [OTHER]
        oid += [o] * (k + 1)
        pid += names
        util += list(u)
        prob += list(p_engine)
        qty += list(qty_bias * m)
        act.append((o, names[pick], float(1 + rng.poisson(m[pick] - 1))))
    decisions = pl.DataFrame(
        {"occasion_id": oid, "product_id": pid, "utility": util, "prob": prob, "expected_qty": qty}
    ).sort(KEYS)
    actuals = pl.DataFrame(act, schema=["occasion_id", "product_id", "quantity"], orient="row")
    return decisions, actuals


def fit(decisions, actuals, **kw) -> Calibration:
    engine = FrameEngine(decisions)
    return fit_calibration_frames(engine, decisions.select(KEYS), actuals, log=lambda _: None, **kw)


def test_temperature_recovered():
    rng = np.random.default_rng(5)
    dec, act = simulated_market(rng, 12_000, true_t=2.0)
    cal = fit(dec, act)
    assert cal.temperature == pytest.approx(2.0, abs=0.15)
    assert cal.other_shift == pytest.approx(0.0, abs=0.12)
    assert cal.info["utilities_reproduce_probs"] and cal.info["kept"] == "fit"
    # the shift of OTHER is found next to T; and T alone when the shift is off
    dec, act = simulated_market(rng, 12_000, true_t=0.5, true_shift=0.8)
    cal = fit(dec, act)
    assert cal.temperature == pytest.approx(0.5, abs=0.05) and cal.other_shift == pytest.approx(0.8, abs=0.15)
    dec, act = simulated_market(rng, 8_000, true_t=2.0)
    cal = fit(dec, act, other_shift=False)
    assert cal.temperature == pytest.approx(2.0, abs=0.2) and cal.other_shift == 0.0


def test_calibration_never_increases_val_nll():
    rng = np.random.default_rng(9)
    for true_t, shift in ((1.0, 0.0), (3.0, -0.5), (0.7, 0.4)):
        dec, act = simulated_market(rng, 1_500, true_t=true_t, true_shift=shift)
        cal = fit(dec, act)
        before, after = decision_scores(dec, act), decision_scores(cal.apply(dec), act)
        assert after["nll"] <= before["nll"] + 1e-12
        assert cal.info["nll_after"] == pytest.approx(after["nll"], rel=1e-9)
        assert cal.info["nll_before"] == pytest.approx(before["nll"], rel=1e-9)
    # a well-calibrated engine moves little: T near 1
    dec, act = simulated_market(rng, 6_000)
    assert fit(dec, act).temperature == pytest.approx(1.0, abs=0.1)
    # zero probabilities (a persistence-like engine: no utility): the options with prob 0 stay at 0, occasions
    # whose actual choice has prob 0 are left out of the fit and counted
    dec, act = simulated_market(rng, 2_000, true_t=2.0)
    zeroed = dec.with_columns(
        prob=pl.when(pl.col("product_id") == "p0").then(0.0).otherwise(pl.col("prob")), utility=float("nan")
    )
    zeroed = zeroed.with_columns(prob=pl.col("prob") / pl.col("prob").sum().over("occasion_id"))
    cal = fit(zeroed, act)
    n_zero = act.filter(pl.col("product_id") == "p0").height
    assert cal.info["n_zero_prob"] == n_zero > 0 and not cal.info["utilities_reproduce_probs"]
    out = cal.apply(zeroed)
    assert out.filter(pl.col("product_id") == "p0")["prob"].max() == 0.0
    assert out["utility"].is_nan().all()
    check_decisions(zeroed.select(KEYS), out)
    before, after = decision_scores(zeroed, act), decision_scores(out, act)
    assert after["nll"] <= before["nll"] and after["n_zero_prob"] == before["n_zero_prob"] == n_zero
    assert cal.temperature > 1.2  # the engine's sharpness is still found on the other occasions


def test_identity_kept_when_the_fit_is_not_better():
    # one occasion, chosen option already prob 1 - eps: (1, 0) is (near) optimal and nothing is worse than it
    dec = pl.DataFrame(
        {
            "occasion_id": ["a", "a"],
            "product_id": ["p0", OTHER],
            "utility": [0.0, 0.0],
            "prob": [0.5, 0.5],
            "expected_qty": [1.0, 1.0],
        }
    )
    act = pl.DataFrame({"occasion_id": ["a"], "product_id": ["zz"], "quantity": [1]})  # outside: OTHER chosen
    cal = fit(dec, act, other_shift=False)  # log p is the same on both rows: 1/T cannot change anything
    assert cal.info["nll_after"] <= cal.info["nll_before"]
    empty = fit(dec, act.with_columns(occasion_id=pl.lit("none")))
    assert (empty.inv_temperature, empty.other_shift) == (1.0, 0.0)


def test_isotonic_quantity_monotone_and_lowers_mae():
    rng = np.random.default_rng(2)
    dec, act = simulated_market(rng, 3_000, qty_bias=0.5)  # the engine halves every quantity
    cal = fit(dec, act)
    ys = np.array(cal.qty_y)
    assert len(cal.qty_x) >= 2 and np.all(np.diff(cal.qty_x) > 0) and np.all(np.diff(ys) >= 0)
    assert ys.min() >= 1.0  # actual units are at least 1 (the floor 1e-3 is below)
    # monotone on a grid, flat beyond the ends
    grid = np.linspace(-1.0, 5.0, 61)
    q = cal.quantity(grid, np.zeros(grid.size, dtype=bool))
    assert np.all(np.diff(q) >= 0) and np.all(q > 0)
    before, after = decision_scores(dec, act), decision_scores(cal.apply(dec), act)
    assert after["qty_mae"] < 0.8 * before["qty_mae"]
    # OTHER keeps the options' curve unless it gets its own
    assert not cal.other_qty_x
    own = fit(dec, act, other_quantity=True, min_qty_occasions=5)
    assert own.other_qty_x and own.info["n_other_qty_occasions"] >= 5
    # too few points: no curve
    assert fit(dec.head(40), act.head(5), min_qty_occasions=20).qty_x == []


def test_round_trip_gives_identical_decisions():
    rng = np.random.default_rng(4)
    dec, act = simulated_market(rng, 800, true_t=1.7, qty_bias=1.3)
    cal = fit(dec, act, other_quantity=True, min_qty_occasions=5)
    text = json.dumps(cal.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere
    back = Calibration.from_dict(json.loads(text))
    assert back.to_dict() == cal.to_dict()
    assert back.apply(dec).equals(cal.apply(dec), null_equal=True)
    engine = FrameEngine(dec)
    a, b = CalibratedEngine(engine, cal), CalibratedEngine(engine, back)
    assert a.name == "given+cal" and a.decide(dec.select(KEYS)).equals(b.decide(dec.select(KEYS)))
    with pytest.raises(ValueError, match="format_version"):
        Calibration.from_dict(json.loads(text) | {"format_version": 99})
    with pytest.raises(ValueError, match="inv_temperature"):
        Calibration.from_dict(json.loads(text) | {"inv_temperature": 0.0})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The hand-made warehouse, its test market built, clogit and persistence fitted (tiny: degenerate fits)."""
    c = make_warehouse(tmp_path_factory.mktemp("calibrate") / "w.duckdb")
    build_market_occasions(c)
    engines = fit_classic_engines(
        c, ("clogit",), settings=BaselineSettings(lgbm_min_data_in_leaf=1), log=lambda _: None
    )
    yield c, engines
    c.close()


def test_calibrated_engine_on_the_small_warehouse(small):
    c, engines = small
    before = c.sql("select * from market_options order by all").pl()
    cals = {
        n: fit_calibration(c, e, min_qty_occasions=1, other_quantity=True, log=lambda _: None)
        for n, e in engines.items()
    }
    assert c.sql("select * from market_options order by all").pl().equals(before, null_equal=True)  # restored
    frame, actual = load_market_frame(c), load_market_actuals(c)
    for name, engine in engines.items():
        d = engine.decide(frame)
        # the interface's promise the calibration relies on: a classic engine's utilities (OTHER's included)
        # reproduce its probabilities; persistence has none
        assert utilities_reproduce_probs(d) == (name != "persistence")
        assert cals[name].info["utilities_reproduce_probs"] == (name != "persistence")
        cal_engine = CalibratedEngine(engine, cals[name])
        out = cal_engine.decide(frame)
        check_decisions(frame, out)
        assert cal_engine.name == f"{name}+cal" and out.height == frame.height
        if name != "persistence":
            assert utilities_reproduce_probs(out)
        report = calibration_report(engine, cal_engine, frame, actual)
        assert report["calibrated"].to_list() == [False, True]
        assert report["n_occasions"].to_list() == [15, 15] and report["engine"].to_list() == [name, name]
        assert report.filter(pl.col("calibrated"))["top1_hit"].is_between(0.0, 1.0).all()
        # the round trip holds on the real engine too
        back = Calibration.from_dict(json.loads(json.dumps(cals[name].to_dict(), allow_nan=False)))
        assert CalibratedEngine(engine, back).decide(frame).equals(out, null_equal=True)
