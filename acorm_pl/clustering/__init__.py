"""Clustering of agent embeddings per (episode, timestep), batched in torch: the strategies the ACORM modules own
(:mod:`acorm_pl.clustering.strategies`) and the algorithms behind them."""

from acorm_pl.clustering.gmm import GMMResult, batched_gmm
from acorm_pl.clustering.kmeans import KMeansResult, batched_kmeans
from acorm_pl.clustering.silhouette import batched_silhouette
from acorm_pl.clustering.strategies import GMM, AutoK, Clustering, KMeans, make_clustering

__all__ = ["GMM", "AutoK", "Clustering", "GMMResult", "KMeans", "KMeansResult", "batched_gmm", "batched_kmeans",
           "batched_silhouette", "make_clustering"]
