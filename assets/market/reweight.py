"""Reweighting w(X, Z): raking the simulated customers of a sample so that the sample stands for the whole
population. Plain functions, no dagster import.

Each sampled customer i gets a weight w_i, so that over the sample
  (a) sum of w_i over the customers of segment s = the population's customers of segment s, and
  (b) sum of w_i x n_ic = the population's occasions of category c in the simulated period,
with n_ic the customer's occasions of category c there. A simulated unit of customer i then counts w_i times
(occasion_weights, weighted_units): the sample's simulated units per (category, week, product) become an
estimate of the population's.

Readings that needed a choice:
- The population is the sampling frame of the market's customer sample: the customers with at least one
  occasion in the simulated period after the week and category filters (occasions.select_occasions with
  customers=None, the same SQL that draws the sample), not every row of `customers`: a customer without an
  occasion cannot be drawn, and counting such customers in (a) would pull the weights of everyone drawn.
- The segment is customers.segment; NULL, a customer absent from `customers`, or a warehouse whose customers
  table has no such column reads "unknown" (Complete Journey: the income tier of the 801 households with
  demographics, "unknown" for the other 1,668; the synthetic market: its segments, "wholesale" included).
- The design weight is uniform, d = N / n (N population customers, n sampled): the sample is a seeded md5
  draw. Raking is Deville and Sarndal's calibration (1992) with the raking distance: w_i = d exp(x_i' lambda),
  x_i = (segment indicators, n_i1, ..., n_iC), lambda solving the margin equations by Newton's method; with
  bounds (L, U) the logit distance keeps L < w_i / d < U. A homogeneous population sampled uniformly gets
  w_i = N / n exactly.
- Sparse margins: a segment with fewer than min_customers sampled customers, and a category where fewer than
  min_customers sampled customers have an occasion, cannot be matched without extreme weights (a category
  seen in one sampled customer would fix that customer's weight alone). They are pooled: pooled segments form
  one level "(pooled)", pooled categories one quantitative margin "(pooled)" (the sum of their occasions).
  A pool with no sampled customer at all is dropped (info["dropped"]); its population total is then not
  represented.
- trim (optional): weights above trim x the design weight N / n (the mean of exactly raked weights) are cut to
  it and the raking is rerun from the cut weights
  (trim_rounds times, then a last cut); the margins then hold only within the reported max_rel_error. trim
  and bounds do not go together (bounds hold against the design weight; use one or the other).

The library: pycarus (PyPI python-icarus, EDF's port of INSEE's Calmar / Icarus, BSD-3, small, pure Python
on numpy / pandas / scipy). Margin (b) is quantitative (occasion counts per customer), which calibration
handles and iterative proportional fitting does not: ipfn, weightipy, rimpy, balance's rake and the rake()
of samplics and svy take categorical margins only; samplics' and svy's calibrate() are linear (GREG), whose
weights can turn negative, and svy refuses bounds. pycarus solves Deville-Sarndal calibration with
categorical and quantitative margins, the raking and the bounded logit distances, unit by unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.market.metrics import json_safe as _json_safe
from assets.market.metrics import simulated_units

UNKNOWN = "unknown"  # the segment of a customer without one
POOLED = "(pooled)"  # the level / margin of the pooled sparse segments / categories
FORMAT_VERSION = 1
METHODS = ("raking", "logit")


class RakingError(ValueError):
    """The raking could not meet the margins (bounds too tight, margins out of the sample's reach)."""


# --- margins ------------------------------------------------------------------------------------------------


@dataclass
class Margins:
    """The population's totals: customers per segment, occasions per category."""

    segments: dict[str, float]
    categories: dict[str, float]

    @property
    def n_customers(self) -> float:
        return float(sum(self.segments.values()))

    @property
    def n_occasions(self) -> float:
        return float(sum(self.categories.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "segments": {str(k): float(v) for k, v in self.segments.items()},
            "categories": {str(k): float(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Margins:
        return cls(
            segments={str(k): float(v) for k, v in d["segments"].items()},
            categories={str(k): float(v) for k, v in d["categories"].items()},
        )


def with_segments(customer_ids: pl.Series | list[str], customers: pl.DataFrame | None) -> pl.DataFrame:
    """customer_id, segment for each id: `customers`' segment (customer_id, segment), UNKNOWN when null,
    absent or when `customers` is None or has no segment column."""
    ids = pl.DataFrame({"customer_id": pl.Series(customer_ids, dtype=pl.Utf8)}).unique(maintain_order=True)
    if customers is None or "segment" not in customers.columns:
        return ids.with_columns(segment=pl.lit(UNKNOWN))
    seg = customers.select(pl.col("customer_id").cast(pl.Utf8), pl.col("segment").cast(pl.Utf8)).unique(
        "customer_id", keep="first"
    )
    out = ids.join(seg, on="customer_id", how="left", maintain_order="left")
    return out.with_columns(pl.col("segment").fill_null(UNKNOWN))


def margins_from_frames(occasions: pl.DataFrame, customers: pl.DataFrame | None = None) -> Margins:
    """Margins of a population given its occasions (customer_id, category) in the simulated period and its
    customers (customer_id, segment; see with_segments); a customer counts once if it has an occasion."""
    seg = with_segments(occasions["customer_id"].cast(pl.Utf8), customers)
    s = seg.group_by("segment").len().sort("segment")
    c = occasions.group_by(pl.col("category").cast(pl.Utf8)).len().sort("category")
    return Margins(
        segments=dict(zip(s["segment"], s["len"].cast(pl.Float64), strict=True)),
        categories=dict(zip(c["category"], c["len"].cast(pl.Float64), strict=True)),
    )


def load_customers(conn, segment_column: str = "segment") -> pl.DataFrame:
    """customer_id, segment of the warehouse's customers (segment null when the column is absent)."""
    cols = {
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_name = 'customers'"
        ).fetchall()
    }
    if "customer_id" not in cols:
        return pl.DataFrame(schema={"customer_id": pl.Utf8, "segment": pl.Utf8})
    if segment_column not in cols:
        return conn.sql(
            "select customer_id::varchar as customer_id, null::varchar as segment from customers"
        ).pl()
    from resources.warehouse import quote_ident

    # an identifier only (the column name checked against the table and quoted); no value is formatted in
    return conn.sql(
        f"select customer_id::varchar as customer_id, {quote_ident(segment_column)}::varchar as segment "
        "from customers"
    ).pl()


def population_occasions(
    conn, period: str = "test", weeks: int | None = None, categories=None
) -> pl.DataFrame:
    """occasion_id, customer_id, category, iso_week, actual_quantity of every customer's occasions of the
    period after the week and category filters: the sampling frame of build_market_occasions' customer sample
    (occasions.select_occasions with customers=None; its temp table dropped after)."""
    from assets.features.logic import drop_temp
    from assets.market.occasions import select_occasions

    try:
        select_occasions(conn, period, weeks, categories, None)
        return conn.sql(
            "select occasion_id, customer_id::varchar as customer_id, category::varchar as category, "
            "iso_week, actual_quantity from market_occasion_rows order by occasion_id"
        ).pl()
    finally:
        drop_temp(conn, ("market_occasion_rows",))


def population_margins(
    conn, period: str = "test", weeks: int | None = None, categories=None, segment_column: str = "segment"
) -> Margins:
    """The population's margins of a market simulation's period (MarketSettings.occasion_filters() without
    customers: period, weeks, categories)."""
    occ = population_occasions(conn, period, weeks, categories)
    return margins_from_frames(occ, load_customers(conn, segment_column))


def sample_frames(conn, segment_column: str = "segment") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(occasions, customers) of the market the warehouse holds (market_occasions: the simulated sample):
    occasions = occasion_id, customer_id, category, week; customers = customer_id, segment (with_segments)."""
    occ = conn.sql(
        "select occasion_id, customer_id::varchar as customer_id, category::varchar as category, "
        "iso_week as week from market_occasions order by occasion_id"
    ).pl()
    return occ, with_segments(occ["customer_id"], load_customers(conn, segment_column))


# --- raking ------------------------------------------------------------------------------------------------


@dataclass
class Reweighting:
    """Raked customer weights (rake_customers) and how they were obtained; to_dict is JSON-safe."""

    weights: pl.DataFrame  # customer_id, weight
    margins: Margins  # the population's margins asked for
    method: str = "raking"
    bounds: tuple[float, float] | None = None
    trim: float | None = None
    min_customers: int = 5
    info: dict[str, Any] = field(
        default_factory=dict
    )  # iterations, converged, max_rel_error, pooled, dropped

    def occasion_weights(self, occasions: pl.DataFrame) -> pl.DataFrame:
        return occasion_weights(occasions, self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "customer_id": self.weights["customer_id"].cast(pl.Utf8).to_list(),
            "weight": [float(v) for v in self.weights["weight"]],
            "margins": self.margins.to_dict(),
            "method": self.method,
            "bounds": None if self.bounds is None else [float(b) for b in self.bounds],
            "trim": None if self.trim is None else float(self.trim),
            "min_customers": int(self.min_customers),
            "info": _json_safe(self.info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reweighting:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"reweighting format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        if len(d["customer_id"]) != len(d["weight"]):
            raise ValueError("reweighting: customer_id and weight differ in length")
        weights = pl.DataFrame(
            {"customer_id": d["customer_id"], "weight": d["weight"]},
            schema={"customer_id": pl.Utf8, "weight": pl.Float64},
        )
        return cls(
            weights=weights,
            margins=Margins.from_dict(d["margins"]),
            method=str(d["method"]),
            bounds=None if d.get("bounds") is None else (float(d["bounds"][0]), float(d["bounds"][1])),
            trim=None if d.get("trim") is None else float(d["trim"]),
            min_customers=int(d.get("min_customers", 5)),
            info=dict(d.get("info") or {}),
        )


@dataclass
class _Design:
    """The calibration problem: customers, segment per customer, the counts matrix and the targets."""

    ids: list[str]
    segment: list[str]  # per customer, after pooling
    seg_targets: dict[str, float]  # per level, after pooling
    counts: np.ndarray  # (n customers, k quantitative margins)
    cat_names: list[str]
    cat_targets: np.ndarray  # (k,)
    pooled_segments: list[str]
    pooled_categories: list[str]
    dropped: list[str]

    def matrix(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """X (n, levels + k) and the targets, names of the margins."""
        levels = list(self.seg_targets)
        seg = np.asarray(self.segment)
        x_seg = np.column_stack([seg == lv for lv in levels]).astype(np.float64)
        X = np.hstack([x_seg, self.counts]) if self.counts.size else x_seg
        t = np.concatenate([np.array([self.seg_targets[lv] for lv in levels]), self.cat_targets])
        return X, t, [f"segment={lv}" for lv in levels] + [f"category={c}" for c in self.cat_names]


def _design(
    customers: pl.DataFrame, occasions: pl.DataFrame, margins: Margins, min_customers: int, categories: bool
) -> _Design:
    cust = with_segments(customers["customer_id"], customers)
    ids = cust["customer_id"].to_list()
    if not ids:
        raise ValueError("no sampled customer to weight")
    unknown_seg = set(cust["segment"]) - set(margins.segments)
    if unknown_seg:
        raise ValueError(
            f"sampled customers of segments absent from the population margins: {sorted(unknown_seg)}"
        )
    occ = occasions.select(pl.col("customer_id").cast(pl.Utf8), pl.col("category").cast(pl.Utf8))
    stray = occ.join(cust.select("customer_id"), on="customer_id", how="anti")
    if stray.height:
        raise ValueError(f"{stray.height} occasions of customers not in the sample (e.g. {stray.row(0)[0]})")
    seg_n = cust.group_by("segment").len()
    seg_n = dict(zip(seg_n["segment"], seg_n["len"], strict=True))
    pooled_segments = sorted(s for s in margins.segments if seg_n.get(s, 0) < min_customers)
    dropped: list[str] = []
    seg_targets = {s: float(v) for s, v in margins.segments.items() if s not in pooled_segments}
    segment = [s if s not in pooled_segments else POOLED for s in cust["segment"]]
    if any(seg_n.get(s, 0) for s in pooled_segments):
        seg_targets[POOLED] = float(sum(margins.segments[s] for s in pooled_segments))
    elif pooled_segments:
        dropped.append("segment=" + POOLED)
    cat_names: list[str] = []
    pooled_categories: list[str] = []
    counts = np.zeros((len(ids), 0))
    cat_targets = np.zeros(0)
    if categories and margins.categories:
        unknown_cat = set(occ["category"]) - set(margins.categories)
        if unknown_cat:
            raise ValueError(
                f"sampled occasions of categories absent from the population margins: {sorted(unknown_cat)}"
            )
        per = occ.group_by("customer_id", "category").len()
        support = per.group_by("category").len()
        support = dict(zip(support["category"], support["len"], strict=True))
        cats = sorted(margins.categories)
        pooled_categories = [c for c in cats if support.get(c, 0) < min_customers]
        cat_names = [c for c in cats if c not in pooled_categories]
        col = {c: j for j, c in enumerate(cat_names)}
        has_pool = any(support.get(c, 0) for c in pooled_categories)
        if has_pool:
            col |= {c: len(cat_names) for c in pooled_categories}
        elif pooled_categories:
            dropped.append("category=" + POOLED)
        row = {c: i for i, c in enumerate(ids)}
        counts = np.zeros((len(ids), len(cat_names) + int(has_pool)))
        for cid, cat, n in per.iter_rows():
            if cat in col:
                counts[row[cid], col[cat]] += n
        targets = [margins.categories[c] for c in cat_names]
        if has_pool:
            targets.append(float(sum(margins.categories[c] for c in pooled_categories)))
            cat_names = [*cat_names, POOLED]
        cat_targets = np.asarray(targets, dtype=np.float64)
    return _Design(
        ids, segment, seg_targets, counts, cat_names, cat_targets, pooled_segments, pooled_categories, dropped
    )


def _calibrate(
    X: np.ndarray, d: np.ndarray, targets: np.ndarray, method: str, bounds, tol: float, max_iter: int
) -> tuple[np.ndarray, int]:
    """pycarus' Deville-Sarndal calibration of weights d on X's columns to `targets`: (weights, iterations)."""
    import pandas as pd
    from pycarus import CalibrationError, calibrate

    names = [f"x{j}" for j in range(X.shape[1])]
    data = pd.DataFrame(X, columns=names).assign(d=d)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging step ends in CalibrationError below
            w, res = calibrate(
                data,
                {n: float(t) for n, t in zip(names, targets, strict=True)},
                method=method,
                initial_weights_column="d",
                max_iter=max_iter,
                tolerance=tol,
                bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
                verbose=False,
            )
    except CalibrationError as e:
        raise RakingError(
            f"raking did not meet the margins ({e}); widen the bounds, or pool more (raise min_customers)"
        ) from e
    return np.asarray(w, dtype=np.float64), int(res.iterations)


def rake_customers(
    customers: pl.DataFrame,
    occasions: pl.DataFrame,
    margins: Margins,
    *,
    method: str = "raking",
    bounds: tuple[float, float] | None = None,
    trim: float | None = None,
    trim_rounds: int = 5,
    min_customers: int = 5,
    categories: bool = True,
    tol: float = 1e-8,
    max_iter: int = 100,
) -> Reweighting:
    """Raked weights of the sampled `customers` (customer_id [, segment]) given their `occasions`
    (customer_id, category) in the simulated period and the population's `margins` (module docstring).

    method: "raking" (exponential: w / d = exp(x' lambda), unbounded) or "logit" (needs bounds (L, U),
    L < 1 < U: L < w / d < U). trim: cut weights above trim x d and rerake, trim_rounds times.
    min_customers: sparser segments / categories are pooled. categories: False rakes on segments only.
    tol: the largest relative margin error accepted; max_iter: Newton steps at most."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (method == "logit") != (bounds is not None):
        raise ValueError("bounds go with method='logit' (and it needs them)")
    if bounds is not None and not bounds[0] < 1.0 < bounds[1]:
        raise ValueError(f"bounds must satisfy L < 1 < U, got {bounds}")
    if trim is not None and (trim <= 1.0 or bounds is not None):
        raise ValueError(
            f"trim must be above 1 (a multiple of the design weight) and go without bounds, got {trim}"
        )
    if min_customers < 1:
        raise ValueError(f"min_customers must be at least 1, got {min_customers}")
    des = _design(customers, occasions, margins, min_customers, categories)
    X, targets, names = des.matrix()
    n, big_n = len(des.ids), float(sum(des.seg_targets.values()))
    d = np.full(n, big_n / n)
    w, iters = _calibrate(X, d, targets, method, bounds, tol, max_iter)
    rounds = 0
    if trim is not None:
        cap = trim * big_n / n
        while rounds < trim_rounds and w.max() > cap * (1 + 1e-12):
            w, more = _calibrate(X, np.minimum(w, cap), targets, method, bounds, tol, max_iter)
            iters, rounds = iters + more, rounds + 1
        w = np.minimum(w, cap)
    est = X.T @ w
    rel = np.abs(est - targets) / np.maximum(np.abs(targets), 1e-12)
    info = {
        "n_sample": n,
        "n_population": margins.n_customers,
        "design_weight": big_n / n,
        "iterations": iters,
        "trim_rounds": rounds,
        "max_rel_error": float(rel.max()) if rel.size else 0.0,
        "converged": bool(rel.max() <= max(tol, 1e-6)) if rel.size else True,
        "worst_margin": names[int(rel.argmax())] if rel.size else None,
        "n_margins": len(names),
        "pooled_segments": des.pooled_segments,
        "pooled_categories": des.pooled_categories,
        "dropped": des.dropped,
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "ratio_min": float((w / d).min()),
        "ratio_max": float((w / d).max()),
        "effective_n": float(w.sum() ** 2 / (w**2).sum()),  # Kish's effective sample size
    }
    weights = pl.DataFrame(
        {"customer_id": des.ids, "weight": w}, schema={"customer_id": pl.Utf8, "weight": pl.Float64}
    )
    return Reweighting(weights, margins, method, bounds, trim, min_customers, _json_safe(info))


def margin_errors(
    weights: pl.DataFrame, customers: pl.DataFrame, occasions: pl.DataFrame, margins: Margins
) -> pl.DataFrame:
    """kind ('segment' / 'category'), level, target, weighted (the weighted sample's total), unweighted (the
    sample's total x N / n), rel_error (|weighted - target| / target) for every margin before pooling."""
    cust = with_segments(customers["customer_id"], customers).join(weights, on="customer_id", how="left")
    if cust["weight"].is_null().any():
        raise ValueError("a sampled customer has no weight")
    scale = margins.n_customers / cust.height
    seg = cust.group_by("segment").agg(weighted=pl.col("weight").sum(), unweighted=pl.len() * scale)
    occ = occasions.select(pl.col("customer_id").cast(pl.Utf8), pl.col("category").cast(pl.Utf8))
    cat = (
        occ.join(weights, on="customer_id", how="left")
        .group_by("category")
        .agg(weighted=pl.col("weight").sum(), unweighted=pl.len() * scale)
    )

    def side(kind: str, targets: dict[str, float], got: pl.DataFrame, key: str) -> pl.DataFrame:
        t = pl.DataFrame(
            {"level": list(targets), "target": list(targets.values())},
            schema={"level": pl.Utf8, "target": pl.Float64},
        )
        j = t.join(got.rename({key: "level"}), on="level", how="full", coalesce=True)
        return j.with_columns(
            pl.lit(kind).alias("kind"),
            pl.col("target", "weighted", "unweighted").cast(pl.Float64).fill_null(0.0),
        )

    out = pl.concat(
        [
            side("segment", margins.segments, seg, "segment"),
            side("category", margins.categories, cat, "category"),
        ]
    )
    out = out.with_columns(
        rel_error=pl.when(pl.col("target") > 0)
        .then((pl.col("weighted") - pl.col("target")).abs() / pl.col("target"))
        .otherwise(None)
    )
    return out.select("kind", "level", "target", "weighted", "unweighted", "rel_error").sort("kind", "level")


# --- using the weights --------------------------------------------------------------------------------------


def occasion_weights(occasions: pl.DataFrame, weights: pl.DataFrame) -> pl.DataFrame:
    """occasion_id, weight (its customer's weight) for every row of `occasions` (occasion_id, customer_id);
    a ValueError names an occasion whose customer has no weight."""
    w = weights.select(pl.col("customer_id").cast(pl.Utf8), pl.col("weight").cast(pl.Float64))
    o = occasions.select("occasion_id", pl.col("customer_id").cast(pl.Utf8)).join(
        w, on="customer_id", how="left", maintain_order="left"
    )
    missing = o.filter(pl.col("weight").is_null())
    if missing.height:
        raise ValueError(f"{missing.height} occasions' customers have no weight (e.g. {missing.row(0)[0]})")
    return o.select("occasion_id", "weight")


def weighted_units(sim: pl.DataFrame, occ_weights: pl.DataFrame) -> pl.DataFrame:
    """category, week, product_id, units = sum over occasions of weight x prob x expected_qty: the simulated
    units of a sample (metrics.simulated_units' input: occasion_id, category, week, product_id, prob,
    expected_qty) scaled to the population by occasion_weights."""
    s = sim.join(occ_weights.select("occasion_id", "weight"), on="occasion_id", how="left")
    missing = s.filter(pl.col("weight").is_null())
    if missing.height:
        raise ValueError(
            f"{missing.height} simulated rows without an occasion weight (e.g. {missing.row(0)[0]})"
        )
    return simulated_units(s.with_columns(prob=pl.col("prob").cast(pl.Float64) * pl.col("weight")))
