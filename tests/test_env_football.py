"""The Google Research Football adapter against the real gfootball engine: shapes, state layout, rewards,
termination, truncation, fixed player control, workers and a short ``acorm-pl fit``.

Skipped where gfootball is not installed (the reason names ``bash scripts/install_football.sh``), except where
``ACORM_PL_REQUIRE_FOOTBALL=1`` is set (as ``.ci/run`` does), where a missing engine fails: ``engines.py``.
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

from pathlib import Path

import acorm_pl  # noqa: F401
import numpy as np
import pytest
import torch
from cli_errors import assert_one_line_error
from engines import FOOTBALL_MISSING, football_available, football_required
from mlflow.tracking import MlflowClient
from paper_configs import config_args

from acorm_pl.cli import main
from acorm_pl.data.rollout import collect_rollout
from acorm_pl.envs import EnvConfigError, get_env_info, make_vec_env

if not football_available() and not football_required():
    pytest.skip(FOOTBALL_MISSING, allow_module_level=True)

from acorm_pl.envs.football import FootballEnv, football_env_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THREE_VS_ONE = "academy_3_vs_1_with_keeper"
SHOT, IDLE = 12, 0  # gfootball's default action set
ACTIVE = slice(97, 108)  # simple115v2: one-hot of the agent's own player among the 11 left slots


@pytest.fixture
def env_3v1():
    env = FootballEnv(THREE_VS_ONE, seed=1)
    yield env
    env.close()


@pytest.mark.parametrize(
    ("scenario", "options", "n_agents", "state_dim"),
    [
        (THREE_VS_ONE, {}, 3, 4 * (4 + 2) + 17),
        ("academy_counterattack_hard", {}, 10, 4 * (11 + 11) + 17),  # every outfield player by default
        ("academy_counterattack_hard", {"controlled_players": [7, 8, 9, 10]}, 4, 4 * (11 + 11) + 17),
        ("academy_run_to_score_with_keeper", {}, 1, 4 * (2 + 6) + 17),
    ],
)
def test_env_info_counts_the_left_outfield_players(scenario, options, n_agents, state_dim):
    info = get_env_info("football", scenario, **options)
    assert (info.n_agents, info.n_actions, info.obs_dim, info.state_dim) == (n_agents, 19, 115, state_dim)
    assert info.episode_limit == 400  # the academy scenarios' game duration


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"reward": "dense"}, "unknown GRF reward 'dense'; available: paper, checkpoints, scoring"),
        ({"controlled_players": [0, 9]}, "controlled_players [0, 9] must be distinct left-team indices in [0, 4)"),
        ({"episode_limit": 1}, "episode_limit must be an integer >= 2, got 1"),
        ({"difficulty": 3}, "unknown GRF option 'difficulty'"),
        ({"step_timeout": 0}, "step_timeout must be a positive number of seconds, got 0"),
        ({"max_restarts": "x"}, "max_restarts must be a non-negative integer, got 'x'"),
    ],
)
def test_bad_options_give_one_line_errors(options, fragment):
    with pytest.raises(EnvConfigError) as err:
        football_env_info(THREE_VS_ONE, **options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_worker_option_on_the_command_line_is_one_line(workdir, capsys):
    config = config_args("qmix", THREE_VS_ONE, "football")
    assert_one_line_error(["fit", *config, "--data.env_kwargs", '{"reset_timeout": -5}'], capsys,
                          "reset_timeout must be a positive number of seconds, got -5")
    assert_one_line_error(["fit", *config, "--data.env_kwargs", '{"max_restart": 3}'], capsys,
                          "unknown GRF option 'max_restart'; available: controlled_players, reward, episode_limit, "
                          "step_timeout, reset_timeout, max_restarts")


def test_unknown_scenario_lists_the_scenarios():
    with pytest.raises(EnvConfigError) as err:
        get_env_info("football", "academy_4_vs_4")
    msg = str(err.value)
    assert msg.startswith("unknown GRF scenario 'academy_4_vs_4'; available:") and THREE_VS_ONE in msg
    assert "\n" not in msg


def test_shapes_dtypes_and_state_layout(env_3v1):
    first = env_3v1.reset()
    assert first.obs.shape == (3, 115) and first.obs.dtype == np.float32
    assert first.state.shape == (41,) and first.state.dtype == np.float32
    assert first.avail_actions.shape == (3, 19) and first.avail_actions.dtype == bool and first.avail_actions.all()
    assert first.alive.dtype == bool and first.alive.tolist() == [True] * 3  # players never die
    for _ in range(3):
        res = env_3v1.step(np.array([IDLE, IDLE, IDLE]))
        assert res.alive.all()
    raw = env_3v1._raw()
    s = res.state
    np.testing.assert_allclose(s[0:8], raw["left_team"].reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(s[8:16], raw["left_team_direction"].reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(s[16:20], raw["right_team"].reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(s[20:24], raw["right_team_direction"].reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(s[24:27], raw["ball"], rtol=1e-6)
    np.testing.assert_allclose(s[27:30], raw["ball_direction"], rtol=1e-6)
    assert s[30:33].sum() == 1 and s[30 + raw["ball_owned_team"] + 1] == 1
    assert s[33:40].sum() == 1 and s[33 + raw["game_mode"]] == 1
    assert s[40] == pytest.approx(raw["steps_left"] / 400)


def test_each_agent_drives_the_same_outfield_player_all_episode(env_3v1):
    rng = np.random.default_rng(0)
    env_3v1.reset()
    for _ in range(60):
        res = env_3v1.step(rng.integers(0, 19, size=3))
        assert res.obs[:, ACTIVE].argmax(1).tolist() == [1, 2, 3]  # never the goalkeeper (0)
        if res.terminated or res.truncated:
            env_3v1.reset()


def test_scripted_goal_is_a_won_terminal_with_the_paper_reward():
    env = FootballEnv("academy_empty_goal_close", seed=0)
    env.reset()
    rewards = []
    for _ in range(40):
        res = env.step(np.array([SHOT]))
        rewards.append(res.reward)
        if res.terminated or res.truncated:
            break
    env.close()
    assert res.terminated and not res.truncated and res.battle_won
    assert rewards[-1] == 100.0 and all(r == 0.0 for r in rewards[:-1])  # only at the end (Appendix C)


def test_scoring_reward_mode_gives_gfootballs_goal_reward():
    env = FootballEnv("academy_empty_goal_close", seed=0, reward="scoring")
    env.reset()
    for _ in range(40):
        res = env.step(np.array([SHOT]))
        if res.terminated:
            break
    env.close()
    assert res.battle_won and res.reward == 1.0


def test_time_limit_is_a_truncation_not_a_terminal():
    env = FootballEnv("academy_empty_goal_close", seed=0, episode_limit=10)
    env.reset()
    ends = []
    for t in range(12):
        res = env.step(np.array([IDLE]))
        if res.terminated or res.truncated:
            ends.append(t + 1)
            break
    env.close()
    assert ends == [10] and res.truncated and not res.terminated and not res.battle_won
    assert res.reward == -1.0  # the paper's end-of-episode reward without a goal


def test_seeded_rollout_is_reproducible_and_ends_in_a_lost_terminal():
    def play(seed: int) -> list[tuple[float, bool, bool]]:
        env = FootballEnv(THREE_VS_ONE, seed=seed)
        rng, out = np.random.default_rng(0), []
        env.reset()
        for _ in range(400):
            res = env.step(rng.integers(0, 19, size=3))
            out.append((res.reward, res.terminated, res.battle_won, res.state.round(5).tobytes()))
            if res.terminated or res.truncated:
                break
        env.close()
        return out

    first = play(5)
    assert first == play(5)
    reward, terminated, won, _ = first[-1]
    assert terminated and (reward, won) in ((100.0, True), (-1.0, False))
    assert all(r == 0.0 for r, *_ in first[:-1])


@pytest.mark.slow
def test_two_workers_collect_complete_episodes():
    env = make_vec_env("football", THREE_VS_ONE, seeds=[3, 4], episode_limit=60)

    class RandomActor:
        def initial_state(self, n):
            return None

        def act(self, obs, last_actions, avail, hidden, explore):
            return torch.randint(0, 19, obs.shape[:2]), None

    try:
        rollout = collect_rollout(env, RandomActor(), explore=True)
        pids = env.worker_pids()
        # the copy that finished first was left alone until the other one ended: no engine saw a step past its end
        assert env.restarts == 0 and rollout.discarded == 0 and env.agent_features(rollout.episodes.state) is None
    finally:
        env.close()
    assert len(pids) == 2 and rollout.episodes.obs.shape[0] == 2
    valid = torch.arange(rollout.episodes.max_t + 1) <= rollout.lengths.unsqueeze(1)
    assert torch.equal(rollout.episodes.alive, valid.unsqueeze(-1).expand(-1, -1, 3))
    assert rollout.episodes.obs.shape[2:] == (3, 115) and rollout.episodes.state.shape[-1] == 41
    for e, length in enumerate(rollout.lengths.tolist()):
        assert 1 <= length <= 60
        assert rollout.episodes.filled[e, :length].all() and not rollout.episodes.filled[e, length:].any()
        last = rollout.episodes.reward[e, length - 1].item()
        assert last in (100.0, -1.0) and rollout.returns[e].item() == last


@pytest.mark.slow
def test_short_fit_on_3_vs_1_with_two_workers_writes_an_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(["fit", *config_args("acorm", THREE_VS_ONE, "football"),
          "--data.n_envs", "2", "--data.updates_per_collect", "1", "--data.buffer_size", "16",
          "--data.batch_size", "2", "--data.env_kwargs", '{"reward": "paper", "episode_limit": 40}',
          "--data.total_env_steps", "120", "--data.epoch_env_steps", "120", "--roles.interval", "2",
          "--evaluation.eval_interval", "120", "--evaluation.n_eval_episodes", "2",
          "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(f"grf-{THREE_VS_ONE}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["map_name"] == THREE_VS_ONE
    assert "test/win_rate" in run.data.metrics and "train/td_loss" in run.data.metrics
    assert run.data.metrics["perf/worker_restarts"] == 0.0
