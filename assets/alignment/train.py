"""LoRA post-training of the retail agent: trl's SFTTrainer + peft on the items of data.py with a loss of
losses.py. No dagster import.

Recipe (docs/notes.md, "Post-training the 135M model on CPU"): the yes/no utility form, LoRA on all projections of
the top layers only (peft's `layers_to_transform`), bf16 autocast, loss on the answer positions only, a budget
of optimizer steps with a seed (the same adapter on a busy machine as on a quiet one; wall time only a cap).
Losses: pointwise (cross-entropy of each answer) or softmax (the episode's choice over its options); packing
puts an episode's prefix once before all its options (block attention mask), which the asset uses by default
with the softmax loss (docs/measurements.md). `train_lora` reads like trl's `scripts/sft.py`: load data ->
build trainer -> train -> save.

Heavy libraries (torch, transformers, peft, trl, matplotlib) are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from assets.alignment.data import as_frame, group_episodes, pack_episodes, tokenize_pairs
from assets.alignment.losses import (
    _answer_head_trainer,
    _packed_trainer,
    _softmax_trainer,
    packed_collator,
    softmax_collator,
)

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class LoraTrainSettings:
    """The knobs of one LoRA training run. No defaults here: LoraAdapterConfig (assets/alignment/__init__.py)
    holds them, each with its reason, and `settings_of(config)` builds this from it."""

    lora_r: int  # rank of the LoRA matrices
    lora_alpha: int  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float  # dropout on the LoRA input path
    top_layers: int  # LoRA on the top N decoder layers only; 0 (or >= the model's layers) = all layers
    target_modules: tuple[str, ...]  # which linear modules of a layer get LoRA
    learning_rate: float  # AdamW learning rate
    lr_scheduler: str  # transformers' lr_scheduler_type
    warmup_steps: int  # linear warmup steps
    batch_size: int  # answers per optimizer step (episodes: batch_size / options, at least 1)
    epochs: float  # passes over the training items (the step budget usually stops earlier)
    max_steps: int  # the training budget in optimizer steps; 0 = the epochs decide
    max_minutes: float  # safety cap on the training loop's wall time (evaluation excluded); 0 = none
    max_length: int  # tokens per example; longer ones are truncated from the start (keep the answer)
    bf16_autocast: bool  # bf16 autocast (CPU or GPU) where the device supports it
    gradient_checkpointing: bool  # recompute activations in the backward (slower, less memory)
    logging_steps: int  # steps between two points of the loss curve
    seed: int  # seed of the LoRA init, the shuffling and the dropout
    num_threads: int  # torch CPU threads; 0 = torch's default
    loss: str  # 'pointwise' (cross-entropy of each Yes/No answer) or 'softmax' (the episode's choice)
    decay_by_time: bool  # learning rate times a cosine of the elapsed share of the time cap
    pack_prefix: bool  # utility form: one sequence per episode, its prefix computed once for its options
    quantity_weight: float  # packed: weight of the quantity answer's cross-entropy added per episode
    save_steps: int  # with a checkpoint folder: save a resumable checkpoint every this many steps; 0 = none


def settings_of(config: Any) -> LoraTrainSettings:
    """The training settings read off a config object holding every field of LoraTrainSettings by name (the
    asset's LoraAdapterConfig); a field it lacks is an AttributeError, never a default of this module's."""
    values = {f.name: getattr(config, f.name) for f in fields(LoraTrainSettings)}
    return LoraTrainSettings(**values | {"target_modules": tuple(values["target_modules"])})


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
    stopped_by: str = ""  # "steps" (the step budget), "epoch" (the data ran out) or "time_cap" (the cap)
    layers_to_transform: list[int] | None = None
    device: str = "cpu"
    bf16: bool = False
    quantity_episodes: int = 0  # training packs that carry a quantity answer (packed training only)
    resumed_from_step: int = 0  # the checkpoint's step this run went on from (0: trained from the start)

    def metrics(self) -> dict[str, float]:
        """Plain numbers for MLflow and Dagster metadata."""
        keys = ("train_loss", "eval_loss", "eval_loss_before", "examples_per_sec", "seconds", "steps")
        out = {k: float(getattr(self, k)) for k in keys}
        out |= {
            "trainable_params": float(self.trainable_params),
            "total_params": float(self.total_params),
            "examples_seen": float(self.examples_seen),
            "stopped_by_time_cap": float(self.stopped_by == "time_cap"),
            "quantity_episodes": float(self.quantity_episodes),
        }
        return out


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matrix instructions


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (CPU_BF16_FLAGS in /proc/cpuinfo). Without them torch's CPU
    autocast emulates bf16 and a LoRA step is far slower than in fp32: 1.1 against 55.6 GFLOP/s for a
    512 x 576 x 1,536 matmul on a 2-core AVX2 EPYC (docs/measurements.md). Unreadable: False (fp32, safe)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {
        f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()
    }
    return any(f in flags for f in CPU_BF16_FLAGS)


def pick_device() -> tuple[str, bool]:
    """(device, bf16 fast): ('cuda', bf16 supported) where a GPU is there, else ('cpu', cpu_has_bf16())."""
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    return "cpu", cpu_has_bf16()


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
    """The learning-rate factor of the time-cosine schedule: 1 at the start, 0 when the time cap is spent."""
    if max_seconds <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(elapsed / max_seconds, 0.0), 1.0)))


def _time_cap_callback(
    max_seconds: float, state: dict[str, Any], log: Log, warn: Log, decay_by_time: bool = False
):
    from transformers import TrainerCallback

    class TimeCap(TrainerCallback):
        """Stops training once the loop has run max_seconds (a safety cap: the step budget should end it
        first), warning that the adapter then depends on the machine's load; records the loss curve and the
        loop's time. decay_by_time: before each optimizer step the learning rate is the scheduler's times the
        time-cosine factor of the cap, so that it reaches 0 when the cap runs out (the schedule then depends
        on the machine's speed: off by default)."""

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
                warn(
                    f"time cap of {max_seconds / 60:g} min reached after {elapsed:.0f} s at step "
                    f"{st.global_step} of {st.max_steps}: stopping; this adapter depends on the machine's load"
                )

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

    return TimeCap()


def build_trainer(
    model_path: str | Path,
    train_rows,
    eval_rows,
    cfg: LoraTrainSettings,
    work_dir: Path,
    log: Log,
    warn: Log | None = None,
    checkpointed: bool = False,
):
    """The SFTTrainer (peft-wrapped model, pre-tokenized prompt/completion rows with completion masks) and the
    bookkeeping dict its time-cap callback fills. Exposed for the tests (they inspect the collated batch).
    Seeded throughout: the LoRA init here, the shuffling and the dropout by the trainer (seed, data_seed).
    checkpointed: save a resumable checkpoint in work_dir every cfg.save_steps steps (train_lora resumes)."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
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
    set_seed(cfg.seed)  # the LoRA init draws here, whatever loading the base model drew
    model = get_peft_model(model, lora_config(cfg, n_layers))
    train_df, eval_df = as_frame(train_rows), as_frame(eval_rows)
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
    # transformers lets max_steps override the epochs (it cycles the data): the budget is the smaller of the two
    epoch_steps = math.ceil(cfg.epochs * math.ceil(len(train_ds) / per_step))
    max_steps = min(cfg.max_steps, epoch_steps) if cfg.max_steps > 0 else -1
    args = SFTConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=per_step,
        per_device_eval_batch_size=per_step,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        # checkpoints only where a resumable folder is given (train_lora's checkpoint_dir): the last one is kept
        save_strategy="steps" if checkpointed else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=1,
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
        callbacks=[_time_cap_callback(cfg.max_minutes * 60.0, state, log, warn or log, cfg.decay_by_time)],
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
    warn: Log | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on prompt/completion rows (loss on the completion only) for cfg.max_steps optimizer
    steps (or cfg.epochs, whichever ends first; the time cap cfg.max_minutes only as a safety net, `warn`ed
    when it bites) and save it (adapter_config.json, adapter_model.safetensors, train_result.json) in out_dir.

    checkpoint_dir (with cfg.save_steps > 0): a resumable checkpoint (weights, optimizer, scheduler, RNG
    states, data position) is saved there every save_steps steps, and a training that finds one there goes on
    from it rather than from step 0; the folder is removed once the adapter is saved. The caller keys the
    folder by everything that shapes the training (checkpoint_key), so that only a compatible run resumes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if as_frame(train_rows).height == 0:
        raise ValueError("no training rows: the prompt dataset has no rows of the chosen forms")
    checkpointed = checkpoint_dir is not None and cfg.save_steps > 0
    work = Path(checkpoint_dir) if checkpointed else out / "_trainer"
    trainer, state = build_trainer(model_path, train_rows, eval_rows, cfg, work, log, warn, checkpointed)
    resume = latest_checkpoint(work) if checkpointed else None
    if resume is not None:
        log(f"resuming the LoRA training from {resume.name} (checkpoint of an interrupted run)")
    trainable, total = _count_params(trainer.model)
    log(
        f"LoRA r={cfg.lora_r} on layers {state['layers'] or 'all'}: {trainable:,} trainable of {total:,} "
        f"({state['device']}, bf16={state['bf16']}, {len(trainer.train_dataset)} train rows"
        + (f", {state['quantity_answers']} with a quantity answer)" if state.get("quantity_answers") else ")")
    )
    has_eval = trainer.eval_dataset is not None
    eval_before = float(trainer.evaluate()["eval_loss"]) if has_eval else math.nan
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    eval_after = float(trainer.evaluate()["eval_loss"]) if has_eval else math.nan
    trainer.model.save_pretrained(str(out))
    history = state["history"]
    tail = history[-1:] if history else []
    steps = int(state.get("steps", trainer.state.global_step))
    # examples = answers: items (rows, or episodes of the softmax loss and of packing) times answers per item
    seen = int(min(steps * state.get("per_step", cfg.batch_size), state["n"]) * state.get("per_item", 1.0))
    seconds = float(
        state.get("seconds", 0.0)
    )  # this run's loop only: a resumed run did part of `seen` earlier
    resumed = int(resume.name.rsplit("-", 1)[-1]) if resume is not None else 0
    seen_here = seen * (steps - resumed) / steps if steps > 0 else 0
    if state["stopped_by_time"]:
        stopped_by = "time_cap"
    else:
        stopped_by = "steps" if 0 < cfg.max_steps <= steps else "epoch"
    result = TrainResult(
        adapter_dir=str(out),
        train_loss=float(tail[0]["loss"]) if tail else math.nan,
        eval_loss=eval_after,
        eval_loss_before=eval_before,
        loss_history=history,
        examples_per_sec=seen_here / seconds if seconds > 0 else 0.0,
        trainable_params=trainable,
        total_params=total,
        seconds=seconds,
        steps=steps,
        examples_seen=seen,
        stopped_by=stopped_by,
        layers_to_transform=state["layers"],
        device=state["device"],
        bf16=state["bf16"],
        quantity_episodes=int(state.get("quantity_answers", 0)),
        resumed_from_step=resumed,
    )
    (out / "train_result.json").write_text(json.dumps(asdict(result), indent=1, default=str))
    _remove_tree(work)
    log(
        f"trained {seen} examples in {steps} steps, {seconds:.0f} s ({result.examples_per_sec:.2f} ex/s, "
        f"stopped by {stopped_by}): "
        f"eval loss {eval_before:.4f} -> {eval_after:.4f}"
    )
    return result


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder under work_dir (one holding trainer_state.json), or None."""
    found = [
        p
        for p in Path(work_dir).glob("checkpoint-*")
        if p.name.rsplit("-", 1)[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]), default=None)


def checkpoint_key(
    model_path: str | Path, dataset_id: str, cfg: LoraTrainSettings, extra: dict | None = None
) -> str:
    """A short hash of everything that shapes a training run (base model, prompt dataset, every setting but
    the wall-time cap, the logging and the checkpoint interval, and `extra`): runs with the same key may resume
    each other's checkpoints, and no other run does."""
    import hashlib

    settings = {
        k: v for k, v in asdict(cfg).items() if k not in ("max_minutes", "logging_steps", "save_steps")
    }
    text = json.dumps(
        {"model": str(model_path), "dataset": dataset_id, "settings": settings, "extra": extra or {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
