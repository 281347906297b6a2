"""SMAC: the StarCraft Multi-Agent Challenge on the real StarCraft II game, one game per worker process.

:class:`SMACEnv` adapts oxwhirl/smac's ``smac.env.StarCraft2Env`` to :class:`SingleEnv`;
:func:`make_smac_vec_env` runs one per seed in :class:`acorm_pl.envs.workers.ProcessVecEnv` (spawned
worker processes, restarted when StarCraft II crashes or hangs).

What it needs (none of it on this project's CI machines; the tests use a documented double):

* SMAC from its repository, ``pip install git+https://github.com/oxwhirl/smac.git`` (PyPI's ``smac``
  is SMAC3, an unrelated hyperparameter optimiser). It pulls in pysc2 4.0.0, which needs Python 3.10
  (it breaks on 3.11+) and ``protobuf<3.21``.
* The Linux StarCraft II package, version 4.10 (build ``Base75689``), unzipped to ``~/StarCraftII`` or
  wherever ``SC2PATH`` points, with SMAC's maps in ``$SC2PATH/Maps/SMAC_Maps``. pysc2 runs the newest
  ``Versions/Base*`` build it finds, and SMAC numbers are only comparable within one game version.

The StarCraft2Env API used here (oxwhirl/smac ``smac/env/starcraft2/starcraft2.py`` and
``smac/env/multiagentenv.py``):

* ``StarCraft2Env(map_name=..., seed=..., continuing_episode=..., replay_dir=..., replay_prefix=..., **kw)``
  only reads the map's parameters; the game is launched by the first ``reset()``.
* ``get_env_info()`` -> ``{"n_agents", "n_actions", "obs_shape", "state_shape", "episode_limit"}`` (ints;
  ``n_actions = 6 + n_enemies``: 0 no-op, 1 stop, 2-5 move north/south/east/west, ``6 + j`` attack enemy
  ``j``, or heal ally ``j`` for a medivac).
* ``reset()`` starts an episode (some versions also return ``(obs, state)``; not relied upon).
* ``get_obs()`` -> list of ``n_agents`` float32 arrays ``[obs_shape]`` (all zeros for a dead agent);
  ``get_state()`` -> float32 array ``[state_shape]``: unless ``obs_instead_of_state``, one row per ally
  first, ``[health / health_max, weapon cooldown (a medivac's energy), x, y, (shield), unit-type one-hot]``
  (zeros when dead), then the enemies' rows (and the last actions); ``get_avail_actions()`` -> list of
  ``n_agents`` lists of 0/1 ints (a dead agent has only the no-op, a live one never has it).
* ``get_unit_by_id(i).health`` -> agent ``i``'s unit health (0 once dead; SMAC's own test of life).
  The attributes ``shield_bits_ally``, ``unit_type_bits`` and ``map_type`` (set from the map's
  parameters) size the ally rows of the state; a map type's ally unit types are numbered from the
  lowest unit id up (``_init_ally_unit_types``), named here by :data:`UNIT_TYPE_NAMES`.
* ``step(actions)`` with one int per agent (an unavailable action fails an assertion) ->
  ``(reward, terminated, info)``: ``info["battle_won"]`` on a win; on reaching the episode limit
  ``terminated`` is True and, only when built with ``continuing_episode=True``, ``info["episode_limit"]``
  is True. When the game connection fails mid-episode SMAC relaunches the game and returns
  ``(0, True, {})``.
* ``save_replay()`` writes one ``.SC2Replay`` of every episode since the game was launched, under
  ``replay_dir`` (relative paths are taken by pysc2 relative to ``$SC2PATH/Replays``); ``close()`` stops
  the game.

How this adapter maps it: it always builds StarCraft2Env with ``continuing_episode=True`` so that a
time-out is reported as ``truncated`` (bootstrapped from the last state), never as ``terminated``;
``battle_won`` is ``info["battle_won"]``; ``alive`` is "health above 0" of every agent's unit. A lost game
connection raises :class:`SMACEpisodeLost`, so the worker pool restarts that copy and drops the half-played
episode instead of learning a fake terminal. The pool never steps a finished episode, so the game never
sees actions after an episode's end.

Options (``data.env_kwargs``), validated in the main process:

* StarCraft2Env's own, passed through: ``difficulty`` (built-in AI level, "1"-"9" or "A"; default "7"),
  ``step_mul``, ``game_version``, ``obs_all_health``, ``obs_own_health``, ``obs_last_action``,
  ``obs_pathing_grid``, ``obs_terrain_height``, ``obs_instead_of_state``, ``state_last_action``,
  ``reward_sparse``, ``reward_only_positive``, ``reward_death_value``, ``reward_win``, ``reward_defeat``,
  ``reward_negative_scale``, ``reward_scale``, ``reward_scale_rate``, ``replay_dir``, ``replay_prefix``.
  SMAC's defaults apply otherwise. Keep ``obs_last_action`` False (its default): the agent networks
  already append each agent's own last action to its observation, as pymarl does. ``replay_dir`` is
  made absolute against the working directory; ``replay_prefix`` defaults to ``<map>_seed<seed>`` so
  that workers' replays do not mix.
* Worker pool: :class:`~acorm_pl.envs.workers.WorkerOptions` (``step_timeout``, ``reset_timeout``: it covers
  a game launch, ``max_restarts``).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from acorm_pl.envs.base import EnvConfigError, EnvInfo, SingleEnv, SingleReset, SingleStep, UnitStateLayout, VecEnv
from acorm_pl.envs.workers import WORKER_OPTIONS, ProcessVecEnv, WorkerOptions

SMAC_INSTALL = "pip install git+https://github.com/oxwhirl/smac.git"
PYSC2_NEEDS = "pysc2 4.0.0 needs Python 3.10 (it breaks on 3.11+) and protobuf<3.21 (pip install 'protobuf<3.21')"
SC2_DOWNLOAD = "https://github.com/Blizzard/s2client-proto#linux-packages"
SMAC_MAPS_URL = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"
SC2_4_10_BUILD = 75689  # Versions/Base75689 is StarCraft II 4.10

_BOOL_OPTIONS = (
    "obs_all_health",
    "obs_own_health",
    "obs_last_action",
    "obs_pathing_grid",
    "obs_terrain_height",
    "obs_instead_of_state",
    "state_last_action",
    "reward_sparse",
    "reward_only_positive",
    "reward_scale",
)
_NUMBER_OPTIONS = ("reward_death_value", "reward_win", "reward_defeat", "reward_negative_scale", "reward_scale_rate")
_OTHER_OPTIONS = ("difficulty", "step_mul", "game_version", "replay_dir", "replay_prefix")
SC2_OPTIONS: tuple[str, ...] = _OTHER_OPTIONS + _BOOL_OPTIONS + _NUMBER_OPTIONS
_DIFFICULTIES = "123456789A"
# Ally unit types per SMAC map type, in the order of StarCraft2Env._init_ally_unit_types (lowest unit id first).
UNIT_TYPE_NAMES: dict[str, tuple[str, ...]] = {
    "marines": ("marine",),
    "stalkers_and_zealots": ("stalker", "zealot"),
    "colossi_stalkers_zealots": ("colossus", "stalker", "zealot"),
    "MMM": ("marauder", "marine", "medivac"),
    "zealots": ("zealot",),
    "hydralisks": ("hydralisk",),
    "stalkers": ("stalker",),
    "colossus": ("colossus",),
    "bane": ("baneling", "zergling"),
}


class SMACUnavailableError(EnvConfigError):
    """SMAC, its dependencies, StarCraft II or a map file is missing; the one-line message says how to fix it."""


class SMACEpisodeLost(RuntimeError):
    """SMAC lost its game connection mid-episode and relaunched StarCraft II: the episode in flight is gone."""


def _python_note() -> str:
    v = sys.version_info
    return f" (this is Python {v.major}.{v.minor})" if v >= (3, 11) else ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _import_smac() -> tuple[type, dict[str, dict[str, Any]]]:
    """oxwhirl/smac's StarCraft2Env and map registry, or a one-line :class:`SMACUnavailableError`."""
    try:
        import smac
    except ImportError as err:
        raise SMACUnavailableError(
            f"SMAC (StarCraft Multi-Agent Challenge) is not installed: {SMAC_INSTALL} (not `pip install smac`, "
            f"which is SMAC3); {PYSC2_NEEDS}{_python_note()}"
        ) from err
    try:
        from smac.env import StarCraft2Env
        from smac.env.starcraft2.maps import smac_maps
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("smac"):
            where = getattr(smac, "__file__", None) or "unknown location"
            version = getattr(smac, "__version__", "?")
            raise SMACUnavailableError(
                f"the installed 'smac' {version} ({where}) has no smac.env: it is not the StarCraft Multi-Agent "
                f"Challenge but probably SMAC3 (PyPI's 'smac'); pip uninstall smac, then {SMAC_INSTALL}"
            ) from err
        raise SMACUnavailableError(
            f"SMAC is installed but its dependency {err.name!r} is missing: reinstall it with {SMAC_INSTALL}; "
            f"{PYSC2_NEEDS}{_python_note()}"
        ) from err
    except (ImportError, TypeError, AttributeError) as err:  # protobuf >= 4 raises TypeError in pysc2's protos
        raise SMACUnavailableError(
            f"SMAC failed to import ({type(err).__name__}: {_first_line(err)}); {PYSC2_NEEDS}{_python_note()}"
        ) from err
    return StarCraft2Env, dict(smac_maps.get_smac_map_registry())


def available_maps() -> list[str]:
    """Names of the maps in the installed SMAC's registry, sorted (needs SMAC installed)."""
    return sorted(_import_smac()[1])


def _check_map(map_name: str, registry: dict[str, Any]) -> None:
    if map_name not in registry:
        raise EnvConfigError(f"unknown SMAC map {map_name!r}; available: {', '.join(sorted(registry))}")


def _sc2_kwargs(map_name: str, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` and return StarCraft2Env's keyword arguments for one copy."""
    if "continuing_episode" in options:
        raise EnvConfigError("SMAC option 'continuing_episode' is fixed to True (time-outs are reported as truncated)")
    unknown = sorted(set(options) - set(SC2_OPTIONS))
    if unknown:
        allowed = ", ".join((*SC2_OPTIONS, *WORKER_OPTIONS))
        raise EnvConfigError(f"unknown SMAC option {unknown[0]!r}; available: {allowed}")
    kw = dict(options)
    for name in _BOOL_OPTIONS:
        if name in kw and not isinstance(kw[name], bool):
            raise EnvConfigError(f"SMAC option {name} must be true or false, got {kw[name]!r}")
    for name in _NUMBER_OPTIONS:
        if name in kw and (isinstance(kw[name], bool) or not isinstance(kw[name], (int, float))):
            raise EnvConfigError(f"SMAC option {name} must be a number, got {kw[name]!r}")
    if "difficulty" in kw:
        level = str(kw["difficulty"])
        if level not in _DIFFICULTIES or isinstance(kw["difficulty"], bool):
            raise EnvConfigError(f"SMAC difficulty must be one of 1-9 or A, got {kw['difficulty']!r}")
        kw["difficulty"] = level
    step_mul = kw.get("step_mul")
    if step_mul is not None and (isinstance(step_mul, bool) or not isinstance(step_mul, int) or step_mul < 1):
        raise EnvConfigError(f"SMAC step_mul must be a positive integer or null, got {step_mul!r}")
    if kw.get("game_version") is not None:
        kw["game_version"] = str(kw["game_version"])
    replay_dir = kw.get("replay_dir") or ""
    kw["replay_dir"] = os.path.abspath(os.path.expanduser(str(replay_dir))) if replay_dir else ""
    kw["replay_prefix"] = str(kw.get("replay_prefix") or f"{map_name}_seed{seed}")
    return {"map_name": map_name, "seed": int(seed), "continuing_episode": True, **kw}


def sc2_install_dir() -> Path:
    """Where pysc2 looks for StarCraft II on Linux: ``$SC2PATH``, else ``~/StarCraftII``."""
    return Path(os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII")))


def check_sc2_install(map_name: str, game_version: str | None = None) -> Path | None:
    """Raise a one-line :class:`SMACUnavailableError` unless StarCraft II and the SMAC map file of
    ``map_name`` are where pysc2 will look; returns the install folder.

    Checked on Linux (and wherever ``SC2PATH`` is set); elsewhere pysc2's own auto-detection is trusted
    and None is returned. Warns when the newest build found is not 4.10 and no ``game_version`` is set.
    """
    if platform.system() != "Linux" and "SC2PATH" not in os.environ:
        return None
    if os.environ.get("SC2PATH") == "":
        raise SMACUnavailableError("SC2PATH is set but empty; point it at the StarCraft II 4.10 folder (StarCraftII)")
    base = sc2_install_dir()
    source = f"SC2PATH={os.environ['SC2PATH']}" if "SC2PATH" in os.environ else "SC2PATH unset, default ~/StarCraftII"
    builds = (
        sorted(int(p.name[4:]) for p in (base / "Versions").glob("Base*") if p.name[4:].isdigit())
        if (base / "Versions").is_dir()
        else []
    )
    if not base.is_dir() or not builds:
        raise SMACUnavailableError(
            f"StarCraft II not found at {base} ({source}, no Versions/Base* build): unzip the Linux StarCraft II "
            f"4.10 package (SC2.4.10.zip, {SC2_DOWNLOAD}) and set SC2PATH to its StarCraftII folder"
        )
    map_file = base / "Maps" / "SMAC_Maps" / f"{map_name}.SC2Map"
    if not map_file.is_file():
        raise SMACUnavailableError(f"SMAC map file {map_file} is missing: unzip {SMAC_MAPS_URL} into {base / 'Maps'}")
    if game_version is None and builds[-1] != SC2_4_10_BUILD:
        warnings.warn(
            f"StarCraft II at {base} has builds {builds} and pysc2 runs the newest (Base{builds[-1]}), not 4.10 "
            f"(Base{SC2_4_10_BUILD}); SMAC results differ between game versions",
            stacklevel=2,
        )
    return base


def _env_info(raw: dict[str, Any]) -> EnvInfo:
    return EnvInfo(
        n_agents=int(raw["n_agents"]),
        n_actions=int(raw["n_actions"]),
        obs_dim=int(raw["obs_shape"]),
        state_dim=int(raw["state_shape"]),
        episode_limit=int(raw["episode_limit"]),
    )


class SMACEnv(SingleEnv):
    """One SMAC game (one StarCraft II process once reset) behind :class:`SingleEnv`.

    Args:
        map_name: a map of SMAC's registry, e.g. ``MMM2``.
        seed: StarCraft II's random seed for this copy.
        env_cls: the StarCraft2Env class to build (default: ``smac.env.StarCraft2Env``, imported here);
            a class with the same API, e.g. the test double, is used as it is (its map check included).
        **options: StarCraft2Env options (see the module docstring).
    """

    def __init__(self, map_name: str, seed: int, *, env_cls: type | None = None, **options: Any) -> None:
        kwargs = _sc2_kwargs(map_name, seed, options)
        if env_cls is None:
            env_cls, registry = _import_smac()
            _check_map(map_name, registry)
        self.map_name, self.seed = map_name, int(seed)
        self.game_version: str | None = kwargs.get("game_version")
        self.env = env_cls(**kwargs)
        self._info = _env_info(self.env.get_env_info())
        self._launched = False  # the first reset() launches StarCraft II
        self._closed = False

    @property
    def info(self) -> EnvInfo:
        return self._info

    @property
    def state_layout(self) -> UnitStateLayout | None:
        """Where this game's state keeps each agent's health and unit type (None under ``obs_instead_of_state``)."""
        env = self.env
        if env.obs_instead_of_state:
            return None
        bits, shield = int(env.unit_type_bits), int(env.shield_bits_ally)
        names = UNIT_TYPE_NAMES.get(env.map_type, ())
        if len(names) != max(bits, 1):  # a map type this table does not know
            names = tuple(f"type {j}" for j in range(max(bits, 1)))
        return UnitStateLayout(self._info.n_agents, 4 + shield + bits, health_at=0, types_at=4 + shield,
                               type_names=names)  # fmt: skip

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        i = self._info
        obs = np.asarray(self.env.get_obs(), dtype=np.float32).reshape(i.n_agents, i.obs_dim)
        state = np.asarray(self.env.get_state(), dtype=np.float32).reshape(i.state_dim)
        avail = np.asarray(self.env.get_avail_actions()).astype(bool).reshape(i.n_agents, i.n_actions)
        alive = np.array([self.env.get_unit_by_id(a).health > 0 for a in range(i.n_agents)], dtype=bool)
        return obs, state, avail, alive

    def reset(self) -> SingleReset:
        """Start an episode (the first call launches StarCraft II after checking that it is installed)."""
        if self._closed:
            raise RuntimeError("SMACEnv is closed")
        if not self._launched:
            check_sc2_install(self.map_name, self.game_version)
        self.env.reset()
        self._launched = True
        return SingleReset(*self._observe())

    def step(self, actions: np.ndarray) -> SingleStep:
        """Advance the running episode by one step with integer ``actions`` [n_agents] (each must be available)."""
        if not self._launched:
            raise RuntimeError("call reset() before step()")
        acts = np.asarray(actions)
        if acts.shape != (self._info.n_agents,):
            raise ValueError(f"actions must have shape ({self._info.n_agents},), got {acts.shape}")
        reward, terminated, info = self.env.step([int(a) for a in acts])
        if terminated and not info:
            raise SMACEpisodeLost(f"SMAC {self.map_name} (seed {self.seed}) lost StarCraft II mid-episode")
        truncated = bool(terminated and info.get("episode_limit", False))
        return SingleStep(*self._observe(), reward=float(reward), terminated=bool(terminated) and not truncated,
                          truncated=truncated, battle_won=bool(info.get("battle_won", False)))  # fmt: skip

    def save_replay(self) -> None:
        """Write a replay of every episode since StarCraft II was launched (nothing before the first reset)."""
        if self._launched and not self._closed:
            self.env.save_replay()

    def close(self) -> None:
        """Stop StarCraft II (once)."""
        if not self._closed:
            self._closed = True
            self.env.close()


def _probe(map_name: str, env_cls: type | None, sc2_options: dict[str, Any]) -> tuple[EnvInfo, UnitStateLayout | None]:
    """The facts and state layout of ``map_name`` read from a StarCraft2Env that launches no game."""
    env = SMACEnv(map_name, 0, env_cls=env_cls, **sc2_options)
    try:
        return env.info, env.state_layout
    finally:
        env.close()


def smac_env_info(map_name: str, *, env_cls: type | None = None, **options: Any) -> EnvInfo:
    """Static facts of SMAC ``map_name`` under ``options`` from StarCraft2Env's ``get_env_info()``.

    Launches no game. Worker options (:class:`~acorm_pl.envs.workers.WorkerOptions`) are checked and
    otherwise ignored.
    """
    _, sc2_options = WorkerOptions.split(options)
    return _probe(map_name, env_cls, sc2_options)[0]


def make_smac_vec_env(map_name: str, seeds: Sequence[int], *, env_cls: type | None = None, **options: Any) -> VecEnv:
    """``len(seeds)`` SMAC games of ``map_name`` in worker processes, copy ``i`` seeded with ``seeds[i]``.

    Options and the StarCraft II install are checked here, before any worker starts; each worker builds
    its :class:`SMACEnv` from a picklable factory (``env_cls`` must be importable by name in a child).
    """
    worker, sc2_options = WorkerOptions.split(options)
    info, layout = _probe(map_name, env_cls, sc2_options)
    game_version = sc2_options.get("game_version")
    check_sc2_install(map_name, None if game_version is None else str(game_version))
    factory = functools.partial(SMACEnv, map_name, env_cls=env_cls, **sc2_options)
    return ProcessVecEnv(factory, seeds, info, state_layout=layout, **asdict(worker))
