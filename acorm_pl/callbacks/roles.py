"""When ACORM's contrastive step runs: every T_cl updates."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from acorm_pl.errors import require


class RoleClustering(pl.Callback):
    """Every ``interval``-th update (a TD update of ACORM-QMIX, a PPO update of ACORM-MAPPO) marks the update
    about to run as one with a contrastive step: the module's role learning (``roles``) then clusters the agent
    embeddings of that update's forward pass (no second GRU pass) with its clustering strategy
    (``model.clustering``: K-means by default, paper Sec. 2.1) and takes its contrastive step on the same batch.
    Does nothing for modules without contrastive role learning.

    Args:
        interval: T_cl in updates between contrastive updates (Table 2: 100 TD updates, one per episode in
            the paper; Table 4's 32 episodes are one PPO update: 1).
    """

    def __init__(self, interval: int = 100):
        require(interval >= 1, f"roles.interval must be a positive integer, got {interval}")
        self.interval = interval

    def cluster(self, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        """Cluster labels of ``batch`` under the module's current trajectory encoder and clustering."""
        return pl_module.roles.cluster(pl_module.agent_embeddings(batch), batch, int(pl_module.n_updates))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        roles = getattr(pl_module, "roles", None)
        if roles is None or not roles.switches.contrastive:
            return
        if (int(pl_module.n_updates) + 1) % self.interval == 0:  # the update about to run is a multiple of T_cl
            roles.contrastive_due = True
