"""McFadden's conditional logit, vectorised (numpy + scipy L-BFGS-B with an analytic gradient).

Data layout (the same everywhere in this module):
- X: (n_rows, k) option features; the rows of one episode (choice set) are contiguous.
- group_offsets: (n_groups + 1,) increasing row offsets; episode g owns rows group_offsets[g]:group_offsets[g+1].
- chosen: (n_groups,) the absolute row index (into X) of the option chosen in each episode.

The model: U_j = base_j + x_j . beta, P(j | g) = exp(U_j) / sum_{l in g} exp(U_l).
The objective minimised is -sum_g w_g log P(chosen_g | g) + 0.5 * l2 * ||beta - prior_mean||^2, with the
penalty on the ORIGINAL feature scale (so the result does not depend on the internal standardisation;
l2 = 1/sigma^2 of a Gaussian prior N(prior_mean, sigma^2 I) on beta: a MAP estimate).

Features are standardised internally (centred and scaled by their standard deviation) for conditioning;
centring cancels within every choice set, so coefficients are reported on the original scale exactly.
statsmodels' ConditionalLogit does the same fit but is far too slow at ~10^6 episodes x 10 options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClogitResult", "fit_clogit", "clogit_utilities", "group_softmax", "group_index"]


@dataclass
class ClogitResult:
    """A fitted conditional logit. coef and se are on the original feature scale."""

    coef: np.ndarray  # (k,) coefficients on the original scale
    se: np.ndarray | None  # (k,) standard errors from the inverse (penalised) Hessian; None if singular
    loglik: float  # weighted log-likelihood at the optimum (without the penalty)
    n_groups: int  # episodes used (groups with at least one row)
    feature_names: list[str]
    converged: bool
    n_iter: int = 0  # L-BFGS-B iterations
    loglik_null: float = float("nan")  # log-likelihood with beta = 0 (base utility only)
    message: str = ""  # optimiser message
    extra: dict = field(default_factory=dict)  # anything a caller wants to attach

    def to_rows(self) -> list[dict]:
        """One dict per feature: feature, coef, se, z (for a CSV or a table)."""
        out = []
        for i, name in enumerate(self.feature_names):
            se = None if self.se is None else float(self.se[i])
            z = None if se is None or not np.isfinite(se) or se == 0 else float(self.coef[i]) / se
            out.append({"feature": name, "coef": float(self.coef[i]), "se": se, "z": z})
        return out


def group_index(group_offsets: np.ndarray) -> np.ndarray:
    """(n_rows,) the group number of every row."""
    offsets = np.asarray(group_offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    return np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)


def _check_offsets(group_offsets: np.ndarray, n_rows: int) -> np.ndarray:
    offsets = np.asarray(group_offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError("group_offsets must be a 1-d array of n_groups + 1 offsets")
    if offsets[0] != 0 or offsets[-1] != n_rows:
        raise ValueError(f"group_offsets must start at 0 and end at n_rows={n_rows}")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("group_offsets must be non-decreasing")
    return offsets


def _group_max(u: np.ndarray, group_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts of the non-empty groups, each row's group index among them, each group's finite max or 0) of
    non-empty utilities `u`: the shared preamble of the stable group softmax and log-softmax."""
    offsets = _check_offsets(group_offsets, u.size)
    sizes = np.diff(offsets)
    nonempty = sizes > 0
    starts = offsets[:-1][nonempty]
    gidx = np.repeat(np.arange(starts.size), sizes[nonempty])
    m = np.maximum.reduceat(u, starts)
    return starts, gidx, np.where(np.isfinite(m), m, 0.0)


def group_softmax(utilities: np.ndarray, group_offsets: np.ndarray) -> np.ndarray:
    """Softmax of `utilities` within each group (numerically stable: the group max is subtracted).

    Empty groups are allowed (they own no rows). A group whose utilities are all -inf gets a uniform
    distribution; NaN utilities propagate as NaN.
    """
    u = np.asarray(utilities, dtype=np.float64)
    if u.size == 0:
        _check_offsets(group_offsets, u.size)
        return u.copy()
    starts, gidx, m = _group_max(u, group_offsets)
    shifted = u - m[gidx]
    all_neg_inf = np.maximum.reduceat(u, starts) == -np.inf
    e = np.exp(shifted)
    e = np.where(all_neg_inf[gidx], 1.0, e)
    s = np.add.reduceat(e, starts)
    return e / s[gidx]


def group_log_softmax(utilities: np.ndarray, group_offsets: np.ndarray) -> np.ndarray:
    """log of group_softmax, computed stably (u - group logsumexp)."""
    u = np.asarray(utilities, dtype=np.float64)
    if u.size == 0:
        _check_offsets(group_offsets, u.size)
        return u.copy()
    starts, gidx, m = _group_max(u, group_offsets)
    lse = m + np.log(np.add.reduceat(np.exp(u - m[gidx]), starts))
    return u - lse[gidx]


def clogit_utilities(X: np.ndarray, coef: np.ndarray, base_utility: np.ndarray | None = None) -> np.ndarray:
    """Utilities U = X @ coef (+ base_utility) of every row."""
    u = np.asarray(X, dtype=np.float64) @ np.asarray(coef, dtype=np.float64)
    if base_utility is not None:
        u = u + np.asarray(base_utility, dtype=np.float64)
    return u


class _Problem:
    """The standardised problem: objective, gradient and Hessian in z-space (b = beta * sd)."""

    def __init__(self, Z, starts, gidx, chosen, base, w_group, l2, prior_b, sd):
        self.Z = Z
        self.starts = starts
        self.gidx = gidx
        self.chosen = chosen
        self.base = base
        self.w_group = w_group
        self.w_row = w_group[gidx]
        self.l2 = l2
        self.prior_b = prior_b  # prior mean in z-space
        self.inv_sd2 = 1.0 / sd**2  # penalty on beta = b / sd
        self.zc_w = Z[chosen].T @ w_group  # sum_g w_g z_chosen
        self.scale = 1.0 / max(float(w_group.sum()), 1e-300)  # optimise the mean, report the sum

    def _probs(self, b):
        u = self.Z @ b
        if self.base is not None:
            u = u + self.base
        m = np.maximum.reduceat(u, self.starts)
        e = np.exp(u - m[self.gidx])
        s = np.add.reduceat(e, self.starts)
        lse = m + np.log(s)
        p = e / s[self.gidx]
        return u, lse, p

    def loglik(self, b) -> float:
        u, lse, _ = self._probs(b)
        return float(self.w_group @ (u[self.chosen] - lse))

    def penalty(self, b) -> tuple[float, np.ndarray]:
        if self.l2 <= 0:
            return 0.0, np.zeros_like(b)
        d = b - self.prior_b
        return 0.5 * self.l2 * float(np.sum(self.inv_sd2 * d * d)), self.l2 * self.inv_sd2 * d

    def fun_grad(self, b) -> tuple[float, np.ndarray]:
        u, lse, p = self._probs(b)
        ll = float(self.w_group @ (u[self.chosen] - lse))
        grad_ll = self.zc_w - self.Z.T @ (p * self.w_row)
        pen, grad_pen = self.penalty(b)
        return (-ll + pen) * self.scale, (-grad_ll + grad_pen) * self.scale

    def hessian(self, b) -> np.ndarray:
        """Hessian of the (unscaled) penalised negative log-likelihood in z-space."""
        _, _, p = self._probs(b)
        pw = p * self.w_row
        k = self.Z.shape[1]
        H = np.zeros((k, k))
        # chunked so that the centred copy of Z never needs the full n_rows x k at once
        n_groups = self.starts.size
        chunk = max(1, 2_000_000 // max(1, int(np.ceil(self.Z.shape[0] / max(n_groups, 1)))))
        bounds = np.append(self.starts, self.Z.shape[0])
        for g0 in range(0, n_groups, chunk):
            g1 = min(n_groups, g0 + chunk)
            r0, r1 = bounds[g0], bounds[g1]
            Zc = self.Z[r0:r1]
            pc = p[r0:r1]
            st = self.starts[g0:g1] - r0
            gi = self.gidx[r0:r1] - g0
            zbar = np.add.reduceat(Zc * pc[:, None], st, axis=0)
            D = Zc - zbar[gi]
            H += (D * pw[r0:r1, None]).T @ D
        if self.l2 > 0:
            H += np.diag(self.l2 * self.inv_sd2)
        return H


def fit_clogit(
    X: np.ndarray,
    group_offsets: np.ndarray,
    chosen: np.ndarray,
    *,
    base_utility: np.ndarray | None = None,
    l2: float = 0.0,
    prior_mean: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    feature_names: list[str] | None = None,
    max_iter: int = 500,
    tol: float = 1e-9,  # ftol = tol / 1000 and gtol = 100 tol on the mean (per-episode) objective
) -> ClogitResult:
    """Fit a conditional logit by penalised maximum likelihood (L-BFGS-B, analytic gradient).

    X (n_rows, k), group_offsets (n_groups + 1,), chosen (n_groups,) absolute row indices.
    base_utility: a fixed offset added to every row's utility (e.g. another model's score).
    l2, prior_mean: penalty 0.5 * l2 * ||beta - prior_mean||^2 on the original scale (prior_mean 0 if None).
    weights: per-episode weights (default 1); se then comes from the weighted Hessian (no sandwich).
    Empty groups (no rows) are skipped; their `chosen` entry is ignored. Raises ValueError on a `chosen`
    row outside its group, NaN/inf features or a shape mismatch (bad input is refused, never guessed).
    """
    from scipy.optimize import minimize

    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    n_rows, k = X.shape
    offsets = _check_offsets(group_offsets, n_rows)
    n_groups_all = offsets.size - 1
    chosen = np.asarray(chosen, dtype=np.int64)
    if chosen.shape != (n_groups_all,):
        raise ValueError(f"chosen must have one entry per group ({n_groups_all}), got {chosen.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or inf: impute or drop those rows before fitting")
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} feature names for {k} columns")
    w_all = np.ones(n_groups_all) if weights is None else np.asarray(weights, dtype=np.float64)
    if w_all.shape != (n_groups_all,) or np.any(~np.isfinite(w_all)) or np.any(w_all < 0):
        raise ValueError("weights must be finite, non-negative, one per group")
    base = None
    if base_utility is not None:
        base = np.asarray(base_utility, dtype=np.float64)
        if base.shape != (n_rows,) or not np.all(np.isfinite(base)):
            raise ValueError("base_utility must be finite with one value per row")
    prior = np.zeros(k) if prior_mean is None else np.asarray(prior_mean, dtype=np.float64).reshape(k)

    sizes = np.diff(offsets)
    keep = sizes > 0
    starts = offsets[:-1][keep]
    ends = offsets[1:][keep]
    chosen_k = chosen[keep]
    if np.any((chosen_k < starts) | (chosen_k >= ends)):
        raise ValueError("every chosen row must lie inside its own group")
    w_group = w_all[keep]
    gidx = np.repeat(np.arange(starts.size), sizes[keep])

    # standardise: centring cancels within a choice set; scaling is undone on the coefficients
    mu = X.mean(axis=0) if n_rows else np.zeros(k)
    sd = X.std(axis=0) if n_rows else np.ones(k)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = X - mu  # a fresh array: standardised in place to spare a second n_rows x k copy
    Z /= sd

    prob = _Problem(Z, starts, gidx, chosen_k, base, w_group, float(l2), prior * sd, sd)
    b0 = prior * sd if l2 > 0 else np.zeros(k)
    if starts.size == 0:
        return ClogitResult(prior.copy(), None, 0.0, 0, names, True, 0, 0.0, "no groups")
    res = minimize(
        prob.fun_grad,
        b0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "ftol": tol * 1e-3, "gtol": tol * 100, "maxcor": 20},
    )
    b = res.x
    coef = b / sd
    loglik = prob.loglik(b)
    loglik_null = prob.loglik(np.zeros(k))
    se = None
    try:
        H = prob.hessian(b)
        # H is in z-space; d/d beta = sd * d/d b, so H_beta = S H S and cov_beta = S^-1 H^-1 S^-1
        if np.linalg.cond(H) < 1e12:
            cov_b = np.linalg.inv(H)
            se = np.sqrt(np.clip(np.diag(cov_b), 0.0, None)) / sd
    except np.linalg.LinAlgError:
        se = None
    converged = bool(res.success) or float(np.max(np.abs(res.jac))) < 1e-5  # jac of the mean objective
    return ClogitResult(
        coef=coef,
        se=se,
        loglik=loglik,
        n_groups=int(starts.size),
        feature_names=names,
        converged=converged,
        n_iter=int(res.nit),
        loglik_null=loglik_null,
        message=str(res.message),
    )
