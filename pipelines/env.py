"""The offline environment: nothing downloads a model or data set at run time, no telemetry."""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "true",
}


def set_offline_env() -> None:
    """Set the offline variables unless the user set them otherwise."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
