"""Features stage logic (no Dagster here): decision episodes, option features, splits and checks.

All the heavy lifting is SQL in sql/features/*.sql (one statement per file, DuckDB $named params), run in
order on one connection; the functions below sequence them, time them and summarise the results.
Readings of docs/evaluation-protocol.md that needed a choice are written next to the code that makes them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from resources.sql import load_sql
from resources.warehouse import scalar

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def run_sql(conn, name: str, params: dict[str, Any] | None = None) -> float:
    """Run sql/features/<name>.sql with the params it names (others are ignored); returns seconds taken."""
    return run_sql_file(conn, f"features/{name}", params)


def run_sql_file(conn, path: str, params: dict[str, Any] | None = None) -> float:
    """Run sql/<path>.sql (e.g. "market/market_occasions") with the params it names (others are ignored);
    returns seconds taken. A parameter the file names but `params` lacks is a ValueError."""
    sql = load_sql(path)
    wanted = set(_PARAM.findall(sql))
    missing = wanted - set(params or {})
    if missing:
        raise ValueError(f"{path}.sql needs parameters {sorted(missing)}")
    start = time.perf_counter()
    conn.execute(sql, {k: v for k, v in (params or {}).items() if k in wanted})
    return time.perf_counter() - start


def configure_connection(conn, threads: int = 2, memory_limit: str = "6GB") -> None:
    """Threads and memory cap for the stage (the whole pipeline shares a 2-core, 24 GiB machine)."""
    conn.execute(f"set threads = {int(threads)}")
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit.strip()):
        raise ValueError(f"memory_limit must look like '6GB', got {memory_limit!r}")
    conn.execute(f"set memory_limit = '{memory_limit.strip()}'")
    conn.execute("set preserve_insertion_order = false")
    conn.execute("set enable_progress_bar = false")


def drop_temp(conn, names: Iterable[str]) -> None:
    for name in names:
        conn.execute(f"drop table if exists temp.{name}")


EPISODE_TEMP_TABLES = (
    "option_products",
    "episode_own_purchases",
    "episode_heads",
    "category_day_assortment",
    "episode_negatives",
    "product_day_totals",
)


def build_decision_episodes(
    conn,
    seed: int = 0,
    window_days: int = 14,
    n_options: int = 10,
    episodes_per_batch: int = 150_000,
    log=None,
) -> dict[str, float]:
    """episode_purchases, decision_episodes and episode_options (docs/evaluation-protocol.md "Decision episodes").

    Returns the seconds each step took.
    """
    if n_options < 2:
        raise ValueError("n_options (K) must be at least 2")
    params = {"seed": int(seed), "window_days": int(window_days), "n_negatives": int(n_options) - 1}
    timings: dict[str, float] = {}
    for step in (
        "episode_purchases",
        "create_option_products",
        "create_episode_heads",
        "create_category_day_assortment",
    ):
        timings[step] = run_sql(conn, step, params)
    n_heads = scalar(conn, "select count(*) from episode_heads")
    n_batches = max(1, -(-n_heads // max(1, episodes_per_batch)))
    timings["create_episode_negatives"] = run_sql(conn, "create_episode_negatives", params)
    timings["insert_episode_negatives_batch"] = 0.0
    for batch in range(n_batches):
        timings["insert_episode_negatives_batch"] += run_sql(
            conn, "insert_episode_negatives_batch", {**params, "n_batches": n_batches, "batch": batch}
        )
        if log is not None:
            log(f"negatives: batch {batch + 1}/{n_batches} done")
    for step in (
        "decision_episodes",
        "create_product_day_totals",
        "create_episode_own_purchases",
        "episode_options",
    ):
        timings[step] = run_sql(conn, step, params)
    drop_temp(conn, EPISODE_TEMP_TABLES)
    return timings


# The option_features steps read the episodes and options staged as the temp views feature_source_episodes
# and feature_source_options (FEATURE_SOURCE_STEPS stage decision_episodes and episode_options there) and
# leave the temp view feature_rows; the market simulation (assets/market/occasions.py) stages its occasions
# and consideration sets under the same names and runs the same FEATURE_STEPS, so both share one definition.
FEATURE_SOURCE_STEPS = ("create_feature_source_episodes", "create_feature_source_options")
FEATURE_STEPS = (
    "create_feature_keys",
    "create_keyed_purchases",
    "create_product_history_days",
    "create_customer_product_days",
    "create_customer_brand_days",
    "create_customer_category_days",
    "create_feature_episodes",
    "create_feature_options",
    "create_feature_rows",
)
FEATURE_TEMP_VIEWS = ("feature_rows", "feature_source_options", "feature_source_episodes")
FEATURE_TEMP_TABLES = (
    "feature_keys",
    "keyed_purchases",
    "product_history_days",
    "customer_product_days",
    "customer_brand_days",
    "customer_category_days",
    "feature_episodes",
    "feature_options",
)


def run_feature_steps(conn, history_days: int = 28) -> dict[str, float]:
    """FEATURE_STEPS on the staged feature_source_episodes / feature_source_options: leaves the temp view
    feature_rows (one row per staged option, the columns of option_features). Returns seconds per step."""
    params = {"history_days": int(history_days)}
    return {step: run_sql(conn, step, params) for step in FEATURE_STEPS}


def drop_feature_temps(conn) -> None:
    """Drop the temp views and tables of the feature steps (views first: they read the tables)."""
    for name in FEATURE_TEMP_VIEWS:
        conn.execute(f"drop view if exists temp.{name}")
    drop_temp(conn, FEATURE_TEMP_TABLES)


def build_option_features(conn, history_days: int = 28) -> dict[str, float]:
    """option_features from episode_options, decision_episodes, episode_purchases and products.

    Returns the seconds each step took (feature_rows is a view: its work is timed under option_features).
    """
    timings = {step: run_sql(conn, step) for step in FEATURE_SOURCE_STEPS}
    timings |= run_feature_steps(conn, history_days)
    timings["option_features"] = run_sql(conn, "option_features")
    drop_feature_temps(conn)
    return timings


def build_episode_splits(
    conn,
    seed: int = 0,
    test_days: int = 56,
    val_days: int = 28,
    min_train_episodes: int = 100,
    cold_share: float = 0.1,
    cold_fit_episodes: int = 20,
) -> dict[str, float]:
    """episode_splits (docs/evaluation-protocol.md "Splits"); returns the seconds taken."""
    params = {
        "seed": int(seed),
        "test_days": int(test_days),
        "val_days": int(val_days),
        "min_train_episodes": int(min_train_episodes),
        "cold_share": float(cold_share),
        "cold_fit_episodes": int(cold_fit_episodes),
    }
    return {"episode_splits": run_sql(conn, "episode_splits", params)}


# ---------------------------------------------------------------- summaries for Dagster metadata


def episode_summary(conn) -> dict[str, Any]:
    """Counts that describe decision_episodes / episode_options."""
    row = conn.execute(
        """
        select count(*), count(distinct category), count(distinct customer_id), avg(n_options),
               min(day), max(day)
        from decision_episodes
        """
    ).fetchall()[0]
    return {
        "episodes": int(row[0]),
        "categories": int(row[1]),
        "customers": int(row[2]),
        "mean_set_size": float(row[3] or 0.0),
        "first_day": str(row[4]),
        "last_day": str(row[5]),
        "option_rows": int(scalar(conn, "select count(*) from episode_options")),
        "purchases": int(scalar(conn, "select count(*) from episode_purchases")),
    }


def split_summary(conn) -> dict[str, dict[str, int]]:
    """Episodes and categories per named split (train, val, test_all, test_sparse, test_cold, test_new, fit)."""
    rows = conn.execute(
        """
        with s as (select s.*, e.category from episode_splits s join decision_episodes e using (episode_id))
        select 'train', count(*), count(distinct category) from s where period = 'train'
        union all select 'val', count(*), count(distinct category) from s where period = 'val'
        union all select 'test_all', count(*), count(distinct category) from s where period = 'test'
        union all select 'test_sparse', count(*), count(distinct category) from s where in_test_sparse
        union all select 'test_cold', count(*), count(distinct category) from s where in_test_cold
        union all select 'test_new', count(*), count(distinct category) from s where in_test_new
        union all select 'use_for_fit', count(*), count(distinct category) from s where use_for_fit
        union all select 'cold_categories', count(*), count(distinct category) from s where cold_category
        """
    ).fetchall()
    return {name: {"episodes": int(n), "categories": int(c)} for name, n, c in rows}


# ---------------------------------------------------------------- asset checks as plain functions
# Each returns (passed, metadata); the Dagster checks in __init__.py only wrap them.


def check_episode_ids_unique(conn) -> tuple[bool, dict[str, Any]]:
    """episode_id is unique in decision_episodes, and (episode_id, product_id) in episode_options."""
    n, distinct = conn.execute(
        "select count(*), count(distinct episode_id) from decision_episodes"
    ).fetchall()[0]
    dup_options = scalar(
        conn,
        "select count(*) from (select episode_id, product_id from episode_options group by all having count(*) > 1)",
    )
    return n == distinct and dup_options == 0, {
        "episodes": int(n),
        "duplicate_episode_ids": int(n - distinct),
        "duplicate_option_rows": int(dup_options),
    }


def check_choice_set_holds_actual(conn) -> tuple[bool, dict[str, Any]]:
    """Every episode has options, exactly one is_chosen, and that option is its chosen_product_id."""
    bad = scalar(
        conn,
        """
        select count(*) from decision_episodes e
        left join (
            select episode_id, count(*) filter (where is_chosen) as n_chosen,
                   any_value(product_id) filter (where is_chosen) as chosen
            from episode_options group by episode_id
        ) o on o.episode_id = e.episode_id
        where o.episode_id is null or o.n_chosen <> 1 or o.chosen <> e.chosen_product_id
        """,
    )
    orphans = scalar(
        conn,
        "select count(*) from episode_options o anti join decision_episodes e on e.episode_id = o.episode_id",
    )
    return bad == 0 and orphans == 0, {"bad_episodes": int(bad), "orphan_option_rows": int(orphans)}


def check_option_prices_non_negative(conn) -> tuple[bool, dict[str, Any]]:
    """Every option has a price and a list_price, both >= 0 (and finite)."""
    bad, min_price = conn.execute(
        """
        select count(*) filter (where price is null or list_price is null or price < 0 or list_price < 0
                                or isinf(price) or isinf(list_price) or isnan(price) or isnan(list_price)),
               min(price)
        from episode_options
        """
    ).fetchall()[0]
    return bad == 0, {
        "bad_prices": int(bad),
        "min_price": float(min_price) if min_price is not None else None,
    }


def check_splits_disjoint(conn) -> tuple[bool, dict[str, Any]]:
    """Each episode has exactly one split row with one period; test flags only on test episodes."""
    missing, extra, dup, bad_period, flag_outside_test = conn.execute(
        """
        select
            (select count(*) from decision_episodes e anti join episode_splits s using (episode_id)),
            (select count(*) from episode_splits s anti join decision_episodes e using (episode_id)),
            (select count(*) - count(distinct episode_id) from episode_splits),
            (select count(*) from episode_splits where period is null or period not in ('train', 'val', 'test')),
            (select count(*) from episode_splits where period is distinct from 'test'
                and (in_test_sparse or in_test_cold or in_test_new))
        """
    ).fetchall()[0]
    meta = {
        "episodes_without_split": int(missing),
        "split_rows_without_episode": int(extra),
        "duplicate_split_rows": int(dup),
        "bad_periods": int(bad_period),
        "test_flags_outside_test": int(flag_outside_test),
    }
    return sum(meta.values()) == 0, meta


def check_choice_set_sizes_in_range(conn, n_options: int = 10) -> tuple[bool, dict[str, Any]]:
    """2 <= n_options <= K, n_options equals the episode's option rows, positions are 1..n_options."""
    bad_size, bad_count, bad_pos, min_size, max_size = conn.execute(
        """
        with o as (
            select episode_id, count(*) as n, min(position) as lo, max(position) as hi,
                   count(distinct position) as nd
            from episode_options group by episode_id
        )
        select
            count(*) filter (where e.n_options < 2 or e.n_options > $k),
            count(*) filter (where o.n is distinct from e.n_options),
            count(*) filter (where o.lo <> 1 or o.hi <> o.n or o.nd <> o.n),
            min(e.n_options), max(e.n_options)
        from decision_episodes e left join o using (episode_id)
        """,
        {"k": int(n_options)},
    ).fetchall()[0]
    meta = {
        "sizes_out_of_range": int(bad_size),
        "size_mismatch": int(bad_count),
        "bad_positions": int(bad_pos),
        "min_set_size": int(min_size) if min_size is not None else 0,
        "max_set_size": int(max_size) if max_size is not None else 0,
    }
    return bad_size + bad_count + bad_pos == 0, meta


def build_customer_style_params(conn, seed: int = 0, population_sample_episodes: int = 200_000, log=None):
    """customer_style_params (style.py); returns (timings, StyleFit)."""
    import polars as pl

    from assets.features.style import estimate_style

    timings = {}
    start = time.perf_counter()
    rows = conn.sql(load_sql("features/select_style_options")).pl()
    baskets = conn.sql(load_sql("features/select_style_baskets")).pl()
    customers = conn.sql("select customer_id, segment from customers").pl()
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    frame, fit = estimate_style(
        rows, customers, baskets, seed=seed, population_sample_episodes=population_sample_episodes, log=log
    )
    timings["estimate"] = time.perf_counter() - start
    conn.register("style_frame", frame.to_arrow())
    try:
        timings["write"] = run_sql(conn, "customer_style_params")
    finally:
        conn.unregister("style_frame")
    del pl
    return timings, fit
