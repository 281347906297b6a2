# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
import os

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_threads(monkeypatch):
    """A fit with ``torch_num_threads`` changes process-wide settings; later tests get the originals back."""
    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory for CLI runs (their MLflow store ``mlruns.db`` lands there), with
    ``MLFLOW_TRACKING_URI`` unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
