"""Shared fixtures. The offline variables are set before anything else is imported."""

import os

from pipelines.env import set_offline_env

set_offline_env()
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A private MALLES data folder (warehouse, MLflow store, landing) for one test."""
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("MALLES_DATA_DIR", str(d))
    return d


@pytest.fixture
def duckdb_resource(data_dir):
    from resources.duckdb import warehouse

    return warehouse(str(data_dir / "test.duckdb"))


@pytest.fixture
def mlflow_resource(data_dir):
    from resources.mlflow import MlflowResource

    return MlflowResource(
        tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
        artifact_root=str(data_dir / "mlartifacts"),
        experiment="test",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped (with the reason) where there is none."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pip install -e '.[gpu]')")
        for item in gpu_items:
            item.add_marker(skip)
