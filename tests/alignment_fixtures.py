"""Toy alignment data shared by the CPU tests (test_alignment.py) and the CUDA tests (test_cuda.py): no
Dagster import, so the GPU machine's harness can load it with the plain-function modules alone."""

import polars as pl

SYSTEM = "<|im_start|>system\nYou are a shopper.<|im_end|>\n"
YES_WORDS = ["apple", "pear", "plum", "grape", "mango", "peach", "lemon", "melon"]
NO_WORDS = ["stone", "brick", "nail", "glue", "sand", "wire", "chalk", "tile"]
YES_ID = 10539  # SmolLM2's "Yes" right after the assistant turn starts (docs/notes.md)
NO_ID = 5230


def prompt(word: str, i: int) -> str:
    return (
        f'{SYSTEM}<|im_start|>user\nOffer {i}: "{word}". Do you buy it? Answer Yes or No.<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def toy_rows(n_repeats: int = 2) -> pl.DataFrame:
    """A memorisable toy set: fruit -> Yes, hardware -> No (16 words, each n_repeats times)."""
    rows = []
    for r in range(n_repeats):
        for i, w in enumerate(YES_WORDS):
            rows.append(
                {
                    "episode_id": f"e{r}{i}y",
                    "form": "utility",
                    "product_id": w,
                    "prompt": prompt(w, i),
                    "completion": "Yes",
                }
            )
        for i, w in enumerate(NO_WORDS):
            rows.append(
                {
                    "episode_id": f"e{r}{i}n",
                    "form": "utility",
                    "product_id": w,
                    "prompt": prompt(w, i),
                    "completion": "No",
                }
            )
    return pl.DataFrame(rows)


def episode_rows(n_episodes: int = 16) -> pl.DataFrame:
    """Episodes of 4 options: one fruit answered Yes, three hardware words answered No."""
    rows = []
    for e in range(n_episodes):
        words = [(YES_WORDS[e % 8], "Yes")] + [(NO_WORDS[(e + j) % 8], "No") for j in range(3)]
        for i, (w, a) in enumerate(words[e % 4 :] + words[: e % 4]):  # the chosen one moves around
            rows.append(
                {
                    "episode_id": f"e{e}",
                    "form": "utility",
                    "product_id": w,
                    "prompt": prompt(w, i),
                    "completion": a,
                }
            )
    return pl.DataFrame(rows)


# The tiny model's training settings: every field of LoraTrainSettings (which has no defaults; the asset's
# LoraAdapterConfig holds them) but max_steps and epochs, which each test states. Fast: a high learning rate, no
# warmup, LoRA on the top layer only, the plain pointwise loss.
FAST = dict(
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    top_layers=1,
    target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    learning_rate=5e-3,
    lr_scheduler="constant_with_warmup",
    warmup_steps=0,
    batch_size=8,
    max_minutes=5.0,
    max_length=512,
    bf16_autocast=True,
    gradient_checkpointing=False,
    logging_steps=2,
    seed=0,
    num_threads=2,
    loss="pointwise",
    decay_by_time=False,
    pack_prefix=False,
    quantity_weight=0.0,
    save_steps=0,
)


QTY_OF = {w: str(1 + i % 3) for i, w in enumerate(YES_WORDS)}  # each fruit's quantity answer: "1".."3"


def quantity_prompt(word: str) -> str:
    return (
        f'{SYSTEM}<|im_start|>user\nYou buy "{word}". How many units? 1 to 9 (9 = 9+).<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def with_quantity_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """episode_rows plus one quantity row per episode (its Yes option's word, answer QTY_OF[word])."""
    chosen = rows.filter(pl.col("completion") == "Yes")
    q = chosen.with_columns(
        form=pl.lit("quantity"),
        prompt=pl.col("product_id").map_elements(quantity_prompt, return_dtype=pl.String),
        completion=pl.col("product_id").replace_strict(QTY_OF, return_dtype=pl.String),
    )
    return pl.concat([rows, q.select(rows.columns)])
