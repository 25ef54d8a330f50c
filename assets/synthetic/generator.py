"""A synthetic market with KNOWN ground truth, written in the canonical format of docs/evaluation-protocol.md.

Plain logic (no dagster import). `generate_market(out_dir, SynthConfig())` writes

    out_dir/transactions.parquet   canonical lines (retail and wholesale channels)
    out_dir/products.parquet       product_id, category, brand, department, description + attributes
    out_dir/customers.parquet      customer_id, segment + demographics
    out_dir/truth/                 the ground truth, never read by the pipeline (see truth.TRUTH_README)

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

Where it lives: this module holds the knobs, the retail simulation, the assembly of the canonical
transactions and the writing of the files; the catalogue, customers and price calendar are drawn in
catalogue.py, the wholesale rule and its simulation are in wholesale.py, and truth.py reads the truth back
(load_truth, true_choice_probs, oracle_hit1). Those names stay importable from here.
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

from assets.synthetic.catalogue import SEGMENTS, _categories, _customers, _price_calendar, _products
from assets.synthetic.truth import TRUTH_README, load_truth, oracle_hit1, true_choice_probs
from assets.synthetic.wholesale import _simulate_wholesale, wholesale_order_qty

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
