# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
"""A whole ``acorm-pl fit`` through process workers survives a worker killed with SIGKILL mid-episode and
another that hangs: the run finishes, MLflow counts the restarts, the checkpointed buffer holds only
whole episodes, and no worker process outlives the run."""

from __future__ import annotations

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

import functools
import os
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_workers import _children, _still_alive
from worker_envs import INFO, LIMIT, ToyEnv, episode_length

from acorm_pl import envs
from acorm_pl.cli import main
from acorm_pl.envs.workers import ProcessVecEnv

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")]
REPO = Path(__file__).resolve().parents[1]
CRASH_SEED, HANG_SEED = 1, 2  # training copies have seeds 0, 1, 2 (seed_everything 0, n_envs 3)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _toy_family(made: list[ProcessVecEnv]):
    def info(map_name: str, **kwargs) -> envs.EnvInfo:
        return INFO

    def make(map_name: str, seeds, **kwargs) -> ProcessVecEnv:
        # seed 1's worker SIGKILLs itself before its 2nd step, seed 2's hangs there; restarted workers get
        # new seeds and play normally (the evaluation copies' seeds are far away and never fail)
        factory = functools.partial(ToyEnv, crash={CRASH_SEED: 2}, hang={HANG_SEED: 2})
        env = ProcessVecEnv(factory, seeds, INFO, step_timeout=1.5, reset_timeout=120)
        made.append(env)
        return env

    return info, make


def test_fit_survives_a_killed_and_a_hung_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    made: list[ProcessVecEnv] = []
    monkeypatch.setitem(envs.FAMILIES, "toy", _toy_family(made))
    before = set(_children(os.getpid()))
    main(["fit", "--config", str(REPO / "conf" / "quickstart.yaml"), "--data.env", "toy", "--data.map_name", "toy",
          "--data.n_envs", "3", "--data.buffer_size", "64", "--data.batch_size", "4",
          "--data.total_env_steps", "60", "--data.epoch_env_steps", "60",
          "--evaluation.eval_interval", "60", "--evaluation.n_eval_episodes", "3",
          "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["perf/worker_restarts"] == 2.0
    ckpt = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)["RolloutDataModule"]
    assert state["worker_restarts"] == 2 and state["env_steps"] >= 60
    buffer = state["buffer"]
    lengths = buffer["lengths"]  # oldest first
    assert buffer["size"] == state["episodes"]  # only kept episodes were counted and stored
    # the first collection kept only seed 0's episode (2 steps); every stored episode is whole (the buffer
    # takes whole episodes only): its steps and its final observation
    assert lengths[0].item() == episode_length(0) and bool(((lengths >= 1) & (lengths <= LIMIT)).all())
    assert buffer["steps"]["obs"].shape[0] == int((lengths + 1).sum())
    assert state["env_steps"] == int(lengths.sum())
    # every worker the run started (training and evaluation, restarted ones included) is gone
    spawned = {p for p in set(_children(os.getpid())) - before if "resource_tracker" not in _cmdline(p)}
    assert [_cmdline(p) for p in _still_alive(sorted(spawned))] == []
    assert made and all(env.worker_pids() == [] or _still_alive(env.worker_pids()) == [] for env in made)
