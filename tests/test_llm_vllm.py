"""The vllm engine against the hf engine on the tiny model (needs CUDA and `pip install -e '.[gpu]'`).

Skipped without CUDA (tests/conftest.py) and without vllm. Both engines get the same token ids; the hf
engine's numbers were checked against a plain forward pass in tests/test_llm.py.
"""

import numpy as np
import pytest

from tests.llm_fixtures import tiny_test_model
from tests.test_llm import OPTIONS, OTHER, SYSTEM

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    pytest.importorskip("vllm")
    from resources.hf_engine import HFEngine
    from resources.vllm_engine import VLLMEngine

    path = tiny_test_model(tmp_path_factory.mktemp("tiny_gpu") / "model")
    hf = HFEngine(path, device="cpu", batch_size=4, progress=False)
    vl = VLLMEngine(path, dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
    return hf, vl


def test_vllm_utilities_match_hf(engines):
    hf, vl = engines
    items = [(SYSTEM, OPTIONS), (OTHER, OPTIONS[:3])]
    for a, b in zip(hf.score_many(items), vl.score_many(items), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-3, rtol=0)


def test_vllm_label_logprobs_match_hf(engines):
    hf, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS]
    labels = ["A", "B", "C"]
    np.testing.assert_allclose(
        vl.label_logprobs(prompts, labels), hf.label_logprobs(prompts, labels), atol=1e-3, rtol=0
    )


def test_vllm_sample_mode_structured(engines):
    _, vl = engines
    prompts = [SYSTEM + o for o in OPTIONS[:2]]
    res = vl.sample(prompts, k=4, temperature=1.0, allowed=["A", "B", "C"], seed=0, max_new_tokens=4)
    for r in res:
        assert len(r.answers) == 4 and r.n_failed == 0
        assert set(r.answers) <= {"A", "B", "C"}
