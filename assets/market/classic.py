"""The classic engines of the market simulation: the conditional logits (clogit, clogit6) and the LightGBM ranker
of assets/evaluation/baselines.py as ChoiceEngines (engine.py), plus persistence as an engine (the control).
Plain functions and classes, no dagster import.

How an engine decides (one occasion = its consideration set plus the outside option OTHER):
- utility of an option in the set: the fitted model's score (score_clogit / score_clogit6 / score_lgbm of
  baselines.py, unchanged); for lgbm, a ranker whose scores have no scale, utility = inv_temperature x score,
  with inv_temperature fitted on VALIDATION market occasions by maximum likelihood jointly with OTHER's global
  constant (a two-feature conditional logit: score on the options, an OTHER indicator; fit_scale_and_other).
  The episode-level 1/T of LgbmModel (fitted on val episodes, which always hold the actual product) is kept
  as model.inv_temperature but not used: the market's sets (up to M options, plus OTHER) are not those sets.
- utility of OTHER: a constant per category, fitted on the validation market occasions
  (build_market_occasions(period="val")): the actual choice is the actual product when it is in the set, else
  OTHER. Per category, because the share of a category's units outside M options depends on the category's
  assortment (coverage differs across categories far more than any option feature explains), shrunk towards the
  global constant (penalised maximum likelihood with a N(global, prior_sd^2) prior, prior_sd = 1 on the logit
  scale by default) so that a category with few val occasions, or none bought outside the set, keeps a finite
  constant near the global one; a category absent from val gets the global constant (fit_other_constant).
  clogit6 was fit on val episodes: its val market utilities come from its cross-fitted fold models (rows with
  period = 'val'), so OTHER's constant is not fitted on in-sample scores.
- prob: the softmax of the utilities over the set plus OTHER (each occasion's probs sum to 1).
- expected_qty of a product: cust_mean_qty (the customer's mean units per purchase in the category before d),
  else prod_mean_qty_28d, else 1, the rule of baselines.qty_customer_mean but per option and NOT rounded: the
  market adds prob x expected_qty into units, so it needs the expectation (rounding 1.4 to 1 would lose 29% of
  those units); a non-positive value reads 1.
- expected_qty of OTHER: the category's units per purchase in days d - 28 .. d - 1 of the purchase history
  (every product of the category; needs the options' category and day), else the category's units per
  occasion in the val market occasions, else all val occasions', else 1 (always > 0).

Options: decide() takes the rows of load_market_frame (market_options + the occasion's customer_id, category,
day, week, period, plus one OTHER row per occasion); OTHER rows are added when missing (engine.with_other_rows).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.baselines import (
    BaselineSettings,
    fit_baseline_models,
    score_clogit,
    score_clogit6,
    score_lgbm,
)
from assets.evaluation.clogit import fit_clogit, group_softmax
from assets.evaluation.logic import load_eval_frame, load_fit_frame
from assets.market.engine import DECISIONS_SCHEMA, ChoiceEngine, with_other_rows
from assets.market.metrics import OTHER, _window_sums, persistence
from assets.market.occasions import build_market_occasions

METHODS = ("clogit", "clogit6", "lgbm")
KEYS = ["occasion_id", "product_id"]
OCCASION_COLUMNS = ("customer_id", "category", "day", "week", "period")
MAX_ABS_CONSTANT = 30.0  # a constant's bound: beyond it P(OTHER) is 0 or 1 to double precision anyway


# --- loading -----------------------------------------------------------------------------------------


def load_market_frame(conn) -> pl.DataFrame:
    """market_options with the occasion's customer_id, category, day, week (ISO) and period, plus one OTHER
    row per occasion (its feature columns null), sorted by occasion_id, product_id."""
    opts = conn.sql(
        "select m.*, o.customer_id, o.category, o.day, o.iso_week as week, o.period "
        "from market_options as m join market_occasions as o using (occasion_id)"
    ).pl()
    occ = conn.sql(
        "select occasion_id, customer_id, category, day, iso_week as week, period from market_occasions"
    ).pl()
    frame = with_other_rows(opts).drop(OCCASION_COLUMNS)
    frame = frame.join(occ, on="occasion_id", how="left").sort(KEYS)
    # an occasion with an empty set appears through its OTHER row only
    missing = occ.join(frame.select("occasion_id").unique(), on="occasion_id", how="anti")
    if missing.height:
        frame = pl.concat([frame, missing.with_columns(product_id=pl.lit(OTHER))], how="diagonal_relaxed")
    return frame.sort(KEYS)


def load_market_actuals(conn) -> pl.DataFrame:
    """occasion_id, category, week, product_id (the actual product), quantity: metrics.actual_units' input."""
    return conn.sql(
        "select occasion_id, category, iso_week as week, actual_product_id as product_id, "
        "actual_quantity as quantity from market_occasions order by occasion_id"
    ).pl()


def load_history(conn) -> pl.DataFrame:
    """category, product_id, day, units, purchases per product and day (merchandise purchases: one purchase =
    one (basket, product) pair), the history metrics.persistence reads."""
    return conn.sql(
        "select category, product_id, day, sum(units)::double as units, count(*)::double as purchases "
        "from episode_purchases where is_merchandise group by all order by all"
    ).pl()


# --- OTHER's constant and lgbm's temperature -----------------------------------------------------------


def fit_other_constant(
    inside_lse, chose_other, categories=None, prior_sd: float = 1.0, max_iter: int = 100, tol: float = 1e-10
) -> tuple[float, dict[str, float]]:
    """Maximum-likelihood constant utility of OTHER given each occasion's inside log-sum-exp L_g (of the
    option utilities; -inf for an empty set) and whether OTHER was chosen: P(OTHER) = sigmoid(a - L_g), so the
    log-likelihood in a is a logistic regression with offset -L_g (an inside choice j adds u_j - L_g, constant
    in a). Returns (global a, {category: a_c}), a_c maximising its categories' likelihood plus the
    N(global a, prior_sd^2) log-prior (no categories: an empty dict). Newton steps, clipped to +-MAX_ABS_CONSTANT."""
    lse = np.asarray(inside_lse, dtype=np.float64)
    y = np.asarray(chose_other, dtype=np.float64)
    keep = np.isfinite(lse)  # an empty set chooses OTHER with probability 1 whatever a is: no information
    lse, y = lse[keep], y[keep]
    if lse.size == 0:
        return 0.0, {}

    def newton(groups: np.ndarray, n_groups: int, prior_mean: float | None) -> np.ndarray:
        a = np.full(n_groups, 0.0 if prior_mean is None else prior_mean)
        inv_var = 0.0 if prior_mean is None else 1.0 / prior_sd**2
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-(a[groups] - lse)))
            grad = np.bincount(groups, y - p, n_groups) - inv_var * (a - (prior_mean or 0.0))
            hess = np.bincount(groups, p * (1.0 - p), n_groups) + inv_var
            step = np.clip(grad / np.maximum(hess, 1e-12), -5.0, 5.0)
            a = np.clip(a + step, -MAX_ABS_CONSTANT, MAX_ABS_CONSTANT)
            if np.max(np.abs(step)) < tol:
                break
        return a

    a0 = float(newton(np.zeros(lse.size, dtype=np.int64), 1, None)[0])
    if categories is None:
        return a0, {}
    cats = pl.Series(categories, dtype=pl.Utf8).filter(pl.Series(keep)).fill_null("")
    names, codes = np.unique(cats.to_numpy().astype(str), return_inverse=True)
    a_c = newton(codes.astype(np.int64), names.size, a0)
    return a0, {str(n): float(v) for n, v in zip(names, a_c, strict=True) if n != ""}


def fit_scale_and_other(scores, offsets, is_other, chosen) -> tuple[float, float]:
    """(inv_temperature, OTHER's global constant) by maximum likelihood: a conditional logit on two features,
    the score on the options (0 on OTHER) and an OTHER indicator (fit_clogit); `chosen` row per occasion."""
    s = np.where(is_other, 0.0, np.asarray(scores, dtype=np.float64))
    X = np.column_stack([s, np.asarray(is_other, dtype=np.float64)])
    res = fit_clogit(X, offsets, chosen, feature_names=["score", "other"])
    return float(res.coef[0]), float(np.clip(res.coef[1], -MAX_ABS_CONSTANT, MAX_ABS_CONSTANT))


# --- quantities --------------------------------------------------------------------------------------


def product_qty(columns=("cust_mean_qty", "prod_mean_qty_28d")) -> pl.Expr:
    """cust_mean_qty, else prod_mean_qty_28d, else 1 (baselines.qty_customer_mean's rule, not rounded); pass
    a frame's columns to skip the ones it lacks."""
    names = [c for c in ("cust_mean_qty", "prod_mean_qty_28d") if c in columns]
    cols = [pl.col(c).cast(pl.Float64).fill_nan(None) for c in names]
    q = pl.coalesce(*cols, pl.lit(1.0))
    return pl.when(q > 0).then(q).otherwise(1.0)


@dataclass
class OtherQuantity:
    """expected_qty of OTHER (module docstring): the category's units per purchase in the `window` days before
    d from `history`, else the val mean per category, else the val mean overall, else 1."""

    history: pl.DataFrame | None = None  # category, day, units, purchases (load_history; product_id ignored)
    by_category: dict[str, float] = field(default_factory=dict)
    overall: float = 1.0
    window: int = 28

    def per_occasion(self, occ: pl.DataFrame) -> pl.Series:
        """One quantity per row of `occ` (occasion_id [, category, day])."""
        fb = pl.lit(self.overall if self.overall > 0 else 1.0)
        if "category" in occ.columns:
            cat = pl.DataFrame(
                {"category": list(self.by_category), "q_cat": list(self.by_category.values())},
                schema={"category": pl.Utf8, "q_cat": pl.Float64},
            )
            occ = occ.with_columns(pl.col("category").cast(pl.Utf8))
            occ = occ.join(cat, on="category", how="left", maintain_order="left")
            fb = pl.coalesce(pl.col("q_cat"), fb)
        q = fb
        if self.history is not None and {"category", "day"} <= set(occ.columns):
            keys = occ.select("category", "day").drop_nulls().unique()
            w = _window_sums(keys, self.history, ["category"], self.window)
            occ = occ.join(w, on=["category", "day"], how="left", maintain_order="left")
            q = pl.when(pl.col("p") > 0).then(pl.col("u") / pl.col("p")).otherwise(fb)
        q = q.cast(pl.Float64)
        return occ.select(pl.when(q > 0).then(q).otherwise(1.0).alias("q"))["q"]


def _occasions(opts: pl.DataFrame) -> pl.DataFrame:
    """One row per occasion: occasion_id and, where the options carry them, category and day."""
    cols = [c for c in ("category", "day") if c in opts.columns]
    return opts.group_by("occasion_id").agg(pl.col(c).drop_nulls().first() for c in cols).sort("occasion_id")


def _decisions(frame: pl.DataFrame) -> pl.DataFrame:
    """DECISIONS_SCHEMA rows of a frame holding utility and expected_qty, prob = softmax per occasion."""
    frame = frame.sort(KEYS)
    occ = frame["occasion_id"]
    starts = np.flatnonzero((occ != occ.shift(1)).fill_null(True).to_numpy())
    offsets = np.append(starts, frame.height).astype(np.int64)
    prob = group_softmax(frame["utility"].to_numpy(), offsets) if frame.height else np.zeros(0)
    frame = frame.with_columns(prob=pl.Series(prob, dtype=pl.Float64))
    return frame.select(pl.col(c).cast(t) for c, t in DECISIONS_SCHEMA.items())


# --- the engines ---------------------------------------------------------------------------------------


@dataclass
class ClassicEngine(ChoiceEngine):
    """A fitted baseline model of baselines.py as a market engine (module docstring)."""

    method: str  # clogit, clogit6 or lgbm
    model: Any  # ClogitResult, Clogit6Model or LgbmModel
    other_constant: float = 0.0  # OTHER's utility where its category has no constant of its own
    other_by_category: dict[str, float] = field(default_factory=dict)
    inv_temperature: float = 1.0  # lgbm: utility = inv_temperature x score (1 for the logits)
    other_qty: OtherQuantity = field(default_factory=OtherQuantity)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.name = self.method

    def scores(self, products: pl.DataFrame) -> np.ndarray:
        """The model's raw score of every row of `products` (no OTHER rows), in their order."""
        if products.height == 0:
            return np.zeros(0)
        period = pl.col("period") if "period" in products.columns else pl.lit(None, pl.Utf8)
        df = products.with_columns(
            episode_id=pl.col("occasion_id"), is_chosen=pl.lit(False), period=period.fill_null("test")
        )
        order = np.argsort(df["occasion_id"].to_numpy(), kind="stable")  # episodes contiguous
        df = df[order]
        scorer = {"clogit": score_clogit, "clogit6": score_clogit6, "lgbm": score_lgbm}[self.method]
        s = np.empty(products.height)
        s[order] = scorer(df, self.model)["score"].to_numpy()
        return s

    def other_utility(self, occ: pl.DataFrame) -> pl.Series:
        if "category" not in occ.columns or not self.other_by_category:
            return pl.Series([self.other_constant] * occ.height, dtype=pl.Float64)
        cat = occ["category"].cast(pl.Utf8)
        u = cat.replace_strict(self.other_by_category, default=self.other_constant, return_dtype=pl.Float64)
        return u.fill_null(self.other_constant)

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        opts = with_other_rows(options)
        is_other = pl.col("product_id") == OTHER
        prod = opts.filter(~is_other)
        prod = prod.with_columns(
            utility=pl.Series(self.inv_temperature * self.scores(prod), dtype=pl.Float64),
            expected_qty=product_qty(prod.columns),
        )
        occ = _occasions(opts)
        other = occ.select(
            "occasion_id",
            product_id=pl.lit(OTHER),
            utility=self.other_utility(occ),
            expected_qty=self.other_qty.per_occasion(occ),
        )
        cols = ["occasion_id", "product_id", "utility", "expected_qty"]
        return _decisions(pl.concat([prod.select(cols), other.select(cols)]))

    def fit_other(self, options: pl.DataFrame, actual: pl.DataFrame, prior_sd: float = 1.0) -> ClassicEngine:
        """Fit OTHER's constants (and lgbm's inv_temperature) on market occasions `options` (load_market_frame)
        with `actual` (occasion_id, product_id = the actual product); returns self."""
        opts = with_other_rows(options).sort(KEYS)
        act = actual.select("occasion_id", pl.col("product_id").alias("actual_product_id"))
        opts = opts.join(act, on="occasion_id", how="left", maintain_order="left")
        is_other = (opts["product_id"] == OTHER).to_numpy()
        s = np.zeros(opts.height)
        s[~is_other] = self.scores(opts.filter(~pl.Series(is_other)))
        hit = (pl.col("product_id") == pl.col("actual_product_id")).fill_null(False)
        chosen_inside = opts.select(hit.alias("h"))["h"].to_numpy() & ~is_other
        occ_ids = opts["occasion_id"]
        if opts.height == 0:
            return self
        starts = np.flatnonzero((occ_ids != occ_ids.shift(1)).fill_null(True).to_numpy())
        offsets = np.append(starts, opts.height).astype(np.int64)
        gidx = np.repeat(np.arange(starts.size), np.diff(offsets))
        inside_any = np.bincount(gidx, chosen_inside, starts.size) > 0
        chosen = np.full(starts.size, -1, dtype=np.int64)
        rows = np.flatnonzero(chosen_inside)
        chosen[gidx[rows[::-1]]] = rows[::-1]
        other_rows = np.flatnonzero(is_other)
        chosen[~inside_any] = other_rows[np.searchsorted(gidx[other_rows], np.flatnonzero(~inside_any))]
        if self.method == "lgbm" and (~is_other).any():
            self.info["inv_temperature_episodes"] = self.model.inv_temperature
            self.inv_temperature, a_joint = fit_scale_and_other(s, offsets, is_other, chosen)
            self.info["other_constant_joint"] = a_joint
        u = np.where(is_other, -np.inf, self.inv_temperature * s)
        m = np.maximum.reduceat(u, starts)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            lse = m_safe + np.log(np.add.reduceat(np.exp(u - m_safe[gidx]), starts))
        cats = _occasions(opts)["category"] if "category" in opts.columns else None
        self.other_constant, self.other_by_category = fit_other_constant(lse, ~inside_any, cats, prior_sd)
        self.info.update(
            n_fit_occasions=int(starts.size),
            fit_other_share=float(np.mean(~inside_any)) if starts.size else math.nan,
            other_constant=self.other_constant,
            inv_temperature=self.inv_temperature,
        )
        return self


@dataclass
class PersistenceEngine(ChoiceEngine):
    """metrics.persistence as an engine: the options must carry the occasion's category and day."""

    history: pl.DataFrame  # category, product_id, day, units, purchases (load_history)
    window: int = 28

    def __post_init__(self) -> None:
        self.name = "persistence"

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        opts = with_other_rows(options)
        occ = _occasions(opts)
        if not {"category", "day"} <= set(occ.columns) or occ["category"].is_null().any():
            raise ValueError(
                "persistence needs the occasion's category and day on the options (load_market_frame)"
            )
        p = persistence(occ, opts.select(KEYS), self.history, self.window)
        out = opts.select(KEYS).join(p.select(*KEYS, "prob", "expected_qty"), on=KEYS, how="left")
        return (
            out.with_columns(utility=pl.lit(math.nan))
            .select(pl.col(c).cast(t) for c, t in DECISIONS_SCHEMA.items())
            .sort(KEYS)
        )


# --- fitting everything --------------------------------------------------------------------------------


@contextmanager
def _market_tables_set_aside(conn):
    """Keep the warehouse's market_occasions / market_options (if any) while other ones are built; restore."""
    names = ("market_occasions", "market_options")
    saved = []
    for n in names:
        if conn.execute("select count(*) from duckdb_tables() where table_name = $n", {"n": n}).fetchall()[0][
            0
        ]:
            conn.execute(f"alter table {n} rename to {n}__classic_saved")
            saved.append(n)
    try:
        yield
    finally:
        for n in names:
            conn.execute(f"drop table if exists {n}")
            if n in saved:
                conn.execute(f"alter table {n}__classic_saved rename to {n}")


def fit_classic_engines(
    conn,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    settings: BaselineSettings | None = None,
    m_options: int = 20,
    own_max: int = 10,
    history_days: int = 28,
    window_days: int = 14,
    prior_sd: float = 1.0,
    with_persistence: bool = True,
    log=print,
) -> dict[str, ChoiceEngine]:
    """name -> engine, ready for test market options (load_market_frame after build_market_occasions).

    The baseline models are fitted as baseline_report fits them (load_fit_frame / load_eval_frame's val rows,
    fit_baseline_models with `settings`, default BaselineSettings(seed=seed)); OTHER's constants, lgbm's
    inv_temperature and OTHER's val quantities on the val period's market occasions, built with the market
    knobs given (the warehouse's market_occasions / market_options are set aside meanwhile and restored).
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose among {METHODS}")
    settings = settings or BaselineSettings(seed=seed)
    val = load_eval_frame(conn, settings.seed).filter(pl.col("period") == "val")
    models = fit_baseline_models(load_fit_frame(conn), val, settings, log=log, methods=tuple(methods))
    del val
    history = load_history(conn)
    with _market_tables_set_aside(conn):
        build_market_occasions(
            conn, period="val", m_options=m_options, own_max=own_max, seed=seed,
            history_days=history_days, window_days=window_days,
        )  # fmt: skip
        vframe = load_market_frame(conn)
        vact = load_market_actuals(conn)
    per_cat = vact.group_by("category").agg(q=pl.col("quantity").cast(pl.Float64).mean()).drop_nulls()
    overall = float(vact["quantity"].cast(pl.Float64).mean() or 1.0) if vact.height else 1.0
    other_qty = OtherQuantity(
        history, dict(zip(per_cat["category"], per_cat["q"], strict=True)), overall, history_days
    )
    engines: dict[str, ChoiceEngine] = {}
    for method in methods:
        model = getattr(models, method)
        if model is None:
            log(f"classic engines: no fitted {method} (nothing to fit on): left out")
            continue
        inv_t = models.lgbm.inv_temperature if method == "lgbm" else 1.0
        engine = ClassicEngine(method, model, inv_temperature=inv_t, other_qty=other_qty)
        engine.fit_other(vframe, vact, prior_sd)
        cs = list(engine.other_by_category.values())
        log(
            f"{method}: OTHER constant {engine.other_constant:+.3f} on {engine.info['n_fit_occasions']} val "
            f"occasions (OTHER chosen in {engine.info['fit_other_share']:.3f}); per category "
            + (f"{min(cs):+.3f}..{max(cs):+.3f} ({len(cs)})" if cs else "none")
            + (f"; 1/T {engine.inv_temperature:.3f}" if method == "lgbm" else "")
        )
        engines[method] = engine
    if with_persistence:
        engines["persistence"] = PersistenceEngine(history, history_days)
    return engines
