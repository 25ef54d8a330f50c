"""Planning a retail_decisions materialization: the method names, the runs the config asks for, the
adapter (and which model answers the quantity question) and the sample each method decides.
No dagster import; the assets in __init__.py wire these functions.

Readings taken here (docs/tables.md, simulation section):
- The sample is docs/evaluation-protocol.md's: per named split the N episodes with the smallest md5("{seed}|{basket_id}|
  {category}") (assets.evaluation.baselines.split_membership); an episode may be in several splits and is
  decided once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from assets.evaluation.baselines import SPLITS, split_membership
from assets.prompts import logic as P
from resources.sql import load_sql
from resources.warehouse import table_exists

if TYPE_CHECKING:  # the type only: this module has no dagster import
    from assets.simulation import RetailDecisionsConfig

FORMS = ("utility", "listwise")


@dataclass(frozen=True)
class DecisionSettings:
    """The settings one method decides with. No defaults here: RetailDecisionsConfig (assets/simulation/
    __init__.py) holds them, and decision_settings builds this from it; the fields mean what the config's
    comments say."""

    period: str  # the periods of the episodes: 'test', 'val' or 'val,test'
    n_per_split: int  # N episodes per split of the md5 sample
    form: str  # 'utility' or 'listwise'
    quantity: bool  # ask the quantity of the top option
    include_style: bool
    include_signals: bool
    seed: int  # the md5 sample's seed (and sample mode's)
    chunk_episodes: int  # episodes per engine call
    mode: str  # 'score' (exact distributions) or 'sample' (listwise answers drawn at a temperature)
    reading: bool  # listwise score mode: readers + decider when the prompt exceeds budget_tokens
    budget_tokens: int
    k: int  # sample mode: answers per episode and run
    runs: int  # sample mode: R runs (different seeds) for the stability figures
    temperature: float  # sample mode: sampling temperature


def decision_settings(config: RetailDecisionsConfig, **changes: Any) -> DecisionSettings:
    """The primary method's settings: every field from the config (mode 'score', the config has no mode),
    then `changes` (a variant's period, N and name parts)."""
    names = [f.name for f in dataclasses.fields(DecisionSettings) if f.name != "mode"]
    return DecisionSettings(**{"mode": "score", **{k: getattr(config, k) for k in names}, **changes})


# ----------------------------------------------------------------------------- names and the adapter


def method_name(
    form: str,
    aligned: bool,
    include_style: bool = True,
    include_signals: bool = True,
    mode: str = "score",
    reading: bool = True,
) -> str:
    """llm_{zero_shot|aligned}_{form}[_sample][_no_reading][_no_style][_no_signals] (_no_reading only for the
    listwise form in score mode, the only decision the reading applies to)."""
    name = f"llm_{'aligned' if aligned else 'zero_shot'}_{form}"
    if mode == "sample":
        name += "_sample"
    elif form == "listwise" and not reading:
        name += "_no_reading"
    if not include_style:
        name += "_no_style"
    if not include_signals:
        name += "_no_signals"
    return name


@dataclass
class PlannedRun:
    """One method of a retail_decisions materialization: its settings, adapter use and splits."""

    settings: DecisionSettings
    aligned: bool
    splits: list[str] | None = None  # None: every split of settings.period

    @property
    def ablation(self) -> tuple[bool, bool, str, bool]:
        """(include_style, include_signals, mode, reading): the name parts besides form and adapter."""
        st = self.settings
        return st.include_style, st.include_signals, st.mode, st.reading

    @property
    def method(self) -> str:
        return method_name(self.settings.form, self.aligned, *self.ablation)


def plan_decision_runs(config: RetailDecisionsConfig) -> list[PlannedRun]:
    """The primary method (config's form, use_adapter, switches; N per split of its periods), then each of
    config.variants on variant_n episodes of variant_splits. With config.primary false only the variants
    run (the primary's rows stay as they are). Bad names are one-line errors before any model is loaded
    (pipelines/cli.py calls it so). Every field is read off `config`, the asset's RetailDecisionsConfig; none
    has a default here: a missing field is an error."""
    primary = decision_settings(config)
    if primary.form not in FORMS:
        raise ValueError(f"form {primary.form!r}: use one of {FORMS}")
    parse_periods(primary.period)
    runs = [PlannedRun(primary, bool(config.use_adapter))]
    splits = list(config.variant_splits or ["test_all"])
    periods = ",".join(periods_of_splits(splits))
    for name in config.variants:
        aligned, parts = parse_variant(name)
        # a variant is its name: the parts its name does not switch off are on, whatever the primary's
        on = {"include_style": True, "include_signals": True, "reading": True, "mode": "score"}
        settings = decision_settings(config, period=periods, n_per_split=config.variant_n, **on | parts)
        runs.append(PlannedRun(settings, aligned, splits))
    if not config.primary:
        if len(runs) == 1:
            raise ValueError(
                "primary=false and no variants: nothing to decide (name variants or set primary)"
            )
        runs = runs[1:]
    return runs


_VARIANT_SUFFIXES = {  # name suffix -> the DecisionSettings field it sets
    "_no_signals": ("include_signals", False),
    "_no_style": ("include_style", False),
    "_no_reading": ("reading", False),
    "_sample": ("mode", "sample"),
}


def parse_variant(name: str) -> tuple[bool, dict[str, Any]]:
    """A variant name "{zero_shot|aligned}_{utility|listwise}[_sample][_no_reading][_no_style][_no_signals]"
    (a method name without its "llm_") -> (aligned, DecisionSettings fields). A bad name is a one-line error
    before any model is loaded."""
    rest = name.removeprefix("llm_")
    parts: dict[str, Any] = {}
    stripped = True
    while stripped:
        stripped = False
        for suffix, (key, value) in _VARIANT_SUFFIXES.items():
            if rest.endswith(suffix) and key not in parts:
                rest, parts[key], stripped = rest.removesuffix(suffix), value, True
    for prefix, aligned in (("zero_shot_", False), ("aligned_", True)):
        form = rest.removeprefix(prefix)
        if rest.startswith(prefix) and form in FORMS:
            if form == "utility" and ("mode" in parts or "reading" in parts):
                break  # sample mode and the reading are listwise decisions
            return aligned, {"form": form, **parts}
    raise ValueError(
        f"variant {name!r}: write it as zero_shot_<form> or aligned_<form> with form utility or listwise, "
        "then optionally _sample or _no_reading (listwise only), _no_style, _no_signals "
        "(e.g. aligned_utility_no_signals, aligned_listwise_sample)"
    )


def periods_of_splits(splits: list[str]) -> list[str]:
    """The periods whose episodes the named splits hold ('val' -> val, 'test_*' -> test), checked."""
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad:
        raise ValueError(f"splits {splits!r}: use names from {SPLITS}")
    return [p for p in ("val", "test") if any((s == "val") == (p == "val") for s in splits)]


def parse_periods(period: str) -> list[str]:
    """'test', 'val' or a comma list such as 'val,test' -> the periods, checked."""
    out = [p.strip() for p in str(period).split(",") if p.strip()]
    bad = [p for p in out if p not in ("val", "test")]
    if not out or bad:
        raise ValueError(f"period {period!r}: use 'test', 'val' or 'val,test'")
    return out


def latest_adapter(conn) -> dict[str, Any] | None:
    """The newest row of lora_adapters as a dict, or None when the table is absent or empty."""
    if not table_exists(conn, "lora_adapters"):
        return None
    rows = conn.sql(load_sql("simulation/select_latest_adapter")).pl()
    return rows.row(0, named=True) if rows.height else None


def choose_adapter(row: dict[str, Any] | None, model: str, use_adapter: bool) -> tuple[str, str]:
    """(adapter path or "", reason): the newest adapter when asked for, present on disk and trained on the
    same base model as the resource's; zero-shot otherwise, with the reason."""
    if not use_adapter:
        return "", "use_adapter is off"
    if row is None:
        return "", "no lora_adapters row"
    path = str(row.get("adapter_path") or "")
    if not path or not Path(path, "adapter_config.json").is_file():
        return "", f"adapter folder {path!r} has no adapter_config.json"
    base = str(row.get("base_model") or "")
    if base and base != model and Path(base).resolve() != Path(model).resolve():
        return "", f"adapter trained on {base!r}, the resource's model is {model!r}"
    return path, f"lora_adapters run {row.get('dagster_run_id')}"


QUANTITY_SOURCES = ("auto", "adapter", "base")


def adapter_trained_quantity(adapter_path: str | Path) -> bool:
    """Whether the adapter's training carried the quantity answer (train_result.json's quantity_episodes > 0;
    adapters saved before that field existed were not)."""
    f = Path(adapter_path, "train_result.json")
    try:
        return int(json.loads(f.read_text()).get("quantity_episodes") or 0) > 0
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def quantity_model(adapter_path: str, source: str) -> tuple[str, str]:
    """(adapter path or "" for the base model, reason) of the model that answers the quantity question.
    'adapter': the deciding model, 'base': the base model without the adapter, 'auto': the adapter only when
    its training carried the quantity answer. An adapter trained on choices alone has never seen the
    quantity question and drifts on it (the 60-minute adapter: median 2, qty_mae 1.43 against the base
    model's 0.45 on 300 test_all episodes; docs/measurements.md)."""
    if source not in QUANTITY_SOURCES:
        raise ValueError(f"quantity_source {source!r}: use one of {QUANTITY_SOURCES}")
    if not adapter_path:
        return "", "no adapter: the base model decides"
    if source == "adapter":
        return adapter_path, "quantity_source is 'adapter'"
    if source == "base":
        return "", "quantity_source is 'base'"
    if adapter_trained_quantity(adapter_path):
        return adapter_path, "the adapter was trained on the quantity answer"
    return "", "the adapter was not trained on the quantity answer (quantity_episodes 0): base model"


# ----------------------------------------------------------------------------- the sample


def best_ranks(members: pl.DataFrame) -> dict[str, int]:
    """episode_id -> its best (smallest) md5 rank over the splits it is in (load_sample's members)."""
    return dict(members.group_by("episode_id").agg(pl.col("sample_rank").min()).iter_rows())


def load_sample(
    conn, periods: list[str], seed: int, n_per_split: int, splits: list[str] | None = None
) -> tuple[list[P.PromptEpisode], pl.DataFrame]:
    """The sample's episodes as prompt contexts and their split membership (episode_id, split, sample_rank:
    0-based rank in the split's md5 order), restricted to `splits` when given. Episodes without options
    are dropped from both.

    Order: by the episode's best rank in the md5 sample of any of its splits (ties: episode_id), so that
    the splits advance together and the first n decided episodes of a run that stops (see checkpoint.py)
    are the protocol's sample at a smaller N for every split."""
    cands = conn.sql(
        load_sql("simulation/select_sample_candidates"), params={"seed": int(seed), "periods": periods}
    ).pl()
    members = split_membership(cands, int(n_per_split))
    if splits:
        members = members.filter(pl.col("split").is_in(list(splits)))
    wanted = set(members["episode_id"].to_list())
    episodes: list[P.PromptEpisode] = []
    for period in periods:
        rows = P.build_prompt_rows(conn, period, seed, n_per_split, fit_only=False)
        episodes += [e for e in rows if e.episode.episode_id in wanted]
    members = members.join(cands.select("episode_id", "sample_key"), on="episode_id", how="left").select(
        "episode_id",
        "split",
        sample_rank=pl.col("sample_key").rank("ordinal").over("split").cast(pl.Int64) - 1,
    )
    rank = best_ranks(members)
    episodes.sort(key=lambda e: (rank.get(e.episode.episode_id, 0), e.episode.episode_id))
    have = {e.episode.episode_id for e in episodes}
    members = members.filter(pl.col("episode_id").is_in(list(have)))
    return episodes, members


def load_run_sample(
    conn, settings: DecisionSettings, splits: list[str] | None = None
) -> tuple[list[P.PromptEpisode], pl.DataFrame, float]:
    """The episodes and split membership a method decides (load_sample over its periods), and the seconds
    it took: loaded first, so that the warehouse is not held open while the agents decide."""
    t = time.perf_counter()
    eps, members = load_sample(
        conn, parse_periods(settings.period), settings.seed, settings.n_per_split, splits
    )
    return eps, members, time.perf_counter() - t
