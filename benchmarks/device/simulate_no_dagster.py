"""benchmarks/simulate.py on a machine without the Dagster stack (see no_dagster.py); same arguments."""

import runpy
import sys
from pathlib import Path

import benchmarks.device.no_dagster  # noqa: F401  (registers the namespace packages first)

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).resolve().parents[1] / "simulate.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
