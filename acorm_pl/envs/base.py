"""The one small interface every environment family implements (shaped after SMAC's API).

A ``VecEnv`` steps ``n_envs`` copies of one cooperative task in lockstep and hands back batched
torch tensors on the CPU. Families: SMAX (jaxmarl, vectorised in JAX), later SMAC and GRF
(process workers). The DataModule and every algorithm only ever see this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # worker processes import this module: keep torch out of them (seconds per worker)
    import numpy as np
    import torch


class EnvConfigError(ValueError):
    """A bad environment name or option; its message is one line naming the value and what is allowed."""


@dataclass(frozen=True)
class EnvInfo:
    """Static facts about a task, as SMAC's ``get_env_info()``."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class StepResult:
    """One lockstep transition of all ``n_envs`` copies (CPU tensors).

    obs / state / avail_actions describe the state *after* the step. ``terminated`` is a true
    terminal (bootstrap with 0); ``truncated`` is the time limit (bootstrap from the next state).
    ``battle_won`` is the task's success flag (SMAC: all enemies dead; GRF: scored).
    """

    obs: torch.Tensor  # [n_envs, n_agents, obs_dim] float32
    state: torch.Tensor  # [n_envs, state_dim] float32
    avail_actions: torch.Tensor  # [n_envs, n_agents, n_actions] bool
    reward: torch.Tensor  # [n_envs] float32
    terminated: torch.Tensor  # [n_envs] bool
    truncated: torch.Tensor  # [n_envs] bool
    battle_won: torch.Tensor  # [n_envs] bool
    # Copies whose in-flight episode was lost (a crashed or hung worker): the rollout drops that episode
    # whole. ``None`` means none was lost (vectorised families never lose one).
    discarded: torch.Tensor | None = None  # [n_envs] bool


@dataclass
class ResetResult:
    """The first observation of a fresh episode in every copy (CPU tensors)."""

    obs: torch.Tensor  # [n_envs, n_agents, obs_dim] float32
    state: torch.Tensor  # [n_envs, state_dim] float32
    avail_actions: torch.Tensor  # [n_envs, n_agents, n_actions] bool


class VecEnv(abc.ABC):
    """``n_envs`` copies of one task stepped together.

    Contract: ``reset()`` starts a new episode in every copy; ``step(actions)`` advances every copy
    by one step. After a copy reports ``terminated | truncated`` its later outputs are meaningless
    until the next ``reset()`` (the rollout code masks them out). ``actions`` are integer indices
    [n_envs, n_agents] that must be available.
    """

    n_envs: int
    restarts: int = 0  # worker processes restarted after a crash or hang (process-backed families)

    @property
    @abc.abstractmethod
    def info(self) -> EnvInfo: ...

    @abc.abstractmethod
    def reset(self) -> ResetResult: ...

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult: ...

    def close(self) -> None:
        """Release processes, game binaries or device memory held by the environments."""

    def save_replay(self) -> None:
        """Write replays of the episodes played so far, where the family supports it (SMAC)."""

    @abc.abstractmethod
    def reseed(self, seeds: Sequence[int]) -> None:
        """Draw the following episodes of copy ``i`` from ``seeds[i]``, as a freshly built env would (periodic
        evaluation re-seeds before each round so its episodes do not depend on the evaluations before it)."""

    def state_dict(self) -> dict[str, Any]:
        """RNG state of the copies, so a resumed run draws the same episodes."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SingleStep:
    """One transition of one environment (numpy, as a game engine hands it over)."""

    obs: np.ndarray  # [n_agents, obs_dim] float32
    state: np.ndarray  # [state_dim] float32
    avail_actions: np.ndarray  # [n_agents, n_actions] bool
    reward: float
    terminated: bool
    truncated: bool
    battle_won: bool


class SingleEnv(abc.ABC):
    """One copy of a task that lives in its own worker process (SMAC, GRF): the unit that
    :class:`acorm_pl.envs.workers.ProcessVecEnv` replicates, steps in lockstep and restarts on failure.

    Built inside the worker from a picklable factory, so it may hold a game binary or sockets.
    """

    @property
    @abc.abstractmethod
    def info(self) -> EnvInfo: ...

    @abc.abstractmethod
    def reset(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start an episode: (obs [n_agents, obs_dim], state [state_dim], avail_actions [n_agents, n_actions])."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> SingleStep:
        """Advance by one step with integer ``actions`` [n_agents]."""

    def save_replay(self) -> None:
        """Write a replay of the episodes so far, where the engine can (SMAC)."""

    def seed(self, seed: int) -> None:
        """Draw the following episodes from ``seed``. Engines that fix their seed when the game launches
        (StarCraft II) ignore it."""

    def close(self) -> None:
        """Stop the engine and any process it started."""
