"""Input augmentation with attention control (docs/design.md, mechanism 7): fill what an agent's observation
lacks and, under a token budget, keep the prompt fields that move the decision most. Plain functions, no
dagster import.

What is filled:
- demographics a customer lacks (customers.attributes: Complete Journey has them for about a third of the
  households), imputed from train-period behaviour where that beats the majority class (impute.py); the
  prompt marks the value: `income "middle" (estimated)`.
- the shelf's trend: its units in the 28 days before d against the 28 days before those, observed history
  (episode_purchases), rendered "4-week sales up 23%"; none without sales in either window or where the
  history is shorter than 56 days. trend_until="period" ends the windows at the start of the occasion's
  period (val, test) instead of at d, so no unit sold inside a simulated period is read (the trend then does
  not follow the mean field either; with "day" it reads the observed units of the period before d, as the
  market's other signals do without a mean field).
- the season (T.season, northern hemisphere) and the week before a US holiday (New Year, Easter, Memorial
  Day, July 4, Labor Day, Thanksgiving, Christmas: d within the 7 days ending on it).

Attention control: the optional fields (FIELDS, in reading order) can each be dropped from a prompt
(drop_fields). A field's influence = the mean total variation between an occasion's choice distribution
(softmax of the utilities over its set, OTHER left out: its constant is fitted after) with every field and
without that field, over a sample of val occasions; `kl` is the mean KL(full || dropped). Its cost = the mean
tokens it adds to a scored prompt (prefix + one option's suffix), counted with the engine's tokenizer when it
has one, else whitespace-separated words (AttentionResult.counter says which). Under a budget B (mean tokens
per scored prompt) select_fields keeps fields greedily by influence per token; the blind baseline keeps the
fields in reading order and truncates the rest. Both add a field only when the sample's actual prompts with
it stay within B (measured, not summed: fields interact). The model's attention weights are not used.

The switch: AugmentSettings given to fit_llm_engines (augment=..., None: off) or an Augmentation given to
LLMChoiceEngine / prompt_episodes; with None the prompts are today's, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from assets.market.impute import (  # noqa: F401 - augment's public names, as before the split
    BEHAVIOUR_COLUMNS,
    DemographicImputer,
    behaviour_features,
    fit_imputer,
    imputation_accuracy,
    impute_demographics,
    impute_missing,
    known_demographics,
    period_starts,
    train_end,
)
from assets.prompts import logic as P
from assets.prompts import templates as T
from resources.sql import load_sql

# The optional fields of a prompt in reading order (the blind baseline truncates from the end) and what
# dropping each blanks: in the customer (c), the episode (e) or every option (o). The shelf, the price and the
# question are always shown.
BLANKS: dict[str, tuple[str, dict[str, Any]]] = {
    "demographics": ("c", {"demographics": (), "estimated": (), "segment": None}),  # the segment stands in
    "style": ("c", {"style": ()}),
    "date": ("e", {"day": None}),
    "season": ("e", {"season": None, "holiday": None}),
    "trend": ("e", {"trend": None}),
    "history": ("c", {"show_history": False}),
    "top_brand": ("c", {"top_brand": None}),
    "mean_quantity": ("c", {"mean_quantity": None}),
    "description": ("o", {"description": None}),
    "brand": ("o", {"brand": None}),  # "brand bought" goes with it
    "attributes": ("o", {"attributes": ()}),
    "discount": ("o", {"discount_depth": None, "list_price": None}),
    "reference_price": ("o", {"ref_price": None, "ref_price_gap": None}),
    "brand_purchases": ("o", {"cust_brand_purchases": None}),
    "own_purchases": ("o", {"cust_product_purchases": None, "own_rank": None}),
    "popularity": ("o", {"pop_28d": None, "pop_rank": None}),
    "new_item": ("o", {"is_new": None}),
}
FIELDS = tuple(BLANKS)
PREFIX_FIELDS = tuple(f for f, (part, _) in BLANKS.items() if part != "o")
TREND_DAYS = 28  # the trend's window (the template says "4-week")
TREND_UNTIL = ("day", "period")
METHODS = ("knn", "logit")
SELECTIONS = ("influence", "blind")


@dataclass(frozen=True)
class AugmentSettings:
    """The knobs of fit_augmentation (a market config builds one)."""

    impute: bool = True  # fill missing demographics from train-period behaviour
    method: str = "knn"  # METHODS: k nearest neighbours or a multinomial logit on standardised behaviour
    neighbors: int = 15  # k of knn (at most the customers who have the field)
    min_known: int = 20  # a field is imputed only when at least this many customers with behaviour have it
    min_lift: float = 0.02  # ... and its k-fold accuracy beats the majority class by at least this much
    mix_categories: int = 12  # category shares of the most bought categories among the features
    folds: int = 5  # k-fold accuracy of the imputation (imputation_accuracy)
    context: bool = True  # add the shelf's 4-week trend, the season and a holiday week
    trend_until: str = (
        "day"  # TREND_UNTIL: windows end at d, or at the start of d's period (no in-period units)
    )
    token_budget: int = (
        0  # mean tokens per scored prompt (prefix + one option); 0: every field, nothing scored
    )
    selection: str = (
        "influence"  # SELECTIONS: by measured influence per token, or the blind truncation (ablation)
    )
    influence_occasions: int = 32  # val occasions (>= 2 options, seeded order) scored per dropped field
    fields: tuple[str, ...] = FIELDS  # the optional fields attention control chooses among
    seed: int = 0  # the folds and the sample of occasions

    def __post_init__(self) -> None:
        for name, value, allowed in (("method", self.method, METHODS), ("trend_until", self.trend_until,
                                     TREND_UNTIL), ("selection", self.selection, SELECTIONS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        unknown = set(self.fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; the optional fields are {FIELDS}")


# --- season, holidays, trends ---------------------------------------------------------------------------


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th (n >= 1) or last (n = -1) weekday (Monday 0) of a month."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def holidays(year: int) -> list[tuple[str, date]]:
    """US holidays with a shopping week before them."""
    from dateutil.easter import easter

    return [
        ("New Year", date(year, 1, 1)), ("Easter", easter(year)),
        ("Memorial Day", _nth_weekday(year, 5, 0, -1)), ("July 4", date(year, 7, 4)),
        ("Labor Day", _nth_weekday(year, 9, 0, 1)), ("Thanksgiving", _nth_weekday(year, 11, 3, 4)),
        ("Christmas", date(year, 12, 25)),
    ]  # fmt: skip


def holiday_week(d: date) -> str | None:
    """The holiday falling within the 7 days from d on (d itself included), or None."""
    for name, h in holidays(d.year) + holidays(d.year + 1):
        if 0 <= (h - d).days <= 6:
            return name
    return None


@dataclass
class CategoryTrends:
    """Units per category and day (observed history), read as a 4-week trend at any day."""

    days: dict[str, np.ndarray]  # category -> sorted day ordinals with sales
    cumulative: dict[str, np.ndarray]  # category -> cumulative units over those days
    first_day: int  # the history's first day (ordinal): no trend before first_day + 2 windows
    cutoffs: tuple[int, ...] = ()  # period starts (ordinals): windows end at the last one <= d, else at d

    @classmethod
    def from_frame(cls, units: pl.DataFrame, cutoffs: Iterable[date] = ()) -> CategoryTrends:
        """From rows category, day, units (select_category_day_units.sql)."""
        days, cum = {}, {}
        frame = units.filter(pl.col("category").is_not_null()).sort("category", "day")
        for (cat,), part in frame.group_by("category", maintain_order=True):
            days[cat] = np.array([d.toordinal() for d in part["day"].to_list()], dtype=np.int64)
            cum[cat] = np.cumsum(part["units"].cast(pl.Float64).to_numpy())
        first = min((int(d[0]) for d in days.values()), default=0)
        return cls(days, cum, first, tuple(sorted(d.toordinal() for d in cutoffs)))

    def units(self, category: str, start: int, end: int) -> float:
        """Units sold on the days start <= day < end (ordinals)."""
        if category not in self.days:
            return 0.0
        d, c = self.days[category], self.cumulative[category]
        i, j = np.searchsorted(d, start, "left"), np.searchsorted(d, end, "left")
        return float((c[j - 1] if j else 0.0) - (c[i - 1] if i else 0.0))

    def window_end(self, d: date) -> int:
        o = d.toordinal()
        return max((c for c in self.cutoffs if c <= o), default=o)

    def change(self, category: str | None, d: date | None) -> float | None:
        """units(last 28 days) / units(the 28 before) - 1; inf from none; None without data."""
        if category is None or d is None:
            return None
        end = self.window_end(d)
        if end - 2 * TREND_DAYS < self.first_day:
            return None
        cur = self.units(category, end - TREND_DAYS, end)
        prev = self.units(category, end - 2 * TREND_DAYS, end - TREND_DAYS)
        if prev <= 0:
            return math.inf if cur > 0 else None
        return cur / prev - 1.0


# --- prompt fields: added, dropped -----------------------------------------------------------------------


def drop_fields(ep: P.PromptEpisode, drop: Collection[str]) -> P.PromptEpisode:
    """The episode with the optional fields of `drop` (FIELDS) left out of its prompts (BLANKS)."""
    blank: dict[str, dict[str, Any]] = {"c": {}, "e": {}, "o": {}}
    for f in drop:
        part, values = BLANKS[f]
        blank[part].update(values)
    c, e, o = blank["c"], blank["e"], blank["o"]
    return replace(
        ep,
        customer=replace(ep.customer, **c) if c else ep.customer,
        episode=replace(ep.episode, **e) if e else ep.episode,
        options=[replace(x, **o) for x in ep.options] if o else ep.options,
    )


@dataclass
class Augmentation:
    """What fit_augmentation fitted; apply() turns prompt contexts into augmented ones."""

    demographics: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # imputed, by customer
    trends: CategoryTrends | None = None  # the shelves' trends (None: not shown)
    season: bool = False  # show the season and a holiday week
    keep: frozenset[str] | None = None  # the optional fields shown (None: all)
    settings: AugmentSettings | None = None
    accuracy: pl.DataFrame | None = None  # imputation_accuracy's table
    ranking: pl.DataFrame | None = None  # AttentionResult.ranking
    summary: pl.DataFrame | None = None  # AttentionResult.summary
    counter: str = ""  # how tokens were counted ("tokenizer" / "whitespace"; "" when not measured)

    def apply(self, eps: list[P.PromptEpisode]) -> list[P.PromptEpisode]:
        """The episodes with imputed demographics (marked estimated), trend and season, and only the kept
        fields."""
        drop = set() if self.keep is None else set(FIELDS) - set(self.keep)
        out = []
        for ep in eps:
            c, e = ep.customer, ep.episode
            add = self.demographics.get(c.customer_id, ())
            have = {k for k, _ in c.demographics}
            new = tuple((k, v) for k, v in add if k not in have)
            if new:
                c = replace(c, demographics=c.demographics + new, estimated=tuple(k for k, _ in new))
            ec: dict[str, Any] = {}
            if self.season and e.day is not None:
                ec.update(season=T.season(e.day), holiday=holiday_week(e.day))
            if self.trends is not None:
                ec["trend"] = self.trends.change(e.category, e.day)
            ep = replace(ep, customer=c, episode=replace(e, **ec) if ec else e)
            out.append(drop_fields(ep, drop) if drop else ep)
        return out

    def metadata(self) -> dict[str, Any]:
        """Scalars for the engine's info (prefix augment/)."""
        s = self.settings or AugmentSettings()
        meta: dict[str, Any] = {
            "augment/impute": s.impute, "augment/context": s.context, "augment/trend_until": s.trend_until,
            "augment/token_budget": s.token_budget, "augment/selection": s.selection,
            "augment/imputed_customers": len(self.demographics),
            "augment/imputed_values": sum(len(v) for v in self.demographics.values()),
            "augment/kept": ",".join(f for f in FIELDS if self.keep is None or f in self.keep),
        }  # fmt: skip
        for r in self.accuracy.iter_rows(named=True) if self.accuracy is not None else ():
            meta[f"augment/accuracy/{r['field']}"] = round(r["accuracy"], 4)
            meta[f"augment/baseline/{r['field']}"] = round(r["baseline"], 4)
        for r in self.summary.iter_rows(named=True) if self.summary is not None else ():
            meta[f"augment/tokens/{r['policy']}"] = round(r["tokens_per_prompt"], 2)
            meta[f"augment/tv_vs_full/{r['policy']}"] = round(r["tv_vs_full"], 5)
        if self.counter:
            meta["augment/token_counter"] = self.counter
        return meta


# --- attention control ----------------------------------------------------------------------------------


def token_counter(engine: Any) -> tuple[Callable[[list[str]], list[int]], str]:
    """(count, kind): the engine's tokenizer when it has one ("tokenizer"), else whitespace words."""
    tok = getattr(engine, "tokenizer", None)
    if tok is not None and callable(tok):
        return (lambda texts: P.count_tokens(tok, texts)), "tokenizer"
    return (lambda texts: [len(t.split()) for t in texts]), "whitespace"


def _items(eps, drop, style, signals) -> list[tuple[str, list[str]]]:
    from assets.simulation.decide import utility_items

    return utility_items([drop_fields(ep, drop) for ep in eps] if drop else eps, style, signals)


class _Scorer:
    """Utilities and token counts of utility items, each prompt text scored / counted once."""

    def __init__(self, engine, cache: dict[bytes, float] | None, chunk: int, count) -> None:
        self.engine, self.chunk, self.count = engine, max(1, chunk), count
        self.cache = {} if cache is None else cache
        self.tokens: dict[str, int] = {}
        self.scored = 0

    def utilities(self, items: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        from assets.market.llm import prompt_key

        keys = [[prompt_key(p + s) for s in ss] for p, ss in items]
        todo: dict[str, list[tuple[bytes, str]]] = {}
        seen: set[bytes] = set()
        for (p, ss), ks in zip(items, keys, strict=True):
            for s, k in zip(ss, ks, strict=True):
                if k not in self.cache and k not in seen:
                    seen.add(k)
                    todo.setdefault(p, []).append((k, s))
        groups = list(todo.items())
        for i in range(0, len(groups), self.chunk):
            part = groups[i : i + self.chunk]
            res = self.engine.score_many([(p, [s for _, s in ks]) for p, ks in part], progress=False)
            for (_, ks), us in zip(part, res, strict=True):
                for (k, _), v in zip(ks, us, strict=True):
                    self.cache[k] = float(v)
        self.scored += len(seen)
        return [np.array([self.cache[k] for k in ks], dtype=np.float64) for ks in keys]

    def tokens_per_prompt(self, items: list[tuple[str, list[str]]]) -> float:
        """Mean tokens of prefix + suffix over every scored prompt of `items`."""
        new = list({t for p, ss in items for t in (p, *ss) if t not in self.tokens})
        self.tokens.update(zip(new, self.count(new), strict=True))
        n = sum(len(ss) for _, ss in items)
        total = sum(self.tokens[p] * len(ss) + sum(self.tokens[s] for s in ss) for p, ss in items)
        return total / n if n else 0.0


def _probs(u: np.ndarray) -> np.ndarray:
    u = np.where(np.isfinite(u), u, -np.inf)
    e = np.exp(u - u.max())
    return e / e.sum()


def _distances(full: list[np.ndarray], other: list[np.ndarray]) -> tuple[float, float]:
    """Mean total variation and mean KL(full || other) of the occasions' within-set choice distributions."""
    tv, kl = [], []
    for a, b in zip(full, other, strict=True):
        p, q = _probs(a), _probs(b)
        tv.append(0.5 * float(np.abs(p - q).sum()))
        kl.append(
            float(
                np.sum(
                    np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))), 0.0)
                )
            )
        )
    return (float(np.mean(tv)), float(np.mean(kl))) if tv else (0.0, 0.0)


def select_fields(ranking: pl.DataFrame, budget: float, measure: Callable[[list[str]], float]) -> list[str]:
    """Greedy by influence per token (ranking's ratio; ties: fewer tokens, then reading order): each field is
    kept when the prompts with it and the fields kept before it measure (`measure`: mean tokens per prompt
    with those fields shown) within `budget`. Measured, not summed: fields interact (an attribute already in
    the description is not repeated, so dropping the description lengthens the attributes)."""
    order = sorted(
        ranking.iter_rows(named=True), key=lambda r: (-r["ratio"], r["tokens"], FIELDS.index(r["field"]))
    )
    kept: list[str] = []
    for r in order:
        if measure([*kept, r["field"]]) <= budget:
            kept.append(r["field"])
    return kept


def blind_fields(ranking: pl.DataFrame, budget: float, measure: Callable[[list[str]], float]) -> list[str]:
    """The blind baseline: fields in reading order until the first that does not fit; the rest truncated."""
    kept: list[str] = []
    for f in sorted(ranking["field"].to_list(), key=FIELDS.index):
        if measure([*kept, f]) > budget:
            break
        kept.append(f)
    return kept


@dataclass
class AttentionResult:
    """attention_control's answer."""

    ranking: pl.DataFrame  # field, part, influence (TV), kl, tokens, ratio, kept, kept_blind; by influence
    summary: pl.DataFrame  # policy (full, influence, blind, none), n_fields, tokens_per_prompt, tv_vs_full
    keep: frozenset[str]  # influence per token under the budget
    keep_blind: frozenset[str]  # the blind truncation under the budget
    counter: str  # "tokenizer" or "whitespace"
    n_occasions: int
    n_scored: int  # prompts the engine scored (the rest came from the cache)


def attention_control(
    engine: Any, eps: list[P.PromptEpisode], budget: float, fields: tuple[str, ...] = FIELDS,
    include_style: bool = True, include_signals: bool = True, cache: dict[bytes, float] | None = None,
    chunk_occasions: int = 64,
) -> AttentionResult:  # fmt: skip
    """Each field's influence on the choice distributions of `eps` (augmented contexts, every field shown)
    and the fields kept under `budget` (mean tokens per scored prompt), by influence per token and by the
    blind truncation (module docstring). `cache` (prompt_key -> utility, e.g. LLMChoiceEngine.cache) is read
    and filled. Fields outside `fields` are always kept."""
    count, kind = token_counter(engine)
    sc = _Scorer(engine, cache, chunk_occasions, count)
    fixed = [f for f in FIELDS if f not in fields]
    none_drop = set(fields)
    items_full = _items(eps, (), include_style, include_signals)
    full_tokens = sc.tokens_per_prompt(items_full)
    base_tokens = sc.tokens_per_prompt(_items(eps, none_drop, include_style, include_signals))
    if budget < base_tokens:
        raise ValueError(
            f"token budget {budget} is below the {base_tokens:.1f} tokens per prompt left with every "
            f"optional field dropped ({kind} count; {full_tokens:.1f} with all)"
        )
    u_full = sc.utilities(items_full)
    rows = []
    for f in fields:
        items = _items(eps, {f}, include_style, include_signals)
        tokens = full_tokens - sc.tokens_per_prompt(items)
        tv, kl = _distances(u_full, sc.utilities(items)) if items != items_full else (0.0, 0.0)
        part = "prefix" if f in PREFIX_FIELDS else "option"
        rows.append((f, part, tv, kl, tokens, tv / tokens if tokens > 0 else math.inf if tv > 0 else 0.0))
    ranking = pl.DataFrame(
        rows, schema={"field": pl.Utf8, "part": pl.Utf8, "influence": pl.Float64, "kl": pl.Float64,
                      "tokens": pl.Float64, "ratio": pl.Float64}, orient="row",
    )  # fmt: skip

    def measure(kept: list[str]) -> float:
        return sc.tokens_per_prompt(_items(eps, none_drop - set(kept), include_style, include_signals))

    keep = select_fields(ranking, budget, measure)
    keep_blind = blind_fields(ranking, budget, measure)
    summary = []
    for policy, kept in (("full", list(fields)), ("influence", keep), ("blind", keep_blind), ("none", [])):
        items = _items(eps, none_drop - set(kept), include_style, include_signals)
        tv = _distances(u_full, sc.utilities(items))[0] if items != items_full else 0.0
        summary.append((policy, len(kept), sc.tokens_per_prompt(items), tv))
    summary_frame = pl.DataFrame(
        summary, schema={"policy": pl.Utf8, "n_fields": pl.Int64, "tokens_per_prompt": pl.Float64,
                         "tv_vs_full": pl.Float64}, orient="row",
    )  # fmt: skip
    ranking = ranking.with_columns(
        kept=pl.col("field").is_in(keep), kept_blind=pl.col("field").is_in(keep_blind)
    ).sort(["influence", "ratio"], descending=True, maintain_order=True)
    return AttentionResult(
        ranking,
        summary_frame,
        frozenset(keep + fixed),
        frozenset(keep_blind + fixed),
        kind,
        len(eps),
        sc.scored,
    )


# --- fitting --------------------------------------------------------------------------------------------


def influence_sample(products: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """The option rows (no OTHER) of the n occasions with at least 2 options and the smallest
    md5("{seed}|{occasion_id}")."""
    from assets.market.metrics import OTHER

    prod = products.filter(pl.col("product_id") != OTHER)
    sizes = prod.group_by("occasion_id").len().filter(pl.col("len") >= 2)["occasion_id"].to_list()
    keep = sorted(sizes, key=lambda o: P.seeded_key(seed, o))[: max(n, 0)]
    return prod.filter(pl.col("occasion_id").is_in(keep))


def fit_augmentation(
    conn, settings: AugmentSettings, frame: pl.DataFrame | None = None, llm: Any = None,
    log: Callable[[str], Any] = print,
) -> Augmentation:  # fmt: skip
    """The Augmentation of `settings` for the warehouse: demographics imputed from the train period's
    behaviour (impute_demographics), the shelves' trends and the season, and with a token budget the fields
    kept by attention_control on influence_sample(frame) (val option rows) with `llm` (an LLMChoiceEngine:
    its engine, prompt context, switches and cache)."""
    aug = Augmentation(settings=settings)
    starts = period_starts(conn)
    if settings.impute:
        until = min((d for p, d in starts.items() if p != "train"), default=None)
        aug.demographics, aug.accuracy = impute_demographics(conn, settings, until, log)
    if settings.context:
        cutoffs = [d for p, d in starts.items() if p != "train"] if settings.trend_until == "period" else []
        units = conn.sql(load_sql("market/select_category_day_units")).pl()
        aug.trends, aug.season = CategoryTrends.from_frame(units, cutoffs), True
    if settings.token_budget > 0:
        if llm is None or frame is None:
            raise ValueError(
                "a token budget needs the LLM engine and val option rows to measure influence on"
            )
        from assets.market.llm import prompt_episodes

        sample = influence_sample(frame, settings.influence_occasions, settings.seed)
        eps = prompt_episodes(sample, llm.context, aug)  # keep is None: every field
        res = attention_control(
            llm.engine, eps, settings.token_budget, settings.fields, llm.include_style, llm.include_signals,
            cache=llm.cache, chunk_occasions=llm.chunk_occasions,
        )  # fmt: skip
        aug.keep = res.keep if settings.selection == "influence" else res.keep_blind
        aug.ranking, aug.summary, aug.counter = res.ranking, res.summary, res.counter
        said = [f"{r['policy']} {r['tokens_per_prompt']:.0f} tokens, TV {r['tv_vs_full']:.3f}"
                for r in res.summary.iter_rows(named=True)]  # fmt: skip
        log(
            f"augment: influence of {len(settings.fields)} fields on {res.n_occasions} val occasions "
            f"({res.n_scored} prompts scored); budget {settings.token_budget} tokens per prompt "
            f"({res.counter}), {settings.selection} keeps {len(aug.keep)} fields; {'; '.join(said)}"
        )
    return aug
