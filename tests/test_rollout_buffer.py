"""Rollout bookkeeping and the episode replay buffer, checked exactly on a scripted environment."""

from __future__ import annotations

import pytest
import torch
from scripted_env import ScriptedVecEnv

from acorm_pl.data import EpisodeReplayBuffer, collect_rollout


class CountingActor:
    """Acts a = (step + agent) % 3 and records what it was shown."""

    def __init__(self) -> None:
        self.seen_last_actions: list[torch.Tensor] = []

    def initial_state(self, n_envs: int) -> torch.Tensor:
        return torch.zeros(n_envs)

    def act(self, obs, last_actions, avail, hidden, explore):
        self.seen_last_actions.append(last_actions.clone())
        n_agents = obs.shape[1]
        a = (hidden.long().unsqueeze(1) + torch.arange(n_agents)) % 3
        assert bool(avail.gather(-1, a.unsqueeze(-1)).all()), "acted on an unavailable action"
        return a, hidden + 1


@pytest.fixture
def rollout():
    env = ScriptedVecEnv(lengths=[2, 6, 4], won=[True, False, False], limit=6)
    return collect_rollout(env, CountingActor(), explore=True)


def test_rollout_lengths_outcomes_and_masks(rollout):
    assert rollout.lengths.tolist() == [2, 6, 4]
    assert rollout.won.tolist() == [True, False, False]
    assert rollout.truncated.tolist() == [False, True, False]  # env 1 hit the limit of 6
    ep = rollout.episodes
    assert ep.max_t == 6 and ep.obs.shape == (3, 7, 2, 3) and ep.state.shape == (3, 7, 2)
    expected_filled = torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(ep.filled, expected_filled)
    assert torch.equal(ep.reward, expected_filled)  # reward 1 per real step, 0 in padding
    # terminal flag only on the last step of terminated episodes; the truncated one never terminates
    expected_term = torch.zeros(3, 6)
    expected_term[0, 1] = expected_term[2, 3] = 1
    assert torch.equal(ep.terminated, expected_term)
    assert rollout.returns.tolist() == [2.0, 6.0, 4.0]
    assert rollout.discarded == 0 and rollout.n_episodes == 3 and rollout.env_steps == 12


def test_rollout_keeps_final_observation_and_zeroes_padding(rollout):
    ep = rollout.episodes
    # obs[.., t, :, 0] = t up to and including the observation after the last step
    assert ep.obs[0, :3, 0, 0].tolist() == [0, 1, 2] and ep.obs[0, 3:].abs().sum() == 0
    assert ep.obs[2, :5, 0, 0].tolist() == [0, 1, 2, 3, 4] and ep.obs[2, 5:].abs().sum() == 0
    assert not ep.avail_actions[0, 3:].any() and ep.avail_actions[0, :3, :, :3].all()
    assert ep.actions[0, 2:].abs().sum() == 0  # no actions stored past the end


def test_rollout_feeds_last_actions_in_step():
    env = ScriptedVecEnv(lengths=[3, 3], won=[False, False], limit=4)
    actor = CountingActor()
    r = collect_rollout(env, actor, explore=False)
    assert (actor.seen_last_actions[0] == -1).all()  # no previous action at t = 0
    for t in range(1, 3):  # a_{t-1} is exactly what was executed at t-1
        assert torch.equal(actor.seen_last_actions[t], r.episodes.actions[:, t - 1])


def test_buffer_insert_sample_truncates_to_longest(rollout):
    buf = EpisodeReplayBuffer(_info(), capacity=5)
    buf.add(rollout.episodes, rollout.lengths)
    assert len(buf) == 3 and buf.can_sample(3) and not buf.can_sample(4)
    batch = buf.sample(3)
    assert batch.max_t == 6
    short = rollout.episodes.truncate(4)
    buf2 = EpisodeReplayBuffer(_info(), capacity=5)
    buf2.add(short, rollout.lengths.clamp(max=4))
    b2 = buf2.sample(3)
    assert b2.max_t == 4 and b2.obs.shape[1] == 5
    # every sampled episode matches what was stored, mask included
    order = b2.obs[:, 0, 0, 1].long()  # obs[..., 1] holds the env index
    assert torch.equal(b2.filled, short.filled[order])


def _info():
    return ScriptedVecEnv([1], [False], limit=6).info


def test_buffer_is_fifo_and_preallocated(rollout):
    buf = EpisodeReplayBuffer(_info(), capacity=4)
    assert buf.nbytes == sum(t.numel() * t.element_size() for t in buf.storage.values()) + 2 * 4 * 8
    # one step ring: room for 4 episodes at the limit of 6 steps, each with its final observation, + a zero slot
    assert buf.storage["obs"].dtype == torch.float32 and buf.storage["obs"].shape == (4 * 7 + 1, 2, 3)
    buf.add(rollout.episodes, rollout.lengths)
    buf.add(rollout.episodes, rollout.lengths)  # the two oldest episodes make room
    assert len(buf) == 4 and buf.episodes_added == 6 and buf.evicted_early == 0
    assert buf.lengths.tolist() == [4, 2, 6, 4]  # oldest first
    stored = buf.get(torch.arange(4))
    assert stored.filled[0].tolist() == [1, 1, 1, 1, 0, 0] and stored.obs[0, 5:].abs().sum() == 0
    assert stored.obs[:, 0, 0, 1].tolist() == [2, 0, 1, 2]  # obs[..., 1] holds the env index


def test_buffer_state_dict_round_trip(rollout):
    buf = EpisodeReplayBuffer(_info(), capacity=8, seed=3)
    buf.add(rollout.episodes, rollout.lengths)
    buf.sample(2)
    state = buf.state_dict()
    restored = EpisodeReplayBuffer(_info(), capacity=8, seed=99)
    restored.load_state_dict(state)
    assert (len(restored), restored.used, restored.episodes_added) == (3, 15, 3)
    for k in buf.storage:
        assert torch.equal(buf.storage[k][:15], restored.storage[k][:15])
    a, b = buf.sample(2), restored.sample(2)  # same RNG state -> same draws
    assert torch.equal(a.obs, b.obs) and torch.equal(a.actions, b.actions)


def test_buffer_rejects_bad_capacity_and_mismatched_checkpoint(rollout):
    with pytest.raises(ValueError, match="capacity"):
        EpisodeReplayBuffer(_info(), capacity=0)
    buf = EpisodeReplayBuffer(_info(), capacity=8)
    buf.add(rollout.episodes, rollout.lengths)
    with pytest.raises(ValueError, match="capacity 8 differs"):
        EpisodeReplayBuffer(_info(), capacity=4).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="cannot sample 9"):
        buf.sample(9)


def test_buffer_add_of_no_episodes_is_a_no_op(rollout):
    buf = EpisodeReplayBuffer(_info(), capacity=4)
    buf.add(rollout.episodes, rollout.lengths)
    before = {k: v.clone() for k, v in buf.storage.items()}
    empty = rollout.episodes.truncate(0)
    buf.add(empty.select(torch.arange(0)), rollout.lengths[:0])
    assert (len(buf), buf.used, buf.episodes_added) == (3, 15, 3)
    assert all(torch.equal(before[k], buf.storage[k]) for k in before)


class FirstAvailable:
    """Takes each agent's first available action (a dead agent's only one, 0)."""

    def initial_state(self, n_envs: int) -> None:
        return None

    def act(self, obs, last_actions, avail, hidden, explore):
        return avail.int().argmax(-1), hidden


def test_alive_as_the_environment_reports_it_through_rollout_and_buffer():
    # the last agent of copy 0 dies at step 1, of copy 2 at step 3; copy 1's lives on
    env = ScriptedVecEnv(lengths=[2, 6, 4], won=[True, False, False], limit=6, deaths=[1, None, 3])
    r = collect_rollout(env, FirstAvailable(), explore=True)
    alive = r.episodes.alive
    assert alive.dtype == torch.bool and alive.shape == (3, 7, 2)
    assert alive[:, :, 0].tolist() == [[True] * 3 + [False] * 4, [True] * 7, [True] * 5 + [False] * 2]
    assert alive[:, :, 1].tolist() == [[True] + [False] * 6, [True] * 7, [True] * 3 + [False] * 4]
    assert torch.equal(alive[:, :-1] & r.episodes.filled.bool().unsqueeze(-1),
                       (r.episodes.avail_actions[:, :-1].sum(-1) > 1) & r.episodes.filled.bool().unsqueeze(-1))
    buf = EpisodeReplayBuffer(_info(), capacity=4)
    buf.add(r.episodes, r.lengths)
    assert torch.equal(buf.get(torch.arange(3)).alive, alive)
    restored = EpisodeReplayBuffer(_info(), capacity=4)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.sample(3).alive.sum(), alive.sum())
