"""Reading the synthetic market's ground truth: the truth/ folder and the true choice probabilities.

Plain logic (no dagster import). TRUTH_README describes the truth/ files (generate_market writes it there as
README.txt); load_truth reads them back; true_choice_probs and oracle_hit1 score any episodes' options against
the true utilities (oracle_hit1 is the best hit@1 any method can expect).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

TRUTH_README = """Ground truth of a synthetic MALLES market (never read by the pipeline).

config.json             the SynthConfig that generated the market (seed included).
customers_truth.parquet one row per retail customer: customer_id, segment, price_sensitivity (beta_i, the
                        coefficient of -ln price), discount_sensitivity (delta_i, per unit discount depth),
                        loss_aversion (lambda_i >= 1), brand_loyalty (b_i, utility of a brand bought before in
                        the category), basket_size (k_i, mean extra units), trip_rate (trips per day).
choice_truth.parquet    one row per (retail basket, category, product ON THE SHELF that day): basket_id,
                        category, customer_id, day (0-based), product_id, price, list_price (that day),
                        ref_price (the customer's reference), utility (the deterministic utility V_ij),
                        chosen (bool). The choice is argmax(V + Gumbel): the true probability of any
                        option in any subset S of the shelf is exp(V_j) / sum_{l in S} exp(V_l);
                        a product absent from the shelf that day has probability 0.
product_truth.parquet   product_id, category, brand, quality (the utility intercept incl. size appeal),
                        latent_quality, size_units, regular_price (at the start), price_change_day and
                        new_regular_price (null when none), launch_day (0 = on the shelf from the start),
                        lead_time_weeks (of its manufacturer).
promotions.parquet      product_id, week (0-based), depth (1 - promo price / regular price).
category_truth.parquet  category, department, density ('dense', 'medium', 'sparse'), propensity (p_c),
                        qty_scale (q_c), n_products.
wholesale_truth.parquet one row per (buyer, product, week) decision after the warm-up: customer_id, product_id,
                        week, demand (that week), forecast_demand, stock (inventory position before the
                        order), lead_time_weeks, noise, order_qty (0 = no order line), basket_id (null when 0).
wholesale_rule.json     the ordering rule and its parameters.

Utility: V_ij = quality_j + b_i * bought_brand_before_ij - beta_i * ln(price_j) + delta_i * depth_j
              + eta * (max(0, ln ref - ln price) - lambda_i * max(0, ln price - ln ref)),
ref = the customer's last paid price of j, else j's regular (list) price that day; eta = reference_weight.
Quantity: 1 + Poisson(k_i * q_c * exp(qty_discount_effect * depth)).
"""


def load_truth(out_dir: str | Path) -> dict[str, Any]:
    """The truth files of a generated market: frames by name, plus 'wholesale_rule' and 'config' dicts."""
    t = Path(out_dir) / "truth"
    res: dict[str, Any] = {p.stem: pl.read_parquet(p) for p in sorted(t.glob("*.parquet"))}
    for name in ("wholesale_rule", "config"):
        p = t / f"{name}.json"
        if p.exists():
            res[name] = json.loads(p.read_text(encoding="utf-8"))
    return res


def _with_episode_keys(options: pl.DataFrame) -> pl.DataFrame:
    if "episode_id" in options.columns:
        return options
    if {"basket_id", "category"} <= set(options.columns):
        return options.with_columns((pl.col("basket_id") + "|" + pl.col("category")).alias("episode_id"))
    raise ValueError("episode options need episode_id (basket_id|category) or basket_id and category columns")


def true_choice_probs(choice_truth: pl.DataFrame, episode_options: pl.DataFrame) -> pl.DataFrame:
    """True choice probabilities of each episode's options: the softmax of the true utilities over the options.

    episode_options: one row per (episode, option) with episode_id (= basket_id || '|' || category, as in
    decision_episodes) or basket_id and category, and product_id. Returns episode_id, product_id, utility
    (null where the product was not on the shelf that day), true_prob (0 there), is_top (the option with the
    highest true utility; ties share it: top_weight = 1 / number tied), top_weight. Episodes with no option
    in the truth (e.g. a basket not in the synthetic market) are left out."""
    opts = _with_episode_keys(episode_options).select("episode_id", "product_id").unique()
    truth = choice_truth.select(
        (pl.col("basket_id") + "|" + pl.col("category")).alias("episode_id"), "product_id", "utility"
    )
    j = opts.join(truth, on=["episode_id", "product_id"], how="left")
    j = j.filter(pl.col("utility").is_not_null().any().over("episode_id"))
    m = pl.col("utility").max().over("episode_id")
    e = (pl.col("utility") - m).exp().fill_null(0.0)
    j = j.with_columns(m.alias("_m")).with_columns(
        (e / e.sum().over("episode_id")).alias("true_prob"),
        (pl.col("utility") == pl.col("_m")).fill_null(False).alias("is_top"),
    )
    j = j.with_columns(
        pl.when(pl.col("is_top"))
        .then(1.0 / pl.col("is_top").cast(pl.Int64).sum().over("episode_id"))
        .otherwise(0.0)
        .alias("top_weight")
    )
    return j.drop("_m").sort("episode_id", "product_id")


def oracle_hit1(choice_truth: pl.DataFrame, episode_options: pl.DataFrame) -> float:
    """The Bayes-optimal hit@1 on these choice sets: the mean over episodes of the true probability of the
    option with the highest true utility (the best any method can expect to score)."""
    p = true_choice_probs(choice_truth, episode_options)
    if p.height == 0:
        return float("nan")
    per_ep = p.group_by("episode_id").agg((pl.col("true_prob") * pl.col("top_weight")).sum().alias("h"))
    return float(per_ep["h"].mean())
