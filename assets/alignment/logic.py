"""LoRA post-training of the retail agent: trl's SFTTrainer + peft on prompt/completion pairs. No dagster import.

Recipe (docs/notes.md, "Post-training the 135M model on CPU"): the yes/no utility form, LoRA on all projections of
the top layers only (peft's `layers_to_transform`), bf16 autocast, loss on the answer positions only, a
wall-clock budget. Losses: pointwise (cross-entropy of each answer) or softmax (the episode's choice over its
options); packing puts an episode's prefix once before all its options (block attention mask), which the
asset uses by default with the softmax loss (docs/measurements.md). `train_lora` reads like trl's
`scripts/sft.py`: load data -> build trainer -> train -> save.

Heavy libraries (torch, transformers, peft, trl, mlflow, matplotlib) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from resources.sql import load_sql

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REGISTERED_MODEL = "malles-lora-adapter"
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class LoraTrainSettings:
    """Every knob of one LoRA training run (the asset's LoraAdapterConfig maps onto it)."""

    lora_r: int = 16  # rank of the LoRA matrices
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input path
    top_layers: int = 8  # LoRA on the top N decoder layers only; 0 (or >= the model's layers) = all layers
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS  # which linear modules of a layer get LoRA
    learning_rate: float = 5e-4  # AdamW learning rate
    lr_scheduler: str = (
        "constant_with_warmup"  # the time budget decides the steps, so no decay to a fixed end
    )
    warmup_steps: int = 5  # linear warmup steps
    batch_size: int = 16  # examples per optimizer step
    epochs: float = 1.0  # passes over the training rows (the time budget usually stops earlier)
    max_steps: int = 0  # hard cap on optimizer steps; 0 = none
    max_minutes: float = 12.0  # wall-clock budget of the training loop (evaluation excluded)
    max_length: int = 512  # tokens per example; longer ones are truncated from the start (keep the answer)
    bf16_autocast: bool = True  # bf16 autocast (CPU or GPU) where the device supports it
    gradient_checkpointing: bool = False  # trl turns it on by default; it recomputes the forward (slower)
    logging_steps: int = 5  # steps between two points of the loss curve
    seed: int = 0  # seed of the LoRA init, the shuffling and the dropout
    num_threads: int = 2  # torch CPU threads (this machine has 2 cores); 0 = torch's default
    loss: str = "pointwise"  # 'pointwise': cross-entropy of each Yes/No answer; 'softmax': the episode's
    # utilities log P(Yes) - log P(No) of its options (the chosen one and its sampled negatives) in a softmax,
    # cross-entropy of the chosen option: the choice model's own likelihood (utility form only)
    decay_by_time: bool = False  # learning rate times a cosine of the elapsed share of the time budget
    pack_prefix: bool = False  # utility form: one sequence per episode, its prefix computed once for all of
    # its options (block attention mask); same loss, fewer tokens per example
    # packed: weight of the quantity answer's cross-entropy (over "1".."9") added per episode whose quantity
    # row the rows hold; 0 leaves the quantity answer untrained
    quantity_weight: float = 0.0


@dataclass
class TrainResult:
    adapter_dir: str
    train_loss: float  # mean training loss over the last logging window (nan without steps)
    eval_loss: float  # loss on the eval rows after training (nan without eval rows)
    eval_loss_before: float  # the same before training
    loss_history: list[dict[str, float]] = field(default_factory=list)  # {step, examples, loss, elapsed_s}
    examples_per_sec: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    seconds: float = 0.0  # training loop wall time (evaluation excluded)
    steps: int = 0
    examples_seen: int = 0
    stopped_by_time: bool = False
    layers_to_transform: list[int] | None = None
    device: str = "cpu"
    bf16: bool = False
    quantity_episodes: int = 0  # training packs that carry a quantity answer (packed training only)

    def metrics(self) -> dict[str, float]:
        """Plain numbers for MLflow and Dagster metadata."""
        keys = ("train_loss", "eval_loss", "eval_loss_before", "examples_per_sec", "seconds", "steps")
        out = {k: float(getattr(self, k)) for k in keys}
        out |= {
            "trainable_params": float(self.trainable_params),
            "total_params": float(self.total_params),
            "examples_seen": float(self.examples_seen),
            "stopped_by_time": float(self.stopped_by_time),
            "quantity_episodes": float(self.quantity_episodes),
        }
        return out


# ----------------------------------------------------------------------------- data


def seeded_order(keys: list[str], seed: int) -> list[int]:
    """Indices of keys in md5("{seed}|{key}") order: a deterministic shuffle that a subset keeps."""
    digests = [hashlib.md5(f"{seed}|{k}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: digests[i])


def _as_frame(rows: Any) -> pl.DataFrame:
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
    df = _as_frame(df)
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
    util = _as_frame(utility)
    if "form" in util.columns:
        util = util.filter(pl.col("form").is_in(sorted(forms)))
    lw = _as_frame(listwise)
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


# ----------------------------------------------------------------------------- model


def pick_device() -> tuple[str, bool]:
    """('cuda', bf16 supported) where a GPU is there, else ('cpu', True: CPU autocast supports bf16)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    return "cpu", True


def layers_to_transform(n_layers: int, top_layers: int) -> list[int] | None:
    """The indices of the top `top_layers` decoder layers; None (all layers) for 0 or >= n_layers."""
    if top_layers <= 0 or top_layers >= n_layers:
        return None
    return list(range(n_layers - top_layers, n_layers))


def lora_config(cfg: LoraTrainSettings, n_layers: int):
    from peft import LoraConfig

    layers = layers_to_transform(n_layers, cfg.top_layers)
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)


def time_cosine_factor(elapsed: float, max_seconds: float) -> float:
    """The learning-rate factor of the time-cosine schedule: 1 at the start, 0 when the budget is spent."""
    if max_seconds <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(elapsed / max_seconds, 0.0), 1.0)))


def _time_budget_callback(max_seconds: float, state: dict[str, Any], log: Log, decay_by_time: bool = False):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training once the loop has run max_seconds; records the loss curve and the loop's time.
        decay_by_time: before each optimizer step the learning rate is the scheduler's times the time-cosine
        factor, so that it reaches 0 when the budget (not a step count nobody knows in advance) runs out."""

        def on_train_begin(self, args, st, control, **kw):
            state["t0"] = time.perf_counter()

        def on_step_begin(self, args, st, control, optimizer=None, lr_scheduler=None, **kw):
            if not decay_by_time or optimizer is None or lr_scheduler is None:
                return
            factor = time_cosine_factor(time.perf_counter() - state["t0"], max_seconds)
            for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr(), strict=False):
                group["lr"] = lr * factor

        def on_step_end(self, args, st, control, **kw):
            elapsed = time.perf_counter() - state["t0"]
            if max_seconds > 0 and elapsed >= max_seconds and not control.should_training_stop:
                control.should_training_stop = True
                state["stopped_by_time"] = True
                log(f"time budget reached after {elapsed:.0f} s at step {st.global_step}: stopping")

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                point = {
                    "step": float(st.global_step),
                    "examples": float(
                        min(st.global_step * args.per_device_train_batch_size, state["n"])
                        * state.get("per_item", 1.0)
                    ),
                    "loss": float(logs["loss"]),
                    "elapsed_s": round(time.perf_counter() - state["t0"], 2),
                }
                state["history"].append(point)
                log(f"step {st.global_step}: loss {point['loss']:.4f} ({point['elapsed_s']:.0f} s)")

        def on_train_end(self, args, st, control, **kw):
            state["seconds"] = time.perf_counter() - state["t0"]
            state["steps"] = st.global_step

    return TimeBudget()


def answer_positions_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """Mean cross-entropy of the completion tokens, projecting through the LM head ONLY the positions that
    predict a completion token (one per utility example) instead of every position of the sequence: the
    backbone runs as usual (LoRA included), the head on a few rows. Same value as the full causal-LM loss."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(**kwargs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    logits = base.get_output_embeddings()(hidden[mask]).float()
    total = F.cross_entropy(logits, targets[mask], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    return total / torch.as_tensor(denom, device=total.device).clamp(min=1)


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


def softmax_collator(pad_id: int):
    """Collates episodes (lists of option prompts) into one right-padded batch of all their prompts with the
    group sizes and each group's chosen index."""
    import torch

    def collate(items: list[dict]) -> dict:
        seqs = [s for it in items for s in it["input_ids"]]
        width = max(len(s) for s in seqs)
        inp = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            inp[r, : len(s)] = torch.as_tensor(s)
            mask[r, : len(s)] = 1
        return {
            "input_ids": inp,
            "attention_mask": mask,
            "group_sizes": torch.as_tensor([len(it["input_ids"]) for it in items]),
            "chosen": torch.as_tensor([int(it["chosen"]) for it in items]),
        }

    return collate


def episode_softmax_loss(model, inputs: dict[str, Any], yes_id: int, no_id: int):
    """Mean over episodes of -log softmax(u)[chosen], u = logit(Yes) - logit(No) at each prompt's last token
    (right padding: position = attention length - 1). Only two rows of the head are computed."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = inputs["attention_mask"]
    hidden = base.model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
    last = mask.sum(dim=1) - 1
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    w = base.get_output_embeddings().weight[[yes_id, no_id]]
    logits = (h @ w.T).float()
    u = logits[:, 0] - logits[:, 1]
    return choice_nll(u, inputs["group_sizes"].tolist(), [int(c) for c in inputs["chosen"]])


def choice_nll(u, sizes: list[int], chosen: list[int | None]):
    """Mean over groups (consecutive runs of `sizes` rows of u) of -log softmax(u_group)[chosen]; groups whose
    chosen index is None are skipped (0 with the graph kept when every group is)."""
    import torch

    losses = [
        -torch.log_softmax(part, dim=0)[c]
        for part, c in zip(torch.split(u, sizes), chosen, strict=True)
        if c is not None
    ]
    return torch.stack(losses).mean() if losses else u.sum() * 0.0


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


def packed_collator(pad_id: int):
    """Collates packed episodes into right-padded input_ids, position ids and a boolean 4D attention mask
    (batch, 1, L, L): prefix tokens attend causally to the prefix; each suffix token (an option's, or the
    quantity block's) to the prefix and causally to its own suffix; padding only to itself. Also the (row,
    position) of each option's answer (the last token of its suffix), its Yes flag and the option count of
    each episode, and the (row, position, label index) of each quantity answer."""
    import torch

    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        n = len(items)
        inp = torch.full((n, width), pad_id, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, 1, width, width), dtype=torch.bool)
        rows, cols, yes, sizes = [], [], [], []
        q_rows, q_cols, q_labels = [], [], []

        def block(b: int, p: int, start: int, length: int) -> int:
            end = start + int(length)
            mask[b, 0, start:end, :p] = True
            mask[b, 0, start:end, start:end] = torch.ones((end - start, end - start), dtype=torch.bool).tril()
            pos[b, start:end] = torch.arange(p, p + end - start)
            return end

        for b, it in enumerate(items):
            ids, p = it["input_ids"], int(it["prefix_len"])
            inp[b, : len(ids)] = torch.as_tensor(ids)
            mask[b, 0, :p, :p] = torch.ones((p, p), dtype=torch.bool).tril()
            pos[b, :p] = torch.arange(p)
            start = p
            for length, y in zip(it["suffix_lens"], it["yes"], strict=True):
                start = block(b, p, start, length)
                rows.append(b)
                cols.append(start - 1)
                yes.append(int(y))
            if int(it.get("qty_len") or 0) > 0:
                start = block(b, p, start, it["qty_len"])
                q_rows.append(b)
                q_cols.append(start - 1)
                q_labels.append(int(it["qty"]))
            for i in range(len(ids), width):
                mask[b, 0, i, i] = True
            sizes.append(len(it["suffix_lens"]))
        return {
            "input_ids": inp,
            "position_ids": pos,
            "attention_mask": mask,
            "answer_rows": torch.as_tensor(rows),
            "answer_cols": torch.as_tensor(cols),
            "yes": torch.as_tensor(yes),
            "group_sizes": torch.as_tensor(sizes),
            "qty_rows": torch.as_tensor(q_rows, dtype=torch.long),
            "qty_cols": torch.as_tensor(q_cols, dtype=torch.long),
            "qty_labels": torch.as_tensor(q_labels, dtype=torch.long),
        }

    return collate


def _packed_hidden(model, inputs: dict[str, Any]):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
    ).last_hidden_state


def packed_answer_hidden(model, inputs: dict[str, Any]):
    """Final hidden states at each option's answer position of a packed batch (one row per option)."""
    return _packed_hidden(model, inputs)[inputs["answer_rows"], inputs["answer_cols"]]


def packed_loss(
    model,
    inputs: dict[str, Any],
    yes_id: int,
    no_id: int,
    softmax: bool,
    qty_ids: list[int] | None = None,
    qty_weight: float = 0.0,
):
    """The loss of a packed batch. pointwise: mean cross-entropy (whole vocabulary) of each option's answer
    token, "Yes" or "No" (the unpacked pointwise loss, computed once per prefix). softmax: mean over episodes of
    -log softmax(u)[chosen], u = logit(Yes) - logit(No) of its options (episodes without exactly one "Yes"
    are skipped). Plus qty_weight x the mean cross-entropy of the quantity answers over the quantity tokens
    qty_ids ("1".."9", the distribution the simulation reads with label_logprobs), where the batch has any."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = _packed_hidden(model, inputs)
    h = hidden[inputs["answer_rows"], inputs["answer_cols"]]
    yes = inputs["yes"].to(h.device)
    if not softmax:
        logits = base.get_output_embeddings()(h).float()
        target = torch.where(yes > 0, torch.as_tensor(yes_id), torch.as_tensor(no_id)).to(h.device)
        loss = F.cross_entropy(logits, target)
    else:
        w = base.get_output_embeddings().weight[[yes_id, no_id]]
        logits = (h @ w.T).float()
        u = logits[:, 0] - logits[:, 1]
        sizes = inputs["group_sizes"].tolist()
        chosen = [
            int(flags.argmax()) if int(flags.sum()) == 1 and flags.numel() >= 2 else None
            for flags in torch.split(yes, sizes)
        ]
        loss = choice_nll(u, sizes, chosen)
    q_rows = inputs.get("qty_rows")
    if qty_weight > 0 and qty_ids and q_rows is not None and q_rows.numel() > 0:
        hq = hidden[q_rows.to(hidden.device), inputs["qty_cols"].to(hidden.device)]
        q_logits = (hq @ base.get_output_embeddings().weight[list(qty_ids)].T).float()
        loss = loss + qty_weight * F.cross_entropy(q_logits, inputs["qty_labels"].to(hidden.device))
    return loss


def _packed_trainer(
    base_cls,
    device: str,
    bf16: bool,
    yes_id: int,
    no_id: int,
    softmax: bool,
    qty_ids: list[int] | None = None,
    qty_weight: float = 0.0,
):
    """SFTTrainer whose loss is packed_loss (bf16 autocast as _answer_head_trainer)."""
    import torch

    class PackedSFTTrainer(base_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = packed_loss(model, inputs, yes_id, no_id, softmax, qty_ids, qty_weight)
            return (loss, None) if return_outputs else loss

    return PackedSFTTrainer


def _softmax_trainer(base_cls, device: str, bf16: bool, yes_id: int, no_id: int):
    """SFTTrainer whose loss is episode_softmax_loss (bf16 autocast as _answer_head_trainer)."""
    import torch

    class EpisodeSoftmaxSFTTrainer(base_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = episode_softmax_loss(model, inputs, yes_id, no_id)
            return (loss, None) if return_outputs else loss

    return EpisodeSoftmaxSFTTrainer


def _answer_head_trainer(base_cls, device: str, bf16: bool):
    """SFTTrainer whose loss is answer_positions_loss under an explicit bf16 autocast. Measured here with
    transformers 5.24: `bf16=True` on CPU does NOT autocast the forward (it ran in fp32), and trl's fused head
    projects every position on CPU; the explicit autocast and the answer-only head fix both."""
    import torch

    class AnswerHeadSFTTrainer(base_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = answer_positions_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

    return AnswerHeadSFTTrainer


def build_trainer(
    model_path: str | Path, train_rows, eval_rows, cfg: LoraTrainSettings, work_dir: Path, log: Log
):
    """The SFTTrainer (peft-wrapped model, pre-tokenized prompt/completion rows with completion masks) and the
    bookkeeping dict its time-budget callback fills. Exposed for the tests (they inspect the collated batch)."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device, bf16_ok = pick_device()
    use_bf16 = bool(cfg.bf16_autocast and bf16_ok)
    tok = AutoTokenizer.from_pretrained(str(model_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # packing passes a boolean 4D mask, which the sdpa attention takes as it is
    attn = {"attn_implementation": "sdpa"} if cfg.pack_prefix else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32, **attn)
    n_layers = int(model.config.num_hidden_layers)
    model = get_peft_model(model, lora_config(cfg, n_layers))
    train_df, eval_df = _as_frame(train_rows), _as_frame(eval_rows)
    if cfg.loss not in ("pointwise", "softmax"):
        raise ValueError(f"loss {cfg.loss!r}: use 'pointwise' or 'softmax'")
    softmax = cfg.loss == "softmax"
    extra: dict[str, Any] = {}
    per_step = cfg.batch_size
    per_item = 1.0  # examples (answers) per dataset item
    if cfg.pack_prefix:
        if "form" in train_df.columns and set(train_df["form"].unique().to_list()) - {"utility", "quantity"}:
            raise ValueError(
                "pack_prefix packs utility rows (and their episodes' quantity rows) only: "
                "set forms=['utility'] or pack_prefix=False"
            )
        train_ds = Dataset.from_dict(pack_episodes(tok, train_df, cfg.max_length))
        eval_p = pack_episodes(tok, eval_df, cfg.max_length) if eval_df.height else {"input_ids": []}
        eval_ds = Dataset.from_dict(eval_p) if eval_p["input_ids"] else None
        if len(train_ds) == 0:
            raise ValueError("pack_prefix: no utility rows to pack in the training rows")
        # about batch_size answers per step, as the unpacked losses
        per_item = sum(len(g) for g in train_ds["suffix_lens"]) / len(train_ds)
        per_step = max(1, round(cfg.batch_size / per_item))
        extra = {"data_collator": packed_collator(tok.pad_token_id), "remove_unused_columns": False}
    elif softmax:
        train_ds = Dataset.from_dict(group_episodes(tok, train_df, cfg.max_length))
        eval_g = group_episodes(tok, eval_df, cfg.max_length) if eval_df.height else {"chosen": []}
        eval_ds = Dataset.from_dict(eval_g) if eval_g["chosen"] else None
        if len(train_ds) == 0:
            raise ValueError(
                "softmax loss: no episode with one 'Yes' option and a negative in the training rows"
            )
        # about batch_size prompts per step, as the pointwise loss: episodes of ~(1 + negatives) options
        per_item = sum(len(g) for g in train_ds["input_ids"]) / len(train_ds)
        per_step = max(1, round(cfg.batch_size / per_item))
        extra = {"data_collator": softmax_collator(tok.pad_token_id), "remove_unused_columns": False}
    else:
        train_ds = Dataset.from_dict(tokenize_pairs(tok, train_df, cfg.max_length))
        eval_ds = Dataset.from_dict(tokenize_pairs(tok, eval_df, cfg.max_length)) if eval_df.height else None
    args = SFTConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=per_step,
        per_device_eval_batch_size=per_step,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16 and device == "cuda",  # CPU: the explicit autocast of compute_loss
        use_cpu=device == "cpu",
        max_length=None if cfg.pack_prefix else cfg.max_length,  # packs hold several prompts: not cut
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        **({"remove_unused_columns": False} if extra else {}),
    )
    state: dict[str, Any] = {"history": [], "stopped_by_time": False, "n": len(train_ds) * cfg.epochs}
    n_qty = 0  # training episodes whose quantity answer is trained (packed only)
    if softmax or cfg.pack_prefix:
        from resources.hf_engine import answer_token_ids

        first = train_df.filter(pl.col("form") == "utility") if "form" in train_df.columns else train_df
        yes_id, no_id = answer_token_ids(tok, first["prompt"][0], ["Yes", "No"])
        if cfg.pack_prefix:
            from assets.prompts.templates import QUANTITY_LABELS

            qty_ids = answer_token_ids(tok, first["prompt"][0], list(QUANTITY_LABELS))
            n_qty = sum(1 for q in train_ds["qty"] if q >= 0)
            cls = _packed_trainer(
                SFTTrainer, device, use_bf16, yes_id, no_id, softmax, qty_ids, cfg.quantity_weight
            )
        else:
            cls = _softmax_trainer(SFTTrainer, device, use_bf16, yes_id, no_id)
    else:
        cls = _answer_head_trainer(SFTTrainer, device, use_bf16)
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        callbacks=[_time_budget_callback(cfg.max_minutes * 60.0, state, log, cfg.decay_by_time)],
        **({"data_collator": extra["data_collator"]} if extra else {}),
    )
    state.update(device=device, bf16=use_bf16, layers=layers_to_transform(n_layers, cfg.top_layers))
    state["quantity_answers"] = n_qty
    state["per_step"] = per_step
    state["per_item"] = per_item
    return trainer, state


def train_lora(
    model_path: str | Path,
    train_rows,
    eval_rows,
    cfg: LoraTrainSettings,
    out_dir: str | Path,
    log: Log = _quiet,
) -> TrainResult:
    """Train a LoRA adapter on prompt/completion rows (loss on the completion only) within the time budget and
    save it (adapter_config.json, adapter_model.safetensors, train_result.json) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _as_frame(train_rows).height == 0:
        raise ValueError("no training rows: the prompt dataset has no rows of the chosen forms")
    trainer, state = build_trainer(model_path, train_rows, eval_rows, cfg, out / "_trainer", log)
    trainable, total = _count_params(trainer.model)
    log(
        f"LoRA r={cfg.lora_r} on layers {state['layers'] or 'all'}: {trainable:,} trainable of {total:,} "
        f"({state['device']}, bf16={state['bf16']}, {len(trainer.train_dataset)} train rows"
        + (f", {state['quantity_answers']} with a quantity answer)" if state.get("quantity_answers") else ")")
    )
    has_eval = trainer.eval_dataset is not None
    eval_before = float(trainer.evaluate()["eval_loss"]) if has_eval else math.nan
    trainer.train()
    eval_after = float(trainer.evaluate()["eval_loss"]) if has_eval else math.nan
    trainer.model.save_pretrained(str(out))
    history = state["history"]
    tail = history[-1:] if history else []
    steps = int(state.get("steps", trainer.state.global_step))
    # examples = answers: items (rows, or episodes of the softmax loss and of packing) times answers per item
    seen = int(min(steps * state.get("per_step", cfg.batch_size), state["n"]) * state.get("per_item", 1.0))
    seconds = float(state.get("seconds", 0.0))
    result = TrainResult(
        adapter_dir=str(out),
        train_loss=float(tail[0]["loss"]) if tail else math.nan,
        eval_loss=eval_after,
        eval_loss_before=eval_before,
        loss_history=history,
        examples_per_sec=seen / seconds if seconds > 0 else 0.0,
        trainable_params=trainable,
        total_params=total,
        seconds=seconds,
        steps=steps,
        examples_seen=seen,
        stopped_by_time=bool(state["stopped_by_time"]),
        layers_to_transform=state["layers"],
        device=state["device"],
        bf16=state["bf16"],
        quantity_episodes=int(state.get("quantity_answers", 0)),
    )
    (out / "train_result.json").write_text(json.dumps(asdict(result), indent=1, default=str))
    _remove_tree(out / "_trainer")
    log(
        f"trained {seen} examples in {seconds:.0f} s ({result.examples_per_sec:.2f} ex/s): "
        f"eval loss {eval_before:.4f} -> {eval_after:.4f}"
    )
    return result


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def adapter_weights_file(adapter_dir: str | Path) -> Path:
    """The adapter's weights file (safetensors, or the .bin fallback)."""
    d = Path(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"no adapter weights in {d}")


def loss_curve_png(result: TrainResult, path: str | Path, title: str = "LoRA training loss") -> Path:
    """The training loss per logging step against examples seen, with the eval loss before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p["examples"] for p in result.loss_history]
    ys = [p["loss"] for p in result.loss_history]
    ax.plot(xs, ys, marker=".", label="train loss (completion tokens)")
    end = max(xs) if xs else float(result.examples_seen)
    for x, y, lab in ((0.0, result.eval_loss_before, "eval before"), (end, result.eval_loss, "eval after")):
        if not math.isnan(y):
            ax.scatter([x], [y], marker="s", s=40, label=f"{lab}: {y:.3f}", zorder=3)
    ax.set_xlabel("training examples")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"{title} ({result.examples_per_sec:.2f} ex/s, {result.seconds:.0f} s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- warehouse and registry


def latest_prompt_files(conn) -> dict[str, str]:
    """{file: path} of the latest prompt dataset indexed in sft_prompt_files, plus "run_id"."""
    try:
        rows = conn.execute(load_sql("alignment/select_latest_prompt_files")).fetchall()
    except Exception as exc:  # noqa: BLE001 - table missing
        raise ValueError(f"no prompt dataset: materialize sft_prompt_dataset first ({exc})") from exc
    if not rows:
        raise ValueError("no prompt dataset: sft_prompt_files is empty (materialize sft_prompt_dataset)")
    out = {file: path for _, file, path in rows}
    out["run_id"] = rows[0][0]
    return out


def read_parquet_or_empty(path: str | None) -> pl.DataFrame | None:
    return pl.read_parquet(path) if path and os.path.exists(path) else None


def write_adapter_row(conn, row: dict[str, Any]) -> None:
    """Append one row to lora_adapters (created on first use)."""
    conn.execute(load_sql("alignment/lora_adapters"))
    conn.execute(load_sql("alignment/insert_lora_adapters"), row)


class AdapterModel:
    """A tiny pyfunc wrapper so the adapter folder can be logged and registered as an MLflow model. Scoring
    goes through LLMResource(adapter=<folder>); predict only returns where the adapter and its base model are."""

    def __init__(self, base_model: str = ""):
        self.base_model = base_model
        self.adapter_path = ""

    def load_context(self, context):
        self.adapter_path = context.artifacts.get("adapter", "")

    def predict(self, context, model_input, params=None):
        return [{"adapter_path": self.adapter_path, "base_model": self.base_model}]


def log_and_register_adapter(
    adapter_dir: str | Path, base_model: str, name: str = REGISTERED_MODEL, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Log the adapter folder as an MLflow pyfunc model inside the ACTIVE run and register it under `name`
    (the version tagged with `tags`, e.g. base_model and dataset_run_id). Returns (model_uri, version)."""
    import mlflow
    import mlflow.pyfunc

    python_model = _pyfunc_wrapper(base_model)
    info = mlflow.pyfunc.log_model(
        name="adapter",
        python_model=python_model,
        artifacts={"adapter": str(adapter_dir)},
        pip_requirements=["peft", "transformers", "torch"],
    )
    version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    return info.model_uri, str(version.version)


def _pyfunc_wrapper(base_model: str):
    import mlflow.pyfunc

    class _Adapter(AdapterModel, mlflow.pyfunc.PythonModel):
        pass

    return _Adapter(base_model)


# ----------------------------------------------------------------------------- asset helpers


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
    time budget decides how many are used; the trainer shuffles episodes) and the rows of seeded val episodes
    holding about eval_examples utility rows, with episode_id and form kept for the grouping. with_quantity
    (by_episode only) adds the quantity row of each of those episodes (the packed loss trains its answer)."""
    utility = read_parquet_or_empty(files.get("train_utility"))
    listwise = read_parquet_or_empty(files.get("train_listwise"))
    if by_episode:
        forms = ["utility", "quantity"] if with_quantity else ["utility"]
        train = mix_forms(utility, None, ["utility"], listwise_share, 0, seed)
        if with_quantity and listwise is not None and {"form", "episode_id"} <= set(listwise.columns):
            episodes = train["episode_id"].unique() if "episode_id" in train.columns else []
            q = _as_frame(listwise).filter(
                (pl.col("form") == "quantity") & pl.col("episode_id").is_in(episodes)
            )
            cols = [c for c in train.columns if c in q.columns]
            train = pl.concat([train, q.select(cols)], how="diagonal_relaxed")
    else:
        train = mix_forms(utility, listwise, forms, listwise_share, max_train_examples, seed)
    val = read_parquet_or_empty(files.get("val"))
    if val is None or eval_examples <= 0:
        return train, train.head(0)
    val = _as_frame(val)
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


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The finite numbers only (MLflow and Dagster metadata reject or mislead on nan)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def png_markdown(path: str | Path) -> str:
    """An inline markdown image (base64) of a PNG file."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![loss curve](data:image/png;base64,{data})"


def adapter_row(
    dagster_run_id: str,
    mlflow_run_id: str,
    version: str,
    result: TrainResult,
    base_model: str,
    files: dict[str, str],
) -> dict[str, Any]:
    """The lora_adapters row of one trained adapter (nan losses stored as NULL)."""

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "dagster_run_id": dagster_run_id,
        "mlflow_run_id": mlflow_run_id,
        "registered_version": version,
        "adapter_path": result.adapter_dir,
        "base_model": base_model,
        "dataset_run_id": files.get("run_id"),
        "train_loss": num(result.train_loss),
        "eval_loss": num(result.eval_loss),
        "examples_per_sec": num(result.examples_per_sec),
    }
