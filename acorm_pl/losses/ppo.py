"""PPO pieces of MAPPO as pure functions over padded episodes (all computed in float32).

Shapes follow :class:`~acorm_pl.data.EpisodeBatch`: B episodes padded to T steps, per-agent quantities
with a trailing agent dimension N. Masks are 1 on steps (and agents) that count and 0 on padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from acorm_pl.losses.td import td_lambda_targets


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * x) / sum(mask) in float32 (0 when nothing is valid); ``mask`` broadcasts against ``x``."""
    mask = mask.float().expand_as(x)
    return (x.float() * mask).sum() / mask.sum().clamp(min=1.0)


def gae(
    reward: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and lambda-returns over padded episodes.

    Args:
        reward, terminated, filled: [B, T] (the team reward, true terminals, valid steps).
        values: [B, T+1] or per agent [B, T+1, N]: V(s_t) for t = 0..T; the entry after an episode's last
            step is V of its final state, the bootstrap of a truncated (time-limit) episode.

    A_t = delta_t + gamma * lambda * (1 - terminated_t) * A_{t+1} with
    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t) (GAE, Schulman et al. 2016); the
    last real step of an episode has no A_{t+1}: a terminal bootstraps with 0, a truncation with
    V(s_{t+1}). The lambda-return G_t = A_t + V(s_t) is exactly the TD(lambda) target with V as the
    bootstrap, so both come from :func:`~acorm_pl.losses.td_lambda_targets` (one implementation).
    Returns (advantages, returns) shaped like ``values[:, :-1]``, zero on padded steps.
    """
    values = values.float()
    per_agent = values.dim() == 3
    if per_agent:  # every agent shares the reward and the episode's end: fold agents into the batch
        b, t1, n = values.shape
        values = values.permute(0, 2, 1).reshape(b * n, t1)
        reward, terminated, filled = (x.float().repeat_interleave(n, dim=0) for x in (reward, terminated, filled))
    returns = td_lambda_targets(reward, terminated, filled, values[:, 1:], gamma, lam) * filled.float()
    advantages = (returns - values[:, :-1]) * filled.float()  # GAE(gamma, lambda) = G^lambda_t - V(s_t)
    if per_agent:
        advantages, returns = (x.reshape(b, n, t1 - 1).permute(0, 2, 1) for x in (advantages, returns))
    return advantages, returns


def normalize_advantages(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-5,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(A - mean) / (std + eps) with mean and std over the valid entries only; padding stays 0.

    ``reduce`` sums a tensor over processes (DDP ranks), so the statistics are those of the whole batch
    across ranks, the same on every rank.
    """
    reduce = reduce or (lambda t: t)
    mask = mask.float().expand_as(advantages)
    a = advantages.float()
    total, count = reduce(torch.stack([(a * mask).sum(), mask.sum()])).unbind()
    count = count.clamp(min=1.0)
    mean = total / count
    var = reduce(((a - mean) ** 2 * mask).sum()) / count  # population variance over valid entries
    return (a - mean) / (var.sqrt() + eps) * mask


def masked_log_softmax(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """log pi(a | .) over available actions: logits, avail [..., A] -> float32 log-probabilities.

    Unavailable actions get the lowest finite logit, so their probability is exactly 0 (never NaN, in
    any precision). A row with no available action (a padded step) is treated as all-available so it
    stays finite; callers mask such rows out.
    """
    avail = avail.bool() | ~avail.bool().any(dim=-1, keepdim=True)
    logits = logits.float().masked_fill(~avail, torch.finfo(torch.float32).min)
    return torch.log_softmax(logits, dim=-1)


def masked_entropy(log_probs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """H(pi) = -sum_a pi(a) log pi(a) over available actions only: [..., A] -> [...]."""
    avail = avail.bool() | ~avail.bool().any(dim=-1, keepdim=True)
    plogp = log_probs.exp() * log_probs
    return -torch.where(avail, plogp, torch.zeros_like(plogp)).sum(-1)


def clipped_surrogate_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped objective as a loss: -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)) over valid entries.

    rho = exp(log pi - log pi_old); advantages and old log-probabilities are constants. Where the clipped
    term is the minimum (rho beyond the boundary in the advantage's direction) the gradient is zero.
    Returns the loss and detached statistics ``approx_kl`` (mean of (rho - 1) - log rho, Schulman's k3
    estimator, >= 0) and ``clip_fraction`` (share of valid entries with |rho - 1| > eps).
    """
    log_ratio = log_probs.float() - old_log_probs.detach().float()
    ratio = log_ratio.exp()
    adv = advantages.detach().float()
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)  # L^CLIP (PPO paper, Eq. 7)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "clip_fraction": masked_mean(((ratio - 1.0).abs() > clip).float(), mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.0
) -> torch.Tensor:
    """Mean squared error to the returns over valid entries; with ``clip > 0`` the PPO-style clipped form
    max((V - G)^2, (V_old + clip(V - V_old, -clip, clip) - G)^2). Returns and old values are constants."""
    v, target = values.float(), returns.detach().float()
    err = (v - target) ** 2
    if clip > 0:
        old = old_values.detach().float()
        clipped = old + (v - old).clamp(-clip, clip)
        err = torch.max(err, (clipped - target) ** 2)
    return masked_mean(err, mask)


def sample_actions(logits: torch.Tensor, avail: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Actions drawn from the masked categorical pi(. | o): logits, avail [..., A] -> [...] (int64).

    Draws are made on the CPU with ``generator`` so runs are reproducible on any device; an unavailable
    action has probability exactly 0 and is never drawn.
    """
    if bool((~avail.bool().any(dim=-1)).any()):
        raise ValueError("an agent has no available action; environments must always allow at least one")
    probs = masked_log_softmax(logits, avail).exp().detach().cpu()
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1]).to(logits.device)
