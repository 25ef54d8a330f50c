"""What `malles run` prints: stage-by-stage wall times from the Dagster event log, and where results are."""

from __future__ import annotations

import os
from pathlib import Path


def ingest_op_name(job) -> str | None:
    """The node of the job that takes the ingest config (the op materializing raw_transactions)."""
    for node in job.graph.node_dict.values():
        outputs = {o.name for o in node.definition.output_defs}
        if "raw_transactions" in outputs or node.name == "raw_transactions":
            return node.name
    return None


def step_durations(instance, run_id: str) -> list[tuple[str, float, str]]:
    """(step key, seconds, status) for each step of a run, in start order."""
    import dagster as dg

    starts: dict[str, float] = {}
    out: list[tuple[str, float, str]] = []
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[ev.step_key] = rec.timestamp
        elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            status = "ok" if ev.event_type == dg.DagsterEventType.STEP_SUCCESS else "FAILED"
            out.append((ev.step_key, rec.timestamp - starts.get(ev.step_key, rec.timestamp), status))
    return out


class StageTimer:
    def __init__(self, console) -> None:
        self.console = console

    def report(self, instance, run_id: str) -> None:
        from rich.table import Table

        table = Table(title=f"Dagster run {run_id}: wall time per step")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("status")
        total = 0.0
        for step, secs, status in step_durations(instance, run_id):
            total += secs
            table.add_row(step, f"{secs:.1f}", status)
        table.add_row("[bold]sum of steps[/bold]", f"[bold]{total:.1f}[/bold]", "")
        self.console.print(table)


def print_results(console, result, data: Path, wall: float) -> None:
    """Where the results are: warehouse, report, MLflow, Dagster UI; and the headline table."""
    from rich.table import Table

    db_path = os.environ.get("MALLES_DUCKDB_PATH", str(data / "malles.duckdb"))
    console.print(f"[green]run {result.run_id} succeeded in {wall:.0f} s[/green]")
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    # The headline table of what this run produced: the LLM report if it ran, else the baselines' (a run
    # of other stages prints none).
    table_name = "eval_metrics" if "eval_report" in materialized else "baseline_metrics"
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        if (
            mat.asset_key.to_user_string() == "retail_decisions"
            and "complete" in md
            and not md["complete"].value
        ):
            console.print(
                "[yellow]retail_decisions stopped at its max_minutes: the report holds the md5 sample at the "
                "largest N completed; materialize it again to go on from its checkpoint[/yellow]"
            )
    try:
        if not materialized & {"eval_report", "baseline_report"}:
            raise LookupError("no report in this run")
        import duckdb

        with duckdb.connect(db_path, read_only=True) as conn:
            sample = "sample, " if table_name == "eval_metrics" else ""
            df = conn.sql(
                f"select {sample}split, method, n_episodes, hit1, hit3, nll, qty_mae, qty_wape, share_jsd "
                f"from {table_name} order by {sample}split, hit1 desc nulls last"
            ).pl()
        table = Table(title=f"{table_name} (also in MLflow and in the Dagster UI)")
        for c in df.columns:
            table.add_column(c, justify="right" if c not in {"sample", "split", "method"} else "left")
        for row in df.iter_rows():
            table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
        console.print(table)
    except LookupError:
        pass
    except Exception as e:  # noqa: BLE001 - a table that cannot be read is named, never a crash
        console.print(f"(no {table_name} table: {type(e).__name__})")
    console.print("Results:")
    console.print(f"  warehouse (DuckDB)  {db_path}")
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        for key in ("report_path", "plot_path", "path"):
            if key in md:
                console.print(f"  {mat.asset_key.to_user_string():<19} {md[key].value}")
                break
    console.print(f"  MLflow              mlflow ui --backend-store-uri sqlite:///{data / 'mlflow.db'}")
    console.print(
        f"  Dagster UI          DAGSTER_HOME={os.environ.get('DAGSTER_HOME')} dagster dev -w workspace.yaml"
    )
