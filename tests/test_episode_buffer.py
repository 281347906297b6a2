"""The step-ring replay buffer: exact round trips of variable-length episodes, FIFO eviction across the ring's
wrap-around, padded samples, checkpoints, the memory formula and the half-precision switch."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_errors import assert_one_line_error
from scripted_env import ScriptedVecEnv

from acorm_pl import envs
from acorm_pl.algos import QMIX
from acorm_pl.data import EpisodeBatch, EpisodeReplayBuffer, RolloutDataModule
from acorm_pl.data.episode_buffer import alive_from_avail, buffer_nbytes, pack_bits, step_nbytes, unpack_bits
from acorm_pl.envs.base import EnvInfo

INFO = EnvInfo(n_agents=3, n_actions=11, obs_dim=5, state_dim=4, episode_limit=9)
MMM2 = EnvInfo(n_agents=10, n_actions=18, obs_dim=176, state_dim=322, episode_limit=180)
FIELDS = ("obs", "state", "avail_actions", "actions", "reward", "terminated", "filled", "alive")


def make_episodes(lengths: list[int], first_id: int = 0, info: EnvInfo = INFO, seed: int = 0) -> EpisodeBatch:
    """Random whole episodes padded to their longest, zero past each end (as the rollout hands them over).
    obs[b, :, :, 0] holds the episode's id ``first_id + b`` so that samples can be traced back."""
    g = torch.Generator().manual_seed(seed + first_id)
    b, t = len(lengths), max(lengths)
    n, a = info.n_agents, info.n_actions
    lengths_t = torch.tensor(lengths)
    obs_live = (torch.arange(t + 1) <= lengths_t.unsqueeze(1)).float()  # [B, T+1]
    step_live = (torch.arange(t) < lengths_t.unsqueeze(1)).float()  # [B, T]
    obs = (torch.rand(b, t + 1, n, info.obs_dim, generator=g) * 2 - 1)
    obs[..., 0] = (torch.arange(b) + first_id).float().view(b, 1, 1)
    # unrelated to the available actions, so a round trip can only be exact if alive is stored
    alive = (torch.rand(b, t + 1, n, generator=g) < 0.7) & obs_live.bool().unsqueeze(-1)
    terminated = torch.zeros(b, t)
    terminated[torch.arange(b), lengths_t - 1] = (torch.rand(b, generator=g) < 0.5).float()
    return EpisodeBatch(
        obs=obs * obs_live.view(b, t + 1, 1, 1),
        state=(torch.rand(b, t + 1, info.state_dim, generator=g) * 2 - 1) * obs_live.unsqueeze(-1),
        avail_actions=(torch.rand(b, t + 1, n, a, generator=g) < 0.6) & obs_live.bool().view(b, t + 1, 1, 1),
        actions=torch.randint(0, a, (b, t, n), generator=g) * step_live.long().unsqueeze(-1),
        reward=torch.randn(b, t, generator=g) * step_live,
        terminated=terminated,
        filled=step_live,
        alive=alive,
    )


def assert_same(a: EpisodeBatch, b: EpisodeBatch) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_pack_bits_round_trips_any_action_count():
    for n_actions in (1, 8, 11, 18, 30):
        flags = torch.rand(4, 3, n_actions) < 0.5
        packed = pack_bits(flags)
        assert packed.dtype == torch.uint8 and packed.shape == (4, 3, -(-n_actions // 8))
        assert torch.equal(unpack_bits(packed, n_actions), flags)


def test_variable_length_episodes_round_trip_exactly():
    lengths = [1, 9, 4, 7, 2]
    episodes = make_episodes(lengths)
    buf = EpisodeReplayBuffer(INFO, capacity=8)
    buf.add(episodes, torch.tensor(lengths))
    assert buf.lengths.tolist() == lengths and buf.used == sum(lengths) + len(lengths)
    assert_same(buf.get(torch.arange(5)), episodes)  # float32 / bool / int64 / float32 as the algorithms take
    assert_same(buf.get(torch.tensor([2, 0])), episodes.select(torch.tensor([2, 0])).truncate(4))


def test_fifo_eviction_wraps_around_the_step_ring():
    capacity, steps = 5, 20  # 25 slots: about 3 episodes of up to 9 steps fit
    buf = EpisodeReplayBuffer(INFO, capacity=capacity, steps=steps)
    added: list[tuple[int, EpisodeBatch]] = []
    g = torch.Generator().manual_seed(1)
    wrapped = False
    for round_ in range(12):
        lengths = torch.randint(1, INFO.episode_limit + 1, (int(torch.randint(1, 4, (1,), generator=g)),),
                                generator=g).tolist()
        first = len(added)
        episodes = make_episodes(lengths, first_id=first)
        buf.add(episodes, torch.tensor(lengths))
        added += [(n, episodes.select(torch.tensor([i])).truncate(n)) for i, n in enumerate(lengths)]
        # FIFO: the newest episodes, as many as fit in the episode count and in the ring
        kept, slots = [], 0
        for n, ep in reversed(added):
            if len(kept) == capacity or slots + n + 1 > buf.slots:
                break
            kept.insert(0, (n, ep))
            slots += n + 1
        assert buf.lengths.tolist() == [n for n, _ in kept], round_
        assert_same(buf.get(torch.arange(len(buf))), EpisodeBatch.cat([ep for _, ep in kept]))
        ep_slots = buf._episode_slots(torch.arange(len(buf)))
        wrapped |= bool(((buf.starts[ep_slots] + buf.episode_lengths[ep_slots] + 1) > buf.slots).any())
    assert wrapped, "no episode crossed the end of the ring: the test did not exercise the wrap-around"
    assert buf.evicted_early > 0 and buf.episodes_added == len(added)


def test_count_only_eviction_when_the_ring_holds_capacity_episodes_at_the_limit():
    buf = EpisodeReplayBuffer(INFO, capacity=3)  # steps=None: 3 x 9 steps
    for i in range(4):
        buf.add(make_episodes([9, 9], first_id=2 * i), torch.tensor([9, 9]))
    assert len(buf) == 3 and buf.evicted_early == 0
    assert buf.get(torch.arange(3)).obs[:, 0, 0, 0].tolist() == [5.0, 6.0, 7.0]
    buf.add(make_episodes([1, 2, 3, 4, 5], first_id=8), torch.tensor([1, 2, 3, 4, 5]))  # more than capacity at once
    assert buf.lengths.tolist() == [3, 4, 5] and buf.get(torch.arange(3)).obs[:, 0, 0, 0].tolist() == [10, 11, 12]


def test_sample_is_padded_to_its_longest_episode():
    lengths = [3, 9, 1, 6, 2, 5]
    buf = EpisodeReplayBuffer(INFO, capacity=6, seed=4)
    buf.add(make_episodes(lengths), torch.tensor(lengths))
    for _ in range(5):
        batch = buf.sample(3)
        ids = batch.obs[:, 0, 0, 0].long()
        assert len(set(ids.tolist())) == 3  # distinct episodes
        picked = torch.tensor(lengths)[ids]
        assert batch.max_t == int(picked.max()) and batch.obs.shape == (3, batch.max_t + 1, 3, 5)
        assert batch.state.shape == (3, batch.max_t + 1, 4) and batch.avail_actions.shape[-1] == INFO.n_actions
        assert torch.equal(batch.filled.sum(1), picked.float())
        assert_same(batch, EpisodeBatch.cat([make_episodes(lengths).select(ids[i:i + 1]).truncate(int(picked[i]))
                                             for i in range(3)]))


def test_state_dict_round_trip_after_wrap_is_exact_and_stays_in_step():
    buf = EpisodeReplayBuffer(INFO, capacity=6, steps=24, seed=3)
    for i in range(6):
        lengths = [(3 * i + j) % 9 + 1 for j in range(3)]
        buf.add(make_episodes(lengths, first_id=3 * i), torch.tensor(lengths))
    assert buf.evicted_early > 0 and buf.head != 0  # FIFO has evicted and the ring has wrapped
    buf.sample(2)
    saved = io.BytesIO()
    torch.save(buf.state_dict(), saved)  # through serialisation, as in a checkpoint
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert state["steps"]["actions"].dtype == torch.uint8 and state["steps"]["obs"].shape[0] == buf.used
    restored = EpisodeReplayBuffer(INFO, capacity=6, steps=24, seed=99)
    restored.load_state_dict(state)
    for b in (buf, restored):
        assert (len(b), b.used, b.episodes_added, b.evicted_early) == (len(buf), buf.used, 18, buf.evicted_early)
    assert_same(restored.get(torch.arange(len(buf))), buf.get(torch.arange(len(buf))))
    assert_same(restored.sample(3), buf.sample(3))  # same RNG state -> same draws
    more = make_episodes([9, 8, 2], first_id=100)
    for b in (buf, restored):  # the same evictions follow
        b.add(more, torch.tensor([9, 8, 2]))
    assert restored.lengths.tolist() == buf.lengths.tolist()
    assert_same(restored.get(torch.arange(len(buf))), buf.get(torch.arange(len(buf))))


def test_checkpoint_of_the_padded_layout_loads():
    lengths = [4, 9, 2, 6]
    episodes = make_episodes(lengths)
    assert episodes.max_t == INFO.episode_limit  # the earlier layout padded every episode to the limit
    # 4 slots, full, written round-robin so that the oldest episode sits at insert_pos 1
    order = torch.tensor([3, 0, 1, 2])
    old = {"storage": {k: getattr(episodes, k)[order] for k in FIELDS if k != "alive"},  # it had no alive
           "lengths": torch.tensor(lengths)[order], "insert_pos": 1, "size": 4, "episodes_added": 7, "capacity": 4,
           "generator": torch.Generator().manual_seed(5).get_state()}
    buf = EpisodeReplayBuffer(INFO, capacity=4, steps=30)
    buf.load_state_dict(old)
    assert buf.lengths.tolist() == lengths and buf.episodes_added == 7
    assert_same(buf.get(torch.arange(4)), replace(episodes, alive=alive_from_avail(episodes.avail_actions)))


def test_checkpoint_from_before_alive_was_stored_derives_it_from_the_available_actions():
    lengths = [4, 9, 2]
    episodes = make_episodes(lengths)
    buf = EpisodeReplayBuffer(INFO, capacity=4, steps=30)
    buf.add(episodes, torch.tensor(lengths))
    state = buf.state_dict()
    del state["steps"]["alive"]  # as an older version saved it
    old = EpisodeReplayBuffer(INFO, capacity=4, steps=30)
    old.load_state_dict(state)
    derived = alive_from_avail(episodes.avail_actions)  # the rule the algorithms used then: > 1 available action
    assert_same(old.get(torch.arange(3)), replace(episodes, alive=derived))
    assert not torch.equal(derived, episodes.alive)  # a new buffer keeps what the environment said instead
    assert_same(buf.get(torch.arange(3)), episodes)
    assert torch.equal(alive_from_avail(torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]]).bool()),
                       torch.tensor([False, True, False]))


def test_a_batch_refuses_alive_flags_that_would_broadcast():
    episodes = make_episodes([3, 5])
    given = {k: getattr(episodes, k) for k in FIELDS}
    shapes = r"alive must be a bool tensor of shape \(2, 6, 3\).*got torch.bool \(2, 6, 1\)"
    with pytest.raises(ValueError, match=shapes):
        EpisodeBatch(**{**given, "alive": given["alive"][..., :1]})  # [B, T+1, 1] would broadcast over agents
    with pytest.raises(ValueError, match="got torch.float32"):
        EpisodeBatch(**{**given, "alive": given["alive"].float()})
    with pytest.raises(TypeError, match="alive"):  # no longer inferred: the environment reports it
        EpisodeBatch(**{k: v for k, v in given.items() if k != "alive"})
    built = EpisodeBatch(**given)
    assert built.truncate(2).alive.shape == (2, 3, 3) and EpisodeBatch.cat([built, built]).alive.shape == (4, 6, 3)


def test_load_rejects_other_capacity_map_or_too_small_ring():
    buf = EpisodeReplayBuffer(INFO, capacity=4)
    buf.add(make_episodes([9, 9, 9]), torch.tensor([9, 9, 9]))
    with pytest.raises(ValueError, match="capacity 4 differs"):
        EpisodeReplayBuffer(INFO, capacity=5).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="holds 27 steps, more than the 20 configured"):
        EpisodeReplayBuffer(INFO, capacity=4, steps=20).load_state_dict(buf.state_dict())
    other = EnvInfo(**{**INFO.as_dict(), "obs_dim": 6})
    with pytest.raises(ValueError, match="field 'obs'"):
        EpisodeReplayBuffer(other, capacity=4).load_state_dict(buf.state_dict())


def test_add_accepts_whole_episodes_only():
    buf = EpisodeReplayBuffer(INFO, capacity=4)
    ep = make_episodes([3, 5])
    with pytest.raises(ValueError, match="whole episodes"):
        buf.add(ep, torch.tensor([3, 4]))  # filled says 5 steps
    with pytest.raises(ValueError, match="exceeds the episode limit 9"):
        buf.add(make_episodes([10]), torch.tensor([10]))
    assert len(buf) == 0 and buf.used == 0


def test_memory_formula_and_mmm2_figures():
    buf = EpisodeReplayBuffer(INFO, capacity=4, steps=30, obs_dtype="bfloat16")
    # per slot: obs 3x5 + state 4 in 2 bytes, avail 3 x 2 packed bytes, alive 1 packed byte, actions 3 x uint8,
    # reward 4, terminal 1
    per_step = 3 * 5 * 2 + 4 * 2 + 3 * 2 + 1 + 3 + 4 + 1
    assert step_nbytes(INFO, torch.bfloat16) == per_step
    assert buf.nbytes == sum(v.numel() * v.element_size() for v in buf.storage.values()) + 2 * 4 * 8
    assert buf.nbytes == (30 + 4 + 1) * per_step + 64 == buffer_nbytes(INFO, 4, 30, torch.bfloat16)  # + zero slot
    # the target: 5000 MMM2 episodes of 120 steps
    f32 = EpisodeReplayBuffer(MMM2, capacity=5000, steps=600_000, device="meta")
    assert f32.nbytes == 605_001 * (10 * 176 * 4 + 322 * 4 + 10 * 3 + 2 + 10 + 5) + 80_000  # 4.72 GiB; alive 2 bytes
    half = EpisodeReplayBuffer(MMM2, capacity=5000, steps=600_000, device="meta", obs_dtype="float16")
    assert half.nbytes == buffer_nbytes(MMM2, 5000, 600_000, torch.float16) < 4 * 2**30
    assert EpisodeReplayBuffer(MMM2, capacity=5000, device="meta").slots == 5000 * 181  # steps=None: the limit


@pytest.mark.parametrize(("dtype", "rel_bound"), [("float16", 5e-4), ("bfloat16", 4e-3)])
def test_half_precision_observations_bound_the_td_loss_change(dtype, rel_bound):
    lengths = [9, 7, 3, 9, 5, 8]
    episodes = make_episodes(lengths, seed=7)
    full, half = (EpisodeReplayBuffer(INFO, capacity=8, obs_dtype=d) for d in ("float32", dtype))
    for b in (full, half):
        b.add(episodes, torch.tensor(lengths))
    a, b = full.get(torch.arange(6)), half.get(torch.arange(6))
    assert b.obs.dtype == torch.float32 and b.state.dtype == torch.float32
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert (b.obs - a.obs).abs().max() <= eps * a.obs.abs().max() and not torch.equal(a.obs, b.obs)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in FIELDS[2:])  # only obs and states are rounded
    torch.manual_seed(0)
    model = QMIX(env_info=INFO.as_dict(), embed_dim=16, hypernet_embed=16)
    loss_full, loss_half = model.td_loss(a)[0].item(), model.td_loss(b)[0].item()
    assert abs(loss_half - loss_full) <= rel_bound * abs(loss_full), (loss_full, loss_half)


def test_float16_refuses_values_beyond_its_range():
    ep = make_episodes([3])
    ep.state[0, 0, 0] = 1e5
    f16 = EpisodeReplayBuffer(INFO, capacity=2, obs_dtype="float16")
    f16.add(make_episodes([2]), torch.tensor([2]))
    with pytest.raises(ValueError, match="beyond the range of torch.float16"):
        f16.add(ep, torch.tensor([3]))
    assert f16.lengths.tolist() == [2] and f16.used == 3  # nothing changed
    bf = EpisodeReplayBuffer(INFO, capacity=2, obs_dtype="bfloat16")
    bf.add(ep, torch.tensor([3]))
    assert bf.get(torch.tensor([0])).state[0, 0, 0] == 99840.0  # 1e5 to bfloat16's 8 significant bits


def test_datamodule_builds_the_configured_buffer_and_warns_on_early_eviction(monkeypatch):
    def make(map_name, seeds, **kwargs):
        return ScriptedVecEnv([2, 6, 4], [True, False, False])

    monkeypatch.setitem(envs.FAMILIES, "scripted", (lambda map_name, **kw: make(map_name, [0]).info, make))
    dm = RolloutDataModule(env="scripted", map_name="x", n_envs=3, buffer_size=16, batch_size=2,
                           buffer_steps=12, buffer_obs_dtype="bfloat16")
    actor = SimpleNamespace(initial_state=lambda n: torch.zeros(n),
                            act=lambda obs, last, avail, h, explore: (torch.zeros(obs.shape[:2], dtype=torch.long), h))
    dm.trainer = SimpleNamespace(lightning_module=actor, global_rank=0, world_size=1, should_stop=False)
    dm.setup("fit")
    assert dm.buffer.steps == 12 and dm.buffer.obs_dtype == torch.bfloat16 and dm.buffer.slots == 28
    dm.collect()  # 2 + 6 + 4 steps in 15 slots
    assert len(dm.buffer) == 3 and dm.buffer.evicted_early == 0
    with pytest.warns(UserWarning, match=r"12 steps are full at 5 episodes \(< data.buffer_size 16\)"):
        dm.collect()  # 15 more slots: the oldest episode (3 slots) makes room
    assert dm.buffer.lengths.tolist() == [6, 4, 2, 6, 4] and dm.buffer.evicted_early == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.buffer_obs_dtype", "float8"],
         "data.buffer_obs_dtype must be one of float32, float16, bfloat16, got 'float8'"),
        (["--data.buffer_steps", "100"],
         "data.buffer_steps must be null or at least data.batch_size x the episode limit (32 x 60 = 1920"),
    ],
)
def test_bad_buffer_settings_fail_with_one_line(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = str(Path(__file__).resolve().parents[1] / "conf" / "quickstart.yaml")
    assert_one_line_error(["fit", "--config", conf, "--trainer.logger", "false", *args], capsys, expected)
