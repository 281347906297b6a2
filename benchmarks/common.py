"""Shared pieces of the benchmark scripts: the machine line, median timing, a trainer-free TD step."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import acorm_pl  # noqa: F401
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from acorm_pl.algos import QMIX
from acorm_pl.data import EpisodeBatch
from acorm_pl.envs.base import EnvInfo


PRECISIONS = ("fp32", "bf16-mixed")


def precision_context(name: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16-mixed: the context Lightning's precision plugin runs a training step in on ``device``
    (``cpu`` or ``cuda``)."""
    if name == "fp32":
        return contextlib.nullcontext()
    return MixedPrecision("bf16-mixed", device).train_step_context()


def machine() -> str:
    """One line naming the machine and the library versions the figures were taken with."""
    return (f"{platform.platform()} | {platform.processor() or platform.machine()} | cpus {os.cpu_count()} | "
            f"torch {torch.__version__} (threads {torch.get_num_threads()}) | "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def td_step(model: QMIX, opt: torch.optim.Optimizer, batch: EpisodeBatch) -> None:
    """One TD update as the training loop does it (loss, backward, clip, Adam, targets), without a Trainer."""
    loss, _ = model.td_loss(batch)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.td_parameters(), model.hparams.grad_clip_norm)
    opt.step()
    model.update_targets()


def random_batch(info: EnvInfo, batch: int, steps: int, seed: int = 0) -> EpisodeBatch:
    """``batch`` full-length episodes of ``steps`` steps with uniform observations and states in [-1, 1],
    random actions, every action available and random rewards: timing input, not learning data."""
    g = torch.Generator().manual_seed(seed)
    n = info.n_agents
    return EpisodeBatch(
        obs=torch.rand(batch, steps + 1, n, info.obs_dim, generator=g) * 2 - 1,
        state=torch.rand(batch, steps + 1, info.state_dim, generator=g) * 2 - 1,
        avail_actions=torch.ones(batch, steps + 1, n, info.n_actions, dtype=torch.bool),
        actions=torch.randint(0, info.n_actions, (batch, steps, n), generator=g),
        reward=torch.rand(batch, steps, generator=g),
        terminated=torch.zeros(batch, steps),
        filled=torch.ones(batch, steps),
        alive=torch.ones(batch, steps + 1, n, dtype=torch.bool),
    )
