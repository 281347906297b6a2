"""Value decomposition as a component: VDN and QPLEX mixers on hand values, QPLEX's positive advantage weights and
IGM, QMIX's TD loss unchanged through the mixer hook, gradients of the mixers, and short fits through the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from cli_errors import assert_one_line_error
from paper_configs import config_args, paper_config
from sizes import SMALL

from acorm_pl.algos import ACORM, QMIX, QPLEX, VDN
from acorm_pl.analysis.demo import small_run_args
from acorm_pl.cli import main
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo
from acorm_pl.losses import double_q_next_values, masked_td_loss, td_targets
from acorm_pl.nets import QPLEXMixer, VDNMixer, shift_actions

REPO = Path(__file__).resolve().parents[1]
INFO = EnvInfo(n_agents=3, n_actions=5, obs_dim=8, state_dim=7, episode_limit=10)


def _batch(b: int = 4, t: int = 6, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    n, a = INFO.n_agents, INFO.n_actions
    filled = torch.ones(b, t)
    filled[0, 4:] = 0
    terminated = torch.zeros(b, t)
    terminated[0, 3] = 1
    avail = (torch.rand(b, t + 1, n, a, generator=g) > 0.4) | torch.eye(a, dtype=torch.bool)[0]
    avail[0, 5:] = False  # padding of episode 0 has no available action at all
    scores = torch.rand(b, t, n, a, generator=g).masked_fill(~avail[:, :-1], -1)
    return EpisodeBatch(obs=torch.randn(b, t + 1, n, INFO.obs_dim, generator=g),
                        state=torch.randn(b, t + 1, INFO.state_dim, generator=g), avail_actions=avail,
                        actions=scores.argmax(-1), reward=torch.rand(b, t, generator=g) * filled,
                        terminated=terminated, filled=filled, alive=alive_from_avail(avail))


def test_vdn_is_the_sum_of_agent_qs():
    qs = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.25]])
    assert torch.equal(VDNMixer()(qs, torch.randn(2, 7)), torch.tensor([-0.5, 3.25]))


def _hand_qplex() -> QPLEXMixer:
    """Two agents, one head, linear weight networks whose outputs are their biases only:
    w = |(2, 1)|, b = (0.5, -1), head key |2|, head agent weights |(1, 3)|, action gate sigmoid(0) = 0.5."""
    mixer = QPLEXMixer(n_agents=2, n_actions=3, cond_dim=4, hypernet_layers=1, n_heads=1)
    with torch.no_grad():
        for p in mixer.parameters():
            p.zero_()
        mixer.hyper_w.bias.copy_(torch.tensor([-2.0, 1.0]))
        mixer.hyper_b.bias.copy_(torch.tensor([0.5, -1.0]))
        mixer.head_key.bias.fill_(2.0)
        mixer.head_agents.bias.copy_(torch.tensor([1.0, -3.0]))
    return mixer


def test_qplex_duplex_dueling_by_hand():
    mixer = _hand_qplex()
    q, max_q = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]])  # agent 0 takes a non-greedy action
    actions, cond = torch.tensor([[1, 0]]), torch.randn(1, 4)
    v_tot, a_tot, lam = mixer.duplex(q, cond, actions, max_q)
    # V_i = w_i max Q_i + b_i = (2*3 + 0.5, 1*2 - 1); A_i = w_i (Q_i - max Q_i) = (2*-2, 0);
    # lambda_i = key * agent weight * 0.5 = (2*1*0.5, 2*3*0.5)
    assert torch.allclose(lam, torch.tensor([[1.0, 3.0]]), atol=1e-6)
    assert torch.allclose(v_tot, torch.tensor([7.5])) and torch.allclose(a_tot, torch.tensor([-4.0]))
    assert torch.allclose(mixer(q, cond, actions, max_q), v_tot + a_tot)  # Q_tot = V_tot + A_tot
    assert torch.allclose(mixer(max_q, cond, actions, max_q), v_tot)  # greedy: A_tot = 0


def test_qplex_weights_positive_and_greedy_joint_action_maximises_q_tot():
    torch.manual_seed(1)
    n, a = 2, 3
    mixer = QPLEXMixer(n_agents=n, n_actions=a, cond_dim=5)
    agent_q = torch.randn(6, n, a) * 3  # 6 states
    cond = torch.randn(6, 5)
    joint = torch.tensor(list(itertools.product(range(a), repeat=n)))  # [9, N] every joint action
    q = agent_q.unsqueeze(1).expand(6, len(joint), n, a).gather(-1, joint.expand(6, -1, -1).unsqueeze(-1)).squeeze(-1)
    max_q = agent_q.amax(-1).unsqueeze(1).expand_as(q)
    q_tot = mixer(q, cond.unsqueeze(1).expand(6, len(joint), 5), joint.expand(6, -1, -1), max_q)
    _, _, lam = mixer.duplex(q, cond.unsqueeze(1).expand(6, len(joint), 5), joint.expand(6, -1, -1), max_q)
    assert (lam > 0).all()
    greedy = agent_q.argmax(-1)  # [6, N]
    best = q_tot.argmax(1)
    assert torch.equal(joint[best], greedy)  # IGM: the joint argmax is the per-agent argmax


def _old_qmix_loss(model: QMIX, batch: EpisodeBatch) -> torch.Tensor:
    """QMIX's TD loss as written before the mixer hook: mixer(Q_i(a_t), s_t) against one-step double-Q targets."""
    x = model.inputs(batch.obs, shift_actions(batch.actions))
    q = model.agent(x).q
    with torch.no_grad():
        target_q = model.target_agent(x).q
    q_taken = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    next_values = double_q_next_values(q[:, 1:].detach(), target_q[:, 1:], batch.avail_actions[:, 1:])
    q_tot = model.mixer(q_taken, batch.state[:, :-1]).float()
    with torch.no_grad():
        next_q_tot = model.target_mixer(next_values, batch.state[:, 1:])
    return masked_td_loss(q_tot, td_targets(batch.reward, batch.terminated, next_q_tot, model.hparams.gamma),
                          batch.filled)


def test_qmix_loss_unchanged_through_the_mixer_hook():
    torch.manual_seed(0)
    model = QMIX(env_info=INFO.as_dict(), embed_dim=16)
    with torch.no_grad():  # a target network that differs from the online one
        for p in model.target_agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch()
    assert torch.allclose(model.td_loss(batch)[0], _old_qmix_loss(model, batch), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, kwargs", [(VDN, {}), (QPLEX, {}), (ACORM, {"mixer": "qplex", **SMALL}),
                                         (ACORM, {"mixer": "vdn", "attention": False, "state_encoder": False,
                                                  **SMALL})])
def test_td_loss_is_finite_and_trains_the_mixer_and_agents(cls, kwargs):
    torch.manual_seed(0)
    model = cls(env_info=INFO.as_dict(), **kwargs)
    loss, _ = model.td_loss(_batch())  # episode 0's padding has no available action: must stay finite
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("target_", "roles.target_", "roles.head.key_encoder", "roles.head.W")):  # W: CL only
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.slow
@pytest.mark.parametrize("config, extra, mixer, mixer_params", [
    ("qmix", ["--model.class_path", "acorm_pl.algos.VDN"], "vdn", set()),
    ("qmix", ["--model.class_path", "acorm_pl.algos.QPLEX"], "qplex", {"hyper_w", "head_action"}),
    ("acorm", ["--model.init_args.mixer", "qplex"], "qplex", {"hyper_w", "head_action"}),  # ACORM-QPLEX
])
def test_short_fit_through_the_cli(workdir, config, extra, mixer, mixer_params):
    main(small_run_args(paper_config(config, "3m"), workdir, "mixer", env_steps=600, eval_interval=300,
                        quick=True, extra=extra))
    state = torch.load(next(workdir.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["mixer"] == mixer
    assert {k.split(".")[1] for k in state["state_dict"] if k.startswith("mixer.")} >= mixer_params
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_bad_mixer_is_one_line(workdir, capsys):
    assert_one_line_error(["fit", *config_args("qmix", "3m"), "--model.init_args.mixer", "qatten"], capsys,
                          "model.mixer must be one of qmix, vdn, qplex or the import path of a Mixer subclass, "
                          "got 'qatten'")
    assert_one_line_error(["fit", *config_args("acorm", "3m"),
                           "--model.init_args.mixer", "vdn"], capsys, "model.mixer vdn ignores the mixer conditioning")
