"""Losses and targets as pure functions."""

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
    "double_q_next_values",
    "epsilon_greedy",
    "greedy_actions",
    "mask_unavailable",
    "masked_td_loss",
    "td_lambda_targets",
    "td_targets",
]
