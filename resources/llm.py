"""LLMResource: one interface over the `hf` engine (transformers, CPU or GPU) and the `vllm` engine (GPU).

Both engines implement `Engine` (resources/engine.py): `score_options`, `score_many`, `label_logprobs` and
`sample` on rendered prompt text. Nothing heavy is imported here: `pipelines.definitions` imports this module,
and torch / transformers / vllm load only when `get_engine()` is first called. Engines are cached per process
and per configuration, so assets sharing the resource load the model once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from resources.engine import Engine

BACKENDS = ("hf", "vllm")
FIELDS = ("backend", "model", "adapter", "dtype", "batch_size", "threads", "prefix_reuse", "device")
_ENGINES: dict[tuple, Engine] = {}


class LLMConfigError(ValueError):
    """A bad LLMResource setting, with a one-line message naming the fix."""


class LLMResource(dg.ConfigurableResource):
    """The language model behind the retail agents: backend, model, adapter and batching."""

    backend: str = "hf"  # "hf": transformers on CPU or GPU; "vllm": vLLM on GPU (pip install -e '.[gpu]')
    model: str = (
        "default"  # "default" (embedded SmolLM2-135M-Instruct), a local model folder or a Hugging Face id
    )
    adapter: str = ""  # a peft LoRA adapter folder applied on top of the model; "" for the base model
    dtype: str = "float32"  # fp32 keeps scores exact (bf16 on CPU flipped 25% of top choices, docs/notes.md)
    batch_size: int = 16  # rows per forward pass; 16 was the fastest measured on 2 CPU cores
    threads: int = 2  # torch CPU threads (the machine's cores)
    prefix_reuse: bool = True  # run each episode's shared prefix once and only the options as suffixes
    device: str = "auto"  # "auto" (cuda if present, else cpu), "cpu" or "cuda"

    def engine_key(self) -> tuple:
        return (
            self.backend,
            self.model,
            self.adapter,
            self.dtype,
            self.batch_size,
            self.threads,
            self.prefix_reuse,
            self.device,
        )

    def check(self) -> None:
        """Raise LLMConfigError (one line) for settings that cannot work, before loading anything."""
        if self.backend not in BACKENDS:
            raise LLMConfigError(
                f"LLMResource.backend is {self.backend!r}: use 'hf' (CPU or GPU) or 'vllm' (GPU)"
            )
        if self.dtype not in ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise LLMConfigError(
                f"LLMResource.dtype is {self.dtype!r}: use 'float32' (exact scores) or 'bfloat16'"
            )
        if self.batch_size < 1:
            raise LLMConfigError(
                f"LLMResource.batch_size is {self.batch_size}: use a positive number such as 16"
            )

    def with_adapter(self, adapter: str) -> LLMResource:
        """The same settings with another adapter ("" keeps this resource's own)."""
        return LLMResource(**{**{k: getattr(self, k) for k in FIELDS}, "adapter": adapter or self.adapter})

    def model_info(self) -> dict[str, str]:
        """What changes a score (the backend, the resolved model, the adapter and its weights' sha256, the
        dtype), for caches and lineage; batch size and threads do not change it."""
        from pathlib import Path

        from resources.models import resolve_model
        from resources.warehouse import sha256_file

        weights = (
            [p for p in Path(self.adapter).glob("adapter_model.*") if p.is_file()] if self.adapter else []
        )
        return {
            "backend": self.backend,
            "model": str(resolve_model(self.model)),
            "adapter": self.adapter,
            "adapter_sha256": sha256_file(weights[0]) if weights else "",
            "dtype": self.dtype,
        }

    def get_engine(self) -> Engine:
        """The engine for these settings (HFEngine or VLLMEngine), loaded once per process."""
        self.check()
        key = self.engine_key()
        if key not in _ENGINES:
            from resources.models import resolve_model

            model_path = resolve_model(self.model)  # one-line ModelPathError for a bad path
            if self.backend == "hf":
                from resources.hf_engine import HFEngine

                engine = HFEngine(
                    model_path,
                    adapter_path=self.adapter or None,
                    device=self.device,
                    dtype=self.dtype,
                    threads=self.threads,
                    batch_size=self.batch_size,
                    prefix_reuse=self.prefix_reuse,
                )
            else:
                from resources.vllm_engine import VLLMEngine

                engine = VLLMEngine(model_path, adapter_path=self.adapter or None, dtype=self.dtype)
            _ENGINES[key] = engine
        return _ENGINES[key]


def clear_engines() -> None:
    """Forget the cached engines (frees their memory once nothing else holds them)."""
    _ENGINES.clear()
