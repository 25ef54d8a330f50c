"""Multi-agent reading of long option lists (assets/simulation/reading.py): a recording fake engine for the
plumbing and the arithmetic, and the tiny random model of tests/llm_fixtures.py for the LLM path."""

import math
import re
from datetime import date

import numpy as np
import pytest

from assets.prompts import logic as P
from assets.prompts import templates as T
from assets.simulation import decide
from assets.simulation import reading as R
from tests.llm_fixtures import tiny_test_model
from tests.test_prompts import customer, option

_OPTION_LINE = re.compile(r'^([A-J])\) "item (\d+)"', re.MULTILINE)


class FakeEngine:
    """encode: one token per whitespace-separated word. label_logprobs: log-softmax of a fixed score per
    product (read off each option line "X) "item k"..."), recording every call."""

    def __init__(self, scores: dict[int, float]):
        self.scores = scores
        self.calls: list[tuple[list[str], list[str]]] = []

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def label_logprobs(self, prompts, labels):
        self.calls.append((list(prompts), list(labels)))
        rows = []
        for p in prompts:
            items = listed_items(p)
            assert [label for label, _ in items] == list(labels)  # the prompt labels exactly the label set
            z = np.array([self.scores[k] for _, k in items], dtype=np.float64)
            rows.append(z - z.max() - math.log(np.exp(z - z.max()).sum()))
        return np.array(rows).reshape(len(prompts), len(labels))


def listed_items(prompt: str) -> list[tuple[str, int]]:
    """(label, item number) of each option line of a listwise prompt."""
    return [(a, int(k)) for a, k in _OPTION_LINE.findall(prompt)]


def episode(n: int, eid: str = "e", first: int = 0) -> P.PromptEpisode:
    """An episode of n options p{first}..; option k is described as "item k"."""
    opts = [option(f"p{k}", description=f"item {k}") for k in range(first, first + n)]
    return P.PromptEpisode(
        period="test",
        customer=customer(),
        episode=T.EpisodeContext(eid, "BAG SNACKS", date(2017, 3, 14)),
        options=opts,
        chosen_product_id=f"p{first}",
        quantity=1,
    )


def scores_for(n: int, seed: int = 0) -> dict[int, float]:
    return {k: float(v) for k, v in enumerate(np.random.default_rng(seed).normal(0, 1.5, n))}


def probs(u: np.ndarray) -> np.ndarray:
    return decide.softmax(u)


# ----------------------------------------------------------------------------- under budget: the single prompt


def test_under_budget_is_the_single_prompt_distribution():
    eps = [episode(n, f"e{n}") for n in (1, 3, 7, 10, 3)]
    eng = FakeEngine(scores_for(10))
    got, stats = R.decide_listwise_reading(eng, eps, True, True, budget_tokens=100_000)
    want = decide.decide_listwise(FakeEngine(scores_for(10)), eps, True, True)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)
        assert probs(g).sum() == pytest.approx(1.0)
    assert stats["n_episodes"] == 5 and stats["n_single"] == 5
    assert stats["n_read"] == stats["n_reader_prompts"] == stats["n_decider_prompts"] == 0
    assert stats["mean_tokens_reader"] == 0.0
    singles = [len(P.listwise_pair(e, True, True)["prompt"].split()) for e in eps]
    assert stats["mean_tokens_single"] == pytest.approx(np.mean(singles))
    # one call per option count (the 1-option episode needs none: its label log-prob is 0)
    assert sorted(len(labels) for _, labels in eng.calls) == [3, 7, 10]
    assert got[0].tolist() == [0.0]


def test_no_options_is_an_empty_array():
    eng = FakeEngine({})
    got, stats = R.decide_listwise_reading(eng, [episode(0)], True, True, budget_tokens=1)
    assert got[0].shape == (0,) and eng.calls == []
    assert stats["n_episodes"] == 1 and stats["n_single"] == stats["n_read"] == stats["n_over_budget"] == 0


def test_over_budget_but_one_slice_stays_a_single_prompt():
    eps = [episode(4)]
    got, stats = R.decide_listwise_reading(FakeEngine(scores_for(4)), eps, True, True, budget_tokens=1)
    want = decide.decide_listwise(FakeEngine(scores_for(4)), eps, True, True)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-9)
    assert stats["n_over_budget"] == 1 and stats["n_read"] == 0 and stats["n_single"] == 1


# ----------------------------------------------------------------------------- over budget: readers and decider


def _expected(n: int, scores: dict[int, float], slice_size: int, shortlist: int, floor: float):
    """The reading computed by hand from the fake scores: (shortlist positions, probabilities)."""
    short, dropped = [], {}
    for s in R.reading_slices(n, slice_size):
        z = np.array([scores[j] for j in s])
        lr = z - z.max() - math.log(np.exp(z - z.max()).sum())
        top = sorted(sorted(range(len(s)), key=lambda j: (-lr[j], j))[:shortlist])
        short += [s[j] for j in top]
        dropped.update({s[j]: math.exp(lr[j]) for j in range(len(s)) if j not in top})
    p = np.zeros(n)
    q = np.exp([scores[j] for j in short])
    p[short] = (1 - floor) * q / q.sum()
    r = np.array([dropped[j] for j in sorted(dropped)])
    p[sorted(dropped)] = floor * r / r.sum()
    return short, p


@pytest.mark.parametrize("n", [7, 10, 11, 12, 20])
def test_over_budget_reads_in_slices(n):
    scores = scores_for(n, seed=n)
    eng = FakeEngine(scores)
    floor = 0.05
    got, stats = R.decide_listwise_reading(eng, [episode(n)], True, True, budget_tokens=50, floor=floor)
    u = got[0]
    assert u.shape == (n,) and np.isfinite(u).all()
    p = np.exp(u)
    np.testing.assert_allclose(probs(u), p, rtol=0, atol=1e-12)  # downstream softmax(u) is the same p
    assert p.sum() == pytest.approx(1.0, abs=1e-12) and (p > 0).all()

    short, want = _expected(n, scores, 5, 2, floor)
    np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-12)
    assert p[short].sum() == pytest.approx(1 - floor, abs=1e-12)

    # readers: label sets of their slice length; together they list every option of every slice that needs
    # a reader (more than `shortlist` options) exactly once, in position order
    slices = R.reading_slices(n, 5)
    reader_calls, decider_calls = eng.calls[:-1], eng.calls[-1:]
    read = [k for prompts, _ in reader_calls for p in prompts for _, k in listed_items(p)]
    assert sorted(read) == [j for s in slices if len(s) > 2 for j in s]
    assert len(read) == len(set(read))
    assert stats["n_reader_prompts"] == sum(len(s) > 2 for s in slices)
    # the decider saw exactly the shortlist, in position order, labelled A..
    ((prompts, labels),) = decider_calls
    assert len(prompts) == 1 and len(labels) == len(short) <= len(T.LABELS)
    assert [k for _, k in listed_items(prompts[0])] == short
    assert stats["n_read"] == 1 and stats["n_decider_prompts"] == 1 and stats["n_over_budget"] == 1
    assert stats["mean_tokens_reader"] > 0 and stats["mean_tokens_decider"] > 0
    if n <= 10:
        assert stats["mean_tokens_single"] > stats["mean_tokens_decider"]
    else:
        assert stats["mean_tokens_single"] == 0.0  # no single prompt over more than 10 options


def test_slice_edge_cases_short_last_slice_and_single_option():
    # 11 options in slices of 5: 5, 5, 1; the 1-option slice is shortlisted without a reader
    scores = scores_for(11, seed=3)
    eng = FakeEngine(scores)
    got, _ = R.decide_listwise_reading(eng, [episode(11)], True, True, budget_tokens=1)
    ((prompts, _),) = eng.calls[-1:]
    assert 10 in [k for _, k in listed_items(prompts[0])]
    assert all(len(labels) == 5 for _, labels in eng.calls[:-1])
    # slices of 3 with shortlist 2 on 7 options: 3, 3, 1 -> shortlist 2 + 2 + 1
    eng = FakeEngine(scores_for(7, seed=4))
    got, stats = R.decide_listwise_reading(eng, [episode(7)], True, True, budget_tokens=1, slice_size=3)
    assert stats["n_reader_prompts"] == 2 and len(eng.calls[-1][1]) == 5
    assert np.exp(got[0]).sum() == pytest.approx(1.0)


def test_ties_are_broken_by_position():
    scores = dict.fromkeys(range(10), 0.0)  # every option equal
    eng = FakeEngine(scores)
    got, _ = R.decide_listwise_reading(eng, [episode(10)], True, True, budget_tokens=1)
    ((prompts, _),) = eng.calls[-1:]
    assert [k for _, k in listed_items(prompts[0])] == [0, 1, 5, 6]
    p = np.exp(got[0])
    assert p[[0, 1, 5, 6]] == pytest.approx([0.95 / 4] * 4)
    assert p[[2, 3, 4, 7, 8, 9]] == pytest.approx([0.05 / 6] * 6)
    assert R.top_positions(np.array([0.0, 1.0, 1.0, 1.0]), 2) == [1, 2]


def test_floor_zero_drops_options_and_softmax_stays_a_distribution():
    eng = FakeEngine(scores_for(8, seed=5))
    got, _ = R.decide_listwise_reading(eng, [episode(8)], True, True, budget_tokens=1, floor=0.0)
    u = got[0]
    assert np.isneginf(u).sum() == 8 - 4
    assert probs(u).sum() == pytest.approx(1.0) and np.isfinite(u).sum() == 4


def test_calls_are_batched_by_label_set_across_episodes():
    eps = [episode(12, "a"), episode(7, "b"), episode(12, "c"), episode(3, "d"), episode(6, "e")]
    eng = FakeEngine(scores_for(12, seed=6))
    got, stats = R.decide_listwise_reading(eng, eps, True, True, budget_tokens=200)  # 3 options: 161 words
    read = [i for i, e in enumerate(eps) if len(e.options) > 5]
    assert stats["n_read"] == len(read) == 4 and stats["n_single"] == 1
    sizes = [(len(prompts), len(labels)) for prompts, labels in eng.calls]
    # single (3 options); readers: 2+1+2+1 slices of 5 (the 2- and 1-option tails need none);
    # deciders: 6 shortlisted for each 12, 4 for the 7 (2 + 2), 3 for the 6 (2 + 1)
    assert sizes == [(1, 3), (6, 5), (1, 3), (1, 4), (2, 6)]
    for u in got:
        assert np.exp(u).sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"budget_tokens": 0}, "budget_tokens"),
        ({"slice_size": 1}, "slice_size"),
        ({"slice_size": 11}, "slice_size"),
        ({"shortlist": 0}, "shortlist"),
        ({"shortlist": 5}, "shortlist"),
        ({"floor": 1.0}, "floor"),
        ({"floor": -0.1}, "floor"),
        ({"floor": float("nan")}, "floor"),
    ],
)
def test_bad_arguments_are_one_line_errors(kw, words):
    with pytest.raises(ValueError) as err:
        R.decide_listwise_reading(FakeEngine({}), [], True, True, **kw)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_shortlist_longer_than_the_labels_is_refused_before_any_call():
    eng = FakeEngine(scores_for(30))
    with pytest.raises(ValueError) as err:  # 6 slices of 5 shortlist 12 > 10
        R.decide_listwise_reading(eng, [episode(30, "big")], True, True, budget_tokens=1)
    msg = str(err.value)
    assert "big" in msg and "12" in msg and "\n" not in msg and eng.calls == []
    got, _ = R.decide_listwise_reading(eng, [episode(30)], True, True, budget_tokens=1, slice_size=10)
    assert np.exp(got[0]).sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the real (tiny) model


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from resources.llm import LLMResource

    return LLMResource(model=str(tiny_test_model(tmp_path_factory.mktemp("tiny") / "model"))).get_engine()


def test_tiny_model_reading(engine):
    eps = [episode(7, "a"), episode(3, "b"), episode(12, "c", first=20)]
    small = eps[:2]
    got, _ = R.decide_listwise_reading(engine, small, True, False, budget_tokens=100_000)
    want = decide.decide_listwise(engine, small, True, False)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)

    budget = len(engine.encode(P.listwise_pair(eps[1], True, False)["prompt"]))
    got, stats = R.decide_listwise_reading(engine, eps, True, False, budget_tokens=budget, floor=0.1)
    assert stats["n_read"] == 2 and stats["n_single"] == 1 and stats["n_decider_prompts"] == 2
    np.testing.assert_allclose(got[1], decide.decide_listwise(engine, eps[1:2], True, False)[0], atol=1e-9)
    for ep, u in zip(eps, got, strict=True):
        p = np.exp(u)
        assert u.shape == (len(ep.options),) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # episode a: slices 0-4 and 5-6; the reader of 0-4 keeps its top 2 labels (scored here directly)
    reader = T.listwise_prompt(eps[0].customer, eps[0].episode, eps[0].options[:5], True, False)
    lr = engine.label_logprobs([reader], list("ABCDE"))[0]
    short = R.top_positions(lr, 2) + [5, 6]
    p = np.exp(got[0])
    assert p[short].sum() == pytest.approx(0.9, abs=1e-9)
    dropped = [j for j in range(5) if j not in short]
    # float32 forward passes: another batch composition moves the last digits
    np.testing.assert_allclose(p[dropped] / p[dropped].sum(), np.exp(lr[dropped]) / np.exp(lr[dropped]).sum(),
                               rtol=1e-4)  # fmt: skip
