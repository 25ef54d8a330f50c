"""Benchmarks of the market simulation (assets/market): the cost of a mean-field iteration against one
simulation pass, and the LLM engine's decisions per second at each batch size.

    python benchmarks/market.py meanfield [--customers 300] [--categories 2] [--weeks 4] [--llm-customers 40]
    python benchmarks/market.py batch [--customers 300] [--occasions 64] [--batch-sizes 1,4,8,16,32]

Both build the synthetic market (assets/synthetic, SynthConfig(n_customers=N), with product texts, customer
demographics and style parameters: what the LLM's prompts read) through the features stage into a DuckDB
warehouse under --workdir (reused when it exists), then the test period's market as market_simulation builds
it (top --categories categories, first --weeks ISO weeks, M = 20).

meanfield: per engine, the seconds of one simulation pass (mean_field=False: one engine.decide on the observed
signals, checked and aggregated) and of each mean-field pass (undamped; per pass the signals' recomputation and
the engine's decide apart), printed as ratios to the one pass. Engines: clogit (fitted as market_simulation
fits it) and the embedded default LLM zero-shot (`--model`, utility form) on the occasions of --llm-customers
sampled customers, with its prompt cache emptied before the mean-field run, so that pass 1 scores every prompt
and a later pass only the prompts whose text changed (the cache is the reuse of every token up to the first
one that depends on m, at prompt granularity). Its cache hit rate per pass is printed.

batch: the LLM engine (hf, fp32, 2 threads) on the same --occasions occasions at each batch size, prompt cache
empty each time: decisions (occasions) per second and options per second, as ratios to batch size 1.

The machine's load is printed at the start and the end (timings move with the neighbours'). Run with
`nice -n 19` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import duckdb as ddb
import polars as pl

from assets.market import meanfield as mf
from assets.market.classic import fit_classic_engines, load_market_frame
from assets.market.engine import check_decisions, with_other_rows
from assets.market.llm import LLMChoiceEngine, MarketPromptContext
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions, market_summary


def build_warehouse(path: Path, customers: int, seed: int = 0) -> ddb.DuckDBPyConnection:
    """The synthetic market with texts, demographics and style parameters, through the features stage."""
    from assets.features import logic as features
    from assets.synthetic.generator import SynthConfig, generate_market

    if path.exists():
        return ddb.connect(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.parent / f"synth_{customers}_{seed}"
    generate_market(src, SynthConfig(n_customers=customers, seed=seed))
    c = ddb.connect(str(path))
    tx, pr, cu = (str(src / f"{n}.parquet") for n in ("transactions", "products", "customers"))
    c.execute("create table raw_transactions as select * from read_parquet($f)", {"f": tx})
    c.execute(
        "create table products as select product_id, category, brand, description, "
        "json_object('size', size, 'tier', quality_tier)::varchar as attributes, true as is_merchandise "
        "from read_parquet($f)",
        {"f": pr},
    )
    c.execute(
        "create table customers as select customer_id, segment, json_object('age', age_band, 'income', "
        "income_band, 'household_size', household_size)::varchar as attributes from read_parquet($f)",
        {"f": cu},
    )
    features.configure_connection(c, threads=2, memory_limit="3GB")
    features.build_decision_episodes(c)
    features.build_option_features(c)
    features.build_episode_splits(c)
    features.build_customer_style_params(c)
    return c


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def llm_engine(model: str, batch_size: int):
    from resources.llm import LLMResource

    return LLMResource(model=model, batch_size=batch_size).get_engine()


def one_pass_seconds(engine, frame, occasions, history) -> float:
    t = time.perf_counter()
    mf.run_mean_field(engine, frame, occasions, history, mean_field=False, log=lambda _: None)
    return time.perf_counter() - t


def bench_meanfield(conn, args) -> None:
    build_market_occasions(conn, period="test", categories=args.categories, weeks=args.weeks, m_options=20)
    s = market_summary(conn)
    print(f"market: {s['occasions']} occasions, {s['option_rows']} options, {s['categories']} categories")
    occasions = conn.sql("select * from market_occasions").pl()
    frame = load_market_frame(conn)
    _, history = mf.observed_state(conn, occasions, 28)
    clogit = fit_classic_engines(conn, ("clogit",), with_persistence=False, log=lambda _: None)["clogit"]
    report("clogit", clogit, frame, occasions, history, args)
    if args.llm_customers <= 0:
        return
    build_market_occasions(
        conn, period="test", categories=args.categories, weeks=args.weeks, customers=args.llm_customers,
        m_options=20,
    )  # fmt: skip
    occasions = conn.sql("select * from market_occasions").pl()
    frame = load_market_frame(conn)
    _, history = mf.observed_state(conn, occasions, 28)
    print(f"LLM sample: {occasions.height} occasions of {args.llm_customers} customers")
    ctx = MarketPromptContext().add_market(conn)
    llm = LLMChoiceEngine(llm_engine(args.model, args.batch_size), ctx, other_qty=clogit.other_qty)
    report("llm (zero-shot)", llm, frame, occasions, history, args)


def report(name: str, engine, frame, occasions, history, args) -> None:
    one = one_pass_seconds(engine, frame, occasions, history)
    if hasattr(engine, "cache"):
        engine.cache.clear()
        engine.counts.update(dict.fromkeys(engine.counts, 0))
    hits: list[float] = []

    def log(_line: str) -> None:
        if hasattr(engine, "counts"):
            c = engine.counts
            hits.append(c["hits"] / c["lookups"] if c["lookups"] else float("nan"))
            c["hits"] = c["lookups"] = 0

    res = mf.run_mean_field(engine, frame, occasions, history, alpha=1.0, epsilon=1e-3, max_iter=args.max_iter,
                            log=log)  # fmt: skip
    print(f"\n{name}: one simulation pass {one:.2f} s; mean field {res.iterations} passes "
          f"(converged {res.converged})")  # fmt: skip
    print("| pass | seconds | / one pass | signals s | engine s | cache hit rate |")
    print("|---|---|---|---|---|---|")
    for k, (sec, sig, eng) in enumerate(
        zip(res.seconds, res.signal_seconds, res.engine_seconds, strict=True)
    ):
        hit = f"{hits[k]:.3f}" if k < len(hits) else ""
        print(f"| {k + 1} | {sec:.2f} | {sec / one:.2f} | {sig:.2f} | {eng:.2f} | {hit} |")
    later = res.seconds[1:]
    if later:
        mean_later = sum(later) / len(later)
        print(f"{name}: a pass after the first costs {mean_later / one:.2f} x one simulation pass on average "
              f"(max {max(later) / one:.2f}); the first {res.seconds[0] / one:.2f}")  # fmt: skip


def bench_batch(conn, args) -> None:
    build_market_occasions(conn, period="test", categories=args.categories, weeks=args.weeks, m_options=20)
    ids = conn.sql("select occasion_id from market_occasions order by md5(occasion_id)").pl()["occasion_id"]
    frame = load_market_frame(conn).filter(pl.col("occasion_id").is_in(ids.head(args.occasions).implode()))
    ctx = MarketPromptContext().add_market(conn)
    n_opts = frame.filter(pl.col("product_id") != OTHER).height
    n_occ = frame["occasion_id"].n_unique()
    print(f"{n_occ} occasions, {n_opts} options; model {args.model}, hf, fp32, 2 threads")
    print("| batch size | decisions/s | options/s | / batch size 1 |")
    print("|---|---|---|---|")
    base = None
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        engine = LLMChoiceEngine(llm_engine(args.model, b), ctx, chunk_occasions=max(b, 16))
        t = time.perf_counter()
        d = engine.decide(frame)
        sec = time.perf_counter() - t
        check_decisions(with_other_rows(frame), d)
        rate = n_occ / sec
        base = base or rate
        print(f"| {b} | {rate:.2f} | {n_opts / sec:.1f} | {rate / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("meanfield", "batch"))
    ap.add_argument("--customers", type=int, default=300)
    ap.add_argument("--categories", type=int, default=2)
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--llm-customers", type=int, default=40)
    ap.add_argument("--occasions", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--model", default="default")
    ap.add_argument("--workdir", default="/tmp/malles_bench_market")
    args = ap.parse_args()
    print(load())
    conn = build_warehouse(Path(args.workdir) / f"synth_{args.customers}.duckdb", args.customers)
    (bench_meanfield if args.what == "meanfield" else bench_batch)(conn, args)
    print(load())


if __name__ == "__main__":
    main()
