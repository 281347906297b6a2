"""ACORM's per-(episode, timestep) K-means: :func:`batched_kmeans` vs scikit-learn called per group.

The reference ACORM code clusters the agent embeddings of every (episode, timestep) of a batch with its own
``sklearn.cluster.KMeans(n_clusters=3)`` call (Sec. 2.1, negative pairs generation). With the issue's shapes
(32 episodes x 120 steps = 3840 groups of 10 agents, 128-d embeddings, K = 3) this prints the median time
(over ``--repeats``, after a warm-up) of

(a) ``batched_kmeans`` on all groups at once (n_init 1, 3 and 10),
(b) sklearn ``KMeans(n_clusters=3, n_init=10)`` once per group, timed on a random subset of groups and
    extrapolated to all of them (it takes ~10 ms a call),
(c) the speed-up (b) / (a), with the total inertia of both on the same subset (matched quality).

The inputs are realistic stand-ins for embeddings: per group a mixture of 3 or 4 Gaussian blobs with
moderate overlap (new blob centres in every group), plus a share of pure-noise groups.

Run: ``python benchmarks/kmeans_vs_sklearn.py [--episodes 32 --steps 120 --agents 10 --dim 128 --subset 200]``
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
import acorm_pl  # noqa: F401
import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans

from acorm_pl.clustering.kmeans import batched_kmeans


def embeddings(m: int, n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """[m, n, dim]: a quarter of the groups pure N(0, I) noise, the rest 3 or 4 blobs with centres ~ N(0, s^2 I),
    s in {0.5, 0.7, 1.0}, plus unit noise (the blob centres are ~s*sqrt(2) noise-lengths apart)."""
    n_blobs = torch.randint(3, 5, (m,), generator=gen)
    spread = torch.tensor([0.5, 0.7, 1.0])[torch.randint(0, 3, (m,), generator=gen)]
    spread = spread.masked_fill(torch.rand(m, generator=gen) < 0.25, 0.0)  # pure-noise groups
    centres = torch.randn(m, 4, dim, generator=gen) * spread.view(m, 1, 1)
    blob = (torch.rand(m, n, generator=gen) * n_blobs.view(m, 1)).long()
    return centres.gather(1, blob.unsqueeze(-1).expand(-1, -1, dim)) + torch.randn(m, n, dim, generator=gen)


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--subset", type=int, default=200, help="groups sklearn is timed on")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs")
    print(
        f"python {platform.python_version()} | torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"device {dev}) | scikit-learn {sklearn.__version__}"
    )
    m = args.episodes * args.steps
    shape = f"{args.episodes} episodes x {args.steps} steps = {m} groups"
    print(f"{shape} of {args.agents} agents, embedding dim {args.dim}, K={args.k}")
    gen = torch.Generator().manual_seed(0)
    x = embeddings(m, args.agents, args.dim, gen)
    subset = torch.randperm(m, generator=gen)[: args.subset]
    x_dev = x.to(dev)

    print(f"\n(a) batched_kmeans, all {m} groups in one call (median of {args.repeats}):")
    batched = {}
    for n_init in (1, 3, 10):
        secs = median_time(lambda n_init=n_init: batched_kmeans(x_dev, args.k, n_init=n_init), args.repeats, sync)
        inertia = batched_kmeans(x_dev, args.k, n_init=n_init).inertia.cpu().double()
        batched[n_init] = (secs, inertia)
        print(f"    n_init={n_init:>2}: {secs * 1e3:8.1f} ms  ({secs / m * 1e6:6.2f} us/group)")

    groups = x[subset].numpy()
    fit_all = lambda: [KMeans(n_clusters=args.k, n_init=10).fit(g) for g in groups]  # noqa: E731
    sk_secs = median_time(fit_all, args.repeats, lambda: None)
    sk_total = sk_secs / len(groups) * m
    sk_inertia = np.array([KMeans(n_clusters=args.k, n_init=10, random_state=0).fit(g).inertia_ for g in groups])
    print(f"\n(b) sklearn KMeans(n_clusters={args.k}, n_init=10), one call per group:")
    print(f"    timed on a random subset of {len(groups)} groups (median of {args.repeats}): {sk_secs:.2f} s")
    print(f"    = {sk_secs / len(groups) * 1e3:.2f} ms/call -> extrapolated to {m} groups: {sk_total:.1f} s")

    print(f"\n(c) speed-up (b)/(a) and inertia on the same {len(groups)} groups (sum; ratio to sklearn):")
    print(f"    sklearn n_init=10: inertia {sk_inertia.sum():.1f}")
    for n_init, (secs, inertia) in batched.items():
        ours = inertia[subset].numpy()
        print(
            f"    batched n_init={n_init:>2}: {sk_total / secs:8.0f}x faster | inertia {ours.sum():.1f} "
            f"({ours.sum() / sk_inertia.sum():.4f}x, worst group {(ours / sk_inertia).max():.3f}x)"
        )


if __name__ == "__main__":
    main()
