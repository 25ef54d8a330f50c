"""Training data of the alignment stage: rows drawn and mixed from the prompt dataset (seeded), and tokenized
into the items each loss trains on (prompt/completion pairs, episodes of option prompts, packed episodes).
No dagster import; the tokenizer comes in as an argument."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import polars as pl


def seeded_order(keys: list[str], seed: int) -> list[int]:
    """Indices of keys in md5("{seed}|{key}") order: a deterministic shuffle that a subset keeps."""
    digests = [hashlib.md5(f"{seed}|{k}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: digests[i])


def as_frame(rows: Any) -> pl.DataFrame:
    if rows is None:
        return pl.DataFrame(
            {"prompt": [], "completion": []}, schema={"prompt": pl.Utf8, "completion": pl.Utf8}
        )
    df = rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)
    missing = {"prompt", "completion"} - set(df.columns)
    if missing:
        raise ValueError(f"training rows lack the columns {sorted(missing)}: need prompt and completion")
    return df.filter(
        pl.col("prompt").is_not_null()
        & pl.col("completion").is_not_null()
        & (pl.col("prompt").str.len_chars() > 0)
        & (pl.col("completion").str.len_chars() > 0)
    )


def _row_keys(df: pl.DataFrame) -> list[str]:
    cols = [c for c in ("episode_id", "form", "product_id") if c in df.columns]
    if not cols:
        return [f"{i}|{p}" for i, p in enumerate(df["prompt"].to_list())]
    return [
        "|".join("" if v is None else str(v) for v in row) + f"|{i}"
        for i, row in enumerate(df.select(cols).iter_rows())
    ]


def sample_rows(df: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """At most n rows in a seeded order (n <= 0: all rows, still in that order)."""
    df = as_frame(df)
    order = seeded_order(_row_keys(df), seed)
    if n > 0:
        order = order[:n]
    return df[order] if order else df.head(0)


def mix_forms(
    utility: pl.DataFrame | None,
    listwise: pl.DataFrame | None,
    forms: list[str] | tuple[str, ...],
    listwise_share: float,
    n: int,
    seed: int,
) -> pl.DataFrame:
    """Training rows of the chosen forms: utility rows and listwise-file rows (forms 'listwise', 'quantity')
    mixed so that a share `listwise_share` of the rows come from the listwise file when both are chosen.
    n <= 0 takes every available row of the chosen forms (the share then caps the smaller side)."""
    forms = set(forms)
    util = as_frame(utility)
    if "form" in util.columns:
        util = util.filter(pl.col("form").is_in(sorted(forms)))
    lw = as_frame(listwise)
    if "form" in lw.columns:
        lw = lw.filter(pl.col("form").is_in(sorted(forms & {"listwise", "quantity"})))
    elif not forms & {"listwise", "quantity"}:
        lw = lw.head(0)
    if "utility" not in forms:
        util = util.head(0)
    share = min(max(listwise_share, 0.0), 1.0)
    if util.height == 0 or lw.height == 0:
        share = 1.0 if util.height == 0 else 0.0
    if n <= 0:  # everything the share allows
        if 0 < share < 1:
            n = int(min(util.height / (1 - share), lw.height / share))
        else:
            n = lw.height if share == 1.0 else util.height
    n_lw = min(lw.height, int(round(n * share)))
    n_util = min(util.height, n - n_lw)
    cols = ["prompt", "completion"] + [c for c in ("episode_id", "form", "product_id") if c in util.columns]
    parts = [sample_rows(util, n_util, seed).select(cols)] if n_util > 0 else []
    if n_lw > 0:
        lw_s = sample_rows(lw, n_lw, seed)
        parts.append(lw_s.select([c for c in cols if c in lw_s.columns]))
    if not parts:
        return util.head(0).select(["prompt", "completion"])
    mixed = pl.concat(parts, how="diagonal_relaxed")
    return sample_rows(mixed, 0, seed)


def tokenize_pairs(tokenizer, df: pl.DataFrame, max_length: int) -> dict[str, list[list[int]]]:
    """input_ids and completion_mask of each prompt/completion row, the way trl tokenizes a prompt/completion
    pair (prompt and prompt+completion tokenized, the completion starts where they diverge) but WITHOUT an
    appended EOS: the loss falls on the answer token(s) only. Rows longer than max_length lose their start."""
    prompts = df["prompt"].to_list()
    completions = df["completion"].to_list()
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    pc_ids = tokenizer([p + c for p, c in zip(prompts, completions, strict=True)], add_special_tokens=False)[
        "input_ids"
    ]
    input_ids, masks = [], []
    for p, pc in zip(p_ids, pc_ids, strict=True):
        k = 0
        while k < min(len(p), len(pc)) and p[k] == pc[k]:
            k += 1
        mask = [0] * k + [1] * (len(pc) - k)
        if max_length and len(pc) > max_length:
            pc, mask = pc[-max_length:], mask[-max_length:]
        input_ids.append(list(pc))
        masks.append(mask)
    return {"input_ids": input_ids, "completion_mask": masks}


def group_episodes(tokenizer, df: pl.DataFrame, max_length: int) -> dict[str, list]:
    """Utility rows grouped per episode for the softmax loss: per episode the token ids of each option's
    prompt (no completion: the answer position is the prompt's last token) and the index of the option
    answered "Yes". Episodes without exactly one "Yes" or with fewer than 2 options are left out."""
    df = df.filter(pl.col("form") == "utility") if "form" in df.columns else df
    if df.height == 0:
        return {"input_ids": [], "chosen": []}
    order = df.with_row_index("_i").group_by("episode_id", maintain_order=True).agg("_i", "completion")
    ids = tokenizer(df["prompt"].to_list(), add_special_tokens=False)["input_ids"]
    groups, chosen = [], []
    for rows, answers in zip(order["_i"].to_list(), order["completion"].to_list(), strict=True):
        yes = [j for j, a in enumerate(answers) if str(a).strip() == "Yes"]
        if len(yes) != 1 or len(rows) < 2:
            continue
        groups.append([ids[i][-max_length:] if max_length else ids[i] for i in rows])
        chosen.append(yes[0])
    return {"input_ids": groups, "chosen": chosen}


def split_prompt(prompt: str) -> tuple[str, str]:
    """(prefix, suffix) of a utility prompt: the suffix is its last user turn and the assistant start (the
    option and the question), the prefix everything before it (system message, customer, context)."""
    from assets.prompts.templates import IM_START

    cut = prompt.rfind(f"{IM_START}user\n")
    if cut <= 0:
        raise ValueError("a utility prompt must end with a user turn after the customer's turn")
    return prompt[:cut], prompt[cut:]


def pack_episodes(tokenizer, df: pl.DataFrame, max_length: int) -> dict[str, list]:
    """Utility rows packed per episode: the shared prefix's tokens once, then each option's suffix, one sequence
    per episode (the collator's block mask lets each suffix see only the prefix and itself, and gives it the
    positions it has in its own prompt). Per episode: input_ids, prefix_len, suffix_lens, yes (1 where the
    row's answer is "Yes"). Options whose own prompt would exceed max_length are left out, as are episodes
    left with no option. Rows of an episode with another prefix form their own pack.

    A quantity row of the same episode and prefix (form 'quantity': the chosen option with the quantity
    question, answer "1".."9") is appended as one more block: qty_len (its length, 0 where there is none) and
    qty (the answer's index in QUANTITY_LABELS, -1 where there is none)."""
    from assets.prompts.templates import QUANTITY_LABELS

    forms = df["form"] if "form" in df.columns else None
    util = df.filter(forms == "utility") if forms is not None else df
    qrows = df.filter(forms == "quantity") if forms is not None else df.head(0)
    out: dict[str, list] = {
        "input_ids": [], "prefix_len": [], "suffix_lens": [], "yes": [], "qty_len": [], "qty": []
    }  # fmt: skip
    if util.height == 0:
        return out
    key = "episode_id" if "episode_id" in util.columns else "_prefix"
    quantity: dict[tuple[str, str], tuple[str, int]] = {}
    for row in qrows.iter_rows(named=True):
        pre, suf = split_prompt(row["prompt"])
        label = str(row["completion"]).strip()
        if label in QUANTITY_LABELS:
            quantity.setdefault((str(row.get(key, pre)), pre), (suf, QUANTITY_LABELS.index(label)))
    parts = [split_prompt(p) for p in util["prompt"].to_list()]
    util = util.with_columns(
        _prefix=pl.Series([a for a, _ in parts]), _suffix=pl.Series([b for _, b in parts])
    )
    groups = util.group_by(key, "_prefix", maintain_order=True).agg("_suffix", "completion")
    pre_ids = tokenizer(groups["_prefix"].to_list(), add_special_tokens=False)["input_ids"]
    for k, prefix, pre, sufs, answers in zip(
        groups[key].to_list(),
        groups["_prefix"].to_list(),
        pre_ids,
        groups["_suffix"].to_list(),
        groups["completion"].to_list(),
        strict=True,
    ):
        suf_ids = tokenizer(sufs, add_special_tokens=False)["input_ids"]
        keep = [i for i, s in enumerate(suf_ids) if not max_length or len(pre) + len(s) <= max_length]
        if not keep:
            continue
        q_ids, q = [], -1
        if (str(k), prefix) in quantity:
            q_suffix, q_label = quantity[(str(k), prefix)]
            q_ids = tokenizer(q_suffix, add_special_tokens=False)["input_ids"]
            if max_length and len(pre) + len(q_ids) > max_length:
                q_ids = []
            q = q_label if q_ids else -1
        out["input_ids"].append(list(pre) + [t for i in keep for t in suf_ids[i]] + list(q_ids))
        out["prefix_len"].append(len(pre))
        out["suffix_lens"].append([len(suf_ids[i]) for i in keep])
        out["yes"].append([int(str(answers[i]).strip() == "Yes") for i in keep])
        out["qty_len"].append(len(q_ids))
        out["qty"].append(q)
    return out


def read_parquet_or_empty(path: str | None) -> pl.DataFrame | None:
    return pl.read_parquet(path) if path and os.path.exists(path) else None


def dataset_rows(
    files: dict[str, str],
    forms: list[str] | tuple[str, ...],
    listwise_share: float,
    max_train_examples: int,
    eval_examples: int,
    seed: int,
    by_episode: bool = False,
    with_quantity: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Training rows (forms mixed) and eval rows (val rows of the same forms, seeded sample) of a dataset.

    by_episode (the softmax loss, packing): whole episodes instead of rows: every utility training row (the
    step budget decides how many are used; the trainer shuffles episodes) and the rows of seeded val episodes
    holding about eval_examples utility rows, with episode_id and form kept for the grouping. with_quantity
    (by_episode only) adds the quantity row of each of those episodes (the packed loss trains its answer)."""
    utility = read_parquet_or_empty(files.get("train_utility"))
    listwise = read_parquet_or_empty(files.get("train_listwise"))
    if by_episode:
        forms = ["utility", "quantity"] if with_quantity else ["utility"]
        train = mix_forms(utility, None, ["utility"], listwise_share, 0, seed)
        if with_quantity and listwise is not None and {"form", "episode_id"} <= set(listwise.columns):
            episodes = train["episode_id"].unique() if "episode_id" in train.columns else []
            q = as_frame(listwise).filter(
                (pl.col("form") == "quantity") & pl.col("episode_id").is_in(episodes)
            )
            cols = [c for c in train.columns if c in q.columns]
            train = pl.concat([train, q.select(cols)], how="diagonal_relaxed")
    else:
        train = mix_forms(utility, listwise, forms, listwise_share, max_train_examples, seed)
    val = read_parquet_or_empty(files.get("val"))
    if val is None or eval_examples <= 0:
        return train, train.head(0)
    val = as_frame(val)
    if "form" in val.columns:
        val = val.filter(pl.col("form").is_in(list(forms)))
    if by_episode and "episode_id" in val.columns and val.height:
        n_util = val.filter(pl.col("form") == "utility").height if "form" in val.columns else val.height
        per_episode = max(1.0, n_util / max(val["episode_id"].n_unique(), 1))
        keys = sorted(val["episode_id"].unique().to_list())
        keep = [keys[i] for i in seeded_order(keys, seed)[: max(1, round(eval_examples / per_episode))]]
        cols = [c for c in ("prompt", "completion", "episode_id", "form") if c in val.columns]
        return train, val.filter(pl.col("episode_id").is_in(keep)).select(cols)
    return train, sample_rows(val, eval_examples, seed).select(["prompt", "completion"])
