"""One job per stage, plus `main_job`: every asset of the pipeline that exists, in dependency order."""

import dagster as dg

# the Dagster groups
STAGES = ["ingest", "features", "prompts", "alignment", "simulation", "evaluation", "synthetic", "market"]
# The LLM stages (also runnable alone as agents_job on top of the other stages' tables).
LLM_STAGES = ["alignment", "simulation"]

# The synthetic market (group synthetic) writes files for tests and demos; it is never part of the main job.
SYNTHETIC = dg.AssetSelection.groups("synthetic")
# The market simulation (group market) runs in the main job (small in the quick profile: pipelines/profiles.py)
# and alone as market_job.
MARKET = dg.AssetSelection.groups("market")
# What-if scenarios (asset whatif, group market) run as whatif_job (`malles whatif`), apart from market_job.
WHATIF = dg.AssetSelection.assets("whatif")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest"),
    description="Load the landing files and built-in sources into DuckDB (transactions, products, customers).",
)
features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.groups("features"),
    description="Decision episodes, option features, splits and customer style parameters.",
)
prompts_job = dg.define_asset_job(
    "prompts_job",
    selection=dg.AssetSelection.groups("prompts"),
    description="Prompt/completion pairs (utility and listwise forms) from train episodes; val/test prompts.",
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.groups("evaluation"),
    description="Score every method on the shared episodes and splits; log the report to MLflow.",
)
agents_job = dg.define_asset_job(
    "agents_job",
    selection=dg.AssetSelection.groups(*LLM_STAGES),
    description="LoRA post-training of the base model, then the customer agents decide on the evaluation sample.",
)
main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.groups(*STAGES) - SYNTHETIC,
    description="The whole pipeline end to end: ingest -> features -> prompts -> baselines -> LoRA "
    "post-training -> the agents decide -> eval_report, and the market: market_simulation and a what-if "
    "scenario. Asset defaults are the quick profile (pipelines/profiles.py; `malles run --profile full` for "
    "N = 2,000 and the LLM in the market).",
)
synthetic_market_job = dg.define_asset_job(
    "synthetic_market_job",
    selection=SYNTHETIC,
    description="Draw a synthetic market with known ground truth into the landing folder.",
)

market_job = dg.define_asset_job(
    "market_job",
    selection=MARKET - WHATIF,
    description="The market simulation of a period: occasions and consideration sets, each engine with and "
    "without the mean field, scored at the market level next to persistence (needs features and baselines).",
)

whatif_job = dg.define_asset_job(
    "whatif_job",
    selection=WHATIF,
    description="A what-if scenario through the market simulation: with and without its interventions "
    "(mean field), effects with bootstrap intervals, the elasticity matrix, diversion ratios (`malles whatif`).",
)

JOBS = [
    ingest_job,
    features_job,
    prompts_job,
    evaluation_job,
    agents_job,
    main_job,
    synthetic_market_job,
    market_job,
    whatif_job,
]
