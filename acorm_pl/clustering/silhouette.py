"""Silhouette scores batched over many small independent groups (Rousseeuw, 1987), as scikit-learn defines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batched_silhouette(x: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean silhouette of each group: x [M, N, D], labels [M, N] (< 0: left out), valid [M, N] (None: labels >= 0).

    Per valid point i with a(i) the mean Euclidean distance to the other points of its cluster and b(i) the
    smallest mean distance to the points of another cluster, s(i) = (b - a) / max(a, b), and 0 for a point
    alone in its cluster (scikit-learn's convention). Returns (score [M] float32, defined [M] bool): a group's
    score is defined when it has 2 <= clusters <= valid points - 1 (where scikit-learn's is); elsewhere 0.
    """
    valid = labels >= 0 if valid is None else valid.bool() & (labels >= 0)
    k = int(labels.max().clamp_min(0)) + 1
    x = x.float().masked_fill(~valid.unsqueeze(-1), 0.0)
    dist = torch.cdist(x, x)  # [M, N, N]
    member = F.one_hot(labels.clamp_min(0), k).float() * valid.unsqueeze(-1).float()  # [M, N, k]
    sums = dist @ member  # [M, N, k]: distance of i to every point of cluster c
    counts = member.sum(1, keepdim=True)  # [M, 1, k]
    own = F.one_hot(labels.clamp_min(0), k).bool()  # [M, N, k]
    own_count = (counts * own).sum(-1)  # [M, N] size of i's cluster
    a = (sums * own).sum(-1) / (own_count - 1).clamp_min(1.0)
    other_mean = (sums / counts.clamp_min(1.0)).masked_fill(own | (counts == 0), float("inf"))
    b = other_mean.amin(-1)
    s = ((b - a) / torch.maximum(a, b).clamp_min(1e-12)).masked_fill(own_count <= 1, 0.0)
    s = s.masked_fill(~valid, 0.0)
    n_valid = valid.sum(1)
    n_clusters = (counts[:, 0] > 0).sum(-1)
    defined = (n_clusters >= 2) & (n_clusters <= n_valid - 1)
    score = torch.where(defined, s.sum(1) / n_valid.clamp_min(1), torch.zeros_like(s[:, 0]))
    return score, defined
