"""Calibration f of a market engine: its choice probabilities and its quantities refitted on the val period's
market, so that an engine's decisions can be read as frequencies. Plain functions, no dagster import.

What is fitted (on the val market's occasions, built as fit_classic_engines builds them: load_val_market):
- a temperature T and a global shift b of OTHER's utility:
      prob = softmax(log(prob_engine) / T + b x [option is OTHER]) per occasion, OTHER included,
  fitted by maximising the likelihood of the actual choice (the actual product when it is in the set, else
  OTHER). T is applied to log-probabilities, not to the engine's `utility`: softmax(u / T) equals
  softmax(log softmax(u) / T) because log softmax(u) = u - logsumexp(u), a constant per occasion, so both
  give the same probabilities wherever the utilities reproduce the probabilities (the classic and LLM engines:
  utilities_reproduce_probs), and log(prob) also serves the engines without utilities (persistence: utility
  NaN). An option with prob 0 keeps prob 0 (0^(1/T) = 0); an occasion whose actual choice has prob 0 has an
  infinite log-loss whatever T and b are, so it is left out of the fit (counted in info["n_zero_prob"]).
  Why the shift b next to T (a Platt scaling in the log-odds against OTHER): dividing the utilities by T also
  divides OTHER's utility relative to the options, which moves P(OTHER) and with it the units outside the set;
  b lets the fit put P(OTHER) back where the val market has it while T sets how sharp the choice among the
  options is. The shift is global: the engines already carry OTHER constants per category fitted on the same
  val market (classic.fit_other_constant), so a per-category shift would refit them. T = 1, b = 0 is in the
  family, and the fitted pair is kept only when its val log-loss is not above that of (1, 0): calibration never
  increases the val NLL.
- quantity: an isotonic regression (sklearn IsotonicRegression, increasing, y >= qty_floor) of the actual
  units on the engine's expected_qty of the actual product, over the val occasions whose actual product is in
  the set, one point per occasion; applied to every option's expected_qty (OTHER's too when `other_quantity`
  is False, the default: one curve of the engine's quantity rule). With other_quantity=True OTHER's
  expected_qty gets a curve of its own, fitted on the occasions whose actual product is outside the set (OTHER
  stands for the rest of the category: another quantity). Fewer than min_qty_occasions points: no curve
  (identity). The curve is kept as its thresholds and read by linear interpolation, flat beyond the ends
  (IsotonicRegression.predict with out_of_bounds="clip"), so it saves as JSON and predicts without sklearn.

CalibratedEngine(base, cal) is a ChoiceEngine: the base's decisions with the calibrated prob and expected_qty
(utility = base utility / T + b on OTHER, NaN where the base has none). calibration_report scores an engine
before and after on a period's market (nll, ECE of the top choice, top-1 hit rate, quantity MAE).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.clogit import fit_clogit, group_softmax
from assets.market.engine import DECISIONS_SCHEMA, ChoiceEngine, check_decisions
from assets.market.metrics import OTHER, expected_calibration_error
from assets.market.metrics import json_safe as _json_safe

KEYS = ["occasion_id", "product_id"]
FORMAT_VERSION = 1  # to_dict's layout


# --- arrays of a decisions frame ---------------------------------------------------------------------------


def _offsets(occasion_ids: pl.Series) -> np.ndarray:
    """Group offsets (n_groups + 1) of a frame sorted by occasion_id."""
    if occasion_ids.len() == 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero((occasion_ids != occasion_ids.shift(1)).fill_null(True).to_numpy())
    return np.append(starts, occasion_ids.len()).astype(np.int64)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(p, dtype=np.float64))


def with_actual(decisions: pl.DataFrame, actuals: pl.DataFrame) -> pl.DataFrame:
    """decisions sorted by (occasion_id, product_id), limited to the occasions of `actuals`, with is_other,
    in_set (the occasion's actual product is among its options), chosen (this row is the actual choice: the
    actual product when in the set, else OTHER) and actual_qty (the actual units of the occasion)."""
    act = actuals.select(
        "occasion_id",
        pl.col("product_id").cast(pl.Utf8).alias("actual_product_id"),
        pl.col("quantity").cast(pl.Float64).alias("actual_qty"),
    ).unique("occasion_id", keep="first")
    d = decisions.join(act, on="occasion_id", how="inner").sort(KEYS)
    is_other = pl.col("product_id") == OTHER
    hit = (pl.col("product_id") == pl.col("actual_product_id")).fill_null(False) & ~is_other
    d = d.with_columns(is_other=is_other, hit=hit)
    d = d.with_columns(in_set=pl.col("hit").any().over("occasion_id"))
    chosen = pl.when(pl.col("in_set")).then(pl.col("hit")).otherwise(pl.col("is_other"))
    return d.with_columns(chosen=chosen).drop("hit", "actual_product_id")


def utilities_reproduce_probs(decisions: pl.DataFrame, tol: float = 1e-9) -> bool:
    """Whether softmax(utility) per occasion (OTHER included) gives `prob` within `tol` on every row (False
    when any utility is null or NaN: persistence)."""
    if decisions.height == 0:
        return True
    d = decisions.sort(KEYS)
    u = d["utility"].cast(pl.Float64).fill_null(math.nan).to_numpy()
    if np.isnan(u).any():
        return False
    p = group_softmax(u, _offsets(d["occasion_id"]))
    return bool(np.max(np.abs(p - d["prob"].to_numpy())) <= tol)


# --- the fitted calibration --------------------------------------------------------------------------------


def _interp(x: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """The isotonic curve (thresholds xs, ys) at x: linear between thresholds, flat beyond; identity if empty."""
    if not xs:
        return x
    return np.interp(x, np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))


@dataclass
class Calibration:
    """A fitted calibration (module docstring); apply() maps an engine's decisions to calibrated ones."""

    inv_temperature: float = 1.0  # 1 / T
    other_shift: float = 0.0  # b, added to OTHER's (scaled) log-probability
    qty_x: list[float] = field(
        default_factory=list
    )  # isotonic thresholds of the options' quantity (empty: identity)
    qty_y: list[float] = field(default_factory=list)
    other_qty_x: list[float] = field(
        default_factory=list
    )  # OTHER's own curve (empty: OTHER uses qty_x/qty_y)
    other_qty_y: list[float] = field(default_factory=list)
    engine: str = ""  # the base engine's name
    info: dict[str, Any] = field(default_factory=dict)  # fit diagnostics (JSON-safe values)

    @property
    def temperature(self) -> float:
        return 1.0 / self.inv_temperature

    def quantity(self, qty: np.ndarray, is_other: np.ndarray) -> np.ndarray:
        """Calibrated expected quantities (> 0) of rows with the engine's `qty` (OTHER rows flagged)."""
        q = np.asarray(qty, dtype=np.float64)
        out = _interp(q, self.qty_x, self.qty_y)
        if self.other_qty_x:
            out = np.where(is_other, _interp(q, self.other_qty_x, self.other_qty_y), out)
        return np.where(out > 0, out, q)

    def apply(self, decisions: pl.DataFrame) -> pl.DataFrame:
        """DECISIONS_SCHEMA rows: the same (occasion, option) pairs, calibrated prob and expected_qty, utility
        scaled (base utility / T, + b on OTHER; NaN where the base has none), sorted by occasion_id, product_id."""
        d = decisions.sort(KEYS)
        is_other = (d["product_id"] == OTHER).to_numpy()
        z = _log(d["prob"].to_numpy()) * self.inv_temperature + self.other_shift * is_other
        prob = group_softmax(z, _offsets(d["occasion_id"])) if d.height else np.zeros(0)
        u = d["utility"].cast(pl.Float64).fill_null(math.nan).to_numpy()
        d = d.with_columns(
            utility=pl.Series(u * self.inv_temperature + self.other_shift * is_other, dtype=pl.Float64),
            prob=pl.Series(prob, dtype=pl.Float64),
            expected_qty=pl.Series(self.quantity(d["expected_qty"].to_numpy(), is_other), dtype=pl.Float64),
        )
        return d.select(pl.col(c).cast(t) for c, t in DECISIONS_SCHEMA.items())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain floats and lists; no NaN): json.dumps it as an MLflow artifact."""
        return {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "temperature": self.temperature,
            "inv_temperature": float(self.inv_temperature),
            "other_shift": float(self.other_shift),
            "qty_x": [float(v) for v in self.qty_x],
            "qty_y": [float(v) for v in self.qty_y],
            "other_qty_x": [float(v) for v in self.other_qty_x],
            "other_qty_y": [float(v) for v in self.other_qty_y],
            "info": _json_safe(self.info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """The calibration to_dict wrote (its inv_temperature is the exact parameter; temperature is for reading)."""
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"calibration format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        if len(d["qty_x"]) != len(d["qty_y"]) or len(d["other_qty_x"]) != len(d["other_qty_y"]):
            raise ValueError("calibration: an isotonic curve's x and y thresholds differ in length")
        inv_t = float(d["inv_temperature"])
        if not (math.isfinite(inv_t) and inv_t > 0):
            raise ValueError(f"calibration: inv_temperature must be finite and > 0, got {inv_t}")
        return cls(
            inv_temperature=inv_t,
            other_shift=float(d["other_shift"]),
            qty_x=[float(v) for v in d["qty_x"]],
            qty_y=[float(v) for v in d["qty_y"]],
            other_qty_x=[float(v) for v in d["other_qty_x"]],
            other_qty_y=[float(v) for v in d["other_qty_y"]],
            engine=str(d.get("engine", "")),
            info=dict(d.get("info") or {}),
        )


@dataclass
class CalibratedEngine(ChoiceEngine):
    """`base`'s decisions through `cal` (Calibration.apply); named "<base>+cal"."""

    base: ChoiceEngine
    cal: Calibration

    def __post_init__(self) -> None:
        self.name = f"{self.base.name}+cal"

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        return self.cal.apply(self.base.decide(options))


# --- fitting ---------------------------------------------------------------------------------------------


def _nll(logp_chosen: np.ndarray) -> float:
    return float(-np.mean(logp_chosen)) if logp_chosen.size else math.nan


def fit_temperature(
    prob, occasion_offsets, chosen, is_other, other_shift: bool = True
) -> tuple[float, float, dict[str, Any]]:
    """(1/T, b, info) maximising sum over occasions of log softmax(log p / T + b [OTHER])[chosen] (module
    docstring): a conditional logit (fit_clogit) on the features log p and the OTHER indicator (log p alone
    when other_shift is False). prob, is_other: per row; occasion_offsets: n_occasions + 1; chosen: absolute
    row index per occasion, -1 for none (left out). Rows with prob 0 and occasions whose chosen row has prob 0
    are left out (info["n_zero_prob"]). Keeps (1, 0) when the fit is not better on these occasions."""
    logp = _log(prob)
    off = np.asarray(occasion_offsets, dtype=np.int64)
    chosen = np.asarray(chosen, dtype=np.int64)
    is_other = np.asarray(is_other, dtype=bool)
    n_occ = off.size - 1
    ok_occ = chosen >= 0
    zero = np.zeros(n_occ, dtype=bool)
    zero[ok_occ] = ~np.isfinite(logp[chosen[ok_occ]])
    keep_occ = ok_occ & ~zero
    gidx = np.repeat(np.arange(n_occ), np.diff(off))
    keep_row = keep_occ[gidx] & np.isfinite(logp)
    rows = np.flatnonzero(keep_row)
    new_index = np.cumsum(keep_row) - 1  # a kept row's index among the kept rows
    sizes = np.bincount(gidx[rows], minlength=n_occ)[keep_occ]
    sub_off = np.append(0, np.cumsum(sizes)).astype(np.int64)
    sub_chosen = new_index[chosen[keep_occ]]
    x_logp, x_other = logp[rows], is_other[rows].astype(np.float64)
    info: dict[str, Any] = {
        "n_fit_occasions": int(keep_occ.sum()),
        "n_zero_prob": int(zero.sum()),
        "other_chosen_share": float(np.mean(x_other[sub_chosen])) if sub_chosen.size else None,
    }

    def nll(inv_t: float, b: float) -> float:
        if sub_chosen.size == 0:
            return math.nan
        z = x_logp * inv_t + b * x_other
        m = np.maximum.reduceat(z, sub_off[:-1])
        g = np.repeat(np.arange(sub_chosen.size), np.diff(sub_off))
        lse = m + np.log(np.add.reduceat(np.exp(z - m[g]), sub_off[:-1]))
        return _nll(z[sub_chosen] - lse)

    base = nll(1.0, 0.0)
    info["nll_before"] = base
    if sub_chosen.size == 0:
        info |= {"nll_after": base, "kept": "identity (no occasion to fit on)"}
        return 1.0, 0.0, info
    X = np.column_stack([x_logp, x_other]) if other_shift else x_logp[:, None]
    names = ["log_prob", "other"] if other_shift else ["log_prob"]
    res = fit_clogit(X, sub_off, sub_chosen, feature_names=names)
    inv_t = float(res.coef[0])
    b = float(res.coef[1]) if other_shift else 0.0
    fitted = nll(inv_t, b) if inv_t > 0 and math.isfinite(inv_t) and math.isfinite(b) else math.inf
    info["converged"] = bool(res.converged)
    if not fitted <= base:
        info |= {
            "nll_after": base,
            "kept": f"identity (fit gave 1/T {inv_t:.4g}, b {b:.4g}, nll {fitted:.6g})",
        }
        return 1.0, 0.0, info
    info |= {"nll_after": fitted, "kept": "fit"}
    return inv_t, b, info


def fit_isotonic(x, y, floor: float = 1e-3) -> tuple[list[float], list[float]]:
    """Thresholds (xs, ys) of an increasing IsotonicRegression of y on x, y >= floor."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(increasing=True, y_min=floor, out_of_bounds="clip")
    iso.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def sample_occasions(actuals: pl.DataFrame, limit: int, seed: int = 0) -> pl.DataFrame:
    """The `limit` occasions with the smallest md5("{seed}|{occasion_id}") (the project's seeded order);
    limit 0: all."""
    if limit <= 0 or actuals.height <= limit:
        return actuals
    key = [hashlib.md5(f"{seed}|{o}".encode()).hexdigest() for o in actuals["occasion_id"]]
    return actuals.with_columns(_k=pl.Series(key)).sort("_k").head(limit).drop("_k").sort("occasion_id")


def fit_calibration_frames(
    engine: ChoiceEngine,
    frame: pl.DataFrame,
    actuals: pl.DataFrame,
    *,
    other_shift: bool = True,
    quantity: bool = True,
    other_quantity: bool = False,
    min_qty_occasions: int = 20,
    qty_floor: float = 1e-3,
    max_occasions: int = 0,
    seed: int = 0,
    decisions: pl.DataFrame | None = None,
    log: Callable[[str], Any] = print,
) -> Calibration:
    """Fit a Calibration of `engine` on a market: `frame` = load_market_frame of the val period, `actuals` =
    load_market_actuals of it (or `decisions`, the engine's decisions on `frame`, when already computed).

    other_shift: fit b next to T (else b = 0). quantity: fit the isotonic curve of the options (else none);
    other_quantity: OTHER gets its own curve. min_qty_occasions: fewer points leave a curve out. qty_floor: the
    curves' smallest quantity. max_occasions: fit on that many occasions (sample_occasions with `seed`; 0 =
    all): an LLM engine's scoring is the cost."""
    actuals = sample_occasions(actuals, max_occasions, seed)
    if decisions is None:
        sub = frame.filter(pl.col("occasion_id").is_in(actuals["occasion_id"].implode()))
        decisions = engine.decide(sub)
    d = with_actual(decisions, actuals)
    off = _offsets(d["occasion_id"])
    chosen_rows = np.flatnonzero(d["chosen"].to_numpy())
    gidx = np.repeat(np.arange(off.size - 1), np.diff(off))
    chosen = np.full(off.size - 1, -1, dtype=np.int64)
    chosen[gidx[chosen_rows]] = chosen_rows
    is_other = d["is_other"].to_numpy()
    inv_t, b, info = fit_temperature(d["prob"].to_numpy(), off, chosen, is_other, other_shift)
    info["utilities_reproduce_probs"] = utilities_reproduce_probs(decisions)
    cal = Calibration(inv_temperature=inv_t, other_shift=b, engine=engine.name)
    if quantity:
        pts = d.filter(pl.col("chosen") & pl.col("actual_qty").is_not_null())
        ins, oth = pts.filter(~pl.col("is_other")), pts.filter(pl.col("is_other"))
        if ins.height >= min_qty_occasions:
            cal.qty_x, cal.qty_y = fit_isotonic(ins["expected_qty"], ins["actual_qty"], qty_floor)
        if other_quantity and oth.height >= min_qty_occasions:
            cal.other_qty_x, cal.other_qty_y = fit_isotonic(oth["expected_qty"], oth["actual_qty"], qty_floor)
        info |= {"n_qty_occasions": ins.height, "n_other_qty_occasions": oth.height}
    info |= {"temperature": 1.0 / inv_t, "other_shift": b, "n_occasions": off.size - 1}
    cal.info = _json_safe(info)
    log(
        f"calibration of {engine.name}: T {1.0 / inv_t:.3f}, OTHER shift {b:+.3f} on {info['n_fit_occasions']} "
        f"val occasions ({info['n_zero_prob']} with P(actual) = 0 left out); nll {info['nll_before']:.4f} -> "
        f"{info['nll_after']:.4f}; quantity curve: {len(cal.qty_x)} thresholds"
    )
    return cal


def load_val_market(
    conn,
    m_options: int = 20,
    own_max: int = 10,
    seed: int = 0,
    history_days: int = 28,
    window_days: int = 14,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(frame, actuals) of the val period's market (load_market_frame, load_market_actuals), built as
    fit_classic_engines builds it: the warehouse's market_occasions / market_options are set aside meanwhile
    and restored."""
    from assets.market.classic import _market_tables_set_aside, load_market_actuals, load_market_frame
    from assets.market.occasions import build_market_occasions

    with _market_tables_set_aside(conn):
        build_market_occasions(
            conn, period="val", m_options=m_options, own_max=own_max, seed=seed,
            history_days=history_days, window_days=window_days,
        )  # fmt: skip
        return load_market_frame(conn), load_market_actuals(conn)


def fit_calibration(
    conn,
    engine: ChoiceEngine,
    *,
    m_options: int = 20,
    own_max: int = 10,
    seed: int = 0,
    history_days: int = 28,
    window_days: int = 14,
    **fit: Any,
) -> Calibration:
    """fit_calibration_frames on the val market of the warehouse `conn` (load_val_market with the market
    knobs given); `fit` goes to fit_calibration_frames (other_shift, quantity, max_occasions, log, ...)."""
    frame, actuals = load_val_market(conn, m_options, own_max, seed, history_days, window_days)
    return fit_calibration_frames(engine, frame, actuals, seed=seed, **fit)


# --- the report ----------------------------------------------------------------------------------------------

REPORT_SCHEMA = {
    "engine": pl.Utf8,
    "calibrated": pl.Boolean,
    "n_occasions": pl.Int64,
    "nll": pl.Float64,
    "n_zero_prob": pl.Int64,
    "ece_top": pl.Float64,
    "top1_hit": pl.Float64,
    "p_other_mean": pl.Float64,
    "other_share": pl.Float64,
    "qty_mae": pl.Float64,
    "n_qty": pl.Int64,
}


def decision_scores(decisions: pl.DataFrame, actuals: pl.DataFrame) -> dict[str, Any]:
    """The report's figures of one engine's decisions on a market with its actuals (REPORT_SCHEMA's columns
    from n_occasions on):
    - nll: mean -log P(actual choice) over the occasions where it is > 0; n_zero_prob: the others;
    - ece_top: expected_calibration_error (15 bins) of the top choice's prob against its hit;
    - top1_hit: mean hit of the top choice (OTHER included; ties: the expected hit, 1 / number tied);
    - p_other_mean, other_share: mean P(OTHER) and the share of occasions whose actual choice is OTHER;
    - qty_mae: mean |expected_qty of the actual product - actual units| over the occasions whose actual
      product is in the set (n_qty of them)."""
    d = with_actual(decisions, actuals)
    occ = d.group_by("occasion_id").agg(
        p_chosen=pl.col("prob").filter(pl.col("chosen")).first(),
        top=pl.col("prob").max(),
        n_top=(pl.col("prob") == pl.col("prob").max()).sum(),
        chosen_is_top=(pl.col("chosen") & (pl.col("prob") == pl.col("prob").max())).any(),
        p_other=pl.col("prob").filter(pl.col("is_other")).sum(),
        chose_other=(pl.col("chosen") & pl.col("is_other")).any(),
    )
    occ = occ.with_columns(hit=pl.when(pl.col("chosen_is_top")).then(1.0 / pl.col("n_top")).otherwise(0.0))
    pc = occ["p_chosen"].fill_null(0.0).to_numpy()
    pos = pc > 0
    q = d.filter(pl.col("chosen") & pl.col("in_set") & pl.col("actual_qty").is_not_null())
    return {
        "n_occasions": occ.height,
        "nll": _nll(np.log(pc[pos])) if pos.any() else None,
        "n_zero_prob": int((~pos).sum()),
        "ece_top": expected_calibration_error(occ["top"].to_numpy(), occ["hit"].to_numpy()),
        "top1_hit": float(occ["hit"].mean()) if occ.height else None,
        "p_other_mean": float(occ["p_other"].mean()) if occ.height else None,
        "other_share": float(occ["chose_other"].mean()) if occ.height else None,
        "qty_mae": float((q["expected_qty"] - q["actual_qty"]).abs().mean()) if q.height else None,
        "n_qty": q.height,
    }


def calibration_report(
    engine: ChoiceEngine,
    calibrated: CalibratedEngine,
    frame: pl.DataFrame,
    actuals: pl.DataFrame,
    decisions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Two rows (REPORT_SCHEMA), engine before and after calibration, on a market (`frame`: load_market_frame
    of a period, typically test; `actuals`: load_market_actuals). The base engine decides once (`decisions`
    when already computed): the calibrated rows apply calibrated.cal to its decisions when calibrated.base is
    `engine`, else calibrated.decide(frame) runs."""
    if decisions is None:
        decisions = engine.decide(frame)
    after = calibrated.cal.apply(decisions) if calibrated.base is engine else calibrated.decide(frame)
    check_decisions(decisions.select(KEYS), after)
    rows = [
        {"engine": engine.name, "calibrated": False} | decision_scores(decisions, actuals),
        {"engine": engine.name, "calibrated": True} | decision_scores(after, actuals),
    ]
    return pl.DataFrame(rows, schema=REPORT_SCHEMA)
