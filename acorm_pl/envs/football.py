"""Google Research Football (gfootball 2.10.2) as a :class:`SingleEnv`, stepped by process workers.

Agents: the left team's players except the goalkeeper (option ``controlled_players`` picks others, e.g.
the four attackers of ``academy_counterattack_hard``, the paper's "4 versus 2"). The scenario is loaded
through a thin wrapper that marks exactly those players controllable, so agent ``i`` drives the same
player for the whole episode (gfootball otherwise hands control around the team, goalkeeper included).

Per-agent observation: gfootball's ``simple115v2`` vector (115 floats, the agent's own player marked in
the active one-hot). All 19 actions of the default action set are always available.

Global state, built from the raw observation (L left players, R right players, goalkeepers included)::

    [0, 2L)            left_team          (x, y) per player
    [2L, 4L)           left_team_direction
    [4L, 4L+2R)        right_team
    [4L+2R, 4L+4R)     right_team_direction
    +3                 ball (x, y, z)
    +3                 ball_direction
    +3                 ball owner one-hot (nobody, left, right)
    +7                 game mode one-hot (normal, kickoff, goal kick, free kick, corner, throw-in, penalty)
    +1                 steps left / episode limit

so ``state_dim = 4 * (L + R) + 17`` (41 for ``academy_3_vs_1_with_keeper``).

Rewards (option ``reward``):
    ``paper``: only at the end of an episode, +100 if the left team scored, else -1 (Appendix C).
    ``scoring``: gfootball's +1 per goal scored, -1 per goal conceded.
    ``checkpoints``: ``scoring`` plus gfootball's checkpoint shaping (mean over the controlled players).

Ends of episodes: a goal, the ball going out of play or a change of possession are terminals; running
out of the episode limit is a truncation. ``episode_limit`` (default: the scenario's own duration, 400
for the academy scenarios) sets the engine's game duration so that the engine ends the game after exactly
``episode_limit`` steps, and the engine and the learner agree on it.
``battle_won`` means the left team scored. Players never die: ``alive`` is always true, and the state
holds no health or unit types (:meth:`~acorm_pl.envs.base.VecEnv.agent_features` is None).

Seeding: the worker seeds Python's ``random`` with its seed, from which gfootball draws a fresh engine
seed at every reset; the same seed therefore replays the same sequence of episodes for the same actions.
"""

from __future__ import annotations

import functools
import importlib
import random
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from acorm_pl.envs.base import EnvConfigError, EnvInfo, SingleEnv, SingleReset, SingleStep, VecEnv
from acorm_pl.envs.workers import WORKER_OPTIONS, ProcessVecEnv, WorkerOptions

REWARD_MODES = ("paper", "checkpoints", "scoring")
PAPER_SCENARIOS = ("academy_3_vs_1_with_keeper", "academy_counterattack_hard", "academy_run_to_score_with_keeper")
N_ACTIONS = 19
OBS_DIM = 115
N_GAME_MODES = 7
WIN_REWARD, LOSS_REWARD = 100.0, -1.0  # Appendix C
OPTIONS = ("controlled_players", "reward", "episode_limit")
INSTALL_HINT = (
    "apt-get install libgl1-mesa-dev libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev libsdl2-gfx-dev "
    "libboost-thread-dev libboost-system-dev libboost-filesystem-dev libboost-python-dev cmake build-essential; "
    'pip install psutil setuptools wheel && pip install --no-build-isolation "gfootball==2.10.2" "gym==0.25.2" six '
    "(or: bash scripts/install_football.sh)"
)


def _import_scenarios() -> types.ModuleType:
    try:
        return importlib.import_module("gfootball.scenarios")
    except ImportError as err:
        raise EnvConfigError(
            f"Google Research Football is not installed ({err}); install it with: {INSTALL_HINT}"
        ) from None


def available_scenarios() -> list[str]:
    """Every scenario gfootball ships (its ``gfootball/scenarios`` modules)."""
    from gfootball.env import scenario_builder

    _import_scenarios()
    return sorted(s for s in scenario_builder.all_scenarios() if not s.startswith("_") and s != "tests")


@dataclass
class ScenarioLayout:
    """What a scenario puts on the pitch, read by running its builder against a recorder (no engine)."""

    left_roles: list[int] = field(default_factory=list)
    right_roles: list[int] = field(default_factory=list)
    game_duration: int = 3000
    goalkeeper_role: int = 0


class _RecordingBuilder:
    """Stands in for gfootball's scenario builder and only records teams, roles and the game duration."""

    def __init__(self, layout: ScenarioLayout, left_team: Any):
        self.layout, self._left_team, self._left = layout, left_team, True
        self._config = types.SimpleNamespace(game_duration=layout.game_duration)

    def config(self) -> Any:
        return self._config

    def SetTeam(self, team: Any) -> None:  # noqa: N802 - gfootball's builder API
        self._left = team == self._left_team

    def AddPlayer(self, x: float, y: float, role: Any, lazy: bool = False, controllable: bool = True) -> None:  # noqa: N802
        (self.layout.left_roles if self._left else self.layout.right_roles).append(int(role))

    def EpisodeNumber(self) -> int:  # noqa: N802
        return 0

    def __getattr__(self, name: str) -> Any:  # SetBallPosition and the like: nothing to record
        return lambda *args, **kwargs: None


@functools.cache
def scenario_layout(scenario: str) -> ScenarioLayout:
    """Teams, roles and game duration of ``scenario``; a one-line error for an unknown name."""
    scenarios = _import_scenarios()
    names = available_scenarios()
    if scenario not in names:
        raise EnvConfigError(f"unknown GRF scenario {scenario!r}; available: {', '.join(names)}")
    module = importlib.import_module(f"gfootball.scenarios.{scenario}")
    layout = ScenarioLayout(goalkeeper_role=int(scenarios.e_PlayerRole_GK))
    builder = _RecordingBuilder(layout, scenarios.Team.e_Left)
    module.build_scenario(builder)
    layout.game_duration = int(builder.config().game_duration)
    return layout


def _check_options(scenario: str, options: dict[str, Any]) -> tuple[list[int], str, int]:
    """Check the game options (worker options are not among them): (controlled players, reward, limit)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        allowed = ", ".join(OPTIONS + WORKER_OPTIONS)
        raise EnvConfigError(f"unknown GRF option {unknown[0]!r}; available: {allowed}")
    layout = scenario_layout(scenario)
    n_left = len(layout.left_roles)
    controlled = options.get("controlled_players")
    if controlled is None:
        controlled = [i for i, role in enumerate(layout.left_roles) if role != layout.goalkeeper_role]
    controlled = list(controlled)
    if not controlled or len(set(controlled)) != len(controlled) or not all(0 <= i < n_left for i in controlled):
        raise EnvConfigError(
            f"GRF controlled_players {controlled!r} must be distinct left-team indices in [0, {n_left}) "
            f"for {scenario!r}"
        )
    reward = options.get("reward", "paper")
    if reward not in REWARD_MODES:
        raise EnvConfigError(f"unknown GRF reward {reward!r}; available: {', '.join(REWARD_MODES)}")
    limit = options.get("episode_limit") or layout.game_duration
    if not isinstance(limit, int) or limit < 2:
        raise EnvConfigError(f"GRF episode_limit must be an integer >= 2, got {limit!r}")
    return sorted(controlled), reward, limit


def football_env_info(scenario: str, **options: Any) -> EnvInfo:
    """Static facts of ``scenario`` without starting the engine; worker options
    (:class:`~acorm_pl.envs.workers.WorkerOptions`) are checked and otherwise ignored."""
    _, options = WorkerOptions.split(options)
    controlled, _, limit = _check_options(scenario, options)
    layout = scenario_layout(scenario)
    state_dim = 4 * (len(layout.left_roles) + len(layout.right_roles)) + 3 + 3 + 3 + N_GAME_MODES + 1
    return EnvInfo(
        n_agents=len(controlled), n_actions=N_ACTIONS, obs_dim=OBS_DIM, state_dim=state_dim, episode_limit=limit
    )


def _register_controlled_scenario(scenario: str, controlled: Sequence[int], game_duration: int) -> str:
    """A scenario module that builds ``scenario`` with only ``controlled`` left players controllable and the
    given game duration; returns its level name for gfootball's config."""
    name = f"_acorm_{scenario}_{'_'.join(map(str, controlled))}_{game_duration}"
    full = f"gfootball.scenarios.{name}"
    if full in sys.modules:
        return name
    scenarios = _import_scenarios()
    original = importlib.import_module(f"gfootball.scenarios.{scenario}")
    keep = frozenset(controlled)

    class _ControlBuilder:
        def __init__(self, builder: Any):
            self._builder, self._left, self._index = builder, True, 0

        def SetTeam(self, team: Any) -> None:  # noqa: N802
            self._left = team == scenarios.Team.e_Left
            self._builder.SetTeam(team)

        def AddPlayer(self, x: float, y: float, role: Any, lazy: bool = False, controllable: bool = True) -> None:  # noqa: N802
            if self._left:
                controllable, self._index = self._index in keep, self._index + 1
            self._builder.AddPlayer(x, y, role, lazy, controllable)

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._builder, attr)

    def build_scenario(builder: Any) -> None:
        original.build_scenario(_ControlBuilder(builder))
        builder.config().game_duration = game_duration - 1  # the engine plays duration + 1 steps

    module = types.ModuleType(full)
    module.build_scenario = build_scenario  # type: ignore[attr-defined]
    sys.modules[full] = module
    return name


class FootballEnv(SingleEnv):
    """One gfootball game; see the module docstring for agents, observations, state and rewards."""

    def __init__(self, scenario: str, seed: int, **options: Any):
        controlled, self.reward_mode, limit = _check_options(scenario, options)
        self._info = football_env_info(scenario, **options)
        self.scenario, self.controlled, self.episode_limit = scenario, controlled, limit
        random.seed(seed)  # gfootball draws each episode's engine seed from Python's random
        from gfootball import env as football

        level = _register_controlled_scenario(scenario, controlled, limit)
        rewards = "scoring,checkpoints" if self.reward_mode == "checkpoints" else "scoring"
        self._env = football.create_environment(
            env_name=level,
            representation="simple115v2",
            rewards=rewards,
            render=False,
            number_of_left_players_agent_controls=len(controlled),
        )
        self._score = (0, 0)
        self._alive = np.ones(len(controlled), dtype=bool)

    @property
    def info(self) -> EnvInfo:
        return self._info

    def seed(self, seed: int) -> None:
        """The next episodes' engine seeds are drawn from ``seed``, as after construction with it."""
        random.seed(seed)

    def _raw(self) -> dict[str, Any]:
        return self._env.unwrapped.observation()[0]

    def _obs(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).reshape(self._info.n_agents, OBS_DIM)

    def _state(self, raw: dict[str, Any]) -> np.ndarray:
        owner = np.zeros(3, dtype=np.float32)
        owner[int(raw["ball_owned_team"]) + 1] = 1.0
        mode = np.zeros(N_GAME_MODES, dtype=np.float32)
        mode[int(raw["game_mode"])] = 1.0
        parts = [
            raw["left_team"],
            raw["left_team_direction"],
            raw["right_team"],
            raw["right_team_direction"],
            raw["ball"],
            raw["ball_direction"],
            owner,
            mode,
            [raw["steps_left"] / self.episode_limit],
        ]
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts])

    def _avail(self) -> np.ndarray:
        return np.ones((self._info.n_agents, N_ACTIONS), dtype=bool)

    def reset(self) -> SingleReset:
        obs = self._env.reset()
        raw = self._raw()
        self._score = tuple(raw["score"])
        return SingleReset(self._obs(obs), self._state(raw), self._avail(), self._alive.copy())

    def step(self, actions: np.ndarray) -> SingleStep:
        action_list = [int(a) for a in np.asarray(actions).reshape(-1)]
        obs, reward, done, _ = self._env.step(action_list if len(action_list) > 1 else action_list[0])
        raw = self._raw()
        score = tuple(int(s) for s in raw["score"])
        scored, conceded = score[0] > self._score[0], score[1] > self._score[1]
        self._score = score
        # The engine ends a game at its duration (= our episode limit): a time limit, not a terminal.
        timed_out = bool(done) and int(raw["steps_left"]) <= 0 and not (scored or conceded)
        terminated, truncated = bool(done) and not timed_out, timed_out
        if self.reward_mode == "paper":
            team_reward = (WIN_REWARD if scored else LOSS_REWARD) if done else 0.0
        else:
            team_reward = float(np.mean(reward))
        return SingleStep(self._obs(obs), self._state(raw), self._avail(), self._alive.copy(), team_reward,
                          terminated, truncated, scored)  # fmt: skip

    def close(self) -> None:
        self._env.close()


def make_football_vec_env(scenario: str, seeds: Sequence[int], **options: Any) -> VecEnv:
    """``len(seeds)`` gfootball games, each in its own worker process (see :mod:`acorm_pl.envs.workers`)."""
    worker, options = WorkerOptions.split(options)
    info = football_env_info(scenario, **options)
    factory = functools.partial(FootballEnv, scenario, **options)
    return ProcessVecEnv(factory, seeds, info, **asdict(worker))
