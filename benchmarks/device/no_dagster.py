"""Load MALLES's plain-function modules on a machine without the Dagster stack (a lent GPU machine).

Every stage package's `__init__.py` defines Dagster assets; the logic lives in plain modules beside it
(`assets/alignment/train.py`, `assets/prompts/templates.py`, ...). Where `dagster` cannot be imported, this
module registers `assets` and its stage packages as bare namespace packages, so `from assets.alignment import
train` runs train.py and not the package's `__init__`. Where dagster is installed it does nothing.

Use it as a pytest plugin (`python -m pytest -p benchmarks.device.no_dagster ...`) or import it first in a
script (benchmarks/device/run.sh does both).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("alignment", "evaluation", "features", "ingest", "market", "prompts", "simulation", "synthetic")


def install() -> bool:
    """Register the namespace packages (True) unless dagster is importable (False)."""
    try:
        import dagster  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    for name in ("assets", *(f"assets.{s}" for s in STAGES)):
        if name in sys.modules:
            continue
        mod = types.ModuleType(name)
        mod.__path__ = [str(ROOT / name.replace(".", "/"))]
        mod.__file__ = None
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
    return True


INSTALLED = install()
