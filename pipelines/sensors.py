"""New transaction files in the landing folder trigger the main job."""

import hashlib
import os
from pathlib import Path

import dagster as dg

from pipelines.jobs import main_job
from resources.paths import data_dir

DATA_SUFFIXES = {".csv", ".parquet"}


def landing_fingerprint(landing: Path) -> str:
    """A cursor over the landing folder: sorted (path, size, mtime) of its data files."""
    if not landing.exists():
        return ""
    parts = []
    for p in sorted(landing.rglob("*")):
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and "truth" not in p.parts:
            st = p.stat()
            parts.append(f"{p.relative_to(landing)}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


@dg.sensor(
    job=main_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Runs main_job when files are added to or changed in the landing folder (data/landing).",
)
def landing_files_sensor(context: dg.SensorEvaluationContext):
    landing = Path(os.environ.get("MALLES_LANDING_DIR", data_dir() / "landing"))
    fingerprint = landing_fingerprint(landing)
    if not fingerprint or fingerprint == context.cursor:
        return dg.SkipReason(f"no new files in {landing}")
    context.update_cursor(fingerprint)
    run_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"ingest": {"config": {"landing_dir": str(landing)}}}},
    )


SENSORS = [landing_files_sensor]
