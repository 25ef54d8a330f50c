"""Stability of the market simulation in sample mode (docs/evaluation-protocol.md "Market-level evaluation":
"Stability (sample mode): R = 5 seeds; share_cv_cw"). Plain functions, no dagster import.

run_stability runs one engine in sample mode (meanfield.run_mean_field(sample_seed=s)) for each seed, without
and with the mean field, and reports per mode:
- share_cv_cw: metrics.share_cv_cw over the R runs' simulated units per (category, week, product or OTHER),
  the protocol's figure (sample std, ddof=1, over the mean; cells with mean 0 left out).
- top1_agreement: the protocol's top1_agreement (assets/evaluation/metrics.py, the mean over pairs of runs of
  the share of episodes with the same top-1 choice) read on the occasions: an occasion's top-1 choice in a
  run is its drawn option (OTHER included).
- cell_top1_all and cell_top1_pairwise: metrics.cell_top1_agreement, the market cells' reading (the protocol
  defines none): the share of (category, week) cells whose top product by simulated units is the same in
  every run, and the mean over pairs of runs of that share.
- iterations_mean, converged (every run converged; null without the mean field), seconds_mean (per run) and
  seconds_total.

Readings that needed a choice:
- simulated units per cell are sum over occasions of prob x expected_qty with prob one-hot (the drawn option's
  expected units; quantities are not sampled); with weights (mean_field_kwargs["weights"]) each occasion's
  units count `weight` times, as they do in the market state.
- a cell's week is the occasions' iso_week column when they have one (market_occasions), else metrics.iso_week
  of their day.
- the engine must be deterministic (the same options give the same probabilities): all randomness is the
  seed's, so identical seeds give identical runs (CV 0, agreement 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.metrics import top1_agreement
from assets.market import meanfield, metrics

SUMMARY_SCHEMA = {
    "mean_field": pl.Boolean,
    "seeds": pl.Int64,
    "share_cv_cw": pl.Float64,
    "top1_agreement": pl.Float64,
    "cell_top1_all": pl.Float64,
    "cell_top1_pairwise": pl.Float64,
    "iterations_mean": pl.Float64,
    "converged": pl.Boolean,
    "seconds_mean": pl.Float64,
    "seconds_total": pl.Float64,
}
RUNS_SCHEMA = {
    "mean_field": pl.Boolean,
    "seed": pl.Int64,
    "iterations": pl.Int64,
    "converged": pl.Boolean,
    "final_residual": pl.Float64,
    "seconds": pl.Float64,
}
UNITS_SCHEMA = {
    "mean_field": pl.Boolean,
    "seed": pl.Int64,
    "category": pl.Utf8,
    "week": pl.Utf8,
    "product_id": pl.Utf8,
    "units": pl.Float64,
}
CELLS_SCHEMA = {"mean_field": pl.Boolean, **{c: pl.Utf8 for c in metrics.CELL}} | {
    "mean": pl.Float64,
    "std": pl.Float64,
    "cv": pl.Float64,
}


@dataclass
class StabilityResult:
    """What run_stability returns."""

    summary: pl.DataFrame  # SUMMARY_SCHEMA: one row per mode (mean_field False / True)
    runs: pl.DataFrame  # RUNS_SCHEMA: one row per (mode, seed)
    units: pl.DataFrame  # UNITS_SCHEMA: simulated units per (mode, seed, category, week, product or OTHER)
    cells: pl.DataFrame  # CELLS_SCHEMA: per mode and cell, mean, std and cv of the units across seeds

    def markdown(self) -> str:
        return stability_markdown(self.summary)


def _week(occasions: pl.DataFrame) -> pl.DataFrame:
    """occasion_id, category, week."""
    if "iso_week" in occasions.columns:
        return occasions.select("occasion_id", "category", week="iso_week")
    return occasions.select("occasion_id", "category", metrics.iso_week("day"))


def _sim_units(decisions: pl.DataFrame, occ_cw: pl.DataFrame, weights: pl.DataFrame | None) -> pl.DataFrame:
    """category, week, product_id, units of one run (weighted when weights are given)."""
    d = decisions.join(occ_cw, on="occasion_id")
    if weights is not None:
        w = meanfield.check_weights(weights, occ_cw)
        d = d.join(w, on="occasion_id").with_columns(pl.col("prob") * pl.col("weight"))
    return metrics.simulated_units(d)


def _drawn(decisions: pl.DataFrame) -> pl.DataFrame:
    """episode_id (the occasion), product_id: each occasion's drawn option (prob 1)."""
    return decisions.filter(pl.col("prob") > 0.5).select(episode_id="occasion_id", product_id="product_id")


def run_stability(
    engine,
    options: pl.DataFrame,
    occasions: pl.DataFrame,
    pre_history: meanfield.MarketHistory,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    mean_field: Sequence[bool] = (False, True),
    **mean_field_kwargs: Any,
) -> StabilityResult:
    """Sample-mode runs of `engine` for every seed in every mode of `mean_field` (module docstring).
    mean_field_kwargs go to meanfield.run_mean_field (alpha, epsilon, max_iter, own_history, weights, log)."""
    taken = {"sample_seed", "mean_field"} & set(mean_field_kwargs)
    if taken:
        raise ValueError(f"run_stability sets {sorted(taken)} itself")
    log = mean_field_kwargs.get("log", print)
    weights = mean_field_kwargs.get("weights")
    occ_cw = _week(occasions)
    summary, runs, units, cells = [], [], [], []
    for mf in mean_field:
        unit_runs, drawn, seconds, iterations, converged = [], [], [], [], []
        for seed in seeds:
            t = time.perf_counter()
            res = meanfield.run_mean_field(
                engine,
                options,
                occasions,
                pre_history,
                mean_field=mf,
                sample_seed=int(seed),
                **mean_field_kwargs,
            )
            seconds.append(time.perf_counter() - t)
            iterations.append(res.iterations)
            converged.append(res.converged)
            u = _sim_units(res.decisions, occ_cw, weights)
            unit_runs.append(u)
            drawn.append(_drawn(res.decisions))
            units.append(u.with_columns(mean_field=pl.lit(mf), seed=pl.lit(int(seed))))
            runs.append(
                {
                    "mean_field": mf,
                    "seed": int(seed),
                    "iterations": res.iterations,
                    "converged": res.converged if mf else None,
                    "final_residual": res.residuals[-1] if res.residuals else None,
                    "seconds": seconds[-1],
                }
            )
        cell_all, cell_pair = metrics.cell_top1_agreement(unit_runs)
        row = {
            "mean_field": mf,
            "seeds": len(seeds),
            "share_cv_cw": metrics.share_cv_cw(unit_runs),
            "top1_agreement": top1_agreement(drawn),
            "cell_top1_all": cell_all,
            "cell_top1_pairwise": cell_pair,
            "iterations_mean": float(np.mean(iterations)) if iterations else None,
            "converged": all(converged) if mf else None,
            "seconds_mean": float(np.mean(seconds)) if seconds else None,
            "seconds_total": float(np.sum(seconds)),
        }
        summary.append(row)
        cells.append(metrics.share_cv_cells(unit_runs).with_columns(mean_field=pl.lit(mf)))
        log(
            f"stability ({'with' if mf else 'without'} mean field, {len(seeds)} seeds): share_cv_cw "
            f"{_fmt(row['share_cv_cw'], '.4f')}, top1_agreement {_fmt(row['top1_agreement'], '.4f')}, "
            f"{row['seconds_total']:.1f} s"
        )
    return StabilityResult(
        summary=pl.DataFrame(summary, schema=SUMMARY_SCHEMA),
        runs=pl.DataFrame(runs, schema=RUNS_SCHEMA),
        units=_stack(units, UNITS_SCHEMA),
        cells=_stack(cells, CELLS_SCHEMA),
    )


def _stack(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    cast = [f.select(pl.col(c).cast(t) for c, t in schema.items()) for f in frames]
    return pl.concat(cast) if cast else pl.DataFrame(schema=schema)


def _fmt(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def stability_markdown(summary: pl.DataFrame) -> str:
    """A markdown table of the summary, one line per mode."""
    lines = [
        "| mean field | seeds | share_cv_cw | top-1 agreement (occasions) | cells: same top-1 in all seeds | "
        "cells: top-1 pairwise | iterations | converged | s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"| {'with' if r['mean_field'] else 'without'} | {r['seeds']} | {_fmt(r['share_cv_cw'], '.4f')} | "
            f"{_fmt(r['top1_agreement'], '.4f')} | {_fmt(r['cell_top1_all'], '.3f')} | "
            f"{_fmt(r['cell_top1_pairwise'], '.3f')} | {_fmt(r['iterations_mean'], '.1f')} | "
            f"{'' if r['converged'] is None else r['converged']} | {_fmt(r['seconds_mean'], '.2f')} |"
        )
    return "\n".join(lines)


def plot_stability(result: StabilityResult, path: str | Path | None = None):
    """A matplotlib Figure (no pyplot state): share_cv_cw without and with the mean field (bars, the top-1
    agreement written on them) and each cell's CV against its mean units (log x); saved as PNG at `path` when
    given."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.4))
    left, right = fig.subplots(1, 2)
    labels, cvs = [], []
    for r in result.summary.iter_rows(named=True):
        labels.append("with mean field" if r["mean_field"] else "without mean field")
        cvs.append(np.nan if r["share_cv_cw"] is None else r["share_cv_cw"])
    bars = left.bar(range(len(cvs)), cvs, color=[f"C{int(m)}" for m in result.summary["mean_field"]])
    for b, r in zip(bars, result.summary.iter_rows(named=True), strict=True):
        left.annotate(
            f"top-1 {_fmt(r['top1_agreement'], '.3f')}",
            (b.get_x() + b.get_width() / 2, np.nan_to_num(b.get_height())),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    seeds = result.summary["seeds"].max() if result.summary.height else 0
    left.set_title(f"share_cv_cw over {seeds} seeds (lower is stabler)", fontsize=9)
    left.grid(axis="y", alpha=0.3)
    for mf in result.cells["mean_field"].unique().sort().to_list():
        c = result.cells.filter(pl.col("mean_field") == mf).drop_nulls("cv")
        lab = "with mean field" if mf else "without mean field"
        right.scatter(c["mean"], c["cv"], s=10, alpha=0.6, color=f"C{int(mf)}", label=lab)
    if result.cells.drop_nulls("cv").height:
        right.set_xscale("log")
        right.legend(fontsize=7)
    right.set_xlabel("mean simulated units of the cell", fontsize=8)
    right.set_ylabel("CV across seeds", fontsize=8)
    right.set_title("per (category, week, product)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
