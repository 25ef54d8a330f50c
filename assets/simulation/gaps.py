"""The bar an LLM method must clear, read the protocol's way: per split, the paired hit@1 difference between
the method and the split's best classic method (chosen on validation data only, table baseline_best_classic,
assets/evaluation/best_classic.py), on the episodes both scored, with the paired standard error.
No dagster import; eval_report (assets/simulation/__init__.py) writes these rows beside the metrics.

eval_report never chooses the bar itself: the choice on a 2,000-episode report sample would read test figures
(the old "best baseline" line did, and it stays in the report as the upper bar the sample's best classic
reached). The paired se is sd(hit_llm - hit_bar) / sqrt(n), the differences of the same episodes.
"""

from __future__ import annotations

import math

import polars as pl

from assets.evaluation.baselines import SPLITS
from assets.evaluation.metrics import per_episode_hits
from resources.sql import load_sql
from resources.warehouse import table_exists

HITS_SCHEMA = {"method": pl.Utf8, "split": pl.Utf8, "episode_id": pl.Utf8, "hit1": pl.Float64}
GAPS_SCHEMA = {
    "method": pl.Utf8,  # the LLM method or calibrated hybrid
    "split": pl.Utf8,
    "bar_method": pl.Utf8,  # the split's best classic method (baseline_best_classic)
    "chosen_on": pl.Utf8,  # the val split whose hit@1 chose it
    "n_episodes": pl.Int64,  # episodes both scored
    "hit1": pl.Float64,
    "bar_hit1": pl.Float64,
    "diff": pl.Float64,  # hit1 - bar_hit1
    "se": pl.Float64,  # paired standard error of diff
}


def load_best_classic(conn) -> pl.DataFrame:
    """baseline_best_classic (split, method, chosen_on, ...); empty when baseline_report has not written it."""
    if not table_exists(conn, "baseline_best_classic"):
        return pl.DataFrame(schema={"split": pl.Utf8, "method": pl.Utf8, "chosen_on": pl.Utf8})
    return conn.sql(load_sql("simulation/select_best_classic")).pl()


def episode_hits(
    frame: pl.DataFrame, score_col: str, options: pl.DataFrame, members: pl.DataFrame
) -> pl.DataFrame:
    """method, split, episode_id, hit1 of every method of `frame` (its `score_col` scores the options) on the
    episodes of `members` (episode_id, split), ties and unscored options read as evaluation/metrics.py does."""
    keep = options.join(members.select("episode_id").unique(), on="episode_id", how="semi")
    parts = []
    for method in sorted(frame["method"].unique().to_list()):
        mine = frame.filter(pl.col("method") == method).select(
            "episode_id", "product_id", pl.col(score_col).alias("score")
        )
        scored = mine["episode_id"].unique()
        long = keep.filter(pl.col("episode_id").is_in(scored.implode())).join(
            mine, on=["episode_id", "product_id"], how="left"
        )
        hits = per_episode_hits(long, (1,))
        parts.append(
            members.join(hits, on="episode_id", how="inner").select(
                pl.lit(method).alias("method"), "split", "episode_id", pl.col("hit1").cast(pl.Float64)
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=HITS_SCHEMA)


def paired_gaps(llm_hits: pl.DataFrame, base_hits: pl.DataFrame, choice: pl.DataFrame) -> pl.DataFrame:
    """Per LLM method and split of `choice`: the paired hit@1 difference against the chosen baseline on the
    episodes both scored (GAPS_SCHEMA). A split whose bar method has no predictions here is left out."""
    rows = []
    for c in choice.iter_rows(named=True):
        bar = base_hits.filter((pl.col("method") == c["method"]) & (pl.col("split") == c["split"]))
        if bar.height == 0:
            continue
        bar = bar.select("episode_id", bar_hit1="hit1")
        for method in sorted(llm_hits["method"].unique().to_list()):
            mine = llm_hits.filter((pl.col("method") == method) & (pl.col("split") == c["split"]))
            both = mine.join(bar, on="episode_id", how="inner")
            n = both.height
            if n == 0:
                continue
            d = both["hit1"] - both["bar_hit1"]
            sd = float(d.std(ddof=1)) if n > 1 else math.nan
            rows.append(
                {
                    "method": method,
                    "split": c["split"],
                    "bar_method": c["method"],
                    "chosen_on": c.get("chosen_on"),
                    "n_episodes": n,
                    "hit1": float(both["hit1"].mean()),
                    "bar_hit1": float(both["bar_hit1"].mean()),
                    "diff": float(d.mean()),
                    "se": sd / math.sqrt(n),
                }
            )
    out = pl.DataFrame(rows, schema=GAPS_SCHEMA)
    order = {s: i for i, s in enumerate(SPLITS)}
    return (
        out.with_columns(_o=pl.col("split").replace_strict(order, default=len(SPLITS)))
        .sort("method", "_o")
        .drop("_o")
    )


def gap_table(gaps: pl.DataFrame) -> list[str]:
    """Markdown lines: one table of every method's paired difference against each split's best classic."""
    title = (
        "**LLM - best classic (chosen on validation: baseline_best_classic), paired on the same episodes**"
    )
    if gaps.height == 0:
        return [title, "", "(no baseline_best_classic rows on these episodes: materialize baseline_report)"]
    out = [
        title,
        "",
        "| method | split | n | hit@1 | best classic (chosen on) | its hit@1 | diff (paired se) |",
    ]
    out.append("|---|---|---|---|---|---|---|")
    for r in gaps.iter_rows(named=True):
        se = "n/a" if math.isnan(r["se"]) else f"{r['se']:.4f}"
        out.append(
            f"| {r['method']} | {r['split']} | {r['n_episodes']} | {r['hit1']:.4f} | {r['bar_method']} "
            f"({r['chosen_on']}) | {r['bar_hit1']:.4f} | {r['diff']:+.4f} ({se}) |"
        )
    return out
