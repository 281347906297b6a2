"""A test double of oxwhirl/smac's ``StarCraft2Env`` (no StarCraft II) and a way to install it as ``smac``.

:class:`FakeStarCraft2Env` implements exactly the part of the real API that ``acorm_pl.envs.smac`` uses,
with the real return types and sizes (see that module's docstring for the API as read in SMAC's source):

* constructor keyword arguments as StarCraft2Env's (an unknown one is a ``TypeError``, an unknown map a
  ``KeyError`` from the registry); the game is "launched" by the first ``reset()``;
* ``get_env_info()`` with obs/state sizes computed by SMAC's formulas from the map parameters
  (MMM2: 10 agents, 18 actions, obs 176, state 322, limit 180);
* ``get_obs()`` list of float32 arrays, ``get_state()`` float32 array in SMAC's layout (ally rows
  ``[health / health_max, cooldown, x, y, (shield), unit-type one-hot]``, zeros when dead, then the enemies'
  rows and the last actions), ``get_avail_actions()`` lists of 0/1 ints (a dead agent only has the no-op 0,
  a live one never has it), ``get_unit_by_id(i).health`` (0 once dead), and the attributes
  ``shield_bits_ally``, ``unit_type_bits``, ``map_type`` and ``obs_instead_of_state``;
* ``step(actions)`` -> ``(reward, terminated, info)`` with ``info["battle_won"]`` and, only when built
  with ``continuing_episode=True``, ``info["episode_limit"]`` on a time-out; an unavailable action fails
  an assertion as in SMAC, and so does a step after the episode ended (SMAC would act in a finished game);
* ``save_replay()`` (fails before the first reset, as SMAC's does) and ``close()``.

Scripted dynamics, deterministic per seed: the last agent dies on the first step; with an even seed
every enemy dies on step ``2 + seed % 3`` (a win), with an odd seed nobody else dies and the episode
times out at the episode limit. Reward is ``0.1 * t`` on step ``t`` plus 2 on the winning step.
obs[i] = [t / limit, i, 1, ...] for a live agent i (zeros when dead). A live ally's health fraction is
``1 - t / (2 * limit)`` (of 45 hp), its cooldown column ``t / limit``, its unit type
``i % unit_type_bits``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# A subset of smac's map registry (values as in smac/env/starcraft2/maps/smac_maps.py) plus a tiny map.
_KEYS = ("n_agents", "n_enemies", "limit", "a_race", "b_race", "unit_type_bits", "map_type")
_ROWS = {
    "3m": (3, 3, 60, "T", "T", 0, "marines"),
    "5m_vs_6m": (5, 6, 70, "T", "T", 0, "marines"),
    "MMM2": (10, 12, 180, "T", "T", 3, "MMM"),
    "2s3z": (5, 5, 120, "P", "P", 2, "stalkers_and_zealots"),
    "3s5z": (8, 8, 150, "P", "P", 2, "stalkers_and_zealots"),
    "3s5z_vs_3s6z": (8, 9, 170, "P", "P", 2, "stalkers_and_zealots"),
    "corridor": (6, 24, 400, "P", "Z", 0, "zealots"),
    "fake_tiny": (2, 2, 6, "T", "T", 0, "marines"),
}
MAP_REGISTRY: dict[str, dict[str, Any]] = {name: dict(zip(_KEYS, row, strict=True)) for name, row in _ROWS.items()}

# StarCraft2Env.__init__'s keyword arguments and defaults (smac/env/starcraft2/starcraft2.py).
_DEFAULTS: dict[str, Any] = {
    "step_mul": None,
    "move_amount": 2,
    "difficulty": "7",
    "game_version": None,
    "seed": None,
    "continuing_episode": False,
    "obs_all_health": True,
    "obs_own_health": True,
    "obs_last_action": False,
    "obs_pathing_grid": False,
    "obs_terrain_height": False,
    "obs_instead_of_state": False,
    "state_last_action": True,
    "reward_sparse": False,
    "reward_only_positive": True,
    "reward_death_value": 10,
    "reward_win": 200,
    "reward_defeat": 0,
    "reward_negative_scale": 0.5,
    "reward_scale": True,
    "reward_scale_rate": 20,
    "replay_dir": "",
    "replay_prefix": "",
    "window_size_x": 1920,
    "window_size_y": 1200,
    "debug": False,
}
N_ACTIONS_NO_ATTACK = 6  # no-op, stop, 4 moves


def get_smac_map_registry() -> dict[str, dict[str, Any]]:
    """As ``smac_maps.get_smac_map_registry()``."""
    return MAP_REGISTRY


def get_map_params(map_name: str) -> dict[str, Any]:
    """As ``smac.env.starcraft2.maps.get_map_params``: a KeyError for an unknown map."""
    return MAP_REGISTRY[map_name]


class FakeStarCraft2Env:
    """StarCraft2Env's API with scripted, seed-determined episodes (see the module docstring)."""

    def __init__(self, map_name: str = "8m", **kwargs: Any) -> None:
        unknown = set(kwargs) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        self.kwargs = {**_DEFAULTS, **kwargs}
        self.map_name = map_name
        params = get_map_params(map_name)
        self.n_agents, self.n_enemies, self.episode_limit = params["n_agents"], params["n_enemies"], params["limit"]
        self.n_actions = N_ACTIONS_NO_ATTACK + self.n_enemies
        self._params = params
        # StarCraft2Env's attributes read by the adapter (set from the map's parameters in the real one too).
        self.shield_bits_ally = int(params["a_race"] == "P")
        self.unit_type_bits = params["unit_type_bits"]
        self.map_type = params["map_type"]
        self.obs_instead_of_state = self.kwargs["obs_instead_of_state"]
        self.ended = False
        self.seed = self.kwargs["seed"]
        self.launched = False
        self.replays_saved = 0
        self.closed = 0
        self.actions_received: list[list[Any]] = []
        self.t = 0
        self.ally_alive = np.ones(self.n_agents, dtype=bool)
        self.enemies_alive = np.ones(self.n_enemies, dtype=bool)

    # ---- sizes, by SMAC's get_obs_size / get_state_size -------------------------------------------------
    def get_obs_size(self) -> int:
        """Move features + enemy features + ally features + own features, as SMAC counts them."""
        k = self.kwargs
        bits = self._params["unit_type_bits"]
        shield_a, shield_e = int(self._params["a_race"] == "P"), int(self._params["b_race"] == "P")
        nf_al = nf_en = 4 + bits
        if k["obs_all_health"]:
            nf_al += 1 + shield_a
            nf_en += 1 + shield_e
        own = bits + (1 + shield_a if (k["obs_own_health"] or k["obs_all_health"]) else 0)
        if k["obs_last_action"]:
            nf_al += self.n_actions
        move = 4 + 8 * k["obs_pathing_grid"] + 9 * k["obs_terrain_height"]
        return move + self.n_enemies * nf_en + (self.n_agents - 1) * nf_al + own

    def get_state_size(self) -> int:
        """Ally and enemy unit features (+ every agent's last action), as SMAC counts them."""
        if self.kwargs["obs_instead_of_state"]:
            return self.get_obs_size() * self.n_agents
        bits = self._params["unit_type_bits"]
        shield_a, shield_e = self.shield_bits_ally, int(self._params["b_race"] == "P")
        size = self.n_agents * (4 + shield_a + bits) + self.n_enemies * (3 + shield_e + bits)
        return size + (self.n_agents * self.n_actions if self.kwargs["state_last_action"] else 0)

    def get_env_info(self) -> dict[str, int]:
        """As MultiAgentEnv.get_env_info: state_shape, obs_shape, n_actions, n_agents, episode_limit."""
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    # ---- episodes --------------------------------------------------------------------------------------
    def _win_step(self) -> int | None:
        seed = self.seed or 0
        return 2 + seed % 3 if seed % 2 == 0 else None

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Start an episode (launches the "game" the first time); returns (obs, state) as newer SMAC does."""
        self.launched = True
        self.t = 0
        self.ended = False
        self.ally_alive[:] = True
        self.enemies_alive[:] = True
        return self.get_obs(), self.get_state()

    def get_obs(self) -> list[np.ndarray]:
        """One float32 array [obs_shape] per agent; all zeros for a dead agent."""
        size = self.get_obs_size()
        out = []
        for i in range(self.n_agents):
            o = np.zeros(size, dtype=np.float32)
            if self.ally_alive[i]:
                o[:3] = (self.t / self.episode_limit, i, 1.0)
            out.append(o)
        return out

    def get_unit_by_id(self, agent_id: int) -> types.SimpleNamespace:
        """Agent ``agent_id``'s unit: its ``health`` (0 once dead) and ``health_max``."""
        health_max = 45.0
        return types.SimpleNamespace(health=self._health_fraction(agent_id) * health_max, health_max=health_max)

    def _health_fraction(self, agent_id: int) -> float:
        return (1.0 - 0.5 * self.t / self.episode_limit) if self.ally_alive[agent_id] else 0.0

    def get_state(self) -> np.ndarray:
        """A float32 array [state_shape] in SMAC's layout (ally rows first)."""
        if self.obs_instead_of_state:
            return np.concatenate(self.get_obs())
        s = np.zeros(self.get_state_size(), dtype=np.float32)
        stride = 4 + self.shield_bits_ally + self.unit_type_bits
        for i in range(self.n_agents):
            if self.ally_alive[i]:
                row = s[i * stride : (i + 1) * stride]
                row[:4] = (self._health_fraction(i), self.t / self.episode_limit, 0.1 * i, 0.0)
                if self.unit_type_bits:
                    row[4 + self.shield_bits_ally + i % self.unit_type_bits] = 1.0
        return s

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        """0/1 per action: a dead agent only no-op; a live one stop, moves and attacks on live enemies."""
        if not self.ally_alive[agent_id]:
            return [1] + [0] * (self.n_actions - 1)
        return [0] + [1] * (N_ACTIONS_NO_ATTACK - 1) + [int(a) for a in self.enemies_alive]

    def get_avail_actions(self) -> list[list[int]]:
        """One list of 0/1 ints per agent."""
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def step(self, actions: list[Any]) -> tuple[float, bool, dict[str, bool]]:
        """One step: (reward, terminated, info) with info["battle_won"] (and info["episode_limit"])."""
        assert self.launched, "reset() launches the game"
        assert not self.ended, "stepped after the episode ended"
        self.actions_received.append(list(actions))
        for i, a in enumerate(actions):
            assert self.get_avail_agent_actions(i)[int(a)] == 1, f"Agent {i} cannot perform action {a}"
        self.t += 1
        self.ally_alive[-1] = False
        reward = 0.1 * self.t
        info = {"battle_won": False}
        if self._win_step() == self.t:
            self.enemies_alive[:] = False
            info["battle_won"] = self.ended = True
            return reward + 2.0, True, info
        if self.t >= self.episode_limit:
            if self.kwargs["continuing_episode"]:
                info["episode_limit"] = True
            self.ended = True
            return reward, True, info
        return reward, False, info

    def save_replay(self) -> None:
        """Counts replays; like SMAC's, fails before the game was launched."""
        if not self.launched:
            raise AttributeError("'NoneType' object has no attribute 'save_replay'")
        self.replays_saved += 1

    def close(self) -> None:
        """Counts calls."""
        self.closed += 1


class LosingConnectionEnv(FakeStarCraft2Env):
    """Behaves like SMAC after a lost game connection on step 2: relaunches and returns ``(0, True, {})``."""

    def step(self, actions: list[Any]) -> tuple[float, bool, dict[str, bool]]:
        if self.t == 1:
            self.t = 0
            return 0, True, {}
        return super().step(actions)


def make_sc2_install(root: Path, maps: list[str] | None = None, build: int = 75689) -> Path:
    """An empty StarCraft II folder layout as pysc2/SMAC expect it: Versions/Base<build>, Maps/SMAC_Maps."""
    (root / "Versions" / f"Base{build}").mkdir(parents=True, exist_ok=True)
    (root / "Maps" / "SMAC_Maps").mkdir(parents=True, exist_ok=True)
    for name in MAP_REGISTRY if maps is None else maps:
        (root / "Maps" / "SMAC_Maps" / f"{name}.SC2Map").write_bytes(b"")
    return root


def install_fake_smac(monkeypatch: pytest.MonkeyPatch, sc2_root: Path) -> Path:
    """Make ``import smac.env`` give :class:`FakeStarCraft2Env` (with the tiny map registry) and point
    ``SC2PATH`` at an empty StarCraft II layout under ``sc2_root``; undone by ``monkeypatch``."""
    smac = types.ModuleType("smac")
    smac.__path__ = []  # a package
    env = types.ModuleType("smac.env")
    env.__path__ = []
    env.StarCraft2Env = FakeStarCraft2Env
    sc2 = types.ModuleType("smac.env.starcraft2")
    sc2.__path__ = []
    maps = types.ModuleType("smac.env.starcraft2.maps")
    maps.__path__ = []
    maps.get_map_params = get_map_params
    smac_maps = types.ModuleType("smac.env.starcraft2.maps.smac_maps")
    smac_maps.map_param_registry = MAP_REGISTRY
    smac_maps.get_smac_map_registry = get_smac_map_registry
    smac.env, env.starcraft2, sc2.maps, maps.smac_maps = env, sc2, maps, smac_maps
    for module in (smac, env, sc2, maps, smac_maps):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("SC2PATH", str(make_sc2_install(sc2_root)))
    return sc2_root
