"""SMAX: jaxmarl's JAX re-implementation of the SMAC micromanagement tasks, as a :class:`VecEnv`.

All ``n_envs`` copies live in one batched JAX state; reset and step are single ``jax.jit``-compiled
``jax.vmap``-ed functions (no Python loop over copies or agents), and their outputs reach torch
zero-copy through DLPack. Allies are the learning agents; enemies follow jaxmarl's heuristic policy
(``enemy_attack_mode``: ``"closest"`` or ``"random"`` target among those in range).

Maps: every name in jaxmarl's ``MAP_NAME_TO_SCENARIO`` (see :func:`available_maps`).

Actions per ally: ``0`` north, ``1`` east, ``2`` south, ``3`` west, ``4`` stop, ``5 + j`` attack
enemy ``j``. Stop is always available; a dead ally can only stop; attacking ``j`` is available only
while both are alive and ``j`` is inside the ally's attack range.

Episode limits (``episode_limit=None``) are SMAC's: 3m 60, 8m 120, 25m 150, 2s3z 120, 3s5z 150,
5m_vs_6m 70, 10m_vs_11m 150, 27m_vs_30m 180, 3s5z_vs_3s6z 170, 3s_vs_5z 250, 6h_vs_8z 150, and 200
for the smacv2_{5,10,20}_units maps. ``terminated`` means one side is wiped out; ``truncated`` means
the limit was reached first; ``battle_won`` means every enemy is dead and at least one ally lives.

Rewards (one shared team reward per copy):

* ``"smac"`` (default) reproduces SMAC's default shaped reward (``reward_only_positive=True``, death
  value 10, win bonus 200, scaled to 20): per step
  ``(enemy health lost + 10 * enemies killed + 200 * [won this step]) / max_reward * 20`` with
  ``max_reward = 10 * n_enemies + 200 + sum of enemy max health``; a flawless win sums to exactly 20.
* ``"smac_negative"``: SMAC's reward with ``reward_only_positive=False``: the same, minus half
  (``reward_negative_scale=0.5``) of the allies' health lost and of 10 per ally killed.
* ``"smax"``: jaxmarl's own ally reward, enemy health lost as a fraction of max health averaged over
  enemies, plus 1 on a win; a flawless win sums to 2.

How SMAX differs from SMAC: no medivacs (so no MMM/MMM2), no shields, no terrain, cliffs or corridor
(maps are an open 32x32 square whose walls kill units touching them), simplified unit stats and
physics, the smacv2_* maps draw unit types and start positions per episode, damage is applied
simultaneously so both sides can die in the same step (a draw: terminated, not won), and the enemy is
jaxmarl's scripted heuristic rather than SC2's built-in AI.

State: jaxmarl's world state (per unit: health fraction, x, y, weapon cooldown, unit-type one-hot; then
every unit's team and unit-type index) rescaled like SMAC's: positions centred on the map and divided
by half its size (so in [-1, 1]), cooldowns as a fraction of the unit type's full cooldown, type
indices divided by the largest index; dead units are all zeros. Observations are jaxmarl's as they are
(already within [-1, 1]). ``alive`` is jaxmarl's own per-unit flag of the allies; the allies' health
fractions and unit types are decoded from the state by :meth:`SMAXVecEnv.agent_features`.

Importing this module sets JAX defaults: no GPU memory pre-allocation, quiet XLA logs, and the CPU
backend unless ``JAX_PLATFORMS`` is already set. jax itself is only imported on first use.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from acorm_pl.envs.base import EnvConfigError, EnvInfo, ResetResult, StepResult, UnitStateLayout, VecEnv, require_seeds

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The torch model may own the GPU, and jaxmarl's pip install is the CPU jaxlib anyway.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)

REWARD_MODES = ("smac", "smac_negative", "smax")
ENEMY_ATTACK_MODES = ("closest", "random")
N_MOVE_ACTIONS = 5  # north, east, south, west, stop
STOP_ACTION = 4

# SMAC's per-map episode limits; the smacv2_* values follow SMACv2's default configs of the time.
DEFAULT_EPISODE_LIMITS: dict[str, int] = {
    "3m": 60,
    "8m": 120,
    "25m": 150,
    "2s3z": 120,
    "3s5z": 150,
    "5m_vs_6m": 70,
    "10m_vs_11m": 150,
    "27m_vs_30m": 180,
    "3s5z_vs_3s6z": 170,
    "3s_vs_5z": 250,
    "6h_vs_8z": 150,
    "smacv2_5_units": 200,
    "smacv2_10_units": 200,
    "smacv2_20_units": 200,
}

# SMAC's reward constants (StarCraft2Env defaults).
_DEATH_VALUE = 10.0
_WIN_VALUE = 200.0
_SCALE_RATE = 20.0
_NEGATIVE_SCALE = 0.5  # reward_negative_scale, used when reward_only_positive=False


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Swallow jaxmarl's import banner and undo its resetting of sys.stdout/sys.stderr."""
    # jaxmarl 0.2.0 prints a banner about optional submodules, and its mabrax module sets
    # sys.stdout/stderr back to sys.__stdout__/__stderr__ (which would break pytest's or a logger's
    # capture), so the original streams are restored afterwards.
    saved = sys.stdout, sys.stderr, sys.__stdout__
    sys.stdout = sys.__stdout__ = io.StringIO()
    try:
        yield
    finally:
        sys.stdout, sys.stderr, sys.__stdout__ = saved


def _scenarios() -> dict[str, Any]:
    """jaxmarl's map table (name -> Scenario)."""
    with _quiet_import():
        from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO
    return MAP_NAME_TO_SCENARIO


def available_maps() -> list[str]:
    """Names of the SMAX maps this jaxmarl ships, sorted."""
    return sorted(_scenarios())


def _check_config(map_name: str, episode_limit: int | None, reward: str, enemy_attack_mode: str) -> int:
    """Validate the options; returns the episode limit to use."""
    maps = available_maps()
    if map_name not in maps:
        raise EnvConfigError(f"unknown SMAX map {map_name!r}; available: {', '.join(maps)}")
    if reward not in REWARD_MODES:
        raise EnvConfigError(f"unknown SMAX reward {reward!r}; available: {', '.join(REWARD_MODES)}")
    if enemy_attack_mode not in ENEMY_ATTACK_MODES:
        raise EnvConfigError(
            f"unknown SMAX enemy_attack_mode {enemy_attack_mode!r}; available: {', '.join(ENEMY_ATTACK_MODES)}"
        )
    if episode_limit is None:
        if map_name not in DEFAULT_EPISODE_LIMITS:
            raise EnvConfigError(f"SMAX map {map_name!r} has no default episode limit; pass episode_limit")
        return DEFAULT_EPISODE_LIMITS[map_name]
    if isinstance(episode_limit, bool) or not isinstance(episode_limit, (int, np.integer)) or episode_limit <= 0:
        raise EnvConfigError(f"SMAX episode_limit must be a positive integer, got {episode_limit!r}")
    return int(episode_limit)


class _Compiled:
    """One configured jaxmarl env with its batched, jitted reset and step (compiled per n_envs)."""

    def __init__(self, map_name: str, episode_limit: int, reward: str, enemy_attack_mode: str) -> None:
        import jax
        import jax.numpy as jnp

        with _quiet_import():
            from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

        scenario = map_name_to_scenario(map_name)
        env = HeuristicEnemySMAX(scenario=scenario, max_steps=episode_limit, attack_mode=enemy_attack_mode)
        self.env = env
        n_allies, n_enemies = env.num_allies, env.num_enemies
        self.info = EnvInfo(
            n_agents=n_allies,
            n_actions=n_enemies + N_MOVE_ACTIONS,
            obs_dim=int(env.obs_size),
            state_dim=int(env.state_size),
            episode_limit=episode_limit,
        )
        agents = env.agents  # the allies only

        n_units, n_feat = n_allies + n_enemies, len(env.own_features)
        half_map = jnp.array([env.map_width / 2, env.map_height / 2], dtype=jnp.float32)
        max_type = max(len(env.unit_type_names) - 1, 1)
        # Per unit [health fraction, x, y, cooldown, unit-type one-hot], allies first (jaxmarl's own_features).
        self.layout = UnitStateLayout(n_allies, n_feat, health_at=0, types_at=4, type_names=tuple(env.unit_type_names))

        def normalised_state(world_state: jax.Array, st: Any) -> jax.Array:
            # jaxmarl's world state: per unit [health frac, x, y, cooldown, type one-hot], then teams and
            # raw type indices. Scale it like SMAC's state (positions of up to 32 would swamp the mixer).
            units = world_state[: n_units * n_feat].reshape(n_units, n_feat)
            alive = st.state.unit_alive[:, None]
            pos = jnp.where(alive, (units[:, 1:3] - half_map) / half_map, 0.0)
            # SMAX keeps counting a ready weapon's cooldown below zero: clip to the fraction still to wait.
            cooldown = jnp.clip(units[:, 3:4] / env.unit_type_weapon_cooldowns[st.state.unit_types][:, None], 0.0, 1.0)
            units = jnp.concatenate([units[:, :1], pos, cooldown, units[:, 4:]], axis=1)
            teams = world_state[n_units * n_feat : n_units * (n_feat + 1)]
            types = world_state[n_units * (n_feat + 1) :] / max_type
            return jnp.concatenate([units.reshape(-1), teams, types]).astype(jnp.float32)

        def observe(obs: dict, st: Any) -> tuple:
            avail = env.get_avail_actions(st)
            return (
                jnp.stack([obs[a] for a in agents]).astype(jnp.float32),
                normalised_state(obs["world_state"], st),
                jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
                st.state.unit_alive[:n_allies],
            )

        def reset_one(key: jax.Array) -> tuple:
            key, sub = jax.random.split(key)
            obs, st = env.reset(sub)
            # The heuristic enemy's initial state holds weakly-typed scalars that step returns strongly
            # typed; without this the second step would compile step a second time.
            st = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), st)
            return (key, st, *observe(obs, st))

        def step_one(key: jax.Array, st: Any, actions: jax.Array) -> tuple:
            key, sub = jax.random.split(key)
            before = st.state
            obs, st, rewards, _, _ = env.step_env(sub, st, {a: actions[i] for i, a in enumerate(agents)})
            after = st.state
            enemies_alive_before = before.unit_alive[n_allies:]
            enemies_alive = after.unit_alive[n_allies:]
            any_ally = jnp.any(after.unit_alive[:n_allies])
            any_enemy = jnp.any(enemies_alive)
            terminated = ~any_ally | ~any_enemy
            truncated = (after.step >= episode_limit) & ~terminated
            won = any_ally & ~any_enemy
            if reward in ("smac", "smac_negative"):
                lost = jnp.maximum(before.unit_health - after.unit_health, 0.0)  # health lost per unit
                died = before.unit_alive & ~after.unit_alive
                gain = jnp.sum(lost[n_allies:]) + _DEATH_VALUE * jnp.sum(died[n_allies:])
                if reward == "smac_negative":  # SMAC's reward_only_positive=False
                    gain -= _NEGATIVE_SCALE * (jnp.sum(lost[:n_allies]) + _DEATH_VALUE * jnp.sum(died[:n_allies]))
                # Only the step on which the last enemy falls earns the bonus (SMAC's win_counted).
                won_now = won & jnp.any(enemies_alive_before)
                max_health = jnp.sum(env.unit_type_health[before.unit_types[n_allies:]])
                max_reward = _DEATH_VALUE * n_enemies + _WIN_VALUE + max_health
                r = (gain + _WIN_VALUE * won_now) / max_reward * _SCALE_RATE
            else:
                r = rewards[agents[0]]
            return (key, st, *observe(obs, st), r.astype(jnp.float32), terminated, truncated, won)

        # Past (key, state) their outputs are the fields of ResetResult / StepResult, in order.
        self.reset: Callable[..., tuple] = jax.jit(jax.vmap(reset_one))
        self.step: Callable[..., tuple] = jax.jit(jax.vmap(step_one), donate_argnums=(0, 1))


@functools.lru_cache(maxsize=16)
def _compiled(map_name: str, episode_limit: int, reward: str, enemy_attack_mode: str) -> _Compiled:
    # Shared across instances so that copies with the same configuration and n_envs compile once.
    return _Compiled(map_name, episode_limit, reward, enemy_attack_mode)


def smax_env_info(map_name: str, episode_limit: int | None = None, reward: str = "smac", **kwargs: Any) -> EnvInfo:
    """Static facts of SMAX ``map_name`` (agents, actions, obs/state sizes, episode limit).

    ``kwargs`` may hold the other :class:`SMAXVecEnv` options (``enemy_attack_mode``); they are
    validated but do not change the facts.
    """
    unknown = sorted(set(kwargs) - {"enemy_attack_mode"})
    if unknown:
        raise EnvConfigError(f"unknown SMAX option {unknown[0]!r}; available: episode_limit, reward, enemy_attack_mode")
    limit = _check_config(map_name, episode_limit, reward, kwargs.get("enemy_attack_mode", "closest"))
    return _compiled(map_name, limit, reward, kwargs.get("enemy_attack_mode", "closest")).info


def _to_torch(x: Any) -> torch.Tensor:
    return torch.from_dlpack(x)


class SMAXVecEnv(VecEnv):
    """``len(seeds)`` copies of SMAX ``map_name`` against the heuristic enemy, stepped in one JAX call.

    Copy ``i`` draws its episodes from ``jax.random.PRNGKey(seeds[i])``. Outputs are CPU tensors that
    share memory with JAX's buffers; they are never written by the environment afterwards.
    """

    def __init__(
        self,
        map_name: str,
        seeds: Sequence[int],
        episode_limit: int | None = None,
        reward: str = "smac",
        enemy_attack_mode: str = "closest",
    ) -> None:
        limit = _check_config(map_name, episode_limit, reward, enemy_attack_mode)
        seeds = require_seeds(seeds, "SMAX")
        import jax
        import jax.numpy as jnp

        self._jax, self._jnp = jax, jnp
        self.map_name = map_name
        self.reward_mode = reward
        self.n_envs = len(seeds)
        self._fns: _Compiled | None = _compiled(map_name, limit, reward, enemy_attack_mode)
        self.state_layout = self._fns.layout
        self._keys: Any = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
        self._state: Any = None

    def _require_open(self) -> _Compiled:
        if self._fns is None:
            raise RuntimeError("SMAXVecEnv is closed")
        return self._fns

    @property
    def info(self) -> EnvInfo:
        return self._require_open().info

    def reset(self) -> ResetResult:
        """Start a new episode in every copy."""
        fns = self._require_open()
        self._keys, self._state, *observed = fns.reset(self._keys)
        return ResetResult(*(_to_torch(x) for x in observed))

    def step(self, actions: torch.Tensor) -> StepResult:
        """Advance every copy by one step with integer ``actions`` [n_envs, n_agents]."""
        fns = self._require_open()
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        expected = (self.n_envs, fns.info.n_agents)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        # A numpy argument is transferred during the jitted call's own dispatch, which measured
        # cheaper than a separate jnp.asarray or DLPack import of the torch tensor.
        acts = actions.detach().to(device="cpu", dtype=torch.int32).numpy()
        self._keys, self._state, *observed = fns.step(self._keys, self._state, acts)
        return StepResult(*(_to_torch(x) for x in observed))

    def reseed(self, seeds: Sequence[int]) -> None:
        """Copy ``i`` draws its next episodes from ``jax.random.PRNGKey(seeds[i])``, as if built with that seed."""
        self._require_open()
        if len(seeds) != self.n_envs:
            raise ValueError(f"reseed needs {self.n_envs} seeds, got {len(seeds)}")
        self._keys = self._jnp.stack([self._jax.random.PRNGKey(int(s)) for s in seeds])
        self._state = None

    def state_dict(self) -> dict[str, Any]:
        """The per-copy PRNG keys, {"keys": int64 CPU tensor [n_envs, key_size]}."""
        self._require_open()
        return {"keys": torch.from_numpy(np.asarray(self._keys).astype(np.int64))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the keys from :meth:`state_dict`; the next reset draws the same episodes."""
        self._require_open()
        keys = torch.as_tensor(state["keys"]).cpu().numpy()
        if keys.shape != tuple(self._keys.shape):
            raise ValueError(f"keys must have shape {tuple(self._keys.shape)}, got {keys.shape}")
        self._keys = self._jnp.asarray(keys.astype(np.uint32))

    def close(self) -> None:
        """Drop the JAX state and compiled functions held by this instance."""
        self._fns = None
        self._state = None
        self._keys = None
