"""ACORM as the paper defines it: the key encoder follows the query encoder after every update (Eq. 5),
roles instead of agent IDs, dead agents out of the state's attention in both hosts, a matched-capacity
QMIX, and periodic evaluations that do not depend on what ran before them."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import acorm_pl  # noqa: F401
import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from paper_configs import config_args
import yaml
from test_cli import REPO, TINY, _checkpoints, _client, _runs
from worker_envs import INFO as TOY_INFO
from worker_envs import ToyEnv, episode_length

from acorm_pl.algos import ACORM, ACORMMAPPO, QMIX
from acorm_pl.analysis.inspect import load_checkpoint
from acorm_pl.cli import build_cli, main
from acorm_pl.data import EpisodeBatch
from acorm_pl.data.episode_buffer import alive_from_avail
from acorm_pl.envs.base import EnvInfo
from acorm_pl.envs.seeds import ANALYSIS_SEED, EVAL_SEED_STRIDE, evaluation_seeds
from acorm_pl.envs.smax import SMAXVecEnv
from acorm_pl.envs.workers import ProcessVecEnv
from acorm_pl.nets import AgentOutput, shift_actions
from sizes import SMALL

INFO = EnvInfo(n_agents=4, n_actions=7, obs_dim=6, state_dim=9, episode_limit=8)


def _batch(b: int = 3, t: int = 6) -> EpisodeBatch:
    g = torch.Generator().manual_seed(1)
    n, a = INFO.n_agents, INFO.n_actions
    filled = torch.ones(b, t)
    filled[0, 4:] = 0
    avail = torch.ones(b, t + 1, n, a, dtype=torch.bool)
    avail[1, 2:, 3, 1:] = False  # agent 3 of episode 1 is dead from t = 2: only the no-op remains
    avail[0, 5:] = False  # episode 0 ended at t = 4: nothing is available on its padded steps
    return EpisodeBatch(obs=torch.randn(b, t + 1, n, INFO.obs_dim, generator=g),
                        state=torch.randn(b, t + 1, INFO.state_dim, generator=g), avail_actions=avail,
                        actions=torch.zeros(b, t, n, dtype=torch.long), reward=torch.rand(b, t, generator=g) * filled,
                        terminated=torch.zeros(b, t), filled=filled,
                        alive=alive_from_avail(avail))


# ---- Eq. (5) after every update ----------------------------------------------------------------------------
class MomentumProbe(pl.Callback):
    """Checks k_{u+1} = beta k_u + (1 - beta) q_{u+1} around every update of a real fit."""

    def __init__(self, interval: int):
        self.interval, self.checked, self.with_contrastive = interval, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        head = pl_module.roles.head
        self.keys = [p.detach().clone() for p in head.key_encoder.parameters()]
        self.contrastive_due = (int(pl_module.n_updates) + 1) % self.interval == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        head, beta = pl_module.roles.head, 1.0 - pl_module.hparams.key_encoder_tau
        for k_old, k_new, q_new in zip(self.keys, head.key_encoder.parameters(), head.query_encoder.parameters(),
                                       strict=True):
            assert k_new.grad is None and not k_new.requires_grad  # moved by Eq. (5) only, never by a gradient
            assert torch.allclose(k_new, beta * k_old + (1.0 - beta) * q_new, atol=1e-6, rtol=0)
        assert any(not torch.equal(a, b) for a, b in zip(self.keys, head.key_encoder.parameters()))
        self.checked += 1
        self.with_contrastive += self.contrastive_due


@pytest.mark.parametrize("config, extra", [
    ("acorm", ["--data.updates_per_collect", "2", "--data.batch_size", "4", "--data.buffer_size", "64"]),
    ("acorm_mappo", ["--data.batch_size", "4", "--model.init_args.ppo_epochs", "2"]),
])
def test_key_encoder_follows_the_query_encoder_after_every_update(workdir, config, extra):
    args = [*config_args(config, "3m"), "--data.n_envs", "4",
            "--data.total_env_steps", "300", "--data.epoch_env_steps", "300", "--evaluation.eval_interval", "300",
            "--evaluation.n_eval_episodes", "4", "--trainer.enable_progress_bar", "false",
            "--model.init_args.embed_dim", "16", "--model.init_args.key_encoder_tau", "0.2", "--roles.interval", "3",
            *extra]
    cli = build_cli(args, run=False)
    probe = MomentumProbe(interval=3)
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # several updates with and without a contrastive step in between
    assert probe.with_contrastive >= 1 and probe.checked - probe.with_contrastive >= 2, vars(probe)


# ---- no agent IDs by default -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ACORM, ACORMMAPPO])
def test_acorm_agents_see_no_ids_unless_switched_on(cls):
    base = INFO.obs_dim + INFO.n_actions  # [o_t, onehot(a_{t-1})]
    default, with_ids = cls(env_info=INFO.as_dict(), **SMALL), cls(env_info=INFO.as_dict(), add_agent_id=True, **SMALL)
    assert default.hparams.add_agent_id is False and default.input_dim == base
    assert default.agent.encoder.fc.in_features == base
    assert with_ids.input_dim == base + INFO.n_agents and with_ids.agent.encoder.fc.in_features == base + INFO.n_agents
    assert QMIX(env_info=INFO.as_dict()).hparams.add_agent_id is True  # the baseline keeps pymarl's IDs


def test_every_config_says_which_variant_sees_ids():
    expected = {"acorm_pl.algos.ACORM": False, "acorm_pl.algos.ACORMMAPPO": False, "acorm_pl.algos.QMIX": True,
                "acorm_pl.algos.MAPPO": False}
    seen = set()
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        if model and "class_path" in model:  # ablation files only flip switches of the file before them
            assert model["init_args"].get("add_agent_id") is expected[model["class_path"]], path
            seen.add(model["class_path"])
    assert seen == set(expected)


def test_checkpoint_written_with_ids_still_loads_for_evaluation(tmp_path):
    # What a checkpoint written before IDs were switched off holds: add_agent_id=True among its hparams.
    old = ACORM(env_info=INFO.as_dict(), add_agent_id=True, **SMALL)
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": dict(old.hparams), "state_dict": old.state_dict(),
                "acorm_pl": {"class_path": "acorm_pl.algos.acorm.ACORM"},
                "datamodule_hyper_parameters": {"env": "smax", "map_name": "3m"}}, path)
    model, _ = load_checkpoint(path)
    assert model.hparams.add_agent_id is True and model.input_dim == old.input_dim
    batch = _batch()
    x = model.inputs(batch.obs, shift_actions(batch.actions))
    assert torch.equal(model.agent_forward(x).q, old.agent_forward(x).q)


# ---- dead agents out of the attention, one policy for both hosts -------------------------------------------
def _moved_dead_roles(agents: AgentOutput, batch: EpisodeBatch) -> AgentOutput:
    roles = agents.roles.clone()
    dead = ~batch.alive
    roles[dead] += 100.0
    return AgentOutput(q=agents.q, hidden=agents.hidden, embedding=agents.embedding, roles=roles)


def test_dead_agents_role_does_not_change_the_mixer_input():
    model = ACORM(env_info=INFO.as_dict(), **SMALL)
    batch = _batch()
    agents = model.agent_forward(model.inputs(batch.obs, shift_actions(batch.actions)))
    cond = model.mixer_conditioning(batch, agents)
    weights = model.last_attention  # [B, T+1, heads, N]
    assert torch.all(weights[1, 2:, :, 3] == 0) and torch.all(weights[0, 5:] == 0)
    assert torch.allclose(weights[1, :2].sum(-1), torch.ones(2, 4))
    moved = _moved_dead_roles(agents, batch)
    assert torch.equal(model.mixer_conditioning(batch, moved), cond)
    assert torch.equal(model.mixer_conditioning(batch, moved, target=True),
                       model.mixer_conditioning(batch, agents, target=True))
    alive_moved = AgentOutput(q=agents.q, hidden=agents.hidden, embedding=agents.embedding,
                              roles=agents.roles + 100.0 * batch.alive.unsqueeze(-1))
    assert not torch.allclose(model.mixer_conditioning(batch, alive_moved), cond)  # the alive ones do count


def test_both_hosts_mask_dead_agents_through_the_same_code():
    model = ACORMMAPPO(env_info=INFO.as_dict(), **SMALL)
    assert type(model.roles) is type(ACORM(env_info=INFO.as_dict(), **SMALL).roles)  # one RoleLearning
    batch = _batch()
    agents = model.evaluate(batch).agents
    cond = model.critic_conditioning(batch, agents)
    assert torch.equal(model.critic_conditioning(batch, _moved_dead_roles(agents, batch)), cond)


# ---- matched capacity --------------------------------------------------------------------------------------
def test_matched_capacity_qmix_has_acorms_agent_embedding():
    acorm = ACORM(env_info=INFO.as_dict())
    qmix128 = QMIX(env_info=INFO.as_dict(), embed_dim=acorm.hparams.embed_dim)
    assert acorm.hparams.embed_dim == 128 and QMIX(env_info=INFO.as_dict()).hparams.embed_dim == 64
    a, q = acorm.agent.encoder, qmix128.agent.encoder
    assert a.embed_dim == q.embed_dim == 128
    assert {n: p.shape for n, p in a.gru.named_parameters()} == {n: p.shape for n, p in q.gru.named_parameters()}
    assert a.fc.out_features == q.fc.out_features and q.fc.in_features == a.fc.in_features + INFO.n_agents


# ---- evaluation independent of history ---------------------------------------------------------------------
def test_evaluation_seeds_are_disjoint_from_training_and_from_each_other():
    train = set(range(0, 10_000))
    evals = [set(evaluation_seeds(0, j, r, 16, world_size=2)) for j in range(50) for r in range(2)]
    union = set().union(*evals)
    assert len(union) == sum(len(e) for e in evals) and not union & train
    assert max(union) < ANALYSIS_SEED and ANALYSIS_SEED + 10_000 < 2**31
    with pytest.raises(ValueError):
        evaluation_seeds(0, 0, 0, EVAL_SEED_STRIDE, world_size=2)


def test_smax_reseed_draws_the_episodes_of_a_fresh_env():
    fresh, used = SMAXVecEnv("3m", [7, 8]), SMAXVecEnv("3m", [1, 2])
    used.reset()
    used.step(torch.zeros(2, 3, dtype=torch.long))
    used.reseed([7, 8])
    assert torch.equal(fresh.reset().obs, used.reset().obs)
    actions = torch.ones(2, 3, dtype=torch.long)
    assert torch.equal(fresh.step(actions).obs, used.step(actions).obs)


def test_worker_reseed_reaches_the_engines():
    env = ProcessVecEnv(functools.partial(ToyEnv), [0, 1], TOY_INFO, step_timeout=30, reset_timeout=120)
    try:
        env.reseed([4, 9])
        env.reset()
        lengths, done, t = [0, 0], torch.zeros(2, dtype=torch.bool), 0
        while not done.all():
            out = env.step(torch.zeros(2, TOY_INFO.n_agents, dtype=torch.long))
            t += 1
            for i in range(2):
                if not done[i] and (out.terminated[i] or out.truncated[i]):
                    lengths[i], done[i] = t, True
        assert lengths == [episode_length(4), episode_length(9)]
    finally:
        env.close()


def _eval_history(workdir: Path, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in _client(workdir).get_metric_history(run_id, key)}


@pytest.mark.slow
def test_resumed_fit_evaluates_the_same_episodes_as_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # No extra final evaluation: the first half's would land on the step where the second half resumes.
    fit = [*TINY, "--trainer.enable_progress_bar", "false", "--evaluation.final_n_eval_episodes", "null"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        d.mkdir()
    monkeypatch.chdir(straight)
    main(["fit", *fit])  # two epochs of 200 env steps, evaluations every 200
    monkeypatch.chdir(split)
    main(["fit", *fit, "--data.total_env_steps", "200"])
    (first,) = _runs(split)
    main(["fit", *fit, "--ckpt_path", str(_checkpoints(first) / "last.ckpt")])
    (whole,), (resumed,) = _runs(straight), _runs(split)
    assert resumed.info.run_id == first.info.run_id
    for key in ("test/win_rate", "test/return_mean", "test/ep_length_mean"):
        a, b = _eval_history(straight, whole.info.run_id, key), _eval_history(split, resumed.info.run_id, key)
        assert len(a) >= 3 and a == b, key
