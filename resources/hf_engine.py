"""The `hf` engine: transformers on CPU or GPU, exact choice distributions from log-probabilities.

The contract (score_options, score_many, label_logprobs, sample on rendered prompt text) and its common half
are `Engine` in resources/engine.py; this module holds the transformers side:

- score mode: with prefix reuse the prefix runs once, its KV cache is gathered or expanded into a fresh
  `DynamicCache` for every batch (a DynamicCache grows in place), and only the right-padded suffixes run, with
  explicit position ids (prefix length + arange) and a mask covering the real prefix and suffix tokens.
  `score_many` batches suffixes across episodes; prefixes of a chunk run as one right-padded batch, so the
  gathered caches carry masked pad slots. The utility is the difference of the two answers' logits.
- `label_logprobs`: the labels' logits after each full prompt (log-softmaxed by the contract).
- `sample`: constrained draws from softmax(logits / temperature) over the allowed answer tokens when each is
  one token, else free generation under the strict grammar, failures drawn again by prompt (torch's global
  RNG, seeded and forked per call).

Scores are computed in fp32 from the final hidden state projected on the answer rows of the output head
only (log-softmax differences do not need the full vocabulary).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from resources.engine import (
    AnswerTokenError,
    Engine,
    EngineStats,
    Redraw,
    SampleResult,
    SampleSpec,
    answer_token_ids,
    encode,
    parse_answer,
)

# the names callers import from here (tests, assets/alignment); their home is resources/engine.py
__all__ = [
    "AnswerTokenError",
    "EngineStats",
    "HFEngine",
    "SampleResult",
    "answer_token_ids",
    "check_device",
    "encode",
    "parse_answer",
]

log = logging.getLogger(__name__)


def _torch_dtype(name: str):
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    table |= {"float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype {name!r} is not one of float32, bfloat16, float16")
    return table[name]


def check_device(device: str) -> None:
    """A clear one-line error for a device torch cannot use here (a typo, or cuda on a machine without it)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device: use 'auto', 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here; use device='auto' or 'cpu'")


class HFEngine(Engine):
    """transformers inference for choice scoring and sampling (see the module docstring)."""

    backend = "hf"

    def __init__(
        self,
        model_path: str | Path = "default",
        adapter_path: str | Path | None = None,
        device: str = "auto",
        dtype: str = "float32",
        threads: int = 2,
        batch_size: int = 16,
        prefix_reuse: bool = True,
        progress: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        check_device(device)
        if device == "cpu" and threads and threads > 0:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.dtype = _torch_dtype(dtype)
        self.batch_size = max(1, int(batch_size))
        self.prefix_reuse = prefix_reuse
        super().__init__(model_path, adapter_path, progress)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        if self.adapter_path:
            from peft import PeftModel

            if not Path(self.adapter_path, "adapter_config.json").is_file():
                raise ValueError(
                    f"adapter path {self.adapter_path} has no adapter_config.json: pass a peft LoRA folder or ''"
                )
            model = PeftModel.from_pretrained(model, self.adapter_path).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.decoder = self.model.base_model
        import inspect

        # transformers 5.24 renamed the decoder's `past_key_values` argument and output to `cache`
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        )
        head = self.model.get_output_embeddings()
        self._head_w = head.weight
        self._head_b = getattr(head, "bias", None)
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # ------------------------------------------------------------------ forward passes
    def _project(self, hidden, ids: list[int]) -> np.ndarray:
        """fp32 logits of the given token ids from final hidden states (n, H)."""
        import torch

        idx = torch.as_tensor(ids, device=hidden.device)
        w = self._head_w.index_select(0, idx).float()
        logits = hidden.float() @ w.T
        if self._head_b is not None:
            logits = logits + self._head_b.index_select(0, idx).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.cpu().numpy().astype(np.float64)

    def _right_padded(self, seqs: list[list[int]]):
        """(input_ids, attention_mask, position_ids, lengths) of token sequences as one right-padded batch on
        CPU: pads after each sequence (masked), positions 0.. from each sequence's start."""
        import torch

        lens = [len(q) for q in seqs]
        width = max(lens)
        inp = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, q in enumerate(seqs):
            inp[r, : lens[r]] = torch.as_tensor(q)
            mask[r, : lens[r]] = 1
        pos = torch.arange(width).unsqueeze(0).expand(len(seqs), -1)
        return inp, mask, pos, lens

    def _full_rows(self, seqs: list[list[int]], ids: list[int], bar=None) -> np.ndarray:
        """Logits of `ids` after each full sequence: length-sorted, right-padded batches, explicit positions."""
        import torch

        out = np.zeros((len(seqs), len(ids)))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                inp, mask, pos, lens = self._right_padded([seqs[i] for i in chunk])
                hs = self.decoder(
                    input_ids=inp.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=pos.to(self.device),
                    use_cache=False,
                ).last_hidden_state
                last = torch.as_tensor(lens, device=self.device) - 1
                h = hs[torch.arange(len(chunk), device=self.device), last]
                out[chunk] = self._project(h, ids)
                self.stats.tokens += sum(lens)
                if bar is not None:
                    bar.update(len(chunk))
        return out

    def _prefixed_rows(
        self, prefixes: list[list[int]], rows: list[tuple[int, list[int]]], ids: list[int], bar=None
    ) -> np.ndarray:
        """Logits of `ids` after prefix[item] + suffix for each (item, suffix) row, the prefixes run once."""
        import torch
        from transformers import DynamicCache

        out = np.zeros((len(rows), len(ids)))
        by_item: dict[int, list[int]] = {}
        for r, (item, _) in enumerate(rows):
            by_item.setdefault(item, []).append(r)
        items = sorted(by_item)
        dev = self.device
        with torch.inference_mode():
            for cstart in range(0, len(items), self.batch_size):
                chunk_items = items[cstart : cstart + self.batch_size]
                # 1. the chunk's prefixes as one right-padded batch: its cache has masked pad slots at the end
                pin, pmask, ppos, plens = self._right_padded([prefixes[i] for i in chunk_items])
                pmask = pmask.to(dev)
                pout = self.decoder(
                    input_ids=pin.to(dev), attention_mask=pmask, position_ids=ppos.to(dev), use_cache=True
                )
                pcache = getattr(pout, "cache", None) or pout.past_key_values
                del pout
                kv = [(layer.keys, layer.values) for layer in pcache.layers]
                del pcache
                self.stats.tokens += sum(plens)
                # 2. the chunk's suffixes, length-sorted, in batches over a fresh cache gathered per batch
                slot = {item: s for s, item in enumerate(chunk_items)}
                crow = [r for i in chunk_items for r in by_item[i]]
                crow.sort(key=lambda r: -len(rows[r][1]))
                for bstart in range(0, len(crow), self.batch_size):
                    batch = crow[bstart : bstart + self.batch_size]
                    slots = [slot[rows[r][0]] for r in batch]
                    slens = [len(rows[r][1]) for r in batch]
                    sw = max(slens)
                    b = len(batch)
                    if len(set(slots)) == 1:  # one episode: expanded views, no copy
                        s0 = slots[0]
                        layers = [
                            (k[s0 : s0 + 1].expand(b, -1, -1, -1), v[s0 : s0 + 1].expand(b, -1, -1, -1))
                            for k, v in kv
                        ]
                    else:
                        sel = torch.as_tensor(slots, device=dev)
                        layers = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in kv]
                    cache = DynamicCache(layers)
                    sin = torch.full((b, sw), self.pad_id, dtype=torch.long)
                    smask = torch.zeros((b, sw), dtype=torch.long)
                    spos = torch.zeros((b, sw), dtype=torch.long)
                    for j, r in enumerate(batch):
                        sin[j, : slens[j]] = torch.as_tensor(rows[r][1])
                        smask[j, : slens[j]] = 1
                        spos[j] = plens[slots[j]] + torch.arange(sw)
                    sel = torch.as_tensor(slots, device=dev)
                    mask = torch.cat([pmask.index_select(0, sel), smask.to(dev)], dim=1)
                    hs = self.decoder(
                        input_ids=sin.to(dev),
                        attention_mask=mask,
                        position_ids=spos.to(dev),
                        use_cache=True,
                        **{self._cache_arg: cache},
                    ).last_hidden_state
                    del cache, layers
                    last = torch.as_tensor(slens, device=dev) - 1
                    h = hs[torch.arange(b, device=dev), last]
                    out[batch] = self._project(h, ids)
                    self.stats.tokens += sum(slens)
                    if bar is not None:
                        bar.update(b)
                del kv
        return out

    # ------------------------------------------------------------------ score mode
    def _score_rows(
        self, items: list[tuple[str, list[str]]], ids: list[int], prefix_reuse: bool | None, progress: bool
    ) -> tuple[list[tuple[int, int]], np.ndarray, int]:
        """Answer logits of every option: episodes whose prompt tokenizes the same split at the prefix run
        it once (`_prefixed_rows`), the others as full prompts (counted as fallbacks)."""
        from tqdm.auto import tqdm

        reuse = self.prefix_reuse if prefix_reuse is None else prefix_reuse
        prefixes: list[list[int]] = []
        pref_rows: list[tuple[int, list[int]]] = []
        pref_where: list[tuple[int, int]] = []
        full_rows: list[list[int]] = []
        full_where: list[tuple[int, int]] = []
        n_fallback = 0
        for it, (prefix, suffixes) in enumerate(items):
            if not suffixes:
                continue
            split = None
            if reuse and prefix:
                p = self.encode(prefix)
                ss = [self.encode(s) for s in suffixes]
                if p and all(
                    s and p + s == self.encode(prefix + text) for s, text in zip(ss, suffixes, strict=True)
                ):
                    split = (p, ss)
                else:
                    n_fallback += 1
            if split is not None:
                k = len(prefixes)
                prefixes.append(split[0])
                for j, s in enumerate(split[1]):
                    pref_rows.append((k, s))
                    pref_where.append((it, j))
            else:
                for j, s in enumerate(suffixes):
                    full_rows.append(self.encode(prefix + s))
                    full_where.append((it, j))
        if n_fallback:
            log.warning(
                "prefix reuse: %d of %d episodes tokenize differently split at the prefix; scored as full prompts "
                "(split the prompt after a special token such as '<|im_end|>\\n')",
                n_fallback,
                len(items),
            )
        n_rows = len(pref_rows) + len(full_rows)
        values = [np.zeros((0, len(ids)))]
        with tqdm(
            total=n_rows, desc="score", unit="opt", disable=not progress or n_rows == 0, mininterval=1.0
        ) as bar:
            if pref_rows:
                values.append(self._prefixed_rows(prefixes, pref_rows, ids, bar))
            if full_rows:
                values.append(self._full_rows(full_rows, ids, bar))
        return pref_where + full_where, np.concatenate(values), n_fallback

    def _label_values(self, seqs: list[list[int]], ids: list[int]) -> np.ndarray:
        return self._full_rows(seqs, ids)

    # ------------------------------------------------------------------ sample mode
    def _generate(
        self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int
    ) -> list[list[str]]:
        """n sampled continuations per prompt, decoded without special tokens. Each prompt runs ONCE (a
        right-padded batch with explicit positions, as in score mode); its cache is shared by its n samples
        (expanded, not recomputed), which then decode token by token until an end token or max_new_tokens.
        Sampling is from softmax(logits / temperature) over the whole vocabulary (torch's global RNG, which
        `sample` seeds)."""
        import torch
        from transformers import DynamicCache

        dev = self.device
        stop = {t for t in (self.tokenizer.eos_token_id, self.pad_id) if t is not None}
        stop |= {
            i
            for i in self.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
            if isinstance(i, int) and i >= 0 and i != self.tokenizer.unk_token_id
        }
        texts: list[list[str]] = []
        per_batch = max(1, self.batch_size // max(n, 1))
        with torch.inference_mode():
            for start in range(0, len(prompts), per_batch):
                chunk = prompts[start : start + per_batch]
                pin, pmask, ppos, plens = self._right_padded(chunk)
                out = self.decoder(
                    input_ids=pin.to(dev),
                    attention_mask=pmask.to(dev),
                    position_ids=ppos.to(dev),
                    use_cache=True,
                )
                cache = getattr(out, "cache", None) or out.past_key_values
                last = torch.as_tensor(plens, device=dev) - 1
                h = out.last_hidden_state[torch.arange(len(chunk), device=dev), last]
                del out
                self.stats.tokens += sum(plens)
                rep = torch.arange(len(chunk), device=dev).repeat_interleave(n)
                layers = [
                    (layer.keys.index_select(0, rep), layer.values.index_select(0, rep))
                    for layer in cache.layers
                ]
                del cache
                kv = DynamicCache(layers)
                mask = pmask.to(dev).index_select(0, rep)
                pos = torch.as_tensor(plens, device=dev).index_select(0, rep)
                h = h.index_select(0, rep)
                b = h.shape[0]
                tokens = torch.zeros((b, max_new_tokens), dtype=torch.long)
                done = torch.zeros(b, dtype=torch.bool)
                for step in range(max_new_tokens):
                    logits = self._logits_all(h)
                    probs = torch.softmax(logits / float(temperature), dim=-1)
                    nxt = torch.multinomial(probs.cpu(), 1).squeeze(1)
                    nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
                    tokens[:, step] = nxt
                    done |= torch.as_tensor([int(t) in stop for t in nxt.tolist()])
                    if bool(done.all()) or step == max_new_tokens - 1:
                        break
                    mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
                    hs = self.decoder(
                        input_ids=nxt.view(b, 1).to(dev),
                        attention_mask=mask,
                        position_ids=(pos + step).view(b, 1),
                        use_cache=True,
                        **{self._cache_arg: kv},
                    ).last_hidden_state
                    h = hs[:, -1]
                    self.stats.tokens += b
                del kv, layers
                for r in range(len(chunk)):
                    seqs = []
                    for j in range(r * n, (r + 1) * n):
                        ids = []
                        for t in tokens[j].tolist():
                            if t in stop:
                                break
                            ids.append(t)
                        seqs.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                    texts.append(seqs)
        return texts

    def _logits_all(self, hidden):
        """fp32 logits over the whole vocabulary from final hidden states (n, H)."""
        import torch

        logits = hidden.float() @ self._head_w.float().T
        if self._head_b is not None:
            logits = logits + self._head_b.float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """torch's global RNG seeded for one `sample` call and restored after it (the caller's is untouched)."""
        import torch

        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            yield

    def _draw(self, prompts: list[str], spec: SampleSpec) -> tuple[list[SampleResult], Redraw]:
        """Constrained (when every allowed answer is one token after the prompts): k draws per prompt from
        softmax(logits of the allowed answer tokens / temperature), one forward pass per prompt, nothing
        to redraw. Otherwise free generation; a retry round runs each prompt with failed slots once, its
        failed slots drawn together."""
        import torch

        allowed = list(spec.allowed)
        if spec.constrained and prompts:
            try:
                ids = self.answer_token_ids(prompts[0], allowed)
            except AnswerTokenError:
                ids = None
            if ids is not None:
                logits = self._full_rows([self.encode(p) for p in prompts], ids)
                probs = torch.softmax(
                    torch.as_tensor(logits, dtype=torch.float64) / float(spec.temperature), dim=-1
                )
                draws = torch.multinomial(probs, spec.k, replacement=True).tolist()
                results = [
                    SampleResult(answers=[allowed[j] for j in row], raw=[allowed[j] for j in row])
                    for row in draws
                ]
                return results, lambda todo, attempt: []
        enc = [self.encode(p) for p in prompts]

        def generate(seqs: list[list[int]], n: int) -> list[list[str]]:
            return self._generate(seqs, n, spec.temperature, spec.max_new_tokens)

        def redraw(todo: list[tuple[int, int]], attempt: int) -> list[str]:
            slots: dict[int, list[int]] = {}
            for i, s in todo:
                slots.setdefault(i, []).append(s)
            by_n: dict[int, list[int]] = {}
            for i, ss in slots.items():
                by_n.setdefault(len(ss), []).append(i)
            text: dict[tuple[int, int], str] = {}
            for n_fail, idx in by_n.items():
                for i, texts in zip(idx, generate([enc[i] for i in idx], n_fail), strict=True):
                    text.update(zip([(i, s) for s in slots[i]], texts, strict=True))
            return [text[t] for t in todo]

        return [SampleResult.parsed(ts, spec.allowed) for ts in generate(enc, spec.k)], redraw
