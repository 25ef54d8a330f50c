"""One decision interface for the market simulation: every engine (the aligned LLM in utility form, the
calibrated hybrids, the conditional logits, lightgbm, persistence) answers the same call.

    engine.decide(options) -> decisions

`options`: one row per (occasion, option) of market_options (assets/market/occasions.py) with its feature
columns, plus one row per occasion for the outside option (product_id OTHER, every feature null; see
`with_other_rows`). The market's signals in the feature columns (pop_28d, pop_total, is_new, ...) may have
been recomputed from the simulated state by the mean field (meanfield.py); an engine reads them as given.

`decisions` (DECISIONS_SCHEMA): one row per input row, the same (occasion_id, product_id) pairs:
utility (the engine's score; NaN where it has none), prob (the choice probability: per occasion the probs sum
to 1, OTHER included) and expected_qty (the expected units if this option is chosen, > 0).

No dagster import; the market assets wire engines by name (ENGINES).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import polars as pl

from assets.market.metrics import OTHER

DECISIONS_SCHEMA = {
    "occasion_id": pl.Utf8,
    "product_id": pl.Utf8,
    "utility": pl.Float64,
    "prob": pl.Float64,
    "expected_qty": pl.Float64,
}


class ChoiceEngine(ABC):
    """An engine of the market simulation (module docstring)."""

    name: str = ""

    @abstractmethod
    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        """DECISIONS_SCHEMA rows for every row of `options` (occasion_id, product_id, features...)."""


def with_other_rows(options: pl.DataFrame) -> pl.DataFrame:
    """`options` plus one OTHER row per occasion (every other column null), unless the occasion has one."""
    have = options.filter(pl.col("product_id") == OTHER).select("occasion_id")
    occ = options.select("occasion_id").unique().join(have, on="occasion_id", how="anti")
    other = occ.with_columns(product_id=pl.lit(OTHER))
    return pl.concat([options, other], how="diagonal_relaxed").sort("occasion_id", "product_id")


def check_decisions(options: pl.DataFrame, decisions: pl.DataFrame, tol: float = 1e-6) -> None:
    """Raise ValueError naming the first broken promise of the interface: the same (occasion, option) pairs,
    probabilities in [0, 1] summing to 1 per occasion, positive expected quantities."""
    missing = set(DECISIONS_SCHEMA) - set(decisions.columns)
    if missing:
        raise ValueError(f"decisions lack columns {sorted(missing)}")
    keys = ["occasion_id", "product_id"]
    a, b = options.select(keys).sort(keys), decisions.select(keys).sort(keys)
    if a.height != b.height or not a.equals(b):
        raise ValueError(f"decisions cover {b.height} (occasion, option) pairs, the options {a.height}")
    if decisions["prob"].is_null().any() or not decisions["prob"].is_between(0.0, 1.0).all():
        raise ValueError("a choice probability is null or outside [0, 1]")
    sums = decisions.group_by("occasion_id").agg(s=pl.col("prob").sum())
    bad = sums.filter((pl.col("s") - 1.0).abs() > tol)
    if bad.height:
        raise ValueError(f"{bad.height} occasions' probabilities do not sum to 1 (e.g. {bad.row(0)})")
    if decisions["expected_qty"].is_null().any() or (decisions["expected_qty"] <= 0).any():
        raise ValueError("an expected quantity is null or not positive")
