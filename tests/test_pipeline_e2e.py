"""End to end: `malles run --source synthetic` materializes the main job (with a few minutes of LoRA training
and a small simulation sample) and leaves a traceable report."""

import os
import subprocess
import sys

import duckdb
import pytest


@pytest.mark.slow
def test_malles_run_on_synthetic_market(tmp_path):
    data = tmp_path / "data"
    env = dict(os.environ, MALLES_DATA_DIR=str(data))
    env.pop("DAGSTER_HOME", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--source",
            "synthetic",
            "--config",
            "sft_prompt_dataset.max_train_episodes=300",
            "--config",
            "sft_prompt_dataset.eval_sample_per_split=20",
            "--config",
            "lora_adapter.max_steps=4",
            "--config",
            "lora_adapter.eval_examples=16",
            "--config",
            "retail_decisions.n_per_split=6",
            "--config",
            "retail_decisions.variant_n=3",
            "--config",
            "retail_decisions.variants=[zero_shot_utility, aligned_listwise]",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "succeeded" in out.stdout and "synthetic.duckdb" in out.stdout

    with duckdb.connect(str(data / "synthetic.duckdb"), read_only=True) as conn:
        n_in, n_loaded, n_quar, n_dup = conn.execute(
            "select sum(rows_in), sum(rows_loaded), sum(rows_quarantined), sum(rows_duplicate) "
            "from ingest_ledger where table_name = 'transactions'"
        ).fetchone()
        n_episodes = conn.execute("select count(*) from decision_episodes").fetchone()[0]
        metrics = dict(
            conn.execute("select method, hit1 from baseline_metrics where split = 'test_all'").fetchall()
        )
    assert n_in == n_loaded + n_quar + n_dup and n_loaded > 10_000
    assert n_episodes > 5_000
    # On a market drawn from a logit, the classic logit beats popularity, which beats random.
    assert metrics["clogit"] > metrics["popularity"] > metrics["random"]
    with duckdb.connect(str(data / "synthetic.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "select sample, kind, method from eval_metrics where split = 'test_all'"
        ).fetchall()
    assert ("main", "llm", "llm_aligned_utility") in rows and (
        "main",
        "hybrid",
        "hybrid_llm_aligned_utility",
    ) in rows
    assert ("variants", "llm", "llm_aligned_listwise") in rows and ("variants", "baseline", "clogit") in rows

    # The market in the quick profile: a small market_simulation and the source's example what-if on clogit.
    with duckdb.connect(str(data / "synthetic.duckdb"), read_only=True) as conn:
        engines = {r[0] for r in conn.execute("select engine from market_metrics").fetchall()}
        whatifs = conn.execute("select distinct scenario, engine from whatif_effects").fetchall()
    assert engines == {"clogit", "lgbm", "persistence"}
    assert whatifs == [("synth_price_rise", "clogit")]

    # Lineage: the MLflow run of the report carries the Dagster run, code and data versions.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{data / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malles"], output_format="list")
    assert runs
    tags = runs[0].data.tags
    assert {"dagster_run_id", "code_version", "data_version"} <= set(tags)
    assert tags["data_version"] not in {"", "empty"}
