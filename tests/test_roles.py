"""Role encoder, bilinear scores, momentum key encoder (Eq. 5) and where contrastive gradients flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.nets.roles import ContrastiveRoleHead, RoleEncoder


def test_role_encoder_shapes_and_layers():
    enc = RoleEncoder()
    z = enc(torch.randn(2, 3, 5, 128))
    assert z.shape == (2, 3, 5, 64)
    assert (z < 0).any()  # no final sigmoid
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 128), (128, 64)]
    single = RoleEncoder(embed_dim=8, role_dim=4, hidden_dim=0)
    assert [type(m) for m in single.modules()] == [RoleEncoder, nn.Linear]
    assert single(torch.randn(7, 8)).shape == (7, 4)


def test_head_starts_with_identity_and_equal_encoders():
    head = ContrastiveRoleHead(embed_dim=8, role_dim=4, hidden_dim=16)
    assert torch.equal(head.W.detach(), torch.eye(4))
    for k, q in zip(head.key_encoder.parameters(), head.query_encoder.parameters()):
        assert torch.equal(k, q) and k.data_ptr() != q.data_ptr()
        assert not k.requires_grad
    e = torch.randn(3, 5, 8)
    z_k = head.key(e)
    assert not z_k.requires_grad
    assert torch.allclose(head.query(e), z_k)


def test_scores_are_bilinear():
    head = ContrastiveRoleHead(embed_dim=8, role_dim=4, hidden_dim=16)
    with torch.no_grad():
        head.W.copy_(torch.randn(4, 4))
    q, k = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    s = head.scores(q, k)
    assert s.shape == (2, 3, 3)
    for m in range(2):
        for i in range(3):
            for j in range(3):
                assert torch.allclose(s[m, i, j], q[m, i] @ head.W @ k[m, j], atol=1e-6)
    assert torch.allclose(s, torch.einsum("mid,de,mje->mij", q, head.W, k), atol=1e-6)


def test_contrastive_gradient_reaches_query_and_w_only():
    head = ContrastiveRoleHead(embed_dim=8, role_dim=4, hidden_dim=16)
    e = torch.randn(6, 5, 8)
    labels = torch.tensor([0, 0, 1, 1, 2]).expand(6, 5)
    loss, _ = contrastive_role_loss(head(e), labels, torch.ones(6, 5, dtype=torch.bool))
    loss.backward()
    for p in head.query_encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert head.W.grad is not None and head.W.grad.abs().sum() > 0
    for p in head.key_encoder.parameters():
        assert not p.requires_grad and p.grad is None
    trained = {id(p) for p in head.contrastive_parameters()}
    assert trained == {id(p) for p in head.query_encoder.parameters()} | {id(head.W)}


def test_momentum_update_is_a_soft_update():
    head = ContrastiveRoleHead(embed_dim=8, role_dim=4, hidden_dim=16)
    with torch.no_grad():
        for p in head.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    old_keys = [k.detach().clone() for k in head.key_encoder.parameters()]
    head.momentum_update(0.0)
    for k, old in zip(head.key_encoder.parameters(), old_keys):
        assert torch.equal(k, old)
    head.momentum_update(0.25)
    for k, old, q in zip(head.key_encoder.parameters(), old_keys, head.query_encoder.parameters()):
        assert torch.allclose(k, 0.75 * old + 0.25 * q, atol=1e-7)
        assert not k.requires_grad
    head.momentum_update(1.0)
    for k, q in zip(head.key_encoder.parameters(), head.query_encoder.parameters()):
        assert torch.allclose(k, q)
    w_before = head.W.detach().clone()
    head.momentum_update(0.5)
    assert torch.equal(head.W.detach(), w_before)


def test_momentum_update_rejects_bad_tau():
    head = ContrastiveRoleHead(embed_dim=8, role_dim=4, hidden_dim=16)
    for tau in (-0.1, 1.5):
        with pytest.raises(ValueError):
            head.momentum_update(tau)
