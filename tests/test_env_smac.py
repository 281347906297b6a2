# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
"""SMAC adapter contract tests against the StarCraft2Env double in fake_smac.py (no StarCraft II here)."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import numpy as np
import pytest
import torch

from acorm_pl.envs import EnvConfigError, EnvInfo, get_env_info, smac
from acorm_pl.envs.smac import (
    SMAC_INSTALL,
    SMACEnv,
    SMACEpisodeLost,
    SMACUnavailableError,
    make_smac_vec_env,
    smac_env_info,
)
from fake_smac import FakeStarCraft2Env, LosingConnectionEnv, install_fake_smac, make_sc2_install

REPO = Path(__file__).resolve().parents[1]
# SMAC's facts for the maps of the paper's Fig. 2: n_agents, n_actions, obs, state, episode limit.
FIG2_MAPS = {
    "MMM2": (10, 18, 176, 322, 180),
    "2s3z": (5, 11, 80, 120, 120),
    "3s5z": (8, 14, 128, 216, 150),
    "5m_vs_6m": (5, 12, 55, 98, 70),
    "corridor": (6, 30, 156, 282, 400),
    "3s5z_vs_3s6z": (8, 15, 136, 230, 170),
}
SMAC_MODULES = ("smac", "smac.env", "smac.env.starcraft2", "smac.env.starcraft2.maps")


@pytest.fixture
def fake_smac(monkeypatch, tmp_path):
    return install_fake_smac(monkeypatch, tmp_path / "StarCraftII")


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _first_available(avail: np.ndarray) -> np.ndarray:
    return avail.argmax(-1)


# ---- facts and options --------------------------------------------------------------------------------
@pytest.mark.parametrize("map_name", sorted(FIG2_MAPS))
def test_env_info_maps_get_env_info(fake_smac, map_name):
    expected = EnvInfo(*FIG2_MAPS[map_name])
    assert smac_env_info(map_name) == expected
    assert get_env_info("smac", map_name, step_timeout=5, max_restarts=0) == expected


def test_options_reach_starcraft2env(fake_smac, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = SMACEnv("3m", 7, difficulty=5, obs_last_action=True, reward_win=100, replay_dir="replays").env
    assert env.kwargs["continuing_episode"] is True  # time-outs must be flagged
    assert (env.kwargs["seed"], env.kwargs["difficulty"], env.kwargs["reward_win"]) == (7, "5", 100)
    assert env.kwargs["replay_dir"] == str(tmp_path / "replays")
    assert env.kwargs["replay_prefix"] == "3m_seed7"
    assert smac_env_info("3m", obs_last_action=True).obs_dim == smac_env_info("3m").obs_dim + 2 * 9


def test_unknown_map_and_options_are_one_line_errors(fake_smac):
    with pytest.raises(EnvConfigError) as err:
        smac_env_info("MMM3")
    assert "unknown SMAC map 'MMM3'" in _one_line(err) and "MMM2" in str(err.value)
    with pytest.raises(EnvConfigError) as err:
        smac_env_info("3m", map_size=3)
    assert "'map_size'" in _one_line(err) and "difficulty" in str(err.value) and "step_timeout" in str(err.value)
    bad = [
        {"continuing_episode": False},
        {"difficulty": "B"},
        {"obs_last_action": "yes"},
        {"reward_win": "x"},
        {"step_mul": 0},
        {"step_timeout": 0},
        {"max_restarts": -1},
    ]
    for options in bad:
        with pytest.raises(EnvConfigError) as err:
            smac_env_info("3m", **options)
        assert next(iter(options)) in _one_line(err)
    with pytest.raises(EnvConfigError, match="at least one seed"):
        make_smac_vec_env("3m", seeds=[])


# ---- episodes -----------------------------------------------------------------------------------------
def test_reset_and_step_shapes_dtypes_and_dead_agents(fake_smac):
    env = SMACEnv("fake_tiny", seed=1)
    info = env.info
    first = env.reset()
    assert first.obs.shape == (info.n_agents, info.obs_dim) and first.obs.dtype == np.float32
    assert first.state.shape == (info.state_dim,) and first.state.dtype == np.float32
    assert first.avail_actions.shape == (info.n_agents, info.n_actions) and first.avail_actions.dtype == np.bool_
    assert first.alive.dtype == np.bool_ and first.alive.tolist() == [True, True]
    assert not first.avail_actions[:, 0].any()  # the no-op is for dead agents only
    res = env.step(_first_available(first.avail_actions))
    assert res.obs.dtype == np.float32 and res.avail_actions.dtype == np.bool_
    assert res.avail_actions[-1].tolist() == [True] + [False] * (info.n_actions - 1)  # the dead agent
    assert res.alive.tolist() == [True, False]  # from the unit's health, as SMAC decides
    assert not res.obs[-1].any() and res.obs[0, 0] == pytest.approx(1 / info.episode_limit)
    assert res.state[1] == pytest.approx(1 / info.episode_limit)  # ally 0's row: [health, cooldown, x, y]


@pytest.mark.parametrize(("map_name", "names", "stride"),
                         [("MMM2", ("marauder", "marine", "medivac"), 7), ("3s5z", ("stalker", "zealot"), 7),
                          ("fake_tiny", ("marine",), 4)])
def test_state_layout_decodes_health_and_unit_types(fake_smac, map_name, names, stride):
    env = SMACEnv(map_name, seed=1)
    layout = env.state_layout
    assert (layout.n_agents, layout.stride, layout.type_names) == (env.info.n_agents, stride, names)
    first = env.reset()
    start = layout.decode(torch.from_numpy(first.state))
    n = env.info.n_agents
    assert start.health.tolist() == [1.0] * n and start.unit_type.tolist() == [i % len(names) for i in range(n)]
    res = env.step(_first_available(first.avail_actions))
    after = layout.decode(torch.from_numpy(np.stack([first.state, res.state])))  # any leading dimensions
    assert after.health.shape == (2, n) and after.health[1, -1] == 0.0  # the last agent died
    expected = 1.0 - 0.5 / env.info.episode_limit  # the double's health after one step
    assert after.health[1, :-1].tolist() == pytest.approx([expected] * (n - 1))
    assert after.type_names(0) == [names[i % len(names)] for i in range(n)]
    assert SMACEnv(map_name, seed=1, obs_instead_of_state=True).state_layout is None


def test_win_is_a_terminal_with_battle_won_and_reward_passes_through(fake_smac):
    env = SMACEnv("fake_tiny", seed=0)  # even seed: enemies die on step 2
    first = env.step(_first_available(env.reset().avail_actions))
    assert (first.reward, first.terminated, first.truncated, first.battle_won) == (
        pytest.approx(0.1),
        False,
        False,
        False,
    )
    last = env.step(_first_available(first.avail_actions))
    assert (last.reward, last.terminated, last.truncated, last.battle_won) == (pytest.approx(2.2), True, False, True)
    assert len(env.env.actions_received) == 2


def test_episode_limit_is_a_truncation_not_a_terminal(fake_smac):
    env = SMACEnv("fake_tiny", seed=1)  # odd seed: time-out at the limit of 6
    avail = env.reset().avail_actions
    results = []
    for _ in range(env.info.episode_limit):
        results.append(env.step(_first_available(avail)))
        avail = results[-1].avail_actions
    assert [r.truncated for r in results] == [False] * 5 + [True]
    assert not any(r.terminated or r.battle_won for r in results)
    assert [r.reward for r in results] == pytest.approx([0.1 * t for t in range(1, 7)])
    avail = env.reset().avail_actions  # a new episode starts cleanly
    assert not env.step(_first_available(avail)).truncated


def test_actions_reach_the_game_as_python_ints(fake_smac):
    env = SMACEnv("fake_tiny", seed=1)
    env.reset()
    env.step(np.array([6, 1], dtype=np.int64))
    env.step(torch.tensor([7, 0]).numpy())
    assert env.env.actions_received == [[6, 1], [7, 0]]
    assert all(type(a) is int for acts in env.env.actions_received for a in acts)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([1, 1, 1]))


def test_step_before_reset_and_lost_connection(fake_smac):
    with pytest.raises(RuntimeError, match="reset"):
        SMACEnv("fake_tiny", seed=1).step(np.array([1, 1]))
    env = SMACEnv("fake_tiny", seed=1, env_cls=LosingConnectionEnv)
    res = env.step(_first_available(env.reset().avail_actions))
    with pytest.raises(SMACEpisodeLost):
        env.step(_first_available(res.avail_actions))


def test_save_replay_and_close_are_forwarded(fake_smac):
    env = SMACEnv("fake_tiny", seed=0)
    env.save_replay()  # nothing launched yet: SMAC itself would fail here
    assert env.env.replays_saved == 0
    env.reset()
    env.save_replay()
    assert env.env.replays_saved == 1
    env.close()
    env.close()
    assert env.env.closed == 1


# ---- what is missing ----------------------------------------------------------------------------------
def _hide_smac(monkeypatch) -> None:
    for name in SMAC_MODULES:  # recorded as absent, so whatever a test imports is dropped afterwards
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)


def test_missing_smac_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)
    with pytest.raises(SMACUnavailableError) as err:
        get_env_info("smac", "MMM2")
    text = _one_line(err)
    assert SMAC_INSTALL in text and "SMAC3" in text and "Python 3.10" in text and "protobuf<3.21" in text


def test_smac3_is_recognised(monkeypatch):
    _hide_smac(monkeypatch)
    smac3 = types.ModuleType("smac")  # SMAC3's top level: no smac.env
    smac3.__version__ = "2.3.1"
    monkeypatch.setitem(sys.modules, "smac", smac3)
    with pytest.raises(SMACUnavailableError) as err:
        smac_env_info("MMM2")
    text = _one_line(err)
    assert "SMAC3" in text and "2.3.1" in text and "pip uninstall smac" in text and SMAC_INSTALL in text


@pytest.mark.parametrize(
    ("env_init", "expected"),
    [
        ("from pysc2 import maps\n", "'pysc2' is missing"),
        (
            "raise TypeError('Descriptors cannot be created directly.\\nIf this call came from a _pb2.py file')\n",
            "Descriptors cannot be created directly.)",
        ),
    ],
)
def test_broken_smac_dependencies_are_named(monkeypatch, tmp_path, env_init, expected):
    _hide_smac(monkeypatch)
    monkeypatch.setitem(sys.modules, "pysc2", None)
    (tmp_path / "smac" / "env").mkdir(parents=True)
    (tmp_path / "smac" / "__init__.py").write_text("")
    (tmp_path / "smac" / "env" / "__init__.py").write_text(env_init)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SMACUnavailableError) as err:
        smac_env_info("MMM2")
    text = _one_line(err)
    assert expected in text and "Python 3.10" in text and "protobuf<3.21" in text


def test_missing_game_names_sc2path_and_version(fake_smac, tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    env = SMACEnv("MMM2", seed=0)  # env info needs no game
    with pytest.raises(SMACUnavailableError) as err:
        env.reset()
    assert "SC2PATH" in _one_line(err) and "4.10" in str(err.value) and "nowhere" in str(err.value)
    with pytest.raises(SMACUnavailableError, match="4.10"):
        make_smac_vec_env("MMM2", seeds=[0, 1])  # refused before any worker starts
    monkeypatch.delenv("SC2PATH")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(SMACUnavailableError, match="default ~/StarCraftII"):
        SMACEnv("MMM2", seed=0).reset()


def test_missing_map_file_and_other_game_versions(fake_smac, tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(make_sc2_install(tmp_path / "sc2", maps=["3m"], build=80949)))
    with pytest.raises(SMACUnavailableError) as err:
        SMACEnv("MMM2", seed=0).reset()
    assert "SMAC_Maps" in _one_line(err) and "MMM2.SC2Map" in str(err.value)
    with pytest.warns(UserWarning, match="not 4.10"):
        SMACEnv("3m", seed=0).reset()


# ---- worker pool --------------------------------------------------------------------------------------
def test_vec_env_factory_contract(fake_smac, monkeypatch):
    calls = []
    monkeypatch.setattr(smac, "ProcessVecEnv", lambda factory, seeds, info, **kw: calls.append((factory, seeds, info,
                                                                                               kw)) or "pool")
    out = make_smac_vec_env("fake_tiny", seeds=[3, 4], env_cls=FakeStarCraft2Env, step_timeout=5, difficulty=3)
    (factory, seeds, info, kw) = calls[0]
    assert out == "pool" and seeds == [3, 4] and info == smac_env_info("fake_tiny")
    assert kw == {"step_timeout": 5, "reset_timeout": 300.0, "max_restarts": 100,
                  "state_layout": SMACEnv("fake_tiny", 0).state_layout}
    env = pickle.loads(pickle.dumps(factory))(4)  # what a spawned worker does
    assert isinstance(env, SMACEnv) and env.seed == 4 and env.env.kwargs["difficulty"] == "3"


class _FirstAvailable:
    """An actor for collect_rollout that always takes the first available action."""

    device = torch.device("cpu")

    def initial_state(self, n_envs: int) -> None:
        return None

    def act(self, obs, last_actions, avail, hidden, explore):
        return avail.int().argmax(-1), hidden


@pytest.mark.slow
def test_rollout_through_worker_processes(fake_smac):
    pytest.importorskip("acorm_pl.envs.workers")
    from acorm_pl.data.rollout import collect_rollout

    env = make_smac_vec_env("fake_tiny", seeds=[0, 1], env_cls=FakeStarCraft2Env, step_timeout=30, reset_timeout=60)
    try:
        assert env.n_envs == 2 and env.info == smac_env_info("fake_tiny")
        rollout = collect_rollout(env, _FirstAvailable(), explore=False)
        assert rollout.won.tolist() == [True, False] and rollout.truncated.tolist() == [False, True]
        assert rollout.lengths.tolist() == [2, 6]
        assert rollout.returns.tolist() == pytest.approx([2.3, 2.1])
        # copy 0 finished at step 2 while copy 1 played on: its game (which asserts it is not stepped after
        # the end) was left alone, so no worker failed
        assert env.restarts == 0 and rollout.discarded == 0
        alive = rollout.episodes.alive  # the last agent dies on step 1; False past each episode's end
        assert alive[:, :, 0].tolist() == [[True] * 3 + [False] * 4, [True] * 7]
        assert alive[:, :, 1].tolist() == [[True] + [False] * 6, [True] + [False] * 6]
        features = env.agent_features(rollout.episodes.state)
        assert features.type_names(0, 0) == ["marine", "marine"] and features.health[1, 1:, 1].eq(0).all()
        env.save_replay()
    finally:
        env.close()


# ---- the command line ---------------------------------------------------------------------------------
def test_cli_instantiates_the_mmm2_config(fake_smac, tmp_path, monkeypatch):
    from acorm_pl.algos import ACORM
    from acorm_pl.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(REPO / "conf" / "mmm2.yaml"), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model, ACORM) and cli.datamodule.env_name == "smac"
    assert cli.model.info == EnvInfo(*FIG2_MAPS["MMM2"])


def test_evaluation_can_save_replays():
    from acorm_pl.callbacks.evaluation import Evaluation
    from scripted_env import ScriptedVecEnv

    class Replaying(ScriptedVecEnv):
        saved = 0

        def save_replay(self) -> None:
            self.saved += 1

    env = Replaying([2, 3], [True, False])
    data = types.SimpleNamespace(make_env=lambda n, offset: env, n_envs=2, env_steps=0, seed=0, rank=0)
    trainer = types.SimpleNamespace(datamodule=data, world_size=1, loggers=[], callback_metrics={})
    Evaluation(n_eval_episodes=2).evaluate(trainer, _FirstAvailable())
    assert env.saved == 0
    results = Evaluation(n_eval_episodes=2, save_replay=True).evaluate(trainer, _FirstAvailable())
    assert env.saved == 1 and results["test/win_rate"] == 0.5
