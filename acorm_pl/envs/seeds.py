"""Where every environment copy's seed comes from: disjoint ranges for training, periodic evaluation,
figures and analysis, so no evaluation episode is ever a training episode.

With ``seed`` the run's ``seed_everything`` (below 10^6), ``r`` the rank, ``n`` the copies per rank and
``i`` the copy:

- training: ``seed + r * n + i``
- periodic evaluation number ``j`` (0 at the start of training): ``seed + 10^8 + j * 10^4 + r * n + i``,
  the same episodes for the same ``j`` whatever happened before (a resumed run evaluates exactly what an
  uninterrupted one does)
- role figures while training: ``seed + 5 * 10^7 + r * n + i``
- ``acorm-pl evaluate`` and ``inspect_checkpoint``: ``2 * 10^9 + i`` by default
"""

from __future__ import annotations

EVAL_SEED_OFFSET = 100_000_000
EVAL_SEED_STRIDE = 10_000  # more evaluation copies than this over all ranks would overlap the next evaluation
FIGURES_SEED_OFFSET = 50_000_000
ANALYSIS_SEED = 2_000_000_000  # below 2^31: JAX's PRNGKey and Python's random both take it


def copy_seeds(base: int, rank: int, n_envs: int) -> list[int]:
    """Seeds ``base + rank * n_envs + i`` of one rank's ``n_envs`` copies."""
    start = base + rank * n_envs
    return [start + i for i in range(n_envs)]


def evaluation_seeds(seed: int, index: int, rank: int, n_envs: int, world_size: int = 1) -> list[int]:
    """Seeds of this rank's copies for periodic evaluation number ``index``."""
    if n_envs * world_size > EVAL_SEED_STRIDE:
        raise ValueError(f"at most {EVAL_SEED_STRIDE} evaluation copies over all ranks, got {n_envs * world_size}")
    return copy_seeds(seed + EVAL_SEED_OFFSET + index * EVAL_SEED_STRIDE, rank, n_envs)


__all__ = ["ANALYSIS_SEED", "EVAL_SEED_OFFSET", "EVAL_SEED_STRIDE", "FIGURES_SEED_OFFSET", "copy_seeds",
           "evaluation_seeds"]
