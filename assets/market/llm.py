"""The language model as a market engine (engine.py): the retail agent's utility form on the market's sets,
and its calibrated hybrid with a classic model. Plain functions and classes, no dagster import.

LLMChoiceEngine (an occasion = its consideration set plus the outside option OTHER):
- prompts: the retail agent's, by the same code. The option rows become the frames build_prompt_rows reads
  (prompts/logic.py episodes_from_frames: customer_context, option_context, with_set_ranks over the set in
  set_rank order), then simulation/decide.py utility_items; product texts stay in the quoted fields. What the
  rows lack is read once (MarketPromptContext): select_prompt_customers' row per customer, description, brand,
  attributes per product, the top brand per occasion (select_prompt_top_brands: observed history before d,
  not the simulated one). The history line (past trips, mean units) comes from the rows (max of
  cust_category_purchases, cust_mean_qty per occasion, as select_prompt_customers reads option_features), so
  it follows the mean field. Its expected counts (pop_28d, cust_product/brand_purchases) are rounded before
  the prompt (option_context would truncate 0.6 sold to none); observed counts are integers already.
- utility: log P("Yes") - log P("No") (Engine.score_many, one item per occasion, chunk_occasions per call,
  progress through `log`). OTHER: a constant per category fitted by penalised ML on val market occasions as
  the classic engines' (classic.fit_other_constant: N(global, prior_sd^2) prior, global where a category is
  absent). The LLM's utilities keep their own scale (no temperature). prob: softmax over the set plus OTHER.
- expected_qty: classic.py's rule (product_qty; OTHER: OtherQuantity). The market does not ask the quantity
  per option; quantity="llm_top" asks it of each occasion's top option only (decide.quantity_distributions,
  as retail_decisions does) and puts the answer's mean (the expectation the market adds up) on that row.
- cache: utility by prompt text (128-bit blake2b digest of prefix + suffix), so the mean field's passes score
  only options whose prompt changed (a signal or rank in the option line; the history line is in the prefix
  and changes the whole occasion). stats() gives the hit rate. With a `store_key` (model_key of the model,
  adapter and dtype) the cache also lives in the warehouse table market_llm_cache: load(conn) reads the
  entries of that key, save(conn) appends the new ones, so a what-if after the market simulation, or a second
  materialization, scores only the prompts it has not seen with the same model.

- augment (augment.py, docs/design.md mechanism 7; None: off): an Augmentation applied to the prompt contexts
  (prompt_episodes): imputed demographics marked "(estimated)", the shelf's 4-week trend, the season and a
  holiday week, and under a token budget only the fields of largest measured influence per token.
  fit_llm_engines(augment=AugmentSettings(...)) fits it before the val scoring.

HybridChoiceEngine: u = a u_llm + b s_base (s_base = ClassicEngine.scores, raw); (a, b) by
calibration.fit_hybrid on the sampled val market occasions whose actual product is in the set (the choice
within the set, as on episodes), then OTHER's constants refitted on the hybrid's utilities of all of them.
llm_signals (LLM_SIGNALS, both engines): "mean_field" (the LLM reads the mean field's signals and re-scores every
prompt they change, nearly all of them at every pass) or "observed": run_mean_field enters `observing(options)`,
the LLM's utilities are scored once on the options as given (observed signals; a scenario's prices and new
products included) and held for the run: the hybrid's mean field moves its classic half only, the LLM alone
reads no market feedback. A what-if then scores only the prompts its interventions change (the cache holds the
rest): the fast path on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from assets.market import classic as C
from assets.market.engine import ChoiceEngine, with_other_rows
from assets.market.metrics import OTHER
from assets.market.occasions import build_market_occasions
from assets.prompts import logic as P
from assets.prompts import templates as T
from assets.simulation.calibration import HybridFit, fit_hybrid, hybrid_name
from assets.simulation.decide import quantity_distributions, top_index, utility_items
from resources.sql import load_sql
from resources.warehouse import table_exists

if TYPE_CHECKING:
    from assets.market.augment import Augmentation, AugmentSettings

QUANTITIES = ("rule", "llm_top")  # expected_qty: classic's rule; or the LLM's answer for the top option
# what the LLM engines read inside a mean-field run: the signals of the mean field (re-scored at every pass
# where a prompt changes) or those of the options as given (scored once per run: what-ifs on a CPU)
LLM_SIGNALS = ("mean_field", "observed")
COUNTS = ("pop_28d", "cust_product_purchases", "cust_brand_purchases")  # rounded before the prompt
OPTION_COLUMNS = ("price", "list_price", "discount_depth", "ref_price", "ref_price_gap", "is_new", *COUNTS)
PRODUCT_COLUMNS = ("description", "brand", "attributes")
OCCASION_COLUMNS = ("customer_id", "category", "day")


def check_llm_signals(value: str) -> None:
    """A one-line ValueError unless `value` is one of LLM_SIGNALS (the llm_signals setting)."""
    if value not in LLM_SIGNALS:
        raise ValueError(f"llm_signals {value!r}: use one of {', '.join(LLM_SIGNALS)}")


def prompt_key(text: str) -> bytes:
    """The cache key of a prompt: the 128-bit blake2b digest of its text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


CACHE_TABLE = "market_llm_cache"
MODEL_INFO_FIELDS = ("backend", "model", "adapter", "adapter_sha256", "dtype")


def model_key(info: dict[str, Any]) -> str:
    """The persistent cache's key of a model: 16 hex digits of the sha256 of MODEL_INFO_FIELDS of `info`
    (what changes a score: the backend, the model, the adapter's weights, the dtype; batch size does not)."""
    text = json.dumps({k: str(info.get(k, "")) for k in MODEL_INFO_FIELDS}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- what the prompts need from the warehouse ----------------------------------------------------------


@dataclass
class MarketPromptContext:
    """What the options' rows do not carry (module docstring). Fill it with add_market(conn) for every market
    whose occasions an engine will decide."""

    customers: pl.DataFrame | None = None  # customer_id, segment, attributes, the style columns
    products: pl.DataFrame | None = None  # product_id, description, brand, attributes
    cuts: dict[str, tuple[float, float]] = field(default_factory=dict)  # style tertiles (P.style_cuts)
    top_brands: dict[str, str | None] = field(default_factory=dict)  # occasion_id -> top brand (None: none)

    def add_market(self, conn) -> MarketPromptContext:
        """Add the occasions of the warehouse's current market_occasions (and their customers); the products
        and the style cut points are read on the first call."""
        conn.execute(
            "create or replace temp table prompt_episodes as "
            "select occasion_id as episode_id, customer_id, category, day from market_occasions"
        )
        try:
            brands = dict(conn.sql(load_sql("prompts/select_prompt_top_brands")).fetchall())
            ids = [r[0] for r in conn.execute("select episode_id from prompt_episodes").fetchall()]
            cust = conn.sql(load_sql("prompts/select_prompt_customers")).pl()
        finally:
            conn.execute("drop table if exists prompt_episodes")
        cust = cust.drop("episode_id", "n_category_episodes", "mean_quantity").unique(
            "customer_id", keep="first"
        )
        self.customers = (
            cust if self.customers is None else pl.concat([self.customers, cust]).unique("customer_id")
        )
        self.top_brands |= {i: brands.get(i) for i in ids}
        if self.products is None:
            prods = conn.sql("select * from products").pl()  # a hand-made warehouse may lack the texts
            self.products = prods.select("product_id", *[_col(prods, c, pl.Utf8) for c in PRODUCT_COLUMNS])
            self.cuts = P.style_cuts(conn)
        return self


def _col(frame: pl.DataFrame, name: str, dtype=None) -> pl.Expr:
    e = pl.col(name) if name in frame.columns else pl.lit(None)
    return (e.cast(dtype) if dtype is not None else e).alias(name)


def prompt_episodes(
    products: pl.DataFrame, ctx: MarketPromptContext, augment: Augmentation | None = None
) -> list[P.PromptEpisode]:
    """The occasions of `products` (option rows of load_market_frame, no OTHER) as the retail agent's prompt
    contexts, options in set_rank order (occasions in first-seen order). `augment` (augment.py's fitted
    Augmentation): imputed demographics, the shelf's trend and the season added and only its kept fields
    shown; None: today's contexts."""
    missing = [c for c in ("occasion_id", "product_id", *OCCASION_COLUMNS) if c not in products.columns]
    if missing:
        raise ValueError(f"the options lack {missing}: pass load_market_frame's rows")
    if ctx.products is None or ctx.customers is None:
        raise ValueError("the prompt context is empty: call MarketPromptContext.add_market(conn) first")
    rows = products.with_columns(
        *[_col(products, c, pl.Float64).round(0) for c in (*COUNTS, "cust_category_purchases")],
        _col(products, "cust_mean_qty", pl.Float64).fill_nan(None),
    )
    if "set_rank" in rows.columns:
        rows = rows.sort("set_rank", maintain_order=True).sort("occasion_id", maintain_order=True)
    occ = rows.group_by("occasion_id", maintain_order=True).agg(
        *[pl.col(c).first() for c in OCCASION_COLUMNS],
        n_category_episodes=pl.col("cust_category_purchases").max(),
        mean_quantity=pl.col("cust_mean_qty").max(),
    )
    unknown = occ.filter(~pl.col("occasion_id").is_in(list(ctx.top_brands)))
    if unknown.height:
        raise ValueError(
            f"{unknown.height} occasions (e.g. {unknown['occasion_id'][0]!r}) are not in the prompt context: "
            "call add_market(conn) after building their market"
        )
    episodes = occ.select(
        pl.col("occasion_id").alias("episode_id"), *OCCASION_COLUMNS, chosen_product_id=pl.lit(""), quantity=1
    )
    customers = occ.select(
        pl.col("occasion_id").alias("episode_id"), "customer_id", "n_category_episodes", "mean_quantity"
    ).join(ctx.customers, on="customer_id", how="left", maintain_order="left")
    options = rows.select(
        pl.col("occasion_id").alias("episode_id"), "product_id", *[_col(rows, c) for c in OPTION_COLUMNS]
    ).join(ctx.products, on="product_id", how="left", maintain_order="left")
    eps = P.episodes_from_frames("market", episodes, customers, ctx.top_brands, options, ctx.cuts)
    return eps if augment is None else augment.apply(eps)


# --- decisions -----------------------------------------------------------------------------------------


def _aligned(products: pl.DataFrame, u: dict[tuple[str, str], float]) -> np.ndarray:
    """The utilities of `u` in the order of the rows of `products`."""
    pairs = zip(products["occasion_id"].to_list(), products["product_id"].to_list(), strict=True)
    return np.array([u[p] for p in pairs], dtype=np.float64)


def market_decisions(
    opts: pl.DataFrame, products: pl.DataFrame, u: np.ndarray, top_qty: dict[tuple[str, str], float],
    other_constant: float, other_by_category: dict[str, float], other_qty: C.OtherQuantity,
) -> pl.DataFrame:  # fmt: skip
    """DECISIONS_SCHEMA rows: the products with utilities `u` (row order) and expected_qty by the rule, or
    from `top_qty` on the rows it names; OTHER per occasion with its constant and quantity; prob = softmax."""
    prod = products.with_columns(
        utility=pl.Series(u, dtype=pl.Float64), expected_qty=C.product_qty(products.columns)
    )
    if top_qty:
        tq = pl.DataFrame(
            [(o, p, q) for (o, p), q in top_qty.items()], schema=[*C.KEYS, "q_top"], orient="row"
        ).with_columns(pl.col("q_top").cast(pl.Float64))
        prod = prod.join(tq, on=C.KEYS, how="left").with_columns(
            expected_qty=pl.coalesce(pl.when(pl.col("q_top") > 0).then("q_top"), "expected_qty")
        )
    occ = C._occasions(opts)
    kw = {"default": other_constant, "return_dtype": pl.Float64}  # the global constant where no category's
    u_other = _col(occ, "category", pl.Utf8).replace_strict(other_by_category, **kw)
    q_other = other_qty.per_occasion(occ)
    other = occ.select("occasion_id", product_id=pl.lit(OTHER), utility=u_other, expected_qty=q_other)
    cols = ["occasion_id", "product_id", "utility", "expected_qty"]
    return C._decisions(pl.concat([prod.select(cols), other.select(cols)]))


@dataclass(eq=False)
class LLMChoiceEngine(ChoiceEngine):
    """The retail agent's utility form as a market engine (module docstring)."""

    engine: Any  # resources.engine.Engine: score_many (and label_logprobs for quantity="llm_top")
    context: MarketPromptContext
    other_constant: float = 0.0  # OTHER's utility where its category has no constant of its own
    other_by_category: dict[str, float] = field(default_factory=dict)
    other_qty: C.OtherQuantity = field(default_factory=C.OtherQuantity)
    include_style: bool = True  # the retail agent's switches (False: the ablations' prompts)
    include_signals: bool = True
    quantity: str = "rule"  # QUANTITIES
    qty_engine: Any = None  # the model answering the quantity question (None: `engine`)
    chunk_occasions: int = 64  # occasions per score_many call (one progress step)
    log: Callable[[str], Any] | None = None  # progress lines while scoring (None: silent)
    log_every_s: float = 30.0
    name: str = "llm"
    info: dict[str, Any] = field(default_factory=dict)
    store_key: str = ""  # the warehouse cache's key (model_key); "" = the cache lives in memory only
    augment: Augmentation | None = None  # input augmentation (augment.py); None: today's prompts
    llm_signals: str = "mean_field"  # LLM_SIGNALS: what the utilities read inside a mean-field run

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {QUANTITIES}, got {self.quantity!r}")
        check_llm_signals(self.llm_signals)
        self._held: tuple[list[P.PromptEpisode], dict[tuple[str, str], float]] | None = None
        self.cache: dict[bytes, float] = {}
        self.qty_cache: dict[bytes, float] = {}
        self._stored: set[tuple[str, bytes]] = set()  # (kind, key) already in the warehouse
        self.counts = dict.fromkeys(("lookups", "hits", "scored", "qty_lookups", "qty_hits", "qty_scored"), 0)
        self.counts["loaded"] = 0
        self.seconds = 0.0

    def _caches(self) -> dict[str, dict[bytes, float]]:
        return {"utility": self.cache, "qty": self.qty_cache}

    def load(self, conn) -> int:
        """Read the warehouse cache's entries of store_key into the memory caches; the number read."""
        if not self.store_key or not table_exists(conn, CACHE_TABLE):
            return 0
        rows = conn.execute(
            f"select kind, prompt_key, value from {CACHE_TABLE} where engine_key = ?", [self.store_key]
        ).fetchall()
        caches = self._caches()
        for kind, key, value in rows:
            if kind in caches:
                caches[kind][bytes(key)] = float(value)
                self._stored.add((kind, bytes(key)))
        self.counts["loaded"] += len(rows)
        return len(rows)

    def save(self, conn) -> int:
        """Append the memory caches' entries the warehouse does not hold yet (under store_key); the number."""
        if not self.store_key:
            return 0
        new = [
            (self.store_key, kind, key, value)
            for kind, cache in self._caches().items()
            for key, value in cache.items()
            if (kind, key) not in self._stored
        ]
        if not new:
            return 0
        conn.execute(load_sql(f"market/{CACHE_TABLE}"))
        frame = pl.DataFrame(
            new, schema={"engine_key": pl.Utf8, "kind": pl.Utf8, "prompt_key": pl.Binary, "value": pl.Float64},
            orient="row",
        )  # fmt: skip
        conn.register("staged_market_llm_cache", frame.to_arrow())
        try:
            conn.execute(load_sql("market/insert_market_llm_cache"))
        finally:
            conn.unregister("staged_market_llm_cache")
        self._stored.update((kind, key) for _, kind, key, _ in new)
        return len(new)

    def prompts(self, options: pl.DataFrame) -> pl.DataFrame:
        """occasion_id, product_id, prefix, suffix of every product row of `options` (what is scored)."""
        eps = prompt_episodes(options.filter(pl.col("product_id") != OTHER), self.context, self.augment)
        items = utility_items(eps, self.include_style, self.include_signals)
        rows = [
            (ep.episode.episode_id, o.product_id, p, s)
            for ep, (p, ss) in zip(eps, items, strict=True)
            for o, s in zip(ep.options, ss, strict=True)
        ]
        return pl.DataFrame(rows, schema=[*C.KEYS, "prefix", "suffix"], orient="row")

    def utilities(self, products: pl.DataFrame) -> tuple[list[P.PromptEpisode], dict[tuple[str, str], float]]:
        """The prompt contexts of `products` (no OTHER rows) and (occasion_id, product_id) -> LLM utility,
        scoring only prompts not in the cache."""
        eps = prompt_episodes(products, self.context, self.augment)
        items = utility_items(eps, self.include_style, self.include_signals)
        keys = [[prompt_key(p + s) for s in ss] for p, ss in items]
        todo: dict[bytes, tuple[str, str]] = {}
        for (p, ss), ks in zip(items, keys, strict=True):
            for s, k in zip(ss, ks, strict=True):
                if k not in self.cache and k not in todo:
                    todo[k] = (p, s)
        n = sum(len(ks) for ks in keys)
        self.counts["lookups"] += n
        self.counts["hits"] += n - len(todo)
        self._score(todo)
        u = {
            (ep.episode.episode_id, o.product_id): self.cache[k]
            for ep, ks in zip(eps, keys, strict=True)
            for o, k in zip(ep.options, ks, strict=True)
        }
        return eps, u

    def _score(self, todo: dict[bytes, tuple[str, str]]) -> None:
        """Score the prompts of `todo` (key -> (prefix, suffix)), one item per prefix, into the cache."""
        if not todo:
            return
        by_prefix: dict[str, list[tuple[bytes, str]]] = {}
        for k, (p, s) in todo.items():
            by_prefix.setdefault(p, []).append((k, s))
        groups = list(by_prefix.items())
        t0 = last = time.perf_counter()
        for i in range(0, len(groups), max(1, self.chunk_occasions)):
            chunk = groups[i : i + max(1, self.chunk_occasions)]
            res = self.engine.score_many([(p, [s for _, s in ks]) for p, ks in chunk], progress=False)
            for (_, ks), us in zip(chunk, res, strict=True):
                for (k, _), v in zip(ks, us, strict=True):
                    self.cache[k] = float(v)
            now, done = time.perf_counter(), i + len(chunk)
            if self.log and (now - last >= self.log_every_s or done == len(groups)):
                self.log(
                    f"{self.name}: scored {done}/{len(groups)} occasions' new prompts "
                    f"({len(todo)} options), {done / max(now - t0, 1e-9):.2f} occasions/s"
                )
                last = now
        self.counts["scored"] += len(todo)
        self.seconds += time.perf_counter() - t0

    def top_quantities(
        self, eps: list[P.PromptEpisode], u: dict[tuple[str, str], float]
    ) -> dict[tuple[str, str], float]:
        """(occasion_id, product_id) of each occasion's top option by `u` (ties: the smaller product_id) ->
        the mean of the quantity answer's distribution over 1..9, cached by prompt text."""
        st, sig = self.include_style, self.include_signals
        tops: list[int] = []
        keys: list[bytes] = []
        for ep in eps:
            tops.append(
                top_index(ep, np.array([u[(ep.episode.episode_id, o.product_id)] for o in ep.options]))
            )
            keys.append(prompt_key(T.quantity_prompt(ep.customer, ep.episode, ep.options[tops[-1]], st, sig)))
        todo = list({k: i for i, k in enumerate(keys) if k not in self.qty_cache}.values())  # one per prompt
        t0 = time.perf_counter()
        step = max(1, self.chunk_occasions)
        for i in range(0, len(todo), step):
            part = todo[i : i + step]
            res = quantity_distributions(
                self.qty_engine or self.engine, [eps[j] for j in part], [tops[j] for j in part], st, sig
            )
            for j, (mean, _median) in zip(part, res, strict=True):
                self.qty_cache[keys[j]] = mean
        self.seconds += time.perf_counter() - t0
        self.counts["qty_lookups"] += len(keys)
        self.counts["qty_hits"] += len(keys) - len(todo)
        self.counts["qty_scored"] += len(todo)
        return {
            (ep.episode.episode_id, ep.options[t].product_id): self.qty_cache[k]
            for ep, t, k in zip(eps, tops, keys, strict=True)
        }

    @contextmanager
    def hold(self, options: pl.DataFrame) -> Iterator[None]:
        """The utilities of `options`' product rows scored once and held while the block runs: held_utilities
        (and so decide) answers from them, whatever signals the rows it is given carry."""
        self._held = self.utilities(with_other_rows(options).filter(pl.col("product_id") != OTHER))
        try:
            yield
        finally:
            self._held = None

    def observing(self, options: pl.DataFrame) -> AbstractContextManager[None]:
        """run_mean_field enters this: with llm_signals "observed" the utilities are held at the options as the
        mean field gets them (observed signals, a scenario's prices and new products included), so its passes
        score nothing new and the LLM reads no market feedback; "mean_field": nothing held."""
        return self.hold(options) if self.llm_signals == "observed" else nullcontext()

    def held_utilities(
        self, prod: pl.DataFrame
    ) -> tuple[list[P.PromptEpisode], dict[tuple[str, str], float]]:
        """utilities(prod), from what `hold` holds where it holds every row of `prod`."""
        if self._held is not None:
            eps, u = self._held
            pairs = zip(prod["occasion_id"].to_list(), prod["product_id"].to_list(), strict=True)
            if all(k in u for k in pairs):
                return eps, u
        return self.utilities(prod)

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        opts = with_other_rows(options)
        prod = opts.filter(pl.col("product_id") != OTHER)
        eps, u = self.held_utilities(prod)
        qty = self.top_quantities(eps, u) if self.quantity == "llm_top" else {}
        return market_decisions(
            opts, prod, _aligned(prod, u), qty, self.other_constant, self.other_by_category, self.other_qty
        )

    def stats(self) -> dict[str, float]:
        """Cache lookups, hits, hit rate and prompts scored (utilities; qty_*: the quantity question), cached
        prompts and the seconds spent in the model."""
        c = self.counts
        return {
            **c,
            "hit_rate": c["hits"] / c["lookups"] if c["lookups"] else math.nan,
            "qty_hit_rate": c["qty_hits"] / c["qty_lookups"] if c["qty_lookups"] else math.nan,
            "cached": len(self.cache),
            "seconds_scoring": round(self.seconds, 3),
        }


@dataclass(eq=False)
class HybridChoiceEngine(ChoiceEngine):
    """u = a u_llm + b s_base with OTHER's constants refitted on it (module docstring)."""

    llm: LLMChoiceEngine  # its cache, prompts, quantity setting and OTHER's quantity are the hybrid's
    base: C.ClassicEngine  # s_base = base.scores (the raw score; b plays its temperature)
    fit: HybridFit
    other_constant: float = 0.0
    other_by_category: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    llm_signals: str = "mean_field"  # LLM_SIGNALS: what the LLM half reads inside a mean-field run

    def __post_init__(self) -> None:
        check_llm_signals(self.llm_signals)
        self.name = hybrid_name(self.llm.name, self.base.method)

    def observing(self, options: pl.DataFrame) -> AbstractContextManager[None]:
        """llm_signals "observed": the LLM half held at `options` while the block runs (LLMChoiceEngine.hold)."""
        return self.llm.hold(options) if self.llm_signals == "observed" else nullcontext()

    def decide(self, options: pl.DataFrame) -> pl.DataFrame:
        opts = with_other_rows(options)
        prod = opts.filter(pl.col("product_id") != OTHER)
        eps, u_by_key = self.llm.held_utilities(prod)
        u_llm, s_base = _aligned(prod, u_by_key), self.base.scores(prod)
        u = self.fit.coef_llm * u_llm + self.fit.coef_base * s_base
        qty = {}
        if self.llm.quantity == "llm_top":
            pairs = zip(prod["occasion_id"].to_list(), prod["product_id"].to_list(), strict=True)
            qty = self.llm.top_quantities(eps, dict(zip(pairs, u.tolist(), strict=True)))
        return market_decisions(
            opts, prod, u, qty, self.other_constant, self.other_by_category, self.llm.other_qty
        )

    def stats(self) -> dict[str, float]:
        return self.llm.stats()

    def save(self, conn) -> int:
        return self.llm.save(conn)


# --- fitting on validation market occasions -----------------------------------------------------------


def inside_lse(
    products: pl.DataFrame, u: np.ndarray, occ: pl.DataFrame, actual: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """fit_other_constant's inputs for the occasions of `occ` (occasion_id, category): each set's
    log-sum-exp of `u` (-inf for an empty set), whether OTHER was chosen (the actual product is not in the
    set), the category."""
    act = actual.select("occasion_id", pl.col("product_id").alias("_actual"))
    df = (
        products.select(C.KEYS)
        .with_columns(u=pl.Series(u, dtype=pl.Float64))
        .join(act, on="occasion_id", how="left")
    )
    m = pl.col("u").max()
    per = df.group_by("occasion_id").agg(
        lse=m + (pl.col("u") - m).exp().sum().log(), inside=(pl.col("product_id") == pl.col("_actual")).any()
    )
    j = occ.join(per, on="occasion_id", how="left", maintain_order="left")
    lse = j["lse"].fill_null(-math.inf).to_numpy()
    return lse, ~j["inside"].fill_null(False).to_numpy(), j["category"]


def fit_llm_engines(
    conn, engine, base: str = "clogit", val_occasions_limit: int = 2_000, seed: int = 0,
    classic: C.ClassicEngine | None = None, m_options: int = 20, own_max: int = 10, history_days: int = 28,
    window_days: int = 14, prior_sd: float = 1.0, include_style: bool = True, include_signals: bool = True,
    quantity: str = "rule", qty_engine: Any = None, name: str = "llm", chunk_occasions: int = 64,
    log: Callable[[str], Any] = print, model_info: dict[str, Any] | None = None,
    augment: AugmentSettings | None = None,
) -> dict[str, ChoiceEngine]:  # fmt: skip
    """{"llm": LLMChoiceEngine, "hybrid": HybridChoiceEngine}, ready for the warehouse's market (its occasions
    are in their prompt context).

    `engine`: the Engine of the LLM (LLMResource.get_engine(), with the adapter of choose_adapter).
    `classic`: the fitted base engine (default: fit_classic_engines for `base` alone, which also gives OTHER's
    quantities). The val period's market is built with the market knobs given (the warehouse's market tables
    are set aside and restored). Scoring is the cost: only the val_occasions_limit occasions with the smallest
    md5("{seed}|{occasion_id}") are scored (0: all). On those: OTHER's constants for the LLM, (a, b) of the
    hybrid, then OTHER's constants for the hybrid. `model_info` (MODEL_INFO_FIELDS of the model behind
    `engine`): the utilities are cached in the warehouse under model_key(model_info) and read from it first
    (the val scoring of a second fit with the same model costs nothing); None: in memory only. `augment`
    (augment.AugmentSettings; None: off): input augmentation fitted first (augment.fit_augmentation: the
    imputer on the train period, the shelf trends, and under a token budget the kept fields from their
    influence on sampled val occasions); then every prompt of both engines is augmented."""
    t0 = time.perf_counter()
    if classic is None:
        classic = C.fit_classic_engines(
            conn, (base,), seed, m_options=m_options, own_max=own_max, history_days=history_days,
            window_days=window_days, prior_sd=prior_sd, with_persistence=False, log=log,
        )[base]  # fmt: skip
    ctx = MarketPromptContext()
    with C._market_tables_set_aside(conn):
        build_market_occasions(
            conn, period="val", m_options=m_options, own_max=own_max, seed=seed,
            history_days=history_days, window_days=window_days,
        )  # fmt: skip
        vframe, vact = C.load_market_frame(conn), C.load_market_actuals(conn)
        ctx.add_market(conn)
    if table_exists(conn, "market_occasions"):
        ctx.add_market(conn)
    ids = sorted(vact["occasion_id"].to_list(), key=lambda o: P.seeded_key(seed, o))
    keep = ids[:val_occasions_limit] if val_occasions_limit > 0 else ids
    vframe = vframe.filter(pl.col("occasion_id").is_in(keep))
    vact = vact.filter(pl.col("occasion_id").is_in(keep))
    llm = LLMChoiceEngine(
        engine, ctx, other_qty=classic.other_qty, include_style=include_style, quantity=quantity,
        include_signals=include_signals, qty_engine=qty_engine, chunk_occasions=chunk_occasions, log=log,
        name=name, store_key=model_key(model_info) if model_info else "",
    )  # fmt: skip
    if llm.load(conn):
        log(f"{name}: {llm.counts['loaded']} cached scores of this model read from {CACHE_TABLE}")
    if augment is not None:
        from assets.market.augment import fit_augmentation

        llm.augment = fit_augmentation(conn, augment, vframe, llm, log=log)
        llm.info.update(llm.augment.metadata())
    llm.info.update({f"model/{k}": str(v) for k, v in (model_info or {}).items()})
    prod = vframe.filter(pl.col("product_id") != OTHER)
    log(f"{name}: scoring {len(keep)} of {len(ids)} val market occasions ({prod.height} options)")
    t1 = time.perf_counter()
    _, u = llm.utilities(prod)
    u_llm, seconds = _aligned(prod, u), time.perf_counter() - t1
    occ = C._occasions(vframe)
    lse, chose_other, cats = inside_lse(prod, u_llm, occ, vact)
    llm.other_constant, llm.other_by_category = C.fit_other_constant(lse, chose_other, cats, prior_sd)
    s_base = classic.scores(prod)
    act = vact.select("occasion_id", pl.col("product_id").alias("_actual"))
    paired = (
        prod.select(pl.col("occasion_id").alias("episode_id"), "product_id", _col(prod, "set_rank"))
        .with_columns(u_llm=pl.Series(u_llm), s_base=pl.Series(s_base, dtype=pl.Float64))
        .join(act.rename({"occasion_id": "episode_id"}), on="episode_id", how="left")
        .with_columns(is_chosen=(pl.col("product_id") == pl.col("_actual")).fill_null(False))
        .filter(pl.col("is_chosen").sum().over("episode_id") == 1)
        .sort("episode_id", "set_rank", "product_id")
    )
    hfit = fit_hybrid(name, paired, base_method=base)
    hybrid = HybridChoiceEngine(llm, classic, hfit)
    lse_h = inside_lse(prod, hfit.coef_llm * u_llm + hfit.coef_base * s_base, occ, vact)
    hybrid.other_constant, hybrid.other_by_category = C.fit_other_constant(*lse_h, prior_sd)
    share = float(np.mean(chose_other)) if occ.height else math.nan
    common = {"n_val_occasions": occ.height, "n_val_options": prod.height, "fit_other_share": share}
    llm.info.update(common, other_constant=llm.other_constant, seconds_val_scoring=round(seconds, 2))
    hybrid.info.update(common, other_constant=hybrid.other_constant, **hfit.as_metadata())
    llm.save(conn)  # the val scores, for the next fit with this model
    log(
        f"{name}: OTHER constant {llm.other_constant:+.3f} ({len(llm.other_by_category)} categories), "
        f"{seconds:.1f} s scoring ({prod.height / max(seconds, 1e-9):.1f} options/s); {hybrid.name}: a "
        f"{hfit.coef_llm:+.3f}, b {hfit.coef_base:+.3f} on {hfit.n_val_episodes} occasions ({hfit.message}), "
        f"OTHER {hybrid.other_constant:+.3f}; {time.perf_counter() - t0:.1f} s in all"
    )
    return {"llm": llm, "hybrid": hybrid}
