"""Gaussian mixtures with diagonal covariances fitted by EM, batched over many small independent groups: the
alternative the ACORM paper names for its K-means (footnote 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from acorm_pl.clustering.kmeans import batched_kmeans


@dataclass
class GMMResult:
    """Per-group mixture (M groups, N points, k component slots, D features)."""

    labels: torch.Tensor  # [M, N] most likely component, -1 for invalid points
    weights: torch.Tensor  # [M, k] mixing weights (0 for unused slots)
    means: torch.Tensor  # [M, k, D]
    variances: torch.Tensor  # [M, k, D] diagonal covariances
    log_likelihood: torch.Tensor  # [M] sum over the valid points of log p(x)
    n_components: torch.Tensor  # [M] effective K = min(k, valid points)


def _log_joint(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
               unusable: torch.Tensor) -> torch.Tensor:
    """log pi_j + log N(x_i | mu_j, diag var_j): [M, N, k] (-inf for unusable slots)."""
    diff = x.unsqueeze(2) - means.unsqueeze(1)  # [M, N, k, D]
    log_det = torch.log(2 * math.pi * variances).sum(-1).unsqueeze(1)  # [M, 1, k]
    log_norm = -0.5 * (log_det + (diff**2 / variances.unsqueeze(1)).sum(-1))
    return (torch.log(weights.clamp_min(1e-30)).unsqueeze(1) + log_norm).masked_fill(unusable.unsqueeze(1), -math.inf)


def batched_gmm(x: torch.Tensor, k: int, valid: torch.Tensor | None = None, n_iters: int = 50, reg_covar: float = 1e-3,
                tol: float = 1e-4, seed: int = 0) -> GMMResult:
    """EM for a K-component diagonal Gaussian mixture on each of M groups of N points (all float32).

    Started from the groups' K-means solution (as scikit-learn's default), then alternating: responsibilities
    r_ij proportional to pi_j N(x_i | mu_j, var_j) over the valid points; pi_j = sum_i r_ij / n,
    mu_j = sum_i r_ij x_i / sum_i r_ij, var_j = sum_i r_ij (x_i - mu_j)^2 / sum_i r_ij + ``reg_covar``. Stops
    after ``n_iters`` or when no group's mean log-likelihood per point moved by more than ``tol``. Invalid
    points (dead agents) get label -1 and never enter the estimates; K shrinks to the number of valid points.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m, n, dim = x.shape
    valid = torch.ones(m, n, dtype=torch.bool, device=x.device) if valid is None else valid.to(x.device, torch.bool)
    x = x.float().masked_fill(~valid.unsqueeze(-1), 0.0)
    init = batched_kmeans(x, k, valid=valid, n_init=3, seed=seed)
    n_comp = init.n_clusters
    unusable = torch.arange(k, device=x.device).unsqueeze(0) >= n_comp.unsqueeze(1)  # [M, k]
    vf = valid.float()
    resp = torch.nn.functional.one_hot(init.labels.clamp_min(0), k).float() * vf.unsqueeze(-1)  # [M, N, k]
    prev = None
    for step in range(n_iters + 1):
        # M-step from the responsibilities (the first one from the K-means labels)
        nk = resp.sum(1) + 1e-10  # [M, k]
        weights = (nk / vf.sum(1, keepdim=True).clamp_min(1.0)).masked_fill(unusable, 0.0)
        means = resp.transpose(1, 2) @ x / nk.unsqueeze(-1)  # [M, k, D]
        variances = (resp.transpose(1, 2) @ x**2) / nk.unsqueeze(-1) - means**2
        variances = variances.clamp_min(0.0) + reg_covar
        # E-step
        joint = _log_joint(x, weights, means, variances, unusable)
        log_px = torch.logsumexp(joint, -1).masked_fill(~valid, 0.0)  # [M, N]
        ll = log_px.sum(1)
        if step == n_iters:
            break
        resp = torch.exp(joint - log_px.unsqueeze(-1)).nan_to_num(0.0) * vf.unsqueeze(-1)
        per_point = ll / vf.sum(1).clamp_min(1.0)
        if prev is not None and bool(((per_point - prev).abs() < tol).all()):
            break
        prev = per_point
    labels = joint.argmax(-1).masked_fill(~valid, -1)
    return GMMResult(labels, weights, means, variances, ll, n_comp)
