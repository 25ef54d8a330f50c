"""What-if scenarios through the market simulation (assets/market/counterfactual.py, the asset `whatif`, `malles whatif`).

On the synthetic market of tests/test_market_occasions.py (300 customers, 52 weeks; MILK is its densest
category) with the clogit engine fitted once (a registered test engine hands the fitted one to every what-if):
a price rise, a delisting and a new product, the elasticity matrix. On the hand-made warehouse (fast): the asset
with its metadata and plots, and bad scenarios through the CLI (one line, exit 2, nothing written)."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import duckdb as ddb
import polars as pl
import pytest

from assets.market import WhatIfConfig, run, whatif
from assets.market import counterfactual as wi
from assets.market.classic import fit_classic_engines
from assets.market.scenario import load_scenario
from resources.llm import LLMResource
from tests.test_market_occasions import make_warehouse, synthetic  # noqa: F401 - synthetic is a fixture

OTHER = "other"


@pytest.fixture(scope="module")
def fitted(synthetic):  # noqa: F811 - the imported fixture
    """The clogit engine fitted once, served by a registered engine 'clogit_fitted'."""
    engine = fit_classic_engines(synthetic, ("clogit",), with_persistence=False, log=lambda _: None)["clogit"]
    run.register_engine("clogit_fitted", lambda conn, names, settings, log: {"clogit_fitted": engine})
    yield synthetic
    run.ENGINES.pop("clogit_fitted", None)


def what_if(conn, text: str, **kw) -> wi.WhatIfResult:
    settings = wi.WhatIfSettings(engine="clogit_fitted", weeks=4, **({"top_k": 0, "bootstrap": 100} | kw))
    return wi.run_whatif(conn, load_scenario(text, conn), settings, log=lambda _: None)


def units(result: wi.WhatIfResult, metric: str = "units") -> pl.DataFrame:
    return result.effects.filter((pl.col("level") == "product") & (pl.col("metric") == metric))


def test_whatif_settings_defaults_are_the_asset_configs():
    """One default per setting: WhatIfSettings (what run_whatif reads) defaults as WhatIfConfig (the asset's)."""
    from dataclasses import fields

    config = WhatIfConfig().model_dump()
    settings = wi.WhatIfSettings()
    shared = {f.name for f in fields(settings)} & set(config)
    assert shared >= {"engine", "weeks", "bootstrap", "top_k", "llm_val_occasions", "llm_signals"}
    assert {k: getattr(settings, k) for k in shared - {"category_ids"}} == {
        k: config[k] for k in shared - {"category_ids"}
    }
    assert settings.category_ids == tuple(config["category_ids"])


def test_price_rise_lowers_the_product_and_raises_its_substitutes(fitted):
    t = time.perf_counter()
    r = what_if(fitted, "name: rise\ninterventions:\n  - {type: price, products: [P00001], change_pct: 10}\n")
    print(f"\nprice rise, 300 customers, 4 weeks: {time.perf_counter() - t:.1f} s ({r.timings})")
    assert r.summary["categories"] == ["MILK"] and set(r.effects["category"]) == {"MILK"}
    u = units(r)
    me = u.filter(pl.col("product_id") == "P00001").row(0, named=True)
    assert me["change"] < 0 and me["change_hi"] < 0 < me["before"]  # the interval excludes 0
    others = u.filter(pl.col("product_id") != "P00001")
    assert (others["change"] > 0).all()  # logit substitution: every other option gains
    assert me["change_lo"] <= me["change"] <= me["change_hi"]
    # revenue = price x units, share = units / category units
    rev = r.effects.filter((pl.col("metric") == "revenue") & (pl.col("product_id") == OTHER))
    assert rev["before"][0] == 0.0 and rev["after"][0] == 0.0
    share = units(r, "share")
    assert share["before"].sum() == pytest.approx(1.0) and share["after"].sum() == pytest.approx(1.0)
    cat = r.effects.filter((pl.col("level") == "category") & (pl.col("metric") == "units")).row(0, named=True)
    assert cat["before"] == pytest.approx(u["before"].sum()) and cat["after"] == pytest.approx(
        u["after"].sum()
    )
    assert r.elasticities.height == 0 and r.diversion.height == 0


def test_delisted_product_sells_nothing_and_its_units_divert(fitted):
    r = what_if(fitted, "name: gone\ninterventions:\n  - {type: delist, products: [P00005]}\n")
    u = units(r)
    gone = u.filter(pl.col("product_id") == "P00005").row(0, named=True)
    assert gone["before"] > 10 and gone["after"] == 0.0
    assert (u.filter(pl.col("product_id") != "P00005")["change"] > 0).all()
    d = r.diversion
    assert set(d["delisted"]) == {"P00005"} and OTHER in d["product_id"].to_list()
    assert "P00005" not in d["product_id"].to_list() and (d["diversion"] > 0).all()
    assert d["diversion_purchases"].sum() == pytest.approx(1.0, abs=1e-9)  # purchases are conserved
    assert d["diversion"].sum() == pytest.approx(1.0, abs=0.02)  # units nearly (expected quantities differ)
    assert r.summary["diversion_sums"][0]["diversion"] == pytest.approx(d["diversion"].sum())
    # the diversion is the units' change over the delisted product's lost units
    k = d.row(0, named=True)
    assert k["diversion"] == pytest.approx((k["units_after"] - k["units_before"]) / gone["before"])


def test_new_product_gets_a_share(fitted):
    text = (
        "name: newp\ninterventions:\n  - {type: new_product, product_id: P90001, category: MILK, "
        "brand: Meadowbrook, description: large organic milk, price: 3.49}\n"
    )
    r = what_if(fitted, text)
    new = units(r, "share").filter(pl.col("product_id") == "P90001").row(0, named=True)
    assert new["before"] == 0.0 and 0.0 < new["after"] < 0.5 and new["change_lo"] > 0
    assert (units(r).filter(pl.col("product_id") != "P90001")["change"] <= 1e-9).all()


def test_elasticity_matrix_own_negative_cross_positive(fitted):
    t = time.perf_counter()
    r = what_if(fitted, "name: rise\ninterventions:\n  - {type: price, products: [P00001], change_pct: 10}\n",
                top_k=4, bootstrap=0)  # fmt: skip
    print(f"\nelasticities of 4 products (8 mean-field runs): {r.timings['elasticities']:.1f} s")
    e = r.elasticities
    assert e["price_product_id"].n_unique() == 4 and e.height == 4 * 5  # 4 products and OTHER per price
    own = e.filter(pl.col("product_id") == pl.col("price_product_id"))["elasticity"]
    cross = e.filter(pl.col("product_id") != pl.col("price_product_id"))["elasticity"]
    assert own.len() == 4 and (own < 0).all() and (cross > 0).all()
    assert (own.abs() > cross.max()).all()
    assert r.effects["change_lo"].is_null().all()  # B = 0: no interval
    assert time.perf_counter() - t < 300


def test_tables_keep_other_scenarios(tmp_path):
    conn = ddb.connect(str(tmp_path / "t.duckdb"))
    rows = {"scenario": ["a"], "engine": ["clogit"], "level": ["product"], "category": ["A"]}
    frames = [pl.DataFrame(rows | {"product_id": ["x"]})] * 3
    for name in ("a", "b", "a"):
        res = wi.WhatIfResult(
            *[
                f.with_columns(scenario=pl.lit(name)).select(
                    pl.col(c).cast(t) if c in f.columns else pl.lit(None, t).alias(c) for c, t in sch.items()
                )
                for f, sch in zip(
                    frames, (wi.EFFECTS_SCHEMA, wi.ELASTICITIES_SCHEMA, wi.DIVERSION_SCHEMA), strict=True
                )
            ],
            summary={"scenario": name, "engine": "clogit"},
        )
        wi.write_whatif_tables(conn, res)
    for t in wi.TABLES:
        assert conn.execute(f"select scenario, count(*) from {t} group by 1 order by 1").fetchall() == [
            ("a", 1),
            ("b", 1),
        ]


# ----------------------------------------------------------------------------- the asset and the CLI

GOOD = "name: a_rise\ninterventions:\n  - {type: price, products: [A10], change_pct: 20}\n"
BAD = {
    "unknown_product": ("name: x\ninterventions:\n  - {type: delist, products: [NOPE]}\n", "unknown product_id"),
    "negative_price": ("name: x\ninterventions:\n  - {type: price, products: [A10], set_price: -1}\n", "greater than 0"),
    "malformed": ("name: x\ninterventions: [ {type: delist\n", "malformed YAML"),
}  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("whatif_small")
    make_warehouse(d / "w.duckdb").close()
    (d / "good.yaml").write_text(GOOD)
    return d


def test_asset_materializes_with_metadata_and_plots(small, monkeypatch):
    from resources.duckdb import warehouse
    from resources.mlflow import MlflowResource

    monkeypatch.setenv("MALLES_DATA_DIR", str(small))
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{small / 'mlflow.db'}", artifact_root=str(small / "mlart"), experiment="t"
    )
    config = WhatIfConfig(scenario=str(small / "good.yaml"), engine="clogit", weeks=0, bootstrap=20, top_k=3)
    result = dg.materialize(
        [whatif],
        resources={"duckdb": warehouse(str(small / "w.duckdb")), "mlflow": mlflow, "llm": LLMResource()},
        run_config=dg.RunConfig({"whatif": config}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("whatif")[0].metadata
    assert meta["scenario"].value == "a_rise" and meta["engine"].value == "clogit"
    assert "| product | A | A10 |" in meta["effects"].value and meta["mlflow_run_id"].value
    for key in ("units_plot", "elasticity_plot"):
        assert Path(meta[key].value).stat().st_size > 1000
    assert meta["occasions"].value > 0 and "seconds/elasticities" in meta
    with ddb.connect(str(small / "w.duckdb"), read_only=True) as c:
        n = {
            t: c.execute(f"select count(*) from {t} where scenario = 'a_rise'").fetchall()[0][0]
            for t in wi.TABLES
        }
        assert not c.execute(
            "select count(*) from duckdb_tables() where table_name like 'market_o%'"
        ).fetchall()[0][0]
    assert n["whatif_effects"] > 0 and n["whatif_elasticities"] == 3 * 4 and n["whatif_diversion"] == 0


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenarios_are_one_line_errors_before_any_work(tmp_path, capsys, monkeypatch, case):
    from pipelines.cli import main

    for k in ("MALLES_DATA_DIR", "MALLES_DUCKDB_PATH", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    make_warehouse(tmp_path / "w.duckdb").close()
    text, fix = BAD[case]
    (tmp_path / "bad.yaml").write_text(text)
    args = ["--data-dir", str(tmp_path), "--warehouse", str(tmp_path / "w.duckdb"), "whatif"]
    code = main([*args, str(tmp_path / "bad.yaml"), "--engine", "clogit"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("malles: error:") and "\n" not in err and fix in err
    with ddb.connect(str(tmp_path / "w.duckdb"), read_only=True) as c:
        names = {r[0] for r in c.execute("select table_name from duckdb_tables()").fetchall()}
    assert not {n for n in names if n.startswith(("whatif_", "market_"))}
    code = main([*args, str(tmp_path / "bad.yaml"), "--engine", "oracle"])  # an unknown engine too
    assert code == 2 and "\n" not in capsys.readouterr().err.strip()


def test_cli_runs_a_whatif(small, capsys, monkeypatch):
    from pipelines.cli import main

    for k in ("MALLES_DATA_DIR", "MALLES_DUCKDB_PATH", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    args = ["--data-dir", str(small / "cli"), "--warehouse", str(small / "w.duckdb"), "whatif"]
    code = main([*args, str(small / "good.yaml"), "--engine", "clogit", "--weeks", "0"]
                + ["--config", "bootstrap=10", "--config", "top_k=2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| product | A | A10 |" in out and "units_plot" in out and "done in" in out
    with ddb.connect(str(small / "w.duckdb"), read_only=True) as c:  # written to the warehouse given
        assert c.execute("select count(*) from whatif_effects where n_boot = 10").fetchall()[0][0] > 0
    assert main([*args, str(small / "good.yaml"), "--config", "nope=1"]) == 2
    assert "--config" in capsys.readouterr().err


def test_asset_without_a_scenario_is_skipped_in_one_line(small, monkeypatch):
    from resources.duckdb import warehouse
    from resources.mlflow import MlflowResource

    monkeypatch.setenv("MALLES_DATA_DIR", str(small))
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{small / 'mlflow.db'}", artifact_root=str(small / "mlart"), experiment="t"
    )

    def effect_rows() -> int:  # the module's other tests may have written some
        with ddb.connect(str(small / "w.duckdb"), read_only=True) as c:
            if not c.execute(
                "select count(*) from duckdb_tables() where table_name = 'whatif_effects'"
            ).fetchone()[0]:
                return 0
            return c.execute("select count(*) from whatif_effects").fetchone()[0]

    before = effect_rows()
    result = dg.materialize(
        [whatif],
        resources={"duckdb": warehouse(str(small / "w.duckdb")), "mlflow": mlflow, "llm": LLMResource()},
        run_config=dg.RunConfig({"whatif": WhatIfConfig(engine="clogit")}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("whatif")[0].metadata
    assert meta["skipped"].value == "no scenario given" and "effects" not in meta
    assert effect_rows() == before


def test_whatif_job_is_registered():
    from pipelines.definitions import defs

    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert set(jobs["whatif_job"].graph.node_dict) == {"whatif"}
    assert "whatif" not in jobs["market_job"].graph.node_dict
    assert "whatif" in jobs["main_job"].graph.node_dict  # small in the quick profile (pipelines/profiles.py)
