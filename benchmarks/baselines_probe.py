"""Probe: why does the project's conditional logit lose hit@1 on test_new, and which variant is honest and strong?

    MALLES_DATA_DIR=/work/cjfull/data python benchmarks/baselines_probe.py --warehouse /work/cjfull/data/malles.duckdb

Reads the baseline option frames of a built warehouse (read-only; the features and splits stages must have run),
then fits conditional logits that differ in one thing at a time:
- features: the 14 MODEL_FEATURES of assets/evaluation/options.py, the six of SIX_FEATURES, and each set without is_new;
- fit sample: the train episodes with use_for_fit (what clogit uses: cold categories cut to 20 episodes) or
  the validation episodes. A val-fitted model's val figure is cross-fitted (2 folds by md5 of the episode),
  so it is out of sample like every test figure.
Prints per variant its coefficients and hit@1 / nll per split with N, a description of test_new (what the
actual option looks like next to the other nine), and writes the same as markdown (--out).
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from assets.evaluation.baselines import (
    MODEL_FEATURES,
    SIX_FEATURES,
    SPLITS,
    ensure_sample_key,
    episode_layout,
    features_matrix,
    fit_clogit_on,
    split_membership,
    val_folds,
)
from assets.evaluation.best_classic import VAL_SPLITS, val_analogue_membership
from assets.evaluation.clogit import group_softmax
from assets.evaluation.logic import load_eval_frame
from assets.evaluation.metrics import evaluate_splits
from resources.sql import load_sql


def score(df: pl.DataFrame, feats: dict, coef: np.ndarray) -> pl.DataFrame:
    u = features_matrix(df, feats) @ coef
    offsets, _, _ = episode_layout(df)
    return df.with_columns(score=pl.Series(u), prob=pl.Series(group_softmax(u, offsets)))


def describe_new(evalf: pl.DataFrame, members: pl.DataFrame) -> pl.DataFrame:
    """On test_new and val: the mean of a few features for the actual option and for the other options."""
    rows = []
    for split in ("val", "test_all", "test_new"):
        ids = members.filter(pl.col("split") == split).select("episode_id")
        part = evalf.join(ids, on="episode_id", how="semi")
        stats = part.group_by("is_chosen").agg(
            n=pl.len(),
            is_new=pl.col("is_new").cast(pl.Float64).fill_null(0).mean(),
            bought_before=(pl.col("cust_product_purchases").fill_null(0) > 0).mean(),
            brand_before=(pl.col("cust_brand_purchases").fill_null(0) > 0).mean(),
            log_pop_28d=pl.col("pop_28d").cast(pl.Float64).fill_null(0).log1p().mean(),
            log_pop_total=pl.col("pop_total").cast(pl.Float64).fill_null(0).log1p().mean(),
            discount_depth=pl.col("discount_depth").fill_null(0).mean(),
            log_price=pl.col("log_price").fill_null(0).mean(),
        )
        rows.append(stats.with_columns(split=pl.lit(split)))
    return pl.concat(rows).sort("split", "is_chosen")


def describe_history(samples: dict[str, pl.DataFrame], evalf: pl.DataFrame) -> pl.DataFrame:
    """Per fit sample (and test): how much history its options have (left-censoring of the features)."""
    frames = {**samples, "test": evalf.filter(pl.col("period") == "test")}
    rows = []
    for name, df in frames.items():
        rows.append(
            df.select(
                pl.lit(name).alias("sample"),
                is_new_all=pl.col("is_new").cast(pl.Float64).fill_null(0).mean(),
                is_new_chosen=pl.col("is_new")
                .cast(pl.Float64)
                .fill_null(0)
                .filter(pl.col("is_chosen"))
                .mean(),
                log_pop_total=pl.col("pop_total").cast(pl.Float64).fill_null(0).log1p().mean(),
                bought_before_chosen=(pl.col("cust_product_purchases").fill_null(0) > 0)
                .filter(pl.col("is_chosen"))
                .mean(),
            )
        )
    return pl.concat(rows)


def utility_gaps(evalf, members, coef_rows, variants: list[str]) -> pl.DataFrame:
    """Per variant, split (val_new, test_new, test_all) and feature: coef x (mean over the actual options -
    mean over the other options), the feature's push on the actual option; the `total` row sums them."""
    coefs = pl.DataFrame(coef_rows)
    feats_all = {**MODEL_FEATURES}
    out = []
    for split in ("test_all", "val_new", "test_new"):
        part = evalf.join(members.filter(pl.col("split") == split), on="episode_id", how="semi")
        X = features_matrix(part, feats_all)
        ch = part["is_chosen"].fill_null(False).to_numpy()
        diff = dict(zip(feats_all, X[ch].mean(axis=0) - X[~ch].mean(axis=0), strict=True))
        for v in variants:
            c = coefs.filter(pl.col("variant") == v)
            row = {"variant": v, "split": split}
            for f, b in zip(c["feature"], c["coef"], strict=True):
                row[f] = float(b * diff[f])
            row["total"] = sum(row[f] for f in c["feature"])
            out.append(row)
    return pl.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", default="data/malles.duckdb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write the figures as markdown here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    conn = duckdb.connect(args.warehouse, read_only=True)
    evalf = ensure_sample_key(load_eval_frame(conn, args.seed), args.seed).sort("episode_id", "position")
    train = conn.sql(load_sql("evaluation/select_probe_train_options")).pl().sort("episode_id", "position")
    conn.close()
    flags = ["cold_category", "in_val_sparse", "in_val_new"]
    episodes = evalf.group_by("episode_id").agg(
        pl.col("period", "in_test_sparse", "in_test_cold", "in_test_new", "sample_key", *flags).first()
    )
    members = pl.concat([split_membership(episodes), val_analogue_membership(episodes)])
    splits = SPLITS + VAL_SPLITS
    val = evalf.filter(pl.col("period") == "val")
    last_train_day = train["day"].max()
    samples = {
        # what clogit fits on: train with use_for_fit (cold categories keep their 20 earliest episodes)
        "train": train.filter(pl.col("use_for_fit")),
        # every train episode: is the cold cut the cause?
        "train_uncut": train,
        # the last 28 days of train (val's length), use_for_fit: is it the history depth / the time?
        "train_last28": train.filter(
            pl.col("use_for_fit") & (pl.col("day") > last_train_day - timedelta(days=28))
        ),
        # val outside the cold categories (what clogit6 fits on: test_cold's categories stay unseen)
        "val": val.filter(~pl.col("cold_category").fill_null(False)),
    }
    print(
        f"loaded in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{k} {v['episode_id'].n_unique()} episodes" for k, v in samples.items())
    )

    feature_sets = {
        "model14": dict(MODEL_FEATURES),
        "model14_no_is_new": {k: v for k, v in MODEL_FEATURES.items() if k != "is_new"},
        "model14_no_pop_total": {k: v for k, v in MODEL_FEATURES.items() if k != "log_pop_total"},
        "six": dict(SIX_FEATURES),
        "six_no_is_new": {k: v for k, v in SIX_FEATURES.items() if k != "is_new"},
    }
    variants = [
        ("model14", "train"),
        ("model14", "train_uncut"),
        ("model14", "train_last28"),
        ("model14", "val"),
        ("model14_no_is_new", "train"),
        ("model14_no_is_new", "val"),
        ("model14_no_pop_total", "train"),
        ("model14_no_pop_total", "val"),
        ("six", "train"),
        ("six", "train_uncut"),
        ("six", "train_last28"),
        ("six", "val"),
        ("six_no_is_new", "train"),
        ("six_no_is_new", "val"),
    ]
    val_fit = samples["val"]
    fit_folds = val_folds(val_fit, args.seed)
    folds = val_folds(val, args.seed)
    metric_rows, coef_rows = [], []
    for fs_name, sample in variants:
        feats = feature_sets[fs_name]
        name = f"{fs_name}@{sample}"
        t = time.perf_counter()
        res = fit_clogit_on(samples[sample], feats)
        scored = score(evalf, feats, res.coef)
        if sample == "val":  # val figures out of sample: each fold scored by the model fit on the other
            parts = []
            for f in (0, 1):
                other = fit_clogit_on(val_fit.filter(fit_folds != f), feats)
                parts.append(score(val.filter(folds == f), feats, other.coef))
            cross = pl.concat(parts).sort("episode_id", "position")
            scored = pl.concat([cross, scored.filter(pl.col("period") != "val")]).sort(
                "episode_id", "position"
            )
        for r in evaluate_splits(scored, None, members, splits):
            metric_rows.append({"variant": name, **{k: r[k] for k in ("split", "n_episodes", "hit1", "nll")}})
        for row in res.to_rows():
            coef_rows.append({"variant": name, "n_fit": res.n_groups, **row})
        h = {r["split"]: r["hit1"] for r in metric_rows if r["variant"] == name}
        print(
            f"{name:30s} fit on {res.n_groups:7d} episodes ({time.perf_counter() - t:.0f} s): "
            + " ".join(f"{s}={h[s]:.4f}" for s in splits),
            flush=True,
        )
    n_fit = pl.DataFrame(
        [
            {
                "variant": f"{a}@{b}",
                "n_fit_episodes": next(r["n_fit"] for r in coef_rows if r["variant"] == f"{a}@{b}"),
            }
            for a, b in variants
        ]
    )
    history = describe_history(samples, evalf)
    gaps = utility_gaps(evalf, members, coef_rows, ["model14@train", "model14@val", "six@train", "six@val"])
    metrics = pl.DataFrame(metric_rows)
    coefs = pl.DataFrame(coef_rows)
    hit = metrics.pivot(on="split", index="variant", values="hit1")
    nll = metrics.pivot(on="split", index="variant", values="nll")
    n = metrics.filter(pl.col("variant") == metrics["variant"][0]).select("split", "n_episodes")
    coef_wide = coefs.filter(
        pl.col("variant").is_in(
            [
                "model14@train",
                "model14@train_uncut",
                "model14@train_last28",
                "model14@val",
                "model14_no_pop_total@train",
                "six@train",
                "six@train_last28",
                "six@val",
            ]
        )
    ).pivot(on="variant", index="feature", values="coef")
    desc = describe_new(evalf, members)
    with pl.Config(tbl_rows=100, tbl_cols=20, float_precision=4, tbl_width_chars=200):
        print(n, n_fit, hit, nll, coef_wide, desc, history, gaps, sep="\n")
    if args.out:
        md = [
            "## N per split",
            _md(n),
            "## fit episodes",
            _md(n_fit),
            "## hit@1",
            _md(hit),
            "## nll",
            _md(nll),
            "## coefficients (original scale)",
            _md(coef_wide),
            "## the actual option (is_chosen) next to the others",
            _md(desc),
            "## history depth of each fit sample",
            _md(history),
            "## utility gap of the actual option to the mean of the others, per feature (coef x mean difference)",
            _md(gaps),
        ]
        Path(args.out).write_text("\n\n".join(md) + "\n", encoding="utf-8")
    print(f"total {time.perf_counter() - t0:.0f} s")


def _md(df: pl.DataFrame) -> str:
    def cell(v):
        return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
