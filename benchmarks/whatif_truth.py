"""What-ifs against the synthetic market's truth: own-price elasticities and a new product's share.

    python benchmarks/whatif_truth.py [--customers 800] [--seed 3] [--engines clogit,clogit6,lgbm]
        [--categories MILK,BREAD,CHEESE] [--top-k 10] [--warehouse PATH]
        [--llm-model PATH --adapter DIR] [--sample-customers N] [--llm-val-occasions N]  (llm / hybrid)

docs/evaluation-protocol.md, "Market-level evaluation": builds the synthetic market (benchmarks/market.py's
build_warehouse: the generator, then the features stage) unless --warehouse exists, and for each engine runs
`scenarios/synth_new_product.yaml` through the what-if (assets/market/counterfactual.run_whatif: the test period,
the categories given, all customers, the mean field, no bootstrap) with the elasticity matrix of the top-K
products of every category. The truth of the same occasions and consideration sets
(assets/synthetic/market_truth.py: true_own_price_elasticities on the sets, true_new_product_share) is the
reference. Printed per engine: the median absolute relative error of the own-price elasticities (all products
and per category), the share of products within 20%, the new product's simulated share of its category's units
against the true one, and the seconds.

The LLM engines need a language model: --llm-model (a local model directory) and --adapter (a LoRA adapter
directory trained on this market's train period, e.g. by `malles run --source synthetic`, whose market is
`--customers 300 --seed 0`). Without them the names llm / hybrid are refused in one line. They read the observed
signals (the what-if's llm_signals default: scored once per run, the hybrid's mean field moves its classic
half); on a CPU give them a customer sample (--sample-customers: the what-if and the truth on the same
occasions) and fewer val occasions for their fit (--llm-val-occasions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assets.market import counterfactual as cf  # noqa: E402
from assets.market import run  # noqa: E402
from assets.market.occasions import build_market_occasions  # noqa: E402
from assets.market.scenario import load_scenario  # noqa: E402
from assets.synthetic import market_truth as mt  # noqa: E402
from assets.synthetic.truth import load_truth  # noqa: E402
from benchmarks.market import build_warehouse, load  # noqa: E402

SCENARIO = ROOT / "scenarios" / "synth_new_product.yaml"


def market_sets(conn, settings: cf.WhatIfSettings, cats: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(occasions, options) of the what-if's market, built as run_whatif builds them (tables set aside)."""
    ms = settings.market(cats)
    with cf._market_tables_aside(conn):
        build_market_occasions(conn, m_options=settings.m_options, seed=settings.seed,
                               history_days=run.HISTORY_DAYS, **ms.occasion_filters())  # fmt: skip
        occ = conn.sql("select occasion_id, customer_id, category, day from market_occasions").pl()
        opts = conn.sql("select occasion_id, product_id from market_options").pl()
    return occ, opts


def truth_elasticities(truth, occ, opts, products: pl.DataFrame) -> pl.DataFrame:
    """The true own-price elasticities of `products` (category, product_id) on the market's sets."""
    t = mt.true_own_price_elasticities(truth, occ, opts, products=products["product_id"].to_list())
    return t.select("product_id", "category", pl.col("elasticity").alias("true"))


def new_product_spec(scenario) -> dict:
    iv = next(i for i in scenario.interventions if i.type == "new_product")
    p = iv.product
    attrs = p.get("attributes") or {}
    attrs = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)  # the scenario keeps them as JSON
    spec = {k: p[k] for k in ("product_id", "category", "brand", "price", "list_price") if k in p}
    spec["size_units"] = attrs.get("size_units", 1)
    if "quality_tier" in attrs:
        spec["quality_tier"] = attrs["quality_tier"]
    return spec


def score_engine(
    conn, engine: str, scenario, cats, top_k, llm_engine=None, **knobs
) -> tuple[pl.DataFrame, float, float]:
    """(own elasticities: category, product_id, estimate), the new product's share, seconds. knobs: more
    WhatIfSettings (customers, llm_val_occasions)."""
    s = cf.WhatIfSettings(engine=engine, category_ids=tuple(cats), top_k=top_k, elasticity_categories=len(cats),
                          bootstrap=0, llm_engine=llm_engine, **knobs)  # fmt: skip
    t = time.perf_counter()
    res = cf.run_whatif(conn, scenario, s, log=lambda m: None)
    seconds = time.perf_counter() - t
    own = res.elasticities.filter(pl.col("product_id") == pl.col("price_product_id"))
    own = own.select("category", "product_id", pl.col("elasticity").alias("estimate"))
    spec = new_product_spec(scenario)
    share = res.effects.filter(
        (pl.col("level") == "product")
        & (pl.col("metric") == "share")
        & (pl.col("product_id") == spec["product_id"])
    )
    return own, float(share["after"][0]) if share.height else float("nan"), seconds


def llm_provider(model: str, adapter: str | None):
    """() -> (Engine, model info) of a local model and adapter, as the market asset's provider gives it."""
    from resources.llm import LLMResource

    def provide():
        res = LLMResource(model=model, adapter=adapter or "")
        return res.get_engine(), res.model_info()

    return provide


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=800)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--engines", default="clogit,clogit6,lgbm")
    ap.add_argument("--categories", default="MILK,BREAD,CHEESE")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--warehouse", type=Path)
    ap.add_argument("--llm-model")
    ap.add_argument("--adapter")
    ap.add_argument(
        "--sample-customers", type=int, default=0, help="the what-if's seeded customer sample (0 = all)"
    )
    ap.add_argument(
        "--llm-val-occasions", type=int, default=500, help="val occasions of the LLM engines' fit"
    )
    a = ap.parse_args(argv)
    engines = [e for e in a.engines.split(",") if e]
    llm_names = [e for e in engines if e in run.LLM_ENGINES]
    if llm_names and not a.llm_model:
        print(f"engines {llm_names} need --llm-model (and --adapter for the aligned model)", file=sys.stderr)
        return 2
    cats = [c for c in a.categories.split(",") if c]
    tmp = None
    if a.warehouse is None:
        tmp = tempfile.TemporaryDirectory(prefix="whatif_truth_")
        a.warehouse = Path(tmp.name) / "w.duckdb"
    t = time.perf_counter()
    conn = build_warehouse(a.warehouse, a.customers, a.seed)
    truth = load_truth(a.warehouse.parent / f"synth_{a.customers}_{a.seed}")
    print(
        f"synthetic market: {a.customers} customers, seed {a.seed}, {time.perf_counter() - t:.1f} s; {load()}"
    )
    scenario = load_scenario(SCENARIO, conn)
    knobs = {"customers": a.sample_customers, "llm_val_occasions": a.llm_val_occasions}
    settings = cf.WhatIfSettings(category_ids=tuple(cats), **knobs)
    occ, opts = market_sets(conn, settings, cats)
    spec = new_product_spec(scenario)
    occ_new = occ.filter(pl.col("category") == spec["category"])
    true_share = mt.true_new_product_share(truth, occ_new, opts, spec)["unit_share"]
    provider = llm_provider(a.llm_model, a.adapter) if llm_names else None
    rows = []
    for engine in engines:
        own, share, seconds = score_engine(conn, engine, scenario, cats, a.top_k, provider, **knobs)
        tr = truth_elasticities(truth, occ, opts, own)
        j = own.join(tr, on=["category", "product_id"], how="inner")
        j = j.with_columns(rel=((pl.col("estimate") - pl.col("true")).abs() / pl.col("true").abs()))
        per_cat = {c: float(g["rel"].median()) for (c,), g in j.group_by("category")}
        rows.append(
            {
                "engine": engine,
                "products": j.height,
                "median_rel_error": float(j["rel"].median()),
                "within_20pct": float((j["rel"] <= 0.2).mean()),
                **{f"median_rel_error/{c}": per_cat.get(c, np.nan) for c in cats},
                "mean_true": float(j["true"].mean()),
                "mean_estimate": float(j["estimate"].mean()),
                "new_product_share": share,
                "true_new_product_share": true_share,
                "seconds": seconds,
            }
        )
        print(
            f"{engine}: median |rel error| {rows[-1]['median_rel_error']:.3f} over {j.height} products "
            f"({', '.join(f'{c} {v:.3f}' for c, v in per_cat.items())}); within 20% "
            f"{rows[-1]['within_20pct']:.2f}; mean elasticity {rows[-1]['mean_estimate']:.2f} (true "
            f"{rows[-1]['mean_true']:.2f}); new product share {share:.4f} (true {true_share:.4f}); {seconds:.1f} s"
        )
    print()
    print(pl.DataFrame(rows))
    if tmp is not None:
        conn.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
