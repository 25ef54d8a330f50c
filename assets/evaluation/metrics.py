"""The metrics of docs/evaluation-protocol.md as plain, vectorised polars/numpy functions.

Input shapes:
- a long frame of options: episode_id, product_id, score, prob, is_chosen, category (one row per option;
  `prob` may be all null for methods without probabilities);
- a quantity frame: episode_id, qty_pred, qty_actual (one row per episode).

Readings (where docs/evaluation-protocol.md needed one):
- hit@k with tied scores is the expected hit when tied options are ordered at random: with g options scored
  strictly above the actual one and t options (the actual one included) tied with it, the actual one's rank
  is uniform on g+1..g+t, so hit@k = clip((k - g) / t, 0, 1).
- a null or NaN score ranks below every real score (a method that did not score an option never prefers it).
- an episode whose actual option is missing from the frame counts as a miss (hit 0, p = the 1e-12 floor):
  it is never dropped silently.
- nll = mean of -ln(max(p_actual, 1e-12)); null when any option of the frame has a null prob.
- share_jsd: per category, JSD (base 2) between predicted shares (sum of probs per product over the
  episodes, normalised) and actual shares (actual choices per product, normalised), averaged over categories
  weighted by their number of episodes; null without probabilities.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl

P_FLOOR = 1e-12  # probabilities are clipped here before the log

METRIC_COLUMNS = ["n_episodes", "hit1", "hit3", "nll", "qty_mae", "qty_wape", "share_jsd"]


def _clean_scores(long: pl.DataFrame) -> pl.DataFrame:
    score = pl.col("score").cast(pl.Float64)
    return long.with_columns(score.fill_nan(None).fill_null(-math.inf).alias("score"))


def per_episode_hits(long: pl.DataFrame, ks: tuple[int, ...] = (1, 3)) -> pl.DataFrame:
    """One row per episode: episode_id, hit{k} for each k (expected value under random tie order)."""
    df = _clean_scores(long)
    s_act = pl.col("score").filter(pl.col("is_chosen")).first()
    agg = df.group_by("episode_id").agg(
        n_above=(pl.col("score") > s_act).sum(),
        n_tied=(pl.col("score") == s_act).sum(),
        has_actual=pl.col("is_chosen").any(),
    )
    cols = []
    for k in ks:
        frac = ((pl.lit(float(k)) - pl.col("n_above")) / pl.col("n_tied")).clip(0.0, 1.0)
        cols.append(
            pl.when(pl.col("has_actual") & (pl.col("n_tied") > 0)).then(frac).otherwise(0.0).alias(f"hit{k}")
        )
    return agg.select("episode_id", *cols)


def hit_at_k(long: pl.DataFrame, k: int) -> float:
    """Share of episodes whose actual product is in the top k (ties: expected value under random order)."""
    per = per_episode_hits(long, (k,))
    return float(per[f"hit{k}"].mean()) if per.height else float("nan")


def hit1(long: pl.DataFrame) -> float:
    return hit_at_k(long, 1)


def hit3(long: pl.DataFrame) -> float:
    return hit_at_k(long, 3)


def has_probs(long: pl.DataFrame) -> bool:
    """True when every option carries a probability."""
    return long.height > 0 and "prob" in long.columns and long["prob"].null_count() == 0


def per_episode_nll(long: pl.DataFrame) -> pl.DataFrame:
    """One row per episode: episode_id, nll = -ln(max(p_actual, 1e-12)) (missing actual: the floor)."""
    p_act = pl.col("prob").cast(pl.Float64).filter(pl.col("is_chosen")).first()
    return long.group_by("episode_id").agg(
        nll=-(p_act.fill_null(0.0).fill_nan(0.0).clip(P_FLOOR, None).log())
    )


def nll(long: pl.DataFrame) -> float | None:
    """Mean negative log-likelihood of the actual product; None for a method without probabilities."""
    if not has_probs(long):
        return None
    return float(per_episode_nll(long)["nll"].mean())


def qty_mae(qty: pl.DataFrame) -> float | None:
    """Mean absolute error of the predicted quantity (episodes with a null prediction are skipped)."""
    d = qty.filter(pl.col("qty_pred").is_not_null() & pl.col("qty_actual").is_not_null())
    if d.height == 0:
        return None
    return float((d["qty_pred"].cast(pl.Float64) - d["qty_actual"].cast(pl.Float64)).abs().mean())


def qty_wape(qty: pl.DataFrame) -> float | None:
    """Weighted absolute percentage error: sum |pred - actual| / sum actual (None when sum actual is 0)."""
    d = qty.filter(pl.col("qty_pred").is_not_null() & pl.col("qty_actual").is_not_null())
    total = float(d["qty_actual"].cast(pl.Float64).sum()) if d.height else 0.0
    if total <= 0:
        return None
    return float((d["qty_pred"].cast(pl.Float64) - d["qty_actual"].cast(pl.Float64)).abs().sum()) / total


def jsd_base2(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two distributions (normalised here; 0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def per_category_jsd(long: pl.DataFrame, by: tuple[str, ...] = ()) -> pl.DataFrame:
    """[*by], category, n_episodes, jsd (base 2) between predicted and actual product shares. Vectorised.

    `by`: extra grouping columns (e.g. ("split",) on a frame joined with split membership)."""
    keys = [*by, "category"]
    sums = long.group_by(*keys, "product_id").agg(
        pred=pl.col("prob").cast(pl.Float64).sum(),
        act=pl.col("is_chosen").cast(pl.Float64).sum(),
    )
    n_ep = long.group_by(keys).agg(n_episodes=pl.col("episode_id").n_unique())
    tot = pl.col("pred").sum().over(keys), pl.col("act").sum().over(keys)
    s = sums.with_columns(p=pl.col("pred") / tot[0], q=pl.col("act") / tot[1], pt=tot[0], qt=tot[1])
    s = s.with_columns(m=0.5 * (pl.col("p") + pl.col("q")))

    def term(c: str) -> pl.Expr:
        return pl.when(pl.col(c) > 0).then(pl.col(c) * (pl.col(c) / pl.col("m")).log(2.0)).otherwise(0.0)

    per = s.group_by(keys).agg(
        jsd=0.5 * term("p").sum() + 0.5 * term("q").sum(), pt=pl.col("pt").first(), qt=pl.col("qt").first()
    )
    # a category with no probability mass or no actual choice has no defined shares: left out
    per = per.filter((pl.col("pt") > 0) & (pl.col("qt") > 0)).drop("pt", "qt")
    return per.join(n_ep, on=keys, how="left").sort(keys)


def share_jsd(long: pl.DataFrame) -> float | None:
    """Episode-weighted mean over categories of the JSD (base 2) between predicted and actual shares."""
    if not has_probs(long):
        return None
    per = per_category_jsd(long)
    if per.height == 0:
        return None
    w = per["n_episodes"].cast(pl.Float64)
    return float((per["jsd"] * w).sum() / w.sum())


def evaluate(long: pl.DataFrame, qty: pl.DataFrame | None = None) -> dict[str, float | int | None]:
    """All metrics of one method on one split: n_episodes, hit1, hit3, nll, qty_mae, qty_wape, share_jsd."""
    hits = per_episode_hits(long, (1, 3))
    out: dict[str, float | int | None] = {
        "n_episodes": int(hits.height),
        "hit1": float(hits["hit1"].mean()) if hits.height else None,
        "hit3": float(hits["hit3"].mean()) if hits.height else None,
        "nll": nll(long),
        "qty_mae": None,
        "qty_wape": None,
        "share_jsd": share_jsd(long),
    }
    if qty is not None:
        ids = hits.select("episode_id")
        q = qty.join(ids, on="episode_id", how="inner")
        out["qty_mae"] = qty_mae(q)
        out["qty_wape"] = qty_wape(q)
    return out


def evaluate_splits(
    long: pl.DataFrame, qty: pl.DataFrame | None, members: pl.DataFrame, splits: list[str] | None = None
) -> list[dict[str, float | int | None]]:
    """evaluate() for several splits at once: `members` is (episode_id, split), an episode may be in several.

    Same definitions as evaluate() on the split's rows of `long`; one dict per split (with a "split" key),
    in the order of `splits` (default: order of first appearance in members).
    """
    splits = splits or members["split"].unique(maintain_order=True).to_list()
    per = per_episode_hits(long, (1, 3))
    probs = has_probs(long)
    if probs:
        per = per.join(per_episode_nll(long), on="episode_id", how="left")
    if qty is not None:
        per = per.join(qty.select("episode_id", "qty_pred", "qty_actual"), on="episode_id", how="left")
    pm = per.join(members, on="episode_id", how="inner")
    aggs = [pl.len().alias("n_episodes"), pl.col("hit1").mean(), pl.col("hit3").mean()]
    if probs:
        aggs.append(pl.col("nll").mean())
    if qty is not None:
        ok = pl.col("qty_pred").is_not_null() & pl.col("qty_actual").is_not_null()
        err = (pl.col("qty_pred").cast(pl.Float64) - pl.col("qty_actual").cast(pl.Float64)).abs().filter(ok)
        act = pl.col("qty_actual").cast(pl.Float64).filter(ok).sum()
        aggs += [err.mean().alias("qty_mae"), pl.when(act > 0).then(err.sum() / act).alias("qty_wape")]
    by_split = {r["split"]: r for r in pm.group_by("split").agg(aggs).iter_rows(named=True)}
    jsd: dict[str, float] = {}
    if probs:
        slim = long.select("episode_id", "product_id", "prob", "is_chosen", "category")
        per_cat = per_category_jsd(slim.join(members, on="episode_id", how="inner"), by=("split",))
        w = pl.col("n_episodes").cast(pl.Float64)
        for r in per_cat.group_by("split").agg(v=(pl.col("jsd") * w).sum() / w.sum()).iter_rows(named=True):
            jsd[r["split"]] = r["v"]
    out = []
    for split in splits:
        r = by_split.get(split, {})
        out.append(
            {
                "split": split,
                "n_episodes": int(r.get("n_episodes", 0)),
                "hit1": r.get("hit1"),
                "hit3": r.get("hit3"),
                "nll": r.get("nll"),
                "qty_mae": r.get("qty_mae"),
                "qty_wape": r.get("qty_wape"),
                "share_jsd": jsd.get(split),
            }
        )
    return out


# --- stability of stochastic simulators (R runs with different seeds) ---------------------------------


def top1_choices(long: pl.DataFrame) -> pl.DataFrame:
    """episode_id, product_id of each episode's highest-scored option (ties: the smaller product_id)."""
    df = _clean_scores(long)
    return (
        df.sort(["episode_id", "score", "product_id"], descending=[False, True, False])
        .group_by("episode_id", maintain_order=True)
        .first()
        .select("episode_id", "product_id")
    )


def top1_agreement(runs: list[pl.DataFrame]) -> float | None:
    """Mean over pairs of runs of the share of episodes with the same top-1 choice.

    Each run is a frame (episode_id, product_id) of its top-1 (or sampled) choice per episode; a pair is
    compared on the episodes both runs decided. None with fewer than 2 runs.
    """
    if len(runs) < 2:
        return None
    vals = []
    for a, b in itertools.combinations(runs, 2):
        j = a.select("episode_id", pa="product_id").join(
            b.select("episode_id", pb="product_id"), on="episode_id", how="inner"
        )
        if j.height:
            vals.append(float((j["pa"] == j["pb"]).mean()))
    return float(np.mean(vals)) if vals else None


def share_cv(runs: list[pl.DataFrame]) -> float | None:
    """Mean coefficient of variation (sample std, ddof=1, over the mean) of per-product simulated shares.

    Each run is a frame (episode_id, category, product_id) of its chosen product per episode; a product's
    share in a run is its choices / the run's episodes in its category. Products chosen in some runs only
    count with share 0 in the others; products with mean share 0 are left out. None with fewer than 2 runs.
    """
    if len(runs) < 2:
        return None
    shares = []
    for r, df in enumerate(runs):
        n = df.group_by("category").agg(n=pl.len())
        c = df.group_by("category", "product_id").agg(c=pl.len()).join(n, on="category")
        shares.append(c.select("category", "product_id", (pl.col("c") / pl.col("n")).alias(f"s{r}")))
    keys = pl.concat([s.select("category", "product_id") for s in shares]).unique()
    for s in shares:
        keys = keys.join(s, on=["category", "product_id"], how="left")
    mat = keys.select([f"s{r}" for r in range(len(runs))]).fill_null(0.0).to_numpy()
    mean = mat.mean(axis=1)
    std = mat.std(axis=1, ddof=1)
    ok = mean > 0
    return float(np.mean(std[ok] / mean[ok])) if ok.any() else None
