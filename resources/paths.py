"""Where MALLES keeps its state by default: `data/` at the project root, or $MALLES_DATA_DIR."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data folder (warehouse, MLflow store, landing files, models); created on first use."""
    path = Path(os.environ.get("MALLES_DATA_DIR", PROJECT_ROOT / "data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
