"""A synthetic market with KNOWN ground truth, written in the canonical format of docs/evaluation-protocol.md.

Plain logic (no dagster import). `generate_market(out_dir, SynthConfig())` writes

    out_dir/transactions.parquet   canonical lines (retail and wholesale channels)
    out_dir/products.parquet       product_id, category, brand, department, description + attributes
    out_dir/customers.parquet      customer_id, segment + demographics
    out_dir/truth/                 the ground truth, never read by the pipeline (see TRUTH_README)

The model (every number is a knob of SynthConfig):
- customers i in a few segments; each draws style parameters rho_i (price sensitivity beta_i > 0, discount
  sensitivity delta_i, loss aversion lambda_i >= 1, brand loyalty b_i, basket-size propensity k_i), the
  segment shifting their means;
- products j with brand, size, latent quality and a regular price (rising with quality and size), a weekly
  promotion calendar (random promotion weeks with a depth), a few regular-price changes and a few launches;
- each day a customer shops with probability r_i; on a trip it visits category c with probability
  min(0.9, p_c * m_ic): a few dense categories, several medium ones, many sparse ones (< 100 episodes in
  train by default);
- in a visited category the customer buys ONE product, chosen by a reference-dependent mixed logit:
      V_ij = quality_j + b_i * [bought brand(j) in this category before]
             - beta_i * ln(price_j) + delta_i * discount_depth_j
             + eta * (gain_ij - lambda_i * loss_ij)
      gain = max(0, ln ref_ij - ln price_j), loss = max(0, ln price_j - ln ref_ij),
      ref_ij = the customer's last paid price of j, else j's regular price that day;
  choice = argmax_j (V_ij + Gumbel noise), so P(j | any subset S) = softmax over S of V (IIA given rho_i);
- quantity = 1 + Poisson(k_i * q_c * exp(qty_discount_effect * discount_depth));
- wholesale: buyers W.. order weekly from manufacturers by an order-up-to rule
      order_qty = max(0, round(forecast * (lead_time + review_weeks) * (1 + safety_factor) - stock + noise))
  (forecast = mean of the buyer's demand over the previous weeks, stock = inventory position).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "SynthConfig",
    "SynthSummary",
    "generate_market",
    "main_synth",
    "load_truth",
    "true_choice_probs",
    "oracle_hit1",
    "wholesale_order_qty",
    "SEGMENTS",
    "TRUTH_README",
]


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the synthetic market; the defaults generate in a few seconds."""

    seed: int = 0  # one seed drives everything: same seed, same files
    # --- size
    n_customers: int = 300  # retail households
    n_days: int = 364  # length of the history (52 weeks: test = last 8, validation = the 4 before)
    start_date: str = "2025-01-06"  # first day (a Monday, so promotion weeks are calendar weeks)
    trip_rate: float = 0.17  # mean shopping trips per customer per day (heterogeneous across customers)
    # --- categories of very different density
    n_dense_categories: int = 4  # a few categories bought on most trips
    n_medium_categories: int = 8  # categories with hundreds of episodes
    n_sparse_categories: int = 13  # categories with < 100 train episodes (test_sparse)
    dense_propensity_min: float = 0.20  # per-trip visit probability of a dense category ...
    dense_propensity_max: float = 0.40  # ... drawn uniformly in [min, max]
    medium_propensity_min: float = 0.02
    medium_propensity_max: float = 0.06
    sparse_propensity_min: float = 0.0015  # about 20..70 train episodes with the default sizes
    sparse_propensity_max: float = 0.005
    propensity_shape: float = 2.0  # gamma shape of the customer x category propensity multiplier (mean 1)
    # --- products
    products_dense_min: int = 10  # shelf size of a dense category, drawn in [min, max]
    products_dense_max: int = 16
    products_medium_min: int = 8
    products_medium_max: int = 12
    products_sparse_min: int = 5
    products_sparse_max: int = 10
    quality_sd: float = 1.0  # sd of latent product quality (the utility intercept before size appeal)
    brand_equity_sd: float = 0.4  # sd of a brand's shift of its products' quality
    price_quality_slope: float = 0.35  # ln regular price per unit of quality (better costs more)
    price_noise_sd: float = 0.12  # sd of ln regular price not explained by quality and size
    size_price_elasticity: float = 0.8  # ln price per ln pack size (bigger packs are cheaper per unit)
    size_appeal: float = 1.1  # utility per ln pack size (so that size roughly offsets its price)
    new_product_share: float = 0.06  # share of products launched during the year (test_new)
    price_change_prob: float = 0.15  # share of products whose regular price changes once during the year
    price_change_sd: float = 0.12  # sd of ln of that regular-price change
    # --- promotions
    promo_prob: float = 0.08  # probability that a product is on promotion in a given week
    promo_depth_min: float = 0.10  # promotion depth (1 - price / regular price) drawn in [min, max]
    promo_depth_max: float = 0.35
    promo_weeks_min: int = 2  # a promotion lasts this many weeks ...
    promo_weeks_max: int = 4  # ... at most (uniform in [min, max])
    # --- customers (segment means are in SEGMENTS; these are the within-segment spreads)
    price_sensitivity_logsd: float = 0.12  # sd of ln beta_i within a segment
    discount_sensitivity_logsd: float = 0.15  # sd of ln delta_i within a segment
    loss_aversion_logsd: float = 0.20  # sd of ln(lambda_i - 1) within a segment
    brand_loyalty_logsd: float = 0.15  # sd of ln b_i within a segment
    basket_size_logsd: float = 0.30  # sd of ln k_i within a segment
    reference_weight: float = 0.6  # eta: utility per unit ln-price gain against the reference price
    qty_discount_effect: float = 1.5  # ln extra units per unit discount depth (stock-up on promotions)
    split_line_prob: float = 0.03  # share of multi-unit purchases written as two lines (tests merging)
    # --- wholesale channel
    n_wholesale_buyers: int = 4  # distributors ordering weekly from manufacturers
    wholesale_category_share: float = 0.5  # share of dense+medium categories each buyer stocks
    wholesale_demand_scale_min: float = 5.0  # buyer demand = Poisson(scale * (retail units + 0.5)) ...
    wholesale_demand_scale_max: float = 15.0  # ... scale drawn in [min, max] per buyer
    forecast_weeks: int = 4  # forecast = mean demand of this many previous weeks (also the warm-up)
    review_weeks: int = 1  # R: weeks between orders
    safety_factor: float = 0.2  # order-up-to level = forecast * (L + R) * (1 + safety_factor)
    order_noise_rel: float = 0.1  # order noise ~ Normal(0, order_noise_rel * forecast)
    wholesale_price_ratio: float = 0.6  # wholesale list price = ratio * retail regular price
    volume_discount: float = 0.05  # price cut for order lines of at least volume_threshold units
    volume_threshold: int = 100  # units


@dataclass
class SynthSummary:
    """What generate_market wrote."""

    out_dir: str
    seed: int
    n_customers: int
    n_wholesale_buyers: int
    n_products: int
    n_categories: int
    n_days: int
    n_baskets: int
    n_retail_lines: int
    n_wholesale_lines: int
    n_episodes: int  # retail (basket, category) decisions
    dense_categories: list[str]
    sparse_categories: list[str]
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


# Tuned so that the protocol can see the signal (measured through the project's ingest and features with 800
# customers, seeds 0-3): a conditional logit on popularity / history / brand (with a bought-this-brand-before
# indicator) / price / discount features reaches 0.92-0.95 of the oracle hit@1, and a per-customer price
# coefficient ranks beta_i with Spearman ~0.8. What the pooled logit loses, in about equal parts: per-customer
# coefficients it cannot see, the protocol's +-14-day mean prices instead of the day's price (hence promotions
# of 2-4 weeks), and quality known only through popularity (hence 10-16 products in a dense category).
# Wider beta spreads, one-week promotions, deeper discounts or longer shelves lower the ratio.
# Segment shares and the means of rho_i (beta: price sensitivity, delta: discount sensitivity, lambda: loss
# aversion, b: brand loyalty, k: basket-size propensity) plus demographic tendencies.
SEGMENTS: dict[str, dict[str, float]] = {
    "budget": dict(share=0.35, beta=1.7, delta=1.9, lam=2.6, b=2.4, k=0.9, trip=1.1, income=0.0),
    "mainstream": dict(share=0.40, beta=1.3, delta=1.6, lam=2.0, b=2.5, k=0.6, trip=1.0, income=1.0),
    "premium": dict(share=0.25, beta=0.9, delta=1.3, lam=1.6, b=2.7, k=0.45, trip=0.9, income=2.0),
}

_CATEGORY_NAMES = [
    # (category, department)
    ("MILK", "DAIRY"),
    ("BREAD", "BAKERY"),
    ("SOFT DRINKS", "BEVERAGES"),
    ("CHEESE", "DAIRY"),
    ("YOGURT", "DAIRY"),
    ("COFFEE", "BEVERAGES"),
    ("CEREAL", "PANTRY"),
    ("PASTA", "PANTRY"),
    ("FROZEN PIZZA", "FROZEN"),
    ("LAUNDRY DETERGENT", "HOUSEHOLD"),
    ("TOILET PAPER", "HOUSEHOLD"),
    ("SHAMPOO", "PERSONAL CARE"),
    ("TEA", "BEVERAGES"),
    ("ICE CREAM", "FROZEN"),
    ("OLIVE OIL", "PANTRY"),
    ("CANNED SOUP", "PANTRY"),
    ("COOKIES", "BAKERY"),
    ("TOOTHPASTE", "PERSONAL CARE"),
    ("DISH SOAP", "HOUSEHOLD"),
    ("RICE", "PANTRY"),
    ("HONEY", "PANTRY"),
    ("SPICES", "PANTRY"),
    ("BATTERIES", "HOUSEHOLD"),
    ("PET FOOD", "PET"),
    ("BABY WIPES", "BABY"),
    ("SUNSCREEN", "PERSONAL CARE"),
    ("CANDLES", "HOUSEHOLD"),
    ("MUSTARD", "PANTRY"),
    ("JAM", "PANTRY"),
    ("VINEGAR", "PANTRY"),
]
_BRANDS = [
    "Northfield",
    "Alpine Valley",
    "Bluebird",
    "Crestline",
    "Golden Acre",
    "Harbor",
    "Juniper",
    "Kestrel",
    "Meadowbrook",
    "Oakridge",
    "Pioneer",
    "Riverside",
    "Silverleaf",
    "Summit",
    "Willow",
]
_PRIVATE_LABEL = "StoreBrand"
_SIZES = [("small", 1.0), ("medium", 2.0), ("large", 4.0)]  # pack sizes (units of the category's base pack)
_TIERS = ["value", "standard", "premium"]

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


# --------------------------------------------------------------------------- helpers


def _lognormal(rng: np.random.Generator, mean: np.ndarray, logsd: float) -> np.ndarray:
    """Draws whose MEDIAN is `mean` (ln x ~ Normal(ln mean, logsd))."""
    return np.exp(np.log(mean) + rng.normal(0.0, logsd, np.shape(mean)))


def wholesale_order_qty(
    forecast: np.ndarray,
    stock: np.ndarray,
    lead_time_weeks: np.ndarray,
    noise: np.ndarray,
    review_weeks: float,
    safety_factor: float,
) -> np.ndarray:
    """The wholesale ordering rule: max(0, round(forecast * (L + R) * (1 + safety) - stock + noise))."""
    target = (
        np.asarray(forecast, float)
        * (np.asarray(lead_time_weeks, float) + review_weeks)
        * (1 + safety_factor)
    )
    return np.maximum(0, np.round(target - np.asarray(stock, float) + np.asarray(noise, float))).astype(
        np.int64
    )


# --------------------------------------------------------------------------- the world


def _categories(cfg: SynthConfig, rng: np.random.Generator) -> pl.DataFrame:
    n = cfg.n_dense_categories + cfg.n_medium_categories + cfg.n_sparse_categories
    names = [c for c, _ in _CATEGORY_NAMES]
    depts = [d for _, d in _CATEGORY_NAMES]
    if n > len(names):  # more categories than names: number the extra ones
        extra = n - len(names)
        names += [f"CATEGORY {i + 1:03d}" for i in range(extra)]
        depts += ["GENERAL"] * extra
    density = (
        ["dense"] * cfg.n_dense_categories
        + ["medium"] * cfg.n_medium_categories
        + ["sparse"] * cfg.n_sparse_categories
    )
    bounds = {
        "dense": (cfg.dense_propensity_min, cfg.dense_propensity_max),
        "medium": (cfg.medium_propensity_min, cfg.medium_propensity_max),
        "sparse": (cfg.sparse_propensity_min, cfg.sparse_propensity_max),
    }
    sizes = {
        "dense": (cfg.products_dense_min, cfg.products_dense_max),
        "medium": (cfg.products_medium_min, cfg.products_medium_max),
        "sparse": (cfg.products_sparse_min, cfg.products_sparse_max),
    }
    prop = np.array([rng.uniform(*bounds[d]) for d in density])
    n_prod = np.array([int(rng.integers(sizes[d][0], sizes[d][1] + 1)) for d in density])
    qty_scale = rng.uniform(0.5, 1.5, n)
    base_price = np.exp(rng.uniform(np.log(1.0), np.log(8.0), n))
    return pl.DataFrame(
        {
            "category": names[:n],
            "department": depts[:n],
            "density": density,
            "propensity": prop,
            "qty_scale": qty_scale,
            "base_price": base_price,
            "n_products": n_prod,
        }
    )


def _products(cfg: SynthConfig, cats: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    brand_equity = dict(zip(_BRANDS, rng.normal(0.0, cfg.brand_equity_sd, len(_BRANDS)), strict=True))
    brand_equity[_PRIVATE_LABEL] = -0.5
    lead_time = dict(zip(_BRANDS, rng.integers(1, 4, len(_BRANDS)).tolist(), strict=True))
    lead_time[_PRIVATE_LABEL] = 1
    rows: list[dict[str, Any]] = []
    pid = 0
    for c in cats.iter_rows(named=True):
        n = c["n_products"]
        n_brands = int(min(len(_BRANDS), max(2, round(n / 4))))
        brands = list(rng.choice(_BRANDS, n_brands, replace=False)) + [_PRIVATE_LABEL]
        for k in range(n):
            brand = brands[k % len(brands)] if k < len(brands) else brands[int(rng.integers(len(brands)))]
            size_name, size_units = _SIZES[int(rng.integers(len(_SIZES)))]
            latent = rng.normal(0.0, cfg.quality_sd) + brand_equity[brand]
            ln_price = (
                np.log(c["base_price"])
                + cfg.price_quality_slope * latent
                + cfg.size_price_elasticity * np.log(size_units)
                + rng.normal(0.0, cfg.price_noise_sd)
            )
            if brand == _PRIVATE_LABEL:
                ln_price -= 0.25
            observed = latent + rng.normal(0.0, 0.5)  # the tier shown on the label is a noisy signal
            tier = _TIERS[0] if observed < -0.5 else (_TIERS[2] if observed > 0.5 else _TIERS[1])
            pid += 1
            rows.append(
                {
                    "product_id": f"P{pid:05d}",
                    "category": c["category"],
                    "department": c["department"],
                    "brand": brand,
                    "manufacturer": brand if brand != _PRIVATE_LABEL else "Store Own Label",
                    "size": size_name,
                    "size_units": size_units,
                    "quality_tier": tier,
                    "latent_quality": float(latent),
                    "quality": float(latent + cfg.size_appeal * np.log(size_units)),
                    "regular_price": float(round(np.exp(ln_price), 2)),
                    "lead_time_weeks": int(lead_time[brand]),
                }
            )
    prods = pl.DataFrame(rows)
    n = prods.height
    # launches: a few products appear during the second half of the year (never all of a category)
    launch = np.zeros(n, dtype=np.int64)
    is_new = rng.random(n) < cfg.new_product_share
    launch[is_new] = rng.integers(cfg.n_days // 2, max(cfg.n_days // 2 + 1, cfg.n_days - 28), is_new.sum())
    # regular-price changes
    change = rng.random(n) < cfg.price_change_prob
    change_day = np.where(change, rng.integers(30, max(31, cfg.n_days - 30), n), -1)
    new_price = np.round(prods["regular_price"].to_numpy() * np.exp(rng.normal(0, cfg.price_change_sd, n)), 2)
    prods = prods.with_columns(
        pl.Series("launch_day", launch),
        pl.Series("price_change_day", change_day).replace(-1, None),
        pl.Series("new_regular_price", np.where(change, new_price, np.nan)).fill_nan(None),
    )
    desc = [
        f"{r['brand']} {r['category'].lower()}, {r['size']} pack ({r['quality_tier']} range)"
        for r in prods.iter_rows(named=True)
    ]
    return prods.with_columns(pl.Series("description", desc))


def _customers(cfg: SynthConfig, rng: np.random.Generator) -> pl.DataFrame:
    seg_names = list(SEGMENTS)
    shares = np.array([SEGMENTS[s]["share"] for s in seg_names])
    seg_idx = rng.choice(len(seg_names), cfg.n_customers, p=shares / shares.sum())
    p = {
        k: np.array([SEGMENTS[seg_names[s]][k] for s in seg_idx]) for k in ("beta", "delta", "lam", "b", "k")
    }
    trip = np.array([SEGMENTS[seg_names[s]]["trip"] for s in seg_idx])
    income = np.array([SEGMENTS[seg_names[s]]["income"] for s in seg_idx])
    beta = _lognormal(rng, p["beta"], cfg.price_sensitivity_logsd)
    delta = _lognormal(rng, p["delta"], cfg.discount_sensitivity_logsd)
    lam = 1.0 + _lognormal(rng, p["lam"] - 1.0, cfg.loss_aversion_logsd)
    bl = _lognormal(rng, p["b"], cfg.brand_loyalty_logsd)
    k = _lognormal(rng, p["k"], cfg.basket_size_logsd)
    rate = np.clip(cfg.trip_rate * trip * rng.gamma(4.0, 0.25, cfg.n_customers), 0.02, 0.9)
    income_band = np.clip(np.round(income + rng.normal(0, 0.7, cfg.n_customers)), 0, 2).astype(int)
    ages = rng.choice(["19-34", "35-44", "45-54", "55-64", "65+"], cfg.n_customers)
    hh = np.clip(np.round(1 + 3 * k + rng.normal(0, 0.8, cfg.n_customers)), 1, 6).astype(int)
    return pl.DataFrame(
        {
            "customer_id": [f"C{i + 1:04d}" for i in range(cfg.n_customers)],
            "segment": [seg_names[s] for s in seg_idx],
            "age_band": ages,
            "household_size": hh,
            "income_band": np.array(["low", "middle", "high"])[income_band],
            "price_sensitivity": beta,
            "discount_sensitivity": delta,
            "loss_aversion": lam,
            "brand_loyalty": bl,
            "basket_size": k,
            "trip_rate": rate,
        }
    )


def _price_calendar(cfg: SynthConfig, prods: pl.DataFrame, rng: np.random.Generator):
    """(list_price[day, product], depth[day, product], promotions frame)."""
    n_weeks = (cfg.n_days + 6) // 7
    n = prods.height
    # promotion events: a product off promotion starts one with probability p_start in a week; it lasts
    # L weeks (uniform in [min, max]) at one depth. p_start is set so that a share promo_prob of weeks is on.
    mean_len = (cfg.promo_weeks_min + cfg.promo_weeks_max) / 2
    p_start = min(1.0, cfg.promo_prob / max(1e-9, mean_len * (1 - cfg.promo_prob)))
    depth_w = np.zeros((n_weeks, n))
    start = rng.random((n_weeks, n)) < p_start
    length = rng.integers(cfg.promo_weeks_min, cfg.promo_weeks_max + 1, (n_weeks, n))
    depth_draw = np.round(rng.uniform(cfg.promo_depth_min, cfg.promo_depth_max, (n_weeks, n)), 2)
    left = np.zeros(n, dtype=np.int64)
    cur = np.zeros(n)
    for w in range(n_weeks):
        new = (left == 0) & start[w]
        left = np.where(new, length[w], left)
        cur = np.where(new, depth_draw[w], cur)
        depth_w[w] = np.where(left > 0, cur, 0.0)
        left = np.maximum(0, left - 1)
    on_promo = depth_w > 0
    days = np.arange(cfg.n_days)
    depth = depth_w[days // 7]
    reg = np.broadcast_to(prods["regular_price"].to_numpy(), (cfg.n_days, n)).copy()
    ch_day = prods["price_change_day"].fill_null(-1).to_numpy()
    new_p = prods["new_regular_price"].fill_null(0.0).to_numpy()
    for j in np.flatnonzero(ch_day >= 0):
        reg[ch_day[j] :, j] = new_p[j]
    w, j = np.nonzero(on_promo)
    promos = pl.DataFrame(
        {
            "product_id": prods["product_id"].to_numpy()[j],
            "week": w.astype(np.int64),
            "depth": depth_w[w, j],
        }
    ).sort("product_id", "week")
    return reg, depth, promos


# --------------------------------------------------------------------------- retail simulation


def _simulate_retail(cfg, cats, prods, custs, reg, depth, rng, progress):
    n_c, n_p, n_cat = custs.height, prods.height, cats.height
    cat_of = prods["category"].to_numpy()
    cat_index = {c: i for i, c in enumerate(cats["category"].to_list())}
    prod_cat = np.array([cat_index[c] for c in cat_of])
    brands = sorted(set(prods["brand"].to_list()))
    brand_idx = np.array([brands.index(b) for b in prods["brand"].to_list()])
    quality = prods["quality"].to_numpy()
    launch = prods["launch_day"].to_numpy()
    cat_products = [np.flatnonzero(prod_cat == c) for c in range(n_cat)]
    qty_scale = cats["qty_scale"].to_numpy()

    beta = custs["price_sensitivity"].to_numpy()
    delta = custs["discount_sensitivity"].to_numpy()
    lam = custs["loss_aversion"].to_numpy()
    bl = custs["brand_loyalty"].to_numpy()
    kk = custs["basket_size"].to_numpy()
    rate = custs["trip_rate"].to_numpy()
    mult = rng.gamma(cfg.propensity_shape, 1.0 / cfg.propensity_shape, (n_c, n_cat))
    visit_p = np.minimum(0.9, cats["propensity"].to_numpy()[None, :] * mult)
    dow_mult = np.array([0.8, 0.8, 0.9, 0.9, 1.1, 1.4, 1.1])  # Monday .. Sunday

    last_paid = np.zeros((n_c, n_p))  # 0 = never bought
    brand_seen = np.zeros((n_c, n_cat, len(brands)), dtype=bool)

    lines: dict[str, list] = {k: [] for k in ("day", "cust", "product", "qty", "price", "list", "cat")}
    truth: dict[str, list] = {
        k: [] for k in ("day", "cust", "cat", "product", "price", "list", "ref", "u", "chosen")
    }
    for d in range(cfg.n_days):
        shop = rng.random(n_c) < np.minimum(0.95, rate * dow_mult[d % 7])
        who = np.flatnonzero(shop)
        visits = rng.random((who.size, n_cat)) < visit_p[who]
        price_d = np.round(reg[d] * (1.0 - depth[d]), 2)
        for c in range(n_cat):
            v = who[visits[:, c]]
            if v.size == 0:
                continue
            shelf = cat_products[c][launch[cat_products[c]] <= d]
            if shelf.size == 0:
                continue
            p = price_d[shelf]
            lp = reg[d, shelf]
            dep = depth[d, shelf]
            ref = last_paid[np.ix_(v, shelf)]
            ref = np.where(ref > 0, ref, lp[None, :])
            gap = np.log(p)[None, :] - np.log(ref)
            u = (
                quality[shelf][None, :]
                + bl[v, None] * brand_seen[v, c][:, brand_idx[shelf]]
                - beta[v, None] * np.log(p)[None, :]
                + delta[v, None] * dep[None, :]
                + cfg.reference_weight * (np.maximum(0.0, -gap) - lam[v, None] * np.maximum(0.0, gap))
            )
            pick = np.argmax(u + rng.gumbel(0.0, 1.0, u.shape), axis=1)
            prod = shelf[pick]
            qty = 1 + rng.poisson(kk[v] * qty_scale[c] * np.exp(cfg.qty_discount_effect * dep[pick]))
            last_paid[v, prod] = p[pick]
            brand_seen[v, c, brand_idx[prod]] = True
            for key, val in (
                ("day", np.full(v.size, d)),
                ("cust", v),
                ("product", prod),
                ("qty", qty),
                ("price", p[pick]),
                ("list", lp[pick]),
                ("cat", np.full(v.size, c)),
            ):
                lines[key].append(val)
            m = shelf.size
            truth["day"].append(np.full(v.size * m, d))
            truth["cust"].append(np.repeat(v, m))
            truth["cat"].append(np.full(v.size * m, c))
            truth["product"].append(np.tile(shelf, v.size))
            truth["price"].append(np.tile(p, v.size))
            truth["list"].append(np.tile(lp, v.size))
            truth["ref"].append(ref.ravel())
            truth["u"].append(u.ravel())
            chosen = np.zeros(u.shape, dtype=bool)
            chosen[np.arange(v.size), pick] = True
            truth["chosen"].append(chosen.ravel())
        if progress is not None:
            progress(d + 1, cfg.n_days)
    cat_names = cats["category"].to_numpy()
    pids = prods["product_id"].to_numpy()
    cids = custs["customer_id"].to_numpy()

    def cat(parts, dtype=None):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype or np.int64)

    purchases = pl.DataFrame(
        {
            "day": cat(lines["day"]),
            "cust_i": cat(lines["cust"]),
            "customer_id": cids[cat(lines["cust"])],
            "product_id": pids[cat(lines["product"])],
            "category": cat_names[cat(lines["cat"])],
            "quantity": cat(lines["qty"]),
            "unit_price": cat(lines["price"], float),
            "list_price": cat(lines["list"], float),
        },
        schema_overrides={"customer_id": pl.Utf8, "product_id": pl.Utf8, "category": pl.Utf8},
    )
    choice = pl.DataFrame(
        {
            "day": cat(truth["day"]),
            "cust_i": cat(truth["cust"]),
            "category": cat_names[cat(truth["cat"])],
            "product_id": pids[cat(truth["product"])],
            "price": cat(truth["price"], float),
            "list_price": cat(truth["list"], float),
            "ref_price": cat(truth["ref"], float),
            "utility": cat(truth["u"], float),
            "chosen": cat(truth["chosen"], bool),
        },
        schema_overrides={"product_id": pl.Utf8, "category": pl.Utf8},
    )
    return purchases, choice


# --------------------------------------------------------------------------- wholesale simulation


def _simulate_wholesale(cfg, cats, prods, purchases, reg, rng):
    n_weeks = (cfg.n_days + 6) // 7
    pids = prods["product_id"].to_list()
    pidx = {p: i for i, p in enumerate(pids)}
    weekly = np.zeros((n_weeks, len(pids)))
    wk = (purchases["day"].to_numpy() // 7).astype(int)
    np.add.at(
        weekly,
        (wk, np.array([pidx[p] for p in purchases["product_id"].to_list()], dtype=int)),
        purchases["quantity"].to_numpy(),
    )
    eligible = cats.filter(pl.col("density") != "sparse")["category"].to_list()
    lead = prods["lead_time_weeks"].to_numpy()
    launch_week = prods["launch_day"].to_numpy() // 7
    out_truth, out_lines = [], []
    F = cfg.forecast_weeks
    for b in range(cfg.n_wholesale_buyers):
        buyer = f"W{b + 1:02d}"
        n_pick = max(1, int(round(cfg.wholesale_category_share * len(eligible))))
        my_cats = set(rng.choice(eligible, n_pick, replace=False).tolist()) if eligible else set()
        scale = rng.uniform(cfg.wholesale_demand_scale_min, cfg.wholesale_demand_scale_max)
        js = np.array([i for i, c in enumerate(prods["category"].to_list()) if c in my_cats], dtype=int)
        if js.size == 0:
            continue
        demand = rng.poisson(scale * (weekly[:, js] + 0.5)).astype(float)
        demand[np.arange(n_weeks)[:, None] < launch_week[js][None, :]] = 0.0  # nothing sold before launch
        stock = None
        for w in range(F, n_weeks):
            fc = demand[w - F : w].mean(axis=0)
            L = lead[js]
            if stock is None:  # start at the order-up-to level
                stock = np.round(fc * (L + cfg.review_weeks) * (1 + cfg.safety_factor))
            noise = rng.normal(0.0, 1.0, js.size) * cfg.order_noise_rel * fc
            q = wholesale_order_qty(fc, stock, L, noise, cfg.review_weeks, cfg.safety_factor)
            live = launch_week[js] <= w
            basket = f"WO{b + 1:02d}-{w:03d}"
            day = min(w * 7, cfg.n_days - 1)
            out_truth.append(
                pl.DataFrame(
                    {
                        "customer_id": buyer,
                        "product_id": np.array(pids, dtype=object)[js][live].astype(str),
                        "week": np.full(int(live.sum()), w),
                        "demand": demand[w, live],
                        "forecast_demand": fc[live],
                        "stock": stock[live],
                        "lead_time_weeks": L[live],
                        "noise": noise[live],
                        "order_qty": q[live],
                        "basket_id": [basket if x > 0 else None for x in q[live]],
                    },
                    schema_overrides={"basket_id": pl.Utf8, "product_id": pl.Utf8},
                )
            )
            o = live & (q > 0)
            if o.any():
                list_p = np.round(cfg.wholesale_price_ratio * reg[day, js[o]], 2)
                unit_p = np.where(
                    q[o] >= cfg.volume_threshold, np.round(list_p * (1 - cfg.volume_discount), 2), list_p
                )
                out_lines.append(
                    pl.DataFrame(
                        {
                            "basket_id": basket,
                            "day": day,
                            "customer_id": buyer,
                            "product_id": np.array(pids, dtype=object)[js[o]].astype(str),
                            "quantity": q[o],
                            "unit_price": unit_p,
                            "list_price": list_p,
                            "buyer_i": b,
                        }
                    )
                )
            stock = stock + q - demand[w]
    truth = pl.concat(out_truth) if out_truth else None
    lines = pl.concat(out_lines) if out_lines else None
    return truth, lines


# --------------------------------------------------------------------------- assembly


def _assemble_transactions(cfg, purchases, wlines, rng) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Canonical transactions plus the (day, cust_i) -> basket_id map of retail trips."""
    start = datetime.fromisoformat(cfg.start_date)
    trips = purchases.select("day", "cust_i").unique().sort("day", "cust_i")
    trips = trips.with_columns(
        pl.format("B{}", pl.int_range(1, trips.height + 1).cast(pl.Utf8).str.zfill(7)).alias("basket_id"),
        pl.Series("minute", rng.integers(8 * 60, 21 * 60, trips.height)),
    )
    retail = purchases.join(trips, on=["day", "cust_i"], how="left").sort("basket_id", "product_id")
    # a few multi-unit purchases written as two lines (the protocol merges them)
    split = (rng.random(retail.height) < cfg.split_line_prob) & (retail["quantity"].to_numpy() >= 2)
    first = np.where(split, retail["quantity"].to_numpy() // 2, retail["quantity"].to_numpy())
    extra = retail.filter(pl.Series(split)).with_columns(
        (pl.col("quantity") - pl.col("quantity") // 2).alias("quantity")
    )
    retail = pl.concat([retail.with_columns(pl.Series("quantity", first)), extra]).with_columns(
        pl.lit("retail").alias("channel")
    )
    retail = retail.with_columns(
        (pl.lit(start) + pl.duration(days=pl.col("day"), minutes=pl.col("minute"))).alias("ts")
    ).select(
        "basket_id", "ts", "customer_id", "product_id", "quantity", "unit_price", "list_price", "channel"
    )
    parts = [retail]
    if wlines is not None and wlines.height:
        wl = wlines.with_columns(
            (pl.lit(start) + pl.duration(days=pl.col("day"), hours=6, minutes=pl.col("buyer_i"))).alias("ts"),
            pl.lit("wholesale").alias("channel"),
        ).select(retail.columns)
        parts.append(wl)
    tx = pl.concat(parts).with_columns(
        pl.col("quantity").cast(pl.Int64), pl.col("ts").cast(pl.Datetime("us"))
    )
    tx = tx.sort("ts", "basket_id", "product_id", "quantity")
    tx = tx.with_columns(
        pl.format("T{}", pl.int_range(1, tx.height + 1).cast(pl.Utf8).str.zfill(8)).alias("txn_id")
    ).select(
        "txn_id",
        "basket_id",
        "ts",
        "customer_id",
        "product_id",
        "quantity",
        "unit_price",
        "list_price",
        "channel",
    )
    return tx, trips.select("day", "cust_i", "basket_id")


def generate_market(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Draw a synthetic market and write the canonical files plus truth/ (see the module docstring).

    progress(done_days, total_days) is called once per simulated day (for a progress bar)."""
    cfg = config or SynthConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    ss = np.random.SeedSequence(cfg.seed)
    r_cat, r_prod, r_cust, r_price, r_sim, r_whole, r_asm = (np.random.default_rng(s) for s in ss.spawn(7))

    cats = _categories(cfg, r_cat)
    prods = _products(cfg, cats, r_prod)
    custs = _customers(cfg, r_cust)
    reg, depth, promos = _price_calendar(cfg, prods, r_price)
    purchases, choice = _simulate_retail(cfg, cats, prods, custs, reg, depth, r_sim, progress)
    wtruth, wlines = _simulate_wholesale(cfg, cats, prods, purchases, reg, r_whole)
    tx, trips = _assemble_transactions(cfg, purchases, wlines, r_asm)

    cids = custs["customer_id"].to_numpy()
    choice = (
        choice.join(trips, on=["day", "cust_i"], how="left")
        .with_columns(pl.Series("customer_id", cids[choice["cust_i"].to_numpy()]))
        .select(
            "basket_id",
            "category",
            "customer_id",
            "day",
            "product_id",
            "price",
            "list_price",
            "ref_price",
            "utility",
            "chosen",
        )
        .sort("basket_id", "category", "product_id")
    )

    files: dict[str, str] = {}

    def write(df: pl.DataFrame, path: Path, key: str) -> None:
        df.write_parquet(path, statistics=False)
        files[key] = str(path)

    write(tx, out / "transactions.parquet", "transactions")
    write(
        prods.select(
            "product_id",
            "category",
            "brand",
            "department",
            "description",
            "manufacturer",
            "size",
            "size_units",
            "quality_tier",
        ),
        out / "products.parquet",
        "products",
    )
    wholesale_custs = pl.DataFrame(
        {
            "customer_id": [f"W{b + 1:02d}" for b in range(cfg.n_wholesale_buyers)],
            "segment": ["wholesale"] * cfg.n_wholesale_buyers,
        }
    )
    write(
        pl.concat(
            [
                custs.select("customer_id", "segment", "age_band", "household_size", "income_band"),
                wholesale_custs,
            ],
            how="diagonal",
        ),
        out / "customers.parquet",
        "customers",
    )
    write(
        custs.select(
            "customer_id",
            "segment",
            "price_sensitivity",
            "discount_sensitivity",
            "loss_aversion",
            "brand_loyalty",
            "basket_size",
            "trip_rate",
        ),
        truth_dir / "customers_truth.parquet",
        "customers_truth",
    )
    write(choice, truth_dir / "choice_truth.parquet", "choice_truth")
    write(
        prods.select(
            "product_id",
            "category",
            "brand",
            "quality",
            "latent_quality",
            "size_units",
            "regular_price",
            "price_change_day",
            "new_regular_price",
            "launch_day",
            "lead_time_weeks",
        ),
        truth_dir / "product_truth.parquet",
        "product_truth",
    )
    write(promos, truth_dir / "promotions.parquet", "promotions")
    write(cats.drop("base_price"), truth_dir / "category_truth.parquet", "category_truth")
    if wtruth is not None:
        write(wtruth, truth_dir / "wholesale_truth.parquet", "wholesale_truth")
    rule = {
        "formula": "order_qty = max(0, round(forecast_demand * (lead_time_weeks + review_weeks) * "
        "(1 + safety_factor) - stock + noise))",
        "review_weeks": cfg.review_weeks,
        "safety_factor": cfg.safety_factor,
        "noise": "Normal(0, order_noise_rel * forecast_demand)",
        "order_noise_rel": cfg.order_noise_rel,
        "forecast": f"mean of the buyer's weekly demand over the previous {cfg.forecast_weeks} weeks",
        "forecast_weeks": cfg.forecast_weeks,
        "stock": "inventory position (on hand + on order - backorders) before the order; "
        "next week's = stock + order_qty - demand",
        "demand": "Poisson(scale_b * (retail units of the product that week + 0.5))",
        "lead_time_weeks_by_manufacturer": {
            r["manufacturer"]: r["lead_time_weeks"]
            for r in prods.select("manufacturer", "lead_time_weeks")
            .unique()
            .sort("manufacturer")
            .iter_rows(named=True)
        },
        "price": "list = wholesale_price_ratio * retail regular price; unit = list * (1 - volume_discount) "
        "when order_qty >= volume_threshold",
        "wholesale_price_ratio": cfg.wholesale_price_ratio,
        "volume_discount": cfg.volume_discount,
        "volume_threshold": cfg.volume_threshold,
    }
    (truth_dir / "wholesale_rule.json").write_text(json.dumps(rule, indent=2), encoding="utf-8")
    files["wholesale_rule"] = str(truth_dir / "wholesale_rule.json")
    (truth_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2), encoding="utf-8")
    files["config"] = str(truth_dir / "config.json")
    (truth_dir / "README.txt").write_text(TRUTH_README, encoding="utf-8")
    files["readme"] = str(truth_dir / "README.txt")

    return SynthSummary(
        out_dir=str(out),
        seed=cfg.seed,
        n_customers=cfg.n_customers,
        n_wholesale_buyers=cfg.n_wholesale_buyers,
        n_products=prods.height,
        n_categories=cats.height,
        n_days=cfg.n_days,
        n_baskets=int(tx.filter(pl.col("channel") == "retail")["basket_id"].n_unique()),
        n_retail_lines=int((tx["channel"] == "retail").sum()),
        n_wholesale_lines=int((tx["channel"] == "wholesale").sum()),
        n_episodes=int(choice.filter(pl.col("chosen")).height),
        dense_categories=cats.filter(pl.col("density") == "dense")["category"].to_list(),
        sparse_categories=cats.filter(pl.col("density") == "sparse")["category"].to_list(),
        files=files,
        seconds=round(time.perf_counter() - t0, 2),
    )


def main_synth(
    out_dir: str | Path | None = None, show_progress: bool = True, **overrides: Any
) -> SynthSummary:
    """For the CLI: generate_market with SynthConfig(**overrides) and a progress bar over simulated days.

    out_dir defaults to <data dir>/landing/synthetic. Unknown override names raise ValueError."""
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown SynthConfig field(s) {unknown}; fields: {', '.join(sorted(fields))}")
    if out_dir is None:
        from resources.paths import data_dir

        out_dir = data_dir() / "landing" / "synthetic"
    cfg = SynthConfig(**overrides)
    if not show_progress:
        return generate_market(out_dir, cfg)
    from tqdm import tqdm

    with tqdm(total=cfg.n_days, desc="synthetic market (days)", unit="day") as bar:

        def step(done: int, total: int) -> None:
            bar.update(done - bar.n)

        return generate_market(out_dir, cfg, progress=step)


# --------------------------------------------------------------------------- ground-truth helpers


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
