"""How long a what-if on the hybrid takes on a built warehouse, against the clogit what-if of the same run.

    python benchmarks/whatif_speed.py --data-dir DIR [--scenario scenarios/cj_price_rise.yaml] [--customers 200]
        [--weeks 8] [--bootstrap 200] [--top-k 0] [--llm-val-occasions 500] [--model default] [--cli]

DIR is the data folder of a finished `malles run` (its warehouse malles.duckdb and the adapter that
lora_adapters names). The warehouse is copied to a temporary file first, so the run leaves DIR as it was.
The what-ifs run in-process (assets/market/counterfactual.run_whatif, as the whatif asset calls it), in order:

1. clogit: the baseline of the ratios (the classic fast path).
2. hybrid, cold: its fit scores the val occasions, then the baseline market and the scenario.
3. hybrid, warm, the same scenario: every prompt is in market_llm_cache (a repeated question).
4. hybrid, warm, a new question: a 10% price rise of another product of the same category (the category's
   best-selling product after the scenario's own targets): only that product's option lines are new.

The hybrid reads llm_signals="observed" (the what-if's default: the LLM half is scored once per run and
the mean field moves the classic half). Printed per step: seconds, the ratio to clogit, prompts scored and read
from the cache, occasions. With --cli, step 4's question is asked once more through `malles whatif` (Dagster's
start and the MLflow run included), the way an analyst asks it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb as ddb  # noqa: E402

from assets.market import counterfactual as cf  # noqa: E402
from assets.market import llm_engine_provider  # noqa: E402
from assets.market.scenario import load_scenario  # noqa: E402
from benchmarks.market import load  # noqa: E402
from resources.llm import LLMResource  # noqa: E402
from resources.warehouse import table_count  # noqa: E402

NEXT_SQL = """
select e.product_id
from episode_purchases as e join products as p on p.product_id = e.product_id
where p.category = $category and e.product_id not in (select unnest($targets::varchar[]))
group by e.product_id order by count(*) desc, e.product_id limit 1
"""


def next_question(conn, scenario, category: str, folder: Path) -> Path:
    """A scenario file: a 10% price rise of the category's best seller that `scenario` does not target."""
    targets = [p for iv in scenario.interventions for p in iv.products]
    row = conn.execute(NEXT_SQL, {"category": category, "targets": targets}).fetchone()
    if row is None:
        raise SystemExit(f"no other product in category {category!r} to ask about")
    path = folder / "next_question.yaml"
    text = (
        f"name: next_question\ninterventions:\n  - {{type: price, products: ['{row[0]}'], change_pct: 10}}\n"
    )
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "cj_price_rise.yaml")
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--llm-val-occasions", type=int, default=500)
    ap.add_argument("--model", default="default")
    ap.add_argument("--cli", action="store_true", help="also ask the new question through `malles whatif`")
    a = ap.parse_args(argv)
    src = a.data_dir / "malles.duckdb"
    if not src.is_file():
        print(f"{src} does not exist: give the data folder of a finished `malles run`", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="whatif_speed_")
    db = Path(tmp.name) / "malles.duckdb"
    shutil.copyfile(src, db)
    conn = ddb.connect(str(db))
    scenario = load_scenario(a.scenario, conn)
    cats = cf.affected_categories(conn, scenario)
    second = next_question(conn, scenario, cats[0], Path(tmp.name))
    n_cached = table_count(conn, "market_llm_cache")  # 0 before any LLM market run
    print(
        f"warehouse copy of {src} ({n_cached} cached prompts); scenario {scenario.name} on {cats}, "
        f"{a.customers or 'all'} customers, {a.weeks} weeks, bootstrap {a.bootstrap}, top_k {a.top_k}; {load()}"
    )
    provider = llm_engine_provider(LLMResource(model=a.model), conn, use_adapter=True, log=print)
    base = dict(weeks=a.weeks, customers=a.customers, bootstrap=a.bootstrap, top_k=a.top_k)
    base |= dict(llm_val_occasions=a.llm_val_occasions, llm_engine=provider)
    steps = [
        ("clogit", "clogit", a.scenario),
        ("hybrid, cold", "hybrid", a.scenario),
        ("hybrid, warm, same scenario", "hybrid", a.scenario),
        ("hybrid, warm, new question", "hybrid", second),
    ]
    first = None
    for label, engine, path in steps:
        t = time.perf_counter()
        sc = load_scenario(path, conn)
        result = cf.run_whatif(conn, sc, cf.WhatIfSettings(engine=engine, **base), log=lambda _: None)
        seconds = time.perf_counter() - t
        first = first or seconds
        st = result.summary.get("engine_stats", {})
        steps_s = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
        print(
            f"{label:30} {seconds:7.1f} s  x{seconds / first:5.1f} of clogit  occasions "
            f"{result.summary['occasions']}, scored {st.get('scored', 0)}, loaded {st.get('loaded', 0)}, "
            f"hits {st.get('hits', 0)}  ({steps_s})"
        )
    conn.close()
    if a.cli:
        env = os.environ | {"MALLES_DATA_DIR": str(a.data_dir), "MALLES_DUCKDB_PATH": str(db)}
        cmd = ["malles", "whatif", str(second), "--engine", "hybrid", "--customers", str(a.customers)]
        cmd += [
            "--weeks",
            str(a.weeks),
            "--config",
            f"bootstrap={a.bootstrap}",
            "--config",
            f"top_k={a.top_k}",
        ]
        cmd += ["--config", f"llm_val_occasions={a.llm_val_occasions}"]
        t = time.perf_counter()
        rc = subprocess.run(cmd, env=env, capture_output=True, text=True).returncode
        print(f"{'malles whatif (CLI), new question':30} {time.perf_counter() - t:7.1f} s  exit {rc}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
