"""The market simulation's report: markdown tables, plain metadata values and plots of a MarketRun (run.py).
Plain functions, no dagster import; the asset market_simulation (assets/market/__init__.py) attaches them."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from assets.market import meanfield
from assets.market.run import MarketRun, run_label
from assets.market.stability import stability_markdown


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def metrics_markdown(frame: pl.DataFrame) -> str:
    """A markdown table of the metrics, one line per run (run_label), then the occasions and coverage."""
    head = (
        "| run | share_jsd_cw | units_wape_pw | vs population | sim / actual units | iterations | converged | "
        "residual | s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.iter_rows(named=True):
        lines.append(
            f"| {run_label(r)} | {_num(r['share_jsd_cw'], '.4f')} | {_num(r['units_wape_pw'], '.4f')} | "
            f"{_num(r['vs_population_jsd'], '.4f')} | {r['sim_units']:.0f} / {r['actual_units']:.0f} | "
            f"{r['iterations']} | {'' if r['converged'] is None else r['converged']} | "
            f"{_num(r['final_residual'], '.2e')} | {r['seconds']:.1f} |"
        )
    pops = frame.group_by("population", maintain_order=True).agg(pl.col("n_occasions", "n_customers").first())
    for p in pops.iter_rows(named=True):
        lines.append(f"\n{p['population']}: {p['n_occasions']} occasions, {p['n_customers']} customers")
    if frame.height:
        lines.append(f"coverage {_num(frame['coverage'][0], '.3f')}")
    return "\n".join(lines)


def calibration_markdown(frame: pl.DataFrame) -> str:
    """The calibration table: per engine before / after f."""
    lines = [
        "| engine | calibrated | nll | ECE (top) | top-1 hit | mean P(other) | other share | qty MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.iter_rows(named=True):
        lines.append(
            f"| {r['engine']} | {r['calibrated']} | {_num(r['nll'], '.4f')} | {_num(r['ece_top'], '.4f')} | "
            f"{_num(r['top1_hit'], '.4f')} | {_num(r['p_other_mean'], '.3f')} | {_num(r['other_share'], '.3f')} | "
            f"{_num(r['qty_mae'], '.3f')} |"
        )
    return "\n".join(lines)


def report_markdown(run: MarketRun) -> str:
    """The metrics, and the calibration and stability tables when the run has them."""
    parts = [run.metrics.pipe(metrics_markdown)]
    if run.calibration.height:
        parts.append(
            "Calibration (simulated period, without mean field):\n\n" + calibration_markdown(run.calibration)
        )
    for name in run.stability["engine"].unique(maintain_order=True).to_list():
        rows = run.stability.filter(pl.col("engine") == name)
        parts.append(f"Stability of {name} (sample mode):\n\n" + stability_markdown(rows.drop("engine")))
    return "\n\n".join(parts)


def headline_metrics(frame: pl.DataFrame) -> dict[str, float | int | bool]:
    """Plain values per run for the metadata: <metric>/<engine>[+cal][/sample/<weighting>][/mean_field]."""
    out: dict[str, float | int | bool] = {}
    for r in frame.iter_rows(named=True):
        key = run_label(r).replace(" + mean field", "/mean_field").replace(" ", "/")
        for m in ("share_jsd_cw", "units_wape_pw", "vs_population_jsd", "final_residual"):
            if r[m] is not None:
                out[f"{m}/{key}"] = float(r[m])
        if r["mean_field"]:
            out[f"iterations/{key}"] = int(r["iterations"])
            out[f"converged/{key}"] = bool(r["converged"])
        out[f"seconds/{key}"] = float(r["seconds"])
    return out


def table_headlines(run: MarketRun) -> dict[str, float]:
    """calibration/<engine>/<before|after>/<metric> and stability/<engine>/<mode>/<metric> values."""
    out: dict[str, float] = {}
    for r in run.calibration.iter_rows(named=True):
        for m in ("nll", "ece_top", "qty_mae"):
            if r[m] is not None:
                out[f"calibration/{r['engine']}/{'after' if r['calibrated'] else 'before'}/{m}"] = float(r[m])
    for r in run.stability.iter_rows(named=True):
        mode = "mean_field" if r["mean_field"] else "no_mean_field"
        for m in ("share_cv_cw", "top1_agreement", "cell_top1_all"):
            if r[m] is not None:
                out[f"stability/{r['engine']}/{mode}/{m}"] = float(r[m])
    return out


def plot_metrics(frame: pl.DataFrame, path: str | Path) -> Path:
    """A PNG: share_jsd_cw and units_wape_pw per run without the mean field and with it (the population's
    uncalibrated runs and, when present, the calibrated and sample ones as more bars); engines without a
    mean-field run (persistence) as a dashed line."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = frame.with_columns(
        label=pl.struct(frame.columns).map_elements(
            lambda r: run_label({**r, "mean_field": False}), return_dtype=pl.Utf8
        )
    )
    mf_labels = base.filter(pl.col("mean_field"))["label"].unique(maintain_order=True).to_list()
    lines = base.filter(~pl.col("label").is_in(mf_labels))
    fig = Figure(figsize=(4.0 + 1.1 * len(mf_labels), 4.0))
    for ax, metric in zip(fig.subplots(1, 2), ("share_jsd_cw", "units_wape_pw"), strict=True):
        for i, (mf, label) in enumerate(((False, "without mean field"), (True, "with mean field"))):
            vals = []
            for lab in mf_labels:
                v = base.filter((pl.col("label") == lab) & (pl.col("mean_field") == mf))[metric]
                vals.append(float("nan") if v.len() == 0 or v[0] is None else v[0])
            ax.bar([k + (i - 0.5) * 0.38 for k in range(len(mf_labels))], vals, 0.38, label=label)
        for j, r in enumerate(lines.iter_rows(named=True)):
            if r[metric] is not None:
                ax.axhline(r[metric], color=f"C{j + 2}", ls="--", lw=1.2, label=r["label"])
        ax.set_xticks(range(len(mf_labels)), mf_labels, fontsize=7, rotation=30, ha="right")
        ax.set_xlim(-0.8, max(len(mf_labels), 1) - 0.2)
        ax.set_title(metric + " (lower is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    return path


def plot_report(run: MarketRun, out_dir: str | Path) -> dict[str, Path]:
    """The metrics plot, the residual plot of the first mean-field run (when there is one) and the stability
    plot of each stability engine."""
    from assets.market.stability import plot_stability

    out_dir = Path(out_dir)
    paths = {"plot": plot_metrics(run.metrics, out_dir / "market_metrics.png")}
    if run.results:
        name, res = next(iter(run.results.items()))
        slug = name.replace(" + ", "_").replace(" ", "_").replace("+", "_")
        paths["residual_plot"] = meanfield.plot_residuals(res, out_dir / f"market_residuals_{slug}.png")
    for name, res in run.stability_results.items():
        path = out_dir / f"market_stability_{name}.png"
        plot_stability(res, path)
        paths[f"stability_plot_{name}"] = path
    return paths
