"""K-means refresh of ACORM's role clusters every T_cl TD updates."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from acorm_pl.algos.base import alive_agents
from acorm_pl.errors import require
from acorm_pl.losses.clustering import batched_kmeans


class RoleClustering(pl.Callback):
    """Every ``interval``-th update (a TD update of ACORM-QMIX, a PPO update of ACORM-MAPPO), partitions the
    agents of every valid (episode, timestep) of the batch into K clusters by K-means on their agent
    embeddings (paper Sec. 2.1, negative pairs generation), batched over all of them in torch on the
    model's device; the module then takes its contrastive step on the same batch. The embeddings are those
    of that update's forward pass (no second GRU pass). Dead agents are left out and K shrinks to the
    number alive. Does nothing for modules without contrastive role learning.

    Args:
        interval: T_cl, updates between contrastive updates (Table 2: 100 TD updates; Table 4: 32 PPO updates).
        kmeans_iters: Lloyd iterations per clustering.
        kmeans_restarts: k-means++ restarts per group; the lowest-inertia solution is kept (10, as sklearn).
    """

    def __init__(self, interval: int = 100, kmeans_iters: int = 20, kmeans_restarts: int = 10):
        require(interval >= 1, f"roles.interval must be a positive integer, got {interval}")
        require(kmeans_iters >= 1 and kmeans_restarts >= 1, "roles.kmeans_iters and roles.kmeans_restarts must be >= 1")
        self.interval, self.kmeans_iters, self.kmeans_restarts = interval, kmeans_iters, kmeans_restarts

    @torch.no_grad()
    def cluster_embeddings(self, embeddings: torch.Tensor, batch: Any, k: int, seed: int) -> torch.Tensor:
        """Cluster labels [B, T, N] of agent ``embeddings`` [B, T, N, H] of ``batch`` (-1 at padded steps
        and for dead agents), all valid (episode, timestep) groups in one batched K-means."""
        valid = batch.filled.bool()
        alive = alive_agents(batch.avail_actions[:, :-1])
        result = batched_kmeans(embeddings[valid], k, valid=alive[valid], n_iters=self.kmeans_iters,
                                n_init=self.kmeans_restarts, seed=seed)
        labels = torch.full(alive.shape, -1, dtype=torch.int64, device=embeddings.device)
        labels[valid] = result.labels
        return labels

    def cluster(self, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        """Cluster labels of ``batch`` under the module's current trajectory encoder."""
        return self.cluster_embeddings(pl_module.agent_embeddings(batch), batch, pl_module.hparams.n_clusters,
                                       int(pl_module.n_updates))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not getattr(pl_module, "contrastive", False):
            return
        if (int(pl_module.n_updates) + 1) % self.interval == 0:  # the update about to run is a multiple of T_cl
            pl_module.role_clustering = self  # the module clusters the embeddings of its TD forward
