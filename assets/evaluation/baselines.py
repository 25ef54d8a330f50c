"""The reference baselines of docs/evaluation-protocol.md, scored on the shared episodes and choice sets.

Every scorer takes the option frame (one row per (episode, option), sorted by episode_id then position, with
the columns of `episode_options`, `option_features`, the episode's category/customer/quantity and its split
flags) and returns it with `score` (higher = preferred) and `prob` (the method's choice distribution over the
episode's options, or null for a method without one).

Methods (names as they appear in `baseline_metrics.method`):
- random: every option scored alike (score 0): hit@k is then exactly its expected value k / n_options under
  the random tie order of metrics.py; prob = 1 / n_options.
- popularity: score = pop_28d (purchases in days d-28..d-1); prob = (pop_28d + 1) / sum over the set (+1).
- repeat: the customer's purchases of the option before d, ties broken by popularity (pop_28d); no
  probability is defined by the protocol, so prob is null and nll / share_jsd are null (a smoothed version
  would be a new method, not this baseline).
- clogit: McFadden's conditional logit on the option features MODEL_FEATURES (options.py), fit on train episodes
  with use_for_fit = true; prob = its softmax.
- clogit6: a conditional logit on the six SIX_FEATURES (log price, discount depth, log recent sales, log own
  past purchases, log past purchases of the brand, is_new) fit on the val episodes outside the cold
  categories: val's features have the test period's history depth (train's early months are left-censored:
  docs/baselines-probe.md). Its val scores are cross-fitted (`clogit6_folds` folds by md5 of seed|episode_id:
  each val episode is scored by the model fit on the other folds); val/test scores otherwise come from the
  model fit on all of them.
- lgbm: a LightGBM lambdarank ranker on the same features (a subsample of the fit episodes, early stopping on
  validation episodes); its scores are turned into probabilities by a softmax with a temperature fitted on
  validation episodes (a one-feature conditional logit on the score), so it has an nll too.
best_classic (rows of that name): per split, the metrics of the classic method chosen on the split's val
analogue (assets/evaluation/best_classic.py states the rule).
Quantity baselines (rows `qty_customer_mean`, `qty_one`; hit and probability metrics null):
- qty_customer_mean: the customer's mean units per purchase in this category before d (cust_mean_qty); else
  the mean units per purchase over days d-28..d-1 (prod_mean_qty_28d) of the method's top option; else 1;
  rounded to the nearest integer and at least 1 (quantities are integers, most are 1, and the absolute error
  of a rounded prediction is never worse on an integer target that the rounding lands on). Every choice method
  row reports qty_mae / qty_wape with this predictor applied to its own top option; the standalone
  `qty_customer_mean` row uses the popularity baseline's top option for the fallback.
- qty_one: always 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.best_classic import (
    VAL_SPLITS,
    best_classic_by_split,
    best_classic_rows,
    val_analogue_membership,
)
from assets.evaluation.clogit import ClogitResult, fit_clogit, group_softmax
from assets.evaluation.metrics import evaluate_splits, qty_mae, qty_wape
from assets.evaluation.options import (  # noqa: F401 - the option frame's names stay importable from here
    LGBM_EXTRA_FEATURES,
    MODEL_FEATURES,
    SIX_FEATURES,
    ensure_sample_key,
    episode_layout,
    feature_matrix,
    feature_names,
    features_matrix,
    fit_frame,
    sorted_options,
    split_membership,
    val_folds,
)

CHOICE_METHODS = ["random", "popularity", "repeat", "clogit", "clogit6", "lgbm"]
QTY_METHODS = ["qty_customer_mean", "qty_one"]
SPLITS = ["val", "test_all", "test_sparse", "test_cold", "test_new"]


@dataclass
class BaselineSettings:
    """Knobs of run_baselines (the Dagster config maps onto this)."""

    seed: int = 0
    max_train_episodes: int = 100_000  # lgbm: fit-episode subsample (by md5 of seed|episode_id)
    clogit_max_train_episodes: int = 0  # clogit: 0 = every fit episode
    max_val_episodes: int = 50_000  # lgbm early stopping and temperature: val subsample
    lgbm_num_leaves: int = 31
    lgbm_learning_rate: float = 0.15
    lgbm_n_estimators: int = 150
    lgbm_early_stopping: int = 15
    lgbm_min_data_in_leaf: int = 200
    lgbm_max_bin: int = 63
    lgbm_threads: int = 2
    sample_per_split: int = 0  # 0: every episode of a split; N > 0: the N smallest md5(seed|basket|category)
    clogit6_folds: int = 2  # clogit6 is fit on val: its val scores come from models fit on the other folds
    best_classic_min_val_episodes: int = 200  # a val analogue smaller than this: choose on all of val


@dataclass
class BaselineRun:
    """What run_baselines returns."""

    predictions: pl.DataFrame  # method, episode_id, product_id, score, prob (val and test episodes)
    metrics: pl.DataFrame  # method, split, n_episodes, hit1, hit3, nll, qty_mae, qty_wape, share_jsd
    clogit: ClogitResult | None
    info: dict[str, Any] = field(default_factory=dict)  # timings, sizes, lgbm iterations, temperature
    clogit6: ClogitResult | None = None
    best_classic: pl.DataFrame | None = None  # split, method, chosen_on, chosen_on_n, chosen_on_value


# --- scorers -----------------------------------------------------------------------------------------


def score_random(df: pl.DataFrame) -> pl.DataFrame:
    n = pl.len().over("episode_id").cast(pl.Float64)
    return df.with_columns(score=pl.lit(0.0), prob=1.0 / n)


def score_popularity(df: pl.DataFrame) -> pl.DataFrame:
    c = pl.col("pop_28d").cast(pl.Float64).fill_null(0.0)
    return df.with_columns(score=c, prob=(c + 1.0) / (c + 1.0).sum().over("episode_id"))


def score_repeat(df: pl.DataFrame) -> pl.DataFrame:
    """score = customer's purchases + pop_28d / (1 + max pop_28d in the set): the count ranks first and
    popularity only breaks its ties (the fraction stays below 1); prob null (none defined)."""
    cp = pl.col("cust_product_purchases").cast(pl.Float64).fill_null(0.0)
    pop = pl.col("pop_28d").cast(pl.Float64).fill_null(0.0)
    tie = pop / (1.0 + pop.max().over("episode_id"))
    return df.with_columns(score=cp + tie, prob=pl.lit(None, dtype=pl.Float64))


def fit_clogit_baseline(train: pl.DataFrame, settings: BaselineSettings) -> ClogitResult:
    """The conditional logit on MODEL_FEATURES over the fit episodes (train, use_for_fit)."""
    fit = fit_frame(train, settings.clogit_max_train_episodes, settings.seed)
    offsets, chosen, _ = episode_layout(fit)
    X = feature_matrix(fit)
    del fit
    return fit_clogit(X, offsets, chosen, feature_names=feature_names())


def fit_clogit_on(
    frame: pl.DataFrame, feats: dict[str, pl.Expr], max_episodes: int = 0, seed: int = 0
) -> ClogitResult:
    """A conditional logit on the feature expressions `feats` over the qualifying episodes of `frame`."""
    fit = fit_frame(frame, max_episodes, seed)
    offsets, chosen, _ = episode_layout(fit)
    return fit_clogit(features_matrix(fit, feats), offsets, chosen, feature_names=list(feats))


def score_clogit(df: pl.DataFrame, result: ClogitResult) -> pl.DataFrame:
    """Utilities and softmax probabilities; `df`'s episodes must be contiguous (sorted by episode_id)."""
    u = feature_matrix(df) @ result.coef
    offsets, _, _ = episode_layout(df)
    return df.with_columns(score=pl.Series(u), prob=pl.Series(group_softmax(u, offsets)))


@dataclass
class Clogit6Model:
    """clogit6: the model fit on every val fit episode (test scores) and one per fold (val scores)."""

    full: ClogitResult
    folds: list[ClogitResult]
    seed: int


def fit_clogit6(val: pl.DataFrame, settings: BaselineSettings) -> Clogit6Model | None:
    """clogit6 on the val episodes outside the cold categories (their val episodes stay unseen, as test_cold
    wants), plus one model per fold for cross-fitted val scores. None without val fit episodes."""
    if "cold_category" in val.columns:
        val = val.filter(~pl.col("cold_category").fill_null(False))
    if val.height == 0:
        return None
    full = fit_clogit_on(val, SIX_FEATURES)
    folds = val_folds(val, settings.seed, settings.clogit6_folds)
    per_fold = [fit_clogit_on(val.filter(folds != f), SIX_FEATURES) for f in range(settings.clogit6_folds)]
    return Clogit6Model(full, per_fold, settings.seed)


def score_clogit6(df: pl.DataFrame, model: Clogit6Model) -> pl.DataFrame:
    """Utilities and softmax probabilities: val rows by their fold's model (fit without their fold), every
    other row by the model fit on all val fit episodes; `df`'s episodes must be contiguous."""
    X = features_matrix(df, SIX_FEATURES)
    u = X @ model.full.coef
    is_val = (df["period"] == "val").to_numpy()
    if is_val.any():
        fold = val_folds(df, model.seed, len(model.folds)).to_numpy()
        for f, res in enumerate(model.folds):
            rows = is_val & (fold == f)
            u[rows] = X[rows] @ res.coef
    offsets, _, _ = episode_layout(df)
    return df.with_columns(score=pl.Series(u), prob=pl.Series(group_softmax(u, offsets)))


@dataclass
class LgbmModel:
    booster: Any
    inv_temperature: float  # probabilities = softmax(inv_temperature * score) within the set
    best_iteration: int
    fit_seconds: float
    n_train_episodes: int


def fit_lgbm_ranker(
    train: pl.DataFrame, val: pl.DataFrame, settings: BaselineSettings, log=print
) -> LgbmModel:
    """LightGBM lambdarank on a seeded subsample of the fit episodes; early stopping on val episodes;
    the softmax temperature of its scores fitted on the same val episodes (one-feature conditional logit)."""
    import lightgbm as lgb

    t0 = time.perf_counter()
    names = feature_names(extra=True)
    tr = fit_frame(train, settings.max_train_episodes, settings.seed)
    va = fit_frame(val, settings.max_val_episodes, settings.seed)
    tr_off, _, _ = episode_layout(tr)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [1, 3],
        "num_leaves": settings.lgbm_num_leaves,
        "learning_rate": settings.lgbm_learning_rate,
        "min_data_in_leaf": settings.lgbm_min_data_in_leaf,
        "max_bin": settings.lgbm_max_bin,
        "num_threads": settings.lgbm_threads,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    dtrain = lgb.Dataset(
        feature_matrix(tr, extra=True),
        label=tr["is_chosen"].cast(pl.Int32).to_numpy(),
        group=np.diff(tr_off),
        feature_name=names,
        free_raw_data=True,
    )
    callbacks = []
    valid_sets = []
    if va.height:
        va_off, _, _ = episode_layout(va)
        dval = lgb.Dataset(
            feature_matrix(va, extra=True),
            label=va["is_chosen"].cast(pl.Int32).to_numpy(),
            group=np.diff(va_off),
            reference=dtrain,
        )
        valid_sets = [dval]
        callbacks.append(
            lgb.early_stopping(settings.lgbm_early_stopping, first_metric_only=True, verbose=False)
        )

    def progress(env) -> None:  # a line every 25 trees (the Dagster log shows it live)
        if (env.iteration + 1) % 25 == 0:
            res = " ".join(f"{name}={val:.4f}" for _, name, val, _ in env.evaluation_result_list)
            log(f"lgbm: tree {env.iteration + 1}/{settings.lgbm_n_estimators} {res}")

    callbacks.append(progress)
    booster = lgb.train(
        params, dtrain, num_boost_round=settings.lgbm_n_estimators, valid_sets=valid_sets, callbacks=callbacks
    )
    best = booster.best_iteration or booster.current_iteration()
    inv_t = 1.0
    if va.height:
        s = booster.predict(feature_matrix(va, extra=True), num_iteration=best)
        va_off, va_ch, _ = episode_layout(va)
        inv_t = float(fit_clogit(s[:, None], va_off, va_ch).coef[0])
    return LgbmModel(booster, inv_t, int(best), time.perf_counter() - t0, int(tr["episode_id"].n_unique()))


def score_lgbm(df: pl.DataFrame, model: LgbmModel) -> pl.DataFrame:
    """Ranker scores and tempered softmax probabilities; `df`'s episodes must be contiguous."""
    s = model.booster.predict(feature_matrix(df, extra=True), num_iteration=model.best_iteration)
    offsets, _, _ = episode_layout(df)
    return df.with_columns(
        score=pl.Series(s), prob=pl.Series(group_softmax(model.inv_temperature * s, offsets))
    )


# --- quantities --------------------------------------------------------------------------------------


def top_options(scored: pl.DataFrame) -> pl.DataFrame:
    """episode_id and the columns of its top-scored option (ties: the smaller product_id)."""
    cols = [c for c in ("episode_id", "product_id", "score", *QTY_INPUTS) if c in scored.columns]
    return (
        scored.select(cols)
        .with_columns(pl.col("score").cast(pl.Float64).fill_nan(None).fill_null(-math.inf))
        .sort(["episode_id", "score", "product_id"], descending=[False, True, False])
        .group_by("episode_id", maintain_order=True)
        .first()
    )


QTY_INPUTS = ("cust_mean_qty", "prod_mean_qty_28d", "quantity")


def qty_customer_mean(scored: pl.DataFrame) -> pl.DataFrame:
    """episode_id, qty_pred, qty_actual: cust_mean_qty, else prod_mean_qty_28d of the top option, else 1;
    rounded to the nearest integer, at least 1."""
    top = top_options(scored)
    raw = pl.coalesce(pl.col("cust_mean_qty"), pl.col("prod_mean_qty_28d"), pl.lit(1.0)).cast(pl.Float64)
    return top.select(
        "episode_id",
        qty_pred=pl.max_horizontal(raw.round(0), pl.lit(1.0)),
        qty_actual=pl.col("quantity").cast(pl.Float64),
    )


def qty_one(scored: pl.DataFrame) -> pl.DataFrame:
    eps = scored.group_by("episode_id").agg(qty_actual=pl.col("quantity").first().cast(pl.Float64))
    return eps.with_columns(qty_pred=pl.lit(1.0)).select("episode_id", "qty_pred", "qty_actual")


# --- the whole run ----------------------------------------------------------------------------------


def _metrics_rows(
    method: str,
    scored: pl.DataFrame | None,
    qty: pl.DataFrame,
    members: pl.DataFrame,
    splits: list[str] | None = None,
) -> list[dict]:
    splits = splits or SPLITS
    if scored is not None:
        return [{"method": method, **m} for m in evaluate_splits(scored, qty, members, splits)]
    rows = []  # a quantity-only method: no choice metrics
    for split in splits:
        q = qty.join(members.filter(pl.col("split") == split), on="episode_id", how="semi")
        rows.append(
            {
                "method": method,
                "split": split,
                "n_episodes": q.height,
                "hit1": None,
                "hit3": None,
                "nll": None,
                "qty_mae": qty_mae(q),
                "qty_wape": qty_wape(q),
                "share_jsd": None,
            }
        )
    return rows


METRICS_SCHEMA = {
    "method": pl.Utf8,
    "split": pl.Utf8,
    "n_episodes": pl.Int64,
    "hit1": pl.Float64,
    "hit3": pl.Float64,
    "nll": pl.Float64,
    "qty_mae": pl.Float64,
    "qty_wape": pl.Float64,
    "share_jsd": pl.Float64,
}


@dataclass
class FittedBaselines:
    """The fitted models of the baselines that learn (None where there was nothing to fit on)."""

    clogit: ClogitResult | None = None
    lgbm: LgbmModel | None = None
    info: dict[str, Any] = field(default_factory=dict)
    clogit6: Clogit6Model | None = None


def fit_baseline_models(
    fit: pl.DataFrame,
    val: pl.DataFrame,
    settings: BaselineSettings,
    log=print,
    methods: tuple[str, ...] = ("clogit6", "clogit", "lgbm"),
) -> FittedBaselines:
    """Fit the conditional logit and the ranker on `fit` (train rows with use_for_fit, episodes contiguous);
    `val` (val rows) serves the ranker's early stopping and temperature, and is clogit6's fit sample.
    `methods`: the models to fit (the others stay None; the market fits only the engines it runs)."""
    out = FittedBaselines()
    out.info["n_fit_episodes"] = int(fit["episode_id"].n_unique()) if fit.height else 0
    t = time.perf_counter()
    out.clogit6 = fit_clogit6(val, settings) if "clogit6" in methods else None
    if out.clogit6 is not None:
        c6 = out.clogit6.full
        out.info.update(
            seconds_clogit6_fit=time.perf_counter() - t,
            clogit6_converged=c6.converged and all(r.converged for r in out.clogit6.folds),
            clogit6_n_fit_episodes=c6.n_groups,
        )
        log(
            f"clogit6: {c6.n_groups} val episodes, loglik {c6.loglik:.1f} (null {c6.loglik_null:.1f}), "
            + ", ".join(f"{n} {c:+.3f}" for n, c in zip(c6.feature_names, c6.coef, strict=True))
        )
    if fit.height == 0:
        log("baselines: no fit episodes: clogit and lgbm are left out")
        return out
    t = time.perf_counter()
    if "clogit" in methods:
        out.clogit = fit_clogit_baseline(fit, settings)
        out.info["seconds_clogit_fit"] = time.perf_counter() - t
        out.info.update(clogit_converged=out.clogit.converged, clogit_n_fit_episodes=out.clogit.n_groups)
        log(
            f"clogit: {out.clogit.n_groups} episodes, loglik {out.clogit.loglik:.1f} "
            f"(null {out.clogit.loglik_null:.1f}), converged {out.clogit.converged}, "
            f"{out.info['seconds_clogit_fit']:.1f} s"
        )
    if "lgbm" not in methods:
        return out
    out.lgbm = fit_lgbm_ranker(fit, val, settings, log=log)
    out.info.update(
        lgbm_best_iteration=out.lgbm.best_iteration,
        lgbm_inv_temperature=out.lgbm.inv_temperature,
        lgbm_n_train_episodes=out.lgbm.n_train_episodes,
        seconds_lgbm_fit=out.lgbm.fit_seconds,
    )
    log(
        f"lgbm: {out.lgbm.n_train_episodes} episodes, {out.lgbm.best_iteration} trees, "
        f"1/T {out.lgbm.inv_temperature:.3f}, {out.lgbm.fit_seconds:.1f} s"
    )
    return out


def score_baselines(
    evalf: pl.DataFrame, models: FittedBaselines, settings: BaselineSettings, log=print
) -> BaselineRun:
    """Score every method on the val/test option frame `evalf` and compute the metrics per split."""
    t_all = time.perf_counter()
    evalf = sorted_options(ensure_sample_key(evalf, settings.seed))
    info: dict[str, Any] = dict(models.info)
    flags = [c for c in ("cold_category", "in_val_sparse", "in_val_new") if c in evalf.columns]
    episodes = evalf.group_by("episode_id").agg(
        pl.col("period", "in_test_sparse", "in_test_cold", "in_test_new", "sample_key", *flags).first()
    )
    members = split_membership(episodes, settings.sample_per_split)
    # the val analogues of the test splits, whole (they choose best_classic; never sampled)
    members = pl.concat([members, val_analogue_membership(episodes)])
    splits = SPLITS + VAL_SPLITS
    info["n_eval_episodes"] = int(episodes.height)
    info["n_eval_rows"] = int(evalf.height)
    log(f"baselines: scoring {info['n_eval_episodes']} val/test episodes ({info['n_eval_rows']} options)")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    scored: dict[str, pl.DataFrame] = {
        "random": score_random(evalf),
        "popularity": score_popularity(evalf),
        "repeat": score_repeat(evalf),
    }
    if models.clogit is not None:
        scored["clogit"] = score_clogit(evalf, models.clogit)
    if models.clogit6 is not None:
        scored["clogit6"] = score_clogit6(evalf, models.clogit6)
    if models.lgbm is not None:
        scored["lgbm"] = score_lgbm(evalf, models.lgbm)
    timings["score"] = time.perf_counter() - t

    t = time.perf_counter()
    rows: list[dict] = []
    for method, frame in scored.items():
        rows += _metrics_rows(method, frame, qty_customer_mean(frame), members, splits)
    rows += _metrics_rows("qty_customer_mean", None, qty_customer_mean(scored["popularity"]), members, splits)
    rows += _metrics_rows("qty_one", None, qty_one(evalf), members, splits)
    timings["metrics"] = time.perf_counter() - t
    metrics = pl.DataFrame(rows, schema=METRICS_SCHEMA)
    best = best_classic_by_split(metrics, CHOICE_METHODS, settings.best_classic_min_val_episodes)
    metrics = pl.concat([metrics, best_classic_rows(metrics, best)])
    info["best_classic"] = ", ".join(f"{r['split']}={r['method']}" for r in best.iter_rows(named=True))
    log(f"best classic per split (chosen on val): {info['best_classic']}")
    predictions = pl.concat(
        [
            f.select(
                pl.lit(m).alias("method"),
                "episode_id",
                "product_id",
                pl.col("score").cast(pl.Float64),
                pl.col("prob").cast(pl.Float64),
            )
            for m, f in scored.items()
        ]
    )
    timings["score_and_metrics"] = time.perf_counter() - t_all
    info["timings"] = timings
    return BaselineRun(
        predictions=predictions,
        metrics=metrics,
        clogit=models.clogit,
        info=info,
        clogit6=models.clogit6.full if models.clogit6 is not None else None,
        best_classic=best,
    )


def run_baselines(opts: pl.DataFrame, settings: BaselineSettings | None = None, log=print) -> BaselineRun:
    """Fit and score every baseline on one option frame holding fit and val/test rows (tests, small data).

    Fitting uses train rows with use_for_fit; scoring and metrics use val and test episodes only. The
    warehouse path (logic.build_baseline_report) loads the two parts separately to save memory.
    """
    settings = settings or BaselineSettings()
    t = time.perf_counter()
    opts = sorted_options(opts)
    fit = opts.filter((pl.col("period") == "train") & pl.col("use_for_fit").fill_null(False))
    evalf = opts.filter(pl.col("period").is_in(["val", "test"]))
    models = fit_baseline_models(fit, evalf.filter(pl.col("period") == "val"), settings, log=log)
    run = score_baselines(evalf, models, settings, log=log)
    run.info["timings"]["total"] = time.perf_counter() - t
    return run
