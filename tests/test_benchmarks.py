"""Smoke test of benchmarks/simulate.py on the tiny model: every mode runs and reports positive figures.

No timing is asserted; the token counts and parameter counts are checked against values computed here.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.llm_fixtures import tiny_test_model

ROOT = Path(__file__).resolve().parents[1]


def _load_simulate():
    spec = importlib.util.spec_from_file_location("bench_simulate", ROOT / "benchmarks" / "simulate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_test_model(tmp_path_factory.mktemp("tiny") / "model")


def test_simulate_smoke(tiny_dir, capsys):
    sim = _load_simulate()
    argv = ["--model", str(tiny_dir), "--episodes", "4", "--naive-episodes", "2", "--synthetic"]
    out = sim.main(argv + ["--batch-size", "8", "--peak-seconds", "0.01"])
    printed = capsys.readouterr().out

    # every mode is in the printed table, with positive figures
    assert [r.mode for r in out["results"]] == list(sim.MODES)
    for label in sim.MODE_LABELS.values():
        assert f"| {label} |" in printed
    assert "naive loop ran on the first 2 of the 4 episodes" in printed
    assert "load average at start" in printed
    assert out["peak_gflops"] > 0
    for r in out["results"]:
        assert r.seconds > 0 and r.decisions_per_s > 0 and r.tokens > 0
    by = {r.mode: r for r in out["results"]}
    assert by["naive"].episodes == 2
    assert all(by[m].episodes == 4 for m in ("listwise_score", "utility", "utility_reuse"))

    # token counts, computed independently from the same synthetic episodes with the tokenizer
    from transformers import AutoTokenizer

    from assets.prompts import templates as T

    tok = AutoTokenizer.from_pretrained(tiny_dir)

    def n(text):
        return len(tok(text, add_special_tokens=False).input_ids)

    eps = sim.synthetic_episodes(4, 0)
    ups = [T.utility_prompt(e.customer, e.episode, e.options) for e in eps]
    full = sum(n(up.prefix + s) for up in ups for s in up.suffixes)
    reused = sum(n(up.prefix) + sum(n(s) for s in up.suffixes) for up in ups)
    listwise = sum(n(T.listwise_prompt(e.customer, e.episode, e.options)) for e in eps)
    assert by["utility"].tokens == full == by["utility"].prompt_tokens
    assert by["utility_reuse"].tokens == reused
    assert by["utility_reuse"].prompt_tokens == full
    assert by["listwise_score"].tokens == listwise
    naive_prompt = sum(n(T.listwise_prompt(e.customer, e.episode, e.options)) for e in eps[:2])
    assert by["naive"].prompt_tokens == naive_prompt

    # parameters of the tiny Llama (hidden 64, 1 head of 64, MLP 128, 2 layers, tied embedding):
    # per layer q,k,v,o 4*64*64 + MLP 3*64*128 + two norms 2*64 = 41,088; plus the final norm 64
    assert out["n_non_embedding"] == 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    assert out["n_params"] == out["n_non_embedding"] + len(tok) * 64


def test_synthetic_episodes_are_deterministic_with_ten_options():
    sim = _load_simulate()
    a, b = sim.synthetic_episodes(3, seed=5), sim.synthetic_episodes(3, seed=5)
    assert a == b
    assert all(len(e.options) == 10 for e in a)
    assert sim.synthetic_episodes(3, seed=6) != a
