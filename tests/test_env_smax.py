"""SMAX adapter: shapes, action masks, SMAC-scale rewards, termination, determinism, config errors."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest
import torch

if importlib.util.find_spec("jaxmarl") is None:
    pytest.skip("jaxmarl (the smax extra) is not installed", allow_module_level=True)

from acorm_pl.envs import EnvConfigError, get_env_info, make_vec_env  # noqa: E402
from acorm_pl.envs.smax import N_MOVE_ACTIONS, STOP_ACTION, SMAXVecEnv, available_maps, smax_env_info  # noqa: E402

EAST = 1  # jaxmarl's _decode_discrete_actions: 0 north (+y), 1 east (+x), 2 south, 3 west
SEEDS = [0, 1, 2, 3]
UNIT_FEATURES = 10  # per unit in the world state: health, x, y, cooldown, 6 unit-type bits
MARINE_RANGE = 5.0
HALF_MAP = 16.0  # SMAX maps are 32 x 32; the adapter scales positions by half of that
# map -> (allies, enemies, default episode limit)
MAPS = {"3m": (3, 3, 60), "2s3z": (5, 5, 120), "5m_vs_6m": (5, 6, 70), "3s_vs_5z": (3, 5, 250)}


@dataclass
class Rollout:
    """Stacked outputs of one lockstep rollout ([T, n_envs, ...]); ``live`` masks steps after the end."""

    state: torch.Tensor
    avail: torch.Tensor
    alive: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    won: torch.Tensor
    live: torch.Tensor

    def returns(self) -> torch.Tensor:
        return (self.reward * self.live).sum(0)

    def ended(self, flag: torch.Tensor) -> torch.Tensor:
        return (flag & self.live).any(0)


def scripted(avail: torch.Tensor) -> torch.Tensor:
    """Attack the first enemy in range, else walk east (towards the enemy), else stop."""
    attack = avail[..., N_MOVE_ACTIONS:]
    first_target = attack.int().argmax(-1) + N_MOVE_ACTIONS
    move = torch.where(avail[..., EAST], EAST, STOP_ACTION)
    return torch.where(attack.any(-1), first_target, move)


def play(env: SMAXVecEnv, policy=scripted, max_steps: int = 300) -> Rollout:
    first = env.reset()
    avail, done = first.avail_actions, torch.zeros(env.n_envs, dtype=torch.bool)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in Rollout.__dataclass_fields__}
    for _ in range(max_steps):
        out = env.step(policy(avail))
        rows["live"].append(~done)
        for name, value in [
            ("state", out.state),
            ("avail", out.avail_actions),
            ("alive", out.alive),
            ("reward", out.reward),
            ("terminated", out.terminated),
            ("truncated", out.truncated),
            ("won", out.battle_won),
        ]:
            rows[name].append(value.clone())
        avail, done = out.avail_actions, done | out.terminated | out.truncated
        if done.all():
            break
    return Rollout(**{k: torch.stack(v) for k, v in rows.items()})


@pytest.fixture(scope="module")
def env3m():
    with SMAXVecEnv("3m", seeds=SEEDS) as env:
        yield env


@pytest.fixture(scope="module")
def rollout3m() -> Rollout:
    """Scripted battles from fresh seeds (a fresh instance; the compiled functions are shared)."""
    with SMAXVecEnv("3m", seeds=SEEDS) as env:
        return play(env)


@pytest.fixture(scope="module")
def other_envs():
    envs = {name: SMAXVecEnv(name, seeds=SEEDS) for name in ("2s3z", "3s_vs_5z")}
    yield envs
    for env in envs.values():
        env.close()


def test_maps_come_from_jaxmarl() -> None:
    maps = available_maps()  # imports jaxmarl quietly first (it prints and resets sys.stdout on import)
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    assert maps == sorted(MAP_NAME_TO_SCENARIO)
    assert {"3m", "2s3z", "27m_vs_30m", "smacv2_20_units"} <= set(available_maps())


@pytest.mark.parametrize("map_name", sorted(MAPS))
def test_env_info(map_name: str) -> None:
    n_allies, n_enemies, limit = MAPS[map_name]
    info = smax_env_info(map_name)
    assert (info.n_agents, info.n_actions, info.episode_limit) == (n_allies, n_enemies + N_MOVE_ACTIONS, limit)
    assert info.state_dim == (UNIT_FEATURES + 2) * (n_allies + n_enemies)
    assert get_env_info("smax", map_name, episode_limit=7).episode_limit == 7


@pytest.mark.parametrize("map_name", ["3m", "2s3z", "3s_vs_5z"])
def test_reset_and_step_shapes(map_name: str, env3m: SMAXVecEnv, other_envs: dict) -> None:
    env = env3m if map_name == "3m" else other_envs[map_name]
    info = env.info
    n, a = env.n_envs, info.n_agents
    first = env.reset()
    assert first.obs.shape == (n, a, info.obs_dim) and first.obs.dtype == torch.float32
    assert first.state.shape == (n, info.state_dim) and first.state.dtype == torch.float32
    assert first.avail_actions.shape == (n, a, info.n_actions) and first.avail_actions.dtype == torch.bool
    out = env.step(torch.full((n, a), STOP_ACTION, dtype=torch.long))
    assert out.obs.shape == first.obs.shape and out.obs.dtype == torch.float32
    assert out.state.shape == first.state.shape and out.state.dtype == torch.float32
    assert out.avail_actions.shape == first.avail_actions.shape and out.avail_actions.dtype == torch.bool
    for flag in (out.reward, out.terminated, out.truncated, out.battle_won):
        assert flag.shape == (n,)
    assert out.reward.dtype == torch.float32
    assert out.terminated.dtype == out.truncated.dtype == out.battle_won.dtype == torch.bool
    assert out.avail_actions[..., STOP_ACTION].all()
    assert first.alive.shape == out.alive.shape == (n, a) and first.alive.dtype == out.alive.dtype == torch.bool
    assert first.alive.all()


@pytest.mark.parametrize("map_name", ["3m", "2s3z", "3s_vs_5z"])
def test_alive_is_what_the_old_inference_gave(map_name: str, rollout3m: Rollout, env3m: SMAXVecEnv,
                                              other_envs: dict) -> None:
    """Agents used to be taken for alive when they had more than one available action. SMAX leaves a dead ally
    only "stop" and a live one always its four moves as well, so the reported flag agrees everywhere."""
    env = env3m if map_name == "3m" else other_envs[map_name]
    roll = rollout3m if map_name == "3m" else play(env)
    live = roll.live.unsqueeze(-1).expand_as(roll.alive)
    assert torch.equal(roll.alive[live], (roll.avail.sum(-1) > 1)[live])
    assert (~roll.alive[live]).any(), "some ally should die in the scripted episodes"
    health = env.agent_features(roll.state).health
    assert torch.equal(roll.alive[live], (health > 0)[live])


def test_agent_features_decode_health_and_unit_types(env3m: SMAXVecEnv, other_envs: dict) -> None:
    assert env3m.agent_features(env3m.reset().state).type_names(0) == ["marine"] * 3
    features = other_envs["2s3z"].agent_features(other_envs["2s3z"].reset().state)
    assert [features.type_names(i) for i in range(len(SEEDS))] == [["stalker"] * 2 + ["zealot"] * 3] * len(SEEDS)
    assert features.health.shape == (len(SEEDS), 5) and torch.equal(features.health, torch.ones(len(SEEDS), 5))


def test_unit_types_drawn_per_episode_are_decoded_per_copy() -> None:
    with SMAXVecEnv("smacv2_5_units", seeds=list(range(8))) as env:
        state = env.reset().state
        features = env.agent_features(state)
        fns = env._require_open()
        n_units, n_types = 10, len(fns.env.unit_type_names)
        # the state's own block of type indices (divided by the largest index), allies first
        start = n_units * (UNIT_FEATURES + 1)
        indices = (state[:, start : start + 5] * (n_types - 1)).round().long()
    assert torch.equal(features.unit_type, indices)
    assert len({tuple(features.type_names(i)) for i in range(8)}) > 1  # copies drew different teams


def test_reset_is_out_of_range_and_quiet(env3m: SMAXVecEnv) -> None:
    first = env3m.reset()
    assert first.avail_actions[..., :N_MOVE_ACTIONS].all()
    assert not first.avail_actions[..., N_MOVE_ACTIONS:].any()
    out = env3m.step(torch.full((4, 3), STOP_ACTION))
    assert torch.equal(out.reward, torch.zeros(4))
    assert not (out.terminated | out.truncated | out.battle_won).any()


def test_east_moves_towards_positive_x(env3m: SMAXVecEnv) -> None:
    before = env3m.reset().state[:, : 3 * UNIT_FEATURES].view(4, 3, UNIT_FEATURES)
    after = env3m.step(torch.full((4, 3), EAST)).state[:, : 3 * UNIT_FEATURES].view(4, 3, UNIT_FEATURES)
    # state positions are centred and divided by half the map size (16 on SMAX's 32x32 maps)
    assert (after[..., 1] > before[..., 1] + 1.0 / HALF_MAP).all()
    assert torch.allclose(after[..., 2], before[..., 2], atol=0.2 / HALF_MAP)


def test_avail_actions_follow_life_and_range(rollout3m: Rollout) -> None:
    live = rollout3m.live
    units = rollout3m.state[..., : 6 * UNIT_FEATURES].unflatten(-1, (6, UNIT_FEATURES))
    alive = units[..., 0] > 0
    pos = units[..., 1:3] * HALF_MAP + HALF_MAP  # back to map coordinates
    dist = torch.cdist(pos[..., :3, :], pos[..., 3:, :])  # [T, n_envs, ally, enemy]
    in_range = (dist < MARINE_RANGE) & alive[..., :3, None] & alive[..., None, 3:]
    avail = rollout3m.avail
    assert avail[..., STOP_ACTION].all()
    assert torch.equal(avail[..., :STOP_ACTION][live], alive[..., :3, None].expand(-1, -1, -1, 4)[live])
    # Ties at the exact range boundary are measure-zero; compare only where the distance is clear of it.
    clear = (dist - MARINE_RANGE).abs() > 1e-3
    assert torch.equal(avail[..., N_MOVE_ACTIONS:][live & clear.all((-1, -2))], in_range[live & clear.all((-1, -2))])
    assert in_range[live].any(), "the scripted episodes should reach fighting range"
    dead = ~alive[..., :3] & live[..., None]
    assert dead.any(), "some ally should die in the scripted episodes"
    assert (avail[dead].sum(-1) == 1).all() and avail[dead][:, STOP_ACTION].all()


def test_state_is_normalised_like_smac(rollout3m: Rollout) -> None:
    state = rollout3m.state[rollout3m.live]
    assert state.abs().max() <= 1.0 + 1e-6  # raw jaxmarl positions reach 32 and cooldowns go below 0
    units = rollout3m.state[..., : 6 * UNIT_FEATURES].unflatten(-1, (6, UNIT_FEATURES))
    cooldown = units[..., 3][rollout3m.live]
    assert (cooldown >= 0).all() and (cooldown <= 1).all() and (cooldown > 0).any()


def test_smac_reward_win_is_20_and_loss_below(rollout3m: Rollout) -> None:
    won = rollout3m.ended(rollout3m.won)
    returns = rollout3m.returns()
    assert won.any() and (~won).any(), f"seeds {SEEDS} should give wins and losses, got {won.tolist()}"
    assert torch.allclose(returns[won], torch.full_like(returns[won], 20.0), atol=1e-4)
    assert (returns[~won] < 20.0 - 1e-3).all()
    assert (rollout3m.reward[rollout3m.live] >= 0).all()


def test_smax_reward_mode(rollout3m: Rollout) -> None:
    with make_vec_env("smax", "3m", seeds=SEEDS, reward="smax") as env:
        smax = play(env)
    # The reward mode changes nothing in the dynamics, so the same battles are fought.
    assert torch.equal(smax.won, rollout3m.won) and torch.equal(smax.state, rollout3m.state)
    won = smax.ended(smax.won)
    assert torch.allclose(smax.returns()[won], torch.full((int(won.sum()),), 2.0), atol=1e-4)


def test_smac_negative_reward_subtracts_half_the_allies_losses(rollout3m: Rollout) -> None:
    with make_vec_env("smax", "3m", seeds=SEEDS, reward="smac_negative") as env:
        neg = play(env)
    assert torch.equal(neg.won, rollout3m.won) and torch.equal(neg.state, rollout3m.state)
    # Allies' health fractions (state: per unit [health frac, ...]; a dead unit is all zeros), full at reset.
    health = rollout3m.state[..., : 3 * UNIT_FEATURES : UNIT_FEATURES]  # [T, n_envs, 3]
    before = torch.cat([torch.ones_like(health[:1]), health[:-1]])
    lost_hp = (before - health).clamp(min=0).sum(-1) * 45.0  # marines have 45 hp
    deaths = ((before > 0) & (health == 0)).sum(-1).float()
    max_reward = 10 * 3 + 200 + 3 * 45.0  # SMAC: death value * enemies + win bonus + enemy health
    expected = rollout3m.reward - 0.5 * (lost_hp + 10 * deaths) / max_reward * 20
    live = rollout3m.live
    assert torch.allclose(neg.reward[live], expected[live], atol=1e-4)
    assert (neg.reward[live] < 0).any() and (deaths[live] > 0).any()


def test_termination_flags(rollout3m: Rollout) -> None:
    live = rollout3m.live
    term, trunc, won = rollout3m.terminated & live, rollout3m.truncated & live, rollout3m.won & live
    assert term.any(0).all(), "every 3m scripted battle should end before the limit"
    assert not (term & trunc).any()
    assert not (won & ~term).any()
    units = rollout3m.state[..., : 6 * UNIT_FEATURES].unflatten(-1, (6, UNIT_FEATURES))
    alive = units[..., 0] > 0
    expected_won = alive[..., :3].any(-1) & ~alive[..., 3:].any(-1)
    assert torch.equal(won, expected_won & live)


def test_truncated_exactly_at_limit() -> None:
    with SMAXVecEnv("3m", seeds=SEEDS, episode_limit=5) as env:
        assert env.info.episode_limit == 5
        env.reset()
        for t in range(1, 6):
            out = env.step(torch.full((4, 3), STOP_ACTION))
            assert not out.terminated.any()
            assert out.truncated.all() == (t == 5) and out.truncated.any() == (t == 5)
            assert not out.battle_won.any()


def test_same_seeds_same_trajectories(rollout3m: Rollout) -> None:
    with SMAXVecEnv("3m", seeds=SEEDS) as env:
        again = play(env)
    for name in Rollout.__dataclass_fields__:
        assert torch.equal(getattr(again, name), getattr(rollout3m, name)), name
    with SMAXVecEnv("3m", seeds=[s + 100 for s in SEEDS]) as other, SMAXVecEnv("3m", seeds=SEEDS) as same:
        assert not torch.equal(other.reset().state, same.reset().state)


def test_state_dict_round_trip(env3m: SMAXVecEnv) -> None:
    saved = env3m.state_dict()
    assert saved["keys"].device.type == "cpu" and saved["keys"].shape[0] == 4
    first = env3m.reset()
    env3m.step(torch.full((4, 3), EAST))
    env3m.load_state_dict(saved)
    again = env3m.reset()
    assert torch.equal(first.obs, again.obs) and torch.equal(first.state, again.state)
    assert not torch.equal(env3m.reset().state, again.state)


def test_close_releases() -> None:
    env = SMAXVecEnv("3m", seeds=SEEDS)
    env.reset()
    env.close()
    with pytest.raises(RuntimeError):
        env.reset()


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"map_name": "MMM2"}, ["'MMM2'", "3m", "smacv2_5_units"]),
        ({"map_name": "3m", "reward": "dense"}, ["'dense'", "smac", "smac_negative", "smax"]),
        ({"map_name": "3m", "episode_limit": 0}, ["episode_limit", "0"]),
        ({"map_name": "3m", "episode_limit": -3}, ["-3"]),
        ({"map_name": "3m", "enemy_attack_mode": "weakest"}, ["'weakest'", "closest"]),
    ],
)
def test_config_errors_are_one_line(kwargs: dict, fragments: list[str]) -> None:
    for make in (smax_env_info, lambda **kw: get_env_info("smax", **kw), lambda **kw: SMAXVecEnv(seeds=[0], **kw)):
        with pytest.raises(EnvConfigError) as err:
            make(**kwargs)
        message = str(err.value)
        assert "\n" not in message
        assert all(f in message for f in fragments), message


def test_environment_defaults_set() -> None:
    import os

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "JAX_PLATFORMS" in os.environ and "TF_CPP_MIN_LOG_LEVEL" in os.environ
