"""The market simulation's occasions and consideration sets (docs/evaluation-protocol.md "Market-level
evaluation"); plain functions, no Dagster here.

- market_occasions: the decision episodes of a period (decision_episodes x episode_splits), optionally limited
  to the first ISO weeks, some categories and some customers; the product and the quantity are what a
  simulator predicts, the actual ones are kept for scoring.
- market_options: per occasion a consideration set that never looks at the actual choice: the customer's own
  products of the category bought before d, then the category's best sellers of the 28 days before d, up to M,
  plus any scenario product; with the protocol's option prices and every column of option_features.

The features are not copied: the market stages its occasions and options as the temp views the features
stage's steps read (feature_source_episodes, feature_source_options) and runs the same FEATURE_STEPS
(assets/features/logic.py), whose temp view feature_rows defines option_features too. Option prices reuse the
features stage's running totals (sql/features/create_product_day_totals.sql) with the arithmetic of
sql/features/episode_options.sql, so an (occasion, product) pair that is also an episode option gets the same
price, list_price and features (rel_price aside: it compares with the mean price of the set, and the sets
differ). SQL: sql/market/*.sql.

Readings that needed a choice:
- Occasions are the decision episodes, so a (basket, category) whose shelf held one product (a size-1 choice
  set, dropped from decision_episodes) is no occasion.
- "ISO week": '%G-W%V' of day d; week_index counts calendar ISO weeks from the week of the period's first
  occasion (week 1 is partial when the period does not start on a Monday; "the first N weeks" = week_index <=
  N). Filters apply in the order weeks, categories, customers.
- Own products and best sellers count merchandise purchases ((basket, product) pairs, episode_purchases) of the
  occasion's category on days before d; a purchase on day d itself never counts, even in an earlier basket.
- Option prices keep the protocol's window d - 14 .. d + 14 (the shelf price around the occasion); an option
  with no purchase left in it and none in the basket (an own product off the shelf around d, a best seller of
  the last four weeks not sold since) takes its mean over all purchases, the rule episode_options keeps for
  that edge, and price_basis = 'overall' marks it.
- A set may be smaller than M (few products sold in the category lately), even empty (n_options = 0: a
  customer new to a category without a sale in the 28 days before d); all its units then go to "other".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from assets.features.logic import drop_feature_temps, drop_temp, run_feature_steps
from assets.features.logic import run_sql as run_features_sql
from resources.warehouse import quote_ident, scalar, table_exists

PERIODS = ("train", "val", "test")
SOURCES = ("own", "best_seller", "scenario")
MARKET_TEMP_TABLES = (
    "market_occasion_rows",
    "market_scenario_products",
    "market_option_sets",
    "market_option_candidates",
    "option_products",
    "product_day_totals",
)
REQUIRED_TABLES = ("decision_episodes", "episode_splits", "episode_purchases", "products")


def run_market_sql(conn, name: str, params: dict[str, Any] | None = None) -> float:
    """Run sql/market/<name>.sql with the params it names (others are ignored); returns seconds taken."""
    from assets.features.logic import run_sql_file

    return run_sql_file(conn, f"market/{name}", params)


def _list_or_top(value, what: str) -> tuple[list[str] | None, int | None]:
    """None -> no filter; an int N -> the top / sampled N; a sequence -> exactly those ids (as text)."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise TypeError(f"{what}: give None, an int or a list of ids, not a bool")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{what}: an int must be at least 1, got {value}")
        return None, int(value)
    if isinstance(value, str | bytes):
        raise TypeError(f"{what}: give a list of ids, not one string")
    if isinstance(value, Sequence):
        return [str(v) for v in value], None
    raise TypeError(f"{what}: give None, an int or a list of ids, got {type(value).__name__}")


def stage_scenario_products(conn, table: str | None = None) -> None:
    """Stage a scenario's extra options as temp table market_scenario_products.

    `table` names a table or view with columns category and product_id (each product is added to every occasion
    of its category), and optionally price and list_price (they override the protocol's option prices of that
    product in those occasions; NULL keeps them). None stages an empty table (no scenario). A product needs a row
    in `products` to get features (option_features' keys come from there); one never purchased and given no
    price has a NULL price. Scenario handling itself (what-ifs) builds on this hook.
    """
    run_market_sql(conn, "create_market_scenario_products")
    if table is None:
        return
    if table == "market_scenario_products":
        raise ValueError(
            "stage the scenario under another name: market_scenario_products is the staging table"
        )
    columns = {
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_name = $t", {"t": table}
        ).fetchall()
    }
    if not {"category", "product_id"} <= columns:
        raise ValueError(
            f"scenario table {table!r} needs columns category and product_id, has {sorted(columns)}"
        )
    price = "cast(price as double)" if "price" in columns else "null"
    list_price = "cast(list_price as double)" if "list_price" in columns else "null"
    # identifiers only (the table name quoted, fixed column expressions); no value is formatted into the SQL
    conn.execute(
        "insert into market_scenario_products select cast(category as varchar), cast(product_id as varchar), "
        f"{price}, {list_price} from {quote_ident(table)} where category is not null and product_id is not null"
    )


def select_occasions(
    conn,
    period: str = "test",
    weeks: int | None = None,
    categories: Sequence[str] | int | None = None,
    customers: Sequence[str] | int | None = None,
    seed: int = 0,
) -> float:
    """Temp table market_occasion_rows (sql/market/create_market_occasion_rows.sql); returns seconds taken."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}, got {period!r}")
    if weeks is not None and (isinstance(weeks, bool) or int(weeks) < 1):
        raise ValueError(f"weeks must be None or at least 1, got {weeks!r}")
    category_list, top_categories = _list_or_top(categories, "categories")
    customer_list, n_customers = _list_or_top(customers, "customers")
    params = {
        "period": period,
        "weeks": None if weeks is None else int(weeks),
        "categories": category_list,
        "top_categories": top_categories,
        "customers": customer_list,
        "n_customers": n_customers,
        "seed": int(seed),
    }
    return run_market_sql(conn, "create_market_occasion_rows", params)


def build_market_occasions(
    conn,
    period: str = "test",
    categories: Sequence[str] | int | None = None,
    weeks: int | None = None,
    customers: Sequence[str] | int | None = None,
    m_options: int = 20,
    own_max: int = 10,
    seed: int = 0,
    history_days: int = 28,
    window_days: int = 14,
    scenario_products: str | None = None,
) -> dict[str, float]:
    """Build market_occasions and market_options; returns the seconds each step took.

    period: 'train', 'val' or 'test' (episode_splits.period) - the simulated period.
    categories: None (all), a list of categories, or an int N: the N categories with the most actual units.
    weeks: None (all) or N: only the period's first N ISO weeks (week_index <= N).
    customers: None (all), a list of customer ids, or an int N: a sample of N customers (the smallest
        md5('{seed}|{customer_id}')).
    m_options: M, the size the own products and best sellers fill the set up to (scenario products come on top).
    own_max: at most this many of the customer's own products (own_max <= m_options).
    seed: the customer sample's seed.
    history_days: the best-seller window (days d - history_days .. d - 1) and option_features' 28-day window.
    window_days: the option price window (d - window_days .. d + window_days), as for episode_options.
    scenario_products: the name of a staged table of extra (category, product_id[, price, list_price]) options
        for every occasion of their category (stage_scenario_products); None: no scenario.
    """
    if m_options < 1:
        raise ValueError(f"m_options must be at least 1, got {m_options}")
    if not 0 <= own_max <= m_options:
        raise ValueError(f"own_max must be in [0, m_options={m_options}], got {own_max}")
    if history_days < 1 or window_days < 0:
        raise ValueError("history_days must be >= 1 and window_days >= 0")
    missing = [t for t in REQUIRED_TABLES if not table_exists(conn, t)]
    if missing:
        raise ValueError(
            f"build decision_episodes, option_features' inputs and episode_splits first: no {missing}"
        )
    params = {
        "m_options": int(m_options),
        "own_max": int(own_max),
        "history_days": int(history_days),
        "window_days": int(window_days),
    }
    timings: dict[str, float] = {}
    try:
        timings["occasions"] = select_occasions(conn, period, weeks, categories, customers, seed)
        start = time.perf_counter()
        stage_scenario_products(conn, scenario_products)
        timings["scenario_products"] = time.perf_counter() - start
        timings["option_sets"] = run_market_sql(conn, "create_market_option_sets", params)
        # the price running totals of the features stage (episode_purchases -> option_products, product_day_totals)
        timings["price_totals"] = run_features_sql(conn, "create_option_products") + run_features_sql(
            conn, "create_product_day_totals"
        )
        timings["option_prices"] = run_market_sql(conn, "create_market_option_candidates", params)
        timings["feature_sources"] = run_market_sql(conn, "create_feature_source_episodes") + run_market_sql(
            conn, "create_feature_source_options"
        )
        timings |= {f"features:{k}": v for k, v in run_feature_steps(conn, history_days).items()}
        timings["market_options"] = run_market_sql(conn, "market_options")
        timings["market_occasions"] = run_market_sql(conn, "market_occasions")
    finally:
        drop_feature_temps(conn)
        drop_temp(conn, MARKET_TEMP_TABLES)
    return timings


def market_summary(conn) -> dict[str, Any]:
    """Occasions, options per occasion and coverage (the share of the actual units whose product is in the set),
    overall, per option source and per category (categories by actual units, most first)."""
    row = conn.execute(
        """
        select count(*), count(distinct customer_id), count(distinct category), count(distinct iso_week),
               coalesce(avg(n_options), 0), coalesce(min(n_options), 0), coalesce(max(n_options), 0),
               coalesce(sum(actual_quantity), 0),
               coalesce(sum(actual_quantity) filter (where actual_in_set), 0),
               count(*) filter (where actual_in_set)
        from market_occasions
        """
    ).fetchall()[0]
    n, n_cust, n_cat, n_weeks, mean_opt, min_opt, max_opt, units, covered, occ_covered = row
    sources = dict(
        conn.execute("select source, count(*) from market_options group by source order by source").fetchall()
    )
    covered_by_source = dict(
        conn.execute(
            """
            select m.source, sum(o.actual_quantity)
            from market_options as m join market_occasions as o on o.occasion_id = m.occasion_id
            where m.in_set_actual group by m.source order by m.source
            """
        ).fetchall()
    )
    bases = dict(
        conn.execute(
            "select coalesce(price_basis, 'none'), count(*) from market_options group by all order by 1"
        ).fetchall()
    )
    per_category = [
        {
            "category": c,
            "occasions": int(k),
            "units": int(u),
            "mean_options": float(m),
            "coverage": float(cov) / u if u else 0.0,
        }
        for c, k, u, m, cov in conn.execute(
            """
            select category, count(*), sum(actual_quantity), avg(n_options),
                   coalesce(sum(actual_quantity) filter (where actual_in_set), 0)
            from market_occasions group by category order by sum(actual_quantity) desc, category
            """
        ).fetchall()
    ]
    return {
        "occasions": int(n),
        "customers": int(n_cust),
        "categories": int(n_cat),
        "weeks": int(n_weeks),
        "option_rows": int(scalar(conn, "select count(*) from market_options")),
        "mean_options": float(mean_opt),
        "min_options": int(min_opt),
        "max_options": int(max_opt),
        "units": int(units),
        "coverage": float(covered) / units if units else 0.0,
        "coverage_occasions": float(occ_covered) / n if n else 0.0,
        "options_by_source": {s: int(sources.get(s, 0)) for s in SOURCES},
        "coverage_by_source": {
            s: (float(covered_by_source.get(s) or 0) / units if units else 0.0) for s in SOURCES
        },
        "options_by_price_basis": {k: int(v) for k, v in bases.items()},
        "per_category": per_category,
    }
