"""Which files a mapping ingests: its globs, a list of paths sorted to tables by name, or a landing folder's
mapping.yaml files. Plain logic, no dagster import."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from assets.ingest.mapping import TABLES, Mapping, MappingError

TRUTH_FOLDER = "truth"  # the synthetic market keeps its ground truth apart there; never ingested

log_default = logging.getLogger("malles.ingest")


def mapping_paths(
    mapping: Mapping, paths: Iterable[str | Path] | dict | None = None, log=None
) -> list[tuple[str, Path]]:
    """(table, path) pairs in load order: products, customers, transactions; each group sorted by path.

    Without `paths`, the mapping's globs. With a list of paths, each file's tables are told by matching its
    name to the globs (one file may feed several tables; a file matching none, or lying in a `truth/` folder,
    is left out with a log line); a dict {table: [paths]} says it directly.
    """
    log = log or log_default
    by_table: dict[str, set[Path]] = {t: set() for t in TABLES}
    if paths is None:
        for t in TABLES:
            by_table[t] |= set(mapping.expand_globs(t))
    elif isinstance(paths, dict):
        for t, ps in paths.items():
            if t not in TABLES:
                raise MappingError(f"paths: unknown table {t!r}; use transactions, products or customers")
            by_table[t] |= {Path(p) for p in ([ps] if isinstance(ps, str | Path) else ps)}
    else:
        for p in paths:
            p = Path(p)
            if TRUTH_FOLDER in p.parts[:-1]:
                log.info(f"{p}: inside a {TRUTH_FOLDER}/ folder (ground truth, never ingested); left out")
                continue
            tables = mapping.tables_of(p)
            if not tables:
                log.warning(f"{p}: matches none of the file patterns of mapping {mapping.label}; left out")
            for t in tables:
                by_table[t].add(p)
    return [(t, p) for t in TABLES for p in sorted(by_table[t])]


def landing_mappings(landing_dir: str | Path) -> list[Path]:
    """Every mapping.yaml (or .yml) in the subfolders of a landing folder, sorted."""
    root = Path(landing_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("mapping.y*ml") if p.name in {"mapping.yaml", "mapping.yml"}]
    return sorted(p for p in found if TRUTH_FOLDER not in p.relative_to(root).parts)
