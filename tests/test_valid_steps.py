"""The recurrent encoders skip padded steps (length buckets) and run in bf16 under autocast; neither may
change what the algorithms learn: same losses and gradients as the padded float32 computation."""

from __future__ import annotations

import pytest
import torch
from sizes import SMALL

import acorm_pl.nets.agent as agent_nets
from acorm_pl.algos import ACORM, ACORMMAPPO, MAPPO, QMIX
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo
from acorm_pl.nets.agent import RecurrentEncoder, length_buckets

INFO = EnvInfo(n_agents=3, n_actions=6, obs_dim=10, state_dim=12, episode_limit=40)


def _mixed_batch(b: int = 24, t: int = 40) -> EpisodeBatch:
    """Episodes of 3..40 steps: a third or more of the padded [B, T] grid is padding."""
    g = torch.Generator().manual_seed(3)
    n, a = INFO.n_agents, INFO.n_actions
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    lengths[0] = t
    steps = torch.arange(t)
    filled = (steps < lengths[:, None]).float()
    avail = torch.ones(b, t + 1, n, a, dtype=torch.bool)
    avail[:, :, 1, 1:] = torch.arange(t + 1)[None, :, None] < (lengths[:, None, None] // 2)  # agent 1 dies
    avail &= (torch.arange(t + 1)[None, :] <= lengths[:, None])[..., None, None]
    avail[..., 0] |= ~avail.any(-1)  # the final observation of an episode still has the no-op
    terminated = torch.zeros(b, t)
    terminated[torch.arange(b), lengths - 1] = (lengths % 2).float()  # every other episode is truncated
    actions = torch.multinomial(avail[:, :-1].reshape(-1, a).float(), 1, generator=g).view(b, t, n)
    return EpisodeBatch(obs=torch.randn(b, t + 1, n, INFO.obs_dim, generator=g),
                        state=torch.randn(b, t + 1, INFO.state_dim, generator=g), avail_actions=avail,
                        actions=actions * filled.long()[..., None], reward=torch.rand(b, t, generator=g) * filled,
                        terminated=terminated, filled=filled, alive=alive_from_avail(avail))


def _loss(model, batch: EpisodeBatch) -> torch.Tensor:
    if isinstance(model, QMIX):
        return model.td_loss(batch)[0]
    old, advantages, returns, _ = model.prepare(batch)
    new = model.evaluate(batch)
    mask = model.loss_mask(batch)
    return (-(new.log_probs * advantages * mask).sum() + ((new.values[:, :-1] - returns) ** 2 * mask[..., :1]).sum())


def _loss_and_grads(model, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = _loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls, kwargs", [(QMIX, {"embed_dim": 16, "td_lambda": 0.6}), (ACORM, SMALL),
                                         (MAPPO, {"embed_dim": 16}), (ACORMMAPPO, SMALL)])
def test_skipping_padded_steps_keeps_loss_and_gradients(cls, kwargs, monkeypatch):
    torch.manual_seed(0)
    model = cls(env_info=INFO.as_dict(), **kwargs)
    batch = _mixed_batch()
    n_seq = batch.batch_size * INFO.n_agents
    monkeypatch.setattr(agent_nets, "STEP_OVERHEAD_ROWS", 0)  # group even this small batch
    assert length_buckets(batch.obs_lengths.repeat_interleave(INFO.n_agents), batch.max_t + 1) is not None
    loss, grads = _loss_and_grads(model, batch)
    monkeypatch.setattr(agent_nets, "length_buckets", lambda *args, **kw: None)  # every step, as before
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    assert n_seq > 16 and torch.isfinite(loss)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_bucketed_encoder_matches_the_padded_one_on_valid_steps(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(agent_nets, "STEP_OVERHEAD_ROWS", 0)
    enc = RecurrentEncoder(5, 8)
    x, lengths = torch.randn(64, 30, 5), torch.randint(1, 31, (64,))
    out, last = enc(x, lengths=lengths)
    ref, _ = enc(x)
    valid = torch.arange(30)[None, :] < lengths[:, None]
    assert torch.allclose(out[valid], ref[valid], atol=1e-6)
    groups = length_buckets(lengths, 30)
    assert groups is not None and sum(int(lengths[g].max()) * len(g) for g in groups) < 0.85 * 30 * 64
    for g in groups:  # each group stops at its longest sequence: the steps after it are never computed
        assert torch.all(out[g, int(lengths[g].max()):] == 0)
    assert torch.allclose(last, ref[torch.arange(64), lengths - 1], atol=1e-6)
    assert length_buckets(torch.full((64,), 30), 30) is None  # nothing to skip: one call, as before


def test_gru_runs_in_bf16_under_autocast_and_trains_float32_weights():
    torch.manual_seed(0)
    enc = RecurrentEncoder(5, 8)
    x = torch.randn(4, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, last = enc(x)
    assert out.dtype == torch.bfloat16 and enc.gru.weight_hh_l0.dtype == torch.float32
    out.float().sum().backward()
    assert enc.gru.weight_hh_l0.grad.dtype == torch.float32 and enc.gru.weight_hh_l0.grad.abs().sum() > 0
    ref, _ = enc(x)
    assert torch.allclose(out.float(), ref, atol=5e-2)  # bf16 keeps ~3 significant digits


def test_length_buckets_pay_for_the_fixed_cost_of_a_gru_step():
    g = torch.Generator().manual_seed(0)
    # QMIX on 3m: 32 episodes x 3 agents of 20..60 steps. Four groups of 24 rows would run 4 shorter GRUs whose
    # fixed per-step cost outweighs the skipped padding: one call.
    small = torch.randint(20, 61, (32,), generator=g).repeat_interleave(3)
    small[0] = 60
    assert length_buckets(small, 60) is None
    # ACORM on 3s5z: 32 episodes x 8 agents, half of them short: grouping skips most of the padding.
    large = torch.cat([torch.randint(25, 41, (16,), generator=g), torch.randint(120, 151, (16,), generator=g)])
    large[-1] = 150
    groups = length_buckets(large.repeat_interleave(8), 150)
    assert groups is not None
    cost = sum(int(large.repeat_interleave(8)[i].max()) * (len(i) + agent_nets.STEP_OVERHEAD_ROWS) for i in groups)
    assert cost <= 0.85 * 150 * (256 + agent_nets.STEP_OVERHEAD_ROWS)
    assert sorted(torch.cat(groups).tolist()) == list(range(256))  # every sequence exactly once
