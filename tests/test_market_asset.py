"""The market_simulation asset (assets/market/__init__.py) and its logic (assets/market/run.py), materialized on
the hand-made warehouse of tests/test_market_occasions.py (make_warehouse: the features stage run for real;
fit_classic_engines refits the baseline models from option_features / episode_splits, so no baseline_report
table is needed). Test period, first 2 ISO weeks: 6 occasions of categories A and B."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from assets.market import MarketSimulationConfig, market_simulation, run
from resources.llm import LLMResource
from tests.test_market_occasions import make_warehouse

ENGINES = ["clogit", "persistence"]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    """market_simulation materialized once (clogit and persistence, 2 weeks): (result, warehouse path)."""
    from resources.duckdb import warehouse
    from resources.mlflow import MlflowResource

    d = tmp_path_factory.mktemp("market_asset")
    mp = pytest.MonkeyPatch()
    mp.setenv("MALLES_DATA_DIR", str(d))
    make_warehouse(d / "w.duckdb").close()
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{d / 'mlflow.db'}", artifact_root=str(d / "mlartifacts"), experiment="test"
    )
    result = dg.materialize(
        [market_simulation],
        resources={"duckdb": warehouse(str(d / "w.duckdb")), "mlflow": mlflow, "llm": LLMResource()},
        run_config=dg.RunConfig({"market_simulation": MarketSimulationConfig(engines=ENGINES, weeks=2, calibrate=False)}),
    )
    yield result, d / "w.duckdb"
    mp.undo()


def _table(path, sql: str) -> pl.DataFrame:
    import duckdb as ddb

    with ddb.connect(str(path), read_only=True) as c:
        return c.sql(sql).pl()


def test_tables_hold_every_run(materialized):
    result, path = materialized
    assert result.success
    m = _table(path, "select * from market_metrics order by engine, mean_field")
    # clogit without and with the mean field; persistence once (it reads no signal)
    assert m.select("engine", "mean_field").rows() == [
        ("clogit", False),
        ("clogit", True),
        ("persistence", False),
    ]
    n_occ = _table(path, "select count(*) as n from market_occasions")["n"][0]
    assert n_occ == 6 and (m["n_occasions"] == n_occ).all()
    for col in ("share_jsd_cw", "coverage"):
        assert m[col].is_between(0.0, 1.0).all(), col
    assert (m["units_wape_pw"] >= 0).all()  # a WAPE may exceed 1 (more simulated than actual units)
    # coverage by hand: the 2 weeks hold 7 actual units, 6 of them in the sets
    assert m["coverage"][0] == pytest.approx(6 / 7) and (m["actual_units"] == 7.0).all()
    with_mf = m.filter(pl.col("mean_field")).row(0, named=True)
    assert with_mf["converged"] and 1 <= with_mf["iterations"] <= 60 and with_mf["final_residual"] < 1e-3
    without = m.filter(~pl.col("mean_field"))
    assert without["iterations"].to_list() == [0, 0] and without["converged"].is_null().all()
    res = _table(path, "select * from market_residuals order by iteration")
    assert res["engine"].unique().to_list() == ["clogit"] and res.height == with_mf["iterations"]
    assert res["residual"][-1] == pytest.approx(with_mf["final_residual"])
    u = _table(path, "select * from market_units")
    # per run: the actual units of its cells add up to the period's, the simulated ones to the run's
    per_run = u.group_by("engine", "mean_field").agg(pl.col("sim_units", "actual_units").sum())
    assert per_run.height == 3 and (per_run["actual_units"] == 7.0).all()
    j = per_run.join(m.select("engine", "mean_field", "sim_units"), on=["engine", "mean_field"])
    assert ((j["sim_units"] - j["sim_units_right"]).abs() < 1e-9).all()
    assert set(u["product_id"]) >= {"other"} and u["week"].n_unique() == 2


def test_metadata_has_metrics_and_plots(materialized):
    from pathlib import Path

    result, _ = materialized
    meta = result.asset_materializations_for_node("market_simulation")[0].metadata
    for key in ("share_jsd_cw/clogit", "share_jsd_cw/clogit/mean_field", "share_jsd_cw/persistence",
                "units_wape_pw/clogit", "units_wape_pw/persistence"):  # fmt: skip
        assert 0.0 <= meta[key].value < 5.0, key
    assert meta["iterations/clogit/mean_field"].value >= 1 and meta["converged/clogit/mean_field"].value
    assert meta["converged"].value is True and meta["residual_run"].value == "clogit + mean field"
    assert meta["dagster/row_count"].value == 3 and meta["occasions"].value == 6
    for key in ("plot", "residual_plot"):
        p = Path(meta[key].value)
        assert p.suffix == ".png" and p.stat().st_size > 1000
    assert "| clogit + mean field |" in meta["metrics"].value
    assert meta["mlflow_run_id"].value


def test_unknown_engine_is_a_one_line_error_before_work(tmp_path):
    import duckdb as ddb

    settings = run.MarketSettings(**MarketSimulationConfig(engines=["clogit", "oracle"]).model_dump())
    with ddb.connect(str(tmp_path / "empty.duckdb")) as c:  # no table at all: any work would fail otherwise
        with pytest.raises(ValueError) as e:
            run.simulate_market(c, settings, log=lambda _: None)
        assert c.execute("select count(*) from duckdb_tables()").fetchall()[0][0] == 0
    msg = str(e.value)
    assert "\n" not in msg and "oracle" in msg and "clogit, clogit6, lgbm, persistence" in msg
    with pytest.raises(ValueError, match="no engine named"):
        run.check_engine_names([])


def test_registry_is_extensible(tmp_path):
    """A new engine family registers one build function; names it serves come in one call."""
    calls = []

    def build(conn, names, settings, log):
        calls.append(list(names))
        return {n: object() for n in names}

    try:
        run.register_engine("toy_a", build)
        run.register_engine("toy_b", build, mean_field=False)
        got = run.build_engines(None, ["toy_b", "toy_a", "toy_b"], settings=None, log=lambda _: None)
        assert list(got) == ["toy_b", "toy_a"] and calls == [["toy_b", "toy_a"]]
        assert run.ENGINES["toy_b"].mean_field is False
    finally:
        run.ENGINES.pop("toy_a", None)
        run.ENGINES.pop("toy_b", None)


def test_market_job_and_main_job_hold_the_market():
    from pipelines.definitions import defs

    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert set(jobs["market_job"].graph.node_dict) == {"market_simulation"}
    assert "market_simulation" in jobs["main_job"].graph.node_dict
    node = defs.resolve_asset_graph().get(dg.AssetKey("market_simulation"))
    assert node.group_name == "market"
    deps = {k.to_user_string() for k in node.parent_keys}
    assert deps == {"option_features", "episode_splits", "baseline_report", "lora_adapter"}
