"""Save a model of a given architecture with random weights: the speed of the real one, none of its size.

A lent GPU machine takes at most 64 MiB from here, and the default model's weights are 538 MB; its config
(817 bytes) and tokenizer (3.5 MB) travel instead, and this script builds the same architecture there.
Speed depends on the shapes only, so decisions/s and tokens/s of benchmarks/simulate.py hold for the real
weights; the answers do not.

    python benchmarks/device/random_model.py CONFIG_DIR OUT_DIR [TOKENIZER_DIR (default: CONFIG_DIR)]
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(src: str, out: str, tokenizer: str | None = None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer or src).save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"random {config.model_type} with {n / 1e6:.1f}M parameters saved to {out_dir}")
    return out_dir


if __name__ == "__main__":
    main(*sys.argv[1:4])
