"""Resumable decisions: retail_decisions saves every decided chunk of episodes in a folder named by everything
that makes those decisions (method, settings, model, adapter, the episodes themselves), so that a run that
stops (a crash, a killed process, the end of a machine's lease) goes on where it stopped when materialized
again, instead of deciding hours of episodes a second time. The folder is removed once the method's rows are
in DuckDB. No dagster import.

A chunk is complete only when its marker file (chunk_NNNNNN.json) exists: it is written last, through a
rename, so a chunk cut in the middle of its writing is decided again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

CHUNK_SCHEMA = {
    "episode_id": pl.Utf8,
    "utilities": pl.List(pl.Float64),
    "qty_mean": pl.Float64,
    "qty_median": pl.Float64,
}


def checkpoint_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the things that determine a method's decisions (JSON with sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def episodes_key(episode_ids: list[str]) -> str:
    """The hash of the ordered episode ids: new data (another sample) never reuses old chunks."""
    return hashlib.sha1("\n".join(episode_ids).encode()).hexdigest()[:12]


@dataclass
class Chunk:
    """The outcome of one chunk of episodes, in episode order."""

    episode_ids: list[str]
    utilities: list[np.ndarray]
    qtys: list[tuple[float, float] | None]
    sample_rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)


class ChunkStore:
    """Chunks of one method's decisions on disk, keyed by their start index in the episode list."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def _stem(self, start: int) -> Path:
        return self.folder / f"chunk_{start:06d}"

    def load(self, start: int, episode_ids: list[str]) -> Chunk | None:
        """The saved chunk at `start` if it is complete and holds exactly these episodes, else None."""
        stem = self._stem(start)
        marker = stem.with_suffix(".json")
        if not marker.exists():
            return None
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            frame = pl.read_parquet(stem.with_suffix(".parquet"))
            samples = pl.read_parquet(stem.with_suffix(".samples.parquet"))
        except Exception:  # a damaged chunk is decided again, never trusted
            return None
        if frame["episode_id"].to_list() != episode_ids:
            return None
        qtys: list[tuple[float, float] | None] = [
            None if m is None else (float(m), float(md))
            for m, md in zip(frame["qty_mean"].to_list(), frame["qty_median"].to_list(), strict=True)
        ]
        return Chunk(
            episode_ids=episode_ids,
            utilities=[np.asarray(u, dtype=np.float64) for u in frame["utilities"].to_list()],
            qtys=qtys,
            sample_rows=samples.to_dicts(),
            counts={k: float(v) for k, v in meta.get("counts", {}).items()},
        )

    def save(self, start: int, chunk: Chunk) -> None:
        """Write the chunk's rows, then its marker (atomically): only then does it count as done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self._stem(start)
        stem.with_suffix(".json").unlink(missing_ok=True)  # a chunk decided again: not done until rewritten
        frame = pl.DataFrame(
            {
                "episode_id": chunk.episode_ids,
                "utilities": [np.asarray(u, dtype=np.float64).tolist() for u in chunk.utilities],
                "qty_mean": [None if q is None else float(q[0]) for q in chunk.qtys],
                "qty_median": [None if q is None else float(q[1]) for q in chunk.qtys],
            },
            schema=CHUNK_SCHEMA,
        )
        frame.write_parquet(stem.with_suffix(".parquet"))
        pl.DataFrame(chunk.sample_rows, infer_schema_length=None).write_parquet(
            stem.with_suffix(".samples.parquet")
        )
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"n": len(chunk.episode_ids), "counts": chunk.counts}), encoding="utf-8")
        os.replace(tmp, stem.with_suffix(".json"))

    def clear(self) -> None:
        """Remove the folder (after the method's rows are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
