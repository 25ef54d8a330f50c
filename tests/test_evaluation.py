"""Evaluation: metrics on hand-computed examples, baselines on hand-made episodes, the baseline_report asset."""

import datetime
import math

import numpy as np
import polars as pl
import pytest

from assets.evaluation import metrics as M
from assets.evaluation.baselines import (
    CHOICE_METHODS,
    SIX_FEATURES,
    SPLITS,
    BaselineSettings,
    features_matrix,
    fit_clogit6,
    fit_clogit_on,
    qty_customer_mean,
    qty_one,
    run_baselines,
    score_clogit6,
    score_popularity,
    score_random,
    score_repeat,
    split_membership,
    val_folds,
)
from assets.evaluation.best_classic import best_classic_by_split, best_classic_rows
from assets.evaluation.logic import headline_metrics, metrics_markdown, metrics_problems


def long_frame(rows):
    """rows: (episode_id, product_id, score, prob, is_chosen, category)."""
    return pl.DataFrame(
        rows,
        schema={
            "episode_id": pl.Utf8,
            "product_id": pl.Utf8,
            "score": pl.Float64,
            "prob": pl.Float64,
            "is_chosen": pl.Boolean,
            "category": pl.Utf8,
        },
        orient="row",
    )


# --- metrics ------------------------------------------------------------------------------------------


def test_hit_at_k_with_ties():
    df = long_frame(
        [
            # e1: actual strictly first -> hit1 1, hit3 1
            ("e1", "a", 3.0, 0.5, True, "C"),
            ("e1", "b", 2.0, 0.3, False, "C"),
            ("e1", "c", 1.0, 0.2, False, "C"),
            # e2: actual tied with 1 other at the top -> hit1 1/2, hit3 1
            ("e2", "a", 5.0, 0.4, False, "C"),
            ("e2", "b", 5.0, 0.4, True, "C"),
            ("e2", "c", 1.0, 0.2, False, "C"),
            # e3: 1 above, actual tied with 3 others (4 tied) -> rank uniform on 2..5:
            #     hit1 0, hit3 = P(rank <= 3) = 2/4
            ("e3", "a", 9.0, 0.3, False, "C"),
            ("e3", "b", 1.0, 0.175, True, "C"),
            ("e3", "c", 1.0, 0.175, False, "C"),
            ("e3", "d", 1.0, 0.175, False, "C"),
            ("e3", "e", 1.0, 0.175, False, "C"),
            # e4: every option tied (random): 4 options -> hit1 1/4, hit3 3/4
            ("e4", "a", 0.0, 0.25, False, "C"),
            ("e4", "b", 0.0, 0.25, False, "C"),
            ("e4", "c", 0.0, 0.25, True, "C"),
            ("e4", "d", 0.0, 0.25, False, "C"),
        ]
    )
    assert M.hit1(df) == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    assert M.hit3(df) == pytest.approx((1 + 1 + 0.5 + 0.75) / 4)
    per = M.per_episode_hits(df).sort("episode_id")
    assert per["hit1"].to_list() == pytest.approx([1, 0.5, 0, 0.25])


def test_null_score_ranks_last_and_missing_actual_is_a_miss():
    df = long_frame(
        [
            ("e1", "a", None, 0.5, True, "C"),  # unscored actual: below the scored option
            ("e1", "b", 0.1, 0.5, False, "C"),
            ("e2", "a", 1.0, 1.0, False, "C"),  # no actual option in the frame
        ]
    )
    per = M.per_episode_hits(df, (1, 3)).sort("episode_id")
    assert per["hit1"].to_list() == [0.0, 0.0]
    assert per["hit3"].to_list() == [1.0, 0.0]
    # nll: e1 -ln 0.5; e2 no actual -> -ln 1e-12
    assert M.nll(df) == pytest.approx((math.log(2) + -math.log(1e-12)) / 2)


def test_nll_clips_and_is_none_without_probs():
    df = long_frame(
        [
            ("e1", "a", 1.0, 0.25, True, "C"),
            ("e1", "b", 2.0, 0.75, False, "C"),
            ("e2", "a", 1.0, 0.0, True, "C"),  # p = 0 -> clipped at 1e-12
            ("e2", "b", 2.0, 1.0, False, "C"),
        ]
    )
    assert M.nll(df) == pytest.approx((math.log(4) + 12 * math.log(10)) / 2)
    assert M.nll(df.with_columns(prob=pl.lit(None, dtype=pl.Float64))) is None
    assert M.share_jsd(df.with_columns(prob=pl.lit(None, dtype=pl.Float64))) is None


def test_quantity_errors():
    q = pl.DataFrame({"episode_id": ["a", "b", "c"], "qty_pred": [1.0, 3.0, 2.0], "qty_actual": [1, 1, 4]})
    # |err| = 0, 2, 2 -> mae 4/3; wape 4 / 6
    assert M.qty_mae(q) == pytest.approx(4 / 3)
    assert M.qty_wape(q) == pytest.approx(4 / 6)
    assert M.qty_wape(q.with_columns(qty_actual=pl.lit(0))) is None


def test_share_jsd_hand_computed():
    df = long_frame(
        [
            # category A, 2 episodes: predicted shares (0.5, 0.5), actual (1, 0)
            ("e1", "x", 1.0, 0.5, True, "A"),
            ("e1", "y", 1.0, 0.5, False, "A"),
            ("e2", "x", 1.0, 0.5, True, "A"),
            ("e2", "y", 1.0, 0.5, False, "A"),
            # category B, 1 episode: predicted (1, 0) = actual -> JSD 0
            ("e3", "u", 1.0, 1.0, True, "B"),
            ("e3", "v", 0.0, 0.0, False, "B"),
        ]
    )
    # M = (0.75, 0.25); KL(P||M) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25); KL(Q||M) = log2(1/0.75)
    jsd_a = 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * 1.0) + 0.5 * math.log2(4 / 3)
    per = M.per_category_jsd(df)
    assert per.filter(pl.col("category") == "A")["jsd"][0] == pytest.approx(jsd_a)
    assert per.filter(pl.col("category") == "B")["jsd"][0] == pytest.approx(0.0, abs=1e-15)
    assert M.share_jsd(df) == pytest.approx(2 / 3 * jsd_a)
    assert M.jsd_base2(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(jsd_a)
    assert M.jsd_base2(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_evaluate_combines_everything():
    df = long_frame([("e1", "a", 2.0, 0.8, True, "C"), ("e1", "b", 1.0, 0.2, False, "C")])
    q = pl.DataFrame({"episode_id": ["e1", "zz"], "qty_pred": [2.0, 9.0], "qty_actual": [3, 1]})
    out = M.evaluate(df, q)
    assert out["n_episodes"] == 1 and out["hit1"] == 1.0 and out["hit3"] == 1.0
    assert out["nll"] == pytest.approx(-math.log(0.8))
    assert out["qty_mae"] == 1.0  # the episode outside the frame (zz) is not counted
    assert out["qty_wape"] == pytest.approx(1 / 3)
    assert out["share_jsd"] == pytest.approx(M.jsd_base2(np.array([0.8, 0.2]), np.array([1.0, 0.0])))


def test_top1_agreement_and_share_cv():
    def run(choices):
        return pl.DataFrame(
            {"episode_id": ["e1", "e2", "e3", "e4"], "category": ["A"] * 4, "product_id": choices}
        )

    r1, r2, r3 = run(["x", "x", "y", "y"]), run(["x", "y", "y", "y"]), run(["x", "x", "y", "y"])
    # pairs: (1,2) 3/4, (1,3) 4/4, (2,3) 3/4 -> mean 10/12
    assert M.top1_agreement([r1, r2, r3]) == pytest.approx(10 / 12)
    assert M.top1_agreement([r1]) is None
    # shares of x: 0.5, 0.25, 0.5; of y: 0.5, 0.75, 0.5 (sample std, ddof = 1)
    sx = np.std([0.5, 0.25, 0.5], ddof=1) / np.mean([0.5, 0.25, 0.5])
    sy = np.std([0.5, 0.75, 0.5], ddof=1) / np.mean([0.5, 0.75, 0.5])
    assert M.share_cv([r1, r2, r3]) == pytest.approx((sx + sy) / 2)
    # a product only one run picks counts as 0 in the others
    r4 = run(["z", "x", "y", "y"])
    shares = {"x": [0.5, 0.25], "y": [0.5, 0.5], "z": [0.0, 0.25]}
    cvs = [np.std(v, ddof=1) / np.mean(v) for v in shares.values()]
    assert M.share_cv([r1, r4]) == pytest.approx(np.mean(cvs))
    # top1 from scores: ties -> the smaller product_id
    df = long_frame([("e1", "b", 1.0, None, False, "A"), ("e1", "a", 1.0, None, True, "A")])
    assert M.top1_choices(df)["product_id"].to_list() == ["a"]


# --- baselines on a hand-made episode table ---------------------------------------------------------


def option_rows():
    """Two test episodes; e1: p1 most sold, customer bought p2 three times (actual p2);
    e2: the customer never bought anything, p5 most sold and actual."""
    return pl.DataFrame(
        {
            "episode_id": ["e1", "e1", "e1", "e2", "e2"],
            "product_id": ["p1", "p2", "p3", "p4", "p5"],
            "position": [1, 2, 3, 1, 2],
            "is_chosen": [False, True, False, False, True],
            "category": ["A", "A", "A", "B", "B"],
            "pop_28d": [5, 1, 0, 2, 7],
            "cust_product_purchases": [0, 3, 0, 0, 0],
            "cust_mean_qty": [2.4, 2.4, 2.4, None, None],
            "prod_mean_qty_28d": [1.0, 1.0, 1.0, 3.6, 1.2],
            "quantity": [3, 3, 3, 2, 2],
        }
    )


def test_popularity_random_repeat_on_hand_made_episodes():
    df = option_rows()
    pop = score_popularity(df)
    # e1: popularity picks p1 (miss); e2: p5 (hit) -> hit1 1/2
    assert M.hit1(pop) == pytest.approx(0.5)
    # (count + 1) / sum: e1 p2 = 2/9, e2 p5 = 8/11
    p = dict(zip(pop["product_id"], pop["prob"], strict=True))
    assert p["p2"] == pytest.approx(2 / 9) and p["p5"] == pytest.approx(8 / 11)
    assert M.nll(pop) == pytest.approx((math.log(9 / 2) + math.log(11 / 8)) / 2)
    rep = score_repeat(df)
    # e1: repeat picks p2 (hit); e2: no purchases -> popularity breaks the tie: p5 (hit)
    assert M.hit1(rep) == 1.0
    assert M.nll(rep) is None
    rnd = score_random(df)
    assert M.hit1(rnd) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert rnd.filter(pl.col("episode_id") == "e1")["prob"].to_list() == pytest.approx([1 / 3] * 3)


def test_quantity_baselines():
    df = score_popularity(option_rows())
    q = qty_customer_mean(df).sort("episode_id")
    # e1: the customer's mean 2.4 -> 2; e2: no customer mean -> top option p5's 1.2 -> 1
    assert q["qty_pred"].to_list() == [2.0, 1.0]
    assert q["qty_actual"].to_list() == [3.0, 2.0]
    assert qty_one(df).sort("episode_id")["qty_pred"].to_list() == [1.0, 1.0]


def test_split_membership_and_sample():
    eps = pl.DataFrame(
        {
            "episode_id": ["a", "b", "c", "d"],
            "period": ["val", "test", "test", "test"],
            "in_test_sparse": [False, True, False, False],
            "in_test_cold": [False, False, True, None],
            "in_test_new": [False, False, False, True],
            "sample_key": ["3", "2", "1", "0"],
        }
    )
    m = split_membership(eps)
    got = {s: sorted(m.filter(pl.col("split") == s)["episode_id"].to_list()) for s in m["split"].unique()}
    assert got == {
        "val": ["a"],
        "test_all": ["b", "c", "d"],
        "test_sparse": ["b"],
        "test_cold": ["c"],
        "test_new": ["d"],
    }
    m2 = split_membership(eps, sample_per_split=2)
    assert sorted(m2.filter(pl.col("split") == "test_all")["episode_id"].to_list()) == ["c", "d"]


def test_metrics_problems_pass_and_fail():
    good = pl.DataFrame(
        {
            "method": ["m"],
            "split": ["s"],
            "n_episodes": [3],
            "hit1": [0.2],
            "hit3": [0.5],
            "nll": [1.1],
            "qty_mae": [0.3],
            "qty_wape": [0.4],
            "share_jsd": [None],
        }
    )
    assert metrics_problems(good) == []
    bad = good.with_columns(hit1=pl.lit(1.5), nll=pl.lit(-0.1))
    assert len(metrics_problems(bad)) == 3  # hit1 > 1, nll < 0, hit3 < hit1
    assert metrics_problems(good.with_columns(hit3=pl.lit(float("nan"))))


# --- a tiny warehouse: the four input tables with the documented columns --------------------------------


def tiny_tables(seed=0, n_customers=12, n_days=70):
    """Episodes where customers mostly re-buy their favourite product of a category, sometimes the most
    popular one; features consistent with the documented meanings (enough to fit the logit and ranker)."""
    rng = np.random.default_rng(seed)
    cats = {
        "A": [f"A{i}" for i in range(6)],
        "B": [f"B{i}" for i in range(4)],
        "C": [f"C{i}" for i in range(3)],
    }
    fav = {(c, k): rng.choice(p) for c in range(n_customers) for k, p in cats.items()}
    start = datetime.datetime(2024, 1, 1)
    eps, opts, feats = [], [], []
    counts: dict = {}
    pop: dict = {}
    b = 0
    for day in range(n_days):
        for c in range(n_customers):
            if rng.random() > 0.5:
                continue
            b += 1
            for k, prods in cats.items():
                if rng.random() > 0.7:
                    continue
                chosen = fav[(c, k)] if rng.random() < 0.75 else rng.choice(prods)
                eid = f"{b}|{k}"
                qty = int(rng.integers(1, 4))
                eps.append(
                    {
                        "episode_id": eid,
                        "basket_id": str(b),
                        "category": k,
                        "customer_id": str(c),
                        "ts": start + datetime.timedelta(days=day),
                        "day": (start + datetime.timedelta(days=day)).date(),
                        "chosen_product_id": chosen,
                        "quantity": qty,
                        "n_options": len(prods),
                    }
                )
                for pos, p in enumerate(sorted(prods), 1):
                    price = 1.0 + 0.1 * pos
                    cp = counts.get((c, p), 0)
                    opts.append(
                        {
                            "episode_id": eid,
                            "product_id": p,
                            "position": pos,
                            "is_chosen": p == chosen,
                            "price": price,
                            "list_price": price * 1.1,
                        }
                    )
                    feats.append(
                        {
                            "episode_id": eid,
                            "product_id": p,
                            "pop_28d": pop.get(p, 0),
                            "pop_total": pop.get(p, 0),
                            "is_new": pop.get(p, 0) == 0,
                            "cust_product_purchases": cp,
                            "cust_brand_purchases": cp,
                            "cust_category_purchases": sum(counts.get((c, q), 0) for q in prods),
                            "days_since_cust_purchase": float(rng.integers(1, 30)) if cp else None,
                            "discount_depth": 1 - 1 / 1.1,
                            "log_price": math.log(price + 0.01),
                            "rel_price": 1.0,
                            "ref_price": price,
                            "ref_price_gap": 0.0,
                            "cust_mean_qty": 2.0 if cp else None,
                            "prod_mean_qty_28d": 1.5 if pop.get(p, 0) else None,
                        }
                    )
                counts[(c, chosen)] = counts.get((c, chosen), 0) + 1
                pop[chosen] = pop.get(chosen, 0) + 1
    episodes = pl.DataFrame(eps).with_columns(pl.col("n_options").cast(pl.Int32))
    last = n_days - 1
    splits = episodes.select(
        "episode_id",
        period=pl.when(pl.col("day") >= (start + datetime.timedelta(days=last - 13)).date())
        .then(pl.lit("test"))
        .when(pl.col("day") >= (start + datetime.timedelta(days=last - 20)).date())
        .then(pl.lit("val"))
        .otherwise(pl.lit("train")),
    ).with_columns(
        in_test_sparse=(pl.col("period") == "test") & pl.col("episode_id").str.ends_with("|C"),
        in_test_cold=pl.lit(False),
        in_test_new=pl.lit(False),
        cold_category=pl.lit(False),
        use_for_fit=pl.col("period") == "train",
    )
    options = pl.DataFrame(opts).with_columns(pl.col("position").cast(pl.Int32))
    return episodes, options, pl.DataFrame(feats), splits


def test_run_baselines_on_tiny_tables():
    episodes, options, feats, splits = tiny_tables()
    opts = (
        options.join(
            episodes.select("episode_id", "basket_id", "category", "customer_id", "quantity"), on="episode_id"
        )
        .join(splits, on="episode_id")
        .join(feats, on=["episode_id", "product_id"], how="left")
    )
    run = run_baselines(
        opts, BaselineSettings(max_train_episodes=10_000, lgbm_n_estimators=30), log=lambda s: None
    )
    met = run.metrics
    # random: hit1 = mean over test episodes of 1 / n_options, computed here from the tables
    test_ids = splits.filter(pl.col("period") == "test")["episode_id"]
    n_opt = episodes.filter(pl.col("episode_id").is_in(test_ids.implode()))["n_options"].cast(pl.Float64)
    rnd = met.filter((pl.col("method") == "random") & (pl.col("split") == "test_all"))
    assert rnd["hit1"][0] == pytest.approx(float((1 / n_opt).mean()))
    assert rnd["nll"][0] == pytest.approx(float(n_opt.log().mean()))
    assert rnd["n_episodes"][0] == test_ids.len()
    # repeat, clogit and the ranker find the habit; popularity mostly does not
    get = {(r["method"], r["split"]): r for r in met.iter_rows(named=True)}
    assert get[("repeat", "test_all")]["hit1"] > get[("popularity", "test_all")]["hit1"]
    assert get[("clogit", "test_all")]["hit1"] > 0.6
    assert get[("lgbm", "test_all")]["hit1"] > 0.6
    assert get[("clogit", "test_all")]["nll"] < get[("random", "test_all")]["nll"]
    assert get[("qty_one", "test_all")]["hit1"] is None
    assert get[("qty_one", "test_all")]["qty_mae"] is not None
    assert metrics_problems(met) == []
    # predictions: every method on every val/test option
    n_eval_rows = options.join(splits.filter(pl.col("period") != "train"), on="episode_id").height
    assert run.predictions.height == 6 * n_eval_rows  # random, popularity, repeat, clogit, clogit6, lgbm
    md = metrics_markdown(met)
    assert "**test_all**" in md and "clogit" in md
    assert headline_metrics(met)["test_all/repeat/hit1"] == get[("repeat", "test_all")]["hit1"]


def write_warehouse(conn, tables):
    """The four tables, plus episode_purchases (the actual choices as purchases: select_eval_options reads
    which products sold before the first val day)."""
    purchases = tables[0].select(
        "basket_id", "customer_id", "category", "day", product_id="chosen_product_id"
    )
    for name, frame in zip(
        ["decision_episodes", "episode_options", "option_features", "episode_splits", "episode_purchases"],
        [*tables, purchases],
        strict=True,
    ):
        conn.register("tmp_frame", frame.to_arrow())
        conn.execute(f"create or replace table {name} as select * from tmp_frame")
        conn.unregister("tmp_frame")


def test_baseline_report_materializes(duckdb_resource, mlflow_resource):
    import dagster as dg

    from assets.evaluation import BaselineReportConfig, baseline_report, metrics_in_range

    tables = tiny_tables(seed=1)
    with duckdb_resource.get_connection() as conn:
        write_warehouse(conn, tables)
    result = dg.materialize(
        [baseline_report, metrics_in_range],
        resources={"duckdb": duckdb_resource, "mlflow": mlflow_resource},
        run_config=dg.RunConfig({"baseline_report": BaselineReportConfig(lgbm_n_estimators=20)}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("baseline_report")[0].metadata
    episodes, options, _, splits = tables
    test = splits.filter(pl.col("period") == "test").join(episodes, on="episode_id")
    expected_random = float((1 / test["n_options"].cast(pl.Float64)).mean())
    assert meta["test_all/random/hit1"].value == pytest.approx(expected_random)
    assert meta["test_all/random/hit3"].value == pytest.approx(
        float((3 / test["n_options"]).clip(0, 1).mean())
    )
    assert meta["mlflow_run_id"].value
    assert meta["plot"].value.startswith("![baseline metrics](data:image/png;base64,")
    with duckdb_resource.get_connection() as conn:
        met = conn.sql("select * from baseline_metrics").pl()
        n_pred = conn.execute("select count(*) from baseline_predictions").fetchall()[0][0]
        qty_one_mae = conn.execute(
            "select qty_mae from baseline_metrics where method = 'qty_one' and split = 'test_all'"
        ).fetchall()[0][0]
    assert set(met["split"]) == {"val", "test_all", "test_sparse", "test_cold", "test_new"} | {
        "val_sparse",
        "val_cold",
        "val_new",
    }
    assert n_pred == 6 * options.join(splits.filter(pl.col("period") != "train"), on="episode_id").height
    # qty_one: mean |1 - quantity| over the test episodes, computed from the input table
    assert qty_one_mae == pytest.approx(float((test["quantity"] - 1).abs().mean()))
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].passed


def test_metrics_in_range_check_fails_on_bad_table(duckdb_resource):
    from assets.evaluation import metrics_in_range

    with duckdb_resource.get_connection() as conn:
        conn.execute(
            "create table baseline_metrics as select 'm' as method, 'test_all' as split, 10::bigint as n_episodes,"
            " 1.2::double as hit1, 1.3::double as hit3, -1.0::double as nll, 0.1::double as qty_mae,"
            " 0.1::double as qty_wape, null::double as share_jsd"
        )
    res = metrics_in_range(duckdb=duckdb_resource)
    assert not res.passed
    with duckdb_resource.get_connection() as conn:
        conn.execute("update baseline_metrics set hit1 = 0.2, hit3 = 0.5, nll = 1.0")
    assert metrics_in_range(duckdb=duckdb_resource).passed


def test_evaluate_splits_matches_evaluate_per_split():
    episodes, options, feats, splits = tiny_tables(seed=2, n_days=30)
    long = options.join(episodes.select("episode_id", "category", "quantity"), on="episode_id").join(
        feats.select("episode_id", "product_id", "pop_28d"), on=["episode_id", "product_id"]
    )
    scored = score_popularity(long)
    qty = qty_one(scored)
    members = splits.select("episode_id", split="period")
    rows = M.evaluate_splits(scored, qty, members, ["train", "val", "test", "absent"])
    for row in rows[:3]:
        ids = members.filter(pl.col("split") == row["split"])
        ref = M.evaluate(scored.join(ids, on="episode_id", how="semi"), qty)
        for k, v in ref.items():
            assert row[k] == pytest.approx(v), (row["split"], k)
    assert rows[3]["n_episodes"] == 0 and rows[3]["hit1"] is None


def test_config_defaults_match_settings():
    from dataclasses import asdict

    from assets.evaluation import BaselineReportConfig

    knobs = BaselineReportConfig().model_dump()
    assert knobs.pop("duckdb_memory_limit") == ""  # a load setting of the asset, not of the baselines
    assert knobs == asdict(BaselineSettings())


def test_run_baselines_without_fit_or_val_episodes_still_reports():
    df = option_rows().with_columns(
        basket_id=pl.col("episode_id"),
        customer_id=pl.lit("c"),
        period=pl.lit("test"),
        in_test_sparse=pl.lit(False),
        in_test_cold=pl.lit(False),
        in_test_new=pl.lit(True),
        use_for_fit=pl.lit(False),
    )
    run = run_baselines(df, BaselineSettings(), log=lambda s: None)
    got = {(r["method"], r["split"]): r for r in run.metrics.iter_rows(named=True)}
    assert run.clogit is None
    assert set(run.metrics["method"]) == {"random", "popularity", "repeat", "qty_customer_mean", "qty_one"}
    assert got[("repeat", "test_new")]["hit1"] == 1.0  # as in the hand-made example above
    assert got[("popularity", "val")]["n_episodes"] == 0
    assert metrics_problems(run.metrics) == []


def test_build_baseline_report_writes_tables_and_restores_memory_limit(tmp_path):
    import duckdb

    from assets.evaluation.logic import build_baseline_report

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    tables = tiny_tables(seed=3, n_days=40)
    write_warehouse(conn, tables)
    conn.execute("set memory_limit = '3GB'")
    before = conn.execute("select current_setting('memory_limit')").fetchall()[0][0]
    run = build_baseline_report(
        conn, BaselineSettings(lgbm_n_estimators=10), log=lambda s: None, duckdb_memory_limit="1GB"
    )
    assert conn.execute("select current_setting('memory_limit')").fetchall()[0][0] == before
    n = conn.execute("select count(*) from baseline_metrics").fetchall()[0][0]
    # (6 choice methods + 2 quantity baselines) x (5 splits + 3 val analogues) + a best_classic row per split
    assert n == run.metrics.height == 8 * 8 + 5
    kinds = conn.execute("select count(*) from baseline_predictions where prob is null").fetchall()[0][0]
    n_eval = tables[1].join(tables[3].filter(pl.col("period") != "train"), on="episode_id").height
    assert kinds == n_eval  # only repeat has no probabilities
    conn.close()


# --- clogit6 and the best classic per split ----------------------------------------------------------


def six_feature_episodes(n_episodes=4000, k=6, seed=0, beta=(-0.8, 1.5, 0.6, 1.2, 0.4, 0.9)):
    """Synthetic choice sets whose raw columns map onto SIX_FEATURES, the choice drawn from a conditional logit
    with the planted coefficients `beta` (order: log_price, discount_depth, log_pop_28d, log_cust_product,
    log_cust_brand, is_new); half the episodes are val (one category in four cold), half test."""
    rng = np.random.default_rng(seed)
    n = n_episodes * k
    price = np.exp(rng.normal(0.5, 0.5, n))
    pop = rng.poisson(3.0, n) * (rng.random(n) < 0.85)
    frame = pl.DataFrame(
        {
            "episode_id": np.repeat([f"e{i:05d}" for i in range(n_episodes)], k),
            "position": np.tile(np.arange(1, k + 1), n_episodes).astype(np.int32),
            "product_id": [f"p{j}" for j in range(n)],
            "log_price": np.log(price + 0.01),
            "discount_depth": rng.uniform(0, 0.5, n) * (rng.random(n) < 0.3),
            "pop_28d": pop,
            "pop_total": pop,
            "is_new": rng.random(n) < 0.1,
            "cust_product_purchases": rng.poisson(0.5, n),
            "cust_brand_purchases": rng.poisson(1.5, n),
        }
    )
    X = features_matrix(frame, SIX_FEATURES)
    u = X @ np.array(beta) + rng.gumbel(size=n)
    chosen = u.reshape(n_episodes, k).argmax(axis=1)
    is_chosen = np.zeros(n, dtype=bool)
    is_chosen[np.arange(n_episodes) * k + chosen] = True
    ep = np.arange(n) // k
    return frame.with_columns(
        is_chosen=pl.Series(is_chosen),
        period=pl.Series(np.where(ep % 2 == 0, "val", "test")),
        cold_category=pl.Series(ep % 8 == 1),
    )


def test_clogit6_recovers_planted_coefficients():
    beta = np.array([-0.8, 1.5, 0.6, 1.2, 0.4, 0.9])
    frame = six_feature_episodes(beta=tuple(beta))
    res = fit_clogit_on(frame, SIX_FEATURES)
    assert res.converged and res.feature_names == list(SIX_FEATURES)
    assert np.all(np.abs(res.coef - beta) < 4 * res.se), (res.coef, res.se)
    assert np.max(np.abs(res.coef - beta)) < 0.25


def test_clogit6_fits_on_val_outside_cold_and_cross_fits_val_scores():
    frame = six_feature_episodes(n_episodes=2000, seed=1)
    val = frame.filter(pl.col("period") == "val")
    model = fit_clogit6(val, BaselineSettings(clogit6_folds=2))
    # fit on the val episodes of the warm categories only
    n_warm = val.filter(~pl.col("cold_category"))["episode_id"].n_unique()
    assert model.full.n_groups == n_warm
    assert sum(r.n_groups for r in model.folds) == n_warm
    scored = score_clogit6(frame, model)
    X = features_matrix(frame, SIX_FEATURES)
    fold = val_folds(frame, 0, 2).to_numpy()
    is_val = (frame["period"] == "val").to_numpy()
    expect = X @ model.full.coef
    for f, res in enumerate(model.folds):
        expect[is_val & (fold == f)] = (X @ res.coef)[is_val & (fold == f)]
    np.testing.assert_allclose(scored["score"].to_numpy(), expect)
    # a val row is never scored by a model that saw it: its fold's model differs from the full one
    assert not np.allclose(
        scored.filter(pl.col("period") == "val")["score"].to_numpy(), (X @ model.full.coef)[is_val]
    )
    sums = scored.group_by("episode_id").agg(pl.col("prob").sum())["prob"].to_numpy()
    np.testing.assert_allclose(sums, 1.0)


def metrics_rows(figures):
    """figures: {(method, split): (n_episodes, hit1)} -> a baseline_metrics-like frame."""
    rows = [
        {"method": m, "split": s, "n_episodes": n, "hit1": h, "hit3": h, "nll": 1.0}
        for (m, s), (n, h) in figures.items()
    ]
    return pl.DataFrame(rows).with_columns(
        qty_mae=pl.lit(None, pl.Float64),
        qty_wape=pl.lit(None, pl.Float64),
        share_jsd=pl.lit(None, pl.Float64),
    )


def test_best_classic_is_chosen_on_val_not_on_test():
    figures = {
        # lgbm leads on val; clogit6 on val_new; the test figures point the other way and must not matter
        ("lgbm", "val"): (1000, 0.58),
        ("clogit6", "val"): (1000, 0.57),
        ("lgbm", "val_new"): (300, 0.08),
        ("clogit6", "val_new"): (300, 0.12),
        ("lgbm", "val_sparse"): (50, 0.10),  # too few to choose on: test_sparse falls back to val
        ("clogit6", "val_sparse"): (50, 0.90),
        ("lgbm", "val_cold"): (400, 0.50),
        ("clogit6", "val_cold"): (400, 0.50),  # a tie: the earlier method of CHOICE_METHODS (clogit6)
        ("lgbm", "test_all"): (2000, 0.10),
        ("clogit6", "test_all"): (2000, 0.90),
        ("lgbm", "test_new"): (200, 0.90),
        ("clogit6", "test_new"): (200, 0.10),
        ("lgbm", "test_sparse"): (20, 0.3),
        ("clogit6", "test_sparse"): (20, 0.4),
        ("lgbm", "test_cold"): (300, 0.6),
        ("clogit6", "test_cold"): (300, 0.5),
        ("qty_one", "val_new"): (300, None),  # a quantity row has no hit1: never a candidate
    }
    metrics = metrics_rows(figures)
    choice = best_classic_by_split(metrics, min_val_episodes=200)
    got = {r["split"]: (r["method"], r["chosen_on"]) for r in choice.iter_rows(named=True)}
    assert got == {
        "val": ("lgbm", "val"),
        "test_all": ("lgbm", "val"),
        "test_sparse": ("lgbm", "val"),
        "test_cold": ("clogit6", "val_cold"),
        "test_new": ("clogit6", "val_new"),
    }
    # the test figures play no part: scrambling them leaves the choice as it is
    scrambled = metrics.with_columns(
        hit1=pl.when(pl.col("split").str.starts_with("test"))
        .then(1.0 - pl.col("hit1"))
        .otherwise(pl.col("hit1"))
    )
    assert best_classic_by_split(scrambled, min_val_episodes=200).equals(choice)
    # the best_classic rows carry the chosen method's figures of each split
    rows = {r["split"]: r for r in best_classic_rows(metrics, choice).iter_rows(named=True)}
    assert set(rows) == set(got) and all(r["method"] == "best_classic" for r in rows.values())
    assert rows["test_new"]["hit1"] == 0.10 and rows["test_all"]["hit1"] == 0.10
    assert rows["test_cold"]["hit1"] == 0.5


def test_run_baselines_reports_clogit6_and_best_classic():
    episodes, options, feats, splits = tiny_tables(seed=2)
    opts = (
        options.join(
            episodes.select("episode_id", "basket_id", "category", "customer_id", "quantity"), on="episode_id"
        )
        .join(splits, on="episode_id")
        .join(feats, on=["episode_id", "product_id"], how="left")
    )
    run = run_baselines(
        opts, BaselineSettings(max_train_episodes=10_000, lgbm_n_estimators=20), log=lambda s: None
    )
    assert run.clogit6 is not None and run.clogit6.feature_names == list(SIX_FEATURES)
    best = run.best_classic
    assert best["split"].to_list() == SPLITS
    # each best_classic row is a copy of its chosen method's row of that split
    for r in best.iter_rows(named=True):
        mine = run.metrics.filter((pl.col("method") == "best_classic") & (pl.col("split") == r["split"]))
        theirs = run.metrics.filter((pl.col("method") == r["method"]) & (pl.col("split") == r["split"]))
        assert mine.drop("method").equals(theirs.drop("method"))
    val = run.metrics.filter(pl.col("split") == "val", pl.col("method").is_in(CHOICE_METHODS))
    assert (
        best.filter(pl.col("split") == "test_all")["method"][0]
        == val.sort("hit1", descending=True)["method"][0]
    )
    assert "**best classic per split" in metrics_markdown(run.metrics, best)


def test_eval_frame_flags_the_val_analogues(tmp_path):
    import duckdb

    from assets.evaluation.best_classic import val_analogue_membership
    from assets.evaluation.logic import load_eval_frame

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_warehouse(conn, tiny_tables(seed=4, n_days=40))
    val_start = conn.execute(
        "select min(e.day) from decision_episodes e join episode_splits s using (episode_id) where s.period = 'val'"
    ).fetchall()[0][0]
    # A0 first sells in val; category B is a cold one; C's test episodes are test_sparse (tiny_tables)
    conn.execute("delete from episode_purchases where product_id = 'A0' and day < $d", {"d": val_start})
    conn.execute("update episode_splits set cold_category = true where episode_id like '%|B'")
    frame = load_eval_frame(conn, 0)
    conn.close()
    eps = frame.filter(pl.col("is_chosen")).select(
        "episode_id",
        "period",
        "category",
        "cold_category",
        "in_val_sparse",
        "in_val_new",
        chosen="product_id",
    )
    is_val = pl.col("period") == "val"
    assert eps.filter(pl.col("in_val_new") != (is_val & (pl.col("chosen") == "A0"))).height == 0
    assert eps.filter(pl.col("in_val_sparse") != (is_val & (pl.col("category") == "C"))).height == 0
    assert eps.filter(is_val & (pl.col("chosen") == "A0")).height > 0  # the check is not vacuous
    members = val_analogue_membership(eps)
    count = {s: members.filter(pl.col("split") == s).height for s in ("val_sparse", "val_cold", "val_new")}
    assert count == {
        "val_sparse": eps.filter(is_val & (pl.col("category") == "C")).height,
        "val_cold": eps.filter(is_val & (pl.col("category") == "B")).height,
        "val_new": eps.filter(is_val & (pl.col("chosen") == "A0")).height,
    }
