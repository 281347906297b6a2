"""A tiny deterministic :class:`SingleEnv` for the process-worker tests, importable in ``spawn``-ed children
(kept free of torch so workers start fast).

Episodes follow from the seed alone; faults (hang, crash, raise) are keyed by seed, so a worker restarted
with a new seed behaves normally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np

from acorm_pl.envs.base import EnvInfo, SingleEnv, SingleReset, SingleStep

N_AGENTS, N_ACTIONS, N_AVAIL, LIMIT = 2, 4, 3, 6
INFO = EnvInfo(n_agents=N_AGENTS, n_actions=N_ACTIONS, obs_dim=3, state_dim=3, episode_limit=LIMIT)


def episode_length(seed: int) -> int:
    """Seed ``s`` plays ``2 + s % 5`` steps: 6 (= the limit, truncated) when ``s % 5 == 4``."""
    return 2 + seed % 5


def expected_obs(seed: int, t: int) -> np.ndarray:
    """obs[a] = (seed, t, a)."""
    return np.array([[seed, t, a] for a in range(N_AGENTS)], dtype=np.float32)


def expected_state(seed: int, t: int, action_sum: int) -> np.ndarray:
    """state = (seed, t, sum of every action received this episode)."""
    return np.array([seed, t, action_sum], dtype=np.float32)


def expected_alive(t: int) -> np.ndarray:
    """Agent 0 lives all episode; agent 1 dies on step 3 (its available actions do not change: a toy)."""
    return np.array([True, t < 3])


class ToyEnv(SingleEnv):
    """Reward 1 per step; the episode ends after ``episode_length(seed)`` steps, terminated (won on even
    seeds) or truncated at the limit. Stepping a finished episode raises.

    Faults, each a ``{seed: step}`` map applied when step ``t`` (1-based) is requested in that seed's worker:
    ``hang`` sleeps forever, ``crash`` SIGKILLs the worker, ``fail`` raises ``ValueError``. ``sleeper``
    starts a ``sleep 60`` child that ``close()`` leaves running (an engine the worker fails to stop).
    """

    def __init__(
        self,
        seed: int,
        hang: dict[int, int] | None = None,
        crash: dict[int, int] | None = None,
        fail: dict[int, int] | None = None,
        sleeper: bool = False,
    ):
        self.episode_seed = seed
        self.length = episode_length(seed)
        self.faults = {
            name: (table or {}).get(seed) for name, table in [("hang", hang), ("crash", crash), ("fail", fail)]
        }
        self.t = 0
        self.action_sum = 0
        self.done = True
        self.sleeper = subprocess.Popen(["sleep", "60"]) if sleeper else None

    @property
    def info(self) -> EnvInfo:
        return INFO

    def seed(self, seed: int) -> None:
        """Later episodes play as for a copy built with ``seed`` (length, observations, win)."""
        self.episode_seed, self.length = seed, episode_length(seed)

    def _avail(self) -> np.ndarray:
        avail = np.zeros((N_AGENTS, N_ACTIONS), dtype=bool)
        avail[:, :N_AVAIL] = True
        return avail

    def reset(self) -> SingleReset:
        self.t, self.action_sum, self.done = 0, 0, False
        return SingleReset(expected_obs(self.episode_seed, 0), expected_state(self.episode_seed, 0, 0), self._avail(),
                           expected_alive(0))  # fmt: skip

    def step(self, actions: np.ndarray) -> SingleStep:
        if self.done:
            raise RuntimeError(f"seed {self.episode_seed}: stepped after the episode ended")
        t = self.t + 1
        if self.faults["hang"] == t:
            time.sleep(3600)
        if self.faults["crash"] == t:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.faults["fail"] == t:
            raise ValueError(f"toy failure of seed {self.episode_seed} at step {t}")
        self.t = t
        self.action_sum += int(np.asarray(actions).sum())
        end = t == self.length
        truncated = end and t >= LIMIT
        terminated = end and not truncated
        self.done = end
        return SingleStep(
            expected_obs(self.episode_seed, t),
            expected_state(self.episode_seed, t, self.action_sum),
            self._avail(),
            expected_alive(t),
            1.0,
            terminated,
            truncated,
            terminated and self.episode_seed % 2 == 0,
        )


def broken_factory(seed: int) -> SingleEnv:
    """A factory that cannot build its environment (as a bad map name would)."""
    raise ValueError(f"no such map for seed {seed}")
