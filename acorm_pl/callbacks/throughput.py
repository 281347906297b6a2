"""Throughput and training-episode statistics, logged against env steps."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning.pytorch as pl


class ThroughputMonitor(pl.Callback):
    """Logs perf/env_steps_per_s, perf/updates_per_s, perf/buffer_episodes (replay only), perf/worker_restarts
    (environment worker processes restarted after a crash or hang, all ranks) and the outcome of the latest training
    episodes (train/return_mean, train/win_rate), rates over the last ``window`` updates.

    Args:
        window: number of recent training steps the rates are measured over.
    """

    def __init__(self, window: int = 50):
        self.window = max(2, window)
        self._marks: deque[tuple[float, int, int]] = deque(maxlen=self.window)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._marks.clear()

    def rates(self) -> tuple[float, float]:
        """(env steps per second, updates per second) over the window."""
        if len(self._marks) < 2:
            return 0.0, 0.0
        (t0, s0, u0), (t1, s1, u1) = self._marks[0], self._marks[-1]
        dt = max(t1 - t0, 1e-9)
        return (s1 - s0) / dt, (u1 - u0) / dt

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        dm = trainer.datamodule
        self._marks.append((time.perf_counter(), dm.env_steps, int(getattr(pl_module, "n_updates", 0))))
        if not getattr(pl_module, "should_log", lambda: True)():
            return
        steps_per_s, updates_per_s = self.rates()
        metrics = {"perf/env_steps_per_s": steps_per_s, "perf/updates_per_s": updates_per_s}
        if dm.buffer is not None:  # on-policy algorithms have no replay buffer
            metrics["perf/buffer_episodes"] = float(len(dm.buffer))
        metrics["perf/worker_restarts"] = float(dm.worker_restarts)
        if dm.last_rollout is not None and dm.last_rollout.n_episodes > 0:  # all of them may have been discarded
            metrics["train/return_mean"] = float(dm.last_rollout.returns.mean())
            metrics["train/win_rate"] = float(dm.last_rollout.won.float().mean())
            metrics["train/ep_length_mean"] = float(dm.last_rollout.lengths.float().mean())
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
