"""ACORM-QMIX: ablation switches, the equivalence with QMIX, where gradients flow, the contrastive step."""

from __future__ import annotations

import pytest
import sizes
import torch

from acorm_pl.algos import ACORM, QMIX
from acorm_pl.callbacks import RoleClustering
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo

INFO = EnvInfo(n_agents=4, n_actions=7, obs_dim=6, state_dim=9, episode_limit=8)
SMALL = {**sizes.SMALL, "hypernet_embed": 8, "mixing_embed_dim": 8}


def _batch(b: int = 3, t: int = 6, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    n, a = INFO.n_agents, INFO.n_actions
    filled = torch.ones(b, t)
    filled[0, 4:] = 0
    avail = torch.ones(b, t + 1, n, a, dtype=torch.bool)
    avail[1, 3:, 2, 1:] = False  # agent 2 of episode 1 dies at t=3: only the no-op remains
    terminated = torch.zeros(b, t)
    terminated[0, 3] = 1
    return EpisodeBatch(obs=torch.randn(b, t + 1, n, INFO.obs_dim, generator=g),
                        state=torch.randn(b, t + 1, INFO.state_dim, generator=g), avail_actions=avail,
                        actions=torch.randint(0, a, (b, t, n), generator=g) * avail[:, :-1].all(-1),
                        reward=torch.rand(b, t, generator=g) * filled, terminated=terminated, filled=filled,
                        alive=alive_from_avail(avail))


def _acorm(**kw) -> ACORM:
    torch.manual_seed(0)
    return ACORM(env_info=INFO.as_dict(), **{**SMALL, **kw})


def _names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_all_switches_off_is_qmix():
    torch.manual_seed(0)
    qmix = QMIX(env_info=INFO.as_dict(), embed_dim=16, hypernet_embed=8, mixing_embed_dim=8)
    off = _acorm(contrastive=False, attention=False, state_encoder=False, add_agent_id=True)  # QMIX's input too
    q_state, a_state = qmix.state_dict(), off.state_dict()
    assert q_state.keys() == a_state.keys()
    assert all(torch.equal(q_state[k], a_state[k]) for k in q_state)
    batch = _batch()
    assert torch.equal(qmix.td_loss(batch)[0], off.td_loss(batch)[0])
    assert len(off.configure_optimizers()) == 1 and off.optimizer_names == off.lr_scheduler_names == ["td"]


def test_ablation_switches_remove_exactly_their_parameters():
    full = _names(_acorm())
    assert any(n.startswith("roles.head.key_encoder.") for n in full) and "roles.head.W" in full
    assert any(n.startswith("roles.state_input.attention.") for n in full)
    assert any(n.startswith("roles.state_input.state_encoder.") for n in full)
    # w/o CL: the key encoder and W go; the role encoder stays (as the agent's own) with the same shapes
    no_cl = _acorm(contrastive=False)
    assert {n for n in full - _names(no_cl)} == {n for n in full if n.startswith("roles.head.")}
    shapes_full = {n: p.shape for n, p in _acorm().agent.named_parameters()}
    assert shapes_full == {n: p.shape for n, p in no_cl.agent.named_parameters()}
    # w/o MHA: only the attention weights go (and the mixer's hypernetworks see a smaller input)
    no_mha = _names(_acorm(attention=False))
    removed = full - no_mha
    assert removed and all(n.startswith(("roles.state_input.attention.", "roles.target_state_input.attention."))
                           for n in removed)
    assert no_mha <= full
    # Vanilla: no state encoder either; the raw state conditions the mixer
    vanilla = _acorm(attention=False, state_encoder=False)
    assert not any("state_input" in n for n in _names(vanilla))
    assert vanilla.mixer.hyper_b1.in_features == INFO.state_dim
    with pytest.raises(ValueError, match="attention needs model.state_encoder"):
        _acorm(attention=True, state_encoder=False)


def test_td_loss_reaches_encoders_and_mixer_but_not_key_encoder_or_w():
    model = _acorm()
    loss, _ = model.td_loss(_batch())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # the agent's role encoder is the query encoder, listed once under roles.head.query_encoder
    for prefix in ("agent.encoder.", "roles.head.query_encoder.", "agent.head.", "roles.state_input.state_encoder.",
                   "roles.state_input.attention.", "mixer."):
        hit = [n for n in grads if n.startswith(prefix)]
        assert hit and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in hit), prefix
    assert grads["roles.head.W"] is None
    assert all(g is None for n, g in grads.items()
               if n.startswith(("roles.head.key_encoder.", "roles.target_state_input.", "target_")))


def test_contrastive_update_trains_query_encoder_and_w_and_leaves_the_key_encoder():
    model = _acorm(key_encoder_tau=0.25)
    batch = _batch()
    labels = RoleClustering(interval=1).cluster(model, batch)
    cl_opt = model.configure_optimizers()[1]["optimizer"]
    head = model.roles.head
    keys_before = [p.clone() for p in head.key_encoder.parameters()]
    query_before = [p.clone() for p in head.query_encoder.parameters()]
    w_before = head.W.clone()
    model.manual_backward = lambda loss: loss.backward()  # no trainer attached in this unit test
    stats = model.roles.contrastive_update(model, batch, model.agent_embeddings(batch), labels, cl_opt)
    assert stats["n_anchors"] > 0 and torch.isfinite(stats["contrastive_loss"])
    assert not torch.equal(head.W, w_before)
    assert any(not torch.equal(a, b) for a, b in zip(query_before, head.query_encoder.parameters()))
    for old, new in zip(keys_before, head.key_encoder.parameters(), strict=True):
        assert new.grad is None and not new.requires_grad
        assert torch.equal(new, old)  # Eq. (5) runs once per update, after it (tests/test_acorm_paper.py)
    assert all(p.grad is None for p in model.agent.encoder.parameters())  # embeddings are detached


def test_role_clustering_labels_skip_padding_and_dead_agents():
    model = _acorm(n_clusters=3)
    batch = _batch()
    labels = RoleClustering(interval=1).cluster(model, batch)
    assert labels.shape == (3, 6, 4)
    assert (labels[0, 4:] == -1).all()  # padded steps of episode 0
    assert (labels[1, 3:, 2] == -1).all() and (labels[1, :3, 2] >= 0).all()  # agent 2 dead from t=3
    alive = batch.alive[:, :-1] & batch.filled.bool().unsqueeze(-1)
    assert ((labels >= 0) == alive).all()
    assert labels.max() <= 2


def test_role_clustering_runs_every_interval_updates():
    model = _acorm()
    cb = RoleClustering(interval=3)
    batch = _batch()
    due = []
    for step in range(7):
        model.n_updates.fill_(step)
        model.roles.contrastive_due = False
        cb.on_train_batch_start(None, model, batch, step)
        due.append(model.roles.contrastive_due)
    assert due == [False, False, True, False, False, True, False]
    off = _acorm(contrastive=False)
    off.n_updates.fill_(2)
    cb.on_train_batch_start(None, off, batch, 0)
    assert not off.roles.contrastive_due


def test_td_forward_embeddings_are_the_ones_clustered():
    model = _acorm()
    batch = _batch()
    model.td_loss(batch)
    assert torch.allclose(model.roles.last_embeddings[:, :-1], model.agent_embeddings(batch))
    assert not model.roles.last_embeddings.requires_grad


def test_attention_weights_sum_to_one_per_head_and_bf16_runs():
    model = _acorm()
    model.td_loss(_batch())
    weights = model.last_attention
    assert weights.shape == (3, 7, 4, INFO.n_agents)  # [B, T+1, heads, agents]
    assert torch.allclose(weights.sum(-1), torch.ones(3, 7, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.td_loss(_batch())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_acting_uses_roles_and_matches_sequence():
    model = _acorm()
    batch = _batch(b=2, t=4)
    from acorm_pl.nets import shift_actions

    x = model.inputs(batch.obs, shift_actions(batch.actions))
    seq = model.agent_forward(x)
    assert seq.roles.shape == (2, 5, 4, 8)
    h = model.initial_state(2)
    for t in range(3):
        out = model.agent_forward(x[:, t : t + 1], h0=h)
        h = out.hidden
        assert torch.allclose(out.q[:, 0], seq.q[:, t], atol=1e-5)
