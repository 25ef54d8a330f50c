"""The simulation stage: the LLM retail agent decides on the evaluation episodes (retail_decisions), and the
report that sets its metrics beside the baselines' on the same sample episodes (eval_report).
No dagster import; the assets in __init__.py wire these functions.

Readings taken here (docs/tables.md, simulation section):
- The sample is docs/evaluation-protocol.md's: per named split the N episodes with the smallest md5("{seed}|{basket_id}|
  {category}") (assets.evaluation.baselines.split_membership); an episode may be in several splits and is
  decided once.
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

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.evaluation.baselines import METRICS_SCHEMA, SPLITS, qty_customer_mean, split_membership
from assets.evaluation.logic import METRIC_NAMES, fmt_cell, headline_metrics  # noqa: F401 - shared with the baseline report
from assets.evaluation.metrics import evaluate_splits
from assets.prompts import logic as P
from assets.prompts import templates as T
from assets.simulation import calibration as C
from assets.simulation.calibration import HybridFit
from resources.sql import load_sql

FORMS = ("utility", "listwise")
QTY_LABELS = T.QUANTITY_LABELS
HYBRID_PREFIX = "hybrid_"  # methods of the calibrated hybrids (assets/simulation/calibration.py)

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
REPORT_SCHEMA = {  # baseline_metrics' columns, with the sample, the kind and the stability figures
    "sample": pl.Utf8,
    "method": pl.Utf8,
    "kind": pl.Utf8,
    **{k: v for k, v in METRICS_SCHEMA.items() if k != "method"},
    "top1_agreement": pl.Float64,  # sample mode only (docs/evaluation-protocol.md's stability over R runs)
    "share_cv": pl.Float64,
}


@dataclass
class DecisionSettings:
    period: str = "test"
    n_per_split: int = 200
    form: str = "utility"
    quantity: bool = True
    include_style: bool = True
    include_signals: bool = True
    seed: int = 0
    chunk_episodes: int = 16
    mode: str = "score"  # 'score' (exact distributions) or 'sample' (listwise answers drawn at a temperature)
    reading: bool = True  # listwise score mode: readers + decider when the prompt exceeds budget_tokens
    budget_tokens: int = 512  # token budget of one listwise prompt before the multi-agent reading starts
    k: int = 4  # sample mode: answers per episode and run
    runs: int = 5  # sample mode: R runs (different seeds) for the stability figures
    temperature: float = 1.0  # sample mode: sampling temperature


# ----------------------------------------------------------------------------- names and the adapter


def method_name(
    form: str,
    aligned: bool,
    include_style: bool = True,
    include_signals: bool = True,
    mode: str = "score",
    reading: bool = True,
) -> str:
    """llm_{zero_shot|aligned}_{form}[_sample][_no_reading][_no_style][_no_signals] (_no_reading only for the
    listwise form in score mode, the only decision the reading applies to)."""
    name = f"llm_{'aligned' if aligned else 'zero_shot'}_{form}"
    if mode == "sample":
        name += "_sample"
    elif form == "listwise" and not reading:
        name += "_no_reading"
    if not include_style:
        name += "_no_style"
    if not include_signals:
        name += "_no_signals"
    return name


@dataclass
class PlannedRun:
    """One method of a retail_decisions materialization: its settings, adapter use and splits."""

    settings: DecisionSettings
    aligned: bool
    splits: list[str] | None = None  # None: every split of settings.period

    @property
    def ablation(self) -> tuple[bool, bool, str, bool]:
        """(include_style, include_signals, mode, reading): the name parts besides form and adapter."""
        st = self.settings
        return st.include_style, st.include_signals, st.mode, st.reading

    @property
    def method(self) -> str:
        return method_name(self.settings.form, self.aligned, *self.ablation)


def plan_decision_runs(config: dict[str, Any]) -> list[PlannedRun]:
    """The primary method (config's form, use_adapter, switches; N per split of its periods), then each of
    config['variants'] on variant_n episodes of variant_splits. With config['primary'] false only the
    variants run (the primary's rows stay as they are). Bad names are one-line errors before any model is
    loaded."""
    keys = ("quantity", "seed", "chunk_episodes", "budget_tokens", "k", "runs", "temperature")
    base = {k: config[k] for k in keys if k in config}
    primary = DecisionSettings(
        period=config.get("period", "test"),
        n_per_split=int(config.get("n_per_split", 200)),
        form=config.get("form", "utility"),
        include_style=bool(config.get("include_style", True)),
        include_signals=bool(config.get("include_signals", True)),
        reading=bool(config.get("reading", True)),
        **base,
    )
    if primary.form not in FORMS:
        raise ValueError(f"form {primary.form!r}: use one of {FORMS}")
    parse_periods(primary.period)
    runs = [PlannedRun(primary, bool(config.get("use_adapter", True)))]
    splits = list(config.get("variant_splits") or ["test_all"])
    periods = ",".join(periods_of_splits(splits))
    for name in config.get("variants") or []:
        aligned, parts = parse_variant(name)
        settings = DecisionSettings(
            period=periods, n_per_split=int(config.get("variant_n", 30)), **parts, **base
        )
        runs.append(PlannedRun(settings, aligned, splits))
    if not config.get("primary", True):
        if len(runs) == 1:
            raise ValueError(
                "primary=false and no variants: nothing to decide (name variants or set primary)"
            )
        runs = runs[1:]
    return runs


_VARIANT_SUFFIXES = {  # name suffix -> the DecisionSettings field it sets
    "_no_signals": ("include_signals", False),
    "_no_style": ("include_style", False),
    "_no_reading": ("reading", False),
    "_sample": ("mode", "sample"),
}


def parse_variant(name: str) -> tuple[bool, dict[str, Any]]:
    """A variant name "{zero_shot|aligned}_{utility|listwise}[_sample][_no_reading][_no_style][_no_signals]"
    (a method name without its "llm_") -> (aligned, DecisionSettings fields). A bad name is a one-line error
    before any model is loaded."""
    rest = name.removeprefix("llm_")
    parts: dict[str, Any] = {}
    stripped = True
    while stripped:
        stripped = False
        for suffix, (key, value) in _VARIANT_SUFFIXES.items():
            if rest.endswith(suffix) and key not in parts:
                rest, parts[key], stripped = rest.removesuffix(suffix), value, True
    for prefix, aligned in (("zero_shot_", False), ("aligned_", True)):
        form = rest.removeprefix(prefix)
        if rest.startswith(prefix) and form in FORMS:
            if form == "utility" and ("mode" in parts or "reading" in parts):
                break  # sample mode and the reading are listwise decisions
            return aligned, {"form": form, **parts}
    raise ValueError(
        f"variant {name!r}: write it as zero_shot_<form> or aligned_<form> with form utility or listwise, "
        "then optionally _sample or _no_reading (listwise only), _no_style, _no_signals "
        "(e.g. aligned_utility_no_signals, aligned_listwise_sample)"
    )


def periods_of_splits(splits: list[str]) -> list[str]:
    """The periods whose episodes the named splits hold ('val' -> val, 'test_*' -> test), checked."""
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad:
        raise ValueError(f"splits {splits!r}: use names from {SPLITS}")
    return [p for p in ("val", "test") if any((s == "val") == (p == "val") for s in splits)]


def parse_periods(period: str) -> list[str]:
    """'test', 'val' or a comma list such as 'val,test' -> the periods, checked."""
    out = [p.strip() for p in str(period).split(",") if p.strip()]
    bad = [p for p in out if p not in ("val", "test")]
    if not out or bad:
        raise ValueError(f"period {period!r}: use 'test', 'val' or 'val,test'")
    return out


def table_exists(conn, name: str) -> bool:
    rows = conn.execute(
        "select count(*) from information_schema.tables where table_name = $name", {"name": name}
    ).fetchall()  # fetchall: a fetchone leaves the result open and duckdb 2.x then refuses the next query
    return bool(rows and rows[0][0])


def latest_adapter(conn) -> dict[str, Any] | None:
    """The newest row of lora_adapters as a dict, or None when the table is absent or empty."""
    if not table_exists(conn, "lora_adapters"):
        return None
    rows = conn.sql(load_sql("simulation/select_latest_adapter")).pl()
    return rows.row(0, named=True) if rows.height else None


def choose_adapter(row: dict[str, Any] | None, model: str, use_adapter: bool) -> tuple[str, str]:
    """(adapter path or "", reason): the newest adapter when asked for, present on disk and trained on the
    same base model as the resource's; zero-shot otherwise, with the reason."""
    if not use_adapter:
        return "", "use_adapter is off"
    if row is None:
        return "", "no lora_adapters row"
    path = str(row.get("adapter_path") or "")
    if not path or not Path(path, "adapter_config.json").is_file():
        return "", f"adapter folder {path!r} has no adapter_config.json"
    base = str(row.get("base_model") or "")
    if base and base != model and Path(base).resolve() != Path(model).resolve():
        return "", f"adapter trained on {base!r}, the resource's model is {model!r}"
    return path, f"lora_adapters run {row.get('dagster_run_id')}"


QUANTITY_SOURCES = ("auto", "adapter", "base")


def adapter_trained_quantity(adapter_path: str | Path) -> bool:
    """Whether the adapter's training carried the quantity answer (train_result.json's quantity_episodes > 0;
    adapters saved before that field existed were not)."""
    f = Path(adapter_path, "train_result.json")
    try:
        return int(json.loads(f.read_text()).get("quantity_episodes") or 0) > 0
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def quantity_model(adapter_path: str, source: str) -> tuple[str, str]:
    """(adapter path or "" for the base model, reason) of the model that answers the quantity question.
    'adapter': the deciding model, 'base': the base model without the adapter, 'auto': the adapter only when
    its training carried the quantity answer. An adapter trained on choices alone has never seen the
    quantity question and drifts on it (the 60-minute adapter: median 2, qty_mae 1.43 against the base
    model's 0.45 on 300 test_all episodes; docs/measurements.md)."""
    if source not in QUANTITY_SOURCES:
        raise ValueError(f"quantity_source {source!r}: use one of {QUANTITY_SOURCES}")
    if not adapter_path:
        return "", "no adapter: the base model decides"
    if source == "adapter":
        return adapter_path, "quantity_source is 'adapter'"
    if source == "base":
        return "", "quantity_source is 'base'"
    if adapter_trained_quantity(adapter_path):
        return adapter_path, "the adapter was trained on the quantity answer"
    return "", "the adapter was not trained on the quantity answer (quantity_episodes 0): base model"


# ----------------------------------------------------------------------------- the sample


def best_ranks(members: pl.DataFrame) -> dict[str, int]:
    """episode_id -> its best (smallest) md5 rank over the splits it is in (load_sample's members)."""
    return dict(members.group_by("episode_id").agg(pl.col("sample_rank").min()).iter_rows())


def load_sample(
    conn, periods: list[str], seed: int, n_per_split: int, splits: list[str] | None = None
) -> tuple[list[P.PromptEpisode], pl.DataFrame]:
    """The sample's episodes as prompt contexts and their split membership (episode_id, split, sample_rank:
    0-based rank in the split's md5 order), restricted to `splits` when given. Episodes without options
    are dropped from both.

    Order: by the episode's best rank in the md5 sample of any of its splits (ties: episode_id), so that
    the splits advance together and the first n decided episodes of a run that stops (see checkpoint.py)
    are the protocol's sample at a smaller N for every split."""
    cands = conn.sql(
        load_sql("simulation/select_sample_candidates"), params={"seed": int(seed), "periods": periods}
    ).pl()
    members = split_membership(cands, int(n_per_split))
    if splits:
        members = members.filter(pl.col("split").is_in(list(splits)))
    wanted = set(members["episode_id"].to_list())
    episodes: list[P.PromptEpisode] = []
    for period in periods:
        rows = P.build_prompt_rows(conn, period, seed, n_per_split, fit_only=False)
        episodes += [e for e in rows if e.episode.episode_id in wanted]
    members = members.join(cands.select("episode_id", "sample_key"), on="episode_id", how="left").select(
        "episode_id",
        "split",
        sample_rank=pl.col("sample_key").rank("ordinal").over("split").cast(pl.Int64) - 1,
    )
    rank = best_ranks(members)
    episodes.sort(key=lambda e: (rank.get(e.episode.episode_id, 0), e.episode.episode_id))
    have = {e.episode.episode_id for e in episodes}
    members = members.filter(pl.col("episode_id").is_in(list(have)))
    return episodes, members


# ----------------------------------------------------------------------------- deciding


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


def load_run_sample(
    conn, settings: DecisionSettings, splits: list[str] | None = None
) -> tuple[list[P.PromptEpisode], pl.DataFrame, float]:
    """The episodes and split membership a method decides (load_sample over its periods), and the seconds
    it took: loaded first, so that the warehouse is not held open while the agents decide."""
    t = time.perf_counter()
    eps, members = load_sample(
        conn, parse_periods(settings.period), settings.seed, settings.n_per_split, splits
    )
    return eps, members, time.perf_counter() - t


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


# ----------------------------------------------------------------------------- the report


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


def report_markdown(metrics: pl.DataFrame, fits: list | None = None) -> str:
    """The gap summary (main sample), the hybrids' fitted coefficients, then per sample one table per split
    (LLM and hybrid rows first, then baselines), methods as rows."""
    cols = ["method", "kind", "n_episodes", *METRIC_NAMES]
    if metrics.height and metrics["top1_agreement"].is_not_null().any():
        cols += ["top1_agreement", "share_cv"]
    out = ["**best LLM and best hybrid vs best baseline (hit@1, main sample)**", "", *gap_lines(metrics), ""]
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
) -> tuple[pl.DataFrame, list[HybridFit]]:
    """Metrics of the LLM methods of retail_decisions, their calibrated hybrids and the baselines.

    Two samples, each scored with every method on the same episodes:
    - main: the methods decided on the largest sample (the primary method, N per split) and the hybrid of
      each of them (fitted on its val episodes, reported on the test splits);
    - variants: every method (main, hybrids, zero-shot, listwise, ablations) on the episodes all of them
      decided (the md5 sample's first n per split, so a subset of the main sample); only when some method
      was decided on fewer episodes than the main ones.
    Returns the metrics and the hybrids' fits."""
    empty = pl.DataFrame(schema=REPORT_SCHEMA)
    if not table_exists(conn, "retail_decision_episodes"):
        log("eval_report: no retail_decisions yet: empty report")
        return empty, []
    m = conn.sql("select method, episode_id, split from retail_decision_episodes").pl()
    if methods:
        m = m.filter(pl.col("method").is_in(methods))
    if m.height == 0:
        return empty, []
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
    return pl.concat(parts), fits


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


def write_report(conn, metrics: pl.DataFrame) -> None:
    """Replace eval_metrics with `metrics`."""
    conn.register("staged_eval_metrics", metrics.to_arrow())
    try:
        conn.execute(load_sql("simulation/eval_metrics"))
    finally:
        conn.unregister("staged_eval_metrics")
