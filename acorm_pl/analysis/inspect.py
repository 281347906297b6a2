"""Look inside a trained policy: greedy episodes with per-timestep agent embeddings, role
representations, cluster labels, attention weights and unit health (the data behind the paper's Figs. 4-5)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from acorm_pl.algos.base import MARLModule
from acorm_pl.algos.roles import cluster_batch
from acorm_pl.checkpoints import build_model, read_checkpoint
from acorm_pl.clustering import Clustering, KMeans
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.data.rollout import Rollout, collect_rollout
from acorm_pl.envs import VecEnv, make_vec_env
from acorm_pl.envs.seeds import ANALYSIS_SEED
from acorm_pl.errors import require
from acorm_pl.nets import AgentOutput, shift_actions


@dataclass
class EpisodeRecord:
    """One greedy episode, step t = 0..length-1 (the observation before each action)."""

    length: int
    won: bool
    episode_return: float
    actions: torch.Tensor  # [T, N] int64
    rewards: torch.Tensor  # [T]
    alive: torch.Tensor  # [T, N] bool
    embeddings: torch.Tensor  # [T, N, H] agent embeddings e_i^t
    roles: torch.Tensor | None  # [T, N, R] role representations z_i^t (ACORM)
    cluster_labels: torch.Tensor | None  # [T, N] K-means clusters of e^t (-1: dead)
    attention: torch.Tensor | None  # [T, heads, N] weights of the state embedding over agents (ACORM)
    unit_types: list[str] | None  # the agents' unit types this episode, where the environment's state holds them
    health: torch.Tensor | None = None  # [T, N] health as a fraction of the maximum, where the state holds it


def greedy_rollouts(model: MARLModule, env: VecEnv, n_episodes: int) -> Iterator[tuple[Rollout, int]]:
    """Greedy rollouts of ``model`` in ``env`` (rounds of ``env.n_envs`` episodes) until ``n_episodes``
    complete episodes were collected; yields each rollout and how many of its episodes count (a failed
    worker's episode is dropped, not counted). The model is left in eval mode during the rounds."""
    require(n_episodes >= 1, f"n_episodes must be a positive integer, got {n_episodes}")
    was_training = model.training
    model.eval()
    try:
        remaining = n_episodes
        while remaining > 0:
            rollout = collect_rollout(env, model, explore=False)
            take = min(remaining, rollout.n_episodes)
            remaining -= take
            yield rollout, take
    finally:
        model.train(was_training)


def _conditioning(model: MARLModule, batch: EpisodeBatch, out: AgentOutput) -> None:
    """Run the state side (mixer or critic conditioning) so ACORM's ``last_attention`` holds this batch's."""
    condition = getattr(model, "mixer_conditioning", None) or getattr(model, "critic_conditioning", None)
    if condition is not None:
        condition(batch, out)


@torch.no_grad()
def record_episodes(model: MARLModule, env: VecEnv, n_episodes: int, clustering: Clustering | None = None,
                    n_clusters: int | None = None, on_episodes: Callable[[int], None] | None = None
                    ) -> list[EpisodeRecord]:
    """Run ``n_episodes`` greedy episodes of ``model`` in ``env`` (in rounds of ``env.n_envs``) and record
    what the networks computed at every step. Clusters: ``clustering`` (default: the model's own, else K-means)
    with ``n_clusters`` (default: the model's K, or 3).
    ``on_episodes(k)`` is called after each round with the number of episodes it added (for progress)."""
    k = n_clusters or int(model.hparams.get("n_clusters", 3))
    clustering = clustering or getattr(model, "clustering", None) or KMeans()
    records: list[EpisodeRecord] = []
    for rollout, take in greedy_rollouts(model, env, n_episodes):
        batch = rollout.episodes.to(model.device)
        x = model.inputs(batch.obs, shift_actions(batch.actions))
        out = model.agent_forward(x)  # whole sequences: equal to the step-by-step actor
        _conditioning(model, batch, out)
        attention = getattr(model, "last_attention", None)
        embeddings = out.embedding[:, :-1].float()
        labels = cluster_batch(clustering, embeddings, batch, k, seed=0)
        alive = batch.alive[:, :-1]
        features = env.agent_features(batch.state[:, :-1].cpu())  # health and unit types, where the family knows
        for i in range(take):
            t = int(rollout.lengths[i])
            types = None if features is None else features.type_names(i, 0)  # all alive at the start
            records.append(EpisodeRecord(
                length=t, won=bool(rollout.won[i]), episode_return=float(rollout.returns[i]),
                actions=batch.actions[i, :t].cpu(), rewards=batch.reward[i, :t].cpu(), alive=alive[i, :t].cpu(),
                embeddings=embeddings[i, :t].cpu(),
                roles=None if out.roles is None else out.roles[i, :t].float().cpu(),
                cluster_labels=labels[i, :t].cpu(),
                attention=None if attention is None else attention[i, :t].float().cpu(),
                unit_types=types, health=None if features is None else features.health[i, :t]))
        if on_episodes is not None:
            on_episodes(take)
    return records


def save_records(records: list[EpisodeRecord], path: str | Path) -> Path:
    """Write ``records`` to ``path`` (torch format, plain tensors and lists: loadable with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([asdict(r) for r in records], path)
    return path


def load_records(path: str | Path) -> list[EpisodeRecord]:
    """Records written by :func:`save_records`."""
    require(Path(path).is_file(), f"no records file at {path}")
    names = {f.name for f in fields(EpisodeRecord)}
    return [EpisodeRecord(**{k: v for k, v in d.items() if k in names})
            for d in torch.load(path, map_location="cpu", weights_only=True)]


def checkpoint_summary(path: str | Path) -> dict[str, Any]:
    """What a checkpoint says about its run without building the model: algorithm class path, env family,
    map, env steps and the MLflow run id (None where not recorded)."""
    ckpt = read_checkpoint(path)
    data = ckpt.get("datamodule_hyper_parameters", {})
    return {"class_path": ckpt.get("acorm_pl", {}).get("class_path"), "env": data.get("env", "smax"),
            "map_name": data.get("map_name"), "env_steps": int(ckpt.get("RolloutDataModule", {}).get("env_steps", 0)),
            "mlflow_run_id": ckpt.get("mlflow_run_id")}


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[MARLModule, dict]:
    """The LightningModule saved in a checkpoint (any acorm-pl algorithm, rebuilt from the checkpoint's own
    settings) and the DataModule's settings; a file that is not such a checkpoint raises a one-line
    :class:`~acorm_pl.errors.ConfigError` (:mod:`acorm_pl.checkpoints`)."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt, path).to(map_location)
    return model, dict(ckpt.get("datamodule_hyper_parameters", {}))


def checkpoint_env(data: dict, seed: int, n_envs: int) -> VecEnv:
    """``n_envs`` copies of a checkpoint's environment (DataModule settings ``data``), seeded ``seed + i``."""
    return make_vec_env(data.get("env", "smax"), data["map_name"], [seed + i for i in range(n_envs)],
                        **(data.get("env_kwargs") or {}))


def inspect_checkpoint(path: str | Path, n_episodes: int = 4, seed: int = ANALYSIS_SEED, n_envs: int | None = None
                       ) -> list[EpisodeRecord]:
    """Greedy episodes of the policy in checkpoint ``path`` on its own environment, with the per-timestep
    data of :class:`EpisodeRecord`. Environment copies are seeded ``seed + i``; the default seeds are disjoint
    from every training and periodic-evaluation seed (:mod:`acorm_pl.envs.seeds`)."""
    model, data = load_checkpoint(path)
    env = checkpoint_env(data, seed, n_envs or n_episodes)
    try:
        return record_episodes(model, env, n_episodes)
    finally:
        env.close()
