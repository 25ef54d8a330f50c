"""The synthetic market's true what-ifs (assets/synthetic/market_truth.py): probabilities, elasticities,
diversion ratios and a new product's share, by hand on a tiny truth and on a small drawn market."""

import math

import numpy as np
import polars as pl
import pytest

from assets.synthetic import market_truth as mt
from assets.synthetic.generator import SynthConfig, generate_market
from assets.synthetic.truth import load_truth, true_choice_probs

ETA, QDE = 0.6, 1.5
CUST = {
    "A": dict(beta=1.5, delta=1.0, lam=2.0, b=1.0, k=0.5),
    "B": dict(beta=1.0, delta=0.5, lam=3.0, b=2.0, k=0.2),
}
BRAND = {"P1": "X", "P2": "Y", "P3": "Y"}


def _tiny_truth() -> dict:
    """Category C (q_c = 1, no promotion). Day 0: A buys P1 at 2.00. Day 10: A (B2) and B (B3) see P1, P2, P3;
    day 11: B (B4) sees P1 and P2. Utilities are arbitrary: the module only adds changes to them."""
    shelf = [  # basket, customer, day, product, price, list, ref, utility, chosen
        ("B1", "A", 0, "P1", 2.0, 2.0, 2.0, 0.0, True),
        ("B1", "A", 0, "P2", 1.5, 1.5, 1.5, 0.0, False),
        ("B2", "A", 10, "P1", 2.0, 2.0, 2.0, 0.5, False),  # A paid 2.00 on day 0: reference 2.00
        ("B2", "A", 10, "P2", 1.5, 1.5, 1.5, 0.2, True),
        ("B2", "A", 10, "P3", 3.0, 3.0, 3.0, -0.3, False),
        ("B3", "B", 10, "P1", 2.0, 2.0, 2.0, 0.1, True),
        ("B3", "B", 10, "P2", 1.5, 1.5, 1.5, 0.4, False),
        ("B3", "B", 10, "P3", 3.0, 3.0, 3.0, 0.0, False),
        ("B4", "B", 11, "P1", 2.0, 2.0, 2.0, -0.2, False),
        ("B4", "B", 11, "P2", 1.5, 1.5, 1.5, 0.6, True),
    ]
    cols = [
        "basket_id",
        "customer_id",
        "day",
        "product_id",
        "price",
        "list_price",
        "ref_price",
        "utility",
        "chosen",
    ]
    ct = pl.DataFrame(shelf, schema=cols, orient="row").with_columns(pl.lit("C").alias("category"))
    cust = pl.DataFrame(
        {
            "customer_id": list(CUST),
            "price_sensitivity": [c["beta"] for c in CUST.values()],
            "discount_sensitivity": [c["delta"] for c in CUST.values()],
            "loss_aversion": [c["lam"] for c in CUST.values()],
            "brand_loyalty": [c["b"] for c in CUST.values()],
            "basket_size": [c["k"] for c in CUST.values()],
        }
    )
    cfg = dict(reference_weight=ETA, qty_discount_effect=QDE, size_appeal=1.1, quality_sd=1.0, seed=0)
    return {
        "choice_truth": ct,
        "customers_truth": cust,
        "category_truth": pl.DataFrame({"category": ["C"], "qty_scale": [1.0]}),
        "promotions": pl.DataFrame(schema={"product_id": pl.Utf8, "week": pl.Int64, "depth": pl.Float64}),
        "product_truth": pl.DataFrame({"product_id": list(BRAND), "brand": list(BRAND.values())}),
        "config": cfg | {"brand_equity_sd": 0.4},
    }


TINY = _tiny_truth()
OCC = pl.DataFrame({"occasion_id": ["B2|C", "B3|C", "B4|C"]})
# per occasion: customer, the shelf's utilities
SHELVES = {
    "B2|C": ("A", {"P1": 0.5, "P2": 0.2, "P3": -0.3}),
    "B3|C": ("B", {"P1": 0.1, "P2": 0.4, "P3": 0.0}),
}
SHELVES["B4|C"] = ("B", {"P1": -0.2, "P2": 0.6})


def _softmax(v: dict) -> dict:
    z = sum(math.exp(x) for x in v.values())
    return {k: math.exp(x) / z for k, x in v.items()}


def _eq(cust: str) -> float:
    return 1.0 + CUST[cust]["k"] * 1.0  # no promotion: 1 + k_i q_c


def _hand_units(product: str, dv_of) -> float:
    """Expected units of a product over OCC with its utility moved by dv_of(occasion, customer)."""
    total = 0.0
    for occ, (cust, v) in SHELVES.items():
        if product in v:
            w = dict(v)
            w[product] += dv_of(occ, cust)
            total += _softmax(w)[product] * _eq(cust)
    return total


def test_tiny_probabilities_other_and_consistency_with_true_choice_probs():
    p = mt.true_choice_probs_under(TINY, OCC)
    assert mt.OTHER == "other"
    for occ, (cust, v) in SHELVES.items():
        got = p.filter(pl.col("occasion_id") == occ)
        assert got["prob"].sum() == pytest.approx(1.0)
        for prod, pr in _softmax(v).items():
            row = got.filter(pl.col("product_id") == prod)
            assert row["prob"][0] == pytest.approx(pr)
            assert row["units"][0] == pytest.approx(pr * _eq(cust))
        assert got.filter(pl.col("product_id") == mt.OTHER)["prob"][0] == 0.0
    # a set {P1, P2}: OTHER takes P3; prob_in_set is true_choice_probs' softmax over the set
    opts = pl.DataFrame(
        {"occasion_id": ["B2|C", "B2|C", "B3|C", "B3|C"], "product_id": ["P1", "P2", "P1", "P4"]}
    )
    s = mt.true_choice_probs_under(TINY, OCC, opts)
    b2 = _softmax(SHELVES["B2|C"][1])
    other = s.filter((pl.col("occasion_id") == "B2|C") & (pl.col("product_id") == mt.OTHER))
    assert other["prob"][0] == pytest.approx(b2["P3"])
    assert other["expected_qty"][0] == pytest.approx(_eq("A"))
    # P4 is no shelf product: prob 0; B4 has no option: everything to OTHER
    assert s.filter(pl.col("product_id") == "P4")["prob"][0] == 0.0
    assert s.filter(pl.col("occasion_id") == "B4|C")["product_id"].to_list() == [mt.OTHER]
    assert s.group_by("occasion_id").agg(pl.col("prob").sum())["prob"].to_list() == pytest.approx([1.0] * 3)
    ref = true_choice_probs(TINY["choice_truth"], opts.rename({"occasion_id": "episode_id"}))
    j = s.join(ref.rename({"episode_id": "occasion_id"}), on=["occasion_id", "product_id"])
    assert j.height == 4 and np.allclose(j["prob_in_set"], j["true_prob"])


def test_tiny_elasticity_closed_form_for_plain_logit():
    """P2 was never bought: its reference is its list price, which moves with it: dV = -beta ln(1 + r), and
    e = sum_o u_o (-beta_o (1 - P_o)) / sum_o u_o up to O(r^2)."""
    e = mt.true_own_price_elasticities(TINY, OCC).filter(pl.col("product_id") == "P2")
    num = den = 0.0
    for cust, v in SHELVES.values():
        pr = _softmax(v)["P2"]
        num += pr * _eq(cust) * (-CUST[cust]["beta"] * (1 - pr))
        den += pr * _eq(cust)
    assert e["elasticity"][0] == pytest.approx(num / den, rel=1e-3)
    assert e["units_base"][0] == pytest.approx(den)
    assert e["n_occasions"][0] == 3
    # exactly: the same units as the hand softmax at prices x 1.01
    assert e["units_plus"][0] == pytest.approx(
        _hand_units("P2", lambda o, c: -CUST[c]["beta"] * math.log(1.01))
    )


def test_tiny_elasticity_reference_held_or_moving():
    """A paid 2.00 for P1 on day 0, before the period (day 10): at +1% the held reference makes it a loss
    (dV = -(beta + eta lambda) ln 1.01), at -1% a gain (dV = -(beta + eta) ln 0.99). From change_from=0 on the
    reference moves with the price, as for B who never bought P1 before day 10. With change_from=11, B's
    purchase of P1 on day 10 holds B's reference on day 11 (B4), but not on day 10 itself (strictly before d)."""

    def dv(step, held):
        def f(occ, cust):
            c, lf = CUST[cust], math.log1p(step)
            if occ in held:
                return -(c["beta"] + ETA * (c["lam"] if step > 0 else 1.0)) * lf
            return -c["beta"] * lf

        return f

    for change_from, held in ((None, {"B2|C"}), (0, set()), (11, {"B2|C", "B4|C"})):
        e = mt.true_own_price_elasticities(TINY, OCC, change_from=change_from).filter(
            pl.col("product_id") == "P1"
        )
        up, um = _hand_units("P1", dv(0.01, held)), _hand_units("P1", dv(-0.01, held))
        assert e["units_plus"][0] == pytest.approx(up, rel=1e-12)
        assert e["units_minus"][0] == pytest.approx(um, rel=1e-12)
        assert e["elasticity"][0] == pytest.approx((up - um) / 0.02 / _hand_units("P1", lambda o, c: 0.0))
    held_e, moving_e = (
        mt.true_own_price_elasticities(TINY, OCC, products=["P1"], change_from=c)["elasticity"][0]
        for c in (None, 0)
    )
    assert held_e < moving_e < 0


def test_elasticity_agrees_with_price_changes_through_the_probabilities():
    e = mt.true_own_price_elasticities(TINY, OCC)
    for prod in ("P1", "P2", "P3"):
        u = {
            r: mt.true_choice_probs_under(TINY, OCC, price_changes={prod: r})
            .filter(pl.col("product_id") == prod)["units"]
            .sum()
            for r in (-0.01, 0.0, 0.01)
        }
        row = e.filter(pl.col("product_id") == prod)
        assert row["units_minus"][0] == pytest.approx(u[-0.01])
        assert row["units_plus"][0] == pytest.approx(u[0.01])
        assert row["elasticity"][0] == pytest.approx((u[0.01] - u[-0.01]) / 0.02 / u[0.0])
    # the price columns move with the change, the others' do not
    p = mt.true_choice_probs_under(TINY, OCC, price_changes={"P2": 0.01})
    assert p.filter(pl.col("product_id") == "P2")["price"].to_list() == pytest.approx([1.515] * 3)
    assert p.filter(pl.col("product_id") == "P1")["price"].to_list() == pytest.approx([2.0] * 3)


def test_tiny_diversion_iia_and_sums():
    d = mt.true_diversion_ratios(TINY, OCC, None, "P2")
    num, den = {"P1": 0.0, "P3": 0.0}, 0.0
    for cust, v in SHELVES.values():
        pr = _softmax(v)
        den += pr["P2"] * _eq(cust)
        for k in num:
            num[k] += pr["P2"] * pr.get(k, 0.0) / (1 - pr["P2"]) * _eq(cust)  # IIA: P_k / (1 - P_j)
    for k in num:
        assert d.filter(pl.col("product_id") == k)["diversion"][0] == pytest.approx(num[k] / den)
    assert d["diversion"].sum() == pytest.approx(1.0)  # no promotion: the units are conserved
    assert d["diversion_purchases"].sum() == pytest.approx(1.0)
    assert d.filter(pl.col("product_id") == mt.OTHER)["diversion"][0] == 0.0
    # one occasion: the diverted units split in proportion to the others' shares
    one = mt.true_diversion_ratios(TINY, OCC.head(1), None, "P2")
    pr = _softmax(SHELVES["B2|C"][1])
    div = dict(zip(one["product_id"], one["diversion"], strict=True))
    assert div["P1"] / div["P3"] == pytest.approx(pr["P1"] / pr["P3"])
    # with sets {P1, P2}: OTHER (P3) takes its part, the sum stays 1; an unsold product raises
    opts = pl.DataFrame({"occasion_id": ["B2|C", "B2|C", "B3|C", "B3|C"], "product_id": ["P1", "P2"] * 2})
    s = mt.true_diversion_ratios(TINY, OCC, opts, "P2")
    assert s["diversion"].sum() == pytest.approx(1.0)
    assert s.filter(pl.col("product_id") == mt.OTHER)["diversion"][0] > 0
    with pytest.raises(ValueError):
        mt.true_diversion_ratios(TINY, OCC, opts, "P3")


def test_tiny_diversion_matches_the_market_metric():
    from assets.market.metrics import diversion_ratios

    before = mt.true_choice_probs_under(TINY, OCC)
    after = mt.true_choice_probs_under(TINY, OCC, delisted=["P2"])
    ref = diversion_ratios(before, after, "P2")
    d = mt.true_diversion_ratios(TINY, OCC, None, "P2")
    assert ref["product_id"].to_list() == d["product_id"].to_list()
    assert np.allclose(ref["diversion"], d["diversion"])


def test_tiny_new_product_by_hand():
    """N of brand X (A bought X on day 0, B on day 10: loyal on B4 only) at 1.80, list price 2.00, quality 0.3."""
    new = dict(product_id="N", category="C", brand="X", price=1.8, list_price=2.0, quality=0.3)
    gain = -math.log(0.9)
    units = total = 0.0
    for occ, (cust, v) in SHELVES.items():
        c = CUST[cust]
        vn = (
            0.3
            + c["b"] * (cust == "A" or occ == "B4|C")
            - c["beta"] * math.log(1.8)
            + c["delta"] * 0.1
            + ETA * gain
        )
        pr = _softmax({**v, "N": vn})
        qn = 1 + c["k"] * math.exp(QDE * 0.1)
        units += pr["N"] * qn
        total += pr["N"] * qn + (1 - pr["N"]) * _eq(cust)
    s = mt.true_new_product_share(TINY, OCC, None, new)
    assert s["units"] == pytest.approx(units)
    assert s["unit_share"] == pytest.approx(units / total)
    assert s["n_occasions"] == 3 and 0 < s["purchase_share"] < 1
    # the scenario product joins every set of its category
    opts = pl.DataFrame({"occasion_id": ["B2|C"], "product_id": ["P1"]})
    p = mt.true_choice_probs_under(TINY, OCC, opts, new_products=[new])
    assert p.filter(pl.col("product_id") == "N").height == 3


def test_expected_latent_quality_matches_the_generator_model():
    truth = {"config": {"seed": 0, "brand_equity_sd": 0.4, "quality_sd": 1.0}}
    mu = mt.brand_equity(truth)["Harbor"]
    rng = np.random.default_rng(0)
    latent = mu + rng.normal(0, 1.0, 400_000)
    label = latent + rng.normal(0, 0.5, latent.size)  # catalogue._products: the label is latent + N(0, 0.5^2)
    tiers = np.where(label < -0.5, "value", np.where(label > 0.5, "premium", "standard"))
    for tier in ("value", "standard", "premium"):
        got = mt.expected_latent_quality(truth, "Harbor", tier)
        assert got == pytest.approx(latent[tiers == tier].mean(), abs=0.01)
    assert mt.expected_latent_quality(truth, "Harbor") == mu
    assert mt.brand_equity(truth)["StoreBrand"] == -0.5


def test_brand_equity_replays_the_catalogue(tmp_path):
    """With quality_sd = 0 every product's latent quality is its brand's equity."""
    cfg = SynthConfig(seed=7, n_customers=5, n_days=14, n_wholesale_buyers=1, quality_sd=0.0)
    generate_market(tmp_path / "m", cfg)
    truth = load_truth(tmp_path / "m")
    eq = mt.brand_equity(truth)
    pt = truth["product_truth"]
    assert pt["brand"].n_unique() > 5
    assert np.allclose([eq[b] for b in pt["brand"]], pt["latent_quality"], atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- a small drawn market


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt") / "market"
    cfg = SynthConfig(seed=5, n_customers=60, n_days=84, n_wholesale_buyers=1, n_medium_categories=2)
    generate_market(out, SynthConfig(**{**cfg.__dict__, "n_sparse_categories": 1}))
    truth = load_truth(out)
    occ = mt.truth_occasions(truth, first_day=56)
    # sets: a random half of each shelf (OTHER gets the rest)
    shelf = truth["choice_truth"].with_columns(
        (pl.col("basket_id") + "|" + pl.col("category")).alias("occasion_id")
    )
    shelf = shelf.join(occ.select("occasion_id"), on="occasion_id")
    keep = np.random.default_rng(0).random(shelf.height) < 0.5
    return truth, occ, shelf.filter(pl.Series(keep)).select("occasion_id", "product_id")


def test_drawn_probabilities_sum_to_one_and_match_true_choice_probs(drawn):
    truth, occ, opts = drawn
    assert occ.height > 200 and occ["day"].min() >= 56 and occ["n_shelf"].min() >= 2
    full = mt.true_choice_probs_under(truth, occ)
    sets = mt.true_choice_probs_under(truth, occ, opts)
    for p in (full, sets):
        sums = p.group_by("occasion_id").agg(pl.col("prob").sum())
        assert sums.height == occ.height and np.allclose(sums["prob"], 1.0)
    shelf = truth["choice_truth"].join(occ.select("basket_id", "category"), on=["basket_id", "category"])
    ref = true_choice_probs(truth["choice_truth"], shelf).rename({"episode_id": "occasion_id"})
    j = full.join(ref, on=["occasion_id", "product_id"])
    assert j.height == full.height - occ.height and np.allclose(j["prob"], j["true_prob"])
    ref_sets = true_choice_probs(truth["choice_truth"], opts.rename({"occasion_id": "episode_id"}))
    j = sets.join(ref_sets.rename({"episode_id": "occasion_id"}), on=["occasion_id", "product_id"])
    assert j.height == opts.height and np.allclose(j["prob_in_set"], j["true_prob"])
    assert np.allclose(sets["units"].sum(), full["units"].sum())  # OTHER carries the rest


def test_drawn_expected_quantity_is_the_rule_mean(drawn):
    """expected_qty = 1 + k_i q_c exp(qty_discount_effect x depth), the depth of the promotion calendar (the
    shelf price is the list price x (1 - depth) rounded to cents)."""
    truth, occ, _ = drawn
    p = mt.true_choice_probs_under(truth, occ).filter(pl.col("product_id") != mt.OTHER)
    x = (
        p.join(
            truth["choice_truth"].with_columns(
                (pl.col("basket_id") + "|" + pl.col("category")).alias("occasion_id")
            ),
            on=["occasion_id", "product_id"],
        )
        .join(truth["customers_truth"], on="customer_id")
        .join(truth["category_truth"], on="category")
    )
    depth = 1 - x["price"] / x["list_price"]
    rule = 1 + x["basket_size"] * x["qty_scale"] * np.exp(truth["config"]["qty_discount_effect"] * depth)
    assert (depth > 0.05).sum() > 50
    assert np.allclose(rule - 1, x["expected_qty"] - 1, rtol=0.03, atol=0)  # cents move depth by < 0.01


def test_drawn_elasticities_negative_and_consistent(drawn):
    truth, occ, opts = drawn
    full = mt.true_own_price_elasticities(truth, occ)
    sets = mt.true_own_price_elasticities(truth, occ, opts)
    for e in (full, sets):
        assert e.height > 10 and (e["elasticity"] < 0).all()
        assert (e["elasticity"] > -5).all()
    units = mt.true_choice_probs_under(truth, occ).group_by("product_id").agg(pl.col("units").sum())
    j = full.join(units, on="product_id")
    assert j.height == full.height and np.allclose(j["units_base"], j["units"])
    # the sets hold about half of each shelf: fewer occasions per product
    j = full.join(sets, on="product_id", suffix="_set")
    assert (j["n_occasions_set"] <= j["n_occasions"]).all() and (
        j["n_occasions_set"] < j["n_occasions"]
    ).any()


def test_drawn_diversion_and_new_product(drawn):
    truth, occ, opts = drawn
    top = mt.true_own_price_elasticities(truth, occ, opts).sort("units_base", descending=True)["product_id"][
        0
    ]
    d = mt.true_diversion_ratios(truth, occ, opts, top)
    assert d["diversion_purchases"].sum() == pytest.approx(1.0)
    assert d["diversion"].sum() == pytest.approx(1.0, abs=0.05)  # promotions change the quantities a little
    assert (d["diversion_purchases"] >= -1e-12).all() and mt.OTHER in d["product_id"].to_list()
    cat = occ.filter(pl.col("n_shelf") == pl.col("n_shelf").max())["category"][0]
    brand = truth["product_truth"].filter(pl.col("category") == cat)["brand"][0]
    shares = {}
    for tier in ("value", "premium"):
        for price in (1.0, 3.0):
            new = dict(
                product_id="NEW", category=cat, brand=brand, price=price, size_units=2.0, quality_tier=tier
            )
            shares[tier, price] = mt.true_new_product_share(truth, occ, opts, new)["unit_share"]
    assert all(0 < s < 1 for s in shares.values())
    assert shares["value", 1.0] > shares["value", 3.0] and shares["premium", 1.0] > shares["value", 1.0]
