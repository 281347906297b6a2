"""Numbers instead of impressions for the paper's role and attention figures (Figs. 4, 5, 11, 13), from greedy
episodes recorded by :func:`acorm_pl.analysis.inspect.record_episodes`.

* How well the clusters of one (episode, timestep) match the agents' unit types, and their health bands:
  normalised mutual information (NMI, arithmetic normalisation as scikit-learn's) per group of alive agents,
  averaged over the groups where the reference takes at least two values (with one value NMI says nothing),
  next to the same for labels shuffled within each group (what chance gives with this many agents and K).
* How the attention heads look at the agents: per-head entropy over the alive agents (also divided by
  log(alive), 1 = uniform), and the mean total-variation distance between the weights of two heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from acorm_pl.analysis.inspect import EpisodeRecord
from acorm_pl.checkpoints import read_checkpoint
from acorm_pl.clustering import KMeans

HEALTH_BANDS = (1 / 3, 2 / 3)  # alive agents' health fraction in (0, 1/3], (1/3, 2/3], (2/3, 1]


def health_bands(health: torch.Tensor, edges: Sequence[float] = HEALTH_BANDS) -> torch.Tensor:
    """Band index of each health fraction: 0 up to edges[0], 1 up to edges[1], ... ([...] int64)."""
    return torch.bucketize(health.float(), torch.tensor(list(edges)), right=False)


def group_nmi(labels: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor, shuffles: int = 20, seed: int = 0
              ) -> dict[str, float]:
    """Mean NMI between ``labels`` and ``reference`` ([G, N] each) over the groups (rows) whose valid agents
    ([G, N] bool) have at least two reference values, with the mean NMI of ``shuffles`` within-group
    permutations of the labels (chance) and the number of groups used."""
    rng = np.random.default_rng(seed)
    scores, chance = [], []
    for lab, ref, ok in zip(labels.numpy(), reference.numpy(), valid.numpy()):
        lab, ref = lab[ok], ref[ok]
        if len(np.unique(ref)) < 2:
            continue
        scores.append(normalized_mutual_info_score(ref, lab))
        chance.append(np.mean([normalized_mutual_info_score(ref, rng.permutation(lab)) for _ in range(shuffles)]))
    return {"nmi": float(np.mean(scores)) if scores else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"), "groups": len(scores)}


def _stack(records: Sequence[EpisodeRecord], name: str) -> torch.Tensor:
    return torch.cat([getattr(r, name) for r in records])


def cluster(points: torch.Tensor, alive: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """K-means labels [G, N] of ``points`` [G, N, D] per group, dead agents left out (-1), as in training."""
    return KMeans()(points.float(), alive, k, seed)


def relative_spread(points: torch.Tensor, alive: torch.Tensor) -> float:
    """How far apart the alive agents' vectors are at a step, relative to their size: the mean distance of
    each alive agent's vector to the step's mean over alive agents divided by their mean norm, averaged over
    the steps with two or more alive agents (0: every agent has the same vector). ``points`` [G, N, D],
    ``alive`` [G, N]."""
    keep = alive.sum(-1) >= 2
    x, a = points[keep].double(), alive[keep].unsqueeze(-1).double()  # [G', N, D], [G', N, 1]
    if x.shape[0] == 0:
        return float("nan")
    n = a.sum(1)  # [G', 1]
    centre = (x * a).sum(1) / n  # [G', D]
    distance = ((x - centre.unsqueeze(1)).norm(dim=-1, keepdim=True) * a).sum(1) / n  # [G', 1]
    size = (x.norm(dim=-1, keepdim=True) * a).sum(1) / n
    return float((distance / size.clamp_min(1e-12)).mean())


def cluster_agreement(records: Sequence[EpisodeRecord], k: int, what: str = "embeddings") -> dict[str, Any]:
    """NMI of the K-means clusters of ``what`` (``embeddings`` e or ``roles`` z) at every step against the
    agents' unit types and their health bands (alive agents only), and the vectors' :func:`relative_spread`."""
    alive = _stack(records, "alive")
    points = _stack(records, what)
    labels = cluster(points, alive, k)
    out: dict[str, Any] = {"clustered": what, "k": k, "steps": int(alive.shape[0]),
                           "spread": relative_spread(points, alive)}
    if records[0].unit_types is not None:
        names = sorted(set(records[0].unit_types))
        types = torch.tensor([[names.index(u) for u in r.unit_types] for r in records for _ in range(r.length)])
        out["unit_type"] = group_nmi(labels, types, alive)
    if records[0].health is not None:
        out["health_band"] = group_nmi(labels, health_bands(_stack(records, "health")), alive)
    return out


def attention_numbers(records: Sequence[EpisodeRecord]) -> dict[str, Any] | None:
    """Per-head entropy of the attention over alive agents (nats, and over log(alive)) and the mean total-
    variation distance between two heads' weights, averaged over steps with at least two agents alive."""
    if records[0].attention is None:
        return None
    weights = _stack(records, "attention").double()  # [G, H, N]
    alive = _stack(records, "alive")
    n_alive = alive.sum(-1)
    keep = n_alive >= 2
    w, n = weights[keep], n_alive[keep].double()
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)  # [G', H]
    heads = w.shape[1]
    pairs = [(a, b) for a in range(heads) for b in range(a + 1, heads)]
    tv = torch.stack([0.5 * (w[:, a] - w[:, b]).abs().sum(-1) for a, b in pairs], -1) if pairs else None
    return {"heads": heads, "steps": int(keep.sum()),
            "entropy_per_head": entropy.mean(0).tolist(),
            "normalised_entropy_per_head": (entropy / torch.log(n).unsqueeze(-1)).mean(0).tolist(),
            "head_distance_tv": None if tv is None else float(tv.mean()),
            "uniform_entropy": float(torch.log(n).mean())}


def role_numbers(records: Sequence[EpisodeRecord], k: int) -> dict[str, Any]:
    """Everything above for one policy's recorded episodes."""
    out: dict[str, Any] = {"episodes": len(records), "win_rate": float(np.mean([r.won for r in records])),
                           "embeddings": cluster_agreement(records, k, "embeddings")}
    if records[0].roles is not None:
        out["roles"] = cluster_agreement(records, k, "roles")
    attention = attention_numbers(records)
    if attention is not None:
        out["attention"] = attention
    return out


def fmt_nmi(block: dict[str, float] | None) -> str:
    """``0.42 (chance 0.20, 1234 steps)`` for a :func:`group_nmi` result."""
    if not block or math.isnan(block["nmi"]):
        return "-"
    return f"{block['nmi']:.2f} (chance {block['chance']:.2f}, {block['groups']} steps)"


def measure_roles(checkpoint: str | Path, baseline: str | Path | None = None, n_episodes: int = 32,
                  k: int | None = None, figures: str | Path | None = None) -> dict[str, Any]:
    """:func:`role_numbers` of the policy in ``checkpoint`` over ``n_episodes`` greedy episodes (analysis seeds),
    and of ``baseline`` (a host's checkpoint: its agent hidden states clustered the same way) on the same
    episode seeds; with ``figures``, the role map at three timesteps and the attention heatmaps of episode 0."""
    from acorm_pl.analysis.evaluate import evaluate_checkpoint
    from acorm_pl.analysis.figures import write_episode_figures

    result, records = evaluate_checkpoint(checkpoint, n_episodes, record=True)
    k = k or int(read_checkpoint(checkpoint).get("hyper_parameters", {}).get("n_clusters", 3))
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "algorithm": result.algorithm, "map": result.map_name,
                           "env_steps": result.env_steps, "k": k, "policy": role_numbers(records, k)}
    if figures is not None:
        title = f"{result.algorithm} on {result.map_name}, {result.env_steps:,} env steps, episode 0"
        out["figures"] = [str(p) for p in write_episode_figures(records[0], figures, None, title)]
    if baseline is not None:
        base, base_records = evaluate_checkpoint(baseline, n_episodes, record=True)
        out["baseline"] = {"checkpoint": str(baseline), "algorithm": base.algorithm, "env_steps": base.env_steps,
                           **role_numbers(base_records, k)}
    return out
