"""The calibrated hybrid (assets/simulation/calibration.py): u = a * u_llm + b * s_clogit fitted on val."""

import numpy as np
import polars as pl
import pytest

from assets.evaluation.clogit import group_softmax
from assets.simulation import calibration as C

K = 5


def _market(n_eps: int, llm_signal: float, seed: int = 0):
    """Episodes whose true utility is s (the logit's index) + llm_signal * z, where z is what only the LLM
    sees; the LLM's utility is 2 z + noise. Returns decisions, baselines, options frames."""
    rng = np.random.default_rng(seed)
    dec, base, opts = [], [], []
    for e in range(n_eps):
        eid = f"e{e:04d}"
        s = rng.normal(size=K)
        z = rng.normal(size=K)
        p = group_softmax(s + llm_signal * z, np.array([0, K]))
        chosen = rng.choice(K, p=p)
        u_llm = 2.0 * z + 0.1 * rng.normal(size=K)
        for i in range(K):
            pid = f"p{i}"
            dec.append(("r", "llm_m", eid, pid, float(u_llm[i]), 0.0, False, 1.0, 1.0))
            base.append(("clogit", eid, pid, float(s[i]), None))
            opts.append((eid, pid, i + 1, i == chosen))
    decisions = pl.DataFrame(
        dec,
        schema=[
            "run_id",
            "method",
            "episode_id",
            "product_id",
            "utility",
            "prob",
            "is_top",
            "expected_qty",
            "median_qty",
        ],
        orient="row",
    )
    baselines = pl.DataFrame(
        base,
        schema={
            "method": pl.Utf8,
            "episode_id": pl.Utf8,
            "product_id": pl.Utf8,
            "score": pl.Float64,
            "prob": pl.Float64,
        },
        orient="row",
    )
    options = pl.DataFrame(opts, schema=["episode_id", "product_id", "position", "is_chosen"], orient="row")
    return decisions, baselines, options


def test_hybrid_learns_what_only_the_llm_knows():
    d, b, o = _market(1500, llm_signal=1.0)
    fit = C.fit_hybrid("llm_m", C.paired_frame(d, b, o))
    # truth: u = s + z = s + 0.5 * u_llm (up to the LLM's noise)
    assert fit.coef_base == pytest.approx(1.0, abs=0.15)
    assert fit.coef_llm == pytest.approx(0.5, abs=0.1)
    assert fit.loglik > fit.loglik_base + 50  # far better than the logit alone on val
    assert abs(fit.corr_llm_base) < 0.1


def test_hybrid_falls_back_to_the_logit_when_the_llm_knows_nothing():
    d, b, o = _market(1500, llm_signal=0.0)
    fit = C.fit_hybrid("llm_m", C.paired_frame(d, b, o))
    assert abs(fit.coef_llm) < 0.05 and fit.coef_base == pytest.approx(1.0, abs=0.15)


def test_hybrid_without_val_episodes_is_the_classic_logit():
    d, b, o = _market(20, llm_signal=1.0)
    paired = C.paired_frame(d, b, o)
    fit = C.fit_hybrid("llm_m", paired.clear())
    assert (fit.coef_llm, fit.coef_base, fit.n_val_episodes) == (0.0, 1.0, 0)
    rows = C.hybrid_rows(fit, paired, d)
    logit = paired.select("episode_id", "product_id", "s_base").join(rows, on=["episode_id", "product_id"])
    assert np.allclose(logit["utility"], logit["s_base"])
    assert rows.group_by("episode_id").agg(pl.col("prob").sum())["prob"].to_list() == pytest.approx(
        [1.0] * 20
    )
    assert rows.group_by("episode_id").agg(pl.col("is_top").sum())["is_top"].to_list() == [1] * 20
    assert rows["method"].unique().to_list() == ["hybrid_llm_m"]


def test_paired_frame_drops_incomplete_episodes():
    d, b, o = _market(3, llm_signal=1.0)
    d = d.with_columns(
        utility=pl.when((pl.col("episode_id") == "e0000") & (pl.col("product_id") == "p1"))
        .then(float("nan"))
        .otherwise(pl.col("utility"))
    )
    b = b.filter(~((pl.col("episode_id") == "e0001") & (pl.col("product_id") == "p2")))
    assert C.paired_frame(d, b, o)["episode_id"].unique().to_list() == ["e0002"]


def test_within_episode_correlation_ignores_episode_means():
    df = pl.DataFrame(
        {
            "episode_id": ["a"] * 3 + ["b"] * 3,
            "x": [1.0, 2.0, 3.0, 101.0, 102.0, 103.0],
            "y": [3.0, 2.0, 1.0, -50.0, -51.0, -52.0],
        }
    )
    assert C.within_episode_corr(df, "x", "y") == pytest.approx(-1.0)


def test_a_hybrid_on_lgbm_uses_lgbm_scores_and_is_named_for_it():
    d, b, o = _market(1500, llm_signal=1.0)
    # lgbm's score: the true index s plus what only the LLM sees, so the LLM adds nothing beyond it
    z = d.select("episode_id", "product_id", (pl.col("utility") / 2.0).alias("z"))
    lg = (
        b.join(z, on=["episode_id", "product_id"])
        .with_columns(method=pl.lit("lgbm"), score=pl.col("score") + pl.col("z"))
        .drop("z")
    )
    both = pl.concat([b, lg])
    on_logit = C.fit_hybrid("llm_m", C.paired_frame(d, both, o))
    on_lgbm = C.fit_hybrid("llm_m", C.paired_frame(d, both, o, "lgbm"), "lgbm")
    assert on_logit.coef_llm == pytest.approx(0.5, abs=0.1)  # the logit misses z: the LLM adds it
    assert abs(on_lgbm.coef_llm) < 0.1 and on_lgbm.coef_base == pytest.approx(1.0, abs=0.15)
    assert on_lgbm.corr_llm_base > 0.5
    assert (on_logit.method, on_lgbm.method) == ("hybrid_llm_m", "hybrid_lgbm_llm_m")
    meta = on_lgbm.as_metadata()
    assert "hybrid_lgbm_llm_m.coef_lgbm" in meta and "hybrid_lgbm_llm_m.corr_llm_lgbm" in meta
