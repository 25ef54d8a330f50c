"""The engine contract: what the `hf` and `vllm` engines share (resources/hf_engine.py, resources/vllm_engine.py).

`Engine` is the interface LLMResource hands out and the common half of both engines. The public methods are
written once here; each engine supplies the model-specific steps:

- `score_options(prefix, suffixes)` / `score_many(items)`: the utility of each option, the answer-token value
  of answers[0] minus that of answers[1] at the position right after prefix + suffix. Here: the argument
  check, the answer token ids, the episode bookkeeping and the stats; the engine's `_score_rows` gives one row
  of answer values per option (how it batches and reuses prefixes is its own business).
- `label_logprobs(prompts, labels)`: log-softmax over the label tokens only, at the answer position. Here: the
  log-softmax over the engine's `_label_values` and the stats.
- `sample(prompts, k, ...)`: k sampled answers per prompt under the strict grammar of `parse_answer`
  (exactly one of `allowed` after stripping whitespace). Here: the argument checks, the retry loop for
  unparseable slots and the counting of retries and failures (never dropped); the engine's `_draw` gives the
  first draws and a function that draws the failed slots again, `_seeded` the random state they run under.

All methods take already-rendered prompt TEXT (the prompt builder applies the chat template), tokenized
without adding special tokens. The answer token ids are read from the tokenizer at the answer position
(docs/notes.md: right after the assistant turn starts, "Yes" and "No" carry no leading space) and must each
be exactly one token. Nothing heavy is imported here (transformers loads in `Engine.__init__`).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# (prompt index, slot index) of each unparseable sample -> one new text per pair, for retry round `attempt`
Redraw = Callable[[list[tuple[int, int]], int], list[str]]


class AnswerTokenError(ValueError):
    """An answer or label is not exactly one token at the answer position."""


@dataclass
class SampleResult:
    """k sampled answers for one prompt: `answers[i]` is an allowed label, or None if still unparseable."""

    answers: list[str | None]
    raw: list[str]  # the last generated text of each slot
    n_retries: int = 0  # extra generations spent on unparseable answers
    n_failed: int = 0  # slots still unparseable after max_retries (kept as None, never dropped)

    @property
    def parse_rate(self) -> float:
        return 1.0 - self.n_failed / max(len(self.answers), 1)

    @classmethod
    def parsed(cls, texts: list[str], allowed: list[str] | tuple[str, ...]) -> SampleResult:
        """The k generated texts of one prompt under the strict grammar."""
        return cls(answers=[parse_answer(t, allowed) for t in texts], raw=list(texts))


@dataclass
class EngineStats:
    """Running counters of the scoring work (decisions are episodes; options are suffixes)."""

    decisions: int = 0
    options: int = 0
    tokens: int = 0  # real (non-pad) tokens through the model, prefix counted once when reused
    seconds: float = 0.0
    fallbacks: int = 0  # episodes scored as full prompts because the prefix/suffix split was unstable
    samples: int = 0
    sample_retries: int = 0
    sample_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "decisions": self.decisions,
            "options": self.options,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "decisions_per_s": round(self.decisions_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "fallbacks": self.fallbacks,
            "samples": self.samples,
            "sample_retries": self.sample_retries,
            "sample_failures": self.sample_failures,
        }


@dataclass(frozen=True)
class SampleSpec:
    """One `sample` call's settings, as the engine's `_draw` receives them."""

    k: int  # answers per prompt
    temperature: float
    allowed: list[str] | tuple[str, ...]
    seed: int
    max_new_tokens: int
    constrained: bool  # draw over the allowed answers only (the engine's own way) rather than free text


def parse_answer(text: str, allowed: list[str] | tuple[str, ...]) -> str | None:
    """The strict answer grammar: the text, stripped of surrounding whitespace, is exactly one allowed label."""
    s = text.strip()
    return s if s in set(allowed) else None


def check_score_args(answers: list[str] | tuple[str, ...]) -> None:
    """Score mode's precondition: a positive and a negative answer."""
    if len(answers) != 2:
        raise ValueError(f"score mode needs exactly two answers (positive, negative), got {list(answers)}")


def check_sample_args(temperature: float, allowed: list[str] | tuple[str, ...]) -> None:
    """Sample mode's preconditions."""
    if temperature <= 0:
        raise ValueError(
            f"sample mode needs a temperature > 0, got {temperature} (use score mode for exact distributions)"
        )
    if not allowed:
        raise ValueError("sample mode needs at least one allowed answer")


def log_softmax_rows(values: np.ndarray) -> np.ndarray:
    """Log-softmax of each row of (n, m) answer values, restricted to those m answers."""
    m = values.max(axis=1, keepdims=True)
    return values - m - np.log(np.exp(values - m).sum(axis=1, keepdims=True))


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of rendered prompt text (the chat template already holds the special tokens)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def answer_token_ids(tokenizer, prompt: str, answers: list[str] | tuple[str, ...]) -> list[int]:
    """The id of each answer as the next token after `prompt`; each must be exactly one token there."""
    base = encode(tokenizer, prompt)
    ids = []
    for a in answers:
        full = encode(tokenizer, prompt + a)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            pieces = tokenizer.convert_ids_to_tokens(full[max(len(base) - 1, 0) :])
            raise AnswerTokenError(
                f"answer {a!r} is not one token after the prompt's end (got {pieces}): use single-token "
                "answers placed right after the assistant turn starts (e.g. 'Yes'/'No', 'A'..'J', '1'..'9')"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"answers {list(answers)} map to repeated token ids {ids}")
    return ids


class Engine(ABC):
    """Choice scoring and sampling on rendered prompt text (see the module docstring)."""

    backend: str  # "hf" or "vllm", as LLMResource.backend

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None, progress: bool):
        from transformers import AutoTokenizer

        from resources.models import resolve_model

        self.progress = progress
        self.model_path = resolve_model(str(model_path))
        self.adapter_path = str(adapter_path) if adapter_path else None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.stats = EngineStats()

    # ------------------------------------------------------------------ what each engine supplies
    @abstractmethod
    def _score_rows(
        self, items: list[tuple[str, list[str]]], ids: list[int], prefix_reuse: bool | None, progress: bool
    ) -> tuple[list[tuple[int, int]], np.ndarray, int]:
        """(where, values, fallbacks): values[r] are the answer values of option where[r] = (item, j),
        every option of `items` once; fallbacks counts episodes the engine could not score as asked."""

    @abstractmethod
    def _label_values(self, seqs: list[list[int]], ids: list[int]) -> np.ndarray:
        """(n, len(ids)) values of the label tokens after each sequence, log-softmaxed by the caller."""

    @abstractmethod
    def _draw(self, prompts: list[str], spec: SampleSpec) -> tuple[list[SampleResult], Redraw]:
        """The first k draws of each prompt, and how to draw failed slots again."""

    def _seeded(self, seed: int) -> contextlib.AbstractContextManager:
        """The random state `sample` runs under (engines that seed per request need none)."""
        return contextlib.nullcontext()

    def close(self) -> None:  # noqa: B027 (a no-op default on purpose: only vllm holds an engine process)
        """Free what the engine holds outside this process (nothing, unless the engine says otherwise)."""

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def answer_token_ids(self, prompt: str, answers: list[str] | tuple[str, ...]) -> list[int]:
        """The id of each answer as the next token after `prompt`; each must be exactly one token."""
        return answer_token_ids(self.tokenizer, prompt, answers)

    def _account(self, t0: float, decisions: int, options: int, fallbacks: int = 0) -> None:
        self.stats.seconds += time.perf_counter() - t0
        self.stats.decisions += decisions
        self.stats.options += options
        self.stats.fallbacks += fallbacks

    # ------------------------------------------------------------------ score mode
    def score_options(
        self,
        prefix: str,
        suffixes: list[str],
        answers: tuple[str, str] | list[str] = ("Yes", "No"),
        prefix_reuse: bool | None = None,
    ) -> np.ndarray:
        """Utility log P(answers[0]) - log P(answers[1]) of each suffix after the shared prefix."""
        return self.score_many(
            [(prefix, suffixes)], answers=answers, prefix_reuse=prefix_reuse, progress=False
        )[0]

    def score_many(
        self,
        items: list[tuple[str, list[str]]],
        answers: tuple[str, str] | list[str] = ("Yes", "No"),
        prefix_reuse: bool | None = None,
        progress: bool | None = None,
    ) -> list[np.ndarray]:
        """Utilities for many episodes (prefix, suffixes), batched across episodes."""
        check_score_args(answers)
        first = next(((p, s) for p, ss in items for s in ss), None)
        if first is None:
            return [np.zeros(0) for _ in items]
        t0 = time.perf_counter()
        ids = self.answer_token_ids(first[0] + first[1], answers)
        show = self.progress if progress is None else progress
        where, values, n_fallback = self._score_rows(items, ids, prefix_reuse, show)
        results = [np.zeros(len(ss)) for _, ss in items]
        for (it, j), row in zip(where, values, strict=True):
            results[it][j] = row[0] - row[1]
        self._account(t0, sum(1 for _, ss in items if ss), len(where), n_fallback)
        return results

    def label_logprobs(self, prompts: list[str], labels: list[str] | tuple[str, ...]) -> np.ndarray:
        """(n, len(labels)) log-softmax over the label tokens only, at each prompt's answer position."""
        if not prompts:
            return np.zeros((0, len(labels)))
        t0 = time.perf_counter()
        ids = self.answer_token_ids(prompts[0], labels)
        lp = log_softmax_rows(self._label_values([self.encode(p) for p in prompts], ids))
        self._account(t0, len(prompts), len(prompts) * len(labels))
        return lp

    # ------------------------------------------------------------------ sample mode
    def sample(
        self,
        prompts: list[str],
        k: int,
        temperature: float,
        allowed: list[str] | tuple[str, ...],
        seed: int = 0,
        max_new_tokens: int = 4,
        max_retries: int = 2,
        constrained: bool = True,
    ) -> list[SampleResult]:
        """k answers per prompt at `temperature`, each exactly one of `allowed` or counted as a failure.

        constrained (the default): the answer is drawn over the allowed answers only, so nothing fails to
        parse (the hf engine: softmax over their tokens when each is one token; vllm: structured outputs).
        Otherwise, or with constrained=False: free sampling of up to max_new_tokens, the strict grammar of
        parse_answer, unparseable slots drawn again max_retries times, then counted and kept as None."""
        check_sample_args(temperature, allowed)
        t0 = time.perf_counter()
        spec = SampleSpec(k, temperature, allowed, seed, max_new_tokens, constrained)
        with self._seeded(seed):  # where the engine uses a global RNG: these samples only, not the caller's
            results, redraw = self._draw(prompts, spec)
            for attempt in range(1, max_retries + 1):
                todo = [
                    (i, s) for i, res in enumerate(results) for s, a in enumerate(res.answers) if a is None
                ]
                if not todo:
                    break
                for (i, s), text in zip(todo, redraw(todo, attempt), strict=True):
                    results[i].n_retries += 1
                    results[i].raw[s] = text
                    results[i].answers[s] = parse_answer(text, allowed)
        for res in results:
            res.n_failed = sum(a is None for a in res.answers)
            self.stats.sample_retries += res.n_retries
            self.stats.sample_failures += res.n_failed
        self.stats.samples += len(prompts) * k
        self.stats.seconds += time.perf_counter() - t0
        return results
