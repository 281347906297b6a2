"""Linear epsilon schedule over environment steps."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from acorm_pl.errors import require


class EpsilonSchedule(pl.Callback):
    """epsilon(t) = start + (finish - start) * min(1, t / anneal_steps), t = env steps; sets ``module.epsilon``.

    Modules without an ``epsilon`` (MAPPO and ACORM-MAPPO explore by sampling their policy) are left alone.

    Args:
        start: exploration rate at env step 0.
        finish: exploration rate after ``anneal_steps`` env steps (kept from then on).
        anneal_steps: env steps of the linear anneal (80k in the paper).
    """

    def __init__(self, start: float = 1.0, finish: float = 0.02, anneal_steps: int = 80_000):
        require(0.0 <= finish <= 1.0 and 0.0 <= start <= 1.0,
                f"epsilon.start and epsilon.finish must be in [0, 1], got {start} and {finish}")
        require(anneal_steps >= 1, f"epsilon.anneal_steps must be a positive integer, got {anneal_steps}")
        self.start, self.finish, self.anneal_steps = start, finish, anneal_steps

    def value(self, env_steps: int) -> float:
        frac = min(1.0, env_steps / self.anneal_steps)
        return self.start + (self.finish - self.start) * frac

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if hasattr(pl_module, "epsilon"):
            pl_module.epsilon = self.value(getattr(trainer.datamodule, "env_steps", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._apply(trainer, pl_module)
