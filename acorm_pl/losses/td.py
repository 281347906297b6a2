"""Temporal-difference pieces of QMIX as pure functions (all computed in float32)."""

from __future__ import annotations

import torch


def mask_unavailable(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Q values with unavailable actions set to the dtype's lowest finite value (safe in fp16/bf16)."""
    return q.masked_fill(~avail, torch.finfo(q.dtype).min)


def greedy_actions(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """argmax_a Q(., a) over available actions only."""
    return mask_unavailable(q, avail).argmax(dim=-1)


def td_targets(reward: torch.Tensor, terminated: torch.Tensor, next_q_tot: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_t = r_t + gamma * (1 - terminated_t) * Q_tot^-(s_{t+1}, a*_{t+1}).

    A truncated step (time limit) is not terminated, so it bootstraps from the next state.
    """
    return reward.float() + gamma * (1.0 - terminated.float()) * next_q_tot.float()


def td_lambda_targets(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    next_q_tot: torch.Tensor,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """TD(lambda) targets over whole episodes, all [B, T]; off-policy without correction, as pymarl2's.

    y_t = r_t + gamma * (1 - terminated_t) * [(1 - lambda) * Q_tot^-(s_{t+1}) + lambda * y_{t+1}],
    where the last real step of an episode bootstraps fully from Q_tot^-(s_{t+1}) (y_{t+1} does not
    exist). lambda = 0 gives :func:`td_targets`. Solved for all t at once with a [B, T, T] product of
    the per-step links c_t = gamma * lambda * (1 - terminated_t) * filled_{t+1} (no loop over time).
    """
    reward, terminated, filled, next_q = reward.float(), terminated.float(), filled.float(), next_q_tot.float()
    b, t = reward.shape
    next_real = torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1)
    not_done = 1.0 - terminated
    # y_t = base_t + link_t * y_{t+1}
    base = reward + gamma * not_done * next_q * (1.0 - td_lambda * next_real)
    link = gamma * td_lambda * not_done * next_real
    # weight[t, k] = prod_{j=t}^{k-1} link_j for k >= t (1 on the diagonal, 0 below it)
    upper = torch.ones(t, t, dtype=torch.bool, device=reward.device).triu()
    factors = torch.where(upper, link.unsqueeze(1).expand(b, t, t), torch.ones((), device=reward.device))
    weight = torch.cumprod(factors, dim=2)
    weight = torch.cat([torch.ones_like(weight[..., :1]), weight[..., :-1]], dim=2)
    weight = weight * torch.ones(t, t, device=reward.device).triu()
    return (weight @ base.unsqueeze(-1)).squeeze(-1)


def double_q_next_values(
    online_q_next: torch.Tensor, target_q_next: torch.Tensor, avail_next: torch.Tensor, double_q: bool = True
) -> torch.Tensor:
    """Per-agent bootstrap values Q_i^-(o', a*) with a* from the online net (double Q) or the target net.

    All inputs [..., N, A]; returns [..., N].
    """
    chooser = online_q_next if double_q else target_q_next
    best = greedy_actions(chooser.float(), avail_next)
    return target_q_next.float().gather(-1, best.unsqueeze(-1)).squeeze(-1)


def masked_td_loss(q_tot: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error over valid steps only: sum(mask * (Q_tot - y)^2) / sum(mask).

    Targets are treated as constants (detached).
    """
    mask = mask.float()
    err = (q_tot.float() - targets.detach().float()) * mask
    return (err**2).sum() / mask.sum().clamp(min=1.0)


def epsilon_greedy(
    q: torch.Tensor, avail: torch.Tensor, epsilon: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-agent epsilon-greedy over available actions: q, avail [..., A] -> actions [...] (int64).

    Random draws are made on the CPU with ``generator`` so runs are reproducible on any device.
    """
    shape = q.shape[:-1]
    greedy = greedy_actions(q, avail).cpu()
    avail_cpu = avail.detach().cpu().reshape(-1, avail.shape[-1]).float()
    if epsilon <= 0.0:
        return greedy.to(q.device)
    if bool((avail_cpu.sum(-1) == 0).any()):
        raise ValueError("an agent has no available action; environments must always allow at least one")
    random_actions = torch.multinomial(avail_cpu, 1, generator=generator).view(shape)
    explore = torch.rand(shape, generator=generator) < epsilon
    return torch.where(explore, random_actions, greedy).to(q.device)
