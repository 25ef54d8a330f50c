"""The `malles` command: run the pipeline, ingest files, draw a synthetic market, run a what-if scenario.

Exit status: 0 success, 1 the work failed (a run step failed, a file was rejected), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from pipelines.env import set_offline_env


class UsageError(Exception):
    """A bad argument, config or path: printed as one line, exit status 2."""


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False, width=max(120, shutil.get_terminal_size().columns))


def _prepare_env(args: argparse.Namespace) -> Path:
    """Point every component at one data folder and warehouse before the definitions are imported."""
    set_offline_env()
    if getattr(args, "data_dir", None):
        os.environ["MALLES_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from resources.paths import data_dir

    data = data_dir()
    if getattr(args, "warehouse", None):
        os.environ["MALLES_DUCKDB_PATH"] = str(Path(args.warehouse).resolve())
    os.environ.setdefault("DAGSTER_HOME", str(data / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    dagster_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    return data


# --------------------------------------------------------------------------- run


def _source_run_config(source: str, data: Path) -> tuple[dict, str]:
    """The ingest config for a source: a built-in name, 'synthetic', or a mapping YAML path."""
    from assets.ingest.logic import load_mapping  # validates the mapping: a one-line error if bad

    if source == "synthetic":
        from assets.synthetic.generator import SynthConfig, generate_market

        landing = data / "landing" / "synthetic"
        if not (landing / "transactions.parquet").exists():
            generate_market(landing, SynthConfig())
        mapping_path = landing / "mapping.yaml"
        if not mapping_path.exists():
            from assets.ingest.logic import builtin_mapping_path

            mapping_path.write_text(builtin_mapping_path("canonical").read_text(encoding="utf-8"))
        load_mapping(str(mapping_path))
        return {"sources": [str(mapping_path)]}, "synthetic"
    p = Path(source)
    if p.suffix in {".yaml", ".yml"}:
        if not p.exists():
            raise UsageError(
                f"mapping file {p} does not exist: pass a built-in source name or a mapping YAML"
            )
        load_mapping(str(p.resolve()))
        return {"sources": [str(p.resolve())]}, p.stem
    load_mapping(source)
    return {"sources": [source]}, source


def cmd_run(args: argparse.Namespace) -> int:
    data = _prepare_env(args)
    console = _console()
    if args.source != "completejourney" and not args.warehouse:
        name = Path(args.source).stem if args.source.endswith((".yaml", ".yml")) else args.source
        os.environ["MALLES_DUCKDB_PATH"] = str(data / f"{name}.duckdb")
    ingest_config, _ = _source_run_config(args.source, data)

    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.progress import StageTimer, ingest_op_name

    names = sorted(j.name for j in defs.resolve_all_job_defs())
    if args.job not in names:
        raise UsageError(f"--job {args.job}: unknown job; jobs: {', '.join(names)}")
    job = defs.resolve_job_def(args.job)
    op_names = {node.name for node in job.graph.node_dict.values()}
    asset_keys = None
    if args.select:
        asset_keys, op_names = select_assets(job, args.select)
    run_config = build_run_config(args, op_names, ingest_op_name(job), ingest_config)
    warehouse = Path(os.environ.get("MALLES_DUCKDB_PATH") or data / "malles.duckdb")
    if warehouse.exists():  # another run or ingest holds it: wait a bounded time, then one line, nothing run
        from assets.ingest.lock import WarehouseLocked, connect_warehouse

        try:
            connect_warehouse(warehouse, wait_s=args.lock_wait).close()
        except WarehouseLocked as e:
            print(f"malles: error: {e}", file=sys.stderr)
            return 1
    console.print(f"[bold]malles run[/bold]: job {args.job}, profile {args.profile}, source {args.source}")
    if asset_keys is not None:
        console.print(f"  assets     {', '.join(sorted(op_names))}")
    console.print(f"  warehouse  {os.environ.get('MALLES_DUCKDB_PATH', data / 'malles.duckdb')}")
    timer = StageTimer(console)
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False, asset_selection=asset_keys
        )
        timer.report(instance, result.run_id)
    wall = time.perf_counter() - t0
    if not result.success:
        console.print(f"[red]run {result.run_id} failed after {wall:.0f} s[/red]; see the step errors above")
        return 1
    from pipelines.progress import print_results

    print_results(console, result, data, wall)
    return 0


def select_assets(job, select: str) -> tuple[list, set[str]]:
    """The asset keys and op names of a Dagster selection string (e.g. 'retail_decisions+',
    '+lora_adapter', '*baseline_report', or several joined by commas as `dagster asset materialize --select`
    takes them: 'sft_prompt_dataset,lora_adapter') within a job, with the other assets of any multi-asset it
    touches: a bad string or an unknown asset is a UsageError."""
    import dagster as dg

    graph = job.asset_layer.asset_graph
    try:
        parts = [p.strip() for p in select.split(",")] if "," in select else [select]
        if not all(parts):
            raise ValueError("an empty name between commas")
        selection = dg.AssetSelection.from_string(parts[0])
        for part in parts[1:]:
            selection = selection | dg.AssetSelection.from_string(part)
        # a multi-asset that cannot be subset (ingest: raw_transactions, products, customers, quarantined_rows)
        # runs whole: the selection takes its other assets along rather than failing in Dagster
        keys = selection.required_multi_asset_neighbors().resolve(graph)
    except Exception as e:  # DagsterInvalidAssetSelectionError, DagsterInvalidSubsetError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(
            f"--select {select!r}: {first[:160]} (write asset names of job {job.name}, "
            "e.g. '+lora_adapter' or 'retail_decisions+')"
        ) from None
    if not keys:
        raise UsageError(f"--select {select!r} selects no asset of job {job.name}")
    return sorted(keys), {graph.get(k).assets_def.node_def.name for k in keys}


def build_run_config(
    args: argparse.Namespace, op_names: set[str], ingest_op: str | None, ingest_config: dict
) -> dict:
    """The run config of `malles run`: the profile's settings for the job's ops, the ingest config, the example
    what-if scenario of a built-in source (pipelines/profiles.py SOURCE_SCENARIOS), then every --config
    override; checked (check_run_config) before anything runs."""
    from pipelines.profiles import profile_run_config, source_scenario

    run_config = profile_run_config(args.profile, op_names, job=args.job)
    if "whatif" in op_names and (scenario := source_scenario(args.source)):
        run_config["ops"].setdefault("whatif", {"config": {}})["config"]["scenario"] = scenario
    if ingest_op in op_names:
        run_config["ops"][ingest_op] = {"config": ingest_config}
    for override in args.config or []:
        _apply_override(run_config, override)
    check_run_config(run_config)
    return run_config


def _apply_override(run_config: dict, override: str) -> None:
    """--config op.field=value (value parsed as YAML)."""
    import yaml

    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise UsageError(f"--config {override!r}: write it as OP.FIELD=VALUE, e.g. baseline_report.seed=1")
    key, value = override.split("=", 1)
    op, field = key.split(".", 1)
    run_config.setdefault("ops", {}).setdefault(op, {}).setdefault("config", {})[field] = yaml.safe_load(
        value
    )


def check_run_config(run_config: dict) -> None:
    """Settings that would fail a step after the hours before it fail here, as one line, before anything
    runs: the agents' forms, variants, periods and quantity_source."""
    cfg = run_config.get("ops", {}).get("retail_decisions", {}).get("config")
    if cfg is None:
        return
    from pydantic import ValidationError

    from assets.simulation import RetailDecisionsConfig
    from assets.simulation import plan as S

    try:
        config = RetailDecisionsConfig(**cfg)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(
            f"retail_decisions.{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (see --config)"
        ) from None
    S.plan_decision_runs(config)
    S.quantity_model("", config.quantity_source)


# --------------------------------------------------------------------------- ingest


def cmd_ingest(args: argparse.Namespace) -> int:
    data = _prepare_env(args)
    console = _console()
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path} does not exist: pass a CSV or Parquet file or a folder of them")
    import dataclasses

    from assets.ingest import IngestConfig, ingest_limits
    from assets.ingest.logic import (
        WarehouseLocked,
        connect_warehouse,
        ensure_schema,
        ingest_source,
        load_mapping,
        mapping_paths,
    )

    mapping = load_mapping(args.mapping)
    if path.is_dir():  # the mapping's globs are matched under the folder given, wherever the YAML lies
        mapping = dataclasses.replace(mapping, base_dir=path.resolve())
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".csv", ".parquet"})
    else:
        files = [path]
    planned = mapping_paths(mapping, [str(f) for f in files])
    if not planned:
        globs = "; ".join(f"{t}: {', '.join(tm.files)}" for t, tm in mapping.tables.items())
        raise UsageError(
            f"no file under {path} matches the globs of mapping {mapping.label} ({globs}); "
            "rename the files or fix the mapping's files: globs"
        )
    db = os.environ.get("MALLES_DUCKDB_PATH") or str(data / "malles.duckdb")
    console.print(f"ingesting {len({p for _, p in planned})} file(s) into {db}")
    try:
        conn = connect_warehouse(db, wait_s=args.lock_wait)
    except WarehouseLocked as e:
        print(f"malles: error: {e}", file=sys.stderr)
        return 1
    try:
        ensure_schema(conn)
        limits = ingest_limits(IngestConfig())
        by_table: dict[str, list[Path]] = {}
        for table, f in planned:
            by_table.setdefault(table, []).append(f)
        reports = ingest_source(conn, mapping, paths=by_table, progress=True, limits=limits)
    finally:
        conn.close()
    _print_reports(console, reports)
    rejected = [r for r in reports if r.status == "rejected"]
    for r in rejected:
        console.print(f"[red]rejected[/red] {r.source_file}: {r.message}")
    return 1 if rejected else 0


def _print_reports(console, reports) -> None:
    from rich.table import Table

    table = Table(title="ingest")
    for col in ["file", "table", "status", "rows in", "loaded", "quarantined", "duplicates", "reasons"]:
        table.add_column(col)
    for r in reports:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted((r.reasons or {}).items()))
        table.add_row(
            Path(r.source_file).name,
            r.table_name,
            r.status,
            str(r.rows_in),
            str(r.rows_loaded),
            str(r.rows_quarantined),
            str(r.rows_duplicate),
            reasons,
        )
    console.print(table)


# --------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    data = _prepare_env(args)
    console = _console()
    import yaml

    from assets.synthetic.generator import main_synth

    out = Path(args.out) if args.out else data / "landing" / "synthetic"
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: write it as FIELD=VALUE (a SynthConfig field)")
        k, v = item.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    if args.seed is not None:
        overrides["seed"] = args.seed
    summary = main_synth(out, show_progress=True, **overrides)
    console.print(f"synthetic market written to {out} (ground truth apart in {out / 'truth'})")
    console.print(summary)
    return 0


# --------------------------------------------------------------------------- whatif


def whatif_run_config(args: argparse.Namespace, data: Path) -> tuple[dict, Path]:
    """The whatif asset's config from the arguments, and the warehouse, after checking the config, the engine
    name and the scenario against the warehouse (load_scenario with a connection): a bad one is a one-line
    error here, before any work."""
    import duckdb
    import yaml
    from pydantic import ValidationError

    import pipelines.definitions  # noqa: F401 - every engine family registers itself in run.ENGINES
    from assets.market import WhatIfConfig, run
    from assets.market.scenario import load_scenario

    db = Path(os.environ.get("MALLES_DUCKDB_PATH") or data / "malles.duckdb")
    if not db.exists():
        raise UsageError(f"warehouse {db} does not exist: build it first (malles run) or pass --warehouse")
    cfg: dict = {"scenario": str(Path(args.scenario).resolve())}
    cfg |= {k: v for k in ("engine", "weeks", "customers") if (v := getattr(args, k)) is not None}
    for item in args.config or []:
        key, sep, value = item.partition("=")
        if not sep or key not in WhatIfConfig.model_fields or key == "scenario":
            fields = ", ".join(f for f in WhatIfConfig.model_fields if f != "scenario")
            raise UsageError(
                f"--config {item!r}: write FIELD=VALUE with a field of the whatif asset: {fields}"
            )
        cfg[key] = yaml.safe_load(value)
    try:
        config = WhatIfConfig(**cfg)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(
            f"whatif.{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (see --config)"
        ) from None
    run.check_engine_names([config.engine or ("hybrid" if "hybrid" in run.ENGINES else "clogit")])
    try:
        conn = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as e:
        raise UsageError(f"warehouse {db}: {str(e).splitlines()[0]}") from None
    with conn:
        load_scenario(config.scenario, conn)  # a ScenarioError: one line naming the fix
    return {"ops": {"whatif": {"config": cfg}}}, db


def cmd_whatif(args: argparse.Namespace) -> int:
    data = _prepare_env(args)
    console = _console()
    run_config, db = whatif_run_config(args, data)
    import dagster as dg

    from pipelines.definitions import build_resources, defs

    console.print(f"[bold]malles whatif[/bold]: {args.scenario}, warehouse {db}")
    # the resources of this call's data folder and warehouse (defs may have been imported with others)
    resources = build_resources(os.environ.get("PIPELINE_ENV", "local"))
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("whatif_job").execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False, resources=resources
        )
    wall = time.perf_counter() - t0
    if not result.success:
        console.print(f"[red]run {result.run_id} failed after {wall:.0f} s[/red]; see the step errors above")
        return 1
    meta = result.asset_materializations_for_node("whatif")[0].metadata
    console.print(meta["effects"].value)
    for key in ("units_plot", "elasticity_plot"):
        if key in meta:
            console.print(f"  {key:16} {meta[key].value}")
    console.print(f"  tables           whatif_effects, whatif_elasticities, whatif_diversion in {db}")
    if "mlflow_run_url" in meta:
        console.print(f"  mlflow           {meta['mlflow_run_url'].value}")
    console.print(
        f"[green]whatif {meta['scenario'].value} ({meta['engine'].value}) done in {wall:.1f} s[/green]"
    )
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="malles", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data folder (default: data/ at the project root, or $MALLES_DATA_DIR)")
    p.add_argument("--warehouse", help="DuckDB file (default: <data-dir>/malles.duckdb for Complete Journey)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run", help="materialize the pipeline end to end (main_job) and print where results are"
    )
    r.add_argument(
        "--source",
        default="completejourney",
        help="'completejourney' (default, embedded), 'synthetic', or a mapping YAML of your own data",
    )
    r.add_argument("--job", default="main_job", help="job to run (main_job, ingest_job, features_job, ...)")
    r.add_argument(
        "--profile",
        default="quick",
        choices=["quick", "full"],
        help="quick (default: about 33 min on 2 cores, N=80 per split) or full (N=2,000 per split; hours on CPU)",
    )
    r.add_argument(
        "--select",
        metavar="SELECTION",
        help="materialize only these assets of the job (Dagster selection syntax: 'retail_decisions+' "
        "re-runs the agents and the report, '+lora_adapter' the prompts and training)",
    )
    r.add_argument("--config", action="append", metavar="OP.FIELD=VALUE", help="override one config field")
    r.add_argument(
        "--lock-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait while another process holds the warehouse before anything runs (default 30)",
    )
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("ingest", help="load CSV/Parquet files into the warehouse through a source mapping")
    i.add_argument("path", help="a file or a folder of files")
    i.add_argument(
        "--mapping", required=True, help="mapping YAML (or a built-in name: completejourney, canonical)"
    )
    i.add_argument(
        "--lock-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait while another process holds the warehouse (default 30)",
    )
    i.set_defaults(func=cmd_ingest)

    s = sub.add_parser(
        "synth", help="draw a synthetic market with known ground truth (canonical files + truth/)"
    )
    s.add_argument("--out", help="output folder (default: <data-dir>/landing/synthetic)")
    s.add_argument("--seed", type=int, help="random seed")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a SynthConfig field")
    s.set_defaults(func=cmd_synth)

    w = sub.add_parser(
        "whatif", help="run a what-if scenario (YAML) through the market simulation and print its effects"
    )
    w.add_argument("scenario", help="a scenario YAML (scenarios/README.md)")
    w.add_argument("--engine", help="a market engine (llm, hybrid (default), clogit, clogit6, lgbm)")
    w.add_argument("--weeks", type=int, help="the period's first N ISO weeks (default 8; 0 = all)")
    w.add_argument("--customers", type=int, help="a seeded sample of N customers (default 0 = all)")
    w.add_argument("--config", action="append", metavar="FIELD=VALUE", help="override a whatif config field")
    w.set_defaults(func=cmd_whatif)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"malles: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        # Mapping and config errors are raised as one-line ValueErrors naming the fix.
        print(f"malles: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("malles: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
