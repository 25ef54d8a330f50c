"""Deciding: the LLM retail agent answers the planned sample's episodes (utility or listwise form, score or
sample mode), in resumable chunks, and its rows are written to retail_decisions.
No dagster import; the assets in __init__.py wire these functions.

Readings taken here (docs/tables.md, simulation section):
- utility form: the utility of an option is log P("Yes") - log P("No") after the episode's shared prefix and
  the option's suffix (engine.score_many); the choice distribution is their softmax over the choice set.
- listwise form: one prompt with the options labelled A.. in position order; the utility of an option is the
  log-probability of its label renormalised over the set's labels (engine.label_logprobs), so prob = exp.
- quantity: for the top option (highest utility; ties: the smaller product_id, as the baselines' top option),
  the quantity prompt and label_logprobs over "1".."9" ("9" = 9 or more, counted as 9); expected_qty =
  sum q * p(q), written on the episode's top row only (null on the other rows). In the report the predicted
  quantity is the distribution's median (median_qty, the absolute-error-optimal point; expected_qty is
  kept beside it), at least 1, as the baselines' predictor is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.prompts import logic as P
from assets.prompts import templates as T
from assets.simulation.plan import FORMS, DecisionSettings, best_ranks, load_run_sample, parse_periods
from resources.sql import load_sql

QTY_LABELS = T.QUANTITY_LABELS

DECISIONS_SCHEMA = {
    "run_id": pl.Utf8,
    "method": pl.Utf8,
    "episode_id": pl.Utf8,
    "product_id": pl.Utf8,
    "utility": pl.Float64,
    "prob": pl.Float64,
    "is_top": pl.Boolean,
    "expected_qty": pl.Float64,
    "median_qty": pl.Float64,
}
MEMBERS_SCHEMA = {"run_id": pl.Utf8, "method": pl.Utf8, "episode_id": pl.Utf8, "split": pl.Utf8}
SAMPLES_SCHEMA = {  # sample mode: per (episode, run) the count of each answer; product_id NULL = unparseable
    "run_id": pl.Utf8,
    "method": pl.Utf8,
    "episode_id": pl.Utf8,
    "sample_run": pl.Int64,
    "product_id": pl.Utf8,
    "n": pl.Int64,
}


def softmax(u: np.ndarray) -> np.ndarray:
    """Stable softmax of a 1-d array (a NaN utility gets probability 0; all NaN: uniform)."""
    u = np.asarray(u, dtype=np.float64)
    ok = np.isfinite(u)
    if not ok.any():
        return np.full(len(u), 1.0 / max(len(u), 1))
    z = np.where(ok, u - u[ok].max(), -np.inf)
    e = np.exp(z)
    return e / e.sum()


def top_index(ep: P.PromptEpisode, u: np.ndarray) -> int:
    """Index of the highest utility (ties: the smaller product_id)."""
    u = np.where(np.isfinite(u), u, -np.inf)
    return min(range(len(u)), key=lambda i: (-u[i], ep.options[i].product_id))


def utility_items(eps: list[P.PromptEpisode], style: bool, signals: bool) -> list[tuple[str, list[str]]]:
    """(prefix, suffixes) of the utility form per episode (the same templates as sft_prompt_dataset)."""
    return [
        (
            T.utility_prefix(ep.customer, ep.episode, style),
            [T.utility_suffix(o, ep.customer, style, signals) for o in ep.options],
        )
        for ep in eps
    ]


def decide_utility(engine, eps: list[P.PromptEpisode], style: bool, signals: bool) -> list[np.ndarray]:
    """Utilities log P(Yes) - log P(No) of every option of every episode."""
    items = utility_items(eps, style, signals)
    return [np.asarray(u, dtype=np.float64) for u in engine.score_many(items, progress=False)]


def decide_listwise(engine, eps: list[P.PromptEpisode], style: bool, signals: bool) -> list[np.ndarray]:
    """Label log-probabilities (renormalised over the set's labels) of every option; episodes are grouped by
    their number of options (one label set per call). More options than labels: the rest get NaN."""
    out: list[np.ndarray | None] = [None] * len(eps)
    by_n: dict[int, list[int]] = {}
    for i, ep in enumerate(eps):
        by_n.setdefault(min(len(ep.options), len(T.LABELS)), []).append(i)
    for n, idx in by_n.items():
        prompts = [P.listwise_pair(eps[i], style, signals)["prompt"] for i in idx]
        lp = engine.label_logprobs(prompts, list(T.LABELS[:n]))
        for i, row in zip(idx, lp, strict=True):
            u = np.full(len(eps[i].options), np.nan)
            u[:n] = row
            out[i] = u
    return [u if u is not None else np.zeros(0) for u in out]


def quantity_distributions(
    engine, eps: list[P.PromptEpisode], tops: list[int], style: bool, signals: bool
) -> list[tuple[float, float]]:
    """(mean, median) of the quantity distribution over "1".."9" for each episode's top option
    (label_logprobs on the quantity prompt). The median (the smallest q with P(Q <= q) >= 1/2) is the point
    prediction that minimises the expected absolute error, the quantity metrics' loss."""
    if not eps:
        return []
    prompts = [
        T.utility_prefix(ep.customer, ep.episode, style)
        + T.quantity_suffix(ep.options[t], ep.customer, style, signals)
        for ep, t in zip(eps, tops, strict=True)
    ]
    lp = engine.label_logprobs(prompts, list(QTY_LABELS))
    p = np.exp(lp)
    p = p / p.sum(axis=1, keepdims=True)
    q = np.arange(1, len(QTY_LABELS) + 1, dtype=np.float64)
    medians = q[np.argmax(np.cumsum(p, axis=1) >= 0.5 - 1e-12, axis=1)]
    return [(float(m), float(md)) for m, md in zip(p @ q, medians, strict=True)]


def decide_listwise_sample(
    engine, eps: list[P.PromptEpisode], settings: DecisionSettings, seed: int
) -> tuple[list[np.ndarray], list[dict[str, Any]], dict[str, int]]:
    """Sample mode: k answers per episode for each of R runs at the temperature, one label of the episode's
    options each (the engines' constrained decoding: the hf engine draws from the label tokens' softmax,
    vllm's structured outputs; answers that still fail the strict grammar are retried by the engine, then
    counted, never dropped). The R runs are drawn in one engine call per group of episodes (the prompt is
    computed once; run r takes answers r*k .. r*k+k-1), which is R independent runs since the samples are
    i.i.d.

    utilities: log of the pooled answer frequency over the R*k answers with add-1/2 smoothing (so an option
    never drawn keeps a finite nll); rows: per (episode, run, answer) the count, product_id None for the
    unparseable; stats: samples, failures, retries."""
    k, runs = int(settings.k), int(settings.runs)
    if k < 1 or runs < 1:
        raise ValueError(f"sample mode needs k >= 1 and runs >= 1, got k={k}, runs={runs}")
    out: list[np.ndarray | None] = [None] * len(eps)
    rows: list[dict[str, Any]] = []
    stats = {"samples": 0, "failures": 0, "retries": 0}
    by_n: dict[int, list[int]] = {}
    for i, ep in enumerate(eps):
        by_n.setdefault(min(len(ep.options), len(T.LABELS)), []).append(i)
    for n, idx in sorted(by_n.items()):
        if n == 0:
            continue
        labels = list(T.LABELS[:n])
        prompts = [
            P.listwise_pair(eps[i], settings.include_style, settings.include_signals)["prompt"] for i in idx
        ]
        results = engine.sample(
            prompts, k=k * runs, temperature=settings.temperature, allowed=labels, seed=seed
        )
        for i, res in zip(idx, results, strict=True):
            ep = eps[i]
            pooled = np.zeros(len(ep.options))
            for r in range(runs):
                answers = res.answers[r * k : (r + 1) * k]
                counts: dict[str | None, int] = {}
                for a in answers:
                    pid = ep.options[labels.index(a)].product_id if a is not None else None
                    counts[pid] = counts.get(pid, 0) + 1
                    if a is not None:
                        pooled[labels.index(a)] += 1
                for pid, c in counts.items():
                    rows.append(
                        {"episode_id": ep.episode.episode_id, "sample_run": r, "product_id": pid, "n": c}
                    )
            freq = (pooled + 0.5) / (pooled.sum() + 0.5 * len(ep.options))
            out[i] = np.log(freq)
            stats["samples"] += len(res.answers)
            stats["failures"] += int(res.n_failed)
            stats["retries"] += int(res.n_retries)
    return [u if u is not None else np.zeros(0) for u in out], rows, stats


def decision_rows(
    run_id: str,
    method: str,
    eps: list[P.PromptEpisode],
    utilities: list[np.ndarray],
    qtys: list[tuple[float, float] | None],
) -> pl.DataFrame:
    """Rows of retail_decisions: every option with utility, softmax prob, is_top, and on the top row the
    mean (expected_qty) and median (median_qty) of the quantity distribution."""
    rows = []
    for ep, u, q in zip(eps, utilities, qtys, strict=True):
        probs = softmax(u)
        t = top_index(ep, u)
        for i, o in enumerate(ep.options):
            ui = float(u[i])
            rows.append(
                {
                    "run_id": run_id,
                    "method": method,
                    "episode_id": ep.episode.episode_id,
                    "product_id": o.product_id,
                    "utility": ui if math.isfinite(ui) else None,
                    "prob": float(probs[i]),
                    "is_top": i == t,
                    "expected_qty": q[0] if q is not None and i == t else None,
                    "median_qty": q[1] if q is not None and i == t else None,
                }
            )
    return pl.DataFrame(rows, schema=DECISIONS_SCHEMA)


@dataclass
class DecisionRun:
    decisions: pl.DataFrame
    members: pl.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    samples: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SAMPLES_SCHEMA))
    checkpoint: Any = None  # the checkpoint.ChunkStore of a resumable run (cleared once the rows are written)


def _stats(engine, *more) -> tuple[float, float]:
    """(tokens, seconds) the engines have counted so far (each distinct engine once)."""
    tok = sec = 0.0
    for e in {id(x): x for x in (engine, *more) if x is not None}.values():
        s = getattr(e, "stats", None)
        if s:
            tok += float(getattr(s, "tokens", 0) or 0)
            sec += float(getattr(s, "seconds", 0) or 0)
    return tok, sec


def decide_chunk(
    engine, part: list[P.PromptEpisode], settings: DecisionSettings, start: int, qty_engine=None
):
    """Decide one chunk of episodes (the form and mode of `settings`; `start` seeds sample mode) and the
    quantity of each top option (asked of `qty_engine` when given, else of `engine`): a checkpoint.Chunk."""
    from assets.simulation.checkpoint import Chunk

    style, signals = settings.include_style, settings.include_signals
    rows: list[dict[str, Any]] = []
    counts: dict[str, float] = {}
    if settings.form == "utility":
        us = decide_utility(engine, part, style, signals)
    elif settings.mode == "sample":
        us, rows, st = decide_listwise_sample(engine, part, settings, settings.seed + start)
        counts = {key: float(v) for key, v in st.items()}
    elif settings.reading:
        from assets.simulation.reading import decide_listwise_reading

        us, st = decide_listwise_reading(engine, part, style, signals, budget_tokens=settings.budget_tokens)
        counts = {
            f"reading_{key}": float(v)
            for key, v in st.items()
            if isinstance(v, int | float) and not key.startswith("mean")
        }
    else:
        us = decide_listwise(engine, part, style, signals)
    if settings.quantity:
        tops = [top_index(ep, u) for ep, u in zip(part, us, strict=True)]
        qtys = quantity_distributions(qty_engine or engine, part, tops, style, signals)
    else:
        qtys = [None] * len(part)
    return Chunk([ep.episode.episode_id for ep in part], list(us), list(qtys), rows, counts)


def run_decisions(
    conn,
    engine,
    settings: DecisionSettings,
    method: str,
    run_id: str,
    log: Callable[[str], None] = print,
    progress: bool = True,
    splits: list[str] | None = None,
    checkpoint_dir: Path | str | None = None,
    sample: tuple[list[P.PromptEpisode], pl.DataFrame, float] | None = None,
    deadline: float | None = None,
    qty_engine=None,
) -> DecisionRun:
    """Load the sample (only the named `splits` when given; or take `sample`, load_run_sample's result, and
    leave `conn` unused), decide every episode in chunks (tqdm bar and a log line per chunk), and return the
    decision rows, the membership rows and throughput figures. Nothing is written to DuckDB here. With `checkpoint_dir`, each chunk is saved as it is decided (in that folder,
    suffixed by the hash of the episode ids) and chunks already saved there are read instead of decided
    again (assets/simulation/checkpoint.py).

    `deadline` (a time.monotonic() value): no new chunk is decided after it (saved chunks are still read).
    A run stopped so keeps the protocol's sample at the largest smaller N it completed: for every split
    the episodes of md5 rank below the first undecided episode's best rank (all decided, since episodes
    come in that order); info['complete'] is False and the checkpoint is left for the next run.

    `qty_engine`: the model that answers the quantity question when it is not `engine` (quantity_model)."""
    from tqdm.auto import tqdm

    if settings.form not in FORMS:
        raise ValueError(f"form {settings.form!r}: use one of {FORMS}")
    periods = parse_periods(settings.period)
    eps, members, t_load = sample if sample is not None else load_run_sample(conn, settings, splits)
    log(f"retail_decisions: {len(eps)} episodes of {periods} ({t_load:.1f} s to load), method {method}")
    if settings.mode not in ("score", "sample"):
        raise ValueError(f"mode {settings.mode!r}: use 'score' or 'sample'")
    if settings.mode == "sample" and settings.form != "listwise":
        raise ValueError("sample mode draws listwise answers: set form='listwise' for mode='sample'")
    store = None
    if checkpoint_dir is not None:
        from assets.simulation.checkpoint import ChunkStore, episodes_key

        store = ChunkStore(
            Path(checkpoint_dir).with_name(
                f"{Path(checkpoint_dir).name}-{episodes_key([ep.episode.episode_id for ep in eps])}"
            )
        )
    tok0, sec0 = _stats(engine, qty_engine)
    t0 = time.perf_counter()
    utilities: list[np.ndarray] = []
    qtys: list[tuple[float, float] | None] = []
    sample_rows: list[dict[str, Any]] = []
    counts: dict[str, float] = {}
    n_resumed = 0
    chunk = max(1, int(settings.chunk_episodes))
    with tqdm(total=len(eps), desc=method, unit="ep", disable=not progress, mininterval=1.0) as bar:
        for start in range(0, len(eps), chunk):
            part = eps[start : start + chunk]
            ids = [ep.episode.episode_id for ep in part]
            saved = store.load(start, ids) if store is not None else None
            if saved is None and deadline is not None and time.monotonic() >= deadline:
                log(f"retail_decisions: time budget spent after {start}/{len(eps)} episodes of {method}")
                break
            if saved is None:
                saved = decide_chunk(engine, part, settings, start, qty_engine)
                if store is not None:
                    store.save(start, saved)
            else:
                n_resumed += len(part)
            utilities += saved.utilities
            qtys += saved.qtys
            sample_rows += saved.sample_rows
            for key, v in saved.counts.items():
                counts[key] = counts.get(key, 0) + v
            bar.update(len(part))
            done = start + len(part)
            rate = (done - n_resumed) / max(time.perf_counter() - t0, 1e-9)
            resumed = f" ({n_resumed} from the checkpoint)" if n_resumed else ""
            log(f"retail_decisions: {done}/{len(eps)} episodes{resumed}, {rate:.2f} decisions/s")
    seconds = time.perf_counter() - t0
    tok1, sec1 = _stats(engine, qty_engine)
    n_planned, n_done = len(eps), len(utilities)
    if n_done < n_planned:
        best = best_ranks(members)
        members = members.filter(pl.col("sample_rank") < best[eps[n_done].episode.episode_id])
        keep = set(members["episode_id"].to_list())
        kept = [i for i in range(n_done) if eps[i].episode.episode_id in keep]
        eps, utilities, qtys = [eps[i] for i in kept], [utilities[i] for i in kept], [qtys[i] for i in kept]
        sample_rows = [r for r in sample_rows if r["episode_id"] in keep]
    decisions = decision_rows(run_id, method, eps, utilities, qtys)
    members = members.select(
        pl.lit(run_id).alias("run_id"), pl.lit(method).alias("method"), "episode_id", "split"
    )
    n_prompts = sum(len(ep.options) for ep in eps) if settings.form == "utility" else len(eps)
    if settings.quantity:
        n_prompts += len(eps)
    info = {
        "n_episodes": len(eps),
        "n_prompts": n_prompts,
        "seconds_decide": round(seconds, 3),
        "seconds_load": round(t_load, 3),
        # the episodes decided in this materialization (a resumed run counts only what it decided)
        "decisions_per_sec": round((n_done - n_resumed) / seconds, 4) if seconds > 0 else 0.0,
        "n_resumed": n_resumed,
        "n_planned": n_planned,  # the episodes of the full sample; n_episodes those written
        "n_decided": n_done,
        "complete": n_done == n_planned,
        "tokens_per_sec": round((tok1 - tok0) / (sec1 - sec0), 1) if sec1 > sec0 else 0.0,
        "tokens": int(tok1 - tok0),
        "mode": settings.mode,
        # score mode: exact distributions, nothing is parsed; sample mode: answers still unparseable after
        # the engine's retries (kept as such, never dropped)
        "parse_failure_rate": round(counts.get("failures", 0) / counts["samples"], 6)
        if counts.get("samples")
        else 0.0,
        **{key: int(v) for key, v in counts.items()},
    }
    samples = pl.DataFrame(
        sample_rows, schema={k: v for k, v in SAMPLES_SCHEMA.items() if k not in ("run_id", "method")}
    )
    samples = samples.select(pl.lit(run_id).alias("run_id"), pl.lit(method).alias("method"), *samples.columns)
    return DecisionRun(
        decisions=decisions,
        members=members.cast(MEMBERS_SCHEMA),
        info=info,
        samples=samples.cast(SAMPLES_SCHEMA),
        checkpoint=store,
    )


def write_decisions(conn, run: DecisionRun, method: str) -> None:
    """Replace the rows of `method` in retail_decisions and retail_decision_episodes (one transaction)."""
    conn.execute(load_sql("simulation/create_retail_decisions"))
    # a table written before the median existed gains the column (its old rows keep NULL there)
    conn.execute("alter table retail_decisions add column if not exists median_qty double")
    conn.execute(load_sql("simulation/create_retail_decision_episodes"))
    conn.execute(load_sql("simulation/create_retail_decision_samples"))
    conn.execute("begin transaction")
    try:
        # DML returns a count row: read it (duckdb 2.x refuses new work while a result is unread)
        conn.execute(load_sql("simulation/delete_retail_decisions_method"), {"method": method}).fetchall()
        conn.execute(
            load_sql("simulation/delete_retail_decision_episodes_method"), {"method": method}
        ).fetchall()
        conn.execute(
            "delete from retail_decision_samples where method = $method", {"method": method}
        ).fetchall()
        for name, frame in (
            ("retail_decisions", run.decisions),
            ("retail_decision_episodes", run.members),
            ("retail_decision_samples", run.samples),
        ):
            conn.register(f"staged_{name}", frame.to_arrow())
            try:
                conn.execute(load_sql(f"simulation/insert_{name}")).fetchall()
            finally:
                conn.unregister(f"staged_{name}")
        conn.execute("commit")
    except Exception:
        conn.execute("rollback")
        raise
