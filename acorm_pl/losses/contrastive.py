"""The contrastive role loss of ACORM (InfoNCE with cluster positives, Eqs. 3-4), computed in float32."""

from __future__ import annotations

import torch


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim of the entries where ``mask`` holds; finite even for a fully masked row."""
    return torch.logsumexp(x.masked_fill(~mask, torch.finfo(x.dtype).min), dim=-1)


def contrastive_role_loss(
    scores: torch.Tensor, labels: torch.Tensor, alive: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE loss of Eq. (4) over groups of agents that share a timestep of an episode.

    Args:
        scores: [M, N, N], S[m, i, j] = z_i^T W z_j between query i and key j (any float dtype).
        labels: [M, N] int64 K-means cluster ids; -1 means "not clustered".
        alive: [M, N] bool.

    For each anchor (query) i of a group, the keys are the other alive agents K_i = {j != i : alive_j}
    (Eq. 4's K = {z_1..z_n} \\ z_i), the positive keys are P_i = {j in K_i : labels_j == labels_i} and the
    negatives are K_i \\ P_i. Eq. (4) then gives, per anchor,

        loss_i = -log( sum_{j in P_i} exp(S_ij) / sum_{j in K_i} exp(S_ij) )
               = logsumexp_{j in K_i} S_ij - logsumexp_{j in P_i} S_ij.

    An alive agent labelled -1 is still a key (a negative for every anchor). Anchors that are dead,
    unlabelled or alone in their cluster (P_i empty) are not counted. The loss is the mean of loss_i over
    counted anchors of all groups, and 0 (still differentiable, with zero gradients) when none counts.

    Returns the loss (float32 scalar) and detached statistics: ``n_anchors`` (counted anchors),
    ``positive_fraction`` (mean |P_i| / |K_i|) and ``accuracy`` (fraction of counted anchors whose
    highest-scoring key is a positive).
    """
    # Deviation from the authors' code, which counts the anchor itself as a positive and sums the
    # denominator over all agents including the anchor; we follow the paper and exclude the anchor.
    s = scores.float()
    n = s.shape[-1]
    not_self = ~torch.eye(n, dtype=torch.bool, device=s.device)
    alive = alive.bool()
    labelled = labels >= 0
    keys = alive.unsqueeze(-2) & not_self  # [M, anchor i, key j]
    positives = keys & (labels.unsqueeze(-1) == labels.unsqueeze(-2)) & labelled.unsqueeze(-1)
    counted = alive & labelled & positives.any(dim=-1)  # [M, N]

    # Uncounted rows may be huge (an empty P_i gives logsumexp ~ finfo.min) but never NaN; where() drops
    # them and passes them a zero gradient, so a fully masked batch still backpropagates zeros.
    per_anchor = _masked_logsumexp(s, keys) - _masked_logsumexp(s, positives)
    per_anchor = torch.where(counted, per_anchor, torch.zeros_like(per_anchor))
    weight = counted.float()
    n_anchors = weight.sum()
    loss = per_anchor.sum() / n_anchors.clamp(min=1.0)

    with torch.no_grad():
        denom = n_anchors.clamp(min=1.0)
        fraction = positives.sum(-1).float() / keys.sum(-1).clamp(min=1).float()
        best = s.masked_fill(~keys, torch.finfo(s.dtype).min).argmax(dim=-1, keepdim=True)
        hit = positives.gather(-1, best).squeeze(-1).float()
        stats = {
            "n_anchors": n_anchors.detach(),
            "positive_fraction": (fraction * weight).sum() / denom,
            "accuracy": (hit * weight).sum() / denom,
        }
    return loss, stats
