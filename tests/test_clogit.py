"""Conditional logit: softmax by hand, gradient by finite differences, recovery of simulated coefficients."""

import math

import numpy as np
import pytest

from assets.evaluation.clogit import (
    _Problem,
    clogit_utilities,
    fit_clogit,
    group_index,
    group_log_softmax,
    group_softmax,
)


def test_group_softmax_hand_computed():
    # group 0: utilities 0, ln 3 -> exp: 1, 3 -> probs 1/4, 3/4
    # group 1: a single option -> 1
    # group 2: 1000, 1000, 1000 (overflow if not shifted) -> 1/3 each
    u = np.array([0.0, math.log(3.0), 5.0, 1000.0, 1000.0, 1000.0])
    offsets = np.array([0, 2, 3, 6])
    p = group_softmax(u, offsets)
    np.testing.assert_allclose(p, [0.25, 0.75, 1.0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(group_log_softmax(u, offsets), np.log(p), rtol=1e-12)


def test_group_softmax_empty_group_and_neg_inf():
    # an empty group in the middle, and a group with all -inf (uniform), and -inf next to a finite value
    u = np.array([1.0, 1.0, -np.inf, -np.inf, -np.inf, 2.0])
    offsets = np.array([0, 2, 2, 4, 6])
    p = group_softmax(u, offsets)
    np.testing.assert_allclose(p, [0.5, 0.5, 0.5, 0.5, 0.0, 1.0])


def test_group_index_and_utilities():
    np.testing.assert_array_equal(group_index(np.array([0, 2, 2, 5])), [0, 0, 2, 2, 2])
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(clogit_utilities(X, np.array([1.0, -1.0]), np.array([0.5, 0.0])), [-0.5, -1.0])


def _simulate(rng, n_groups, beta, sizes=(3, 10), base=False):
    k = beta.size
    size = rng.integers(sizes[0], sizes[1] + 1, n_groups)
    offsets = np.concatenate([[0], np.cumsum(size)])
    n = offsets[-1]
    # features on very different scales (the fit standardises internally)
    X = rng.normal(size=(n, k)) * np.array([1.0, 50.0, 0.02, 3.0][:k]) + np.array([0.0, 100.0, 1.0, -2.0][:k])
    b = rng.normal(size=n) if base else None
    u = X @ beta + (b if base else 0.0) + rng.gumbel(size=n)
    gidx = group_index(offsets)
    chosen = np.zeros(n_groups, dtype=np.int64)
    order = np.lexsort((-u, gidx))  # within each group, the max utility first
    first = offsets[:-1]
    chosen[:] = order[first]
    return X, offsets, chosen, b


def test_recovers_simulated_coefficients_within_standard_errors():
    rng = np.random.default_rng(1)
    beta = np.array([1.0, -0.02, 30.0, 0.3])
    X, offsets, chosen, _ = _simulate(rng, 6000, beta)
    res = fit_clogit(X, offsets, chosen, feature_names=["a", "b", "c", "d"])
    assert res.converged
    assert res.se is not None
    z = (res.coef - beta) / res.se
    assert np.all(np.abs(z) < 4), z
    assert res.n_groups == 6000
    assert res.loglik > res.loglik_null
    assert [r["feature"] for r in res.to_rows()] == ["a", "b", "c", "d"]


def test_base_utility_is_an_offset():
    rng = np.random.default_rng(2)
    beta = np.array([0.7, 0.01])
    X, offsets, chosen, base = _simulate(rng, 4000, beta, base=True)
    res = fit_clogit(X, offsets, chosen, base_utility=base)
    assert np.all(np.abs((res.coef - beta) / res.se) < 4)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    X, offsets, chosen, base = _simulate(rng, 50, np.array([0.5, 0.01, 10.0]), base=True)
    sizes = np.diff(offsets)
    gidx = group_index(offsets)
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / sd
    w = rng.uniform(0.5, 2.0, size=50)
    prob = _Problem(Z, offsets[:-1][sizes > 0], gidx, chosen, base, w, 0.7, np.array([0.1, 0.2, 0.3]), sd)
    b = rng.normal(size=3)
    f0, g = prob.fun_grad(b)
    eps = 1e-6
    num = np.array(
        [(prob.fun_grad(b + eps * e)[0] - prob.fun_grad(b - eps * e)[0]) / (2 * eps) for e in np.eye(3)]
    )
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)
    # the Hessian against finite differences of the gradient (unscaled objective)
    H = prob.hessian(b)
    numH = (
        np.array(
            [(prob.fun_grad(b + eps * e)[1] - prob.fun_grad(b - eps * e)[1]) / (2 * eps) for e in np.eye(3)]
        )
        / prob.scale
    )
    np.testing.assert_allclose(H, numH, rtol=1e-4, atol=1e-6)


def test_l2_shrinks_towards_prior_mean():
    rng = np.random.default_rng(4)
    beta = np.array([1.0, 0.0])
    X, offsets, chosen, _ = _simulate(rng, 200, beta)
    prior = np.array([-2.0, 0.05])
    free = fit_clogit(X, offsets, chosen)
    strong = fit_clogit(X, offsets, chosen, l2=1e9, prior_mean=prior)
    np.testing.assert_allclose(strong.coef, prior, atol=1e-3)
    mid = fit_clogit(X, offsets, chosen, l2=50.0, prior_mean=prior)
    # the penalised estimate lies between the free one and the prior, coordinate 0
    assert prior[0] < mid.coef[0] < free.coef[0]


def test_weights_equal_duplication():
    rng = np.random.default_rng(5)
    X, offsets, chosen, _ = _simulate(rng, 300, np.array([1.0, 0.01]))
    w = rng.integers(1, 3, size=300).astype(float)
    res_w = fit_clogit(X, offsets, chosen, weights=w)
    # duplicate groups with weight 2
    rows, offs, ch = [], [0], []
    for g in range(300):
        for _ in range(int(w[g])):
            r0, r1 = offsets[g], offsets[g + 1]
            ch.append(offs[-1] + chosen[g] - r0)
            rows.append(X[r0:r1])
            offs.append(offs[-1] + r1 - r0)
    res_d = fit_clogit(np.vstack(rows), np.array(offs), np.array(ch))
    np.testing.assert_allclose(res_w.coef, res_d.coef, rtol=1e-4)
    assert res_w.loglik == pytest.approx(res_d.loglik, rel=1e-6)


def test_constant_feature_gives_no_se_and_bad_input_refused():
    rng = np.random.default_rng(6)
    X, offsets, chosen, _ = _simulate(rng, 100, np.array([1.0, 0.0]))
    X = np.column_stack([X[:, 0], np.ones(len(X))])  # a constant column: not identified
    res = fit_clogit(X, offsets, chosen)
    assert res.se is None
    assert res.coef[1] == 0.0
    with pytest.raises(ValueError):
        fit_clogit(X, offsets, np.zeros(100, dtype=int) + 10_000)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError):
        fit_clogit(Xn, offsets, chosen)


def test_hand_computed_two_option_likelihood():
    # Two options per episode, one binary feature: x = 1 for option A, 0 for B. A chosen in 3 of 4
    # episodes -> the MLE is beta = ln 3 (logit of 3/4); loglik = 3 ln(3/4) + ln(1/4).
    X = np.array([[1.0], [0.0]] * 4)
    offsets = np.arange(0, 9, 2)
    chosen = np.array([0, 2, 4, 7])
    res = fit_clogit(X, offsets, chosen)
    assert res.coef[0] == pytest.approx(math.log(3.0), abs=1e-5)
    assert res.loglik == pytest.approx(3 * math.log(0.75) + math.log(0.25), abs=1e-8)
    # se: Fisher information = n p (1-p) = 4 * 3/16 = 3/4 -> se = sqrt(4/3)
    assert res.se[0] == pytest.approx(math.sqrt(4 / 3), rel=1e-4)
