"""A tiny ACORM run on SMAX 3m (seconds), trained once per test session and shared by the analysis and
notebook tests: its checkpoint, and its MLflow run with the RoleFigures callback's artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from paper_configs import paper_config

from acorm_pl.analysis.demo import train_small_run

REPO = Path(__file__).resolve().parents[1]
RUN_NAME = "tiny-acorm"


def tiny_acorm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Working directory of the session's tiny ACORM run: its MLflow store ``mlruns.db`` and ``mlartifacts``."""
    return tmp_path_factory.getbasetemp() / "tiny_acorm"


def tiny_acorm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of the session's tiny ACORM run (400 env steps, figures every 200), trained on first use."""
    workdir = tiny_acorm_store(tmp_path_factory)
    done = workdir / "checkpoint.txt"
    if done.is_file():
        return Path(done.read_text())
    workdir.mkdir(exist_ok=True)
    ckpt = train_small_run(paper_config("acorm", "3m"), workdir, RUN_NAME, env_steps=400,
                           eval_interval=200, quick=True,
                           extra=["--trainer.callbacks+=acorm_pl.callbacks.RoleFigures",
                                  "--trainer.callbacks.interval", "200"])
    done.write_text(str(ckpt))
    return ckpt
