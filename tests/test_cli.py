"""The `malles` command: help, exit statuses, one-line errors, ingest and synth through the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main

MALLES = [sys.executable, "-m", "pipelines.cli"]


def _run(args, data_dir):
    env = dict(os.environ, MALLES_DATA_DIR=str(data_dir))
    return subprocess.run(MALLES + args, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("cmd", [[], ["run"], ["ingest"], ["synth"]])
def test_help(cmd, data_dir):
    out = _run(cmd + ["--help"], data_dir)
    assert out.returncode == 0
    assert "usage: malles" in out.stdout


def test_help_lists_commands(data_dir):
    out = _run(["--help"], data_dir).stdout
    for name in ("run", "ingest", "synth"):
        assert name in out


def test_missing_path_is_one_line_error(data_dir, capsys):
    code = main(["ingest", str(data_dir / "nope.csv"), "--mapping", "canonical"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("malles: error:") and "nope.csv" in err and "\n" not in err


def test_missing_mapping_is_one_line_error(data_dir, capsys):
    code = main(["run", "--source", str(data_dir / "missing.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.yaml" in err and "\n" not in err


def test_unknown_source_is_one_line_error(data_dir, capsys):
    code = main(["run", "--source", "no_such_source"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no_such_source" in err and "\n" not in err


def test_bad_config_override_is_one_line_error(data_dir, capsys):
    code = main(["run", "--job", "ingest_job", "--config", "nodot=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "OP.FIELD=VALUE" in err


@pytest.mark.parametrize(
    ("source", "scenario"),
    [("completejourney", "cj_price_rise.yaml"), ("synthetic", "synth_price_rise.yaml"), ("my.yaml", None)],
)
def test_run_names_the_example_scenario_of_a_built_in_source(source, scenario):
    import argparse

    from pipelines.cli import build_run_config

    ops = {"ingest", "market_simulation", "whatif"}
    args = argparse.Namespace(profile="quick", job="main_job", source=source, config=[])
    cfg = build_run_config(args, ops, "ingest", {"sources": [source]})["ops"]
    got = cfg.get("whatif", {}).get("config", {}).get("scenario")
    if scenario is None:  # another source: no example; the what-if asset is skipped unless one is named
        assert got is None
    else:
        assert Path(got).name == scenario and Path(got).is_file()
    args.config = ["whatif.scenario=/x.yaml"]  # a user's --config wins
    assert build_run_config(args, ops, "ingest", {})["ops"]["whatif"]["config"]["scenario"] == "/x.yaml"


def test_select_resolves_assets_and_their_ops(data_dir):
    from pipelines.cli import select_assets
    from pipelines.definitions import defs

    job = defs.resolve_job_def("main_job")
    keys, ops = select_assets(job, "+lora_adapter")
    assert ops == {"sft_prompt_dataset", "lora_adapter"}
    assert {k.to_user_string() for k in keys} == ops
    _, ops = select_assets(job, "retail_decisions+")
    assert ops == {"retail_decisions", "eval_report"}
    # several names joined by commas, as `dagster asset materialize --select` takes them
    _, ops = select_assets(job, "sft_prompt_dataset, lora_adapter")
    assert ops == {"sft_prompt_dataset", "lora_adapter"}


@pytest.mark.parametrize(
    "select", ["no_such_asset", "((", "synthetic_market", "lora_adapter,", "a,lora_adapter"]
)
def test_bad_select_is_one_line_error(data_dir, capsys, select):
    code = main(["run", "--select", select])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--select" in err and "\n" not in err


def _write_canonical_csv(path: Path, rows: list[str]) -> None:
    header = "txn_id,basket_id,ts,customer_id,product_id,quantity,unit_price,list_price,channel"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_ingest_command_counts_add_up_and_reingest_is_noop(data_dir):
    landing = data_dir / "in"
    landing.mkdir()
    (landing / "products.csv").write_text("product_id,category\np1,A\np2,A\n", encoding="utf-8")
    _write_canonical_csv(
        landing / "transactions.csv",
        [
            "t1,b1,2024-01-01 10:00:00,c1,p1,1,2.0,2.5,retail",
            "t2,b1,2024-01-01 10:00:00,c1,p2,0,2.0,2.5,retail",  # quantity 0: quarantined
            "t3,b2,not a time,c2,p1,1,2.0,2.5,retail",  # bad timestamp: quarantined
            "t1,b1,2024-01-01 10:00:00,c1,p1,1,2.0,2.5,retail",  # identical re-sent row: duplicate
        ],
    )
    wh = data_dir / "cli.duckdb"
    first = _run(["--warehouse", str(wh), "ingest", str(landing), "--mapping", "canonical"], data_dir)
    assert first.returncode == 0, first.stderr
    with duckdb.connect(str(wh), read_only=True) as conn:
        loaded = conn.execute("select count(*) from raw_transactions").fetchone()[0]
        reasons = dict(conn.execute("select reason, count(*) from quarantined_rows group by 1").fetchall())
        ledger = conn.execute(
            "select rows_in, rows_loaded, rows_quarantined, rows_duplicate from ingest_ledger "
            "where table_name = 'transactions'"
        ).fetchone()
    assert loaded == 1
    assert reasons == {"non_positive_quantity": 1, "bad_timestamp": 1}
    assert ledger == (4, 1, 2, 1)
    second = _run(["--warehouse", str(wh), "ingest", str(landing), "--mapping", "canonical"], data_dir)
    assert second.returncode == 0
    assert "skipped" in second.stdout
    with duckdb.connect(str(wh), read_only=True) as conn:
        assert conn.execute("select count(*) from raw_transactions").fetchone()[0] == 1


def test_ingest_command_rejects_file_missing_columns(data_dir):
    bad = data_dir / "transactions.csv"
    bad.write_text("txn_id,basket_id\nt1,b1\n", encoding="utf-8")
    out = _run(
        ["--warehouse", str(data_dir / "w.duckdb"), "ingest", str(bad), "--mapping", "canonical"], data_dir
    )
    assert out.returncode == 1
    assert "rejected" in out.stdout and "customer_id" in out.stdout


def test_synth_command_writes_canonical_files_and_truth_apart(data_dir):
    out_dir = data_dir / "synth"
    out = _run(["synth", "--out", str(out_dir), "--seed", "3", "--set", "n_customers=40"], data_dir)
    assert out.returncode == 0, out.stderr
    for name in ("transactions.parquet", "products.parquet", "customers.parquet"):
        assert (out_dir / name).exists()
    assert (out_dir / "truth" / "customers_truth.parquet").exists()
    n = duckdb.execute(
        f"select count(distinct customer_id) from '{out_dir / 'customers.parquet'}'"
    ).fetchone()[0]
    assert n >= 40


def test_synth_command_unknown_field_is_one_line_error(data_dir):
    out = _run(["synth", "--out", str(data_dir / "s"), "--set", "n_planets=3"], data_dir)
    assert out.returncode == 2
    assert "n_planets" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _fake_result(materializations: dict[str, dict]):
    from types import SimpleNamespace

    import dagster as dg

    events = [
        SimpleNamespace(
            asset_key=dg.AssetKey(name),
            materialization=SimpleNamespace(
                metadata={k: SimpleNamespace(value=v) for k, v in md.items()},
            ),
        )
        for name, md in materializations.items()
    ]
    return SimpleNamespace(run_id="r1", get_asset_materialization_events=lambda: events)


def test_results_of_a_partial_or_reportless_run(data_dir):
    from rich.console import Console

    from pipelines.progress import print_results

    console = Console(record=True, width=200)
    print_results(console, _fake_result({"decision_episodes": {}}), data_dir, 1.0)
    out = console.export_text()
    assert "succeeded" in out and "no baseline_metrics" not in out and "warehouse (DuckDB)" in out
    console = Console(record=True, width=200)
    print_results(console, _fake_result({"retail_decisions": {"complete": False}}), data_dir, 1.0)
    assert "stopped at its max_minutes" in console.export_text()
    console = Console(record=True, width=200)
    print_results(console, _fake_result({"baseline_report": {}}), data_dir, 1.0)  # no warehouse: named
    assert "(no baseline_metrics table" in console.export_text()


@pytest.mark.parametrize(
    "override, says",
    [
        ("retail_decisions.quantity_source=adapters", "quantity_source 'adapters': use one of"),
        ("retail_decisions.form=letters", "form 'letters': use one of"),
        ("retail_decisions.variants=[aligned_utilty]", "aligned_utilty"),
        ("retail_decisions.n_per_split=many", "retail_decisions.n_per_split"),
    ],
)
def test_bad_agent_settings_fail_before_the_run_starts(data_dir, capsys, monkeypatch, override, says):
    import dagster as dg

    def no_run(*a, **kw):
        raise AssertionError("a run was started")

    monkeypatch.setattr(dg.DagsterInstance, "get", no_run)
    code = main(["run", "--select", "retail_decisions", "--config", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and "\n" not in err


def test_select_with_a_wildcard_takes_the_ingest_multi_asset_whole(data_dir):
    from pipelines.cli import select_assets
    from pipelines.definitions import defs

    job = defs.resolve_job_def("main_job")
    keys, ops = select_assets(job, "*baseline_report")
    names = {k.to_user_string() for k in keys}
    assert {"raw_transactions", "products", "customers", "quarantined_rows", "baseline_report"} <= names
    assert "ingest" in ops and "lora_adapter" not in ops


def test_ingest_dir_with_the_mapping_beside_it_loads_the_dir(data_dir):
    exports = data_dir / "exports"
    exports.mkdir()
    (exports / "products.csv").write_text("product_id,category\np1,A\n", encoding="utf-8")
    _write_canonical_csv(exports / "transactions.csv", ["t1,b1,2024-01-01 10:00:00,c1,p1,1,2.0,2.5,retail"])
    mapping = data_dir / "my_shop.yaml"
    mapping.write_text("extends: canonical\nsource: my_shop\n", encoding="utf-8")
    wh = data_dir / "shop.duckdb"
    out = _run(["--warehouse", str(wh), "ingest", str(exports), "--mapping", str(mapping)], data_dir)
    assert out.returncode == 0, out.stderr
    with duckdb.connect(str(wh), read_only=True) as conn:
        assert conn.execute("select count(*) from raw_transactions").fetchone()[0] == 1
    empty = data_dir / "nothing_here"
    empty.mkdir()
    (empty / "notes.csv").write_text("a\n1\n", encoding="utf-8")
    out = _run(["--warehouse", str(wh), "ingest", str(empty), "--mapping", str(mapping)], data_dir)
    last = out.stderr.strip().splitlines()[-1]  # after the warning naming notes.csv
    assert (
        out.returncode != 0
        and last.startswith("malles: error: no file under")
        and "matches the globs" in last
    )


def _hold_lock(wh: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(wh)!r}); print('ok', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "ok"
    return holder


def test_run_on_a_locked_warehouse_is_one_line_before_anything_runs(data_dir):
    wh = data_dir / "malles.duckdb"
    duckdb.connect(str(wh)).close()
    holder = _hold_lock(wh)
    try:
        out = _run(["run", "--job", "features_job", "--lock-wait", "1"], data_dir)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1 and "RUN_START" not in out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("malles: error:") and f"PID {holder.pid}" in last


def test_ingest_waits_a_bounded_time_for_the_lock_then_names_the_holder(data_dir):
    wh = data_dir / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(wh)!r}); print('ok', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        f = data_dir / "transactions.csv"
        _write_canonical_csv(f, ["t1,b1,2024-01-01 10:00:00,c1,p1,1,2.0,2.5,retail"])
        out = _run(
            ["--warehouse", str(wh), "ingest", str(f), "--mapping", "canonical", "--lock-wait", "1"], data_dir
        )
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1
    assert "waiting up to 1 s for the lock" in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("malles: error:") and f"PID {holder.pid}" in last and "--warehouse" in last
