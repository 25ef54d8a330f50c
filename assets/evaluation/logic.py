"""The baseline report: load the option frame, run the baselines, write tables, plot, log to MLflow.

Plain functions (no Dagster import); the asset in __init__.py wires them.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import polars as pl

from assets.evaluation.baselines import (
    CHOICE_METHODS,
    QTY_METHODS,
    SPLITS,
    VAL_SPLITS,
    BaselineRun,
    BaselineSettings,
    fit_baseline_models,
    score_baselines,
)
from resources.sql import load_sql

METRIC_NAMES = ["hit1", "hit3", "nll", "qty_mae", "qty_wape", "share_jsd"]


def load_fit_frame(conn) -> pl.DataFrame:
    """Options of the fit episodes (train, use_for_fit), model columns only (select_fit_options.sql)."""
    return conn.sql(load_sql("evaluation/select_fit_options")).pl()


def load_eval_frame(conn, seed: int) -> pl.DataFrame:
    """Options of the val and test episodes with everything the metrics need (select_eval_options.sql)."""
    return conn.sql(load_sql("evaluation/select_eval_options"), params={"seed": seed}).pl()


BEST_CLASSIC_SCHEMA = {
    "split": pl.Utf8,
    "method": pl.Utf8,
    "chosen_on": pl.Utf8,
    "chosen_on_n": pl.Int64,
    "chosen_on_value": pl.Float64,
}


def write_tables(conn, run: BaselineRun) -> None:
    """Replace baseline_predictions, baseline_metrics and baseline_best_classic with this run's frames."""
    best = run.best_classic if run.best_classic is not None else pl.DataFrame(schema=BEST_CLASSIC_SCHEMA)
    tables = (
        ("baseline_predictions", run.predictions),
        ("baseline_metrics", run.metrics),
        ("baseline_best_classic", best),
    )
    for name, frame in tables:
        conn.register(f"staged_{name}", frame.to_arrow())
        try:
            conn.execute(load_sql(f"evaluation/{name}"))
        finally:
            conn.unregister(f"staged_{name}")


def metrics_problems(metrics: pl.DataFrame) -> list[str]:
    """Rows whose metrics are out of range: hit rates outside [0, 1], nll < 0, negative errors or JSD
    outside [0, 1] (base 2), n_episodes < 0. NaN counts as out of range. Empty list: all in range."""
    problems = []
    bounds = {
        "hit1": (0.0, 1.0),
        "hit3": (0.0, 1.0),
        "nll": (0.0, math.inf),
        "qty_mae": (0.0, math.inf),
        "qty_wape": (0.0, math.inf),
        "share_jsd": (0.0, 1.0 + 1e-9),
        "n_episodes": (0, math.inf),
    }
    for row in metrics.iter_rows(named=True):
        for col, (lo, hi) in bounds.items():
            v = row.get(col)
            if v is None:
                continue
            if not (lo <= v <= hi):  # also catches NaN
                problems.append(f"{row['method']}/{row['split']}/{col}={v}")
        if row.get("hit1") is not None and row.get("hit3") is not None and row["hit3"] < row["hit1"] - 1e-12:
            problems.append(f"{row['method']}/{row['split']}/hit3<hit1")
    return problems


def fmt_cell(v: Any) -> str:
    """A markdown table cell: '–' for missing, 4 decimals for floats."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_markdown(metrics: pl.DataFrame, best_classic: pl.DataFrame | None = None) -> str:
    """One markdown table per split (a heading per split, the val analogues after the test splits), methods as
    rows; then, when given, each split's best classic method and the val figure that chose it."""
    cols = ["method", "n_episodes", *METRIC_NAMES]
    out = []
    if best_classic is not None and best_classic.height:
        out.append("**best classic per split (chosen on val: assets/evaluation/best_classic.py)**\n")
        out.append("| split | method | chosen on | n | hit1 there |")
        out.append("|---|---|---|---|---|")
        for r in best_classic.iter_rows(named=True):
            out.append(
                f"| {r['split']} | {r['method']} | {r['chosen_on']} | {r['chosen_on_n']} | "
                f"{fmt_cell(r['chosen_on_value'])} |"
            )
        out.append("")
    for split in SPLITS + VAL_SPLITS:
        part = metrics.filter(pl.col("split") == split)
        if part.height == 0:
            continue
        out.append(f"**{split}**\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for row in part.iter_rows(named=True):
            out.append("| " + " | ".join(fmt_cell(row[c]) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def headline_metrics(metrics: pl.DataFrame) -> dict[str, float]:
    """`{split}/{method}/{metric}` -> float for every defined metric (NaN and null left out)."""
    out = {}
    for row in metrics.iter_rows(named=True):
        for m in METRIC_NAMES:
            v = row[m]
            if v is not None and not math.isnan(v):
                out[f"{row['split']}/{row['method']}/{m}"] = float(v)
    return out


def plot_metrics(metrics: pl.DataFrame, path: str | Path) -> Path:
    """Grouped bars per split: hit@1, hit@3 and nll of each choice method. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = [m for m in CHOICE_METHODS if m in set(metrics["method"].to_list())]
    splits = [s for s in SPLITS if s in set(metrics["split"].to_list())]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(splits))
    n_by_split = (
        {
            r["split"]: r["n_episodes"]
            for r in metrics.filter(pl.col("method") == methods[0]).iter_rows(named=True)
        }
        if methods
        else {}
    )
    labels = [f"{s}\n(n={n_by_split.get(s, 0)})" for s in splits]
    for ax, metric, title in zip(
        axes, ["hit1", "hit3", "nll"], ["hit@1", "hit@3", "nll (lower is better)"], strict=True
    ):
        for i, method in enumerate(methods):
            vals = []
            for split in splits:
                r = metrics.filter((pl.col("method") == method) & (pl.col("split") == split))
                v = r[metric][0] if r.height else None
                vals.append(np.nan if v is None else v)
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=method)
        ax.set_xticks(x, labels, rotation=0, fontsize=8)
        ax.set_title(title)
        if metric != "nll":
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=max(len(methods), 1), fontsize=9, frameon=False)
    fig.suptitle("Reference baselines per split")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def image_markdown(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![baseline metrics](data:image/png;base64,{data})"


def coefficients_frame(run: BaselineRun) -> pl.DataFrame:
    """model, feature, coef, se, z of the fitted conditional logits (clogit, clogit6; none if not fitted)."""
    schema = {"model": pl.Utf8, "feature": pl.Utf8, "coef": pl.Float64, "se": pl.Float64, "z": pl.Float64}
    rows = []
    for name, res in (("clogit", run.clogit), ("clogit6", run.clogit6)):
        if res is not None:
            rows += [{"model": name, **r} for r in res.to_rows()]
    return pl.DataFrame(rows, schema=schema)


def log_to_mlflow(run: BaselineRun, settings: BaselineSettings, out_dir: str | Path, plot_path: Path) -> None:
    """Params, metrics (`split.method.metric`), and artifacts (plot, metrics CSV, clogit coefficients CSV)
    into the active MLflow run."""
    import mlflow

    out_dir = Path(out_dir)
    metrics_csv = out_dir / "baseline_metrics.csv"
    coef_csv = out_dir / "clogit_coefficients.csv"
    run.metrics.write_csv(metrics_csv)
    coefficients_frame(run).write_csv(coef_csv)
    params = {k: v for k, v in vars(settings).items()}
    params.update({k: v for k, v in run.info.items() if isinstance(v, int | float | str | bool)})
    mlflow.log_params(params)
    # MLflow metric keys may not contain '/' in every store: use dots
    mlflow.log_metrics({k.replace("/", "."): v for k, v in headline_metrics(run.metrics).items()})
    mlflow.log_metrics({f"seconds.{k}": v for k, v in run.info.get("timings", {}).items()})
    for p in (plot_path, metrics_csv, coef_csv):
        mlflow.log_artifact(str(p))


def _restorable(shown: str) -> str:
    """DuckDB shows memory_limit rounded down to 0.1 of its unit ("2.7 GiB"); setting the middle of that
    step ("2.75 GiB") shows the same text again, so a restore neither drifts nor changes what is shown."""
    parts = shown.split()
    try:
        return f"{float(parts[0]) + 0.05:.2f} {parts[1]}" if len(parts) == 2 and "." in parts[0] else shown
    except ValueError:
        return shown


def _quote_free(value: str) -> str:
    if "'" in value or ";" in value:
        raise ValueError(f"not a memory size: {value!r}")
    return value


def build_baseline_report(
    conn, settings: BaselineSettings, log=print, duckdb_memory_limit: str | None = None
) -> BaselineRun:
    """Load the option frames, fit and score every baseline, write baseline_predictions / baseline_metrics.

    Memory: the val/test frame is loaded first, the fit frame only while the models are fitted, and
    DuckDB's own buffer can be capped for the load (the polars frames live outside it) and is restored.
    """
    import gc
    import time

    t0 = time.perf_counter()
    if duckdb_memory_limit:  # SET takes no parameter slot; the value is checked by DuckDB's parser
        previous = conn.execute("select current_setting('memory_limit')").fetchall()[0][0]
        conn.execute(f"set memory_limit = '{_quote_free(duckdb_memory_limit)}'")
        try:
            evalf = load_eval_frame(conn, settings.seed)
            fit = load_fit_frame(conn)
        finally:  # the database instance may be shared with other assets of the run: restore its setting
            conn.execute(f"set memory_limit = '{_quote_free(_restorable(str(previous)))}'")
    else:
        evalf = load_eval_frame(conn, settings.seed)
        fit = load_fit_frame(conn)
    t_load = time.perf_counter() - t0
    log(f"option frames: {fit.height} fit rows, {evalf.height} val/test rows ({t_load:.1f} s)")
    models = fit_baseline_models(fit, evalf.filter(pl.col("period") == "val"), settings, log=log)
    del fit
    gc.collect()
    run = score_baselines(evalf, models, settings, log=log)
    t = time.perf_counter()
    write_tables(conn, run)
    run.info["timings"].update(load=t_load, write=time.perf_counter() - t, total=time.perf_counter() - t0)
    return run


__all__ = [
    "CHOICE_METHODS",
    "QTY_METHODS",
    "build_baseline_report",
    "coefficients_frame",
    "headline_metrics",
    "image_markdown",
    "load_eval_frame",
    "load_fit_frame",
    "log_to_mlflow",
    "metrics_markdown",
    "metrics_problems",
    "plot_metrics",
    "write_tables",
]
