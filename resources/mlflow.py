"""MLflow tracking as a small ConfigurableResource (dagster-mlflow's resource is old-style and beta).

Default store: a local sqlite database and artifact folder under data/; any tracking URI by config
(for example `dg.EnvVar("MLFLOW_TRACKING_URI")` in definitions.py).
"""

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from resources.paths import data_dir


def _default_tracking_uri() -> str:
    return f"sqlite:///{data_dir() / 'mlflow.db'}"


def _default_artifact_root() -> str:
    return str(data_dir() / "mlartifacts")


class MlflowResource(dg.ConfigurableResource):
    """Logs params, metrics and artifacts of each asset to one MLflow experiment."""

    tracking_uri: str = ""  # empty: sqlite:///data/mlflow.db
    experiment: str = "malles"  # experiment every asset logs to
    artifact_root: str = ""  # empty: data/mlartifacts (used when the experiment is created)
    ui_url: str = "http://127.0.0.1:5000"  # where `mlflow ui` serves, for the links in Dagster metadata

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or _default_tracking_uri()

    def _setup(self) -> str:
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        mlflow.set_tracking_uri(self.resolved_tracking_uri())
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            root = self.artifact_root or _default_artifact_root()
            location = root if "://" in root else f"file://{root}"
            exp_id = mlflow.create_experiment(self.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        return exp_id

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: dict[str, Any] | None = None) -> Iterator[Any]:
        """Open an MLflow run (a fresh one, never nested into a leftover active run)."""
        import mlflow

        self._setup()
        while mlflow.active_run() is not None:
            mlflow.end_run()
        with mlflow.start_run(run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()}) as run:
            yield run

    def run_url(self, run: Any) -> str:
        return f"{self.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
