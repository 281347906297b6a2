"""Collect whole episodes from a :class:`VecEnv` with any recurrent per-agent policy."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch

from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.envs.base import VecEnv


class Actor(Protocol):
    """What the rollout needs from an algorithm: a recurrent state and an action per agent."""

    def initial_state(self, n_envs: int) -> Any: ...

    def act(
        self, obs: torch.Tensor, last_actions: torch.Tensor, avail: torch.Tensor, hidden: Any, explore: bool
    ) -> tuple[torch.Tensor, Any]:
        """obs [E, N, O], last_actions [E, N] (-1 = none), avail [E, N, A] bool -> actions [E, N], new hidden."""
        ...


@dataclass
class Rollout:
    """One lockstep batch of episodes: padded transitions plus per-episode outcomes.

    Only complete episodes are kept: those a crashed or hung worker lost (``StepResult.discarded``) are
    dropped whole and only counted in ``discarded``, so ``K`` (the kept episodes) may be fewer than the
    copies, even 0.
    """

    episodes: EpisodeBatch  # cut to the longest kept episode
    lengths: torch.Tensor  # [K] int64
    returns: torch.Tensor  # [K] float32 undiscounted episode returns
    won: torch.Tensor  # [K] bool
    truncated: torch.Tensor  # [K] bool, the episode hit the time limit
    discarded: int = 0  # episodes dropped because their worker failed

    @property
    def env_steps(self) -> int:
        """Environment steps of the kept episodes."""
        return int(self.lengths.sum())

    @property
    def n_episodes(self) -> int:
        """Number of kept episodes."""
        return int(self.lengths.numel())


@torch.no_grad()
def collect_rollout(env: VecEnv, actor: Actor, explore: bool) -> Rollout:
    """Run one episode in every copy of ``env`` (finished copies wait for the rest, as pymarl's parallel runner).

    Nothing after an episode's end is kept: steps past its length are zero and ``filled`` is 0 there. A copy
    the env reports ``discarded`` ends there and its episode is left out of the result.

    The episodes are assembled on the device of the env's observations (SMAX with JAX on a GPU hands CUDA
    tensors over through DLPack: they stay there); lengths and outcomes are CPU tensors.
    """
    info, n_envs = env.info, env.n_envs
    limit, n = info.episode_limit, info.n_agents
    first = env.reset()
    kw = {"device": first.obs.device}
    obs = torch.zeros(n_envs, limit + 1, n, info.obs_dim, **kw)
    state = torch.zeros(n_envs, limit + 1, info.state_dim, **kw)
    avail = torch.zeros(n_envs, limit + 1, n, info.n_actions, dtype=torch.bool, **kw)
    alive = torch.zeros(n_envs, limit + 1, n, dtype=torch.bool, **kw)
    actions = torch.zeros(n_envs, limit, n, dtype=torch.int64, **kw)
    reward = torch.zeros(n_envs, limit, **kw)
    terminated = torch.zeros(n_envs, limit, **kw)
    filled = torch.zeros(n_envs, limit, **kw)
    lengths = torch.full((n_envs,), limit, dtype=torch.int64)
    won = torch.zeros(n_envs, dtype=torch.bool)
    truncated = torch.zeros(n_envs, dtype=torch.bool)
    discarded = torch.zeros(n_envs, dtype=torch.bool)
    obs[:, 0], state[:, 0], avail[:, 0], alive[:, 0] = first.obs, first.state, first.avail_actions, first.alive
    active = torch.ones(n_envs, dtype=torch.bool)
    last_actions = torch.full((n_envs, n), -1, dtype=torch.int64)
    hidden = actor.initial_state(n_envs)
    t = 0
    for t in range(limit):
        step_actions, hidden = actor.act(obs[:, t], last_actions, avail[:, t], hidden, explore)
        step_actions = step_actions.cpu()
        res = env.step(step_actions)
        if res.discarded is not None:
            lost = active & res.discarded
            discarded |= lost
            active &= ~lost
        live = active.to(**kw)
        actions[:, t] = step_actions * active.unsqueeze(-1)
        reward[:, t] = res.reward * live
        terminated[:, t] = res.terminated * live
        filled[:, t] = live
        # Finished copies keep their last valid inputs so the policy never sees post-episode garbage.
        keep = live.view(-1, 1, 1)
        obs[:, t + 1] = torch.where(keep, res.obs, obs[:, t])
        state[:, t + 1] = torch.where(live.view(-1, 1), res.state, state[:, t])
        avail[:, t + 1] = torch.where(keep, res.avail_actions, avail[:, t])
        alive[:, t + 1] = torch.where(live.view(-1, 1), res.alive, alive[:, t])
        res_terminated, res_truncated, res_won = (x.cpu() for x in (res.terminated, res.truncated, res.battle_won))
        ended = active & (res_terminated | res_truncated)
        lengths[ended] = t + 1
        won |= ended & res_won
        truncated |= ended & res_truncated & ~res_terminated
        active &= ~ended
        last_actions = step_actions
        if not bool(active.any()):
            break
    truncated |= active  # copies that never reported an end ran into the limit
    keep = ~discarded
    # Zero everything past each episode's final observation.
    valid_obs = (torch.arange(limit + 1).unsqueeze(0) <= lengths.unsqueeze(1)).to(**kw)
    obs *= valid_obs.view(n_envs, limit + 1, 1, 1)
    state *= valid_obs.unsqueeze(-1)
    avail &= valid_obs.bool().view(n_envs, limit + 1, 1, 1)
    alive &= valid_obs.bool().unsqueeze(-1)
    batch = EpisodeBatch(obs, state, avail, actions, reward, terminated, filled, alive)
    if not bool(keep.all()):
        batch = EpisodeBatch(*(getattr(batch, f.name)[keep.to(**kw)] for f in fields(batch)))
    lengths = lengths[keep]
    max_t = int(lengths.max()) if lengths.numel() else 0
    return Rollout(
        batch.truncate(max_t), lengths, reward.sum(1).cpu()[keep], won[keep], truncated[keep], int(discarded.sum())
    )
