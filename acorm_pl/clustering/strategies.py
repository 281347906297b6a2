"""The clustering behind ACORM's negative pairs as a strategy the model owns (``model.clustering`` in a config):
one interface, ``(embeddings [M, N, D], valid [M, N], k, seed) -> labels [M, N]``, used by training and analysis.

    clustering:
      class_path: acorm_pl.clustering.GMM     # or KMeans (the default), AutoK
"""

from __future__ import annotations

from typing import Any

import torch

from acorm_pl.clustering.gmm import batched_gmm
from acorm_pl.clustering.kmeans import batched_kmeans
from acorm_pl.clustering.silhouette import batched_silhouette
from acorm_pl.errors import require
from acorm_pl.imports import import_attr


class Clustering:
    """Partitions the valid points of each of M groups (the alive agents of one episode-timestep) into at most
    ``k`` clusters. Subclasses implement :meth:`__call__`; labels are in [0, k) and -1 for invalid points."""

    def __call__(self, embeddings: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class KMeans(Clustering):
    """K-means per group (the paper's, Sec. 2.1): Lloyd's algorithm from k-means++ seeds, best of ``n_init``."""

    def __init__(self, n_iters: int = 20, n_init: int = 10):
        require(n_iters >= 1 and n_init >= 1, "KMeans n_iters and n_init must be >= 1")
        self.n_iters, self.n_init = n_iters, n_init

    def __call__(self, embeddings: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        return batched_kmeans(embeddings, k, valid=valid, n_iters=self.n_iters, n_init=self.n_init, seed=seed).labels


class GMM(Clustering):
    """Gaussian mixture with diagonal covariances per group, by EM from the K-means solution (footnote 4 of
    the paper); each agent takes its most likely component."""

    def __init__(self, n_iters: int = 50, reg_covar: float = 1e-3):
        require(n_iters >= 0 and reg_covar > 0, "GMM n_iters must be >= 0 and reg_covar > 0")
        self.n_iters, self.reg_covar = n_iters, reg_covar

    def __call__(self, embeddings: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        return batched_gmm(embeddings, k, valid=valid, n_iters=self.n_iters, reg_covar=self.reg_covar,
                           seed=seed).labels


class AutoK(Clustering):
    """K chosen per group among 2..k by the silhouette score of ``base``'s clusters (the paper promises a way to
    pick K automatically and gives none). The silhouette compares how close an agent is to its own cluster
    with the nearest other one, so it needs no likelihood model and is defined for 2 <= K <= agents - 1;
    groups with 2 valid agents or fewer keep min(2, valid) clusters."""

    def __init__(self, base: Clustering | None = None, min_k: int = 2):
        require(min_k >= 2, f"AutoK min_k must be >= 2, got {min_k}")
        self.base, self.min_k = base or KMeans(), min_k

    def __call__(self, embeddings: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        valid = valid.bool()
        best_labels = self.base(embeddings, valid, min(self.min_k, k), seed)
        best_score = torch.full(valid.shape[:1], -2.0, device=embeddings.device)
        for kk in range(self.min_k, k + 1):
            labels = best_labels if kk == self.min_k else self.base(embeddings, valid, kk, seed)
            score, defined = batched_silhouette(embeddings, labels, valid)
            better = defined & (score > best_score)
            best_labels = torch.where(better.unsqueeze(-1), labels, best_labels)
            best_score = torch.where(better, score, best_score)
        return best_labels


def make_clustering(spec: Clustering | dict[str, Any] | str | None) -> Clustering:
    """A clustering strategy from what a config or checkpoint holds: an instance, None (K-means), a name
    (``KMeans``, ``GMM``, ``AutoK``) or import path, or ``{class_path, init_args}`` (LightningCLI saves a
    module's hyperparameters in that form, so a checkpoint rebuilds its model's strategy from it)."""
    if spec is None:
        return KMeans()
    if isinstance(spec, Clustering):
        return spec
    if isinstance(spec, dict) and "class_path" in spec:
        path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
    else:
        path, init_args = spec, {}
    cls = None
    if isinstance(path, str):
        cls = import_attr(path if "." in path else f"{__name__}.{path}")
    require(isinstance(cls, type) and issubclass(cls, Clustering),
            f"model.clustering must be a Clustering (acorm_pl.clustering.KMeans, GMM, AutoK or your subclass), "
            f"got {spec!r}")
    if "base" in init_args:
        init_args["base"] = make_clustering(init_args["base"])
    return cls(**init_args)
