"""eval_report's bar: the paired difference against each split's best classic, chosen on validation
(baseline_best_classic), never re-chosen on the report's own episodes."""

from __future__ import annotations

import math

import polars as pl
import pytest

from assets.simulation import gaps as G


def _hits(rows):
    return pl.DataFrame(rows, schema=G.HITS_SCHEMA, orient="row")


def test_paired_gap_by_hand_uses_the_stored_choice_not_the_better_baseline():
    llm = _hits([("llm", "test_new", e, h) for e, h in [("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 0.5)]])
    base = _hits(
        [("clogit6", "test_new", e, h) for e, h in [("a", 1.0), ("b", 1.0), ("c", 0.0), ("d", 0.0)]]
        # lgbm is better on these episodes, but validation chose clogit6: the bar stays clogit6
        + [("lgbm", "test_new", e, 1.0) for e in "abcd"]
    )
    choice = pl.DataFrame({"split": ["test_new"], "method": ["clogit6"], "chosen_on": ["val_new"]})
    (row,) = G.paired_gaps(llm, base, choice).iter_rows(named=True)
    d = [0.0, -1.0, 1.0, 0.5]
    assert row["bar_method"] == "clogit6" and row["chosen_on"] == "val_new" and row["n_episodes"] == 4
    assert row["hit1"] == pytest.approx(0.625) and row["bar_hit1"] == pytest.approx(0.5)
    assert row["diff"] == pytest.approx(0.125)
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert row["se"] == pytest.approx(sd / 2)


def test_paired_gap_keeps_only_episodes_both_scored_and_skips_a_bar_without_predictions():
    llm = _hits([("llm", "test_all", "a", 1.0), ("llm", "test_all", "b", 0.0), ("llm", "test_all", "z", 1.0)])
    base = _hits([("lgbm", "test_all", "a", 0.0), ("lgbm", "test_all", "b", 0.0)])
    choice = pl.DataFrame(
        {"split": ["test_all", "test_new"], "method": ["lgbm", "clogit6"], "chosen_on": ["val", "val_new"]}
    )
    gaps = G.paired_gaps(llm, base, choice)
    assert gaps["split"].to_list() == ["test_all"]  # no clogit6 predictions: no test_new row
    assert gaps.row(0, named=True)["n_episodes"] == 2 and gaps.row(0, named=True)["diff"] == pytest.approx(
        0.5
    )


def test_episode_hits_read_ties_and_unscored_options_as_the_metrics_do():
    options = pl.DataFrame(
        {
            "episode_id": ["e1", "e1", "e1", "e2", "e2"],
            "product_id": ["p1", "p2", "p3", "p1", "p2"],
            "is_chosen": [True, False, False, False, True],
        }
    )
    frame = pl.DataFrame(
        {
            "method": ["m"] * 4,
            "episode_id": ["e1", "e1", "e2", "e2"],
            "product_id": ["p1", "p2", "p1", "p2"],
            "utility": [1.0, 1.0, 2.0, 1.0],
        }  # fmt: skip
    )
    members = pl.DataFrame({"episode_id": ["e1", "e2"], "split": ["test_all", "test_all"]})
    hits = G.episode_hits(frame, "utility", options, members).sort("episode_id")
    assert hits["hit1"].to_list() == [0.5, 0.0]  # e1: tied with p2 (p3 unscored ranks last); e2: p1 above


def test_gap_table_says_what_to_do_without_a_choice():
    lines = G.gap_table(pl.DataFrame(schema=G.GAPS_SCHEMA))
    assert "materialize baseline_report" in lines[-1]
