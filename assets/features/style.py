"""Customer style parameters rho_i (docs/design.md "The frame"), estimated from train-period episodes.

Plain logic, no Dagster. The estimate is a random-coefficient conditional logit fitted in three steps:

1. population: one pooled conditional logit on a seeded sample of episodes, with the focal features
   (within-set log price, discount depth, loss and gain against the customer's reference price, brand bought
   before) and controls that absorb product quality and habit (popularity, past purchases, newness);
2. segments: the focal coefficients per customer segment, the controls' utility held fixed as an offset;
3. customers: per-customer focal coefficients, MAP with a Gaussian prior centred on the segment's
   coefficients. The prior variance tau^2 of each coefficient is estimated from the data (empirical Bayes:
   the method-of-moments estimate from raw per-customer estimates and their sampling variances), so a
   customer with a short history ends up near the segment mean and one with a long history near their own.

All customers are fitted at once by a vectorised Newton method (per-customer gradients and Hessians are
segment sums over rows), with step halving per customer so that every customer's objective rises.

Signs and readings:
- price_sensitivity = -(coefficient of ln price minus the choice set's mean ln price): larger = more
  sensitive. Centring within the set makes it a clean within-episode response to price.
- discount_sensitivity = coefficient of discount_depth (larger = responds more to discounts).
- loss_aversion = -(coefficient of loss) / (population coefficient of gain), with loss = max(0, ln p - ln r)
  and gain = max(0, ln r - ln p), r the customer's reference price (option_features.ref_price): how much more
  a rise above the reference hurts than an equal fall helps (1 = symmetric). The gain coefficient is held at
  its population value (floored at 0.05 so the ratio stays defined).
- brand_loyalty = coefficient of "bought this brand in this category before" (a utility bonus).
- variety_seeking = share of the customer's episodes choosing a product they had not bought before,
  shrunk towards the segment share (beta-binomial empirical Bayes).
- basket_size = mean units per basket; basket_lines = mean distinct products per basket (train-period
  retail baskets), both shrunk towards the segment mean (normal empirical Bayes).
- shrink_weight = tau^2 / (tau^2 + s_i^2) of price_sensitivity (1: own history only, 0: segment mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

FOCAL = ("price", "discount", "loss", "brand")  # per-customer (random) coefficients
CONTROLS = ("gain", "log_pop_28d", "log_pop_total", "is_new", "log_cust_product", "bought_product")


@dataclass
class StyleFit:
    """What the estimation produced (besides the per-customer table)."""

    population_coef: dict[str, float]
    segment_coef: dict[str, dict[str, float]]
    tau2: dict[str, float]
    n_episodes: int
    n_customers: int
    newton_iterations: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- design matrix


def design_matrix(rows: pl.DataFrame, ep_ptr: np.ndarray, row_episode: np.ndarray) -> np.ndarray:
    """Model features (columns FOCAL + CONTROLS) from option rows sorted by episode
    (columns of sql/features/select_style_options.sql)."""

    def col(name: str) -> np.ndarray:
        return rows[name].cast(pl.Float64).fill_null(0.0).to_numpy()

    lp = np.log(col("price") + 0.01)
    counts = np.diff(np.r_[ep_ptr, len(lp)])
    lp_mean = (np.add.reduceat(lp, ep_ptr) / counts)[row_episode] if len(lp) else lp
    lgap = lp - np.log(col("ref_price") + 0.01)
    features = {
        "price": lp - lp_mean,
        "discount": np.clip(col("discount_depth"), -1.0, 1.0),
        "loss": np.clip(lgap, 0.0, 3.0),
        "gain": np.clip(-lgap, 0.0, 3.0),
        "brand": (col("cust_brand_purchases") > 0).astype(float),
        "log_pop_28d": np.log1p(col("pop_28d")),
        "log_pop_total": np.log1p(col("pop_total")),
        "is_new": col("is_new"),
        "log_cust_product": np.log1p(col("cust_product_purchases")),
        "bought_product": (col("cust_product_purchases") > 0).astype(float),
    }
    return (
        np.column_stack([features[c] for c in FOCAL + CONTROLS])
        if len(lp)
        else np.zeros((0, len(FOCAL + CONTROLS)))
    )


# ----------------------------------------------------------------------------- grouped Newton


@dataclass
class _Episodes:
    """Rows sorted by episode; `ptr[e]` is the first row of episode e."""

    ptr: np.ndarray
    row_episode: np.ndarray

    @classmethod
    def from_sorted(cls, eidx: np.ndarray) -> _Episodes:
        if len(eidx) == 0:
            return cls(ptr=np.zeros(0, np.int64), row_episode=np.zeros(0, np.int64))
        starts = np.flatnonzero(np.r_[True, eidx[1:] != eidx[:-1]])
        counts = np.diff(np.r_[starts, len(eidx)])
        return cls(ptr=starts, row_episode=np.repeat(np.arange(len(starts)), counts))


def _softmax(u: np.ndarray, ep: _Episodes) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode probabilities and log-probabilities of rows."""
    umax = np.maximum.reduceat(u, ep.ptr)[ep.row_episode]
    ex = np.exp(u - umax)
    den = np.add.reduceat(ex, ep.ptr)[ep.row_episode]
    return ex / den, u - umax - np.log(den)


def grouped_clogit(
    X: np.ndarray,
    y: np.ndarray,
    ep: _Episodes,
    row_group: np.ndarray,
    n_groups: int,
    offset: np.ndarray | None = None,
    prior_mean: np.ndarray | None = None,
    prior_prec: np.ndarray | float | None = None,
    max_iter: int = 30,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Conditional logit with one coefficient vector per group (MAP under a Gaussian prior).

    X: (n_rows, k) sorted by episode; y: 1 for the chosen row of each episode; row_group: group of each row
    (constant within an episode). prior_mean: (n_groups, k); prior_prec: scalar, (k,) or (n_groups, k).
    Sums run per episode first (np.add.reduceat over contiguous rows), then per group over episodes.
    Returns (coef (n_groups, k), Hessian of the negative log-posterior (n_groups, k, k), iterations).
    """
    n, k = X.shape
    offset = np.zeros(n) if offset is None else offset
    mu = np.zeros((n_groups, k)) if prior_mean is None else np.asarray(prior_mean, float)
    prec = np.zeros((n_groups, k)) + (0.0 if prior_prec is None else np.asarray(prior_prec, float))
    ep_group = row_group[ep.ptr]
    pairs = [(a, b) for a in range(k) for b in range(a, k)]
    XX = {(a, b): X[:, a] * X[:, b] for a, b in pairs}
    yX = np.add.reduceat(y[:, None] * X, ep.ptr)  # chosen row's features per episode

    def per_group(values: np.ndarray) -> np.ndarray:
        return np.bincount(ep_group, weights=values, minlength=n_groups)

    def objective(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = offset + np.einsum("ij,ij->i", X, b[row_group])
        p, logp = _softmax(u, ep)
        ll = per_group(np.add.reduceat(y * logp, ep.ptr))
        return ll - 0.5 * (prec * (b - mu) ** 2).sum(1), p

    obj, p = objective(beta := mu.copy())
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - iterations are reported
        m = np.add.reduceat(p[:, None] * X, ep.ptr)  # expected features per episode
        grad = np.stack([per_group(yX[:, j] - m[:, j]) for j in range(k)], 1) - prec * (beta - mu)
        H = np.empty((n_groups, k, k))
        for a, b in pairs:
            h = per_group(np.add.reduceat(p * XX[a, b], ep.ptr) - m[:, a] * m[:, b])
            H[:, a, b] = H[:, b, a] = h
        H[:, np.arange(k), np.arange(k)] += prec + 1e-9
        step = np.clip(np.linalg.solve(H, grad[..., None])[..., 0], -3.0, 3.0)
        scale = np.ones(n_groups)
        for _ in range(20):  # step halving, per group, until no group's objective falls
            new_beta = beta + scale[:, None] * step
            new_obj, new_p = objective(new_beta)
            worse = new_obj < obj - 1e-9 * (1 + np.abs(obj))
            if not worse.any():
                break
            scale[worse] *= 0.5
        beta, obj, p = new_beta, new_obj, new_p
        if np.max(np.abs(scale[:, None] * step)) < tol:
            break
    return beta, H, it


def eb_tau2(
    raw: np.ndarray, var: np.ndarray, center: np.ndarray, floor: float = 1e-4, iters: int = 100
) -> float:
    """Prior variance of a coefficient across customers (method of moments with precision weights)."""
    d2 = (raw - center) ** 2
    ok = np.isfinite(d2) & np.isfinite(var) & (var > 0)
    if ok.sum() < 3:
        return floor
    d2, var = d2[ok], var[ok]
    tau2 = max(floor, float(np.mean(d2 - var)))
    for _ in range(iters):
        w = 1.0 / (tau2 + var) ** 2
        new = max(floor, float(np.sum(w * (d2 - var)) / np.sum(w)))
        if abs(new - tau2) < 1e-10:
            break
        tau2 = new
    return tau2


def shrink_proportion(
    successes: np.ndarray, trials: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Beta-binomial empirical Bayes: shrink successes/trials towards the group's pooled share.

    The prior strength m (pseudo-trials) comes from the method of moments per group. Returns (raw, shrunk);
    raw is NaN where trials = 0 (shrunk is then the group share).
    """
    raw = np.where(trials > 0, successes / np.maximum(trials, 1), np.nan)
    shrunk = np.empty_like(raw)
    for g in np.unique(group):
        sel = group == g
        s, t = successes[sel], trials[sel]
        share = s.sum() / t.sum() if t.sum() > 0 else 0.5
        has = t > 0
        m = 10.0
        if has.sum() >= 3 and 0 < share < 1:
            r = s[has] / t[has]
            between = np.average((r - share) ** 2, weights=t[has]) - share * (1 - share) * np.mean(1 / t[has])
            rho_var = max(between, 1e-6)
            m = float(np.clip(share * (1 - share) / rho_var - 1, 0.5, 1e4))
        shrunk[sel] = (s + m * share) / (t + m)
    return raw, shrunk


def shrink_mean(values_sum: np.ndarray, sq_sum: np.ndarray, counts: np.ndarray, group: np.ndarray):
    """Normal empirical Bayes for per-customer means (values_sum / counts) towards the group mean."""
    raw = np.where(counts > 0, values_sum / np.maximum(counts, 1), np.nan)
    shrunk = np.empty_like(raw)
    for g in np.unique(group):
        sel = group == g
        c, sm, sq = counts[sel], values_sum[sel], sq_sum[sel]
        if c.sum() == 0:
            shrunk[sel] = np.nan
            continue
        grand = sm.sum() / c.sum()
        within = max((sq.sum() - (sm[c > 0] ** 2 / c[c > 0]).sum()) / max(c.sum() - (c > 0).sum(), 1), 1e-9)
        has = c > 0
        r = sm[has] / c[has]
        tau2 = max(float(np.mean((r - grand) ** 2 - within / c[has])), 1e-9) if has.sum() >= 3 else within
        w = tau2 / (tau2 + within / np.maximum(c, 1))
        w = np.where(c > 0, w, 0.0)
        shrunk[sel] = w * np.nan_to_num(raw[sel]) + (1 - w) * grand
    return raw, shrunk


# ----------------------------------------------------------------------------- the estimate


def estimate_style(
    rows: pl.DataFrame,
    customers: pl.DataFrame,
    baskets: pl.DataFrame,
    seed: int = 0,
    population_sample_episodes: int = 200_000,
    raw_prior_sd: float = 10.0,
    log=None,
) -> tuple[pl.DataFrame, StyleFit]:
    """rho_i for every customer of `customers` (and any customer in `rows`).

    rows: option rows of fit episodes (sql/features/select_style_options.sql): eidx, customer_id, is_chosen,
      price, ref_price, discount_depth, pop_28d, pop_total, is_new, cust_product_purchases,
      cust_brand_purchases. customers: customer_id, segment. baskets: customer_id, units, lines per
      train-period basket.
    """
    say = log or (lambda _msg: None)
    cust = customers.select("customer_id", pl.col("segment").fill_null("unknown"))
    extra = rows.select("customer_id").unique().join(cust, on="customer_id", how="anti")
    cust = pl.concat([cust, extra.with_columns(pl.lit("unknown").alias("segment"))]).unique("customer_id")
    cust = cust.sort("customer_id").with_row_index("cidx")
    seg_names = sorted(cust["segment"].unique().to_list())
    seg_of_cust = (
        cust["segment"].replace_strict(seg_names, list(range(len(seg_names)))).to_numpy().astype(np.int64)
    )
    n_cust, n_seg = cust.height, len(seg_names)

    df = rows.join(cust.select("customer_id", "cidx"), on="customer_id", how="left", maintain_order="left")
    eidx = df["eidx"].to_numpy()
    if len(eidx) > 1 and np.any(eidx[1:] < eidx[:-1]):
        df = df.sort("eidx", maintain_order=True)
        eidx = df["eidx"].to_numpy()
    ep = _Episodes.from_sorted(eidx)
    n_fit_episodes = len(ep.ptr)
    cols = list(FOCAL) + list(CONTROLS)
    X = design_matrix(df, ep.ptr, ep.row_episode)
    y = df["is_chosen"].cast(pl.Float64).to_numpy()
    cidx = df["cidx"].to_numpy().astype(np.int64)
    k_f = len(FOCAL)

    fit = StyleFit({}, {}, {}, n_fit_episodes, n_cust)
    coef_cust = np.zeros((n_cust, k_f))
    raw_coef = np.full((n_cust, k_f), np.nan)
    raw_var = np.full((n_cust, k_f), np.inf)
    tau2 = np.full(k_f, 1e-4)
    pop = np.zeros(len(cols))
    seg_coef = np.zeros((n_seg, k_f))
    if n_fit_episodes >= 2:
        # 1. population model on a seeded sample of episodes
        rng = np.random.default_rng(seed)
        n_ep = len(ep.ptr)
        keep_ep = np.zeros(n_ep, bool)
        keep_ep[rng.permutation(n_ep)[: min(n_ep, population_sample_episodes)]] = True
        rows_keep = keep_ep[ep.row_episode]
        Xs, ys = X[rows_keep], y[rows_keep]
        eps = _Episodes.from_sorted(ep.row_episode[rows_keep])
        pop_b, _, it = grouped_clogit(
            Xs, ys, eps, np.zeros(len(ys), np.int64), 1, prior_prec=np.full(len(cols), 1e-4)
        )
        pop = pop_b[0]
        fit.newton_iterations["population"] = it
        say(f"style: population logit on {keep_ep.sum()} episodes, {it} Newton steps")
        offset = X[:, k_f:] @ pop[k_f:]
        Xf = X[:, :k_f]
        # 2. segment means of the focal coefficients (controls fixed)
        seg_rows = seg_of_cust[cidx]
        seg_coef, _, it = grouped_clogit(
            Xf,
            y,
            ep,
            seg_rows,
            n_seg,
            offset=offset,
            prior_mean=np.tile(pop[:k_f], (n_seg, 1)),
            prior_prec=1e-3,
        )
        fit.newton_iterations["segments"] = it
        # 3a. raw per-customer estimates (a weak prior only keeps separable histories finite)
        prior_mean = seg_coef[seg_of_cust]
        raw_b, raw_H, it = grouped_clogit(
            Xf, y, ep, cidx, n_cust, offset=offset, prior_mean=prior_mean, prior_prec=1.0 / raw_prior_sd**2
        )
        fit.newton_iterations["customers_raw"] = it
        has = np.bincount(cidx, minlength=n_cust) > 0
        raw_cov = np.linalg.inv(raw_H)
        raw_coef[has] = raw_b[has]
        raw_var[has] = np.diagonal(raw_cov, axis1=1, axis2=2)[has]
        # 3b. empirical-Bayes prior variance, then the MAP (shrunk) estimates
        tau2 = np.array([eb_tau2(raw_coef[has, j], raw_var[has, j], prior_mean[has, j]) for j in range(k_f)])
        coef_cust, _, it = grouped_clogit(
            Xf, y, ep, cidx, n_cust, offset=offset, prior_mean=prior_mean, prior_prec=1.0 / tau2
        )
        fit.newton_iterations["customers_map"] = it
        say(f"style: per-customer MAP for {int(has.sum())} customers, tau2={np.round(tau2, 4).tolist()}")
    else:
        coef_cust[:] = 0.0
    fit.population_coef = {c: float(v) for c, v in zip(cols, pop, strict=True)}
    fit.segment_coef = {
        s: dict(zip(FOCAL, map(float, seg_coef[i]), strict=True)) for i, s in enumerate(seg_names)
    }
    fit.tau2 = dict(zip(FOCAL, map(float, tau2), strict=True))

    gain_coef = max(float(pop[len(FOCAL)]) if len(pop) > k_f else 0.0, 0.05)
    shrink_w = np.where(np.isfinite(raw_var[:, 0]), tau2[0] / (tau2[0] + raw_var[:, 0]), 0.0)

    # variety seeking: chosen product not bought by the customer before
    chosen = df.filter(pl.col("is_chosen")) if df.height else df
    vs = (
        chosen.group_by("cidx").agg(
            pl.len().alias("n"), (pl.col("cust_product_purchases") == 0).sum().alias("new")
        )
        if df.height
        else pl.DataFrame(
            {"cidx": [], "n": [], "new": []}, schema={"cidx": pl.UInt32, "n": pl.UInt32, "new": pl.UInt32}
        )
    )
    n_ep_c = np.zeros(n_cust)
    n_new = np.zeros(n_cust)
    n_ep_c[vs["cidx"].to_numpy()] = vs["n"].to_numpy()
    n_new[vs["cidx"].to_numpy()] = vs["new"].to_numpy()
    variety_raw, variety = shrink_proportion(n_new, n_ep_c, seg_of_cust)

    # basket size: units and lines per train-period basket
    b = baskets.join(cust.select("customer_id", "cidx"), on="customer_id", how="inner")
    stats = {}
    for col in ("units", "lines"):
        g = b.group_by("cidx").agg(
            pl.len().alias("n"),
            pl.col(col).cast(pl.Float64).sum().alias("s"),
            (pl.col(col).cast(pl.Float64) ** 2).sum().alias("q"),
        )
        cnt, sm, sq = np.zeros(n_cust), np.zeros(n_cust), np.zeros(n_cust)
        ix = g["cidx"].to_numpy()
        cnt[ix], sm[ix], sq[ix] = g["n"].to_numpy(), g["s"].to_numpy(), g["q"].to_numpy()
        stats[col] = shrink_mean(sm, sq, cnt, seg_of_cust)

    out = cust.select("customer_id", "segment").with_columns(
        pl.Series("n_episodes", n_ep_c.astype(np.int64)),
        pl.Series("price_sensitivity", -coef_cust[:, 0]),
        pl.Series("discount_sensitivity", coef_cust[:, 1]),
        pl.Series("loss_aversion", -coef_cust[:, 2] / gain_coef),
        pl.Series("brand_loyalty", coef_cust[:, 3]),
        pl.Series("variety_seeking", variety),
        pl.Series("basket_size", stats["units"][1]),
        pl.Series("basket_lines", stats["lines"][1]),
        pl.Series("price_sensitivity_raw", -raw_coef[:, 0]),
        pl.Series("discount_sensitivity_raw", raw_coef[:, 1]),
        pl.Series("loss_aversion_raw", -raw_coef[:, 2] / gain_coef),
        pl.Series("brand_loyalty_raw", raw_coef[:, 3]),
        pl.Series("variety_seeking_raw", variety_raw),
        pl.Series("basket_size_raw", stats["units"][0]),
        pl.Series("basket_lines_raw", stats["lines"][0]),
        pl.Series("shrink_weight", shrink_w),
    )
    out = out.with_columns(pl.col(pl.Float64).fill_nan(None))
    return out, fit


def style_metadata(fit: StyleFit) -> dict[str, Any]:
    """Plain numbers about the fit, for Dagster metadata."""
    meta: dict[str, Any] = {"fit_episodes": fit.n_episodes, "customers": fit.n_customers}
    meta.update({f"population_coef_{k}": v for k, v in fit.population_coef.items()})
    meta.update({f"tau2_{k}": v for k, v in fit.tau2.items()})
    return meta
