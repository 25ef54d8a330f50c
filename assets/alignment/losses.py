"""The three losses of the alignment stage, each with its collator and its SFTTrainer subclass: pointwise
(cross-entropy of each Yes/No answer, on the answer positions only), softmax (the episode's choice over its
options) and packed (an episode's prefix once before all its options, either loss). No dagster import; torch
is imported inside the functions."""

from __future__ import annotations

from typing import Any


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
