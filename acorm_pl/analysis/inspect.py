"""Look inside a trained policy: greedy episodes with per-timestep agent embeddings, role
representations, cluster labels and attention weights (the data behind the paper's Figs. 4-5)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from acorm_pl.algos.acorm import alive_agents
from acorm_pl.algos.qmix import QMIX
from acorm_pl.callbacks.roles import RoleClustering
from acorm_pl.data.rollout import collect_rollout
from acorm_pl.envs import VecEnv, make_vec_env
from acorm_pl.nets import shift_actions


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
    unit_types: list[str] | None  # the agents' unit types, where the environment knows them


@torch.no_grad()
def record_episodes(model: QMIX, env: VecEnv, n_episodes: int, clustering: RoleClustering | None = None,
                    n_clusters: int | None = None) -> list[EpisodeRecord]:
    """Run ``n_episodes`` greedy episodes of ``model`` in ``env`` (in rounds of ``env.n_envs``) and record
    what the networks computed at every step. Clusters use ``n_clusters`` (default: the model's K, or 3)."""
    model.eval()
    k = n_clusters or int(model.hparams.get("n_clusters", 3))
    clustering = clustering or RoleClustering()
    records: list[EpisodeRecord] = []
    while len(records) < n_episodes:
        rollout = collect_rollout(env, model, explore=False)
        batch = rollout.episodes.to(model.device)
        x = model.inputs(batch.obs, shift_actions(batch.actions))
        out = model.agent_forward(x)  # whole sequences: equal to the step-by-step actor
        model.mixer_conditioning(batch, out)
        attention = getattr(model, "last_attention", None)
        embeddings = out.embedding[:, :-1].float()
        labels = clustering.cluster_embeddings(embeddings, batch, k, seed=0)
        alive = alive_agents(batch.avail_actions[:, :-1])
        types = getattr(env, "unit_type_names", None)
        for i in range(rollout.n_episodes):  # a failed worker's episode is dropped, not recorded
            if len(records) == n_episodes:
                break
            t = int(rollout.lengths[i])
            records.append(EpisodeRecord(
                length=t, won=bool(rollout.won[i]), episode_return=float(rollout.returns[i]),
                actions=batch.actions[i, :t].cpu(), rewards=batch.reward[i, :t].cpu(), alive=alive[i, :t].cpu(),
                embeddings=embeddings[i, :t].cpu(),
                roles=None if out.roles is None else out.roles[i, :t].float().cpu(),
                cluster_labels=labels[i, :t].cpu(),
                attention=None if attention is None else attention[i, :t].cpu(),
                unit_types=list(types) if types is not None else None))
    return records


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[QMIX, dict]:
    """The LightningModule saved in a checkpoint (any acorm-pl algorithm) and the DataModule's settings."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    class_path = ckpt.get("acorm_pl", {}).get("class_path")
    if class_path is None:
        raise ValueError(f"{path} was not written by an acorm-pl algorithm (no acorm_pl.class_path in it)")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # drop CLI bookkeeping
    model = cls(**hparams)
    model.load_state_dict(ckpt["state_dict"])
    return model, dict(ckpt.get("datamodule_hyper_parameters", {}))


def inspect_checkpoint(path: str | Path, n_episodes: int = 4, seed: int = 0, n_envs: int | None = None
                       ) -> list[EpisodeRecord]:
    """Greedy episodes of the policy in checkpoint ``path`` on its own environment, with the per-timestep
    data of :class:`EpisodeRecord`. Environment copies are seeded ``seed + i``."""
    model, data = load_checkpoint(path)
    n = n_envs or n_episodes
    env = make_vec_env(data.get("env", "smax"), data["map_name"], [seed + i for i in range(n)],
                       **(data.get("env_kwargs") or {}))
    try:
        return record_episodes(model, env, n_episodes)
    finally:
        env.close()
