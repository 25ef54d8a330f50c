"""The baselines' option frame: the model features, the episode layout, split membership and fit samples.

The frame holds one row per (episode, option), sorted by episode_id then position (episodes contiguous), with
the columns of `episode_options`, `option_features`, the episode's category/customer/quantity and its split
flags (sql/evaluation/select_eval_options.sql and select_fit_options.sql).
"""

from __future__ import annotations

import numpy as np
import polars as pl

# The option features of the conditional logit and the ranker, and why each is there. Counts enter as
# log(1 + n): the first purchases matter most and raw counts have long tails. Nulls become 0 together with
# an indicator where "never" differs from "zero".
MODEL_FEATURES: dict[str, pl.Expr] = {
    # popularity, recent and long-run: the crowd's choice (the popularity baseline's signal)
    "log_pop_28d": pl.col("pop_28d").cast(pl.Float64).fill_null(0).log1p(),
    "log_pop_total": pl.col("pop_total").cast(pl.Float64).fill_null(0).log1p(),
    # no sale before d: new products have no history, their other features are zeros
    "is_new": pl.col("is_new").cast(pl.Float64).fill_null(0),
    # habit: the repeat baseline's signal, as strength (log count) and as "ever bought" (one-off purchases)
    "log_cust_product": pl.col("cust_product_purchases").cast(pl.Float64).fill_null(0).log1p(),
    "bought_before": (pl.col("cust_product_purchases").fill_null(0) > 0).cast(pl.Float64),
    # loyalty share: the product's share of the customer's episodes in this category
    "cust_product_share": (
        pl.col("cust_product_purchases").cast(pl.Float64).fill_null(0)
        / pl.max_horizontal(pl.col("cust_category_purchases").cast(pl.Float64).fill_null(0), pl.lit(1.0))
    ).clip(0.0, 1.0),
    # brand loyalty (docs/design.md rho: brand_loyalty)
    "log_cust_brand": pl.col("cust_brand_purchases").cast(pl.Float64).fill_null(0).log1p(),
    # ... and as "bought this brand before" (a step, as in the synthetic market's utility): the log count
    # alone left 0.02 of hit@1 on the synthetic market's table (tests/test_recovery.py)
    "bought_brand_before": (pl.col("cust_brand_purchases").fill_null(0) > 0).cast(pl.Float64),
    # recency of the customer's last purchase of the option: recent purchases are repeated (or, for
    # durables, not yet): a decay and the log gap, both 0 when never bought
    "recency_decay": (-pl.col("days_since_cust_purchase").cast(pl.Float64) / 30.0).exp().fill_null(0.0),
    "log_days_since": pl.col("days_since_cust_purchase").cast(pl.Float64).log1p().fill_null(0.0),
    # promotion: discount depth (rho: discount_sensitivity)
    "discount_depth": pl.col("discount_depth").cast(pl.Float64).fill_null(0).clip(-1.0, 1.0),
    # price level (rho: price_sensitivity) and price relative to the set (a non-linear price term: log_price
    # minus a per-set constant would be collinear within a set, so the ratio enters linearly)
    "log_price": pl.col("log_price").cast(pl.Float64).fill_null(0),
    "rel_price": pl.col("rel_price").cast(pl.Float64).fill_null(1.0).clip(0.0, 10.0),
    # reference-dependent price: the gap to the customer's reference price, and its loss-averse part (a rise
    # above the reference hurts more than an equal fall helps: rho loss_aversion)
    "ref_price_gap": pl.col("ref_price_gap").cast(pl.Float64).fill_null(0).clip(-1.0, 3.0),
    "ref_price_loss": pl.col("ref_price_gap").cast(pl.Float64).fill_null(0).clip(0.0, 3.0),
}
# The six-feature conditional logit (`clogit6`): the same expressions as MODEL_FEATURES for the signals that
# carry over to products without history (price, promotion, recent sales, habit, brand loyalty, newness).
# It is fit on the validation episodes, whose history depth is the test period's; see docs/baselines-probe.md.
SIX_FEATURES: dict[str, pl.Expr] = {
    k: MODEL_FEATURES[k]
    for k in ("log_price", "discount_depth", "log_pop_28d", "log_cust_product", "log_cust_brand", "is_new")
}
# The ranker also sees the (per-episode constant) context, which trees can interact with option features.
LGBM_EXTRA_FEATURES: dict[str, pl.Expr] = {
    "log_cust_category": pl.col("cust_category_purchases").cast(pl.Float64).fill_null(0).log1p(),
    "n_options": pl.len().over("episode_id").cast(pl.Float64),
}


def feature_names(extra: bool = False) -> list[str]:
    return list(MODEL_FEATURES) + (list(LGBM_EXTRA_FEATURES) if extra else [])


def episode_layout(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group_offsets, chosen row index or -1, has_actual) of a frame sorted by episode_id.

    Rows of one episode must be contiguous (the loaders sort by episode_id, position).
    """
    ep = df["episode_id"]
    if df.height == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    change = np.flatnonzero((ep != ep.shift(1)).fill_null(True).to_numpy())
    offsets = np.append(change, df.height).astype(np.int64)
    gidx = np.repeat(np.arange(change.size), np.diff(offsets))
    is_ch = df["is_chosen"].fill_null(False).to_numpy()
    chosen = np.full(change.size, -1, dtype=np.int64)
    rows = np.flatnonzero(is_ch)
    # the first actual row of each episode (reversed assignment keeps the first)
    chosen[gidx[rows[::-1]]] = rows[::-1]
    return offsets, chosen, chosen >= 0


def sorted_options(df: pl.DataFrame) -> pl.DataFrame:
    order = ["episode_id", "position"] if "position" in df.columns else ["episode_id", "product_id"]
    return df.sort(order)


def split_membership(episodes: pl.DataFrame, sample_per_split: int = 0) -> pl.DataFrame:
    """episode_id, split for the named splits (an episode can be in several); optional seeded sample.

    `episodes` has episode_id, period, in_test_sparse, in_test_cold, in_test_new and, for sampling,
    sample_key (md5 of "{seed}|{basket_id}|{category}").
    """
    test = pl.col("period") == "test"
    defs = {
        "val": pl.col("period") == "val",
        "test_all": test,
        "test_sparse": test & pl.col("in_test_sparse").fill_null(False),
        "test_cold": test & pl.col("in_test_cold").fill_null(False),
        "test_new": test & pl.col("in_test_new").fill_null(False),
    }
    parts = []
    for name, cond in defs.items():
        part = episodes.filter(cond)
        if sample_per_split > 0:
            part = part.sort("sample_key").head(sample_per_split)
        parts.append(part.select("episode_id", pl.lit(name).alias("split")))
    return pl.concat(parts)


def ensure_sample_key(opts: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Add sample_key = md5("{seed}|{basket_id}|{category}") when the frame lacks it."""
    if "sample_key" in opts.columns:
        return opts
    import hashlib

    keys = [
        hashlib.md5(f"{seed}|{b}|{c}".encode()).hexdigest()
        for b, c in zip(opts["basket_id"].to_list(), opts["category"].to_list(), strict=True)
    ]
    return opts.with_columns(sample_key=pl.Series(keys, dtype=pl.Utf8))


def feature_matrix(df: pl.DataFrame, extra: bool = False) -> np.ndarray:
    """(n_rows, k) float64 matrix of the model features (NaN and inf read as 0), built column by column."""
    feats = dict(MODEL_FEATURES)
    if extra:
        feats.update(LGBM_EXTRA_FEATURES)
    return features_matrix(df, feats)


def features_matrix(df: pl.DataFrame, feats: dict[str, pl.Expr]) -> np.ndarray:
    """(n_rows, k) float64 matrix of the named feature expressions (NaN and inf read as 0)."""
    X = np.empty((df.height, len(feats)), dtype=np.float64, order="F")
    for j, (name, expr) in enumerate(feats.items()):
        X[:, j] = df.select(expr.cast(pl.Float64).alias(name)).to_series().to_numpy()
    np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return X


def fit_frame(df: pl.DataFrame, max_episodes: int, seed: int) -> pl.DataFrame:
    """Episodes with at least 2 options and one actual option; a seeded md5 subsample if too many."""
    # rows keep their order (episodes stay contiguous); no copy when every episode qualifies
    valid = (pl.len().over("episode_id") >= 2) & (
        pl.col("is_chosen").cast(pl.Int64).sum().over("episode_id") == 1
    )
    mask = df.select(valid.alias("m")).to_series()
    if not bool(mask.all()):
        df = df.filter(mask)
    if max_episodes:
        ids = df.select(pl.col("episode_id").unique())
        if ids.height > max_episodes:
            key = (pl.lit(f"{seed}|") + pl.col("episode_id")).map_batches(md5_series, return_dtype=pl.Utf8)
            ids = ids.with_columns(k=key).sort("k").head(max_episodes)
            df = df.filter(pl.col("episode_id").is_in(ids["episode_id"].implode()))
    return df


def md5_series(s: pl.Series) -> pl.Series:
    import hashlib

    return pl.Series([hashlib.md5(v.encode()).hexdigest() for v in s.to_list()], dtype=pl.Utf8)


def val_folds(val: pl.DataFrame, seed: int, n_folds: int = 2) -> pl.Series:
    """Per row of `val`: its episode's fold, int(md5("{seed}|{episode_id}"), 16) % n_folds (cross-fitting)."""
    ids = val.select(pl.col("episode_id").unique())
    key = (pl.lit(f"{seed}|") + pl.col("episode_id")).map_batches(md5_series, return_dtype=pl.Utf8)
    ids = ids.with_columns(fold=key.map_elements(lambda h: int(h, 16) % n_folds, return_dtype=pl.Int64))
    return val.select("episode_id").join(ids, on="episode_id", how="left", maintain_order="left")["fold"]
