"""Features stage: decision episodes with fixed choice sets, option features, splits, customer style params.

Thin Dagster wiring; the work is SQL in sql/features/ and plain functions in logic.py and style.py.
"""

import time

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import log_asset_run, table_metadata
from assets.features import logic
from resources.mlflow import MlflowResource
from resources.warehouse import scalar


def _table_meta(conn, table: str) -> dict:
    """table_metadata of a warehouse table from its first rows and its row count."""
    head = conn.sql(f"select * from {table} limit 5").pl()
    return table_metadata(head, row_count=int(scalar(conn, f"select count(*) from {table}")))


def _timings(timings: dict[str, float]) -> dict[str, float]:
    return {f"seconds_{k}": round(float(v), 3) for k, v in timings.items()}


class DecisionEpisodesConfig(dg.Config):
    seed: int = 0  # seed of the negative draw: md5('{seed}|{basket_id}|{category}|{product_id}')
    n_options: int = 10  # K: choice-set size (the actual product + K - 1 negatives)
    window_days: int = 14  # assortment and option-price window: days [d - w, d + w]
    episodes_per_batch: int = 150_000  # episodes per top-n batch: bounds the memory of the negative draw
    threads: int = 2  # DuckDB threads (the machines have 2 cores)
    memory_limit: str = "4GB"  # DuckDB memory cap; the full Complete Journey build stays under it


@dg.asset(group_name="features", kinds={"duckdb", "sql"}, deps=["raw_transactions", "products"])
def decision_episodes(
    context: dg.AssetExecutionContext,
    config: DecisionEpisodesConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Decision episodes (one per retail basket x category) with their fixed choice sets and option
    prices, exactly per docs/evaluation-protocol.md: tables decision_episodes, episode_options and the helper
    episode_purchases."""
    start = time.perf_counter()
    with duckdb.get_connection() as conn:
        logic.configure_connection(conn, config.threads, config.memory_limit)
        timings = logic.build_decision_episodes(
            conn,
            config.seed,
            config.window_days,
            config.n_options,
            config.episodes_per_batch,
            log=context.log.info,
        )
        summary = logic.episode_summary(conn)
        metadata = {
            **_table_meta(conn, "decision_episodes"),
            **summary,
            **_timings(timings),
            "seconds_total": round(time.perf_counter() - start, 3),
        }
        metadata.update(log_asset_run(mlflow, context, conn, metadata, params=config.model_dump()))
    context.log.info(f"decision_episodes: {summary}")
    return dg.MaterializeResult(metadata=metadata)


class OptionFeaturesConfig(dg.Config):
    history_days: int = 28  # popularity window: purchases in days d - 28 .. d - 1
    threads: int = 2  # DuckDB threads
    memory_limit: str = "4GB"  # DuckDB memory cap


@dg.asset(group_name="features", kinds={"duckdb", "sql"}, deps=[decision_episodes])
def option_features(
    context: dg.AssetExecutionContext,
    config: OptionFeaturesConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """One row per choice-set option: popularity, the customer's past purchases, discount, price against
    the set and the customer's reference price; history strictly before the episode's day only."""
    start = time.perf_counter()
    with duckdb.get_connection() as conn:
        logic.configure_connection(conn, config.threads, config.memory_limit)
        timings = logic.build_option_features(conn, config.history_days)
        meta = _table_meta(conn, "option_features")
        new_share = scalar(conn, "select avg(is_new::double) from option_features")
        metadata = {
            **meta,
            "share_new_options": float(new_share or 0.0),
            **_timings(timings),
            "seconds_total": round(time.perf_counter() - start, 3),
        }
        metadata.update(log_asset_run(mlflow, context, conn, metadata, params=config.model_dump()))
    context.log.info(
        f"option_features: {meta['dagster/row_count'].value} rows in {sum(timings.values()):.1f}s"
    )
    return dg.MaterializeResult(metadata=metadata)


class EpisodeSplitsConfig(dg.Config):
    seed: int = 0  # seed of the cold-category draw: md5('{seed}|{category}')
    test_days: int = 56  # the last 8 weeks are test
    val_days: int = 28  # the 4 weeks before them are validation
    min_train_episodes: int = (
        100  # categories below this many train episodes are sparse; above, cold-eligible
    )
    cold_share: float = 0.1  # share of the eligible categories made cold
    cold_fit_episodes: int = 20  # earliest train episodes a cold category keeps for fitting


@dg.asset(group_name="features", kinds={"duckdb", "sql"}, deps=[decision_episodes])
def episode_splits(
    context: dg.AssetExecutionContext,
    config: EpisodeSplitsConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Split of every episode by time (train / val / test) with the test_sparse, test_cold and test_new
    flags and use_for_fit (cold categories keep only their earliest train episodes)."""
    with duckdb.get_connection() as conn:
        timings = logic.build_episode_splits(
            conn,
            config.seed,
            config.test_days,
            config.val_days,
            config.min_train_episodes,
            config.cold_share,
            config.cold_fit_episodes,
        )
        splits = logic.split_summary(conn)
        per_split = {f"episodes_{k}": v["episodes"] for k, v in splits.items()}
        per_split.update({f"categories_{k}": v["categories"] for k, v in splits.items()})
        metadata = {**_table_meta(conn, "episode_splits"), **per_split, **_timings(timings)}
        metadata.update(log_asset_run(mlflow, context, conn, metadata, params=config.model_dump()))
    context.log.info(f"episode_splits: {splits}")
    return dg.MaterializeResult(metadata=metadata)


class CustomerStyleParamsConfig(dg.Config):
    seed: int = 0  # seed of the episode sample of the population logit
    population_sample_episodes: int = 200_000  # episodes in the pooled logit (the per-customer step uses all)
    threads: int = 2  # DuckDB threads
    memory_limit: str = "4GB"  # DuckDB memory cap


@dg.asset(
    group_name="features",
    kinds={"duckdb", "python"},
    deps=[option_features, episode_splits, "customers"],
)
def customer_style_params(
    context: dg.AssetExecutionContext,
    config: CustomerStyleParamsConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Style parameters rho_i per customer (price, discount and loss-aversion sensitivities, brand loyalty,
    variety seeking, basket size) from fit episodes, shrunk towards the segment mean by empirical Bayes."""
    from assets.features.style import style_metadata

    with duckdb.get_connection() as conn:
        logic.configure_connection(conn, config.threads, config.memory_limit)
        timings, fit = logic.build_customer_style_params(
            conn, config.seed, config.population_sample_episodes, log=context.log.info
        )
        metadata = {**_table_meta(conn, "customer_style_params"), **style_metadata(fit), **_timings(timings)}
        metadata.update(log_asset_run(mlflow, context, conn, metadata, params=config.model_dump()))
    return dg.MaterializeResult(metadata=metadata)


# ----------------------------------------------------------------------------- checks (facts)


def _check(duckdb: DuckDBResource, fn, *args) -> dg.AssetCheckResult:
    with duckdb.get_connection() as conn:
        passed, meta = fn(conn, *args)
    return dg.AssetCheckResult(passed=bool(passed), metadata=meta)


@dg.asset_check(asset=decision_episodes, blocking=True)
def episode_ids_unique(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """episode_id is unique, and so is (episode_id, product_id) among the options."""
    return _check(duckdb, logic.check_episode_ids_unique)


@dg.asset_check(asset=decision_episodes, blocking=True)
def every_choice_set_holds_its_actual_product(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Exactly one option per episode is chosen, and it is the episode's chosen_product_id."""
    return _check(duckdb, logic.check_choice_set_holds_actual)


@dg.asset_check(asset=decision_episodes)
def option_prices_non_negative(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Every option has a finite price and list_price >= 0."""
    return _check(duckdb, logic.check_option_prices_non_negative)


@dg.asset_check(asset=decision_episodes)
def choice_set_sizes_in_range(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Choice sets hold 2..10 options, as many as n_options says, at positions 1..n."""
    return _check(duckdb, logic.check_choice_set_sizes_in_range, DecisionEpisodesConfig().n_options)


@dg.asset_check(asset=episode_splits, blocking=True)
def splits_disjoint(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Each episode has exactly one period; test flags are set on test episodes only."""
    return _check(duckdb, logic.check_splits_disjoint)


FEATURE_ASSETS = [decision_episodes, option_features, episode_splits, customer_style_params]
FEATURE_CHECKS = [
    episode_ids_unique,
    every_choice_set_holds_its_actual_product,
    option_prices_non_negative,
    choice_set_sizes_in_range,
    splits_disjoint,
]
