"""The hf engine and the LoRA training on CUDA, against the same code on CPU (marked `gpu`: skipped without
CUDA, tests/conftest.py).

- score mode on the GPU in fp32 gives the CPU's choice probabilities to 1e-4, with and without prefix reuse
  and with padding in the batch (batch 3 < 5 options), and the same label log-probabilities;
- bf16 on the GPU stays close to fp32 (the speed option of a GPU run; its error is printed and bounded);
- packed softmax training picks the GPU (bf16 where the card has it), learns the toy choice, and its adapter
  scores the same on the GPU as on the CPU;
- sample mode, greedy, parses and fails where the CPU does.

No Dagster import: benchmarks/device/run.sh runs this file on a GPU machine that has torch but not the
project's orchestration stack.
"""

import numpy as np
import pytest

from tests import test_llm as TL
from tests.alignment_fixtures import FAST, episode_rows
from tests.llm_fixtures import tiny_test_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_test_model(tmp_path_factory.mktemp("tiny_cuda") / "model")


def _engines(path, adapter=None, dtype="float32"):
    from resources.hf_engine import HFEngine

    kw = dict(adapter_path=adapter, batch_size=3, progress=False)
    return HFEngine(path, device="cpu", **kw), HFEngine(path, device="cuda", dtype=dtype, **kw)


def _probs(utilities: list[np.ndarray]) -> list[np.ndarray]:
    return [TL._softmax(np.asarray(u, dtype=np.float64)) for u in utilities]


ITEMS = [(TL.SYSTEM, TL.OPTIONS), (TL.OTHER, TL.OPTIONS[:3]), (TL.SYSTEM, TL.OPTIONS[2:])]


@pytest.mark.parametrize("reuse", [True, False])
def test_score_mode_on_cuda_equals_cpu(tiny, reuse):
    cpu, gpu = _engines(tiny)
    assert gpu.device.type == "cuda"
    a = cpu.score_many(ITEMS, prefix_reuse=reuse, progress=False)
    b = gpu.score_many(ITEMS, prefix_reuse=reuse, progress=False)
    for pa, pb in zip(_probs(a), _probs(b), strict=True):
        np.testing.assert_allclose(pb, pa, atol=1e-4, rtol=0)
    prompts = [TL.SYSTEM + o for o in TL.OPTIONS]
    labels = ["A", "B", "C"]
    np.testing.assert_allclose(
        np.exp(gpu.label_logprobs(prompts, labels)), np.exp(cpu.label_logprobs(prompts, labels)), atol=1e-4
    )


def test_bf16_on_cuda_is_close_to_fp32(tiny):
    _, fp32 = _engines(tiny)
    _, bf16 = _engines(tiny, dtype="bfloat16")
    a = _probs(fp32.score_many(ITEMS, progress=False))
    b = _probs(bf16.score_many(ITEMS, progress=False))
    err = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    print(f"bf16 vs fp32 on CUDA: largest choice-probability difference {err:.4f}")
    assert err < 0.05


def test_packed_softmax_training_on_cuda(tiny, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from assets.alignment import data as D
    from assets.alignment import train as T

    rows = episode_rows(16)
    tok = AutoTokenizer.from_pretrained(str(tiny))
    longest = max(len(ids) for ids in tok(rows["prompt"].to_list(), add_special_tokens=False)["input_ids"])
    cfg = T.LoraTrainSettings(
        **{**FAST, "loss": "softmax", "learning_rate": 1e-3, "pack_prefix": True, "max_length": longest},
        max_steps=60,
        epochs=50.0,
    )
    result = T.train_lora(tiny, rows, rows, cfg, tmp_path / "a")
    assert result.device == "cuda" and result.bf16 == bool(torch.cuda.is_bf16_supported())
    print(f"cuda training: {result.examples_per_sec:.1f} answers/s, eval loss {result.eval_loss_before:.3f}"
          f" -> {result.eval_loss:.3f}")  # fmt: skip
    assert result.eval_loss < 0.6 * result.eval_loss_before

    items = [D.split_prompt(p) for p in rows["prompt"].to_list()]
    by_ep = [(items[i][0], [items[j][1] for j in range(i, i + 4)]) for i in range(0, len(items), 4)]
    cpu, gpu = _engines(tiny, adapter=str(tmp_path / "a"))
    on_cpu = cpu.score_many(by_ep, progress=False)
    on_gpu = gpu.score_many(by_ep, progress=False)
    for pa, pb in zip(_probs(on_cpu), _probs(on_gpu), strict=True):
        np.testing.assert_allclose(pb, pa, atol=1e-4, rtol=0)
    chosen = [
        ep["completion"].to_list().index("Yes") for _, ep in rows.group_by("episode_id", maintain_order=True)
    ]
    hits = sum(int(np.argmax(u) == c) for u, c in zip(on_gpu, chosen, strict=True))
    assert hits >= 11  # chance: 4 of 16


def test_sample_mode_on_cuda_matches_cpu_when_greedy(tiny):
    """At a near-zero temperature sampling is greedy: the GPU parses, retries and fails exactly where the CPU
    does, and keeps every slot (None for a failure, never dropped)."""
    cpu, gpu = _engines(tiny)
    prompts = [TL.SYSTEM + o for o in TL.OPTIONS]
    target = next(g for g in (TL._greedy_text(cpu, p, 1).strip() for p in prompts) if g)
    kw = dict(k=3, temperature=1e-4, allowed=[target], seed=1, max_new_tokens=1, max_retries=2)
    a, b = cpu.sample(prompts, **kw), gpu.sample(prompts, **kw)
    assert [r.answers for r in b] == [r.answers for r in a]
    assert [r.n_failed for r in b] == [r.n_failed for r in a] and all(len(r.answers) == 3 for r in b)
