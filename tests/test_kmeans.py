"""Batched K-means (ACORM's negative pairs generation) against scikit-learn and on its edge cases."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
import acorm_pl  # noqa: F401
import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from acorm_pl.clustering.kmeans import KMeansResult, batched_kmeans

N_AGENTS, DIM = 10, 128


def blobs(m: int, n_blobs: int, spread: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """m groups of N_AGENTS points around n_blobs centres ~ N(0, spread^2 I) each (new centres per group) with
    unit noise, every blob used; returns points [m, N, D] and true blob ids [m, N]."""
    centres = torch.randn(m, n_blobs, DIM, generator=gen) * spread
    ids = torch.arange(N_AGENTS).remainder(n_blobs).expand(m, N_AGENTS)
    ids = ids.gather(1, torch.rand(m, N_AGENTS, generator=gen).argsort(1))  # shuffled, each blob non-empty
    x = centres.gather(1, ids.unsqueeze(-1).expand(-1, -1, DIM)) + torch.randn(m, N_AGENTS, DIM, generator=gen)
    return x, ids


def realistic(gen: torch.Generator) -> torch.Tensor:
    """64 groups: 3 and 4 overlapping blobs at a few separations, and pure Gaussian noise."""
    parts = [blobs(12, 3, 0.5, gen)[0], blobs(12, 4, 0.5, gen)[0], blobs(12, 3, 1.0, gen)[0]]
    parts += [blobs(12, 4, 1.0, gen)[0], torch.randn(16, N_AGENTS, DIM, generator=gen)]
    return torch.cat(parts)


def sklearn_inertia(x: torch.Tensor, k: int = 3) -> np.ndarray:
    return np.array([KMeans(n_clusters=k, n_init=10, random_state=0).fit(g.numpy()).inertia_ for g in x])


def recomputed_inertia(x: torch.Tensor, res: KMeansResult) -> torch.Tensor:
    own = res.centroids.gather(1, res.labels.clamp_min(0).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return ((x.float() - own) ** 2).sum(-1).mul(res.labels >= 0).sum(1)


def test_result_shapes_and_dtypes() -> None:
    x = torch.randn(7, 5, 16)
    res = batched_kmeans(x, 3)
    assert res.labels.shape == (7, 5) and res.labels.dtype == torch.int64
    assert res.centroids.shape == (7, 3, 16) and res.centroids.dtype == torch.float32
    assert res.inertia.shape == (7,) and res.inertia.dtype == torch.float32
    assert res.n_clusters.shape == (7,) and res.n_clusters.dtype == torch.int64
    assert torch.equal(res.n_clusters, torch.full((7,), 3))
    assert res.labels.min() >= 0 and res.labels.max() < 3
    with pytest.raises(ValueError):
        batched_kmeans(x, 0)


def test_inertia_matches_sklearn() -> None:
    x = realistic(torch.Generator().manual_seed(1))
    ref = sklearn_inertia(x)
    for n_init, tol in ((10, 0.01), (3, 0.03)):
        res = batched_kmeans(x, 3, n_init=n_init)
        ours = res.inertia.double().numpy()
        ratio = ours / ref
        msg = f"n_init={n_init}: total {ours.sum() / ref.sum():.4f} x sklearn, worst group {ratio.max():.3f} x"
        assert ours.sum() <= (1 + tol) * ref.sum(), msg
        # the reported inertia is that of the returned labels and centroids
        torch.testing.assert_close(res.inertia, recomputed_inertia(x, res), rtol=1e-4, atol=1e-2)
        # every group uses all 3 clusters
        assert all(len(set(row.tolist())) == 3 for row in res.labels)


def test_near_brute_force_optimum() -> None:
    """Against the exact optimum over all 3^7 labelings of 7 points (low-dimensional: many local optima)."""
    x = torch.randn(64, 7, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(torch.tensor(list(itertools.product(range(3), repeat=7))), 3).double()
    sums = torch.einsum("lnk,mnd->mlkd", onehot, x)  # [M, labelings, k, D]
    within = (sums**2).sum(-1) / onehot.sum(1).clamp_min(1)  # |S_j|^2 / n_j
    optimum = ((x**2).sum((1, 2)).unsqueeze(1) - within.sum(-1)).min(1).values
    ours = batched_kmeans(x.float(), 3, n_init=10).inertia.double()
    assert (ours >= optimum * (1 - 1e-5)).all()
    exact = ((ours - optimum).abs() <= 1e-4 * optimum).float().mean()
    assert ours.sum() <= 1.02 * optimum.sum() and exact >= 0.85, f"{ours.sum() / optimum.sum():.4f}, {exact:.2f}"


def test_converged_centroids_are_cluster_means() -> None:
    x = realistic(torch.Generator().manual_seed(2))
    res = batched_kmeans(x, 3, n_iters=100)
    onehot = torch.nn.functional.one_hot(res.labels, 3).float()  # [M, N, k]
    means = onehot.transpose(1, 2) @ x / onehot.sum(1).unsqueeze(-1)
    torch.testing.assert_close(res.centroids, means, rtol=1e-4, atol=1e-4)


def test_lloyd_never_worse_than_its_seeding() -> None:
    x = realistic(torch.Generator().manual_seed(3))
    seeded = batched_kmeans(x, 3, n_iters=0)
    refined = batched_kmeans(x, 3)
    assert (refined.inertia <= seeded.inertia * (1 + 1e-5)).all()
    assert (refined.inertia < seeded.inertia).any()


@pytest.mark.parametrize("n_init", [1, 3])
def test_separated_blobs_recovered_exactly(n_init: int) -> None:
    x, truth = blobs(48, 3, 5.0, torch.Generator().manual_seed(4))
    res = batched_kmeans(x, 3, n_init=n_init)
    aris = [adjusted_rand_score(t.numpy(), lab.numpy()) for t, lab in zip(truth, res.labels)]
    assert min(aris) == 1.0, f"{sum(a < 1.0 for a in aris)} of 48 groups mis-clustered"


def test_invalid_points_take_no_part() -> None:
    gen = torch.Generator().manual_seed(5)
    x = realistic(gen)
    valid = torch.rand(x.shape[:2], generator=gen) > 0.3
    res = batched_kmeans(x, 3, valid=valid)
    assert (res.labels[~valid] == -1).all() and (res.labels[valid] >= 0).all()
    assert torch.equal(res.n_clusters, valid.sum(1).clamp(max=3))
    torch.testing.assert_close(res.inertia, recomputed_inertia(x, res), rtol=1e-4, atol=1e-2)
    for junk in (1e6, float("nan")):
        moved = batched_kmeans(x.masked_fill(~valid.unsqueeze(-1), junk), 3, valid=valid)
        assert torch.equal(moved.labels, res.labels)
        assert torch.equal(moved.centroids, res.centroids)
        assert torch.equal(moved.inertia, res.inertia)


def test_fewer_valid_points_than_k() -> None:
    x = torch.randn(3, 6, 8)
    valid = torch.zeros(3, 6, dtype=torch.bool)
    valid[0, [1, 4]] = True  # 2 valid points, k = 3
    valid[1, 2] = True  # 1 valid point
    # group 2: no valid point
    res = batched_kmeans(x, 3, valid=valid)
    assert res.n_clusters.tolist() == [2, 1, 0]
    assert sorted(res.labels[0, [1, 4]].tolist()) == [0, 1] and (res.labels[0, [0, 2, 3, 5]] == -1).all()
    assert res.labels[1, 2] == 0 and (res.labels[1, [0, 1, 3, 4, 5]] == -1).all()
    assert (res.labels[2] == -1).all()
    torch.testing.assert_close(res.inertia, torch.zeros(3), atol=1e-4, rtol=0)
    # each valid point is its own centroid; unused slots are zeros
    torch.testing.assert_close(res.centroids[0, res.labels[0, [1, 4]]], x[0, [1, 4]])
    torch.testing.assert_close(res.centroids[1, 0], x[1, 2])
    assert (res.centroids[0, 2] == 0).all() and (res.centroids[1, 1:] == 0).all() and (res.centroids[2] == 0).all()
    assert not res.centroids.isnan().any()


def test_duplicate_points() -> None:
    same = torch.randn(1, 1, DIM).expand(4, N_AGENTS, DIM).clone()  # all points identical
    two = torch.randn(4, 2, DIM).repeat_interleave(5, dim=1)  # only 2 distinct points for k = 3
    for x, clusters in ((same, 1), (two, 2)):
        res = batched_kmeans(x, 3)
        assert not res.centroids.isnan().any() and not res.inertia.isnan().any()
        torch.testing.assert_close(res.inertia, torch.zeros(4), atol=1e-3, rtol=0)
        # coincident centroids may split a set of identical points, but points apart never share a cluster
        assert all(len(set(row.tolist())) >= clusters for row in res.labels)


def test_deterministic_given_seed() -> None:
    x = realistic(torch.Generator().manual_seed(6))
    valid = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(7)) > 0.2
    a = batched_kmeans(x, 3, valid=valid, n_init=2, seed=11)
    torch.manual_seed(123)  # the global RNG plays no part
    b = batched_kmeans(x, 3, valid=valid, n_init=2, seed=11)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.inertia, b.inertia)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_uses_float32_math(dtype: torch.dtype) -> None:
    x = realistic(torch.Generator().manual_seed(8)).to(dtype)
    res = batched_kmeans(x, 3)
    ref = batched_kmeans(x.float(), 3)
    assert res.centroids.dtype == torch.float32 and res.inertia.dtype == torch.float32
    assert torch.equal(res.labels, ref.labels) and torch.equal(res.inertia, ref.inertia)
    assert torch.isfinite(res.inertia).all()
