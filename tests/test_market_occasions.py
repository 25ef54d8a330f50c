"""Market occasions and consideration sets (assets/market/occasions.py, sql/market/).

The hand-made warehouse below goes through the real features stage (decision episodes, option features,
splits); every expected set is worked out in the comments. Day n means 2024-01-01 (a Monday) + n days; the
last day is 99, so end = 100 and the test period is days [44, 100). The test period's first occasion is on day
45 (ISO week 2024-W07, days 42..48 = week 1; days 49..55 = week 2).

The focus occasion t60|A: customer c1 on day 60 buys 2 x A05. c1's purchases of category A before day 60:
A03 x3 (days 10, 20, 30), A07 x2 (40, 50), A02 x2 (5, 45), A08 x1 (50), A09 x1 (50), A04 x1 (day 12: two lines
of one basket, 5 units: one purchase), and A11 on day 60 itself (an earlier basket: not history). Own order:
A03, A07 (2, latest 50), A02 (2, latest 45), A08, A09 (1, latest 50: product_id), A04 (1, latest 12).
Purchases of A in days 32..59 (d-28..d-1): A10 4 (c2: 35, 40, 45, 55), A01 3 (34, 37, 39; 31 is outside),
A06 3 (32, 36, 38), A07 2, A02 1, A08 1, A09 1; A12 none (5 on day 31, 5 on day 60, wholesale on 50).
Best-seller order: A10, A01, A06, A07, A02, A08, A09.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb as ddb
import polars as pl
import pytest

from assets.features import logic as features
from assets.market.occasions import build_market_occasions, market_summary, stage_scenario_products

BASE = datetime(2024, 1, 1)


def ts(day: int, hh: int = 12) -> datetime:
    return BASE + timedelta(days=day, hours=hh)


def line(basket, customer, day, product, qty=1, price=1.0, list_price=None, hh=12, channel="retail"):
    return (basket, customer, ts(day, hh), product, qty, price, list_price or price, channel)


LINES = [
    # c1, the focus customer
    line("c1_05", "c1", 5, "A02", price=1.2, list_price=1.5),
    *[line(f"c1_{d}", "c1", d, "A03", price=1.3, list_price=1.5) for d in (10, 20, 30)],
    line("c1_12", "c1", 12, "A04", 3, 1.4, 1.6),
    line("c1_12", "c1", 12, "A04", 2, 1.4, 1.6),
    line("c1_40", "c1", 40, "A07", price=1.7, list_price=2.0),
    line("c1_45", "c1", 45, "A02", price=1.2, list_price=1.5),
    line("c1_50", "c1", 50, "A07", price=1.7, list_price=2.0),
    line("c1_50", "c1", 50, "A08", price=1.8, list_price=2.0),
    line("c1_50", "c1", 50, "A09", price=1.9, list_price=2.0),
    line("c1_60a", "c1", 60, "A11", price=2.1, list_price=2.2, hh=8),
    line("t60", "c1", 60, "A05", 2, 1.5, 1.8),
    # the other customers of category A
    *[line(f"c2_{d}", "c2", d, "A10", price=2.0) for d in (35, 40, 45, 55)],
    *[line(f"c2_{d}", "c2", d, "A01", price=1.1, list_price=1.2) for d in (31, 34)],
    *[line(f"c3_{d}", "c3", d, "A06", price=1.6) for d in (32, 36, 38)],
    *[line(f"c3_{d}", "c3", d, "A01", price=1.1, list_price=1.2) for d in (37, 39)],
    *[line(f"c4_31_{k}", "c4", 31, "A12", price=0.9) for k in range(5)],
    *[line(f"c4_60_{k}", "c4", 60, "A12", price=0.9) for k in range(5)],
    line("c4_99", "c4", 99, "A10", price=2.0),  # the last day (a size-1 set: no episode)
    line("w50", "c9", 50, "A12", 100, 0.5, channel="wholesale"),
    # category B: occasions O1 bB50, O2 bB55, O3 bB70, O4 bB80 (sets worked out in test_coverage)
    line("bB20", "c2", 20, "B1", price=3.0),
    line("bB25", "c3", 25, "B2", price=2.0, list_price=2.5),
    line("bB30", "c3", 30, "B2", price=2.0, list_price=2.5),
    line("bB50", "c2", 50, "B1", 2, 3.0),
    line("bB55", "c5", 55, "B2", price=2.2, list_price=2.5),
    line("bB70", "c3", 70, "B3", price=4.0),
    line("bB80", "c2", 80, "B2", 3, 2.1, 2.5),
]
PRODUCTS = [
    *[(f"A{i:02d}", "A", "X" if i <= 6 else "Y") for i in range(1, 14)],  # A13 is never sold
    *[(f"B{i}", "B", "Z") for i in (1, 2, 3)],
]
OWN_T60 = ["A03", "A07", "A02", "A08", "A09", "A04"]
FEATURES = [
    "pop_28d",
    "pop_total",
    "is_new",
    "cust_product_purchases",
    "cust_brand_purchases",
    "cust_category_purchases",
    "days_since_cust_purchase",
    "discount_depth",
    "log_price",
    "rel_price",
    "ref_price",
    "ref_price_gap",
    "cust_mean_qty",
    "prod_mean_qty_28d",
]


def make_warehouse(path: Path) -> ddb.DuckDBPyConnection:
    """raw_transactions, products, customers, then the features stage (episodes, features, splits)."""
    conn = ddb.connect(str(path))
    conn.execute(
        "create table raw_transactions (txn_id varchar, basket_id varchar, ts timestamp, customer_id varchar, "
        "product_id varchar, quantity bigint, unit_price double, list_price double, channel varchar)"
    )
    conn.executemany(
        "insert into raw_transactions values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(f"t{i}", b, t, c, p, q, u, lp, ch) for i, (b, c, t, p, q, u, lp, ch) in enumerate(LINES)],
    )
    conn.execute(
        "create table products (product_id varchar, category varchar, brand varchar, is_merchandise boolean)"
    )
    conn.executemany("insert into products values (?, ?, ?, true)", PRODUCTS)
    conn.execute("create table customers as select 'c' || range::varchar as customer_id from range(1, 10)")
    features.configure_connection(conn, threads=2, memory_limit="1GB")
    features.build_decision_episodes(conn)
    features.build_option_features(conn)
    features.build_episode_splits(conn)
    return conn


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    c = make_warehouse(tmp_path_factory.mktemp("market") / "w.duckdb")
    build_market_occasions(c)
    yield c
    c.close()


def option_set(conn, occasion_id: str) -> list[tuple[str, str]]:
    return conn.execute(
        "select product_id, source from market_options where occasion_id = $o order by set_rank",
        {"o": occasion_id},
    ).fetchall()


def test_occasions_are_the_test_episodes(conn):
    got = conn.execute(
        "select occasion_id, actual_product_id, actual_quantity from market_occasions"
    ).fetchall()
    want = conn.execute(
        "select episode_id, chosen_product_id, quantity from decision_episodes join episode_splits using (episode_id) "
        "where period = 'test'"
    ).fetchall()
    assert sorted(got) == sorted(want)
    assert ("t60|A", "A05", 2) in got and len(got) == 15  # 11 of A (day 99's set has size 1), 4 of B
    weeks = dict(
        conn.execute("select occasion_id, week_index || ' ' || iso_week from market_occasions").fetchall()
    )
    assert (weeks["c1_45|A"], weeks["bB55|B"], weeks["t60|A"]) == ("1 2024-W07", "2 2024-W08", "3 2024-W09")


def test_own_products_first_then_best_sellers(conn):
    # defaults (M = 20, own_max = 10): the 6 own products, then the best sellers not owned (A10, A01, A06); no
    # other product of A sold in days 32..59, so the set stays at 9. A11 (day 60 itself) and A12 (bought 5 times
    # on day 60 and 5 times on day 31) are not there: history is strictly before d.
    want = [(p, "own") for p in OWN_T60] + [(p, "best_seller") for p in ("A10", "A01", "A06")]
    assert option_set(conn, "t60|A") == want
    ranks = conn.execute(
        "select list(set_rank order by set_rank) from market_options where occasion_id = 't60|A'"
    )
    assert ranks.fetchall()[0][0] == list(range(1, 10))


@pytest.mark.parametrize(
    ("m_options", "own_max", "want"),
    [
        # own capped at 4, then best sellers up to M = 7
        (7, 4, OWN_T60[:4] + ["A10", "A01", "A06"]),
        # own capped at 2 (A03, A07): A02 etc. are no own options now; best sellers skip A07 only
        (5, 2, ["A03", "A07", "A10", "A01", "A06"]),
        (3, 2, ["A03", "A07", "A10"]),
        (2, 0, ["A10", "A01"]),  # best sellers only
    ],
)
def test_best_sellers_fill_up_to_m(tmp_path, m_options, own_max, want):
    c = make_warehouse(tmp_path / "w.duckdb")
    build_market_occasions(c, m_options=m_options, own_max=own_max)
    assert [p for p, _ in option_set(c, "t60|A")] == want
    assert c.execute("select max(n_options) from market_occasions").fetchall()[0][0] <= m_options
    c.close()


def test_set_never_depends_on_the_actual_choice(tmp_path, conn):
    """Swapping the actual product of two occasions changes in_set_actual only."""
    c = make_warehouse(tmp_path / "w.duckdb")
    c.execute("update decision_episodes set chosen_product_id = 'A03' where episode_id = 't60|A'")
    c.execute(
        "update decision_episodes set chosen_product_id = 'B1', quantity = 5 where episode_id = 'bB70|B'"
    )
    build_market_occasions(c)
    before = conn.sql("select * exclude (in_set_actual) from market_options order by all").pl()
    after = c.sql("select * exclude (in_set_actual) from market_options order by all").pl()
    assert after.equals(before, null_equal=True)
    actual = c.execute("select product_id from market_options where in_set_actual order by all").fetchall()
    assert ("A03",) in actual and ("B1",) in actual
    assert c.execute("select actual_in_set from market_occasions where occasion_id = 't60|A'").fetchall() == [
        (True,)
    ]
    c.close()


def test_features_equal_option_features(conn):
    """An (occasion, product) pair that is also an episode option has its price, list_price and every feature of
    option_features, rel_price aside (it compares with the mean price of the set, and the sets differ)."""
    same = [f"m.{c} is not distinct from f.{c}" for c in FEATURES if c != "rel_price"]
    same += ["m.price is not distinct from o.price", "m.list_price is not distinct from o.list_price"]
    n, n_same = conn.execute(
        f"""
        select count(*), count(*) filter (where {" and ".join(same)})
        from market_options as m
        join episode_options as o on o.episode_id = m.occasion_id and o.product_id = m.product_id
        join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
        """
    ).fetchall()[0]
    assert n >= 10 and n_same == n
    cols = [r[0] for r in conn.execute("describe option_features").fetchall()]
    assert set(cols) - {"episode_id", "product_id"} <= {
        r[0] for r in conn.execute("describe market_options").fetchall()
    }
    # an option outside episode_options, worked out by hand: A03 for t60|A (bought by c1 on days 10, 20, 30;
    # not sold in days 46..74, so its price is its mean over all purchases: price_basis 'overall')
    row = conn.execute(
        """
        select price, price_basis, pop_28d, pop_total, is_new, cust_product_purchases, cust_brand_purchases,
               days_since_cust_purchase, ref_price
        from market_options where occasion_id = 't60|A' and product_id = 'A03'
        """
    ).fetchall()[0]
    assert row[0] == pytest.approx(1.3) and row[1:8] == ("overall", 0, 3, False, 3, 6, 30.0)
    assert row[8] == pytest.approx(1.3)
    # A10: mean over days 46..74 leaving out the basket: day 55 at 2.0; bought 4 times in days 32..59
    row = conn.execute(
        "select price, price_basis, pop_28d from market_options where occasion_id = 't60|A' and product_id = 'A10'"
    ).fetchall()[0]
    assert row == (pytest.approx(2.0), "window", 4)


def test_scenario_products_are_added(tmp_path):
    c = make_warehouse(tmp_path / "w.duckdb")
    c.execute(
        "create table scenario as select * from (values ('A', 'A13', 2.5, 3.0), ('A', 'A05', null, null), "
        "('A', 'A10', null, null)) t(category, product_id, price, list_price)"
    )
    build_market_occasions(c, scenario_products="scenario")
    got = c.execute(
        "select product_id, source, set_rank, price, list_price, price_basis, in_set_actual, is_new "
        "from market_options where occasion_id = 't60|A' and set_rank >= 7 order by set_rank"
    ).fetchall()
    assert got == [
        ("A10", "best_seller", 7, pytest.approx(2.0), pytest.approx(2.0), "window", False, False),  # once
        ("A01", "best_seller", 8, pytest.approx(1.1), pytest.approx(1.2), "overall", False, False),
        ("A06", "best_seller", 9, pytest.approx(1.6), pytest.approx(1.6), "overall", False, False),
        # the actual A05, sold nowhere else around day 60: the price paid in this basket
        ("A05", "scenario", 10, pytest.approx(1.5), pytest.approx(1.8), "basket", True, True),
        ("A13", "scenario", 11, 2.5, 3.0, "scenario", False, True),  # never sold: the staged price
    ]
    n_b = "select count(*) from market_options join market_occasions using (occasion_id) where source = 'scenario' "
    assert c.execute(n_b + "and category = 'B'").fetchall() == [(0,)]  # only occasions of their category
    assert c.execute(n_b + "and category = 'A'").fetchall() == [(22,)]  # A05 and A13 in each of the 11
    assert market_summary(c)["coverage_by_source"]["scenario"] > 0
    with pytest.raises(ValueError, match="category and product_id"):
        c.execute("create table bad as select 'A13' as product_id")
        stage_scenario_products(c, "bad")
    c.close()


def test_coverage_and_summary(conn):
    # B (M = 20): O1 bB50 (c2, day 50): own B1 (day 20), best of 22..49: B2 -> {B1, B2}, actual B1 x2: in.
    # O2 bB55 (c5, no history): best of 27..54: B1 (50) and B2 (30) tie at 1 -> {B1, B2}, actual B2 x1: in.
    # O3 bB70 (c3): own B2 (25, 30), best of 42..69: B1, B2 -> {B2, B1}, actual B3 x1: out.
    # O4 bB80 (c2): own B1, best of 52..79: B2 (55), B3 (70) -> {B1, B2, B3}, actual B2 x3: in.
    assert option_set(conn, "bB50|B") == [("B1", "own"), ("B2", "best_seller")]
    assert option_set(conn, "bB55|B") == [("B1", "best_seller"), ("B2", "best_seller")]
    assert option_set(conn, "bB70|B") == [("B2", "own"), ("B1", "best_seller")]
    assert option_set(conn, "bB80|B") == [("B1", "own"), ("B2", "best_seller"), ("B3", "best_seller")]
    s = market_summary(conn)
    by_cat = {r["category"]: r for r in s["per_category"]}
    assert by_cat["B"]["coverage"] == pytest.approx(6 / 7) and by_cat["B"]["occasions"] == 4
    assert by_cat["B"]["mean_options"] == pytest.approx(9 / 4)
    occ = conn.sql("select * from market_occasions").pl()
    opts = conn.sql("select occasion_id, product_id from market_options").pl()
    inside = occ.join(
        opts, left_on=["occasion_id", "actual_product_id"], right_on=["occasion_id", "product_id"]
    )
    assert s["coverage"] == pytest.approx(inside["actual_quantity"].sum() / occ["actual_quantity"].sum())
    assert s["occasions"] == occ.height == 15 and s["option_rows"] == opts.height
    assert s["mean_options"] == pytest.approx(opts.height / occ.height)
    assert sum(s["coverage_by_source"].values()) == pytest.approx(s["coverage"])


def test_filters(tmp_path):
    c = make_warehouse(tmp_path / "w.duckdb")

    def occasions(**kw) -> list[str]:
        build_market_occasions(c, **kw)
        return [r[0] for r in c.execute("select occasion_id from market_occasions order by all").fetchall()]

    assert occasions(categories=["B"], weeks=2) == ["bB50|B", "bB55|B"]
    assert all(o.endswith("|A") for o in occasions(categories=1))  # A: 12 test units, B: 7
    assert occasions(customers=["c5", "c3"]) == ["bB55|B", "bB70|B"]
    draw = sorted(["c1", "c2", "c3", "c4", "c5"], key=lambda x: hashlib.md5(f"0|{x}".encode()).hexdigest())[
        :2
    ]
    occasions(customers=2)
    got = c.execute("select distinct customer_id from market_occasions order by all").fetchall()
    assert [r[0] for r in got] == sorted(draw)
    assert occasions(period="val")  # other periods work too
    with pytest.raises(ValueError, match="own_max"):
        build_market_occasions(c, m_options=5, own_max=6)
    c.close()


# ----------------------------------------------------------------------------- the synthetic market


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The default synthetic market (malles synth: 300 customers, 52 weeks), through the features stage."""
    from assets.synthetic.generator import SynthConfig, generate_market

    root = tmp_path_factory.mktemp("synth")
    generate_market(root / "synth", SynthConfig())
    c = ddb.connect(str(root / "s.duckdb"))
    tx, pr = (str(root / "synth" / f"{n}.parquet") for n in ("transactions", "products"))
    c.execute("create table raw_transactions as select * from read_parquet($f)", {"f": tx})
    c.execute(
        "create table products as select product_id, category, brand, true as is_merchandise from read_parquet($f)",
        {"f": pr},
    )
    features.configure_connection(c, threads=2, memory_limit="2GB")
    features.build_decision_episodes(c)
    features.build_option_features(c)
    features.build_episode_splits(c)
    yield c
    c.close()


def reference_sets(purchases: pl.DataFrame, occ: pl.DataFrame, m: int, own_max: int) -> dict[str, list[str]]:
    """The protocol's sets written plainly in Python, for a few occasions."""
    out = {}
    for o in occ.iter_rows(named=True):
        cat = purchases.filter((pl.col("category") == o["category"]) & (pl.col("day") < o["day"]))
        own = (
            cat.filter(pl.col("customer_id") == o["customer_id"])
            .group_by("product_id")
            .agg(pl.len().alias("n"), pl.col("day").max().alias("last"))
            .sort(["n", "last", "product_id"], descending=[True, True, False])
            .head(own_max)["product_id"]
            .to_list()
        )
        recent = cat.filter(pl.col("day") >= o["day"] - timedelta(days=28))
        best = recent.group_by("product_id").len().sort(["len", "product_id"], descending=[True, False])
        out[o["occasion_id"]] = own + [p for p in best["product_id"] if p not in own][: m - len(own)]
    return out


def test_synthetic_market_sets_features_and_timing(synthetic):
    c = synthetic
    start = time.perf_counter()
    timings = build_market_occasions(c, m_options=8, own_max=5)
    seconds = time.perf_counter() - start
    s = market_summary(c)
    print(
        f"\nmarket on the synthetic market (test period, M=8, own_max=5): {seconds:.2f} s for "
        f"{s['occasions']} occasions, {s['option_rows']} options (mean {s['mean_options']:.2f}), "
        f"coverage {s['coverage']:.3f}; slowest steps "
        + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])[:3])
    )
    assert s["occasions"] > 3000 and 0.5 < s["coverage"] <= 1 and s["max_options"] <= 8
    # the sets equal a plain Python reading of the protocol on 300 occasions
    occ = c.sql("select * from market_occasions order by md5(occasion_id) limit 300").pl()
    purchases = c.sql(
        "select customer_id, category, product_id, day from episode_purchases where is_merchandise"
    ).pl()
    want = reference_sets(purchases, occ, m=8, own_max=5)
    got = c.sql(
        "select occasion_id, list(product_id order by set_rank) as s from market_options group by all"
    ).pl()
    got = dict(zip(got["occasion_id"], got["s"].to_list(), strict=True))
    assert {o: got.get(o, []) for o in want} == want
    # features equal option_features wherever the pair is an episode option (rel_price aside)
    same = " and ".join(f"m.{f} is not distinct from x.{f}" for f in FEATURES if f != "rel_price")
    n, n_same = c.execute(
        f"""
        select count(*), count(*) filter (where {same} and m.price = o.price and m.list_price = o.list_price)
        from market_options as m
        join episode_options as o on o.episode_id = m.occasion_id and o.product_id = m.product_id
        join option_features as x on x.episode_id = o.episode_id and x.product_id = o.product_id
        """
    ).fetchall()[0]
    assert n > 10_000 and n_same == n
