"""Losses and targets as pure functions."""

from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.losses.ppo import (
    clipped_surrogate_loss,
    gae,
    masked_entropy,
    masked_log_softmax,
    masked_mean,
    normalize_advantages,
    sample_actions,
    value_loss,
)
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
    "clipped_surrogate_loss",
    "contrastive_role_loss",
    "double_q_next_values",
    "epsilon_greedy",
    "gae",
    "greedy_actions",
    "mask_unavailable",
    "masked_entropy",
    "masked_log_softmax",
    "masked_mean",
    "masked_td_loss",
    "normalize_advantages",
    "sample_actions",
    "td_lambda_targets",
    "td_targets",
    "value_loss",
]
