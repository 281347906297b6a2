"""Losses, targets and the clustering behind the contrastive pairs, as pure functions."""

from acorm_pl.losses.clustering import KMeansResult, batched_kmeans
from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.losses.td import (
    double_q_next_values,
    epsilon_greedy,
    greedy_actions,
    mask_unavailable,
    masked_td_loss,
    td_lambda_targets,
    td_targets,
)

__all__ = [
    "KMeansResult",
    "batched_kmeans",
    "contrastive_role_loss",
    "double_q_next_values",
    "epsilon_greedy",
    "greedy_actions",
    "mask_unavailable",
    "masked_td_loss",
    "td_lambda_targets",
    "td_targets",
]
