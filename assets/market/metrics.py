"""The market-level metrics of docs/evaluation-protocol.md ("Market-level evaluation") as plain polars/numpy.

Input shapes:
- simulated rows (a simulator's output, one row per occasion and option, "other" included): occasion_id,
  category, week, product_id, prob, expected_qty;
- actual rows (one per occasion): occasion_id, category, week, product_id, quantity;
- options (the consideration sets, without "other"): occasion_id, product_id;
- unit frames (what the scores compare): category, week, product_id, units.

Readings (where docs/evaluation-protocol.md needed one):
- week is the ISO week of the occasion's day d, written "YYYY-Www" with the ISO year (iso_week(): 2019-12-30
  is 2020-W01); any other week key works as long as both sides use the same.
- simulated units of a cell = sum over its occasions of prob x expected_qty; a null or NaN prob or
  expected_qty contributes 0 units (an unanswered occasion predicts nothing: it is penalised, not dropped).
- actual units: an actual product that is not among its occasion's options counts to "other"; an occasion
  without any option row counts wholly to "other"; a null quantity counts 0.
- unit frames: rows of the same (category, week, product_id) are summed; null or NaN units count 0; a cell
  present on one side only counts with 0 units on the other ("other" is one product among the rest).
- share_jsd_cw: per (category, week), JSD base 2 (jsd_base2 of assets/evaluation/metrics.py) of the two
  unit vectors over the union of the products of that cell. A (category, week) with 0 actual units has no
  JSD (null) and weight 0; one with actual units but 0 simulated units has JSD 1 (the maximum in bits: a
  simulator that predicts nothing where units were sold is scored worst, never left out). Mean weighted by
  actual units; None when no (category, week) has actual units.
- units_wape_pw and coverage: None when the actual units sum to 0.
- persistence: the window is days d - 28 .. d - 1 of the history frame (category, product_id, day, units,
  purchases; one purchase = one (basket, product) pair). With U = the category's units there and u_j the
  option's: P(j) = u_j / U, P(other) = (U - sum of the options' u_j) / U; quantity = units / purchases of
  the product (of the category's products outside the set for "other"); where that has no purchase, the
  category's units per purchase in the window. An option's units are its sales under the occasion's
  category in the history (an option listed under another category counts 0 units, so the probs sum to
  1). A category with no unit in the window puts P(other) = 1, P(j) = 0, and every quantity is 1.0 (one
  unit, the smallest purchase): "the rest" is all of it.
- fixed_point_residual: keys on one side only count 0 on the other; 0.0 for two empty states; a NaN unit
  gives NaN (a broken state is never read as converged).
- share_cv_cw: sample standard deviation (ddof=1, as share_cv of assets/evaluation/metrics.py) over the
  mean, across the R runs, of each (category, week, product) cell ("other" included); a cell missing from a
  run counts 0 units there; cells with mean 0 are left out; None with fewer than 2 runs or no cell left.
- share_cv_cells: share_cv_cw's cells one by one (mean, std, cv per cell; cv null where the mean is 0), so
  that share_cv_cw = the mean of their non-null cv.
- cell_top1_agreement (the protocol defines top1_agreement on episodes only; this is its reading per market
  cell): a (category, week)'s top product is the product or OTHER with the most units (ties: the smaller
  product_id; a cell with no unit has none). "all" = the share of the cells (the union over the runs) whose
  top product is the same in every run; "pairwise" = the mean over pairs of runs of the share of cells with
  the same top product. A cell without a top product in a run agrees with nothing; None with fewer than 2
  runs or no cell.
- expected_calibration_error: bin b = min(floor(p x bins), bins - 1) in float64, so bin b is
  [b / bins, (b + 1) / bins) and p = 1.0 falls in the last bin; sum over bins of (n_b / n) x
  |mean p - mean hit|; a hit may be fractional (expected hit under ties). None when empty or when any
  prob or hit is null or NaN (as nll: broken probabilities have no score); a prob outside [0, 1] raises.
- own_price_elasticity = ((u(+step) - u(-step)) / (2 x step)) / u(0), with u(0) the units at the current
  price (not the mean of the two); NaN where u(0) = 0.
- elasticity_error: median over the products scored of |est - truth| / |truth|; a product whose truth is
  0 or not finite is not scored; a non-finite estimate of a scored product counts as an infinite error.
- diversion_ratios: per product k != j of the union of both frames ("other" included), (after_k -
  before_k) / before_j, missing units counting 0; raises when j sold nothing before.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.metrics import jsd_base2

OTHER = "other"  # the product_id of the outside option: every product of the category outside the set
CELL = ["category", "week", "product_id"]
CW = ["category", "week"]


def iso_week(day: str | pl.Expr = "day") -> pl.Expr:
    """The ISO week of a date column as text "YYYY-Www" (ISO year: 2019-12-30 is 2020-W01)."""
    col = pl.col(day) if isinstance(day, str) else day
    return col.dt.strftime("%G-W%V").alias("week")


def _num(col: str) -> pl.Expr:
    """A numeric column as Float64 with null and NaN read as 0."""
    return pl.col(col).cast(pl.Float64).fill_nan(None).fill_null(0.0)


def _units(df: pl.DataFrame, keys: list[str] = CELL) -> pl.DataFrame:
    """keys + units summed per key (null and NaN units count 0)."""
    return df.group_by(keys).agg(units=_num("units").sum())


def simulated_units(sim: pl.DataFrame) -> pl.DataFrame:
    """category, week, product_id, units = sum of prob x expected_qty (null/NaN counts 0)."""
    return sim.group_by(CELL).agg(units=(_num("prob") * _num("expected_qty")).sum()).sort(CELL)


def actual_units(actual: pl.DataFrame, options: pl.DataFrame) -> pl.DataFrame:
    """category, week, product_id, units of the actual purchases; products outside the set count to OTHER."""
    member = options.select("occasion_id", "product_id").unique().with_columns(in_set=pl.lit(True))
    a = actual.join(member, on=["occasion_id", "product_id"], how="left")
    a = a.with_columns(
        product_id=pl.when(pl.col("in_set")).then(pl.col("product_id")).otherwise(pl.lit(OTHER)),
        units=_num("quantity"),
    )
    return _units(a).sort(CELL)


def units_by_cell(
    sim: pl.DataFrame, actual: pl.DataFrame, options: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(simulated units, actual units) per (category, week, product_id or OTHER)."""
    return simulated_units(sim), actual_units(actual, options)


def _cells(sim_units: pl.DataFrame, actual_units: pl.DataFrame) -> pl.DataFrame:
    """category, week, product_id, sim, act over the union of the cells of both sides (missing: 0)."""
    s = _units(sim_units).rename({"units": "sim"})
    a = _units(actual_units).rename({"units": "act"})
    j = s.join(a, on=CELL, how="full", coalesce=True)
    return j.with_columns(pl.col("sim", "act").fill_null(0.0)).sort(CELL)


def share_jsd_cw(sim_units: pl.DataFrame, actual_units: pl.DataFrame) -> tuple[float | None, pl.DataFrame]:
    """Actual-units-weighted mean over (category, week) of the JSD (base 2) of simulated and actual units.

    Returns (figure, per-cell frame: category, week, sim_units, actual_units, jsd)."""
    cells = _cells(sim_units, actual_units)
    rows = []
    for part in cells.partition_by(CW, maintain_order=True):
        s, a = part["sim"].to_numpy(), part["act"].to_numpy()
        st, at = float(s.sum()), float(a.sum())
        jsd = None if at <= 0 else (1.0 if st <= 0 else jsd_base2(s, a))
        rows.append((part["category"][0], part["week"][0], st, at, jsd))
    schema = {"category": cells.schema["category"], "week": cells.schema["week"]}
    schema |= {"sim_units": pl.Float64, "actual_units": pl.Float64, "jsd": pl.Float64}
    per = pl.DataFrame(rows, schema=schema, orient="row")
    ok = per.filter(pl.col("actual_units") > 0)
    total = float(ok["actual_units"].sum()) if ok.height else 0.0
    if total <= 0:
        return None, per
    return float((ok["jsd"] * ok["actual_units"]).sum()) / total, per


def units_wape_pw(sim_units: pl.DataFrame, actual_units: pl.DataFrame) -> float | None:
    """sum over (category, week, product or OTHER) of |simulated - actual units| / sum of actual units."""
    cells = _cells(sim_units, actual_units)
    total = float(cells["act"].sum()) if cells.height else 0.0
    if total <= 0:
        return None
    return float((cells["sim"] - cells["act"]).abs().sum()) / total


def coverage(actual_units: pl.DataFrame) -> float | None:
    """Share of the actual units inside the consideration sets (every product but OTHER)."""
    u = _units(actual_units)
    total = float(u["units"].sum()) if u.height else 0.0
    if total <= 0:
        return None
    return float(u.filter(pl.col("product_id") != OTHER)["units"].sum()) / total


# --- persistence: the naive forecast ------------------------------------------------------------------


def _window_sums(keys: pl.DataFrame, hist: pl.DataFrame, by: list[str], window: int) -> pl.DataFrame:
    """keys (*by, day) + u, p: units and purchases of `by` over the days day - window .. day - 1."""
    daily = hist.group_by(*by, "day").agg(u=_num("units").sum(), p=_num("purchases").sum())
    cum = daily.sort(*by, "day").with_columns(
        cu=pl.col("u").cum_sum().over(by), cp=pl.col("p").cum_sum().over(by)
    )
    cum = cum.select(*by, pl.col("day").alias("t"), "cu", "cp").sort("t")
    k = keys.unique().with_columns(
        hi=pl.col("day") - pl.duration(days=1), lo=pl.col("day") - pl.duration(days=window + 1)
    )
    out = []
    for edge in ("hi", "lo"):
        j = k.sort(edge).join_asof(
            cum, left_on=edge, right_on="t", by=by, strategy="backward", check_sortedness=False
        )
        out.append(j.select(*by, "day", pl.col("cu", "cp").fill_null(0.0).name.suffix(edge)))
    w = out[0].join(out[1], on=[*by, "day"])
    return w.select(*by, "day", u=pl.col("cuhi") - pl.col("culo"), p=pl.col("cphi") - pl.col("cplo"))


def persistence(
    occasions: pl.DataFrame, options: pl.DataFrame, history: pl.DataFrame, window: int = 28
) -> pl.DataFrame:
    """The persistence forecast in a simulator's output shape, one row per occasion and option plus OTHER.

    occasions: occasion_id, category, day (Date) [, week]; options: occasion_id, product_id; history:
    category, product_id, day, units, purchases (per product and day). Returns the occasion's columns
    (week added from day when absent) + product_id, prob, expected_qty."""
    occ = occasions if "week" in occasions.columns else occasions.with_columns(iso_week("day"))
    opt = options.select("occasion_id", "product_id").unique().filter(pl.col("product_id") != OTHER)
    rows = occ.join(opt, on="occasion_id", how="left")  # an occasion without options keeps one null row
    pid = ["category", "product_id"]  # an option counts its sales in the occasion's category only
    prod = _window_sums(rows.select(*pid, "day").drop_nulls(), history, pid, window)
    cat = _window_sums(occ.select("category", "day"), history, ["category"], window)
    cat = cat.rename({"u": "U", "p": "P"}).with_columns(
        cq=pl.when(pl.col("P") > 0).then(pl.col("U") / pl.col("P")).otherwise(1.0)
    )
    rows = rows.join(prod, on=[*pid, "day"], how="left").join(cat, on=["category", "day"], how="left")
    rows = rows.with_columns(pl.col("u", "p", "U", "P").fill_null(0.0), pl.col("cq").fill_null(1.0))

    def share(u: pl.Expr) -> pl.Expr:
        return pl.when(pl.col("U") > 0).then(u / pl.col("U")).otherwise(0.0)

    def qty(u: pl.Expr, p: pl.Expr) -> pl.Expr:
        return pl.when(p > 0).then(u / p).otherwise(pl.col("cq"))

    inside = rows.filter(pl.col("product_id").is_not_null()).with_columns(
        prob=share(pl.col("u")), expected_qty=qty(pl.col("u"), pl.col("p"))
    )
    rest = rows.group_by("occasion_id").agg(
        uo=(pl.col("U").first() - pl.col("u").sum()).clip(0.0, None),
        po=(pl.col("P").first() - pl.col("p").sum()).clip(0.0, None),
        U=pl.col("U").first(),
        cq=pl.col("cq").first(),
    )
    other = rest.select(
        "occasion_id",
        product_id=pl.lit(OTHER),
        prob=pl.when(pl.col("U") > 0).then(pl.col("uo") / pl.col("U")).otherwise(1.0),
        expected_qty=qty(pl.col("uo"), pl.col("po")),
    )
    cols = [*occ.columns, "product_id", "prob", "expected_qty"]
    other = occ.join(other, on="occasion_id").select(cols)
    return pl.concat([inside.select(cols), other]).sort("occasion_id", "product_id")


# --- mean field, stability, calibration, what-if ------------------------------------------------------


def fixed_point_residual(m_next: pl.DataFrame, m_prev: pl.DataFrame) -> float:
    """max over (product_id, day) of |m_next - m_prev| / max(1, m_prev); keys on one side count 0."""
    keys = ["product_id", "day"]
    a = m_next.group_by(keys).agg(a=pl.col("units").cast(pl.Float64).sum())
    b = m_prev.group_by(keys).agg(b=pl.col("units").cast(pl.Float64).sum())
    j = a.join(b, on=keys, how="full", coalesce=True).with_columns(pl.col("a", "b").fill_null(0.0))
    if j.height == 0:
        return 0.0
    x, y = j["a"].to_numpy(), j["b"].to_numpy()
    return float(np.max(np.abs(x - y) / np.maximum(1.0, y)))


def share_cv_cw(runs: list[pl.DataFrame]) -> float | None:
    """Mean over (category, week, product) of the coefficient of variation (ddof=1) of units across runs
    (cells with a positive mean; share_cv_cells has them one by one)."""
    cv = share_cv_cells(runs)["cv"].drop_nulls()
    return float(cv.mean()) if cv.len() else None


def share_cv_cells(runs: list[pl.DataFrame]) -> pl.DataFrame:
    """category, week, product_id, mean, std (ddof=1), cv of units across the runs per cell (share_cv_cw's
    cells: a cell missing from a run counts 0; cv null where the mean is 0); empty with fewer than 2 runs."""
    schema = {**{c: pl.Utf8 for c in CELL}, "mean": pl.Float64, "std": pl.Float64, "cv": pl.Float64}
    if len(runs) < 2:
        return pl.DataFrame(schema=schema)
    cols = [f"u{r}" for r in range(len(runs))]
    per = [_units(df).rename({"units": c}) for df, c in zip(runs, cols, strict=True)]
    keys = pl.concat([p.select(CELL) for p in per]).unique()
    for p in per:
        keys = keys.join(p, on=CELL, how="left")
    mat = keys.select(cols).fill_null(0.0).to_numpy()
    mean, std = mat.mean(axis=1), mat.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.nan)
    out = keys.select(CELL).with_columns(
        mean=pl.Series(mean, dtype=pl.Float64),
        std=pl.Series(std, dtype=pl.Float64),
        cv=pl.Series(cv, dtype=pl.Float64).fill_nan(None),
    )
    return out.select(pl.col(c).cast(t) for c, t in schema.items()).sort(CELL)


def top_products(units: pl.DataFrame) -> pl.DataFrame:
    """category, week, product_id: each (category, week)'s product (OTHER included) with the most units; ties:
    the smaller product_id; a (category, week) without units has no row."""
    u = _units(units).filter(pl.col("units") > 0)
    top = u.sort([*CW, "units", "product_id"], descending=[False, False, True, False])
    return top.group_by(CW, maintain_order=True).first().select(CELL).sort(CW)


def cell_top1_agreement(runs: list[pl.DataFrame]) -> tuple[float | None, float | None]:
    """(all, pairwise) of the (category, week) cells' top products across runs (module docstring)."""
    if len(runs) < 2:
        return None, None
    tops = [top_products(r).rename({"product_id": f"t{i}"}) for i, r in enumerate(runs)]
    keys = pl.concat([_units(r).select(CW) for r in runs]).unique()
    if keys.height == 0:
        return None, None
    for t in tops:
        keys = keys.join(t, on=CW, how="left")
    mat = keys.select([f"t{i}" for i in range(len(runs))]).to_numpy()
    present = np.array([[v is not None for v in row] for row in mat], dtype=bool)
    same = [
        present[:, a] & present[:, b] & (mat[:, a] == mat[:, b]) for a, b in combinations(range(len(runs)), 2)
    ]
    everywhere = np.all(present, axis=1) & np.all(mat == mat[:, :1], axis=1)
    return float(everywhere.mean()), float(np.mean([s.mean() for s in same]))


def expected_calibration_error(top_prob, top_hit, bins: int = 15) -> float | None:
    """ECE of the top choice: equal-width bins on [0, 1], weighted by count, of |mean confidence - accuracy|."""
    p = np.asarray(top_prob, dtype=np.float64).ravel()
    h = np.asarray(top_hit, dtype=np.float64).ravel()
    if p.shape != h.shape:
        raise ValueError("top_prob and top_hit differ in length")
    if p.size == 0 or np.isnan(p).any() or np.isnan(h).any():
        return None
    if (p < 0).any() or (p > 1).any():
        raise ValueError("a probability outside [0, 1]")
    b = np.minimum(np.floor(p * bins).astype(np.int64), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, weights=p, minlength=bins) - np.bincount(b, weights=h, minlength=bins))
    return float(gap.sum() / n.sum())  # sum_b (n_b / n) |conf_b - acc_b| = sum_b |sum p - sum h| / n


def own_price_elasticity(units_minus, units_plus, units_base, rel_step: float = 0.01):
    """((u(+step) - u(-step)) / (2 step)) / u(0); NaN where u(0) = 0. Scalars give a float, arrays an array."""
    um, up, u0 = (np.asarray(x, dtype=np.float64) for x in (units_minus, units_plus, units_base))
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(u0 != 0, (up - um) / (2.0 * rel_step) / np.where(u0 != 0, u0, 1.0), np.nan)
    return float(e) if e.ndim == 0 else e


def elasticity_error(est, truth) -> float | None:
    """Median over the products scored of |est - truth| / |truth| (truth 0 or non-finite: not scored)."""
    e = np.asarray(est, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    ok = np.isfinite(t) & (t != 0)
    if not ok.any():
        return None
    e, t = e[ok], t[ok]
    err = np.where(np.isfinite(e), np.abs(e - t) / np.abs(t), np.inf)
    return float(np.median(err))


def diversion_ratios(units_before: pl.DataFrame, units_after: pl.DataFrame, delisted: str) -> pl.DataFrame:
    """product_id, diversion = (after_k - before_k) / before_j for every k != j (OTHER included)."""
    b = units_before.group_by("product_id").agg(before=_num("units").sum())
    a = units_after.group_by("product_id").agg(after=_num("units").sum())
    j = b.join(a, on="product_id", how="full", coalesce=True).with_columns(
        pl.col("before", "after").fill_null(0.0)
    )
    base = float(j.filter(pl.col("product_id") == delisted)["before"].sum())
    if base <= 0:
        raise ValueError(f"{delisted} sold nothing before its delisting: no diversion ratio")
    rest = j.filter(pl.col("product_id") != delisted)
    return rest.select("product_id", diversion=(pl.col("after") - pl.col("before")) / base).sort("product_id")


def json_safe(v: Any) -> Any:
    """Plain JSON values (the fitted objects' to_dict): numpy scalars to Python, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(float(v)) else None
    return v if v is None or isinstance(v, str) else str(v)
