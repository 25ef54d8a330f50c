"""Benchmark: how fast the retail agent decides, on the same episodes of 10 options in every mode.

Four ways to get one decision per episode from the language model (the `hf` engine; fp32 on CPU threads by
default, `--device cuda` and `--dtype bfloat16` for a GPU):
1. naive: one `model.generate(max_new_tokens=2, greedy)` per episode on the listwise prompt, unbatched.
   It may run on the first `--naive-episodes` of the episodes only (it is slow: ~0.15 decisions/s for the
   135M model on 2 cores); its figures are then per decision on that subset, and the output says so.
2. listwise score: `HFEngine.label_logprobs(prompts, "A".."J")`, batched (one forward pass per prompt).
3. utility, no prefix reuse: `HFEngine.score_many(items, prefix_reuse=False)`: one full prompt
   (prefix + suffix) per option, batched across episodes.
4. utility, prefix reuse: `HFEngine.score_many(items, prefix_reuse=True)`: the shared prefix once per
   episode (its KV cache reused), then only each option's suffix.

Figures per mode: decisions/s (episodes / wall seconds of the whole call, tokenization included), ratio to
the naive loop, tokens/s, achieved GFLOP/s and its share of the matmul peak (same device and dtype) measured
in the same run.
- tokens: the real (non-pad) tokens that went through the model. naive: prompt + 1 (the second generated
  token's step); listwise and utility without reuse: every prompt token; utility with reuse: the tokens
  actually computed (each prefix once + every suffix), and, beside it, "prompt-equivalent" tokens/s (the
  tokens of the full prompts that the reuse stood in for: the same count as mode 3).
- FLOPs: 2 * n_params * computed tokens (docs/notes.md, "Throughput of the 135M model"), n_params = all the
  model's parameters, embedding included, as docs/notes.md counts them. The score modes never apply the output
  head to the sequence (they project the last hidden state on the answer rows only), so the share is also
  printed with n_params = the non-embedding parameters (the matmuls actually run per token). Attention's
  own score/value products (~4 * context * hidden per token and layer) are not counted in either.
- peak: the best median GFLOP/s of torch matmuls of the model's shapes in the model's dtype (tokens x hidden @
  hidden x intermediate, and a square one) on the same device and threads, measured before and after the modes; the higher of
  the two runs is the peak (neighbours' load only lowers it).
- warm-up: each mode runs once, untimed, on the first episode before the timed runs (--no-warmup skips it).
- load: os.getloadavg() before and after each mode; the machine may be shared with other processes.

Episodes: from a warehouse (`--warehouse PATH`, opened read-only; default data/malles.duckdb if it exists):
the test period's episodes with exactly 10 options, the first `--episodes` in the seeded order md5("{seed}|
{episode_id}"). Without a warehouse (or with `--synthetic`): synthetic episodes built directly with the
prompt template dataclasses (10 options each, deterministic from the seed), with field lengths like Complete
Journey's. Figures only; nothing is asserted.

    python benchmarks/simulate.py [--episodes 256] [--naive-episodes 32] [--warehouse PATH] [--modes ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.env import set_offline_env  # noqa: E402

set_offline_env()

from assets.prompts import templates as T  # noqa: E402

MODES = ("naive", "listwise_score", "utility", "utility_reuse")
MODE_LABELS = {
    "naive": "naive generate (listwise, 1/episode)",
    "listwise_score": "listwise score mode",
    "utility": "utility form, no prefix reuse",
    "utility_reuse": "utility form, prefix reuse",
}
N_OPTIONS = 10
TARGET_RATIO = 10.0  # utility form with prefix reuse vs the naive loop (issue 3)
TARGET_PEAK_SHARE = 0.60  # score modes vs the measured fp32 matmul peak (issue 3)


# ----------------------------------------------------------------------------- episodes


@dataclass
class BenchEpisode:
    """One decision: the customer, the context and its 10 options (the same for every mode)."""

    customer: T.CustomerContext
    episode: T.EpisodeContext
    options: list[T.OptionContext]


_WORDS = (
    "whole milk vanilla greek yogurt organic bananas sliced cheddar cheese white bread wheat pasta tomato "
    "sauce chicken breast frozen pizza orange juice ground coffee corn flakes peanut butter strawberry jam "
    "potato chips sparkling water dark chocolate lean beef family pack low fat light fresh value size"
).split()
_BRANDS = ("National", "Private", "Green Valley", "Sunrise", "Harvest Gold", "Blue Ridge", "Meadow")
_CATEGORIES = ("FLUID MILK PRODUCTS", "BAKED BREAD/BUNS/ROLLS", "CHEESE", "SOFT DRINKS", "FROZEN PIZZA",
               "BAG SNACKS", "YOGURT", "COFFEE", "CEREAL", "PASTA & SAUCE")  # fmt: skip


def synthetic_episodes(n: int, seed: int = 0) -> list[BenchEpisode]:
    """n deterministic episodes of 10 options built with the template dataclasses (no warehouse needed).
    Field lengths follow Complete Journey's: 3-6 word descriptions, demographics, six style parameters,
    prices with some discounts and reference-price gaps, some past purchases."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        style = tuple(
            T.StyleValue(name, float(v), T.LEVELS[int(rng.integers(3))])
            for (name, _), v in zip(T.STYLE_FIELDS, rng.normal(0, 1, len(T.STYLE_FIELDS)), strict=True)
        )
        customer = T.CustomerContext(
            customer_id=f"c{i}",
            demographics=(
                ("age", str(rng.choice(["19-24", "25-34", "35-44", "45-54", "55-64", "65+"]))),
                ("income", str(rng.choice(["Under 15K", "25-34K", "50-74K", "75-99K", "125-149K"]))),
                ("household_comp", str(rng.choice(["1 Adult No Kids", "2 Adults Kids", "2 Adults No Kids"]))),
            ),
            style=style,
            n_category_episodes=int(rng.integers(0, 30)),
            top_brand=str(rng.choice(_BRANDS)),
            mean_quantity=float(rng.uniform(1, 3)),
        )
        episode = T.EpisodeContext(
            episode_id=f"synthetic-{seed}-{i}",
            category=_CATEGORIES[i % len(_CATEGORIES)],
            day=date(2017, 1, 1) + timedelta(days=int(rng.integers(0, 365))),
        )
        options = []
        for j in range(N_OPTIONS):
            list_price = float(rng.uniform(0.5, 9.0))
            depth = float(rng.choice([0.0, 0.0, 0.1, 0.25]))
            bought = int(rng.choice([0, 0, 0, 1, 4]))
            options.append(
                T.OptionContext(
                    product_id=f"p{i}-{j}",
                    description=" ".join(rng.choice(_WORDS, int(rng.integers(3, 7)))),
                    brand=str(rng.choice(_BRANDS)),
                    attributes=(("size", f"{int(rng.integers(6, 64))} OZ"),),
                    price=list_price * (1 - depth),
                    list_price=list_price,
                    discount_depth=depth,
                    ref_price=list_price,
                    ref_price_gap=float(rng.choice([0.0, 0.0, -0.1, 0.15])),
                    cust_brand_purchases=int(rng.integers(0, 5)),
                    cust_product_purchases=bought,
                    pop_28d=int(rng.integers(0, 40)),
                )
            )
        out.append(BenchEpisode(customer, episode, options))
    return out


def warehouse_episodes(path: str | Path, n: int, seed: int = 0) -> list[BenchEpisode]:
    """The first n test episodes with exactly 10 options in md5("{seed}|{episode_id}") order, read from the
    warehouse opened read-only (build_prompt_rows only makes a temp table)."""
    import duckdb

    from assets.prompts.logic import build_prompt_rows, seeded_key

    conn = duckdb.connect(str(path), read_only=True)
    try:
        want = max(2 * n, 64)
        rows = [
            e for e in build_prompt_rows(conn, "test", seed=seed, n_per_split=want) if len(e.options) == 10
        ]
        if len(rows) < n:  # too few in the sample: take the whole period
            rows = [e for e in build_prompt_rows(conn, "test", seed=seed) if len(e.options) == N_OPTIONS]
    finally:
        conn.close()
    rows.sort(key=lambda e: seeded_key(seed, e.episode.episode_id))
    return [BenchEpisode(e.customer, e.episode, e.options) for e in rows[:n]]


# ----------------------------------------------------------------------------- the matmul peak


def matmul_peak(
    hidden: int,
    intermediate: int,
    tokens: int = 2048,
    min_seconds: float = 0.3,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Median GFLOP/s of torch matmuls in `dtype` on `device` (CPU: the current threads): (tokens x hidden) @
    (hidden x intermediate), its transpose shape, and a square 1024; the best shape is the peak. On a GPU
    every timing ends with a synchronize, and fp32 stays fp32 (TF32 is torch's default off for matmuls)."""
    import torch

    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    shapes = {
        f"{tokens}x{hidden}@{hidden}x{intermediate}": (tokens, hidden, intermediate),
        f"{tokens}x{intermediate}@{intermediate}x{hidden}": (tokens, intermediate, hidden),
        "1024x1024@1024x1024": (1024, 1024, 1024),
    }
    out = {}
    with torch.inference_mode():
        for name, (m, k, n) in shapes.items():
            a = torch.randn(m, k, device=device, dtype=dt)
            b = torch.randn(k, n, device=device, dtype=dt)
            c = a @ b  # warm up
            sync()
            t0 = time.perf_counter()
            c = a @ b
            sync()
            one = max(time.perf_counter() - t0, 1e-6)
            reps = max(3, int(min_seconds / one))
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    c = a @ b
                sync()
                runs.append((time.perf_counter() - t0) / reps)
            del c
            out[name] = 2 * m * k * n / statistics.median(runs) / 1e9
    return out


# ----------------------------------------------------------------------------- the modes


@dataclass
class ModeResult:
    mode: str
    episodes: int
    seconds: float
    tokens: int  # tokens computed by the model
    prompt_tokens: int  # tokens of the full prompts the mode stands for
    load_before: float
    load_after: float
    notes: list[str] = field(default_factory=list)

    @property
    def decisions_per_s(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.seconds if self.seconds > 0 else 0.0


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run_naive(engine, episodes: list[BenchEpisode]) -> ModeResult:
    """One unbatched greedy `generate` of 2 tokens per episode on its listwise prompt."""
    import torch

    prompts = [T.listwise_prompt(e.customer, e.episode, e.options) for e in episodes]
    labels = set(T.LABELS[:N_OPTIONS])
    load0 = _load()
    t0 = time.perf_counter()
    tokens = prompt_tokens = parsed = 0
    for p in prompts:
        ids = engine.encode(p)
        inp = torch.as_tensor([ids], device=engine.device)
        with torch.inference_mode():
            gen = engine.model.generate(
                input_ids=inp,
                attention_mask=torch.ones_like(inp),
                do_sample=False,
                max_new_tokens=2,
                pad_token_id=engine.pad_id,
            )
        new = gen[0, len(ids) :]
        parsed += engine.tokenizer.decode(new, skip_special_tokens=True).strip()[:1] in labels
        prompt_tokens += len(ids)
        tokens += len(ids) + max(len(new) - 1, 0)  # the prefill, then one step per further token
    seconds = time.perf_counter() - t0
    res = ModeResult("naive", len(prompts), seconds, tokens, prompt_tokens, load0, _load())
    res.notes.append(f"answers starting with a label A-J: {parsed}/{len(prompts)}")
    return res


def run_listwise_score(engine, episodes: list[BenchEpisode]) -> ModeResult:
    """label_logprobs over "A".."J" on the listwise prompts, batched."""
    prompts = [T.listwise_prompt(e.customer, e.episode, e.options) for e in episodes]
    tok0 = engine.stats.tokens
    load0 = _load()
    t0 = time.perf_counter()
    engine.label_logprobs(prompts, list(T.LABELS[:N_OPTIONS]))
    seconds = time.perf_counter() - t0
    tokens = engine.stats.tokens - tok0
    return ModeResult("listwise_score", len(prompts), seconds, tokens, tokens, load0, _load())


def run_utility(engine, episodes: list[BenchEpisode], reuse: bool) -> ModeResult:
    """score_many over every option of every episode (utility = log P(Yes) - log P(No))."""
    items = []
    prompt_tokens = 0
    for e in episodes:
        up = T.utility_prompt(e.customer, e.episode, e.options)
        items.append((up.prefix, up.suffixes))
        n_prefix = len(engine.encode(up.prefix))
        prompt_tokens += sum(n_prefix + len(engine.encode(s)) for s in up.suffixes)
    tok0, fb0 = engine.stats.tokens, engine.stats.fallbacks
    load0 = _load()
    t0 = time.perf_counter()
    engine.score_many(items, prefix_reuse=reuse, progress=False)
    seconds = time.perf_counter() - t0
    mode = "utility_reuse" if reuse else "utility"
    res = ModeResult(mode, len(items), seconds, engine.stats.tokens - tok0, prompt_tokens, load0, _load())
    if reuse and engine.stats.fallbacks - fb0:
        res.notes.append(f"{engine.stats.fallbacks - fb0} episodes fell back to full prompts")
    return res


# ----------------------------------------------------------------------------- report


def param_counts(model) -> tuple[int, int]:
    """(all parameters, non-embedding parameters): the tied input/output embedding counted once."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    out_emb = model.get_output_embeddings()
    tied = out_emb is None or out_emb.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    non_emb = total - emb - (0 if tied else out_emb.weight.numel())
    return total, non_emb


def format_table(results: list[ModeResult], n_params: int, n_non_emb: int, peak: float) -> list[str]:
    """The result table as text lines (markdown)."""
    naive = next((r for r in results if r.mode == "naive"), None)
    head = (
        "| mode | episodes | seconds | decisions/s | ratio to naive | tokens/s computed | tokens/s prompt-equiv."
        " | tokens/decision | GFLOP/s (all params) | share of peak | share (non-emb. params) | load before/after |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ratio = r.decisions_per_s / naive.decisions_per_s if naive and naive.decisions_per_s else float("nan")
        gflops = 2 * n_params * r.tokens_per_s / 1e9
        gflops_ne = 2 * n_non_emb * r.tokens_per_s / 1e9
        lines.append(
            f"| {MODE_LABELS[r.mode]} | {r.episodes} | {r.seconds:.1f} | {r.decisions_per_s:.3f} | "
            f"{ratio:.1f}x | {r.tokens_per_s:.0f} | {r.prompt_tokens_per_s:.0f} | {r.tokens / r.episodes:.0f} | "
            f"{gflops:.1f} | "
            f"{gflops / peak:.0%} | {gflops_ne / peak:.0%} | {r.load_before:.2f}/{r.load_after:.2f} |"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--episodes", type=int, default=256, help="episodes of 10 options, the same in every mode"
    )
    ap.add_argument(
        "--naive-episodes", type=int, default=32, help="the naive loop runs on the first N (0: all)"
    )
    ap.add_argument("--model", default="default", help="'default', a model directory or a Hugging Face id")
    ap.add_argument("--batch-size", type=int, default=16, help="the engine's batch size (score modes)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="auto", help="'auto' (cuda where there is one), 'cpu' or 'cuda'")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model and peak dtype"
    )
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="a subset of the modes")
    ap.add_argument(
        "--warehouse", default=None, help="a MALLES warehouse (read-only); default data/malles.duckdb"
    )
    ap.add_argument("--synthetic", action="store_true", help="synthetic episodes even if a warehouse exists")
    ap.add_argument("--seed", type=int, default=0, help="episode sample order / synthetic generator")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up")
    ap.add_argument("--peak-seconds", type=float, default=0.3, help="time per repeat of each peak matmul")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, return the figures (for tests)."""
    args = parse_args(argv)
    import torch

    from resources.hf_engine import HFEngine
    from resources.paths import data_dir

    torch.set_num_threads(max(1, args.threads))
    n = max(1, args.episodes)
    wh = None if args.synthetic else Path(args.warehouse) if args.warehouse else data_dir() / "malles.duckdb"
    if wh is not None and wh.is_file():
        episodes = warehouse_episodes(wh, n, args.seed)
        source = f"warehouse {wh} (test period, episodes of 10 options, seeded order, seed {args.seed})"
    else:
        if wh is not None and args.warehouse:
            print(f"warehouse {wh} not found: using synthetic episodes")
        episodes = synthetic_episodes(n, args.seed)
        source = f"synthetic episodes from the template dataclasses (seed {args.seed})"
    if len(episodes) < n:
        print(f"only {len(episodes)} episodes of 10 options available (asked for {n})")

    engine = HFEngine(
        args.model,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        batch_size=args.batch_size,
        prefix_reuse=True,
        progress=False,
    )
    device = str(engine.device)
    if device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(engine.device)}")
    cfg = engine.model.config
    n_params, n_non_emb = param_counts(engine.model)
    hidden = int(getattr(cfg, "hidden_size", 576))
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden))

    print(f"episodes: {len(episodes)} from {source}")
    print(
        f"model: {engine.model_path} ({n_params / 1e6:.1f}M parameters, {n_non_emb / 1e6:.1f}M non-embedding)"
    )
    print(
        f"threads: {torch.get_num_threads()}, batch size {engine.batch_size}, dtype {args.dtype}, device {device}"
    )
    print(
        f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )

    peak_runs = [matmul_peak(hidden, inter, min_seconds=args.peak_seconds, device=device, dtype=args.dtype)]
    results: list[ModeResult] = []
    naive_n = len(episodes) if args.naive_episodes <= 0 else min(args.naive_episodes, len(episodes))

    def run(mode: str, eps: list[BenchEpisode]) -> ModeResult:
        if mode == "naive":
            return run_naive(engine, eps)
        if mode == "listwise_score":
            return run_listwise_score(engine, eps)
        return run_utility(engine, eps, reuse=mode == "utility_reuse")

    selected = [m for m in MODES if m in args.modes]
    if args.warmup:  # one untimed episode per mode: first-call allocations and kernel choices stay out
        for mode in selected:
            run(mode, episodes[:1])
    for mode in selected:
        print(f"running {MODE_LABELS[mode]} ...", flush=True)
        r = run(mode, episodes[:naive_n] if mode == "naive" else episodes)
        print(f"  {r.episodes} decisions in {r.seconds:.1f} s ({r.decisions_per_s:.3f}/s)", flush=True)
        results.append(r)
    peak_runs.append(
        matmul_peak(hidden, inter, min_seconds=args.peak_seconds, device=device, dtype=args.dtype)
    )
    peak = max(max(p.values()) for p in peak_runs)

    print()
    print(f"{args.dtype} matmul GFLOP/s on {device} (median per shape; before the modes / after):")
    for name in peak_runs[0]:
        print(f"  {name}: {peak_runs[0][name]:.1f} / {peak_runs[1][name]:.1f}")
    print(f"peak used: {peak:.1f} GFLOP/s")
    print()
    table = format_table(results, n_params, n_non_emb, peak)
    print("\n".join(table))
    print()
    naive = next((r for r in results if r.mode == "naive"), None)
    if naive and naive.episodes < len(episodes):
        print(
            f"NOTE: the naive loop ran on the first {naive.episodes} of the {len(episodes)} episodes only; its "
            "figures (and the ratios) are per decision on that subset."
        )
    for r in results:
        for note in r.notes:
            print(f"{MODE_LABELS[r.mode]}: {note}")
    print(
        "tokens: real tokens through the model (naive: prompt + 1 decode step; prefix reuse: each prefix once +"
        " the suffixes); prompt-equiv. = tokens of the full prompts; FLOPs = 2 x params x computed tokens."
    )
    by = {r.mode: r for r in results}
    if naive and "utility_reuse" in by and naive.decisions_per_s:
        ratio = by["utility_reuse"].decisions_per_s / naive.decisions_per_s
        print(
            f"target utility+reuse >= {TARGET_RATIO:.0f}x naive: {ratio:.1f}x ({'met' if ratio >= TARGET_RATIO else 'missed'})"
        )
    for m in ("listwise_score", "utility", "utility_reuse"):
        if m in by:
            share = 2 * n_params * by[m].tokens_per_s / 1e9 / peak
            print(
                f"target {MODE_LABELS[m]} >= {TARGET_PEAK_SHARE:.0%} of peak: {share:.0%} "
                f"({'met' if share >= TARGET_PEAK_SHARE else 'missed'})"
            )
    print(f"load average at end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {
        "source": source,
        "peak_gflops": peak,
        "peak_runs": peak_runs,
        "n_params": n_params,
        "n_non_embedding": n_non_emb,
        "results": results,
        "table": table,
    }


if __name__ == "__main__":
    main()
