"""Shared pieces of the benchmark scripts: the machine line, median timing, a trainer-free TD step."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import acorm_pl  # noqa: F401
import torch

from acorm_pl.algos import QMIX
from acorm_pl.data import EpisodeBatch


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
