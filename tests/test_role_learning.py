"""Role learning as a component: built from explicit arguments, owned by both ACORM hosts; checkpoints of the
earlier layout (role head and state input on the module itself) load and give the same losses; optimizers and
their learning-rate schedulers by name."""

from __future__ import annotations

import lightning
import pytest
import sizes
import torch

from acorm_pl.algos import ACORM, ACORMMAPPO, QMIX
from acorm_pl.algos.base import EnvStepLRDecay, upgrade_state_dict
from acorm_pl.algos.roles import RoleLearning, RoleSwitches
from acorm_pl.checkpoints import state_mismatch
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo
from acorm_pl.errors import ConfigError

INFO = EnvInfo(n_agents=3, n_actions=4, obs_dim=3, state_dim=5, episode_limit=5)
QSIZES = {**sizes.SMALL, "hypernet_embed": 8, "mixing_embed_dim": 8}
PSIZES = {**sizes.SMALL, "critic_hidden_dim": 8}
ROLE_ARGS = {"role_dim": 8, "role_hidden_dim": 8, "n_clusters": 2, "clustering": None, "contrastive_lr": 1e-3,
             "key_encoder_tau": 0.1, "state_embed_dim": 8, "n_heads": 2, "attn_dim": 8, "attn_out_dim": 8}
SWITCHES = {"full": {}, "w/o CL": {"contrastive": False}, "w/o MHA": {"attention": False},
            "Vanilla": {"attention": False, "state_encoder": False}}


def _batch(seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    b, t, n, a = 2, 4, INFO.n_agents, INFO.n_actions
    filled = torch.ones(b, t)
    filled[0, 3:] = 0
    avail = torch.ones(b, t + 1, n, a, dtype=torch.bool)
    avail[1, 2:, 1, 1:] = False  # agent 1 of episode 1 dies at t = 2
    return EpisodeBatch(obs=torch.randn(b, t + 1, n, INFO.obs_dim, generator=g),
                        state=torch.randn(b, t + 1, INFO.state_dim, generator=g), avail_actions=avail,
                        actions=torch.randint(0, a, (b, t, n), generator=g) * avail[:, :-1].all(-1),
                        reward=torch.rand(b, t, generator=g) * filled, terminated=torch.zeros(b, t), filled=filled,
                        alive=alive_from_avail(avail))


def _old_layout(state: dict[str, torch.Tensor], state_input: str) -> dict[str, torch.Tensor]:
    """``state`` as the modules wrote it before role learning was a component: the role head as ``role_head``,
    the state input as ``mixer_input`` / ``critic_input`` (and its target copy as ``target_mixer_input``), and
    the "w/o CL" role encoder in the agent only."""
    renamed = {"roles.head.": "role_head.", "roles.target_state_input.": f"target_{state_input}.",
               "roles.state_input.": f"{state_input}."}
    old = {}
    for key, value in state.items():
        if key.startswith("roles.encoder."):
            continue
        new = next((p for p in renamed if key.startswith(p)), None)
        old[key if new is None else renamed[new] + key[len(new):]] = value.clone()
    return old


def _losses(model, batch: EpisodeBatch) -> list[torch.Tensor]:
    """The host's losses on ``batch`` and, with contrastive learning, the contrastive loss."""
    if isinstance(model, ACORM):
        out = [model.td_loss(batch)[0]]
    else:
        ev = model.evaluate(batch)
        out = [ev.log_probs.sum(), ev.values.sum()]
    if model.roles.head is not None:
        embeddings = model.agent_embeddings(batch)
        out.append(model.roles.contrastive_loss(batch, embeddings, model.roles.cluster(embeddings, batch))[0])
    return [x.detach() for x in out]


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
@pytest.mark.parametrize("cls, kw, state_input", [(ACORM, QSIZES, "mixer_input"), (ACORMMAPPO, PSIZES, "critic_input")],
                         ids=["ACORM", "ACORMMAPPO"])
def test_a_state_dict_of_the_earlier_layout_loads_and_gives_the_same_losses(cls, kw, state_input, switches):
    torch.manual_seed(0)
    trained = cls(env_info=INFO.as_dict(), **kw, **switches)
    with torch.no_grad():  # targets apart from the online networks, as after training
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old = _old_layout(trained.state_dict(), state_input)
    assert not any(k.startswith("roles.") for k in old)
    torch.manual_seed(1)
    model = cls(env_info=INFO.as_dict(), **kw, **switches)
    upgraded = dict(old)
    upgrade_state_dict(upgraded)
    assert state_mismatch(upgraded, model.state_dict()) is None  # what the checkpoint readers compare
    model.load_state_dict(old)  # strict: every tensor has its place
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in model.state_dict().items())
    if model.roles.role_encoder is not None:
        assert model.agent.role_encoder is model.roles.role_encoder  # still one encoder, not a loaded copy
    batch = _batch()
    for a, b in zip(_losses(trained, batch), _losses(model, batch), strict=True):
        assert torch.equal(a, b)


def test_a_lightning_checkpoint_of_the_earlier_layout_loads(tmp_path):
    torch.manual_seed(0)
    trained = ACORM(env_info=INFO.as_dict(), **QSIZES)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": _old_layout(trained.state_dict(), "mixer_input"),
                "hyper_parameters": dict(trained.hparams), "pytorch-lightning_version": lightning.__version__}, path)
    model = ACORM.load_from_checkpoint(path)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in model.state_dict().items())


def test_upgrading_leaves_todays_state_dicts_as_they_are():
    for model in (ACORM(env_info=INFO.as_dict(), **QSIZES, contrastive=False), QMIX(env_info=INFO.as_dict())):
        state = model.state_dict()
        upgraded = dict(state)
        upgrade_state_dict(upgraded)
        assert upgraded.keys() == state.keys() and all(upgraded[k] is state[k] for k in state)


def test_role_learning_is_built_from_explicit_arguments_alone():
    roles = RoleLearning(RoleSwitches(attention=False), n_agents=3, state_dim=5, embed_dim=16, **ROLE_ARGS)
    assert roles.state_input is not None and roles.state_input.attention is None and roles.cond_dim == 8
    assert roles.role_encoder is roles.head.query_encoder and roles.target_pairs() == []
    agent = roles.build_agent(input_dim=7, n_actions=4)
    assert agent.role_encoder is roles.role_encoder
    assert list(roles.named_optimizers()) == ["contrastive"]
    off = RoleLearning(RoleSwitches(False, False, False), n_agents=3, state_dim=5, embed_dim=16, **ROLE_ARGS)
    assert off.build_agent(7, 4) is None and off.cond_dim == 5 and not off.named_optimizers()
    assert not list(off.parameters())
    with pytest.raises(ConfigError, match="attention needs model.state_encoder"):
        RoleSwitches(attention=True, state_encoder=False)
    with pytest.raises(ConfigError, match="must not exceed the number of agents"):
        RoleLearning(RoleSwitches(), n_agents=3, state_dim=5, embed_dim=16, **{**ROLE_ARGS, "n_clusters": 4})


def test_optimizers_and_schedulers_by_name_with_one_learning_rate_decay():
    model = ACORM(env_info=INFO.as_dict(), **QSIZES, lr=1e-3, lr_decay_env_steps=100, lr_final_ratio=0.5)
    scale = [1.0]
    model.lr_scale = lambda: scale[0]
    configs = model.configure_optimizers()
    assert model.optimizer_names == ["td", "contrastive"] and model.lr_scheduler_names == ["td"]
    decay = configs[0]["lr_scheduler"]
    assert isinstance(decay, EnvStepLRDecay) and "lr_scheduler" not in configs[1]  # the contrastive lr is constant
    scale[0] = 0.5  # as at the end of the decay
    configs[0]["optimizer"].step()
    decay.step()
    assert configs[0]["optimizer"].param_groups[0]["lr"] == decay.get_last_lr()[0] == 1e-3 * 0.5
    assert configs[1]["optimizer"].param_groups[0]["lr"] == model.hparams.contrastive_lr
    assert decay.state_dict() == {}  # a resumed run follows its configuration's learning rate


def test_a_null_decay_length_decays_the_learning_rate_over_the_runs_budget():
    model = QMIX(env_info=INFO.as_dict(), lr_decay_env_steps=None, lr_final_ratio=0.1)
    model._datamodule_count = {"total_env_steps": 1000, "env_steps": 500}.get  # a run halfway through its budget
    assert model.lr_scale() == pytest.approx(0.55)
    model.hparams.lr_decay_env_steps = 250
    assert model.lr_scale() == pytest.approx(0.1)
