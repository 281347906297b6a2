"""MAPPO's centralised critic and the running value normaliser."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from acorm_pl.nets.agent import RecurrentQAgent


class RecurrentCritic(nn.Module):
    """Per-agent values V_i^t from critic inputs [B, T, N, D] (e.g. [o_i^t, s^t]): MLP + GRU (Table 3's critic
    RNN, 64-d) and a linear head, shared by all agents and run over whole sequences in one ``nn.GRU`` call.

    The recurrent body is the agent network's (:class:`~acorm_pl.nets.RecurrentQAgent` with one output),
    so critic and actor share one sequence implementation.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 64):
        super().__init__()
        self.net = RecurrentQAgent(input_dim, 1, hidden_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, N, D] (lengths [B]: valid steps, later ones are not computed) -> V [B, T, N] (float32)."""
        return self.net(x, lengths=lengths).q.squeeze(-1).float()


class ValueNormalizer(nn.Module):
    """Running mean and variance of value targets, as MAPPO's value normalisation (Yu et al. 2022).

    Exponential moving averages of E[G] and E[G^2] with rate ``1 - beta`` and a debiasing weight, so the
    first update gives exactly the batch's statistics. The critic learns normalised targets; its outputs
    are denormalised before they enter GAE. The statistics are buffers, so they are saved in checkpoints.
    """

    def __init__(self, beta: float = 0.99999, eps: float = 1e-5, min_var: float = 1e-2):
        super().__init__()
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.beta, self.eps, self.min_var = beta, eps, min_var
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debias", torch.zeros(()))

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The debiased running (mean, variance); variance at least ``min_var``."""
        weight = self.debias.clamp(min=self.eps)
        mean, mean_sq = self.running_mean / weight, self.running_mean_sq / weight
        return mean, (mean_sq - mean**2).clamp(min=self.min_var)

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Fold the valid entries of ``x`` into the running statistics. ``reduce`` sums a tensor of
        [sum, sum of squares, count] over processes (DDP), so every rank keeps the same statistics."""
        mask = mask.float().expand_as(x)
        x = x.float()
        sums = torch.stack([(x * mask).sum(), (x**2 * mask).sum(), mask.sum()])
        if reduce is not None:
            sums = reduce(sums)
        count = sums[2].clamp(min=1.0)
        rate = 1.0 - self.beta
        self.running_mean.mul_(self.beta).add_(rate * sums[0] / count)
        self.running_mean_sq.mul_(self.beta).add_(rate * sums[1] / count)
        self.debias.mul_(self.beta).add_(rate)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.moments()
        return (x.float() - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.moments()
        return x.float() * var.sqrt() + mean
