"""Run profiles of main_job: the asset configs' defaults are the quick profile; `full` overrides them.

quick (default): the whole pipeline with post-training and simulation on a quiet 2-core CPU in about 57 minutes
  where the CPU lacks bf16 matrix instructions (an AVX2 CPU: the LoRA training runs in fp32, 34 minutes) and
  about 33 where it has them (bf16 autocast: ~16 minutes of LoRA): 4,000 train episodes of prompts, 350 LoRA
  steps (the step count decides, the 120-minute cap is for safety only), N = 80 episodes per split for the aligned
  agent (val feeds the calibrated hybrid), and no variant rows (on 16 episodes a hit@1's standard error is
  about 0.12: minutes that say nothing; name them with `--config retail_decisions.variants=[...]`).
full: docs/evaluation-protocol.md's N = 2,000 episodes per split, 20,000 train episodes, 1,592 LoRA steps, and the
  variant rows (zero-shot, listwise, the ablations) on 200 episodes of every test split; the market with
  the aligned LLM and its hybrid on a raked sample of 200 customers, stability over 5 seeds, and the what-if
  on the hybrid. Hours on a CPU; minutes on a GPU with the vllm backend.
The market stages (market_simulation, whatif) run at their asset defaults in market_job and whatif_job. In
main_job the quick profile runs them small (MAIN_JOB_QUICK: 2 categories, 4 weeks, the classic engines, the
what-if on clogit: 224 s on Complete Journey on the AVX2 CPU); `malles run` names the what-if scenario
of a built-in source (SOURCE_SCENARIOS), and without one the what-if is skipped.
  On a CPU it runs in slices: `--config retail_decisions.max_minutes=M` writes the md5 sample at the largest N
  completed after M minutes, and `malles run --profile full --select 'retail_decisions+'` goes on from the
  decisions' checkpoint (7,961 distinct episodes for the primary method on Complete Journey, at about 0.8
  decisions/s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the what-if scenario main_job runs for a built-in source (scenarios/README.md); other sources name their own
# (`--config whatif.scenario=PATH`) or the what-if is skipped
SOURCE_SCENARIOS = {"completejourney": "cj_price_rise.yaml", "synthetic": "synth_price_rise.yaml"}
SCENARIOS_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def source_scenario(source: str) -> str:
    """The example scenario of a built-in source (an absolute path), or "" for any other source."""
    name = SOURCE_SCENARIOS.get(source)
    return str(SCENARIOS_DIR / name) if name else ""


# main_job in the quick profile: a small market and one what-if on the classic fast path (about 2 minutes on
# Complete Journey on 2 cores)
MAIN_JOB_QUICK: dict[str, dict[str, Any]] = {
    "market_simulation": {"categories": 2, "weeks": 4, "engines": ["clogit", "lgbm", "persistence"]},
    "whatif": {"engine": "clogit", "weeks": 4, "bootstrap": 100, "top_k": 5},
}

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {},
    "full": {
        "sft_prompt_dataset": {"max_train_episodes": 20_000, "eval_sample_per_split": 2_000},
        # 1,592 steps: what the 60-minute time budget reached at 8.80 answers/s (31,689 answers, 19.9 a step);
        # the wall time is only a safety cap (the step count decides): 4x the quiet hour; quick's is 120 min
        "lora_adapter": {
            "max_steps": 1_592,
            "max_minutes": 240.0,
            "max_train_examples": 0,
            "eval_examples": 500,
        },
        "retail_decisions": {
            "n_per_split": 2_000,
            "variants": [  # each on the variant sample: {zero_shot|aligned}_{utility|listwise}[_...]
                "zero_shot_utility",
                "zero_shot_listwise",
                "aligned_listwise",
                "aligned_listwise_no_reading",
                "aligned_listwise_sample",
                "aligned_utility_no_style",
                "aligned_utility_no_signals",
            ],
            "variant_n": 200,
            "variant_splits": ["test_all", "test_sparse", "test_cold", "test_new"],
        },
        "market_simulation": {
            "sample_customers": 200,
            "llm_val_occasions": 500,
            "stability_seeds": 5,
        },
        "whatif": {"engine": "hybrid", "customers": 200, "llm_val_occasions": 500},
    },
}


def profile_run_config(name: str, op_names: set[str], job: str = "main_job") -> dict[str, Any]:
    """The run config of a profile for the ops of a job (ops the job does not have are left out)."""
    if name not in PROFILES:
        raise ValueError(f"profile {name!r}: use one of {', '.join(PROFILES)}")
    profile = PROFILES[name] | (MAIN_JOB_QUICK if (name, job) == ("quick", "main_job") else {})
    return {"ops": {op: {"config": dict(cfg)} for op, cfg in profile.items() if op in op_names}}
