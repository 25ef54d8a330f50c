"""The report: the metrics of the LLM methods of retail_decisions, their calibrated hybrids (calibration.py)
and the baselines on the same sample episodes (eval_report), with its markdown, plot and table.
No dagster import; the assets in __init__.py wire these functions.

Reading taken here (docs/tables.md, simulation section): the predicted quantity of an LLM method is the
median of its quantity distribution (median_qty, the absolute-error-optimal point; expected_qty is kept
beside it), at least 1, as the baselines' predictor is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from assets.evaluation.baselines import METRICS_SCHEMA, SPLITS, qty_customer_mean
from assets.evaluation.logic import METRIC_NAMES, fmt_cell, headline_metrics  # noqa: F401 - shared with the baseline report
from assets.evaluation.metrics import evaluate_splits
from assets.simulation import calibration as C
from assets.simulation import gaps as G
from assets.simulation.calibration import HybridFit
from assets.simulation.decide import SAMPLES_SCHEMA
from resources.sql import load_sql
from resources.warehouse import table_exists

HYBRID_PREFIX = "hybrid_"  # methods of the calibrated hybrids (assets/simulation/calibration.py)

REPORT_SCHEMA = {  # baseline_metrics' columns, with the sample, the kind and the stability figures
    "sample": pl.Utf8,
    "method": pl.Utf8,
    "kind": pl.Utf8,
    **{k: v for k, v in METRICS_SCHEMA.items() if k != "method"},
    "top1_agreement": pl.Float64,  # sample mode only (docs/evaluation-protocol.md's stability over R runs)
    "share_cv": pl.Float64,
}


def load_report_options(conn, episode_ids: list[str]) -> pl.DataFrame:
    """The options of the given episodes with is_chosen, category, quantity and the quantity features."""
    conn.register(
        "staged_report_episodes",
        pl.DataFrame({"episode_id": episode_ids}, schema={"episode_id": pl.Utf8}).to_arrow(),
    )
    try:
        return conn.sql(load_sql("simulation/select_report_options")).pl()
    finally:
        conn.unregister("staged_report_episodes")


def load_report_baselines(conn, episode_ids: list[str]) -> pl.DataFrame:
    """baseline_predictions of the given episodes (empty frame when the table is absent)."""
    schema = {
        "method": pl.Utf8,
        "episode_id": pl.Utf8,
        "product_id": pl.Utf8,
        "score": pl.Float64,
        "prob": pl.Float64,
    }
    if not table_exists(conn, "baseline_predictions"):
        return pl.DataFrame(schema=schema)
    conn.register(
        "staged_report_episodes",
        pl.DataFrame({"episode_id": episode_ids}, schema={"episode_id": pl.Utf8}).to_arrow(),
    )
    try:
        return conn.sql(load_sql("simulation/select_report_baseline_predictions")).pl()
    finally:
        conn.unregister("staged_report_episodes")


def llm_qty(decisions: pl.DataFrame, options: pl.DataFrame) -> pl.DataFrame:
    """episode_id, qty_pred (the median of the top row's quantity distribution; rows written before the
    median existed: expected_qty rounded, at least 1), qty_actual."""
    if "median_qty" not in decisions.columns:
        decisions = decisions.with_columns(median_qty=pl.lit(None, dtype=pl.Float64))
    top = decisions.filter(pl.col("is_top")).select(
        "episode_id", expected_qty=pl.coalesce("median_qty", pl.col("expected_qty").round(0))
    )
    act = options.group_by("episode_id").agg(qty_actual=pl.col("quantity").first().cast(pl.Float64))
    return act.join(top, on="episode_id", how="left").select(
        "episode_id",
        qty_pred=pl.when(pl.col("expected_qty").is_not_null()).then(
            pl.max_horizontal(pl.col("expected_qty").round(0), pl.lit(1.0))
        ),
        qty_actual="qty_actual",
    )


def report_rows(
    decisions: pl.DataFrame,
    baselines: pl.DataFrame,
    options: pl.DataFrame,
    members: pl.DataFrame,
    sample: str = "main",
) -> pl.DataFrame:
    """Metrics per (method, split): each LLM method of `decisions` (score = utility; kind 'hybrid' for the
    calibrated hybrids, 'llm' otherwise) and each baseline of `baselines`, all on the episodes of `members`
    and with assets.evaluation.metrics.evaluate_splits. A hybrid has no row on val (it was fitted there).

    An option a method did not score keeps a null score (ranked last by the metrics) and a null prob."""
    keep = options.join(members.select("episode_id").unique(), on="episode_id", how="semi")
    splits = [s for s in SPLITS if s in set(members["split"].to_list())]
    rows: list[dict] = []
    for kind, frame, score_col in (("llm", decisions, "utility"), ("baseline", baselines, "score")):
        for method in sorted(frame["method"].unique().to_list()):
            is_hybrid = method.startswith(HYBRID_PREFIX)
            mine = frame.filter(pl.col("method") == method).select(
                "episode_id", "product_id", pl.col(score_col).alias("score"), "prob"
            )
            long = keep.join(mine, on=["episode_id", "product_id"], how="left")
            if kind == "llm":
                qty = llm_qty(frame.filter(pl.col("method") == method), keep)
            else:
                qty = qty_customer_mean(long)
            mine_splits = [s for s in splits if not (is_hybrid and s == "val")]
            mine_members = members
            if is_hybrid:  # fitted on val: scored on the test episodes only (its val rows do not exist)
                mine_members = members.filter(pl.col("split") != "val")
                long = long.join(mine_members.select("episode_id").unique(), on="episode_id", how="semi")
                qty = qty.join(mine_members.select("episode_id").unique(), on="episode_id", how="semi")
            for r in evaluate_splits(long, qty, mine_members, mine_splits):
                rows.append(
                    {"sample": sample, "method": method, "kind": "hybrid" if is_hybrid else kind, **r}
                )
    return pl.DataFrame(rows, schema=REPORT_SCHEMA)


def stability(samples: pl.DataFrame, members: pl.DataFrame) -> pl.DataFrame:
    """docs/evaluation-protocol.md's stability of the sample-mode methods per split: top1_agreement, the mean over run
    pairs of the share of episodes with the same top-1 answer (the most frequent product of the run; ties:
    the smaller product_id; a run without a parseable answer has no top-1 and agrees with nothing), and
    share_cv, the mean over products of the coefficient of variation (population sd / mean) across runs of
    the product's simulated share: its answers over the split's parseable answers in that run."""
    schema = {"method": pl.Utf8, "split": pl.Utf8, "top1_agreement": pl.Float64, "share_cv": pl.Float64}
    if samples.height == 0 or members.height == 0:
        return pl.DataFrame(schema=schema)
    out = []
    for (method,), part in samples.group_by("method"):
        runs = sorted(part["sample_run"].unique().to_list())
        for split in members["split"].unique().sort().to_list():
            eps = members.filter(pl.col("split") == split).select("episode_id").unique()
            mine = part.join(eps, on="episode_id", how="semi")
            if mine.height == 0 or len(runs) < 2:
                continue
            valid = mine.filter(pl.col("product_id").is_not_null())
            top = (
                valid.sort("n", "product_id", descending=[True, False])
                .group_by("episode_id", "sample_run", maintain_order=True)
                .first()
            )
            wide = {
                r: dict(
                    zip(
                        *top.filter(pl.col("sample_run") == r)
                        .select("episode_id", "product_id")
                        .to_dict(as_series=False)
                        .values(),
                        strict=True,
                    )
                )
                for r in runs
            }
            ids = eps["episode_id"].to_list()
            pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
            agree = [
                np.mean([wide[a].get(e) is not None and wide[a].get(e) == wide[b].get(e) for e in ids])
                for a, b in pairs
            ]
            shares = (
                valid.group_by("sample_run", "product_id")
                .agg(pl.col("n").sum())
                .with_columns(share=pl.col("n") / pl.col("n").sum().over("sample_run"))
            )
            grid = (
                shares.select("product_id")
                .unique()
                .join(pl.DataFrame({"sample_run": runs}, schema={"sample_run": pl.Int64}), how="cross")
                .join(
                    shares.select("sample_run", "product_id", "share"),
                    on=["sample_run", "product_id"],
                    how="left",
                )
                .with_columns(pl.col("share").fill_null(0.0))
            )
            cv = grid.group_by("product_id").agg(m=pl.col("share").mean(), sd=pl.col("share").std(ddof=0))
            cv = cv.filter(pl.col("m") > 0).with_columns(cv=pl.col("sd") / pl.col("m"))
            out.append(
                {
                    "method": method,
                    "split": split,
                    "top1_agreement": float(np.mean(agree)),
                    "share_cv": float(cv["cv"].mean()) if cv.height else None,
                }
            )
    return pl.DataFrame(out, schema=schema)


def gap_lines(metrics: pl.DataFrame, metric: str = "hit1") -> list[str]:
    """Per split: the best LLM method alone and the best calibrated hybrid, each against the best baseline
    on `metric` (higher is better)."""
    lines = []
    if "sample" in metrics.columns:
        metrics = metrics.filter(pl.col("sample") == "main")
    for split in SPLITS:
        part = metrics.filter((pl.col("split") == split) & pl.col(metric).is_not_null())
        best = {
            kind: part.filter(pl.col("kind") == kind).sort(metric, descending=True)
            for kind in ("llm", "hybrid", "baseline")
        }
        if best["llm"].height == 0 and best["hybrid"].height == 0:
            continue
        mine = [(k, best[k].row(0, named=True)) for k in ("llm", "hybrid") if best[k].height]
        n = mine[0][1]["n_episodes"]
        said = ", ".join(f"best {'LLM' if k == 'llm' else k} {r['method']} {r[metric]:.4f}" for k, r in mine)
        if best["baseline"].height == 0:
            lines.append(f"- {split} (n={n}): {said} (no baseline rows)")
            continue
        b = best["baseline"].row(0, named=True)
        gaps = ", ".join(
            f"{'LLM' if k == 'llm' else k} {'ahead' if r[metric] > b[metric] else 'behind'} by "
            f"{abs(r[metric] - b[metric]):.4f}"
            for k, r in mine
        )
        lines.append(f"- {split} (n={n}): {said} vs best baseline {b['method']} {b[metric]:.4f}: {gaps}")
    return lines


SAMPLE_TITLES = {
    "main": "main sample (every method on the same N episodes per split)",
    "variants": "variants sample (zero-shot, listwise and ablation rows beside the main rows, on its smaller "
    "common subset)",
}


def report_markdown(metrics: pl.DataFrame, fits: list | None = None, gaps: pl.DataFrame | None = None) -> str:
    """The paired differences against each split's best classic (gaps.py), the gap summary against the best
    baseline of the sample, the hybrids' fitted coefficients, then per sample one table per split (LLM and
    hybrid rows first, then baselines), methods as rows."""
    cols = ["method", "kind", "n_episodes", *METRIC_NAMES]
    if metrics.height and metrics["top1_agreement"].is_not_null().any():
        cols += ["top1_agreement", "share_cv"]
    out = [*G.gap_table(gaps if gaps is not None else pl.DataFrame(schema=G.GAPS_SCHEMA)), ""]
    out += [
        "**best LLM and best hybrid vs the best baseline of these episodes (hit@1, main sample; chosen on the "
        "figures themselves: an upper bar, not the protocol's)**",
        "",
        *gap_lines(metrics),
        "",
    ]
    for fit in fits or []:
        out.append(
            f"- {fit.method}: u = {fit.coef_llm:.3f} * u_llm + {fit.coef_base:.3f} * s_{fit.base_method}, fitted "
            f"on {fit.n_val_episodes} val episodes (val log-lik gain over {fit.base_method} "
            f"{fit.loglik - fit.loglik_base:+.2f}); within-episode corr(u_llm, s_{fit.base_method}) = "
            f"{fit.corr_llm_base:.3f}"
        )
    if fits:
        out.append("")
    order = {"hybrid": 0, "llm": 1, "baseline": 2}
    for sample in [s for s in SAMPLE_TITLES if s in set(metrics["sample"].to_list())]:
        out += [f"### {SAMPLE_TITLES[sample]}", ""]
        for split in SPLITS:
            part = metrics.filter((pl.col("split") == split) & (pl.col("sample") == sample))
            if part.height == 0:
                continue
            part = part.with_columns(_o=pl.col("kind").replace_strict(order, default=3)).sort(
                "_o", "hit1", descending=[False, True], nulls_last=True
            )
            out += [f"**{split}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += [
                "| " + " | ".join(fmt_cell(r[c]) for c in cols) + " |" for r in part.iter_rows(named=True)
            ]
            out.append("")
    return "\n".join(out)


def plot_hit1(metrics: pl.DataFrame, path: str | Path) -> Path:
    """Grouped bars: hit@1 of every method (LLM variants and baselines) per split. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "sample" in metrics.columns:
        metrics = metrics.filter(pl.col("sample") == "main")
    methods = (
        metrics.filter(pl.col("hit1").is_not_null())
        .select("method", "kind")
        .unique()
        .sort("kind", "method", descending=[True, False])["method"]
        .to_list()
    )
    splits = [s for s in SPLITS if s in set(metrics["split"].to_list())]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(splits) + 2), 4.5))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(splits))
    for i, method in enumerate(methods):
        vals = []
        for split in splits:
            r = metrics.filter((pl.col("method") == method) & (pl.col("split") == split))
            v = r["hit1"][0] if r.height else None
            vals.append(np.nan if v is None else v)
        hatch = "//" if method.startswith("llm_") else ("xx" if method.startswith(HYBRID_PREFIX) else None)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=method, hatch=hatch)
    n = {r["split"]: r["n_episodes"] for r in metrics.iter_rows(named=True)}
    ax.set_xticks(x, [f"{s}\n(n={n.get(s, 0)})" for s in splits], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("hit@1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    ax.set_title("hit@1 per split: LLM (//), calibrated hybrid (xx) and baselines on the same episodes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def decision_sources(conn) -> dict[str, str]:
    """method -> the Dagster run ids its rows in retail_decisions come from (comma-separated); {} before any
    decision."""
    if not table_exists(conn, "retail_decision_episodes"):
        return {}
    return dict(conn.execute(load_sql("simulation/select_decision_sources")).fetchall())


def build_report(
    conn, methods: list[str] | None = None, log: Callable[[str], None] = print
) -> tuple[pl.DataFrame, list[HybridFit], pl.DataFrame]:
    """Metrics of the LLM methods of retail_decisions, their calibrated hybrids and the baselines.

    Two samples, each scored with every method on the same episodes:
    - main: the methods decided on the largest sample (the primary method, N per split) and the hybrid of
      each of them (fitted on its val episodes, reported on the test splits);
    - variants: every method (main, hybrids, zero-shot, listwise, ablations) on the episodes all of them
      decided (the md5 sample's first n per split, so a subset of the main sample); only when some method
      was decided on fewer episodes than the main ones.
    Returns the metrics, the hybrids' fits and the main sample's paired differences against each split's best
    classic method (gaps.py; chosen by baseline_report on validation, never here)."""
    empty = pl.DataFrame(schema=REPORT_SCHEMA)
    no_gaps = pl.DataFrame(schema=G.GAPS_SCHEMA)
    if not table_exists(conn, "retail_decision_episodes"):
        log("eval_report: no retail_decisions yet: empty report")
        return empty, [], no_gaps
    m = conn.sql("select method, episode_id, split from retail_decision_episodes").pl()
    if methods:
        m = m.filter(pl.col("method").is_in(methods))
    if m.height == 0:
        return empty, [], no_gaps
    sizes = m.group_by("method").agg(n=pl.col("episode_id").n_unique())
    n_max = int(sizes["n"].max())
    main_methods = sorted(sizes.filter(pl.col("n") == n_max)["method"].to_list())
    ids = m["episode_id"].unique().sort().to_list()
    decisions = conn.sql("select * from retail_decisions").pl()
    decisions = decisions.filter(pl.col("method").is_in(m["method"].unique().to_list()))
    decisions = decisions.filter(pl.col("episode_id").is_in(ids))
    options = load_report_options(conn, ids)
    baselines = load_report_baselines(conn, ids)
    main_members = _common(m, main_methods)
    val_ids = main_members.filter(pl.col("split") == "val")["episode_id"]
    test_ids = main_members.filter(pl.col("split") != "val")["episode_id"]
    fits: list[HybridFit] = []
    hybrids: list[pl.DataFrame] = []
    # the logit's hybrid always (without clogit rows it says so and scores nothing); the others when present
    present = set(baselines["method"].unique().to_list()) if baselines.height else set()
    bases = [C.BASE_METHOD, *(b for b in C.HYBRID_BASES if b != C.BASE_METHOD and b in present)]
    for method in main_methods:
        mine = decisions.filter(pl.col("method") == method)
        for base in bases:
            paired = C.paired_frame(mine, baselines, options, base)
            fit = C.fit_hybrid(method, paired.filter(pl.col("episode_id").is_in(val_ids)), base)
            fits.append(fit)
            hybrids.append(C.hybrid_rows(fit, paired.filter(pl.col("episode_id").is_in(test_ids)), mine))
            log(
                f"eval_report: {fit.method} = {fit.coef_llm:.3f} u_llm + {fit.coef_base:.3f} s_{base} on "
                f"{fit.n_val_episodes} val episodes; corr(u_llm, s_{base}) {fit.corr_llm_base:.3f}"
            )
    with_hybrids = pl.concat([decisions, *hybrids]) if hybrids else decisions
    log(
        f"eval_report: main sample {main_members['episode_id'].n_unique()} episodes ({', '.join(main_methods)}), "
        f"{decisions['method'].n_unique()} LLM methods in all, {baselines['method'].n_unique()} baselines"
    )
    samples = (
        conn.sql("select * from retail_decision_samples").pl()
        if table_exists(conn, "retail_decision_samples")
        else pl.DataFrame(schema=SAMPLES_SCHEMA)
    )
    samples = samples.filter(pl.col("method").is_in(m["method"].unique().to_list()))
    main_names = set(main_methods) | {f.method for f in fits}
    parts = [
        report_rows(
            with_hybrids.filter(pl.col("method").is_in(main_names)), baselines, options, main_members, "main"
        )
    ]
    if len(main_methods) < m["method"].n_unique():
        var_members = _common(m, None)
        log(f"eval_report: variants sample {var_members['episode_id'].n_unique()} episodes")
        parts.append(report_rows(with_hybrids, baselines, options, var_members, "variants"))
        parts[-1] = _with_stability(parts[-1], stability(samples, var_members))
    parts[0] = _with_stability(parts[0], stability(samples, main_members))
    main_llm = with_hybrids.filter(pl.col("method").is_in(main_names))
    gaps = G.paired_gaps(
        G.episode_hits(main_llm, "utility", options, main_members),  # a hybrid: test episodes only
        G.episode_hits(baselines, "score", options, main_members),
        G.load_best_classic(conn),
    )
    return pl.concat(parts), fits, gaps


def _with_stability(metrics: pl.DataFrame, stab: pl.DataFrame) -> pl.DataFrame:
    """The metrics with the sample-mode stability columns filled from `stab` (method, split)."""
    if stab.height == 0:
        return metrics
    return (
        metrics.drop("top1_agreement", "share_cv")
        .join(stab, on=["method", "split"], how="left")
        .select(list(REPORT_SCHEMA))
    )


def _common(m: pl.DataFrame, methods: list[str] | None) -> pl.DataFrame:
    """(episode_id, split) pairs of `m` (method, episode_id, split) that every one of `methods` (all when
    None) decided."""
    if methods:
        m = m.filter(pl.col("method").is_in(methods))
    n = m["method"].n_unique()
    counts = m.unique().group_by("episode_id", "split").agg(k=pl.col("method").n_unique())
    return counts.filter(pl.col("k") == n).select("episode_id", "split").sort("split", "episode_id")


def write_report(conn, metrics: pl.DataFrame, gaps: pl.DataFrame | None = None) -> None:
    """Replace eval_metrics with `metrics` and eval_vs_best_classic with `gaps` (gaps.py; empty when None)."""
    gaps = gaps if gaps is not None else pl.DataFrame(schema=G.GAPS_SCHEMA)
    for table, frame in (("eval_metrics", metrics), ("eval_vs_best_classic", gaps)):
        conn.register(f"staged_{table}", frame.to_arrow())
        try:
            conn.execute(load_sql(f"simulation/{table}"))
        finally:
            conn.unregister(f"staged_{table}")
