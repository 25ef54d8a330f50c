"""Synthetic stage: the `synthetic_market` asset, canonical files of a market with known ground truth.

Thin Dagster wiring; the generator is plain logic in `assets/synthetic/generator.py` (knobs, retail
simulation, assembly and writing), with the catalogue, customers and price calendar in `catalogue.py`, the
wholesale ordering rule and its simulation in `wholesale.py` and the ground-truth readers (load_truth,
true_choice_probs, oracle_hit1) in `truth.py`. Not a dependency of raw_transactions: it only writes files
(landing/synthetic by default), which the ingest assets pick up through the built-in `canonical` mapping
like any other drop.
"""

import dataclasses
from pathlib import Path

import dagster as dg

from assets._metadata import artifact_metadata
from assets.synthetic.generator import SynthConfig, generate_market
from resources.paths import data_dir


class SyntheticMarketConfig(dg.Config):
    """Mirrors assets.synthetic.generator.SynthConfig (see its comments for each knob)."""

    out_dir: str = ""  # output folder; empty = <data dir>/landing/synthetic
    seed: int = 0  # one seed drives everything: same seed, same files
    n_customers: int = 300  # retail households
    n_days: int = 364  # days of history (test = last 8 weeks, validation = the 4 before)
    start_date: str = "2025-01-06"  # first day (a Monday: promotion weeks are calendar weeks)
    trip_rate: float = 0.17  # mean shopping trips per customer per day
    n_dense_categories: int = 4  # categories bought on most trips
    n_medium_categories: int = 8  # categories with hundreds of episodes
    n_sparse_categories: int = 13  # categories with < 100 train episodes
    dense_propensity_min: float = 0.20  # per-trip visit probability of a dense category (min)
    dense_propensity_max: float = 0.40  # ... (max)
    medium_propensity_min: float = 0.02  # same for medium categories (min)
    medium_propensity_max: float = 0.06  # ... (max)
    sparse_propensity_min: float = 0.0015  # same for sparse categories (min)
    sparse_propensity_max: float = 0.005  # ... (max)
    propensity_shape: float = 2.0  # gamma shape of the customer x category propensity multiplier
    products_dense_min: int = 10  # shelf size of a dense category (min)
    products_dense_max: int = 16  # ... (max)
    products_medium_min: int = 8  # shelf size of a medium category (min)
    products_medium_max: int = 12  # ... (max)
    products_sparse_min: int = 5  # shelf size of a sparse category (min)
    products_sparse_max: int = 10  # ... (max)
    quality_sd: float = 1.0  # sd of latent product quality
    brand_equity_sd: float = 0.4  # sd of a brand's quality shift
    price_quality_slope: float = 0.35  # ln regular price per unit of quality
    price_noise_sd: float = 0.12  # sd of ln regular price not explained by quality and size
    size_price_elasticity: float = 0.8  # ln price per ln pack size
    size_appeal: float = 1.1  # utility per ln pack size
    new_product_share: float = 0.06  # share of products launched during the year
    price_change_prob: float = 0.15  # share of products whose regular price changes once
    price_change_sd: float = 0.12  # sd of ln of that change
    promo_prob: float = 0.08  # share of product-weeks on promotion
    promo_depth_min: float = 0.10  # promotion depth (min)
    promo_depth_max: float = 0.35  # ... (max)
    promo_weeks_min: int = 2  # promotion length in weeks (min)
    promo_weeks_max: int = 4  # ... (max)
    price_sensitivity_logsd: float = 0.12  # within-segment sd of ln beta_i
    discount_sensitivity_logsd: float = 0.15  # within-segment sd of ln delta_i
    loss_aversion_logsd: float = 0.20  # within-segment sd of ln(lambda_i - 1)
    brand_loyalty_logsd: float = 0.15  # within-segment sd of ln b_i
    basket_size_logsd: float = 0.30  # within-segment sd of ln k_i
    reference_weight: float = 0.6  # eta: utility per unit ln-price gain against the reference
    qty_discount_effect: float = 1.5  # ln extra units per unit discount depth
    split_line_prob: float = 0.03  # share of multi-unit purchases written as two lines
    n_wholesale_buyers: int = 4  # distributors ordering weekly
    wholesale_category_share: float = 0.5  # share of dense+medium categories a buyer stocks
    wholesale_demand_scale_min: float = 5.0  # buyer demand scale on retail units (min)
    wholesale_demand_scale_max: float = 15.0  # ... (max)
    forecast_weeks: int = 4  # forecast = mean demand of this many previous weeks
    review_weeks: int = 1  # weeks between orders
    safety_factor: float = 0.2  # order-up-to = forecast * (L + R) * (1 + safety_factor)
    order_noise_rel: float = 0.1  # order noise sd relative to the forecast
    wholesale_price_ratio: float = 0.6  # wholesale list price / retail regular price
    volume_discount: float = 0.05  # price cut for large order lines
    volume_threshold: int = 100  # units from which the volume discount applies


def synth_config_from(config: SyntheticMarketConfig) -> SynthConfig:
    """The SynthConfig of an asset config (every field but out_dir)."""
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in config.model_dump().items() if k in names})


@dg.asset(group_name="synthetic", kinds={"python", "parquet"})
def synthetic_market(
    context: dg.AssetExecutionContext, config: SyntheticMarketConfig
) -> dg.MaterializeResult:
    """A synthetic market with KNOWN ground truth (drawn style parameters, a reference-dependent mixed logit,
    dense and sparse categories, a wholesale channel) written as canonical transactions/products/customers
    parquet files in the landing folder (landing/synthetic), with the truth apart in truth/ for tests."""
    out = Path(config.out_dir) if config.out_dir else data_dir() / "landing" / "synthetic"
    cfg = synth_config_from(config)

    def progress(done: int, total: int) -> None:
        if done % 30 == 0 or done == total:
            context.log.info(f"synthetic market: day {done}/{total}")

    s = generate_market(out, cfg, progress=progress)
    context.log.info(
        f"synthetic market in {out}: {s.n_baskets} baskets, {s.n_episodes} episodes, {s.seconds} s"
    )
    metadata = {
        "out_dir": dg.MetadataValue.path(str(out)),
        "seed": s.seed,
        "n_customers": s.n_customers,
        "n_products": s.n_products,
        "n_categories": s.n_categories,
        "n_baskets": s.n_baskets,
        "n_retail_lines": s.n_retail_lines,
        "n_wholesale_lines": s.n_wholesale_lines,
        "n_episodes": s.n_episodes,
        "dense_categories": ", ".join(s.dense_categories),
        "sparse_categories": ", ".join(s.sparse_categories),
    }
    for key in ("transactions", "products", "customers"):
        metadata.update({f"{key}_{k}": v for k, v in artifact_metadata(s.files[key]).items()})
    return dg.MaterializeResult(metadata=metadata)
