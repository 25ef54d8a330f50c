"""Simulation stage: retail_decisions (the LLM agent's choice distributions) and eval_report, on a tiny
warehouse and the tiny random model of tests/llm_fixtures.py."""

import dataclasses
import math
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from assets.simulation import RetailDecisionsConfig, decide, plan, report
from tests.llm_fixtures import tiny_test_model
from tests.test_prompts import make_warehouse

# test episodes added to tests/test_prompts.make_warehouse (which has val b4 and test b5, chosen p2)
EXTRA_TEST = [  # episode, customer, day, chosen, quantity, sparse, new
    ("b6", "c1", "2017-03-02", "p1", 3, False, True),
    ("b7", "c2", "2017-03-03", "p3", 1, True, False),
    ("b8", "c1", "2017-03-04", "p1", 2, False, False),
]
# hand-made baseline: always prefers p1 (scores 3, 2, 1 for p1, p2, p3), probabilities 0.5, 0.3, 0.2
BASE_SCORE = {"p1": 3.0, "p2": 2.0, "p3": 1.0}
BASE_PROB = {"p1": 0.5, "p2": 0.3, "p3": 0.2}


def _q(conn, sql: str, params: dict | None = None) -> None:
    """Run a statement and read its result (duckdb 2.x refuses new work while a count row is unread)."""
    conn.execute(sql, params or {}).fetchall()


def build_warehouse(path: str) -> None:
    make_warehouse(path)
    conn = duckdb.connect(path)
    for b, c, day, chosen, qty, sparse, new in EXTRA_TEST:
        eid = f"{b}|SNACKS"
        _q(
            conn,
            "insert into decision_episodes values ($e, $b, 'SNACKS', $c, $d::timestamp, $d::date, $ch, $q, 3)",
            {"e": eid, "b": b, "c": c, "d": day, "ch": chosen, "q": qty},
        )
        _q(
            conn,
            "insert into episode_splits values ($e, 'test', $s, false, $n, false, false)",
            {"e": eid, "s": sparse, "n": new},
        )
        for pos, pid in enumerate(["p1", "p2", "p3"], start=1):
            _q(
                conn,
                "insert into episode_options values ($e, $p, $pos, $ch, $price, $lp)",
                {"e": eid, "p": pid, "pos": pos, "ch": pid == chosen, "price": 1.0 + pos, "lp": 2.0 + pos},
            )
            _q(
                conn,
                """insert into option_features values ($e, $p, 3, 5, false, 0, 0, 0, null, 0.2, 0.7, 1.0,
                   $price, 0.0, $cmq, 1.0)""",
                {"e": eid, "p": pid, "price": 1.0 + pos, "cmq": 2.4 if c == "c1" else None},
            )
    rows = conn.execute("select episode_id, product_id from episode_options order by all").fetchall()
    _q(conn, "create table baseline_predictions (method varchar, episode_id varchar, product_id varchar, "
                 "score double, prob double)")  # fmt: skip
    for e, p in rows:
        _q(
            conn,
            "insert into baseline_predictions values ('always_p1', $e, $p, $s, $pr)",
            {"e": e, "p": p, "s": BASE_SCORE[p], "pr": BASE_PROB[p]},
        )
    conn.close()


TEST_CHOSEN = {"b5|SNACKS": "p2", **{f"{b}|SNACKS": ch for b, _, _, ch, *_ in EXTRA_TEST}}
TEST_QTY = {"b5|SNACKS": 1, **{f"{b}|SNACKS": q for b, _, _, _, q, *_ in EXTRA_TEST}}


def settings_of(mode: str = "score", **changes) -> plan.DecisionSettings:
    """A method's settings as the asset builds them: RetailDecisionsConfig's defaults (the only ones) with
    `changes`, on the test period; `mode` is a variant's (the config has none)."""
    return plan.decision_settings(RetailDecisionsConfig(**{"period": "test", **changes}), mode=mode)


@pytest.fixture
def conn(tmp_path):
    """A connection to a fresh copy of the test warehouse (build_warehouse)."""
    path = str(tmp_path / "w.duckdb")
    build_warehouse(path)
    c = duckdb.connect(path)
    yield c
    c.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_test_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine(tiny_model):
    from resources.llm import LLMResource

    return LLMResource(model=str(tiny_model)).get_engine()


def test_names_periods_and_adapter_choice(tmp_path):
    assert plan.method_name("utility", False) == "llm_zero_shot_utility"
    assert plan.method_name("listwise", True, include_style=False) == "llm_aligned_listwise_no_style"
    assert plan.method_name("utility", False, True, False) == "llm_zero_shot_utility_no_signals"
    assert plan.parse_periods("val, test") == ["val", "test"]
    with pytest.raises(ValueError):
        plan.parse_periods("train")
    assert plan.choose_adapter(None, "default", True) == ("", "no lora_adapters row")
    assert plan.choose_adapter({"adapter_path": str(tmp_path)}, "default", True)[0] == ""  # no adapter files
    (tmp_path / "adapter_config.json").write_text("{}")
    row = {"adapter_path": str(tmp_path), "base_model": "default", "dagster_run_id": "r1"}
    assert plan.choose_adapter(row, "default", True)[0] == str(tmp_path)
    assert plan.choose_adapter(row, "default", False)[0] == ""
    assert plan.choose_adapter(row, "/other/model", True)[0] == ""  # trained on another base model


def test_latest_adapter_reads_the_table_when_present(tmp_path):
    conn = duckdb.connect(str(tmp_path / "a.duckdb"))
    assert plan.latest_adapter(conn) is None  # no table
    _q(conn, "create table lora_adapters (dagster_run_id varchar, mlflow_run_id varchar, "
                 "adapter_path varchar, base_model varchar, created_at timestamp)")  # fmt: skip
    assert plan.latest_adapter(conn) is None  # empty
    _q(conn, "insert into lora_adapters values ('old', 'm', '/a/old', 'default', '2026-01-01'), "
                 "('new', 'm', '/a/new', 'default', '2026-02-01')")  # fmt: skip
    assert plan.latest_adapter(conn)["adapter_path"] == "/a/new"
    conn.close()


def test_softmax_and_top_index():
    p = decide.softmax(np.array([0.0, math.log(3.0)]))
    assert p == pytest.approx([0.25, 0.75])
    assert decide.softmax(np.array([1000.0, 1000.0])) == pytest.approx([0.5, 0.5])
    assert decide.softmax(np.array([np.nan, 0.0])) == pytest.approx([0.0, 1.0])


def test_sample_matches_the_protocol(conn):
    eps, members = plan.load_sample(conn, ["test"], seed=0, n_per_split=0)
    assert sorted(e.episode.episode_id for e in eps) == sorted(TEST_CHOSEN)
    got = {(r["episode_id"], r["split"]) for r in members.iter_rows(named=True)}
    assert ("b7|SNACKS", "test_sparse") in got and ("b5|SNACKS", "test_sparse") in got
    assert ("b6|SNACKS", "test_new") in got and ("b8|SNACKS", "test_new") not in got
    assert sum(1 for _, s in got if s == "test_all") == 4
    # N = 2: the 2 smallest md5("0|{basket}|SNACKS") of test_all
    import hashlib

    keys = sorted((hashlib.md5(f"0|{e.split('|')[0]}|SNACKS".encode()).hexdigest(), e) for e in TEST_CHOSEN)
    _, m2 = plan.load_sample(conn, ["test"], seed=0, n_per_split=2)
    assert set(m2.filter(split="test_all")["episode_id"].to_list()) == {e for _, e in keys[:2]}
    # episodes come in md5 order (every split advancing together): any prefix is a smaller sample
    rank = {}
    for split in ("test_all", "test_sparse", "test_new", "test_cold"):
        ids = set(members.filter(split=split)["episode_id"].to_list())
        for r, (_, e) in enumerate(k for k in keys if k[1] in ids):
            rank[e] = min(rank.get(e, r), r)
    assert [e.episode.episode_id for e in eps] == sorted(rank, key=lambda e: (rank[e], e))
    assert [e.episode.episode_id for e in eps] != sorted(TEST_CHOSEN)  # not the id order of before
    conn.close()


def test_decisions_equal_a_direct_softmax_of_scores(conn, engine):
    settings = settings_of(n_per_split=0, chunk_episodes=3)
    run = decide.run_decisions(conn, engine, settings, "llm_zero_shot_utility", "run-1", log=lambda _: None)
    d = run.decisions
    assert d.height == 4 * 3
    sums = d.group_by("episode_id").agg(pl.col("prob").sum(), pl.col("is_top").sum())
    assert sums["prob"].to_list() == pytest.approx([1.0] * 4, abs=1e-12)
    assert sums["is_top"].to_list() == [1] * 4
    # an independent computation for one episode: the plain (no prefix reuse) score of each full prompt
    eps, _ = plan.load_sample(conn, ["test"], 0, 0)
    ep = next(e for e in eps if e.episode.episode_id == "b6|SNACKS")
    ((prefix, suffixes),) = decide.utility_items([ep], True, True)
    u = engine.score_options(prefix, suffixes, prefix_reuse=False)
    p = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    mine = d.filter(episode_id="b6|SNACKS").sort("product_id")
    assert mine["prob"].to_list() == pytest.approx(list(p), abs=1e-4)
    assert mine["utility"].to_list() == pytest.approx(list(u), abs=1e-3)
    assert mine["is_top"].to_list() == [i == int(np.argmax(u)) for i in range(3)]
    q = d.filter(pl.col("is_top"))["expected_qty"]
    assert q.null_count() == 0 and ((q >= 1) & (q <= 9)).all()
    assert d.filter(~pl.col("is_top"))["expected_qty"].null_count() == 8
    med = d.filter(pl.col("is_top"))["median_qty"]
    assert med.null_count() == 0 and set(med.to_list()) <= {float(v) for v in range(1, 10)}
    assert run.info["n_prompts"] == 4 * 3 + 4 and run.info["parse_failure_rate"] == 0.0
    assert run.info["decisions_per_sec"] > 0
    conn.close()


def test_listwise_form_is_a_distribution(conn, engine):
    settings = settings_of(n_per_split=0, form="listwise", quantity=False)
    run = decide.run_decisions(conn, engine, settings, "llm_zero_shot_listwise", "r", log=lambda _: None)
    d = run.decisions
    sums = d.group_by("episode_id").agg(pl.col("prob").sum())["prob"].to_list()
    assert sums == pytest.approx([1.0] * 4, abs=1e-9)
    # listwise utilities are normalised label log-probabilities: exp(utility) = prob
    assert np.exp(d["utility"].to_numpy()) == pytest.approx(d["prob"].to_numpy(), abs=1e-9)
    assert d["expected_qty"].null_count() == d.height
    conn.close()


def _hand_metrics(frame: pl.DataFrame, score: str, episodes: list[str]) -> tuple[float, float]:
    """hit@1 and nll computed by hand: the top score (no ties here) against the actual choice."""
    hits, nlls = [], []
    for e in episodes:
        rows = frame.filter(episode_id=e)
        top = rows.sort(score, descending=True)["product_id"][0]
        hits.append(1.0 if top == TEST_CHOSEN[e] else 0.0)
        nlls.append(-math.log(rows.filter(product_id=TEST_CHOSEN[e])["prob"][0]))
    return float(np.mean(hits)), float(np.mean(nlls))


def test_report_matches_hand_computed_metrics(conn, tmp_path, engine):
    run = decide.run_decisions(conn, engine, settings_of(n_per_split=0), "llm_x", "r", log=lambda _: None)
    decide.write_decisions(conn, run, "llm_x")
    decide.write_decisions(conn, run, "llm_x")  # a second write replaces, never duplicates
    assert conn.execute("select count(*) from retail_decisions").fetchall()[0][0] == 12
    metrics, fits, _ = report.build_report(conn, log=lambda _: None)
    # no clogit among the baselines: the hybrid has nothing to combine with and reports no rows
    assert [f.n_val_episodes for f in fits] == [0] and set(metrics["sample"]) == {"main"}
    assert set(zip(metrics["method"], metrics["split"], strict=True)) == {
        (m, s) for m in ("llm_x", "always_p1") for s in ("test_all", "test_sparse", "test_new")
    }
    everything = sorted(TEST_CHOSEN)
    sparse = ["b5|SNACKS", "b7|SNACKS"]
    for method, frame, score in (("llm_x", run.decisions, "utility"),):
        for split, eps in (("test_all", everything), ("test_sparse", sparse)):
            h, n = _hand_metrics(frame, score, eps)
            row = metrics.filter(method=method, split=split).row(0, named=True)
            assert row["n_episodes"] == len(eps)
            assert row["hit1"] == pytest.approx(h) and row["nll"] == pytest.approx(n)
    # the baseline always ranks p1 first: hit@1 = share of p1 choices (b6, b8 of 4); nll = -ln 0.5 there
    base = metrics.filter(method="always_p1", split="test_all").row(0, named=True)
    assert base["hit1"] == pytest.approx(2 / 4) and base["hit3"] == pytest.approx(1.0)
    assert base["nll"] == pytest.approx(-(2 * math.log(0.5) + math.log(0.3) + math.log(0.2)) / 4)
    # its quantity: cust_mean_qty 2.4 -> 2 for c1's episodes (b6: 3, b8: 2), else prod_mean_qty_28d 1
    # (b5: 1, b7: 1): MAE = (1 + 0 + 0 + 0) / 4
    assert base["qty_mae"] == pytest.approx(0.25)
    # the LLM's quantity: the median of its top row's quantity distribution, against the actual units
    top = run.decisions.filter(pl.col("is_top"))
    pred = {e: max(q, 1) for e, q in zip(top["episode_id"], top["median_qty"], strict=True)}
    mae = np.mean([abs(pred[e] - TEST_QTY[e]) for e in everything])
    assert metrics.filter(method="llm_x", split="test_all")["qty_mae"][0] == pytest.approx(mae)
    md = report.report_markdown(metrics, fits)
    assert "always_p1" in md and "llm_x" in md and "test_sparse" in md
    png = report.plot_hit1(metrics, tmp_path / "p.png")
    assert png.stat().st_size > 1000
    conn.close()


def test_report_fits_a_hybrid_on_lgbm_when_lgbm_is_there(conn, engine):
    run = decide.run_decisions(conn, engine, settings_of(n_per_split=0), "llm_x", "r", log=lambda _: None)
    decide.write_decisions(conn, run, "llm_x")
    rows = conn.execute(
        "select episode_id, product_id, score from baseline_predictions where method = 'always_p1'"
    ).fetchall()
    for e, p, score in rows:  # lgbm here prefers p3 (the reverse of always_p1)
        _q(
            conn,
            "insert into baseline_predictions values ('lgbm', $e, $p, $s, null)",
            {"e": e, "p": p, "s": -score},
        )
    metrics, fits, _ = report.build_report(conn, log=lambda _: None)
    assert [(f.method, f.base_method) for f in fits] == [
        ("hybrid_llm_x", "clogit"),
        ("hybrid_lgbm_llm_x", "lgbm"),
    ]
    hyb = metrics.filter(method="hybrid_lgbm_llm_x")
    assert set(hyb["kind"]) == {"hybrid"} and "val" not in set(hyb["split"]) and hyb.height == 3
    # one val episode is too few to fit: the hybrid is lgbm itself, so its hit@1 is lgbm's (p3 chosen once)
    lg = metrics.filter(method="lgbm", split="test_all")["hit1"][0]
    assert hyb.filter(split="test_all")["hit1"][0] == pytest.approx(lg) == pytest.approx(1 / 4)
    assert "s_lgbm" in report.report_markdown(metrics, fits)
    conn.close()


def test_report_without_decisions_or_baselines(tmp_path):
    conn = duckdb.connect(str(tmp_path / "e.duckdb"))
    metrics, fits, _ = report.build_report(conn, log=lambda _: None)
    assert metrics.height == 0 and fits == []
    conn.close()


class CountingEngine:
    """The engine with every method call counted; `fail_after` calls raise (a process that stops)."""

    def __init__(self, engine, fail_after: int | None = None):
        self._engine, self.calls, self.fail_after = engine, 0, fail_after

    def __getattr__(self, name):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("stopped")
            self.calls += 1
            return attr(*a, **kw)

        return call


@pytest.mark.parametrize("mode", ["score", "sample"])
def test_a_stopped_run_resumes_from_its_checkpoint(conn, tmp_path, engine, mode):
    form = "utility" if mode == "score" else "listwise"
    settings = settings_of(n_per_split=0, chunk_episodes=2, form=form, mode=mode, k=2, runs=2)
    plain = CountingEngine(engine)
    ref = decide.run_decisions(conn, plain, settings, "m", "r", log=lambda _: None)
    per_run = plain.calls
    assert per_run % 2 == 0 and ref.checkpoint is None  # two chunks of 2 episodes, the same calls each

    ckpt = tmp_path / "ckpt" / "m-key"
    stopping = CountingEngine(engine, fail_after=per_run // 2 + 1)  # stops inside the second chunk
    with pytest.raises(RuntimeError, match="stopped"):
        decide.run_decisions(conn, stopping, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt)
    resumed_engine = CountingEngine(engine)
    run = decide.run_decisions(
        conn, resumed_engine, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt
    )
    assert run.info["n_resumed"] == 2 and resumed_engine.calls == per_run // 2  # only chunk 2 decided again
    assert run.decisions.drop("run_id").equals(ref.decisions.drop("run_id"))
    assert run.samples.sort(pl.all()).equals(ref.samples.sort(pl.all()))
    assert {k: v for k, v in run.info.items() if k.startswith(("samples", "failures"))} == {
        k: v for k, v in ref.info.items() if k.startswith(("samples", "failures"))
    }
    # everything saved: a third run decides nothing; a damaged chunk is decided again, never trusted
    again = CountingEngine(engine)
    decide.run_decisions(conn, again, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt)
    assert again.calls == 0
    (folder,) = ckpt.parent.iterdir()
    (folder / "chunk_000000.parquet").write_bytes(b"not parquet")
    decide.run_decisions(conn, again, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt)
    assert again.calls == per_run // 2
    # another sample (other episodes) never reuses the chunks of this one
    other = CountingEngine(engine)
    small = dataclasses.replace(settings, n_per_split=1)
    decide.run_decisions(conn, other, small, "m", "r", log=lambda _: None, checkpoint_dir=ckpt)
    assert other.calls > 0 and len(list(ckpt.parent.iterdir())) == 2
    run.checkpoint.clear()
    assert not folder.exists()
    conn.close()


def test_a_time_budget_keeps_the_protocol_sample_at_a_smaller_n(conn, tmp_path, engine):
    import time

    settings = settings_of(n_per_split=0, chunk_episodes=1)
    ckpt = tmp_path / "ckpt" / "m"
    full = decide.run_decisions(conn, engine, settings, "m", "r", log=lambda _: None)
    eps, members, _ = plan.load_run_sample(conn, settings)
    with pytest.raises(RuntimeError, match="stopped"):  # 3 chunks (episodes) decided, then the stop
        decide.run_decisions(conn, CountingEngine(engine, 6), settings, "m", "r", log=lambda _: None,
                        checkpoint_dir=ckpt)  # fmt: skip
    run = decide.run_decisions(
        conn, engine, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt, deadline=time.monotonic()
    )
    assert run.info["n_decided"] == 3 and run.info["n_planned"] == 4 and not run.info["complete"]
    # every split keeps its md5 ranks below the 4th episode's best rank: a prefix of its sample
    fourth = members.filter(episode_id=eps[3].episode.episode_id)["sample_rank"].min()
    want = members.filter(pl.col("sample_rank") < fourth).select("episode_id", "split")
    assert want.height >= 1
    assert run.members.select("episode_id", "split").sort(pl.all()).equals(want.sort(pl.all()))
    assert set(run.decisions["episode_id"]) == set(want["episode_id"])
    mine = run.decisions.drop("run_id").sort("episode_id", "product_id")
    ref = full.decisions.drop("run_id").filter(pl.col("episode_id").is_in(want["episode_id"].to_list()))
    assert mine.equals(ref.sort("episode_id", "product_id"))
    # no budget: the run goes on from the checkpoint to the whole sample
    done = decide.run_decisions(conn, engine, settings, "m", "r", log=lambda _: None, checkpoint_dir=ckpt)
    assert (
        done.info["complete"] and done.info["n_resumed"] == 3 and done.members.height == full.members.height
    )
    conn.close()


def test_assets_materialize(tiny_model, duckdb_resource, mlflow_resource, monkeypatch):
    import subprocess
    import sys

    from assets.simulation import (
        EvalReportConfig,
        RetailDecisionsConfig,
        eval_report,
        retail_decisions,
    )
    from resources.llm import LLMResource

    build_warehouse(duckdb_resource.database)
    with duckdb_resource.get_connection() as conn:  # an adapter row pointing at nothing: zero-shot
        _q(conn, "create table lora_adapters (adapter_path varchar, base_model varchar, "
                     "dagster_run_id varchar, mlflow_run_id varchar, created_at timestamp)")  # fmt: skip
        _q(conn, "insert into lora_adapters values ('/nowhere', 'x', 'r0', 'm0', $t)", {"t": datetime.now()})
    # while the agents decide, another process can open the warehouse (the asset does not hold it)
    opened, decide_chunk = [], decide.decide_chunk

    def deciding(*a, **kw):
        probe = f"import duckdb; duckdb.connect({duckdb_resource.database!r}).close()"
        opened.append(subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode)
        return decide_chunk(*a, **kw)

    monkeypatch.setattr(decide, "decide_chunk", deciding)
    result = dg.materialize(
        [retail_decisions, eval_report],
        resources={
            "duckdb": duckdb_resource,
            "mlflow": mlflow_resource,
            "llm": LLMResource(model=str(tiny_model)),
        },
        run_config=dg.RunConfig(
            {
                "retail_decisions": RetailDecisionsConfig(
                    n_per_split=0, variants=["zero_shot_listwise"], variant_n=2, variant_splits=["test_all"]
                ),
                "eval_report": EvalReportConfig(),
            }
        ),
    )
    assert result.success
    assert opened and set(opened) == {0}
    meta = result.asset_materializations_for_node("retail_decisions")[0].metadata
    # the adapter row points at nothing: the primary runs zero-shot, and the variant after it
    assert meta["methods"].value == ["llm_zero_shot_utility", "llm_zero_shot_listwise"]
    assert meta["adapter"].value == "none"
    # the primary decides val (b4) and test (4 episodes); the variant 2 test_all episodes
    assert meta["dagster/row_count"].value == 5 * 3 + 2 * 3
    assert meta["llm_zero_shot_utility.n_prompts"].value == 20  # 5 episodes x 3 options + 5 quantity
    assert meta["llm_zero_shot_listwise.n_episodes"].value == 2
    assert meta["backend"].value == "hf" and meta["llm_zero_shot_utility.tokens_per_sec"].value > 0
    assert meta["mlflow_run_id"].value
    assert meta["llm_zero_shot_utility.n_resumed"].value == 0
    ckpts = duckdb_resource.database.rsplit("/", 1)[0] + "/simulation/checkpoints"
    assert not any(Path(ckpts).glob("*/*.json"))  # written to DuckDB: the checkpoints are gone
    rmeta = result.asset_materializations_for_node("eval_report")[0].metadata
    # main: 2 methods x 4 splits (val too); variants: 3 methods (2 LLM + the baseline) on test_all
    assert rmeta["dagster/row_count"].value == 2 * 4 + 3
    assert "test_all/llm_zero_shot_utility/hit1" in rmeta
    assert "variants/test_all/llm_zero_shot_listwise/hit1" in rmeta
    with duckdb_resource.get_connection() as conn:
        probs = conn.execute(
            "select sum(prob) from retail_decisions group by method, episode_id order by all"
        ).fetchall()
        n = conn.execute("select count(*) from eval_metrics").fetchall()[0][0]
        variant_eps = conn.execute(
            "select list(distinct episode_id order by episode_id) from retail_decision_episodes "
            "where method = 'llm_zero_shot_listwise'"
        ).fetchall()[0][0]
    assert [round(p[0], 9) for p in probs] == [1.0] * 7 and n == 11
    assert len(variant_eps) == 2 and set(variant_eps) <= set(TEST_CHOSEN)
    # lineage: eval_report names the run behind each LLM row; that run's MLflow entry names the model
    assert rmeta["source_run.llm_zero_shot_listwise"].value == result.run_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_resource.resolved_tracking_uri())
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["meta.model"] == str(tiny_model) and run.data.tags["meta.adapter"] == "none"
    assert run.data.tags["meta.methods"] == "llm_zero_shot_utility, llm_zero_shot_listwise"
    assert "meta.metrics" not in client.get_run(rmeta["mlflow_run_id"].value).data.tags  # markdown stays


def test_a_run_stopped_in_a_variant_goes_on_without_deciding_the_primary_again(
    tiny_model, duckdb_resource, mlflow_resource, monkeypatch
):
    import time

    from assets.simulation import RetailDecisionsConfig, retail_decisions
    from resources.llm import LLMResource

    build_warehouse(duckdb_resource.database)
    run_decisions, decided = decide.run_decisions, []

    def variant_out_of_time(*a, **kw):  # the time budget runs out when the variant starts
        if a[3] == "llm_zero_shot_listwise" and len(decided) == 1:  # in the first materialization
            kw["deadline"] = time.monotonic() - 1
        out = run_decisions(*a, **kw)
        decided.append((a[3], out.info["n_resumed"], out.info["complete"]))
        return out

    monkeypatch.setattr(decide, "run_decisions", variant_out_of_time)
    config = RetailDecisionsConfig(
        n_per_split=0, variants=["zero_shot_listwise"], variant_n=2, variant_splits=["test_all"]
    )
    resources = {
        "duckdb": duckdb_resource,
        "mlflow": mlflow_resource,
        "llm": LLMResource(model=str(tiny_model)),
    }
    run = lambda: dg.materialize(  # noqa: E731
        [retail_decisions], resources=resources, run_config=dg.RunConfig({"retail_decisions": config})
    )
    first = run()
    assert first.success
    assert first.asset_materializations_for_node("retail_decisions")[0].metadata["complete"].value is False
    assert decided == [("llm_zero_shot_utility", 0, True), ("llm_zero_shot_listwise", 0, False)]
    second = run()  # the primary comes from its checkpoint, kept because the run was not complete
    assert decided[2:] == [("llm_zero_shot_utility", 5, True), ("llm_zero_shot_listwise", 0, True)]
    assert second.asset_materializations_for_node("retail_decisions")[0].metadata["complete"].value is True
    ckpts = Path(duckdb_resource.database).parent / "simulation" / "checkpoints"
    assert not any(ckpts.glob("*/*.json"))  # every method finished: now the checkpoints are gone
    # primary=false adds a variant to this evaluation without deciding the primary again
    only = config.model_copy(update={"primary": False, "variants": ["zero_shot_utility_no_style"]})
    third = dg.materialize(
        [retail_decisions], resources=resources, run_config=dg.RunConfig({"retail_decisions": only})
    )
    assert third.success and decided[4:] == [("llm_zero_shot_utility_no_style", 0, True)]
    assert third.asset_materializations_for_node("retail_decisions")[0].metadata["methods"].value == [
        "llm_zero_shot_utility_no_style"
    ]
    with duckdb_resource.get_connection() as conn:
        methods = conn.execute(
            "select method, count(distinct episode_id) from retail_decision_episodes group by all order by all"
        ).fetchall()
    assert methods == [
        ("llm_zero_shot_listwise", 2), ("llm_zero_shot_utility", 5), ("llm_zero_shot_utility_no_style", 2)
    ]  # fmt: skip


def test_plan_without_the_primary_decides_only_the_variants():
    only = RetailDecisionsConfig(primary=False, variants=["aligned_utility_no_style"], variant_n=5)
    runs = plan.plan_decision_runs(only)
    assert [(r.settings.include_style, r.splits, r.settings.n_per_split) for r in runs] == [
        (False, ["test_all"], 5)
    ]
    assert len(plan.plan_decision_runs(RetailDecisionsConfig(variants=["aligned_utility_no_style"]))) == 2
    with pytest.raises(ValueError, match="nothing to decide"):
        plan.plan_decision_runs(RetailDecisionsConfig(primary=False, variants=[]))
    # a plain object lacking a field is an error, never filled in with defaults of plan.py's own
    with pytest.raises(AttributeError):
        plan.plan_decision_runs(SimpleNamespace(primary=False, variants=["aligned_utility_no_style"]))


class LabelEngine:
    """A fake engine for the plumbing: every label equally likely; records (method, prompts per call)."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def label_logprobs(self, prompts, labels):
        self.calls.append(("label_logprobs", len(prompts)))
        return np.full((len(prompts), len(labels)), -math.log(len(labels)))


def test_a_default_of_the_config_class_reaches_the_engine(conn):
    """RetailDecisionsConfig holds the only defaults (DecisionSettings has none): a config class with other
    defaults changes what plan and decide ask of the engine, with nothing else passed."""
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(plan.DecisionSettings))

    class Changed(RetailDecisionsConfig):
        period: str = "test"
        n_per_split: int = 2
        form: str = "listwise"
        reading: bool = False
        quantity: bool = False
        chunk_episodes: int = 1
        seed: int = 7

    run = plan.plan_decision_runs(Changed())[0]
    assert run.method == "llm_aligned_listwise_no_reading"
    assert run.settings == plan.decision_settings(Changed())  # every field from the config
    engine = LabelEngine()
    out = decide.run_decisions(conn, engine, run.settings, run.method, "r", log=lambda _: None)
    # chunk_episodes=1: one listwise call of one prompt per episode, no quantity call
    assert engine.calls == [("label_logprobs", 1)] * out.info["n_episodes"] and out.info["n_episodes"] >= 2
    # n_per_split=2 of the md5 sample of seed 7
    assert out.members.filter(split="test_all").height == 2
    _, want = plan.load_sample(conn, ["test"], seed=7, n_per_split=2)
    assert (
        out.members.select("episode_id", "split")
        .sort(pl.all())
        .equals(want.select("episode_id", "split").sort(pl.all()))
    )


def test_the_quick_profile_decides_no_variants_and_the_full_profile_all_of_them():
    from pipelines.profiles import PROFILES

    assert [r.method for r in plan.plan_decision_runs(RetailDecisionsConfig())] == ["llm_aligned_utility"]
    primary, *variants = plan.plan_decision_runs(
        RetailDecisionsConfig(**PROFILES["full"]["retail_decisions"])
    )
    assert primary.settings.n_per_split == 2_000 and primary.splits is None
    assert [r.method for r in variants] == [
        "llm_zero_shot_utility",
        "llm_zero_shot_listwise",
        "llm_aligned_listwise",
        "llm_aligned_listwise_no_reading",
        "llm_aligned_listwise_sample",
        "llm_aligned_utility_no_style",
        "llm_aligned_utility_no_signals",
    ]
    every_test = ["test_all", "test_sparse", "test_cold", "test_new"]
    assert {(r.settings.n_per_split, r.settings.period, tuple(r.splits)) for r in variants} == {
        (200, "test", tuple(every_test))
    }


def test_eval_report_without_variants_has_the_main_sample_hybrids_and_gap_lines(
    duckdb_resource, mlflow_resource
):
    """The quick profile decides the primary only: eval_report has no variants sample, and still the hybrid
    of the primary and the gap summary."""
    from assets.simulation import EvalReportConfig, eval_report

    build_warehouse(duckdb_resource.database)
    (spec,) = plan.plan_decision_runs(
        RetailDecisionsConfig(n_per_split=0, form="listwise", reading=False, quantity=False)
    )
    with duckdb_resource.get_connection() as conn:
        _q(conn, "insert into baseline_predictions select 'clogit', episode_id, product_id, score, prob "
                 "from baseline_predictions")  # fmt: skip
        # the bar baseline_report chose on validation: eval_report reads it, never re-chooses
        _q(conn, "create table baseline_best_classic as select 'test_all' as split, 'clogit' as method, "
                 "'val' as chosen_on, 10 as chosen_on_n, 0.5 as chosen_on_value")  # fmt: skip
        run = decide.run_decisions(conn, LabelEngine(), spec.settings, spec.method, "r0", log=lambda _: None)
        decide.write_decisions(conn, run, spec.method)
    result = dg.materialize(
        [eval_report],
        resources={"duckdb": duckdb_resource, "mlflow": mlflow_resource},
        run_config=dg.RunConfig({"eval_report": EvalReportConfig()}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("eval_report")[0].metadata
    assert not [k for k in meta if k.startswith("variants/")]
    assert f"test_all/{spec.method}/hit1" in meta and f"test_all/hybrid_{spec.method}/hit1" in meta
    md = meta["metrics"].value
    assert "variants sample" not in md and "### main sample" in md
    assert f"- test_all (n=4): best LLM {spec.method}" in md and "best hybrid hybrid_" in md
    assert f"| {spec.method} | test_all | 4 |" in md and "| clogit (val) |" in md
    assert f"vs_best_classic/{spec.method}/test_all" in meta
    with duckdb_resource.get_connection() as conn:
        samples = conn.execute("select distinct sample from eval_metrics").fetchall()
        gaps = conn.sql("select * from eval_vs_best_classic").pl()
    assert samples == [("main",)]
    assert set(gaps["split"]) == {"test_all"} and set(gaps["bar_method"]) == {"clogit"}
    assert gaps.filter(method=spec.method)["n_episodes"].to_list() == [4]
    assert set(gaps["method"]) == {spec.method, f"hybrid_{spec.method}"}  # the hybrid: paired on test too


def test_asset_with_a_spent_time_budget_writes_nothing_and_says_so(
    tiny_model, duckdb_resource, mlflow_resource
):
    from assets.simulation import RetailDecisionsConfig, retail_decisions
    from resources.llm import LLMResource

    build_warehouse(duckdb_resource.database)
    result = dg.materialize(
        [retail_decisions],
        resources={
            "duckdb": duckdb_resource,
            "mlflow": mlflow_resource,
            "llm": LLMResource(model=str(tiny_model)),
        },
        run_config=dg.RunConfig(
            {"retail_decisions": RetailDecisionsConfig(n_per_split=0, variants=[], max_minutes=1e-9)}
        ),
    )
    assert result.success
    meta = result.asset_materializations_for_node("retail_decisions")[0].metadata
    assert meta["complete"].value is False and meta["llm_zero_shot_utility.complete"].value is False
    assert meta["llm_zero_shot_utility.n_planned"].value == 5
    assert meta["llm_zero_shot_utility.n_decided"].value == 0 and meta["dagster/row_count"].value == 0


def test_sample_mode_counts_every_answer_and_reports_stability(conn, engine):
    settings = settings_of(n_per_split=0, form="listwise", mode="sample", k=3, runs=4, quantity=False)
    run = decide.run_decisions(conn, engine, settings, "llm_s", "r", log=lambda _: None)
    # every (episode, run) holds exactly k answers, parseable or counted as unparseable (product_id null)
    per = run.samples.group_by("episode_id", "sample_run").agg(pl.col("n").sum())
    assert per.height == 4 * 4 and set(per["n"]) == {3}
    assert run.info["samples"] == 4 * 3 * 4 and run.info["mode"] == "sample"
    assert 0.0 <= run.info["parse_failure_rate"] <= 1.0
    probs = run.decisions.group_by("episode_id").agg(pl.col("prob").sum())["prob"].to_list()
    assert probs == pytest.approx([1.0] * 4) and run.decisions["prob"].min() > 0  # smoothed: no zero
    decide.write_decisions(conn, run, "llm_s")
    decide.write_decisions(conn, run, "llm_s")  # replaced, never duplicated
    assert conn.execute("select sum(n) from retail_decision_samples").fetchall()[0][0] == 48
    metrics, _, _ = report.build_report(conn, log=lambda _: None)
    row = metrics.filter(method="llm_s", split="test_all").row(0, named=True)
    assert 0.0 <= row["top1_agreement"] <= 1.0
    # the tiny random model rarely answers with a bare label: with no parseable answer there are no shares
    if run.info.get("failures", 0) < run.info["samples"]:
        assert row["share_cv"] >= 0.0
    else:
        assert row["share_cv"] is None and row["top1_agreement"] == 0.0
    assert metrics.filter(method="always_p1")["top1_agreement"].is_null().all()
    conn.close()


def test_stability_by_hand():
    rows = [  # episode, run, product, n: runs 0 and 1 agree on e1 (p1) and differ on e2; run 2 has no answer on e2
        ("e1", 0, "p1", 2), ("e1", 0, "p2", 1), ("e1", 1, "p1", 3), ("e1", 2, "p2", 3),
        ("e2", 0, "p1", 3), ("e2", 1, "p2", 2), ("e2", 1, None, 1), ("e2", 2, None, 3),
    ]  # fmt: skip
    samples = pl.DataFrame(
        [("r", "m", e, run, p, n) for e, run, p, n in rows], schema=decide.SAMPLES_SCHEMA, orient="row"
    )
    members = pl.DataFrame({"episode_id": ["e1", "e2"], "split": ["test_all", "test_all"]})
    st = report.stability(samples, members).row(0, named=True)
    # pairs (0,1): e1 same, e2 differ -> 1/2; (0,2): e1 p1 vs p2, e2 p1 vs none -> 0; (1,2): 0
    assert st["top1_agreement"] == pytest.approx((0.5 + 0 + 0) / 3)
    # shares per run over parseable answers: run0 p1 5/6 p2 1/6; run1 p1 3/5 p2 2/5; run2 p2 1
    p1 = np.array([5 / 6, 3 / 5, 0.0])
    p2 = np.array([1 / 6, 2 / 5, 1.0])
    assert st["share_cv"] == pytest.approx((p1.std() / p1.mean() + p2.std() / p2.mean()) / 2)


def test_quantity_median_by_hand():
    class Fixed:  # a quantity distribution of 0.3, 0.15, 0.05 then 0.5 spread over "4".."9"
        def label_logprobs(self, prompts, labels):
            p = np.array([0.3, 0.15, 0.05] + [0.5 / 6] * 6)
            return np.log(np.tile(p, (len(prompts), 1)))

    from tests.test_prompts import EPISODE, customer, option

    ep = plan.P.PromptEpisode("test", customer(), EPISODE, [option("p1")], "p1", 1)
    ((mean, median),) = decide.quantity_distributions(Fixed(), [ep], [0], True, True)
    assert median == 3.0  # P(Q <= 2) = 0.45, P(Q <= 3) = 0.50
    assert mean == pytest.approx(0.3 + 0.3 + 0.15 + sum(q * 0.5 / 6 for q in range(4, 10)))


def test_quantity_model_asks_the_adapter_only_when_it_learnt_the_quantity(tmp_path):
    assert plan.quantity_model("", "adapter") == ("", "no adapter: the base model decides")
    assert plan.quantity_model(str(tmp_path), "adapter")[0] == str(tmp_path)
    assert plan.quantity_model(str(tmp_path), "base")[0] == ""
    assert plan.quantity_model(str(tmp_path), "auto")[0] == ""  # no train_result.json: saved before the field
    (tmp_path / "train_result.json").write_text('{"quantity_episodes": 0}')
    assert plan.quantity_model(str(tmp_path), "auto")[0] == ""
    (tmp_path / "train_result.json").write_text('{"quantity_episodes": 12}')
    assert plan.quantity_model(str(tmp_path), "auto")[0] == str(tmp_path)
    (tmp_path / "train_result.json").write_text("not json")
    assert plan.quantity_model(str(tmp_path), "auto")[0] == ""
    with pytest.raises(ValueError, match="quantity_source 'adapters': use one of"):
        plan.quantity_model(str(tmp_path), "adapters")


def test_a_second_engine_answers_the_quantity(conn, engine):
    class Sevens:  # every quantity answer is "7"
        stats = None

        def label_logprobs(self, prompts, labels):
            return np.log(np.tile([1e-9] * 6 + [1.0] + [1e-9] * 2, (len(prompts), 1)))

    settings = settings_of(n_per_split=0, chunk_episodes=3)
    own = decide.run_decisions(conn, engine, settings, "m", "r", log=lambda _: None).decisions
    other = decide.run_decisions(
        conn, engine, settings, "m", "r", log=lambda _: None, qty_engine=Sevens()
    ).decisions
    assert other["utility"].to_list() == own["utility"].to_list()  # the choices are the deciding engine's
    assert set(other.filter(pl.col("is_top"))["median_qty"].to_list()) == {7.0}
    assert other.filter(pl.col("is_top"))["expected_qty"].to_list() == pytest.approx([7.0] * 4, abs=1e-6)


def _tiny_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter of the tiny model with random (not zero) B matrices, so it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(str(out))
    return out


def test_asset_sends_the_quantity_to_the_base_model_for_a_choice_only_adapter(
    tiny_model, duckdb_resource, mlflow_resource, tmp_path
):
    from assets.simulation import RetailDecisionsConfig, retail_decisions
    from resources.llm import LLMResource

    adapter = _tiny_adapter(tiny_model, tmp_path / "adapter")
    build_warehouse(duckdb_resource.database)
    with duckdb_resource.get_connection() as conn:
        _q(conn, "create table lora_adapters (adapter_path varchar, base_model varchar, "
                     "dagster_run_id varchar, mlflow_run_id varchar, created_at timestamp)")  # fmt: skip
        _q(conn, "insert into lora_adapters values ($p, $m, 'r0', 'm0', $t)",
           {"p": str(adapter), "m": str(tiny_model), "t": datetime.now()})  # fmt: skip
    llm = LLMResource(model=str(tiny_model))

    def run(source: str) -> tuple[dict, dict]:
        result = dg.materialize(
            [retail_decisions],
            resources={"duckdb": duckdb_resource, "mlflow": mlflow_resource, "llm": llm},
            run_config=dg.RunConfig(
                {
                    "retail_decisions": RetailDecisionsConfig(
                        n_per_split=0, variants=[], quantity_source=source
                    )
                }
            ),
        )
        assert result.success
        meta = result.asset_materializations_for_node("retail_decisions")[0].metadata
        with duckdb_resource.get_connection() as conn:
            rows = conn.execute(
                "select episode_id, median_qty, expected_qty from retail_decisions where is_top"
            ).fetchall()
        return meta, {e: (m, x) for e, m, x in rows}

    meta, auto = run("auto")
    assert (
        meta["quantity_model"].value == "base" and meta["llm_aligned_utility.quantity_model"].value == "base"
    )
    _, base = run("base")
    meta, own = run("adapter")
    assert meta["llm_aligned_utility.quantity_model"].value == "adapter"
    assert auto == base and auto != own  # the adapter changes the quantity answer; auto did not ask it
    # an adapter trained on the quantity answer is asked it under 'auto'
    (adapter / "train_result.json").write_text('{"quantity_episodes": 5}')
    meta, learnt = run("auto")
    assert meta["quantity_model"].value == "adapter" and learnt == own


def test_gap_lines_set_the_llm_alone_and_the_best_hybrid_against_the_best_baseline():
    rows = [  # (split, method, kind, hit1)
        ("test_all", "llm_a", "llm", 0.50),
        ("test_all", "hybrid_llm_a", "hybrid", 0.55),
        ("test_all", "hybrid_lgbm_llm_a", "hybrid", 0.62),
        ("test_all", "lgbm", "baseline", 0.60),
        ("test_all", "clogit", "baseline", 0.58),
        ("val", "llm_a", "llm", 0.40),
        ("val", "lgbm", "baseline", 0.45),
    ]
    m = pl.DataFrame(rows, schema=["split", "method", "kind", "hit1"], orient="row").with_columns(
        n_episodes=pl.lit(100), sample=pl.lit("main")
    )
    lines = report.gap_lines(m)
    assert (
        lines[0] == "- val (n=100): best LLM llm_a 0.4000 vs best baseline lgbm 0.4500: LLM behind by 0.0500"
    )
    assert lines[1] == (
        "- test_all (n=100): best LLM llm_a 0.5000, best hybrid hybrid_lgbm_llm_a 0.6200 vs best baseline "
        "lgbm 0.6000: LLM behind by 0.1000, hybrid ahead by 0.0200"
    )
