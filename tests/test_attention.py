"""State GRU, role attention (Eqs. 6-8) and the mixer conditioning of Fig. 1(d)."""

from __future__ import annotations

import math

import torch

from acorm_pl.nets.attention import AttentionMixerInput, RoleAttention, StateEncoder
from acorm_pl.nets.mixers import QMixer

MASK = torch.tensor([[True, False, True, True, False], [False, False, False, False, True]])


def test_weights_sum_to_one_and_masked_agents_get_zero():
    attn = RoleAttention(query_dim=6, role_dim=4, n_heads=2, attn_dim=8, out_dim=3)
    tau, z = torch.randn(2, 6), torch.randn(2, 5, 4)
    out, w = attn(tau, z, MASK)
    assert out.shape == (2, 3) and w.shape == (2, 2, 5)
    assert w.dtype == torch.float32
    assert torch.allclose(w.sum(-1), torch.ones(2, 2))
    assert torch.all(w[~MASK.unsqueeze(1).expand_as(w)] == 0)
    assert torch.all(w[MASK.unsqueeze(1).expand_as(w)] > 0)
    _, w_all = attn(tau, z)
    assert torch.allclose(w_all.sum(-1), torch.ones(2, 2))


def test_padded_role_representations_are_ignored():
    attn = RoleAttention(query_dim=6, role_dim=4, n_heads=2, attn_dim=8, out_dim=3)
    tau, z = torch.randn(2, 6), torch.randn(2, 5, 4)
    out, w = attn(tau, z, MASK)
    z2 = z.clone()
    z2[~MASK] = 1.0e3 * torch.randn_like(z2[~MASK])
    out2, w2 = attn(tau, z2, MASK)
    assert torch.equal(w, w2)
    assert torch.allclose(out, out2, atol=1e-6)


def test_fully_masked_row_gives_zero_weights_without_nan():
    attn = RoleAttention(query_dim=6, role_dim=4, n_heads=2, attn_dim=8, out_dim=3)
    tau, z = torch.randn(2, 6).requires_grad_(True), torch.randn(2, 5, 4)
    mask = torch.tensor([[False] * 5, [True] * 5])
    out, w = attn(tau, z, mask)
    assert torch.all(w[0] == 0) and torch.allclose(w[1].sum(-1), torch.ones(2))
    assert torch.all(out[0] == 0)  # no agent: tau_atten = 0 and W^O has no bias
    out.sum().backward()
    assert torch.isfinite(tau.grad).all()


def test_single_head_matches_the_equations():
    attn = RoleAttention(query_dim=6, role_dim=4, n_heads=1, attn_dim=8, out_dim=3)
    tau, z = torch.randn(6), torch.randn(5, 4)
    out, w = attn(tau, z)
    w_q, w_k, w_v, w_o = (m.weight.T for m in (attn.w_q, attn.w_k, attn.w_v, attn.w_o))
    alpha = torch.softmax((tau @ w_q) @ (z @ w_k).T / math.sqrt(8), dim=-1)  # Eq. (7)
    expected = (alpha @ (z @ w_v)) @ w_o  # Eqs. (6), (8)
    assert torch.allclose(w[0], alpha, atol=1e-6)
    assert torch.allclose(out, expected, atol=1e-6)


def test_heads_use_separate_slices():
    attn = RoleAttention(query_dim=6, role_dim=4, n_heads=2, attn_dim=8, out_dim=3)
    tau, z = torch.randn(6), torch.randn(5, 4)
    out, w = attn(tau, z)
    heads = []
    for h in range(2):
        rows = slice(4 * h, 4 * h + 4)
        q, k, v = attn.w_q.weight[rows] @ tau, z @ attn.w_k.weight[rows].T, z @ attn.w_v.weight[rows].T
        alpha = torch.softmax(k @ q / 2.0, dim=-1)  # sqrt(d_k) = sqrt(4)
        assert torch.allclose(w[h], alpha, atol=1e-6)
        heads.append(alpha @ v)
    assert torch.allclose(out, attn.w_o(torch.cat(heads)), atol=1e-6)


def test_bf16_autocast():
    attn = RoleAttention()
    tau, z = torch.randn(3, 7, 64), torch.randn(3, 7, 5, 64)
    mask = torch.rand(3, 7, 5) > 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = attn(tau, z, mask)
    assert out.shape == (3, 7, 64) and w.shape == (3, 7, 4, 5)
    assert w.dtype == torch.float32 and torch.isfinite(out).all()
    has_agent = mask.any(-1, keepdim=True).expand(3, 7, 4)
    assert torch.allclose(w.sum(-1)[has_agent], torch.ones(int(has_agent.sum())), atol=1e-5)
    assert torch.all(w[~mask.unsqueeze(2).expand_as(w)] == 0)


def test_state_encoder_stepwise_equals_sequence():
    enc = StateEncoder(state_dim=7, embed_dim=16)
    states = torch.randn(3, 6, 7)
    tau, h_n = enc(states)
    assert tau.shape == (3, 6, 16) and h_n.shape == (3, 16)
    h = enc.initial_state(3, torch.device("cpu"))
    steps = []
    for t in range(6):
        step, h = enc(states[:, t : t + 1], h)
        steps.append(step)
    assert torch.allclose(torch.cat(steps, dim=1), tau, atol=1e-6)
    assert torch.allclose(h, h_n, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tau_bf, _ = enc(states)
    assert tau_bf.shape == tau.shape and torch.isfinite(tau_bf).all()


def test_mixer_input_with_and_without_attention():
    b, t, n, s = 2, 4, 5, 9
    states, roles = torch.randn(b, t, s), torch.randn(b, t, n, 64)
    mask = torch.ones(b, t, n, dtype=torch.bool)
    with_mha = AttentionMixerInput(state_dim=s)
    cond, w = with_mha(states, roles, mask)
    assert with_mha.cond_dim == 128 and cond.shape == (b, t, 128) and w.shape == (b, t, 4, n)
    tau, _ = with_mha.state_encoder(states)
    assert torch.allclose(cond[..., 64:], tau)  # Concat(tau_mha, tau)
    assert torch.allclose(cond[..., :64], with_mha.attention(tau, roles, mask)[0], atol=1e-6)

    without = AttentionMixerInput(state_dim=s, attention=False)
    cond2, w2 = without(states)
    assert without.cond_dim == 64 and cond2.shape == (b, t, 64) and w2 is None
    assert not any(isinstance(m, RoleAttention) for m in without.modules())
    n_attention = sum(p.numel() for p in with_mha.attention.parameters())
    n_with, n_without = (sum(p.numel() for p in m.parameters()) for m in (with_mha, without))
    assert n_with - n_without == n_attention

    mixer = QMixer(n_agents=n, cond_dim=with_mha.cond_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond_bf, _ = with_mha(states, roles, mask)
        q_tot = mixer(torch.randn(b, t, n), cond_bf)
    assert q_tot.shape == (b, t) and torch.isfinite(q_tot.float()).all()
