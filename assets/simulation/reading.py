"""Multi-agent reading of long product information for the listwise decision (issue 3, item 7). No dagster
import; the simulation assets wire `decide_listwise_reading` in place of logic.decide_listwise when the switch
is on.

When an episode's listwise prompt does not fit a token budget, reader agents each take a consecutive slice of
its options and shortlist the best of them; a decider then chooses among the shortlisted options. Readers and
the decider use the same listwise template as the single prompt (templates.listwise_prompt over a subset:
labels restart at A), so no new wording and the untrusted text stays in the same quoted fields.

Score mode throughout (engine.label_logprobs, exact and deterministic); how the pieces combine into one
distribution over all options is written in decide_listwise_reading's docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from assets.prompts import logic as P
from assets.prompts import templates as T

N_LABELS = len(T.LABELS)  # the most options one listwise prompt (reader or decider) can label


@dataclass
class _Plan:
    """How one episode is decided: "empty" (no options), "single" (one prompt) or "read" (readers + decider)."""

    kind: str
    single_tokens: int | None = None  # tokens of the full listwise prompt (None: more options than labels)
    slices: list[list[int]] = field(default_factory=list)  # option positions of each reader's slice
    reader_lp: list[np.ndarray | None] = field(default_factory=list)  # per slice (None: no reader needed)
    short: list[int] = field(default_factory=list)  # shortlisted positions, in position order


def check_reading_args(budget_tokens: int, slice_size: int, shortlist: int, floor: float) -> None:
    """One-line ValueErrors for settings the reading cannot use."""
    if not budget_tokens > 0:
        raise ValueError(f"budget_tokens must be > 0, got {budget_tokens}")
    if not 2 <= slice_size <= N_LABELS:
        raise ValueError(
            f"slice_size must be 2 to {N_LABELS} (a reader labels its slice A..), got {slice_size}"
        )
    if not 1 <= shortlist < slice_size:
        raise ValueError(f"shortlist must be 1 to slice_size - 1 = {slice_size - 1}, got {shortlist}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor}")


def reading_slices(n: int, slice_size: int) -> list[list[int]]:
    """Consecutive slices of positions 0..n-1 of at most slice_size each (the last may be shorter)."""
    return [list(range(s, min(s + slice_size, n))) for s in range(0, n, slice_size)]


def top_positions(lp: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest log-probabilities (ties: the lower index), in index order."""
    order = sorted(range(len(lp)), key=lambda j: (-float(lp[j]), j))
    return sorted(order[:k])


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    if not math.isfinite(m):
        return m
    return m + math.log(float(np.exp(x - m).sum()))


def _score_groups(engine, groups: dict[int, list[str]]) -> dict[int, np.ndarray]:
    """label_logprobs of each group of prompts (one call per option count, labels A..); a 1-option group is
    0 without a call (the log-softmax over one label)."""
    out = {}
    for n, prompts in sorted(groups.items()):
        if n == 1:
            out[n] = np.zeros((len(prompts), 1))
        else:
            out[n] = np.asarray(engine.label_logprobs(prompts, list(T.LABELS[:n])), dtype=np.float64)
    return out


def _mean(xs: list[int]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def combine_reading(
    n: int, short: list[int], decider_lp: np.ndarray, dropped_lp: dict[int, float], floor: float
) -> np.ndarray:
    """Log-probabilities over n options: the shortlisted positions `short` share 1 - floor in proportion to
    exp(decider_lp); the dropped positions share floor in proportion to exp(their reader log-prob)."""
    u = np.full(n, -np.inf)
    d = np.asarray(decider_lp, dtype=np.float64)
    dropped = sorted(dropped_lp)
    keep = math.log1p(-floor) if dropped else 0.0  # nothing dropped: the shortlist holds all the mass
    u[short] = keep + d - _logsumexp(d)
    if dropped:
        r = np.array([dropped_lp[j] for j in dropped])
        u[dropped] = (math.log(floor) if floor > 0 else -np.inf) + r - _logsumexp(r)
    return u


def decide_listwise_reading(
    engine,
    eps: list[P.PromptEpisode],
    style: bool,
    signals: bool,
    budget_tokens: int = 512,
    slice_size: int = 5,
    shortlist: int = 2,
    floor: float = 0.05,
) -> tuple[list[np.ndarray], dict]:
    """Listwise utilities of every option of each episode, reading long option lists with reader agents.

    Per episode (options in position order):
    - the full listwise prompt (prompts.logic.listwise_pair) fits budget_tokens (len(engine.encode(prompt)))
      -> one prompt, exactly as logic.decide_listwise: utility = the label's log-probability. An episode over
      budget with no more than slice_size options is decided this way too (its one reader would be the same
      prompt).
    - otherwise (over budget, or more options than the 10 labels) -> reading: the options are split into
      consecutive slices of slice_size (the last may be shorter); one reader prompt per slice
      (templates.listwise_prompt over the slice) keeps its top `shortlist` options by label log-probability
      (ties: the lower position; a slice of <= shortlist options keeps all and needs no reader); the decider
      prompt lists the shortlisted options in position order and its label log-probabilities give q.
      The reading of these into one distribution over ALL options:
        p(shortlisted i) = (1 - floor) * q_i
        p(dropped j)     = floor * r_j / sum of r over all dropped options,
      with r_j = exp(j's log-probability in its reader's slice). The utilities returned are log p, so
      softmax(utilities) == p. The floor keeps the nll finite for an option the readers dropped (floor = 0
      gives them -inf, probability 0).
    - no options -> an empty array.

    Engine calls are batched over all of `eps` (pass a chunk): the single prompts grouped by option count,
    then all reader prompts grouped by slice length, then all decider prompts grouped by shortlist length;
    one label_logprobs call per group.

    Returns (utilities per episode in the episodes' option order, counts for metadata): n_episodes, n_single,
    n_read, n_over_budget (full prompt over budget or more than 10 options), n_reader_prompts,
    n_decider_prompts, mean_tokens_single (full prompts of episodes with 1 to 10 options), mean_tokens_reader,
    mean_tokens_decider (0.0 where there are none).
    """
    check_reading_args(budget_tokens, slice_size, shortlist, floor)
    plans: list[_Plan] = []
    single_tokens: list[int] = []
    for ep in eps:
        n = len(ep.options)
        if n == 0:
            plans.append(_Plan("empty"))
            continue
        tokens = None
        if n <= N_LABELS:
            tokens = len(engine.encode(P.listwise_pair(ep, style, signals)["prompt"]))
            single_tokens.append(tokens)
        if n <= N_LABELS and (tokens <= budget_tokens or n <= slice_size):
            plans.append(_Plan("single", tokens))
            continue
        slices = reading_slices(n, slice_size)
        m = sum(min(shortlist, len(s)) for s in slices)
        if m > N_LABELS:
            raise ValueError(
                f"episode {ep.episode.episode_id}: {n} options in {len(slices)} slices of {slice_size} shortlist "
                f"{m} options, more than the decider's {N_LABELS} labels: raise slice_size or lower shortlist"
            )
        plans.append(_Plan("read", tokens, slices))

    out: list[np.ndarray] = [np.zeros(0) for _ in eps]

    # single prompts, grouped by option count (as logic.decide_listwise)
    groups: dict[int, list[str]] = {}
    idx: dict[int, list[int]] = {}
    for i, (ep, plan) in enumerate(zip(eps, plans, strict=True)):
        if plan.kind == "single":
            groups.setdefault(len(ep.options), []).append(P.listwise_pair(ep, style, signals)["prompt"])
            idx.setdefault(len(ep.options), []).append(i)
    for n, lp in _score_groups(engine, groups).items():
        for i, row in zip(idx[n], lp, strict=True):
            out[i] = np.asarray(row, dtype=np.float64).copy()

    # readers: one prompt per slice of more than `shortlist` options, grouped by slice length
    groups, where = {}, {}
    reader_tokens: list[int] = []
    for i, (ep, plan) in enumerate(zip(eps, plans, strict=True)):
        if plan.kind != "read":
            continue
        plan.reader_lp = [None] * len(plan.slices)
        for k, s in enumerate(plan.slices):
            if len(s) <= shortlist:
                continue
            prompt = T.listwise_prompt(ep.customer, ep.episode, [ep.options[j] for j in s], style, signals)
            reader_tokens.append(len(engine.encode(prompt)))
            groups.setdefault(len(s), []).append(prompt)
            where.setdefault(len(s), []).append((i, k))
    for n, lp in _score_groups(engine, groups).items():
        for (i, k), row in zip(where[n], lp, strict=True):
            plans[i].reader_lp[k] = np.asarray(row, dtype=np.float64)

    # shortlists, then the decider prompts grouped by shortlist length
    groups, idx = {}, {}
    decider_tokens: list[int] = []
    for i, (ep, plan) in enumerate(zip(eps, plans, strict=True)):
        if plan.kind != "read":
            continue
        short = []
        for s, lp in zip(plan.slices, plan.reader_lp, strict=True):
            short.extend(s if lp is None else [s[j] for j in top_positions(lp, shortlist)])
        plan.short = sorted(short)
        prompt = T.listwise_prompt(
            ep.customer, ep.episode, [ep.options[j] for j in plan.short], style, signals
        )
        decider_tokens.append(len(engine.encode(prompt)))
        groups.setdefault(len(plan.short), []).append(prompt)
        idx.setdefault(len(plan.short), []).append(i)
    for n, lp in _score_groups(engine, groups).items():
        for i, row in zip(idx[n], lp, strict=True):
            plan = plans[i]
            kept = set(plan.short)
            dropped = {
                s[j]: float(r[j])
                for s, r in zip(plan.slices, plan.reader_lp, strict=True)
                if r is not None
                for j in range(len(s))
                if s[j] not in kept
            }
            out[i] = combine_reading(len(eps[i].options), plan.short, row, dropped, floor)

    stats = {
        "n_episodes": len(eps),
        "n_single": sum(p.kind == "single" for p in plans),
        "n_read": sum(p.kind == "read" for p in plans),
        "n_over_budget": sum(
            p.kind != "empty" and (p.single_tokens is None or p.single_tokens > budget_tokens) for p in plans
        ),
        "n_reader_prompts": len(reader_tokens),
        "n_decider_prompts": len(decider_tokens),
        "mean_tokens_single": _mean(single_tokens),
        "mean_tokens_reader": _mean(reader_tokens),
        "mean_tokens_decider": _mean(decider_tokens),
    }
    return out, stats
