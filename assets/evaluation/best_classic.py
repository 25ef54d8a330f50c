"""The bar an LLM method must clear on each split: the best classic baseline, chosen on validation data only.

Rule (decided before any test figure is read):
- each split has a val analogue, the val episodes that meet the split's definition: val for val and test_all,
  val_sparse for test_sparse (val episodes of the sparse categories), val_cold for test_cold (val episodes of
  the cold categories), val_new for test_new (val episodes whose actual product had no purchase before the first
  val day);
- the best classic of a split is the classic choice method with the highest hit@1 on its val analogue (ties:
  the earlier method of CHOICE_METHODS); an analogue with fewer than `min_val_episodes` episodes is too noisy
  to choose on, and all of val is used instead;
- a method fitted on val episodes reports cross-fitted val figures (each val episode scored by a model that did
  not see it; baselines.fit_clogit6), so val hit@1 compares out-of-sample figures only.
The best_classic row of a split carries the chosen method's test figures; the choice itself never reads them
(the row of "val" is the exception that proves it: it is chosen and reported on the same val episodes).
"""

from __future__ import annotations

import polars as pl

# split -> the val split whose hit@1 chooses its best classic method
VAL_ANALOGUE = {
    "val": "val",
    "test_all": "val",
    "test_sparse": "val_sparse",
    "test_cold": "val_cold",
    "test_new": "val_new",
}
VAL_SPLITS = ["val_sparse", "val_cold", "val_new"]  # the analogues besides val itself
BEST_CLASSIC = "best_classic"  # the method name of the rows that carry each split's bar


def val_analogue_membership(episodes: pl.DataFrame) -> pl.DataFrame:
    """episode_id, split for val_sparse, val_cold and val_new (flags missing from `episodes` read as false).

    `episodes` has episode_id, period and some of in_val_sparse, cold_category, in_val_new."""
    flags = {"val_sparse": "in_val_sparse", "val_cold": "cold_category", "val_new": "in_val_new"}
    parts = []
    for split, col in flags.items():
        if col not in episodes.columns:
            continue
        cond = (pl.col("period") == "val") & pl.col(col).fill_null(False)
        parts.append(episodes.filter(cond).select("episode_id", pl.lit(split).alias("split")))
    if not parts:
        return pl.DataFrame(schema={"episode_id": pl.Utf8, "split": pl.Utf8})
    return pl.concat(parts)


def best_classic_by_split(
    metrics: pl.DataFrame,
    methods: list[str] | None = None,
    min_val_episodes: int = 200,
    metric: str = "hit1",
) -> pl.DataFrame:
    """The best classic method of every split of VAL_ANALOGUE, chosen on val figures only.

    metrics: baseline_metrics' rows (method, split, n_episodes, hit1, ...), the val analogue splits included.
    methods: the candidates (default: baselines.CHOICE_METHODS); rows of other methods are ignored.
    Returns split, method, chosen_on (the val split whose figure decided), chosen_on_n, chosen_on_value;
    a split whose val rows hold no candidate figure is left out.
    """
    from assets.evaluation.baselines import CHOICE_METHODS

    methods = list(methods or CHOICE_METHODS)
    rank = {m: i for i, m in enumerate(methods)}
    cand = metrics.filter(
        pl.col("method").is_in(methods) & pl.col(metric).is_not_null() & ~pl.col(metric).is_nan()
    )
    n_of = {
        r["split"]: r["n_episodes"]
        for r in cand.select("split", "n_episodes").unique("split").iter_rows(named=True)
    }
    rows = []
    for split, analogue in VAL_ANALOGUE.items():
        chosen_on = analogue if n_of.get(analogue, 0) >= min_val_episodes else "val"
        part = cand.filter(pl.col("split") == chosen_on)
        if part.height == 0:
            continue
        best = max(part.iter_rows(named=True), key=lambda r: (r[metric], -rank[r["method"]]))
        rows.append(
            {
                "split": split,
                "method": best["method"],
                "chosen_on": chosen_on,
                "chosen_on_n": int(best["n_episodes"]),
                "chosen_on_value": float(best[metric]),
            }
        )
    schema = {
        "split": pl.Utf8,
        "method": pl.Utf8,
        "chosen_on": pl.Utf8,
        "chosen_on_n": pl.Int64,
        "chosen_on_value": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def best_classic_rows(metrics: pl.DataFrame, choice: pl.DataFrame) -> pl.DataFrame:
    """Rows named BEST_CLASSIC: per split of `choice`, a copy of its chosen method's metrics row."""
    picked = metrics.join(choice.select("split", "method"), on=["split", "method"], how="semi")
    return picked.with_columns(method=pl.lit(BEST_CLASSIC)).select(metrics.columns)


__all__ = [
    "BEST_CLASSIC",
    "VAL_ANALOGUE",
    "VAL_SPLITS",
    "best_classic_by_split",
    "best_classic_rows",
    "val_analogue_membership",
]
