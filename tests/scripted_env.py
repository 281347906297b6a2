"""A deterministic VecEnv with known episode outcomes, for exact checks of rollout bookkeeping."""

from __future__ import annotations

import torch

from acorm_pl.envs.base import EnvInfo, ResetResult, StepResult, VecEnv


class ScriptedVecEnv(VecEnv):
    """Copy i runs ``lengths[i]`` steps, then ends terminated (or truncated if ``lengths[i] == limit``).

    obs[e, a, 0] = t (the step count), obs[e, a, 1] = e; state[e, 0] = t; reward = 1 per step; env e is
    won when ``won[e]``; only actions < ``n_avail`` are available. The last agent of copy e dies at step
    ``deaths[e]`` (None: never; the default, every agent lives); a dead agent can only take action 0.
    """

    def __init__(self, lengths: list[int], won: list[bool], limit: int = 6, n_agents: int = 2, n_actions: int = 4,
                 n_avail: int = 3, deaths: list[int | None] | None = None):
        self.n_envs = len(lengths)
        self.lengths = torch.tensor(lengths)
        self.won = torch.tensor(won)
        self._info = EnvInfo(n_agents=n_agents, n_actions=n_actions, obs_dim=3, state_dim=2, episode_limit=limit)
        self.n_avail = n_avail
        never = limit + 1
        self.deaths = torch.tensor([never if d is None else d for d in deaths or [None] * self.n_envs])
        self.t = torch.zeros(self.n_envs, dtype=torch.long)
        self.actions_seen: list[torch.Tensor] = []

    @property
    def info(self) -> EnvInfo:
        return self._info

    def _obs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, i = self._info.n_agents, self._info
        obs = torch.zeros(self.n_envs, n, i.obs_dim)
        obs[..., 0] = self.t.float().unsqueeze(1)
        obs[..., 1] = torch.arange(self.n_envs).float().unsqueeze(1)
        state = torch.stack([self.t.float(), torch.ones(self.n_envs)], dim=1)
        alive = torch.ones(self.n_envs, n, dtype=torch.bool)
        alive[:, -1] = self.t < self.deaths
        avail = torch.zeros(self.n_envs, n, i.n_actions, dtype=torch.bool)
        avail[..., : self.n_avail] = alive.unsqueeze(-1)
        avail[..., 0] = True
        return obs, state, avail, alive

    def reseed(self, seeds) -> None:
        """Scripted episodes do not depend on a seed."""

    def reset(self) -> ResetResult:
        self.t.zero_()
        self.actions_seen.clear()
        return ResetResult(*self._obs())

    def step(self, actions: torch.Tensor) -> StepResult:
        self.actions_seen.append(actions.clone())
        self.t += 1
        end = self.t == self.lengths
        at_limit = self.t >= self._info.episode_limit
        terminated = end & ~at_limit
        truncated = end & at_limit
        return StepResult(*self._obs(), torch.ones(self.n_envs), terminated, truncated, terminated & self.won)
