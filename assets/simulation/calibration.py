"""Calibration of the LLM utilities: the calibrated hybrid (docs/design.md's calibration function f, simplest form).

The hybrid's utility of an option is

    u_hybrid = a * u_llm + b * s_clogit

where u_llm is the language model's utility (log P(Yes) - log P(No), retail_decisions) and s_clogit the
classic conditional logit's linear index on the structured option features (baseline_predictions, fitted on
train episodes). The same fit on lightgbm's ranking score instead of the logit's index (hybrid_lgbm_*) asks
whether the language model adds anything to the best classic model (lgbm also used val for its early
stopping and temperature, so its val scores are slightly optimistic; the test splits stay clean). a and b are fitted by maximum likelihood (a conditional logit with two features) on the
validation episodes that both have; b also plays the temperature of the classic logit. a = 0, b = 1 is the
classic logit itself, so the hybrid can only add what the language model knows beyond the features; with
few validation episodes the fit shrinks a towards 0 and b towards 1 (a weak Gaussian prior), so noise on val
does not pull the hybrid below the logit.

Also the probe of why an LLM method wins or loses: the within-episode correlation of its utility with the
classic logit's index (a high correlation means the LLM mostly relearnt the features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.clogit import fit_clogit, group_softmax

BASE_METHOD = "clogit"  # the classic logit whose index the hybrid contains
HYBRID_BASES = ("clogit", "lgbm")  # the classic scores a hybrid is fitted on (each when present)
PRIOR_L2 = 1.0  # prior precision (summed log-likelihood units): weak against 100+ val episodes


@dataclass
class HybridFit:
    """The fitted hybrid of one LLM method: coefficients, their standard errors, and what it was fit on."""

    llm_method: str
    base_method: str = BASE_METHOD
    coef_llm: float = 0.0
    coef_base: float = 1.0
    se_llm: float | None = None
    se_base: float | None = None
    n_val_episodes: int = 0
    loglik: float = float("nan")
    loglik_base: float = float("nan")  # the base method's log-likelihood on the same val episodes
    corr_llm_base: float = float("nan")  # within-episode correlation of u_llm and the base score (val)
    converged: bool = False
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return hybrid_name(self.llm_method, self.base_method)

    def as_metadata(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), 4)

        return {
            f"{self.method}.coef_llm": r(self.coef_llm),
            f"{self.method}.coef_{self.base_method}": r(self.coef_base),
            f"{self.method}.se_llm": r(self.se_llm),
            f"{self.method}.n_val_episodes": self.n_val_episodes,
            f"{self.method}.val_loglik_gain": r(self.loglik - self.loglik_base),
            f"{self.method}.corr_llm_{self.base_method}": r(self.corr_llm_base),
        }


def hybrid_name(llm_method: str, base_method: str = BASE_METHOD) -> str:
    """hybrid_<llm method> on the logit (e.g. hybrid_llm_aligned_utility), hybrid_<base>_<llm method> on
    another classic score (hybrid_lgbm_llm_aligned_utility)."""
    return f"hybrid_{llm_method}" if base_method == BASE_METHOD else f"hybrid_{base_method}_{llm_method}"


def paired_frame(
    decisions: pl.DataFrame, baselines: pl.DataFrame, options: pl.DataFrame, base_method: str = BASE_METHOD
) -> pl.DataFrame:
    """One row per option of the episodes where the LLM scored every option and the base method scored
    every option: episode_id, product_id, is_chosen, u_llm, s_base; sorted by episode and position."""
    llm = decisions.select("episode_id", "product_id", pl.col("utility").alias("u_llm"))
    base = baselines.filter(pl.col("method") == base_method).select(
        "episode_id", "product_id", pl.col("score").alias("s_base")
    )
    df = (
        options.select("episode_id", "product_id", "position", "is_chosen")
        .join(llm, on=["episode_id", "product_id"], how="left")
        .join(base, on=["episode_id", "product_id"], how="left")
    )
    ok = (
        df.group_by("episode_id")
        .agg(
            complete=(pl.col("u_llm").is_not_nan() & pl.col("u_llm").is_not_null()).all()
            & pl.col("s_base").is_not_null().all(),
            n_chosen=pl.col("is_chosen").cast(pl.Int64).sum(),
        )
        .filter(pl.col("complete") & (pl.col("n_chosen") == 1))
    )
    return df.join(ok.select("episode_id"), on="episode_id", how="semi").sort("episode_id", "position")


def _layout(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(group_offsets, chosen absolute row index) of a frame sorted by episode."""
    sizes = df.group_by("episode_id", maintain_order=True).len()["len"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    chosen_rows = np.flatnonzero(df["is_chosen"].to_numpy())
    return offsets, chosen_rows


def within_episode_corr(df: pl.DataFrame, a: str, b: str) -> float:
    """Pearson correlation of two columns after removing each episode's mean (NaN when undefined)."""
    if df.height < 3:
        return float("nan")
    d = df.with_columns(
        (pl.col(a) - pl.col(a).mean().over("episode_id")).alias("_a"),
        (pl.col(b) - pl.col(b).mean().over("episode_id")).alias("_b"),
    )
    x, y = d["_a"].to_numpy(), d["_b"].to_numpy()
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def fit_hybrid(llm_method: str, val: pl.DataFrame, base_method: str = BASE_METHOD) -> HybridFit:
    """Fit a, b on the val episodes of `val` (a paired_frame on `base_method`); with none, the base method
    itself (a=0, b=1)."""
    fit = HybridFit(llm_method=llm_method, base_method=base_method)
    n = val["episode_id"].n_unique() if val.height else 0
    fit.n_val_episodes = int(n)
    if n < 2:
        fit.message = f"{n} validation episodes with both utilities: the hybrid is {base_method}"
        return fit
    offsets, chosen = _layout(val)
    X = val.select("u_llm", "s_base").to_numpy().astype(np.float64)
    prior = np.array([0.0, 1.0])
    res = fit_clogit(
        X,
        offsets,
        chosen,
        l2=PRIOR_L2,  # penalty on the summed log-likelihood: about one pseudo-episode at the prior
        prior_mean=prior,
        feature_names=["u_llm", f"s_{base_method}"],
    )
    fit.coef_llm, fit.coef_base = float(res.coef[0]), float(res.coef[1])
    if res.se is not None:
        fit.se_llm, fit.se_base = float(res.se[0]), float(res.se[1])
    fit.loglik = float(res.loglik)
    p_base = group_softmax(X[:, 1], offsets)
    fit.loglik_base = float(np.log(np.clip(p_base[chosen], 1e-300, None)).sum())
    fit.corr_llm_base = within_episode_corr(val, "u_llm", "s_base")
    fit.converged = bool(res.converged)
    fit.message = res.message
    return fit


def hybrid_rows(fit: HybridFit, paired: pl.DataFrame, primary: pl.DataFrame) -> pl.DataFrame:
    """retail_decisions-shaped rows of the hybrid on the episodes of `paired`: utility, prob, is_top and
    the LLM method's expected quantity of the new top option (its quantity answer was for its own top)."""
    if paired.height == 0:
        return primary.clear()
    offsets, _ = _layout(paired)
    u = fit.coef_llm * paired["u_llm"].to_numpy() + fit.coef_base * paired["s_base"].to_numpy()
    prob = group_softmax(u, offsets)
    top = np.zeros(len(u), dtype=bool)
    for g in range(len(offsets) - 1):
        lo, hi = offsets[g], offsets[g + 1]
        top[lo + int(np.argmax(u[lo:hi]))] = True
    qty_cols = [c for c in ("expected_qty", "median_qty") if c in primary.columns]
    qty = primary.filter(pl.col("is_top")).select("episode_id", *qty_cols)
    run_id = primary["run_id"][0] if primary.height else ""
    out = paired.select("episode_id", "product_id").with_columns(
        run_id=pl.lit(run_id),
        method=pl.lit(fit.method),
        utility=pl.Series(u),
        prob=pl.Series(prob),
        is_top=pl.Series(top),
    )
    out = out.join(qty, on="episode_id", how="left").with_columns(
        [pl.when(pl.col("is_top")).then(pl.col(c)).alias(c) for c in qty_cols]
    )
    return out.select(primary.columns)
