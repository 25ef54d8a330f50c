"""simulate_market with everything on (assets/market/run.py) on the synthetic market (300 customers, no
customers table: every segment 'unknown'): calibrated runs, a raked customer sample, stability over seeds."""

from __future__ import annotations

import math

import polars as pl
import pytest

from assets.market import report, run
from tests.test_market_occasions import synthetic  # noqa: F401 - a fixture

KNOBS = dict(
    period="test", categories=2, category_ids=[], weeks=2, customers=0, customer_ids=[], m_options=20,
    alpha=1.0, epsilon=1e-3, max_iter=20, own_history=False, seed=0, use_adapter=False, llm_val_occasions=0, augment_token_budget=0,
    sample_mean_field="all", llm_max_iter=0, llm_signals="mean_field",
)  # fmt: skip


@pytest.fixture(scope="module")
def market(synthetic):  # noqa: F811 - the imported fixture
    settings = run.MarketSettings(
        **KNOBS, engines=["clogit", "persistence"], calibrate=True, sample_customers=100,
        sample_engines=["clogit"], stability_seeds=3, stability_engines=["clogit"],
    )  # fmt: skip
    logs: list[str] = []
    result = run.simulate_market(synthetic, settings, log=logs.append)
    return result, logs


def test_sample_mean_field_picks_the_sample_runs_with_a_mean_field():
    runs = [(w, c) for w in ("scaled", "raked") for c in (False, True)]
    assert [r for r in runs if run._sample_mf("raked", *r)] == [("raked", False)]
    assert all(run._sample_mf("all", *r) for r in runs) and not any(run._sample_mf("none", *r) for r in runs)


def test_an_unknown_sample_mean_field_is_one_line_before_any_work():
    settings = run.MarketSettings(
        **(KNOBS | {"sample_mean_field": "some"}), engines=["clogit"], calibrate=False, sample_customers=0,
        sample_engines=[], stability_seeds=0, stability_engines=[],
    )  # fmt: skip
    with pytest.raises(ValueError, match="use one of all, raked, none") as e:
        run.simulate_market(None, settings, log=lambda _: None)  # no warehouse touched
    assert "\n" not in str(e.value)


def test_every_run_is_keyed_and_scored(market, synthetic):  # noqa: F811
    result, _ = market
    m = result.metrics
    keys = ["engine", "population", "weighting", "calibrated", "mean_field"]
    assert m.select(keys).is_unique().all()
    pop = m.filter(pl.col("population") == "all")
    assert pop.height == 5  # clogit x (calibrated or not) x (mean field or not), persistence once
    assert set(pop["weighting"]) == {"none"}
    sample = m.filter(pl.col("population") == "sample")
    assert sample.height == 8 and set(sample["weighting"]) == {"scaled", "raked"}
    assert (sample["n_customers"] == 100).all() and (pop["n_customers"] > 100).all()
    # the sample is scored against the population's actual units; its share error against the population run
    assert (sample["actual_units"] == pop["actual_units"][0]).all()
    assert sample["vs_population_jsd"].is_between(0.0, 0.2).all() and pop["vs_population_jsd"].is_null().all()
    assert m["share_jsd_cw"].is_between(0.0, 1.0).all()
    # the population's market tables are back after the sample's
    n = synthetic.execute("select count(*) from market_occasions").fetchone()[0]
    assert n == pop["n_occasions"][0] > sample["n_occasions"][0]


def test_raking_meets_the_category_margins(market):
    """Raked, the sample's occasions per category add up to the population's (the margin); scaled by N / n
    they need not."""
    result, _ = market
    rw = result.fitted["reweighting"]
    assert rw["info"]["max_rel_error"] < 1e-6
    raked = result.metrics.filter((pl.col("weighting") == "raked") & ~pl.col("calibrated"))
    scaled = result.metrics.filter((pl.col("weighting") == "scaled") & ~pl.col("calibrated"))
    assert raked.height == scaled.height == 2


def test_calibration_is_fitted_and_reported(market):
    result, logs = market
    cal = result.calibration
    assert cal.select("engine", "calibrated").rows() == [("clogit", False), ("clogit", True)]
    assert cal["nll"].is_finite().all() and cal["ece_top"].is_between(0.0, 1.0).all()
    fitted = result.fitted["calibration/clogit"]
    assert math.isfinite(fitted["inv_temperature"]) and fitted["inv_temperature"] > 0
    assert any(line.startswith("calibration of clogit") for line in logs)
    assert "calibration/clogit/after/nll" in report.table_headlines(result)


def test_stability_over_seeds(market):
    result, _ = market
    s = result.stability
    assert s.select("engine", "mean_field").rows() == [("clogit", False), ("clogit", True)]
    assert (s["seeds"] == 3).all() and (s["share_cv_cw"] > 0).all()
    assert s["top1_agreement"].is_between(0.0, 1.0).all()
    md = report.report_markdown(result)
    assert "Stability of clogit" in md and "Calibration" in md and "clogit+cal sample raked" in md


def test_report_plots(market, tmp_path):
    result, _ = market
    paths = report.plot_report(result, tmp_path)
    assert {"plot", "residual_plot", "stability_plot_clogit"} <= set(paths)
    assert all(p.stat().st_size > 1000 for p in paths.values())
