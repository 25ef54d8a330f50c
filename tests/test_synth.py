"""The synthetic market generator: determinism, canonical schema, truth kept apart, category densities,
choices that follow the documented logit, and the wholesale rule reproduced from the truth."""

import json
import math
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from assets.synthetic.generator import SynthConfig, generate_market, main_synth
from assets.synthetic.truth import load_truth, oracle_hit1, true_choice_probs
from assets.synthetic.wholesale import wholesale_order_qty

CANONICAL_TX = {
    "txn_id": pl.Utf8,
    "basket_id": pl.Utf8,
    "ts": pl.Datetime("us"),
    "customer_id": pl.Utf8,
    "product_id": pl.Utf8,
    "quantity": pl.Int64,
    "unit_price": pl.Float64,
    "list_price": pl.Float64,
    "channel": pl.Utf8,
}
SMALL = SynthConfig(n_customers=40, n_days=70, n_wholesale_buyers=2)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """The default market (about a second to draw), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("synth") / "market"
    summary = generate_market(out, SynthConfig())
    return out, summary, load_truth(out)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate_market(tmp_path / "a", SMALL)
    generate_market(tmp_path / "b", SMALL)
    generate_market(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 1}))
    for rel in [
        "transactions.parquet",
        "products.parquet",
        "customers.parquet",
        "truth/choice_truth.parquet",
        "truth/customers_truth.parquet",
        "truth/wholesale_truth.parquet",
    ]:
        a, b = pl.read_parquet(tmp_path / "a" / rel), pl.read_parquet(tmp_path / "b" / rel)
        assert a.equals(b), rel
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ta = pl.read_parquet(tmp_path / "a" / "transactions.parquet")
    tc = pl.read_parquet(tmp_path / "c" / "transactions.parquet")
    assert not ta.equals(tc)


def test_canonical_schema_and_values(market):
    out, summary, _ = market
    tx = pl.read_parquet(out / "transactions.parquet")
    assert dict(tx.schema) == CANONICAL_TX
    assert tx["txn_id"].n_unique() == tx.height
    assert tx["quantity"].min() >= 1
    assert tx["unit_price"].min() >= 0 and tx["list_price"].min() >= 0
    assert (tx["unit_price"] <= tx["list_price"] + 1e-9).all()  # discounts only lower the price
    assert set(tx["channel"].unique()) == {"retail", "wholesale"}
    assert tx.null_count().sum_horizontal().item() == 0
    assert summary.n_retail_lines + summary.n_wholesale_lines == tx.height
    # wholesale buyers are W.., retail customers C..
    assert tx.filter(pl.col("channel") == "wholesale")["customer_id"].str.starts_with("W").all()
    assert tx.filter(pl.col("channel") == "retail")["customer_id"].str.starts_with("C").all()
    # one basket = one customer and one timestamp
    per_basket = tx.group_by("basket_id").agg(pl.col("customer_id").n_unique(), pl.col("ts").n_unique())
    assert per_basket["customer_id"].max() == 1 and per_basket["ts"].max() == 1

    prods = pl.read_parquet(out / "products.parquet")
    assert prods.columns[:5] == ["product_id", "category", "brand", "department", "description"]
    assert {"size", "quality_tier"} <= set(prods.columns)
    assert prods["product_id"].n_unique() == prods.height == summary.n_products
    assert prods.select("product_id", "category", "brand").null_count().sum_horizontal().item() == 0
    custs = pl.read_parquet(out / "customers.parquet")
    assert custs.columns[:2] == ["customer_id", "segment"]
    assert custs["customer_id"].n_unique() == custs.height
    # every line refers to a known product and customer
    assert tx.join(prods, on="product_id", how="anti").height == 0
    assert tx.join(custs, on="customer_id", how="anti").height == 0


def test_truth_kept_apart(market):
    out, _, truth = market
    top = sorted(p.name for p in out.iterdir())
    assert top == ["customers.parquet", "products.parquet", "transactions.parquet", "truth"]
    secret = {
        "price_sensitivity",
        "discount_sensitivity",
        "loss_aversion",
        "brand_loyalty",
        "basket_size",
        "utility",
        "quality",
        "latent_quality",
        "trip_rate",
    }
    for name in ("transactions", "products", "customers"):
        assert not secret & set(pl.read_parquet(out / f"{name}.parquet").columns), name
    assert {"customers_truth", "choice_truth", "product_truth", "wholesale_truth", "wholesale_rule"} <= set(
        truth
    )
    assert (out / "truth" / "README.txt").read_text().startswith("Ground truth")
    ct = truth["customers_truth"]
    assert (ct["price_sensitivity"] > 0).all() and (ct["loss_aversion"] >= 1).all()


def test_dense_and_sparse_categories(market):
    """Episodes (retail basket x category) in the protocol's train period (before the last 12 weeks)."""
    out, summary, _ = market
    tx = pl.read_parquet(out / "transactions.parquet").filter(pl.col("channel") == "retail")
    prods = pl.read_parquet(out / "products.parquet").select("product_id", "category")
    end = tx["ts"].max().date() + timedelta(days=1)
    train_end = end - timedelta(days=84)
    eps = (
        tx.with_columns(pl.col("ts").min().over("basket_id").dt.date().alias("day"))
        .join(prods, on="product_id")
        .filter(pl.col("day") < train_end)
        .select("basket_id", "category")
        .unique()
        .group_by("category")
        .len()
    )
    counts = dict(eps.iter_rows())
    assert all(counts.get(c, 0) >= 1000 for c in summary.dense_categories)
    sparse_small = [c for c in summary.sparse_categories if counts.get(c, 0) < 100]
    assert len(sparse_small) >= 8  # many categories with < 100 train episodes (test_sparse)
    assert all(counts.get(c, 0) >= 5 for c in summary.sparse_categories)  # but not empty


def test_choices_follow_the_logit(market):
    out, _, truth = market
    ch = truth["choice_truth"]
    # one chosen product per (basket, category), and it is what the transactions say was bought
    per_ep = ch.group_by("basket_id", "category").agg(pl.col("chosen").sum())
    assert (per_ep["chosen"] == 1).all()
    tx = pl.read_parquet(out / "transactions.parquet").filter(pl.col("channel") == "retail")
    bought = tx.select("basket_id", "product_id").unique()
    chosen = ch.filter(pl.col("chosen")).select("basket_id", "product_id")
    assert chosen.sort(pl.all()).equals(bought.sort(pl.all()))
    # the true argmax is chosen as often as its mean true probability says (within 4 standard errors)
    p = ch.with_columns(
        (pl.col("utility") - pl.col("utility").max().over("basket_id", "category")).exp().alias("e")
    ).with_columns((pl.col("e") / pl.col("e").sum().over("basket_id", "category")).alias("p"))
    top = p.filter(pl.col("utility") == pl.col("utility").max().over("basket_id", "category"))
    expected, observed = top["p"].mean(), top["chosen"].cast(pl.Float64).mean()
    se = math.sqrt(expected * (1 - expected) / top.height)
    assert abs(observed - expected) < 4 * se, (observed, expected, se)
    # calibration in bins of true probability, over all shelf options
    binned = (
        p.with_columns((pl.col("p") * 5).floor().clip(0, 4).alias("bin"))
        .group_by("bin")
        .agg(pl.col("p").mean(), pl.col("chosen").cast(pl.Float64).mean().alias("share"), pl.len())
    )
    for _, pm, share, n in binned.filter(pl.col("len") > 500).iter_rows():
        assert abs(share - pm) < 4 * math.sqrt(pm * (1 - pm) / n) + 0.005


def test_utility_matches_the_documented_model(market):
    """Recompute V_ij from customers_truth, product_truth and the shelf prices (TRUTH_README's formula)."""
    out, _, truth = market
    cfg = truth["config"]
    ch = truth["choice_truth"]
    prod = truth["product_truth"].select("product_id", "brand", "quality")
    cust = truth["customers_truth"]
    first_brand_day = (
        ch.filter(pl.col("chosen"))
        .join(prod, on="product_id")
        .group_by("customer_id", "category", "brand")
        .agg(pl.col("day").min().alias("first_day"))
    )
    x = (
        ch.join(prod, on="product_id")
        .join(cust, on="customer_id")
        .join(first_brand_day, on=["customer_id", "category", "brand"], how="left")
        .with_columns(
            (pl.col("first_day") < pl.col("day")).fill_null(False).cast(pl.Float64).alias("brand_before"),
            (pl.col("price").log() - pl.col("ref_price").log()).alias("gap"),
        )
    )
    v = (
        x["quality"]
        + x["brand_loyalty"] * x["brand_before"]
        - x["price_sensitivity"] * x["price"].log()
        + x["discount_sensitivity"] * (1 - x["price"] / x["list_price"])
        + cfg["reference_weight"] * ((-x["gap"]).clip(0, None) - x["loss_aversion"] * x["gap"].clip(0, None))
    )
    # prices are rounded to cents, so the depth term differs from the raw draw by < 0.01 * delta
    assert np.abs((v - x["utility"]).to_numpy()).max() < 0.05
    # a product bought before has the customer's last paid price as reference
    last = (
        ch.filter(pl.col("chosen"))
        .sort("day")
        .group_by("customer_id", "product_id")
        .agg(pl.col("day").first().alias("d0"), pl.col("price").first().alias("p0"))
    )
    nxt = ch.join(last, on=["customer_id", "product_id"]).filter(pl.col("day") > pl.col("d0"))
    first_after = nxt.sort("day").group_by("customer_id", "product_id").first()
    assert np.allclose(first_after["ref_price"], first_after["p0"])


def test_true_choice_probs_and_oracle_by_hand():
    truth = pl.DataFrame(
        {
            "basket_id": ["b1"] * 3 + ["b2"] * 2,
            "category": ["X"] * 5,
            "product_id": ["A", "B", "C", "A", "B"],
            "utility": [0.0, math.log(2), math.log(3), 1.0, 1.0],
        }
    )
    # b1 with options A, C and D (D not on the shelf that day); b2 with A, B (a tie)
    opts = pl.DataFrame(
        {"episode_id": ["b1|X", "b1|X", "b1|X", "b2|X", "b2|X"], "product_id": ["A", "C", "D", "A", "B"]}
    )
    p = true_choice_probs(truth, opts)
    got = {(r["episode_id"], r["product_id"]): r["true_prob"] for r in p.iter_rows(named=True)}
    assert got[("b1|X", "A")] == pytest.approx(1 / 4)
    assert got[("b1|X", "C")] == pytest.approx(3 / 4)
    assert got[("b1|X", "D")] == 0.0
    assert got[("b2|X", "A")] == pytest.approx(0.5)
    # b1: top is C with 3/4; b2: the tie shares the top: 1/2 * 1/2 + 1/2 * 1/2 = 1/2
    assert oracle_hit1(truth, opts) == pytest.approx((3 / 4 + 1 / 2) / 2)
    # basket_id + category columns work too; an episode unknown to the truth is left out
    opts2 = pl.DataFrame(
        {"basket_id": ["b1", "b1", "zz"], "category": ["X", "X", "X"], "product_id": ["A", "B", "A"]}
    )
    assert oracle_hit1(truth, opts2) == pytest.approx(2 / 3)


def test_wholesale_rule_by_hand():
    # forecast 10/week, lead 2 + review 1 weeks, safety 20 %: order-up-to 36; stock 20, noise 0.4 -> 16
    q = wholesale_order_qty(
        np.array([10.0, 10.0]), np.array([20.0, 50.0]), np.array([2, 2]), np.array([0.4, 0.0]), 1, 0.2
    )
    assert q.tolist() == [16, 0]


def test_wholesale_rule_reproduced_from_truth(market):
    out, _, truth = market
    rule, wt = truth["wholesale_rule"], truth["wholesale_truth"]
    assert json.loads((out / "truth" / "wholesale_rule.json").read_text()) == rule
    # the rule recomputed from its stated inputs and parameters gives every order exactly
    target = (
        wt["forecast_demand"] * (wt["lead_time_weeks"] + rule["review_weeks"]) * (1 + rule["safety_factor"])
    )
    recomputed = (target - wt["stock"] + wt["noise"]).round().clip(0, None).cast(pl.Int64)
    assert (recomputed == wt["order_qty"]).all()
    # the forecast is the mean of the previous forecast_weeks demands, and stock follows its recursion
    k = rule["forecast_weeks"]
    s = wt.sort("customer_id", "product_id", "week")
    g = s.group_by("customer_id", "product_id", maintain_order=True)
    chk = s.with_columns(
        pl.col("stock").shift(-1).over("customer_id", "product_id").alias("next_stock"),
        pl.col("week").shift(-1).over("customer_id", "product_id").alias("next_week"),
        pl.col("demand").shift(1).rolling_mean(k).over("customer_id", "product_id").alias("fc"),
        pl.col("week").shift(k).over("customer_id", "product_id").alias("week_k"),
    )
    cont = chk.filter(pl.col("next_week") == pl.col("week") + 1)
    assert np.allclose(cont["next_stock"], cont["stock"] + cont["order_qty"] - cont["demand"])
    full = chk.filter(pl.col("week_k") == pl.col("week") - k)
    assert full.height > 0 and np.allclose(full["fc"], full["forecast_demand"])
    assert g.len().height > 0
    # the noise is small against the forecast, as the rule says
    assert (wt["noise"].abs() <= 6 * rule["order_noise_rel"] * wt["forecast_demand"] + 1e-9).all()
    # positive orders are exactly the wholesale lines of the transactions
    tx = pl.read_parquet(out / "transactions.parquet").filter(pl.col("channel") == "wholesale")
    orders = wt.filter(pl.col("order_qty") > 0).select(
        "basket_id", "customer_id", "product_id", quantity="order_qty"
    )
    lines = tx.select("basket_id", "customer_id", "product_id", "quantity")
    assert orders.sort(pl.all()).equals(lines.sort(pl.all()))


def test_main_synth_overrides_and_unknown_field(tmp_path):
    s = main_synth(tmp_path / "m", show_progress=True, n_customers=20, n_days=35, n_wholesale_buyers=1)
    assert s.n_customers == 20 and s.n_days == 35
    tx = pl.read_parquet(tmp_path / "m" / "transactions.parquet")
    assert (tx["ts"].max() - tx["ts"].min()).days < 35
    with pytest.raises(ValueError, match="unknown SynthConfig field"):
        main_synth(tmp_path / "n", n_customer=3)


def test_asset_config_mirrors_synth_config():
    import dataclasses

    from assets.synthetic import SyntheticMarketConfig, synth_config_from

    fields = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    asset_fields = SyntheticMarketConfig.model_fields
    assert set(asset_fields) == set(fields) | {"out_dir"}
    for name, default in fields.items():
        assert asset_fields[name].default == default, name
    assert synth_config_from(SyntheticMarketConfig()) == SynthConfig()


def test_synthetic_market_asset(tmp_path, data_dir):
    import dagster as dg

    from assets.synthetic import SyntheticMarketConfig, synthetic_market

    result = dg.materialize(
        [synthetic_market],
        run_config=dg.RunConfig(
            {"synthetic_market": SyntheticMarketConfig(n_customers=30, n_days=56, n_wholesale_buyers=1)}
        ),
    )
    assert result.success
    md = result.asset_materializations_for_node("synthetic_market")[0].metadata
    landing = data_dir / "landing" / "synthetic"
    tx = pl.read_parquet(landing / "transactions.parquet")
    assert md["n_retail_lines"].value == tx.filter(pl.col("channel") == "retail").height
    assert md["n_wholesale_lines"].value == tx.filter(pl.col("channel") == "wholesale").height
    assert md["n_customers"].value == 30
    assert md["transactions_size_bytes"].value == (landing / "transactions.parquet").stat().st_size
    assert (landing / "truth" / "choice_truth.parquet").exists()


def test_canonical_mapping_ingests_every_row(tmp_path):
    """The files load through the built-in `canonical` mapping with nothing quarantined or lost."""
    import duckdb

    from assets.ingest.logic import ingest_source
    from assets.ingest.mapping import builtin_mapping_path

    out = tmp_path / "landing" / "synthetic"
    generate_market(out, SMALL)
    (out / "mapping.yaml").write_text(builtin_mapping_path("canonical").read_text(encoding="utf-8"))
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        reports = ingest_source(conn, str(out / "mapping.yaml"), progress=False)
        assert {r.status for r in reports} == {"loaded"}
        assert sum(r.rows_quarantined for r in reports) == 0
        for table, name in (
            ("raw_transactions", "transactions"),
            ("products", "products"),
            ("customers", "customers"),
        ):
            n = conn.execute(f"select count(*) from {table}").fetchone()[0]
            assert n == pl.read_parquet(out / f"{name}.parquet").height, table
        attrs = conn.execute("select attributes from products limit 1").fetchone()[0]
        assert "quality_tier" in attrs and "size" in attrs
