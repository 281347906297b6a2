"""QMIX equations against hand-computed values, masks, monotonicity and where gradients flow."""

from __future__ import annotations

import pytest
import torch

from acorm_pl.algos import QMIX
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo
from acorm_pl.losses import (
    double_q_next_values,
    epsilon_greedy,
    greedy_actions,
    masked_td_loss,
    td_lambda_targets,
    td_targets,
)
from acorm_pl.nets import QMixer, agent_inputs, shift_actions

INFO = EnvInfo(n_agents=3, n_actions=5, obs_dim=4, state_dim=6, episode_limit=7)


def test_double_q_chooses_with_online_and_evaluates_with_target():
    online = torch.tensor([[1.0, 3.0], [2.0, 0.0]])  # agent 0 prefers a1, agent 1 prefers a0
    target = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    all_avail = torch.ones(2, 2, dtype=torch.bool)
    assert double_q_next_values(online, target, all_avail).tolist() == [20.0, 30.0]
    assert double_q_next_values(online, target, all_avail, double_q=False).tolist() == [20.0, 40.0]
    avail = torch.tensor([[True, False], [True, True]])  # agent 0's preferred action is unavailable
    assert double_q_next_values(online, target, avail).tolist() == [10.0, 30.0]


def test_td_targets_terminal_vs_truncated():
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    next_q = torch.tensor([[5.0, 7.0, 11.0]])
    # step 1 is a true terminal (no bootstrap); step 2 is a time-limit truncation (bootstraps)
    terminated = torch.tensor([[0.0, 1.0, 0.0]])
    y = td_targets(reward, terminated, next_q, gamma=0.9)
    assert torch.allclose(y, torch.tensor([[1 + 0.9 * 5, 2.0, 3 + 0.9 * 11]]))
    assert y.dtype == torch.float32


def test_td_lambda_targets_by_hand():
    r, v = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])
    none, full = torch.zeros(1, 3), torch.ones(1, 3)
    # gamma = lambda = 0.5: y2 = 3 + .5*30 = 18; y1 = 2 + .5*(.5*20 + .5*18) = 11.5; y0 = 1 + .5*(.5*10 + .5*11.5)
    y = td_lambda_targets(r, none, full, v, gamma=0.5, td_lambda=0.5)
    assert torch.allclose(y, torch.tensor([[6.375, 11.5, 18.0]]))
    # a terminal at t=1 cuts the return: y1 = 2, y0 = 1 + .5*(.5*10 + .5*2) = 4
    y = td_lambda_targets(r, torch.tensor([[0.0, 1.0, 0.0]]), full, v, gamma=0.5, td_lambda=0.5)
    assert torch.allclose(y[:, :2], torch.tensor([[4.0, 2.0]]))
    # a 2-step truncated episode: its last step bootstraps fully, y1 = 2 + .5*20 = 12, y0 = 1 + .5*(5 + 6) = 6.5
    y = td_lambda_targets(r, none, torch.tensor([[1.0, 1.0, 0.0]]), v, gamma=0.5, td_lambda=0.5)
    assert torch.allclose(y[:, :2], torch.tensor([[6.5, 12.0]]))
    assert torch.allclose(td_lambda_targets(r, none, full, v, 0.5, 0.0), td_targets(r, none, v, 0.5))


def test_masked_td_loss_ignores_padding():
    q_tot = torch.tensor([[6.0, 3.0, 100.0]])
    targets = torch.tensor([[5.5, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_td_loss(q_tot, targets, mask).item() == pytest.approx((0.5**2 + 1.0**2) / 2)
    assert masked_td_loss(q_tot.bfloat16(), targets, mask).dtype == torch.float32


def test_greedy_masking_is_finite_in_low_precision():
    q = torch.tensor([[5.0, 1.0, -3.0]], dtype=torch.bfloat16)
    avail = torch.tensor([[False, False, True]])
    assert greedy_actions(q, avail).item() == 2
    assert greedy_actions(q.half(), avail).item() == 2


def test_epsilon_greedy_only_picks_available_actions():
    gen = torch.Generator().manual_seed(0)
    q = torch.tensor([10.0, 0.0, 0.0, 0.0]).expand(2000, 4)
    avail = torch.tensor([False, True, False, True]).expand(2000, 4)
    random = epsilon_greedy(q, avail, 1.0, gen)
    assert set(random.unique().tolist()) == {1, 3}
    assert torch.equal(epsilon_greedy(q, avail, 0.0, gen), torch.ones(2000, dtype=torch.long))
    half = epsilon_greedy(q, avail, 0.5, gen)
    frac_random = (half == 3).float().mean().item()  # a3 only comes from exploration (half of the time)
    assert 0.2 < frac_random < 0.3
    with pytest.raises(ValueError, match="no available action"):
        epsilon_greedy(q[:1], torch.zeros(1, 4, dtype=torch.bool), 0.5, gen)


def test_mixer_is_monotonic_in_every_agent_q():
    torch.manual_seed(1)
    mixer = QMixer(n_agents=4, cond_dim=6, embed_dim=8, hypernet_embed=16)
    qs = torch.randn(256, 4, requires_grad=True)
    cond = torch.randn(256, 6) * 3
    mixer(qs, cond).sum().backward()
    assert (qs.grad >= 0).all() and (qs.grad > 0).any()
    assert mixer(qs, cond).shape == (256,)


def test_agent_inputs_last_action_and_ids():
    obs = torch.zeros(1, 2, 3, 4)  # [B, T, N, obs]
    actions = torch.tensor([[[1, 4, 0]]])  # [B, T=1, N]
    last = shift_actions(actions)  # [B, 2, N]: -1 then the actions
    assert last.tolist() == [[[-1, -1, -1], [1, 4, 0]]]
    x = agent_inputs(obs, last, n_actions=5, add_agent_id=True)
    assert x.shape == (1, 2, 3, 4 + 5 + 3)
    assert x[0, 0, :, 4:9].abs().sum() == 0  # no previous action at t = 0
    assert x[0, 1, 1, 4:9].tolist() == [0, 0, 0, 0, 1]
    assert torch.equal(x[0, 1, :, 9:], torch.eye(3))


def _batch(b: int = 4, t: int = 5, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    n, a = INFO.n_agents, INFO.n_actions
    filled = torch.ones(b, t)
    filled[0, 3:] = 0
    terminated = torch.zeros(b, t)
    terminated[0, 2] = 1
    obs = torch.randn(b, t + 1, n, INFO.obs_dim, generator=g)
    state = torch.randn(b, t + 1, INFO.state_dim, generator=g)
    avail = (torch.rand(b, t + 1, n, a, generator=g) > 0.3) | torch.eye(a, dtype=torch.bool)[0]
    return EpisodeBatch(
        obs=obs,
        state=state,
        avail_actions=avail,
        actions=torch.randint(0, a, (b, t, n), generator=g),
        reward=torch.rand(b, t, generator=g) * filled,
        terminated=terminated,
        filled=filled,
        alive=alive_from_avail(avail),
    )


def test_td_loss_gradients_reach_online_networks_only():
    model = QMIX(env_info=INFO.as_dict())
    loss, stats = model.td_loss(_batch())
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert set(stats) == {"q_taken_mean", "target_mean"}


@pytest.mark.parametrize("td_lambda", [0.0, 0.6])
def test_td_loss_ignores_padded_steps_and_respects_terminals(td_lambda):
    model = QMIX(env_info=INFO.as_dict(), td_lambda=td_lambda)
    batch = _batch()
    base, _ = model.td_loss(batch)
    batch.reward[0, 4] = 1e6  # padding of episode 0
    batch.obs[0, 5] = 123.0  # observation past its end (and past the terminal)
    padded, _ = model.td_loss(batch)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    batch.terminated[0, 2] = 0  # turning the terminal into a truncation changes the target
    truncated, _ = model.td_loss(batch)
    assert truncated.item() != pytest.approx(base.item(), rel=1e-6)


def test_soft_and_hard_target_updates():
    soft = QMIX(env_info=INFO.as_dict(), target_update="soft", tau=0.25)
    with torch.no_grad():
        for p in soft.agent.parameters():
            p.add_(1.0)
    before = [p.clone() for p in soft.target_agent.parameters()]
    soft.update_targets()
    for b, t, o in zip(before, soft.target_agent.parameters(), soft.agent.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * o)
    hard = QMIX(env_info=INFO.as_dict(), target_update="hard", target_update_interval=3)
    with torch.no_grad():
        for p in hard.mixer.parameters():
            p.add_(1.0)
    for step in range(1, 4):
        hard.n_updates.fill_(step)
        hard.update_targets()
        same = all(torch.equal(t, o) for t, o in zip(hard.target_mixer.parameters(), hard.mixer.parameters(),
                                                      strict=True))
        assert same == (step == 3)


def test_act_is_greedy_over_available_actions_without_exploration():
    model = QMIX(env_info=INFO.as_dict())
    obs = torch.randn(2, 3, INFO.obs_dim)
    avail = torch.zeros(2, 3, 5, dtype=torch.bool)
    avail[..., 2] = True
    actions, hidden = model.act(obs, torch.full((2, 3), -1), avail, model.initial_state(2), explore=False)
    assert actions.tolist() == [[2, 2, 2], [2, 2, 2]] and hidden.shape == (2, 3, 64)


def test_step_by_step_acting_matches_whole_sequence_learning():
    """The actor (one step at a time) and the learner (whole sequences through nn.GRU) compute the same Q."""
    model = QMIX(env_info=INFO.as_dict())
    batch = _batch(b=2, t=4)
    x = model.inputs(batch.obs, shift_actions(batch.actions))
    q_seq = model.agent_forward(x).q
    h = model.initial_state(2)
    for t in range(4):
        out = model.agent_forward(x[:, t : t + 1], h0=h)
        h = out.hidden
        assert torch.allclose(out.q[:, 0], q_seq[:, t], atol=1e-5)


@pytest.mark.parametrize("bad", [{"gamma": 1.5}, {"target_update": "polyak"}, {"lr": 0.0}, {"hypernet_layers": 3},
                                 {"td_lambda": -0.1}])
def test_invalid_model_values_fail_with_one_line(bad):
    with pytest.raises(ValueError) as err:
        QMIX(env_info=INFO.as_dict(), **bad)
    message = str(err.value)
    assert "\n" not in message and str(list(bad.values())[0]) in message
