"""K-means batched over many small independent groups, in torch on whatever device the data is on.

ACORM (Hu et al., ICLR 2024, Sec. 2.1, "negative pairs generation") partitions the agents of every
(episode, timestep) into K clusters by K-means on their agent embeddings: agents in the anchor's
cluster are its positives, all others negatives. The reference code calls sklearn's ``KMeans`` once per
(episode, timestep); :func:`batched_kmeans` runs the same algorithm for all of them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class KMeansResult:
    """Per-group K-means solution (M groups, N points, k cluster slots, D features)."""

    labels: torch.Tensor  # [M, N] int64 in [0, n_clusters), -1 for invalid points
    centroids: torch.Tensor  # [M, k, D] float32; slots >= n_clusters (unused) are zeros
    inertia: torch.Tensor  # [M] float32: sum of squared distances of valid points to their centroid
    n_clusters: torch.Tensor  # [M] int64: effective K = min(k, number of valid points)


def _pick(t: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` indexed along ``dim`` by ``index`` (shaped as t's leading dims ``t.shape[:dim]``), dropping dim."""
    index = index.view(*index.shape, *[1] * (t.dim() - dim)).expand(*t.shape[:dim], 1, *t.shape[dim + 1 :])
    return t.gather(dim, index).squeeze(dim)


def _sample(weights: torch.Tensor, fallback: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n indices per row of ``weights`` [..., N], drawn with replacement proportionally to the weights; rows
    whose weights are all zero use ``fallback`` instead, and rows where that is all zero too are uniform."""
    w = torch.where(weights.sum(-1, keepdim=True) > 0, weights, fallback)
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    return torch.multinomial(w.flatten(0, -2), n, replacement=True, generator=g).view(*w.shape[:-1], n)


def _kmeans_plusplus(pair_d2: torch.Tensor, vf: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with sklearn's 2 + ln k local trials).

    ``pair_d2`` [M, N, N] are squared distances between the points, ``vf`` [M, I, N] the valid mask per
    restart. Per restart the first centre is uniform among the valid points; each next one is the best
    (lowest resulting potential) of a few candidates sampled among the valid points with probability
    proportional to D^2, the squared distance to the nearest centre chosen so far. Returns the indices of
    the chosen points, [M, I, k].
    """
    rows = torch.arange(pair_d2.shape[0], device=pair_d2.device).view(-1, 1, 1)
    chosen = [_sample(vf, vf, 1, g)[..., 0]]  # [M, I]
    closest = pair_d2[rows[..., 0], chosen[0]] * vf  # [M, I, N]
    for _ in range(1, k):
        cand = _sample(closest, vf, 2 + int(math.log(k)), g)  # [M, I, T]
        pot = torch.minimum(closest.unsqueeze(2), pair_d2[rows, cand]) * vf.unsqueeze(2)  # [M, I, T, N]
        best = pot.sum(-1).argmin(-1)  # [M, I]
        closest = _pick(pot, best, 2)
        chosen.append(_pick(cand, best, 2))
    return torch.stack(chosen, -1)


def batched_kmeans(
    x: torch.Tensor,
    k: int,
    valid: torch.Tensor | None = None,
    n_iters: int = 20,
    n_init: int = 3,
    seed: int = 0,
) -> KMeansResult:
    """K-means on each of M independent groups of N points: Lloyd's algorithm with k-means++ seeding.

    This is the clustering of ACORM's negative pairs generation (Hu et al., "Attention-Guided Contrastive
    Role Representations for Multi-Agent Reinforcement Learning", ICLR 2024, Sec. 2.1), batched over all
    (episode, timestep) groups with no Python loop over groups or points. Per group it minimises the
    inertia sum_i |x_i - mu_{label_i}|^2 over the valid points; all math is float32 whatever x's dtype.

    Args:
        x: [M, N, D] points (e.g. agent embeddings of M episode-timesteps).
        k: clusters per group. A group with fewer valid points uses K = number of valid points; a group
            with none gets labels -1, zero centroids and inertia 0.
        valid: [M, N] bool, the points that take part (alive agents); None = all. Invalid points get label
            -1 and never influence centroids, inertia or the seeding.
        n_iters: at most this many Lloyd iterations; stops early once no label changes in any group.
        n_init: independent k-means++ restarts per group (run together); the lowest-inertia one is kept.
        seed: seeds a ``torch.Generator`` on ``x.device``: same inputs and seed give the same result.

    Every centroid is a weighted mean of its group's points, so the iterations run on the [M, N, N] Gram
    matrix with a weight matrix per restart (|x_i - W_j x|^2 = G_ii - 2 (G W^T)_ij + (W G W^T)_jj) and
    never touch D after it: cheap for few points in many dimensions, as here. An empty cluster is moved
    to the valid point farthest from its centroid (as sklearn does), so centroids never become NaN.
    """
    if k < 1 or n_init < 1:
        raise ValueError(f"k and n_init must be >= 1, got k={k}, n_init={n_init}")
    m, n, dim = x.shape
    dev = x.device
    valid = torch.ones(m, n, dtype=torch.bool, device=dev) if valid is None else valid.to(dev, torch.bool)
    n_clusters = valid.sum(1).clamp(max=k)
    if m == 0 or n == 0:
        labels = torch.full((m, n), -1, dtype=torch.long, device=dev)
        return KMeansResult(labels, torch.zeros(m, k, dim, device=dev), torch.zeros(m, device=dev), n_clusters)
    g = torch.Generator(device=dev)
    g.manual_seed(seed)

    x = x.float().masked_fill(~valid.unsqueeze(-1), 0.0)  # invalid points (possibly padding/NaN) play no part
    gram = torch.bmm(x, x.transpose(1, 2))  # [M, N, N]
    sq = gram.diagonal(dim1=1, dim2=2)  # [M, N], |x_i|^2
    vf = valid.float()
    unusable = (torch.arange(k, device=dev) >= n_clusters.unsqueeze(1)).view(m, 1, 1, k)
    invalid = ~valid.unsqueeze(-1)  # [M, N, 1]

    def assign(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels [M, N, I] (-1: invalid point) and squared distances [M, N, I, k] (+inf: unusable slot) to
        the centroids W x of the weights w [M, I, k, N]."""
        wt = w.flatten(1, 2).transpose(1, 2)  # [M, N, I*k]
        gw = torch.bmm(gram, wt)  # [M, N, I*k]: x_i . c_j
        d = (sq.unsqueeze(-1) - 2.0 * gw + (gw * wt).sum(1, keepdim=True)).clamp_min_(0.0)
        d = d.view(m, n, n_init, k).masked_fill_(unusable, math.inf)
        return d.argmin(-1).masked_fill_(invalid, -1), d

    pair_d2 = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * gram).clamp_min_(0.0)  # [M, N, N]
    seeds = _kmeans_plusplus(pair_d2, vf.unsqueeze(1).expand(m, n_init, n), k, g)
    weights = F.one_hot(seeds, n).float()  # [M, I, k, N]: each centroid starts on one point
    prev = None
    for _ in range(n_iters):
        labels, d = assign(weights)
        if prev is not None and torch.equal(labels, prev):
            break  # the centroids are already the means of these labels
        prev = labels
        member = (F.one_hot(labels.clamp_min(0), k).float() * vf.view(m, n, 1, 1)).permute(0, 2, 3, 1)  # [M,I,k,N]
        counts = member.sum(-1, keepdim=True)  # [M, I, k, 1]
        weights = torch.where(counts > 0, member / counts.clamp_min(1.0), weights)
        empty = (counts[..., 0] == 0) & ~unusable.view(m, 1, k)
        if bool(empty.any()):
            # the j-th empty cluster of a restart takes its j-th farthest valid point from its own centroid
            own = _pick(d, labels.clamp_min(0), 3).masked_fill_(invalid, -1.0)  # [M, N, I]
            order = own.argsort(dim=1, descending=True, stable=True).transpose(1, 2)  # [M, I, N], valid first
            far = order.gather(2, (empty.long().cumsum(-1) - 1).clamp(0, n - 1))  # [M, I, k]
            weights = torch.where(empty.unsqueeze(-1), F.one_hot(far, n).float(), weights)

    labels, d = assign(weights)
    inertia = _pick(d, labels.clamp_min(0), 3).masked_fill_(invalid, 0.0).sum(1)  # [M, I]
    best = inertia.argmin(1)  # the first restart wins ties
    centroids = torch.bmm(_pick(weights, best, 1), x).masked_fill_(unusable.view(m, k, 1), 0.0)
    return KMeansResult(_pick(labels.transpose(1, 2), best, 1), centroids, _pick(inertia, best, 1), n_clusters)
