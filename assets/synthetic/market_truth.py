"""The synthetic market's TRUE what-ifs (docs/evaluation-protocol.md, "Market-level evaluation"): choice
probabilities and expected units under price changes, delistings and new products, own-price elasticities,
diversion ratios and a new product's share. Plain functions. The truth folder (load_truth) holds enough:
- choice_truth: every (basket, category) visit x every product ON THE SHELF that day (price, list price,
  reference price, utility V_ij); choice = argmax(V + Gumbel), so P = softmax of V over the shelf. There is
  NO no-purchase option: visits are drawn independently of prices and each buys one product;
- customers_truth (beta_i, delta_i, lambda_i, b_i, k_i), category_truth (q_c), promotions (exact depths),
  config (eta = reference_weight, qty_discount_effect, size_appeal, seed); expected_qty = the mean of the
  quantity rule 1 + Poisson(k_i q_c exp(qty_discount_effect x depth));
- brand equities: brand_equity() replays the generator's first draw of its product stream (seed ->
  SeedSequence.spawn(7)[1] -> normal(0, brand_equity_sd, 15 brands); StoreBrand -0.5), tested on a catalogue.
Readings:
- occasions: occasion_id = basket_id|category (the market's), episode_id, or basket_id and category. options:
  the sets (occasion_id, product_id); OTHER = the shelf outside the set; options=None = the whole shelf.
  prob is over the shelf, prob_in_set over the set (as truth.true_choice_probs).
- a price change r of j ({j: 0.01} = +1%) scales j's price and list price by 1 + r on every occasion (depth,
  hence the discount term and quantity, unchanged): dV = -beta_i ln(1 + r) + eta (g(gap') - g(gap)),
  g(x) = max(0, -x) - lambda_i max(0, x). The reference moves with the price (gap' = gap) when it is the list
  price (j never bought before d) or a price paid on or after change_from (default: the occasions' first
  day, the start of the simulated period); a price paid before stays (gap' = gap + ln(1 + r)). The history
  before d is the realised one: the exact truth of the occasions replayed on the observed history. The
  feedback on later states (brand loyalty, prices paid inside the period) is left out: a one-off
  re-simulation of the seed-3 test period (10 best sellers of MILK, BREAD, CHEESE, 200 paths, common random
  numbers; not kept) moved the elasticities by a median 1.4% (max 7.7%, the dynamic ones larger).
- delisting removes products from every shelf and set (IIA given i: P_k / (1 - P_j)); options_after of
  true_diversion_ratios takes the sets the market refills after the delisting.
- a new product (dict: product_id, category, brand, price, list_price = price, size_units = 1, and quality,
  latent_quality, quality_tier or none) joins every shelf and set of its category: V = quality + b_i [i
  bought its brand in the category before d] - beta_i ln price + delta_i depth + eta gain (reference = list
  price, depth = 1 - price / list_price), quality = latent_quality + size_appeal ln size_units, latent_quality
  by default E[latent | brand, tier] under the generator's model (latent ~ N(brand equity, quality_sd^2),
  tier = latent + N(0, 0.5^2) cut at -0.5 / 0.5), or the brand equity without a tier.
- elasticity = ((u(+r) - u(-r)) / (2 r)) / u(0) (metrics.own_price_elasticity), u = the true expected units
  over the occasions where the product is an option: like for like with the simulation, whose units of j
  come only from the sets showing j, hence the right comparison; options=None gives the market's own one
  over the category's occasions. Seed-3 test period, sets built like the market's (M = 20): equal on the 48
  dense-category products (whole shelves), median / max relative gap 0 / 29% on medium, 6% / 106% on sparse.
- diversion (after_k - before_k) / before_j for every k != j, OTHER included, on expected units and on
  expected purchases; the latter sum to exactly 1 (each visit buys one product), the former up to quantity
  differences between products (promotions). No no-purchase row: the true model has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.synthetic.catalogue import _BRANDS, _PRIVATE_LABEL
from assets.synthetic.truth import load_truth

DF = pl.DataFrame
OTHER = "other"  # the outside option, as assets.market.metrics.OTHER
TIER_NOISE_SD = 0.5  # catalogue._products: the label tier is latent + N(0, 0.5^2) ...
TIER_CUTS = {"value": (-math.inf, -0.5), "standard": (-0.5, 0.5), "premium": (0.5, math.inf)}  # ... cut here
PRIVATE_LABEL_EQUITY = -0.5  # catalogue._products: the store brand's quality shift
SHELF_COLS = ["occasion_id", "customer_id", "category", "day", "product_id", "utility", "price", "list_price"]
SHELF_COLS += ["ref_price", "depth"]
PARAM_COLS = ["beta", "delta", "lam", "b", "k", "qty_scale", "last_buy"]
DIVERSION_COLS = [f"{w}_{s}" for w in ("units", "purchases") for s in ("before", "after")]
DIVERSION_COLS += ["diversion", "diversion_purchases"]
CUSTOMER_PARAMS = {"price_sensitivity": "beta", "discount_sensitivity": "delta", "loss_aversion": "lam"}
CUSTOMER_PARAMS |= {"brand_loyalty": "b", "basket_size": "k"}


def _t(truth: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    return load_truth(truth) if isinstance(truth, str | Path) else truth


def _occasion_ids(frame: pl.DataFrame) -> pl.DataFrame:
    if "occasion_id" in frame.columns:
        return frame.select(pl.col("occasion_id").cast(pl.Utf8))
    if "episode_id" in frame.columns:
        return frame.select(pl.col("episode_id").cast(pl.Utf8).alias("occasion_id"))
    if {"basket_id", "category"} <= set(frame.columns):
        return frame.select((pl.col("basket_id") + "|" + pl.col("category")).alias("occasion_id"))
    raise ValueError(
        "occasions need occasion_id (= basket_id|category), episode_id, or basket_id and category"
    )


def _option_pairs(options: pl.DataFrame) -> pl.DataFrame:
    return _occasion_ids(options).with_columns(options["product_id"].cast(pl.Utf8)).unique()


def _choice(t: Mapping[str, Any]) -> pl.DataFrame:
    ct = t["choice_truth"]
    return ct.with_columns((pl.col("basket_id") + "|" + pl.col("category")).alias("occasion_id"))


def truth_occasions(
    truth, first_day: int | None = None, last_day: int | None = None, categories=None, min_shelf: int = 2
) -> pl.DataFrame:
    """The (basket, category) visits of the truth, days first_day..last_day (0-based, both included): occasion_id,
    basket_id, category, customer_id, day, n_shelf, chosen_product_id. min_shelf=2 drops the size-1 shelves
    that decision_episodes drops too."""
    g = (
        _choice(_t(truth))
        .group_by("occasion_id", "basket_id", "category")
        .agg(
            pl.col("customer_id").first(),
            pl.col("day").first(),
            pl.len().alias("n_shelf"),
            pl.col("product_id").filter(pl.col("chosen")).first().alias("chosen_product_id"),
        )
    )
    lo, hi = -1 if first_day is None else first_day, math.inf if last_day is None else last_day
    keep = (pl.col("n_shelf") >= min_shelf) & pl.col("day").is_between(lo, hi)
    if categories is not None:
        keep &= pl.col("category").is_in(list(categories))
    return g.filter(keep).sort("day", "occasion_id")


def brand_equity(truth) -> dict[str, float]:
    """Each brand's quality shift, replayed from the seed (the first draw of the generator's product stream)."""
    cfg = _t(truth)["config"]
    rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"]).spawn(7)[1])
    eq = dict(zip(_BRANDS, rng.normal(0.0, cfg["brand_equity_sd"], len(_BRANDS)).tolist(), strict=True))
    return {**eq, _PRIVATE_LABEL: PRIVATE_LABEL_EQUITY}


def expected_latent_quality(truth, brand: str, quality_tier: str | None = None) -> float:
    """E[latent quality | brand, label tier] under the generator's model (the brand equity without a tier)."""
    t = _t(truth)
    mu, sd = brand_equity(t)[brand], float(t["config"]["quality_sd"])
    if quality_tier is None:
        return mu
    lo, hi = TIER_CUTS[quality_tier]
    so = math.sqrt(sd**2 + TIER_NOISE_SD**2)  # the label's signal: latent + noise ~ N(mu, so^2)
    a, b = (lo - mu) / so, (hi - mu) / so
    pdf = lambda x: 0.0 if math.isinf(x) else math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2)))  # noqa: E731
    mean_signal = mu + so * (pdf(a) - pdf(b)) / max(cdf(b) - cdf(a), 1e-300)
    return mu + sd**2 / so**2 * (mean_signal - mu)


def _shelf(t: Mapping[str, Any], occasions: pl.DataFrame, change_from: int | None) -> pl.DataFrame:
    """One row per (occasion, shelf product): utility, price, list_price, ref_price, depth, expected_qty,
    the customer's parameters, last_buy (the customer's last purchase day of the product before d) and
    ref_moves (whether the reference follows a price change)."""
    ct = _choice(t)
    rows = ct.join(_occasion_ids(occasions).unique(), on="occasion_id", how="semi")
    cust = t["customers_truth"].select(
        "customer_id", *(pl.col(a).alias(b) for a, b in CUSTOMER_PARAMS.items())
    )
    promo = t["promotions"].select("product_id", pl.col("week").cast(pl.Int64), "depth")
    buys = (
        ct.filter(pl.col("chosen"))
        .select("customer_id", "product_id", "day", pl.col("day").alias("last_buy"))
        .sort("day")
    )
    strict: dict[str, Any] = {"allow_exact_matches": False, "check_sortedness": False}  # sorted by day
    rows = (
        rows.with_columns((pl.col("day") // 7).cast(pl.Int64).alias("week"))
        .join(promo, on=["product_id", "week"], how="left")
        .join(cust, on="customer_id", how="left")
        .join(t["category_truth"].select("category", "qty_scale"), on="category", how="left")
        .sort("day")
        .join_asof(buys, on="day", by=["customer_id", "product_id"], **strict)  # last purchase before d
    )
    qde = float(t["config"]["qty_discount_effect"])
    start = rows["day"].min()
    start = (start if start is not None else 0) if change_from is None else change_from
    eq = 1.0 + pl.col("k") * pl.col("qty_scale") * (qde * pl.col("depth")).exp()
    moves = pl.col("last_buy").is_null() | (pl.col("last_buy") >= start)
    rows = rows.with_columns(pl.col("depth").fill_null(0.0))
    return rows.select(*SHELF_COLS, eq.alias("expected_qty"), *PARAM_COLS, moves.alias("ref_moves"))


def _new_rows(t: Mapping[str, Any], shelf: pl.DataFrame, spec: Mapping[str, Any]) -> pl.DataFrame:
    """The shelf rows of a new product on every occasion of its category (see the module docstring)."""
    cfg = t["config"]
    price = float(spec["price"])
    lst = float(spec.get("list_price", price))
    depth = 1.0 - price / lst
    latent = spec.get("latent_quality")
    if latent is None and "quality" not in spec:
        latent = expected_latent_quality(t, spec["brand"], spec.get("quality_tier"))
    size = cfg["size_appeal"] * math.log(float(spec.get("size_units", 1.0)))
    quality = float(spec["quality"]) if "quality" in spec else float(latent) + size
    occ = shelf.filter(pl.col("category") == spec["category"]).unique("occasion_id", keep="first")
    seen = (
        _choice(t)
        .filter(pl.col("chosen") & (pl.col("category") == spec["category"]))
        .join(t["product_truth"].select("product_id", "brand"), on="product_id")
        .filter(pl.col("brand") == spec["brand"])
        .group_by("customer_id")
        .agg(pl.col("day").min().alias("_first"))
    )
    gap = math.log(price) - math.log(lst)  # <= 0: a gain against the list price
    return (
        occ.join(seen, on="customer_id", how="left")
        .with_columns(
            pl.lit(str(spec["product_id"])).alias("product_id"),
            (
                quality
                + pl.col("b") * (pl.col("_first") < pl.col("day")).fill_null(False).cast(pl.Float64)
                - pl.col("beta") * math.log(price)
                + pl.col("delta") * depth
                + cfg["reference_weight"] * (max(0.0, -gap) - pl.col("lam") * max(0.0, gap))
            ).alias("utility"),
            pl.lit(price).alias("price"),
            pl.lit(lst).alias("list_price"),
            pl.lit(lst).alias("ref_price"),
            pl.lit(depth).alias("depth"),
            (1.0 + pl.col("k") * pl.col("qty_scale") * math.exp(cfg["qty_discount_effect"] * depth)).alias(
                "expected_qty"
            ),
            pl.lit(None, dtype=shelf.schema["last_buy"]).alias("last_buy"),
            pl.lit(True).alias("ref_moves"),
        )
        .select(shelf.columns)
    )


def _dv(log_f: np.ndarray, rows: pl.DataFrame, eta: float) -> np.ndarray:
    """Utility change of each row's price change by the factor exp(log_f) (module docstring)."""
    beta, lam, moves = (rows[c].to_numpy() for c in ("beta", "lam", "ref_moves"))
    gap = np.log(rows["price"].to_numpy()) - np.log(rows["ref_price"].to_numpy())
    g = lambda x: np.maximum(0.0, -x) - lam * np.maximum(0.0, x)  # noqa: E731
    return -beta * log_f + eta * (g(np.where(moves, gap, gap + log_f)) - g(gap))


def _with_probs(rows: pl.DataFrame) -> pl.DataFrame:
    m = pl.col("utility").max().over("occasion_id")
    e = (pl.col("utility") - m).exp()
    return (
        rows.with_columns(e.alias("_e"))
        .with_columns(pl.col("_e").sum().over("occasion_id").alias("_z"))
        .with_columns((pl.col("_e") / pl.col("_z")).alias("prob"))
    )


def true_choice_probs_under(
    truth, occasions: DF, options=None, price_changes=None, delisted=None, new_products=None, change_from=None
) -> DF:
    """True choice probabilities and expected units of the options and OTHER on the occasions, under relative
    price changes ({product_id: 0.01} = +1%), delistings and new products (module docstring).

    Returns occasion_id, customer_id, category, day (0-based), product_id (OTHER included, one row per
    occasion), utility, price, prob (over the whole shelf), prob_in_set (the softmax over the set's products
    on the shelf; null for OTHER), expected_qty (OTHER's: its units / prob; null where prob is 0), units."""
    t = _t(truth)
    rows = _shelf(t, occasions, change_from)
    specs = list(new_products or [])
    if specs:
        rows = pl.concat([rows, *(_new_rows(t, rows, s) for s in specs)])
    out = set(map(str, delisted or []))
    if out:
        rows = rows.filter(~pl.col("product_id").is_in(list(out)))
    if price_changes:
        pid = rows["product_id"].to_numpy()
        log_f = np.log1p(np.array([float(price_changes.get(p, 0.0)) for p in pid]))
        dv = _dv(log_f, rows, float(t["config"]["reference_weight"]))
        f = pl.Series(np.exp(log_f))
        rows = rows.with_columns(
            pl.col("utility") + pl.Series(dv),
            pl.col("price") * f,
            pl.col("list_price") * f,
            pl.when(pl.col("ref_moves")).then(pl.col("ref_price") * f).otherwise(pl.col("ref_price")),
        )
    rows = _with_probs(rows)
    meta = rows.unique("occasion_id", keep="first").select("occasion_id", "customer_id", "category", "day")
    if options is None:
        sets = rows.select("occasion_id", "product_id")
    else:
        sets = _option_pairs(options).filter(~pl.col("product_id").is_in(list(out)))
        if specs:
            new = pl.DataFrame(
                {"category": [s["category"] for s in specs], "product_id": [s["product_id"] for s in specs]}
            )
            sets = pl.concat(
                [sets, meta.join(new.cast(pl.Utf8), on="category").select(sets.columns)]
            ).unique()
        sets = sets.join(meta, on="occasion_id", how="semi")
    cols = ["occasion_id", "product_id", "utility", "price", "prob", "expected_qty"]
    opt = sets.join(rows.select(cols), on=["occasion_id", "product_id"], how="left").with_columns(
        pl.col("prob").fill_null(0.0)
    )
    opt = opt.with_columns(
        (pl.col("prob") / pl.col("prob").sum().over("occasion_id")).alias("prob_in_set"),
        (pl.col("prob") * pl.col("expected_qty")).fill_null(0.0).alias("units"),
    )
    rest = (
        rows.join(sets, on=["occasion_id", "product_id"], how="anti")
        .group_by("occasion_id")
        .agg(pl.col("prob").sum(), (pl.col("prob") * pl.col("expected_qty")).sum().alias("units"))
    )
    other = (
        meta.select("occasion_id")
        .join(rest, on="occasion_id", how="left")
        .with_columns(
            pl.lit(OTHER).alias("product_id"),
            pl.col("prob", "units").fill_null(0.0),
        )
        .with_columns(
            pl.when(pl.col("prob") > 0).then(pl.col("units") / pl.col("prob")).alias("expected_qty"),
            *(pl.lit(None, dtype=pl.Float64).alias(c) for c in ("utility", "price", "prob_in_set")),
        )
    )
    names = [*cols, "prob_in_set", "units"]
    res = pl.concat([opt.select(names), other.select(names)])
    return meta.join(res, on="occasion_id").sort("occasion_id", "product_id")


def true_own_price_elasticities(
    truth, occasions: DF, options: DF | None = None, products=None, rel_step: float = 0.01, change_from=None
) -> DF:
    """Per product: the true expected units at prices x (1 - r), 1 and 1 + r (each product's own price alone
    changed, on every occasion), summed over the occasions where it is an option (options=None: every
    occasion of its category), and elasticity = ((u+ - u-) / (2 r)) / u0. Returns product_id, category,
    n_occasions, purchases (expected, at current prices), units_minus, units_base, units_plus, elasticity."""
    t = _t(truth)
    rows = _with_probs(_shelf(t, occasions, change_from))
    if options is not None:
        rows = rows.join(_option_pairs(options), on=["occasion_id", "product_id"], how="semi")
    if products is not None:
        rows = rows.filter(pl.col("product_id").is_in([str(p) for p in products]))
    e, z, q = (rows[c].to_numpy() for c in ("_e", "_z", "expected_qty"))
    eta, units = float(t["config"]["reference_weight"]), {}
    for name, step in (("units_minus", -rel_step), ("units_base", 0.0), ("units_plus", rel_step)):
        e2 = e * np.exp(_dv(np.full(e.size, math.log1p(step)), rows, eta))
        units[name] = pl.Series(e2 / (z - e + e2) * q)  # only j's utility moves: Z' = Z - e_j + e_j'
    r = (
        rows.with_columns(**units)
        .group_by("product_id", "category")
        .agg(
            pl.col("occasion_id").n_unique().alias("n_occasions"),
            pl.col("prob").sum().alias("purchases"),
            *(pl.col(c).sum() for c in units),
        )
    )
    return r.with_columns(
        pl.when(pl.col("units_base") != 0)
        .then((pl.col("units_plus") - pl.col("units_minus")) / (2.0 * rel_step) / pl.col("units_base"))
        .otherwise(float("nan"))
        .alias("elasticity")
    ).sort("category", "product_id")


def true_diversion_ratios(
    truth, occasions: DF, options: DF | None, delisted: str, options_after: DF | None = None, change_from=None
) -> DF:
    """Diversion from `delisted` to every other product and OTHER, as assets.market.metrics.diversion_ratios:
    (after_k - before_k) / before_j on true expected units (diversion), and on expected purchases
    (diversion_purchases, which sum to 1). options_after: the sets after the delisting (default: options
    without it). Returns product_id, units_before, units_after, diversion, purchases_before, purchases_after,
    diversion_purchases; raises when the product has no expected unit before."""
    t = _t(truth)

    def agg(p: pl.DataFrame, tag: str) -> pl.DataFrame:
        return p.group_by("product_id").agg(
            pl.col("units").sum().alias(f"units_{tag}"), pl.col("prob").sum().alias(f"purchases_{tag}")
        )

    before = agg(true_choice_probs_under(t, occasions, options, change_from=change_from), "before")
    sets = options if options_after is None else options_after
    after = agg(
        true_choice_probs_under(t, occasions, sets, delisted=[delisted], change_from=change_from), "after"
    )
    j = before.join(after, on="product_id", how="full", coalesce=True).fill_null(0.0)
    base = j.filter(pl.col("product_id") == str(delisted))
    if base.height == 0 or float(base["units_before"][0]) <= 0:
        raise ValueError(f"{delisted} has no expected unit before its delisting: no diversion ratio")
    ub, pb = float(base["units_before"][0]), float(base["purchases_before"][0])
    return (
        j.filter(pl.col("product_id") != str(delisted))
        .with_columns(
            ((pl.col("units_after") - pl.col("units_before")) / ub).alias("diversion"),
            ((pl.col("purchases_after") - pl.col("purchases_before")) / pb).alias("diversion_purchases"),
        )
        .select("product_id", *DIVERSION_COLS)
        .sort("product_id")
    )


def true_new_product_share(
    truth, occasions: DF, options: DF | None, new_product: Mapping[str, Any], change_from=None
) -> dict[str, Any]:
    """The new product's true share of its category on the occasions of that category (it joins every shelf and
    set there): unit_share = its expected units / the category's (OTHER included), purchase_share = its mean
    probability; with units, category_units and n_occasions."""
    t = _t(truth)
    p = true_choice_probs_under(t, occasions, options, new_products=[new_product], change_from=change_from)
    cat = p.filter(pl.col("category") == new_product["category"])
    new = cat.filter(pl.col("product_id") == str(new_product["product_id"]))
    units, total, n = float(new["units"].sum()), float(cat["units"].sum()), cat["occasion_id"].n_unique()
    res = {
        "product_id": str(new_product["product_id"]),
        "category": new_product["category"],
        "n_occasions": n,
    }
    us, ps = units / total if total > 0 else math.nan, float(new["prob"].sum()) / n if n else math.nan
    return res | {"units": units, "category_units": total, "unit_share": us, "purchase_share": ps}
