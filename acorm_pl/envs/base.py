"""The one small interface every environment family implements (shaped after SMAC's API).

A ``VecEnv`` steps ``n_envs`` copies of one cooperative task in lockstep and hands back batched
torch tensors on the CPU. Families: SMAX (jaxmarl, vectorised in JAX), SMAC and GRF (one
:class:`SingleEnv` per worker process). The DataModule and every algorithm only ever see this interface.

What the environment reports and the algorithms never infer: which agents are alive (``alive``), whether
the episode ended and how (``terminated`` / ``truncated``), and whether the task was won (``battle_won``).
What a family's global state holds per agent (health, unit type) is decoded by the family itself
(:meth:`VecEnv.agent_features`), for analysis only.
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
class ResetResult:
    """The first observation of a fresh episode in every copy (CPU tensors).

    ``alive`` is the environment's own word on which agents are alive (SMAC / SMAX: the unit's health is
    above zero; GRF: always); a dead agent still gets an observation row and an available no-op.
    """

    obs: torch.Tensor  # [n_envs, n_agents, obs_dim] float32
    state: torch.Tensor  # [n_envs, state_dim] float32
    avail_actions: torch.Tensor  # [n_envs, n_agents, n_actions] bool
    alive: torch.Tensor  # [n_envs, n_agents] bool


@dataclass
class StepResult(ResetResult):
    """One lockstep transition of all ``n_envs`` copies (CPU tensors).

    obs / state / avail_actions / alive describe the state *after* the step. ``terminated`` is a true
    terminal (bootstrap with 0); ``truncated`` is the time limit (bootstrap from the next state).
    ``battle_won`` is the task's success flag (SMAC / SMAX: all enemies dead; GRF: scored).
    """

    reward: torch.Tensor  # [n_envs] float32
    terminated: torch.Tensor  # [n_envs] bool
    truncated: torch.Tensor  # [n_envs] bool
    battle_won: torch.Tensor  # [n_envs] bool
    # Copies whose in-flight episode was lost (a crashed or hung worker): the rollout drops that episode
    # whole. ``None`` means none was lost (vectorised families never lose one).
    discarded: torch.Tensor | None = None  # [n_envs] bool


@dataclass
class AgentFeatures:
    """Per-agent features read from global states [..., state_dim], for analysis (role figures)."""

    health: torch.Tensor  # [..., n_agents] float32, fraction of the unit's maximum (0 when dead)
    unit_type: torch.Tensor  # [..., n_agents] int64, index into unit_type_names (reads 0 for a dead unit)
    unit_type_names: tuple[str, ...]

    def type_names(self, *index: int) -> list[str]:
        """The unit type name of every agent at ``index`` of the leading dimensions, e.g. (episode, step)."""
        return [self.unit_type_names[u] for u in self.unit_type[index].tolist()]


@dataclass(frozen=True)
class UnitStateLayout:
    """Where a family's global state keeps each agent's health and unit type: the agents' rows of ``stride``
    floats come first, each with its health fraction at ``health_at`` and, when there are several
    ``type_names``, their one-hot at ``types_at`` (a single type has no bits). A dead unit's row is zeros."""

    n_agents: int
    stride: int
    health_at: int
    types_at: int
    type_names: tuple[str, ...]

    def decode(self, state: torch.Tensor) -> AgentFeatures:
        """Health and unit type of every agent in ``state`` [..., state_dim]."""
        import torch

        rows = state[..., : self.n_agents * self.stride].unflatten(-1, (self.n_agents, self.stride))
        n_types = len(self.type_names)
        if n_types > 1:
            unit_type = rows[..., self.types_at : self.types_at + n_types].argmax(-1)
        else:
            unit_type = torch.zeros(rows.shape[:-1], dtype=torch.int64, device=rows.device)
        return AgentFeatures(rows[..., self.health_at].float().clone(), unit_type, self.type_names)


def require_seeds(seeds: Sequence[int], family: str) -> list[int]:
    """``seeds`` as ints, one per copy; a one-line :class:`EnvConfigError` when there is none."""
    if len(seeds) < 1:
        raise EnvConfigError(f"{family} needs at least one seed (one per copy), got none")
    return [int(s) for s in seeds]


class VecEnv(abc.ABC):
    """``n_envs`` copies of one task stepped together.

    Contract: ``reset()`` starts a new episode in every copy; ``step(actions)`` advances every copy
    by one step. After a copy reports ``terminated | truncated`` its later outputs are meaningless
    until the next ``reset()`` (the rollout code masks them out). ``actions`` are integer indices
    [n_envs, n_agents] that must be available.
    """

    n_envs: int
    restarts: int = 0  # worker processes restarted after a crash or hang (process-backed families)
    state_layout: UnitStateLayout | None = None  # set by families whose state holds health and unit types

    @property
    @abc.abstractmethod
    def info(self) -> EnvInfo: ...

    @abc.abstractmethod
    def reset(self) -> ResetResult: ...

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult: ...

    def agent_features(self, state: torch.Tensor) -> AgentFeatures | None:
        """Every agent's health and unit type decoded from global states [..., state_dim]; None where the
        family's state does not hold them (GRF, or a family that sets no :attr:`state_layout`)."""
        return None if self.state_layout is None else self.state_layout.decode(state)

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
class SingleReset:
    """The first observation of an episode of one environment (numpy, as a game engine hands it over)."""

    obs: np.ndarray  # [n_agents, obs_dim] float32
    state: np.ndarray  # [state_dim] float32
    avail_actions: np.ndarray  # [n_agents, n_actions] bool
    alive: np.ndarray  # [n_agents] bool


@dataclass
class SingleStep(SingleReset):
    """One transition of one environment: the observation after it and its outcome."""

    reward: float
    terminated: bool
    truncated: bool
    battle_won: bool


class SingleEnv(abc.ABC):
    """One copy of a task that lives in its own worker process (SMAC, GRF): the unit that
    :class:`acorm_pl.envs.workers.ProcessVecEnv` replicates, steps in lockstep and restarts on failure.

    Built inside the worker from a picklable factory, so it may hold a game binary or sockets. ``step`` is
    never called after the episode ended (``terminated`` or ``truncated``) until the next ``reset``: the
    worker pool leaves finished copies alone, so an adapter needs no end-of-episode handling of its own.
    """

    @property
    @abc.abstractmethod
    def info(self) -> EnvInfo: ...

    @abc.abstractmethod
    def reset(self) -> SingleReset:
        """Start an episode."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> SingleStep:
        """Advance the running episode by one step with integer ``actions`` [n_agents]."""

    def save_replay(self) -> None:
        """Write a replay of the episodes so far, where the engine can (SMAC)."""

    def seed(self, seed: int) -> None:
        """Draw the following episodes from ``seed``. Engines that fix their seed when the game launches
        (StarCraft II) ignore it."""

    def close(self) -> None:
        """Stop the engine and any process it started."""
