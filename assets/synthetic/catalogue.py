"""The synthetic market's catalogue, customers and price calendar: the world before anyone shops.

Plain logic (no dagster import), called by generate_market (assets/synthetic/generator.py), each part with
its own rng so that the same seed draws the same world: categories of three densities, products (brand, pack
size, latent quality, regular price, launches, regular-price changes), customers in SEGMENTS with their drawn
rho_i and demographics, and the daily list prices with the weekly promotion calendar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from assets.synthetic.generator import SynthConfig


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


def _lognormal(rng: np.random.Generator, mean: np.ndarray, logsd: float) -> np.ndarray:
    """Draws whose MEDIAN is `mean` (ln x ~ Normal(ln mean, logsd))."""
    return np.exp(np.log(mean) + rng.normal(0.0, logsd, np.shape(mean)))


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
