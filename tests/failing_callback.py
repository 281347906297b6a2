"""A callback that raises mid-training, to check how a failed run is recorded."""

from __future__ import annotations

import lightning.pytorch as pl


class ExplodeAtEnvSteps(pl.Callback):
    """Raises RuntimeError once the run has collected ``env_steps`` environment steps."""

    def __init__(self, env_steps: int = 300):
        self.env_steps = env_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.datamodule.env_steps >= self.env_steps:
            raise RuntimeError("boom: simulated failure")
