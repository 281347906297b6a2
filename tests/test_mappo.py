"""MAPPO and ACORM-MAPPO: the actor equals its sequence form, masks, the critic's attention, on-policy
batches, one implementation shared with ACORM-QMIX, and end-to-end fits (MLflow, resume, bf16, DDP)."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import acorm_pl  # noqa: F401
from types import SimpleNamespace

import pytest
import torch
from paper_configs import config_args
from scripted_env import ScriptedVecEnv
from test_cli import _checkpoints, _client, _ddp_fit, _runs

import acorm_pl.data.datamodule as datamodule
from acorm_pl.algos import ACORM, ACORMMAPPO, MAPPO
from acorm_pl.algos.base import MARLModule
from acorm_pl.algos.roles import RoleLearning
from acorm_pl.callbacks import RoleClustering
from acorm_pl.cli import main
from acorm_pl.data import EpisodeBatch, RolloutDataModule, collect_rollout
from acorm_pl.errors import ConfigError
from acorm_pl.losses import masked_log_softmax
from acorm_pl.nets import AgentOutput, AttentionMixerInput, ContrastiveRoleHead, RoleQAgent, ValueNormalizer
from sizes import ROLES
from cli_errors import assert_one_line_error

ENV = dict(lengths=[3, 6, 5], won=[True, False, False], limit=6, n_agents=3, n_actions=4, n_avail=3)
SMALL = {"embed_dim": 16, "critic_hidden_dim": 8}


def _env() -> ScriptedVecEnv:
    return ScriptedVecEnv(**ENV)


def _model(cls=MAPPO, **kw):
    torch.manual_seed(0)
    extra = ROLES if cls is ACORMMAPPO else {}
    return cls(env_info=_env().info.as_dict(), **{**SMALL, **extra, **kw})


def _record_outputs(model) -> list[torch.Tensor]:
    """Make ``model`` remember the actor outputs it acted on at every rollout step."""
    seen: list[torch.Tensor] = []
    select = model.select_actions

    def recording(outputs, avail, explore):
        seen.append(outputs.clone())
        return select(outputs, avail, explore)

    model.select_actions = recording
    return seen


@pytest.mark.parametrize("cls", [MAPPO, ACORMMAPPO])
def test_recomputed_log_probs_equal_the_rollouts_step_by_step_ones(cls):
    model = _model(cls)
    seen = _record_outputs(model)
    rollout = collect_rollout(_env(), model, explore=True)
    batch = rollout.episodes
    step_logp = torch.stack([masked_log_softmax(o, batch.avail_actions[:, t]) for t, o in enumerate(seen)], dim=1)
    behaviour = step_logp.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)  # log pi of the sampled actions
    recomputed = model.evaluate(batch).log_probs
    valid = batch.filled.bool()
    assert torch.allclose(recomputed[valid], behaviour[valid], atol=1e-5)
    assert bool((batch.actions < ENV["n_avail"]).all())  # the unavailable action is never sampled


def test_evaluation_acts_greedily_and_exploration_samples():
    model = _model()
    greedy = [collect_rollout(_env(), model, explore=False).episodes.actions for _ in range(2)]
    assert torch.equal(*greedy)
    seen = _record_outputs(model)
    batch = collect_rollout(_env(), model, explore=False).episodes
    best = torch.stack([o[..., : ENV["n_avail"]].argmax(-1) for o in seen], dim=1)
    assert torch.equal(batch.actions[batch.filled.bool()], best[batch.filled.bool()])
    model.action_generator.manual_seed(1)
    sampled = collect_rollout(_env(), model, explore=True).episodes.actions
    assert not torch.equal(sampled, greedy[0])


def test_loss_mask_keeps_valid_steps_of_alive_agents():
    model = _model()
    batch = collect_rollout(_env(), model, explore=True).episodes
    # Agent 0 of episode 1 dies at t = 2, as the environment reports it; its available actions are left as they
    # were, so the mask must follow the reported death, not infer it from the actions.
    batch.alive[1, 2:, 0] = False
    mask = model.loss_mask(batch)
    assert mask.shape == (3, 6, 3)
    assert torch.all(mask[0, 3:] == 0) and torch.all(mask[0, :3] == 1)  # episode 0 is 3 steps long
    assert torch.all(mask[1, 2:, 0] == 0) and torch.all(mask[1, :2, 0] == 1) and torch.all(mask[1, :, 1:] == 1)


def test_critic_attention_ignores_dead_and_padded_agents():
    model = _model(ACORMMAPPO)
    batch = collect_rollout(_env(), model, explore=True).episodes
    batch.alive[2, 1:, 1] = False  # agent 1 of episode 2 is dead from t = 1, as the environment reports it
    agents = model.evaluate(batch).agents
    cond = model.critic_conditioning(batch, agents)
    weights = model.last_attention  # [B, T+1, heads, N]
    present = batch.alive
    assert torch.all(weights.permute(0, 1, 3, 2)[~present] == 0)
    assert torch.all(weights[0, 4:] == 0)  # after episode 0's final observation (t = 3) nobody is present
    roles = agents.roles.clone()
    roles[~present] = 1e4 * torch.randn_like(roles[~present])
    moved = AgentOutput(q=agents.q, hidden=agents.hidden, embedding=agents.embedding, roles=roles)
    assert torch.allclose(model.critic_conditioning(batch, moved), cond, atol=1e-5)


def test_acorm_mappo_runs_the_very_code_of_acorm_qmix():
    mappo, qmix = _model(ACORMMAPPO), ACORM(env_info=_env().info.as_dict(), embed_dim=16, **ROLES)
    for name in ("training_step", "agent_embeddings", "on_agent_output", "configure_optimizers", "setup"):
        assert getattr(ACORMMAPPO, name) is getattr(ACORM, name) is getattr(MARLModule, name), name
    for model in (mappo, qmix):
        assert type(model.roles) is RoleLearning and type(model.agent) is RoleQAgent
        assert type(model.roles.head) is ContrastiveRoleHead and type(model.roles.state_input) is AttentionMixerInput
        assert model.agent.role_encoder is model.roles.head.query_encoder  # the actor's z is the query encoder's
    batch = collect_rollout(_env(), mappo, explore=True).episodes
    labels = RoleClustering(interval=1).cluster(mappo, batch)
    assert labels.shape == batch.actions.shape and int(labels.max()) <= 2


def test_all_switches_off_is_mappo():
    plain = _model(MAPPO)
    off = _model(ACORMMAPPO, contrastive=False, attention=False, state_encoder=False, embed_dim=16)
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
    batch = collect_rollout(_env(), plain, explore=True).episodes
    a, b = plain.evaluate(batch), off.evaluate(batch)
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.values, b.values)
    off.configure_optimizers()
    full = _model(ACORMMAPPO)
    configs = full.configure_optimizers()
    assert off.optimizer_names == ["actor", "critic"] and full.optimizer_names == ["actor", "critic", "contrastive"]
    assert full.lr_scheduler_names == ["actor", "critic"] and "lr_scheduler" not in configs[2]  # constant lr


def test_policy_loss_trains_the_actor_and_value_loss_the_critic_side_only():
    model = _model(ACORMMAPPO)
    batch = collect_rollout(_env(), model, explore=True).episodes
    out = model.evaluate(batch)
    out.values.sum().backward(retain_graph=True)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in grads if n.startswith(("agent.", "roles.head.")))
    assert all(grads[n] is not None for n in grads if n.startswith(("critic.", "roles.state_input.")))
    model.zero_grad(set_to_none=True)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is not None for n in grads if n.startswith(("agent.", "roles.head.query_encoder.")))
    assert all(grads[n] is None for n in grads
               if n.startswith(("critic.", "roles.state_input.", "roles.head.W", "roles.head.key_encoder")))


def test_value_normalizer_statistics_and_round_trip():
    norm = ValueNormalizer()
    x, mask = torch.tensor([[1.0, 3.0, 1e6]]), torch.tensor([[1.0, 1.0, 0.0]])
    norm.update(x, mask)
    mean, var = norm.moments()
    assert mean.item() == pytest.approx(2.0) and var.item() == pytest.approx(1.0)  # the first batch, exactly
    assert torch.allclose(norm.denormalize(norm.normalize(x[:, :2])), x[:, :2])
    summed = []
    norm.update(x, mask, reduce=lambda t: summed.append(t) or t * 2)  # e.g. two ranks with the same batch
    assert len(summed) == 1 and summed[0].tolist() == [4.0, 10.0, 2.0]
    assert set(_model(value_norm=True).state_dict()) >= {"value_normalizer.running_mean", "value_normalizer.debias"}


def test_episode_batches_concatenate_padded_to_the_longest():
    envs = (ScriptedVecEnv([n], [False], limit=6, n_agents=3) for n in (2, 5))
    short, long = (collect_rollout(env, _model(), explore=True).episodes for env in envs)
    both = EpisodeBatch.cat([short, long])
    assert both.batch_size == 2 and both.max_t == 5 and both.obs.shape[1] == 6
    assert both.filled.sum(1).tolist() == [2.0, 5.0] and not bool(both.avail_actions[0, 3:].any())
    assert torch.equal(both.select(torch.tensor([1])).actions, long.actions)


def test_on_policy_datamodule_hands_each_fresh_batch_over_once(monkeypatch):
    monkeypatch.setattr(datamodule, "get_env_info", lambda *a, **k: _env().info)
    dm = RolloutDataModule(n_envs=3, batch_size=5, total_env_steps=10_000, epoch_env_steps=70)  # 14 steps a round
    model = _model()
    dm.trainer = SimpleNamespace(lightning_module=model, world_size=1, global_rank=0, should_stop=False)
    dm.env = _env()
    dm.setup("fit")
    assert dm.on_policy and dm.buffer is None
    batches = iter(dm.train_dataloader())
    first = next(batches)  # two rounds of three episodes: the first round alone is too few
    assert isinstance(first, EpisodeBatch) and first.batch_size == 6 and first.max_t == 6
    assert dm.env_steps == 2 * sum(ENV["lengths"]) and dm.episodes == 6
    assert torch.equal(first.filled.sum(1), torch.tensor(ENV["lengths"] * 2, dtype=torch.float32))
    assert not dm._fresh  # handed over, not kept
    second = next(batches)
    assert second.batch_size == 6 and dm.env_steps == 4 * sum(ENV["lengths"])
    third = next(batches)  # the epoch's 70 env steps end within its first round: the batch is completed anyway
    assert third.batch_size == 6 and dm.env_steps == 6 * sum(ENV["lengths"]) and dm._fresh_episodes == 0
    assert next(batches, None) is None
    dm.updates_per_collect = 2
    with pytest.raises(ConfigError, match="data.updates_per_collect must be 1 for an on-policy algorithm"):
        dm.use_algorithm(model)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), [
    (["--model.init_args.clip", "1.5"], "model.clip must be in (0, 1), got 1.5"),
    (["--data.updates_per_collect", "4"], "data.updates_per_collect must be 1 for an on-policy algorithm"),
    (["--model.init_args.n_minibatches", "0"], "model.n_minibatches must be a positive integer, got 0"),
    (["--model.init_args.n_minibatches", "9"], "model.n_minibatches (9) must not exceed data.batch_size (8)"),
])
def test_bad_mappo_values_fail_with_one_line(workdir, capsys, args, expected):
    assert_one_line_error(["fit", *TINY_MAPPO, *args], capsys, expected)
    assert not _runs(workdir, "smax-3m")  # nothing was started


# ---- end to end ---------------------------------------------------------------------------------------------
TINY = [
    "--data.n_envs", "4", "--data.batch_size", "8", "--data.total_env_steps", "400", "--data.epoch_env_steps", "200",
    "--evaluation.eval_interval", "200", "--evaluation.n_eval_episodes", "4", "--model.init_args.ppo_epochs", "2",
    "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false",
]
TINY_MAPPO = [*config_args("mappo", "3m"), *TINY]
TINY_ACORM_MAPPO = [
    *config_args("acorm_mappo", "3m"), *TINY, "--model.init_args.embed_dim", "32",
    "--model.init_args.n_clusters", "2", "--roles.interval", "1",
]
PPO_METRICS = ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl", "train/clip_fraction",
               "train/advantage_mean", "test/win_rate", "test/return_mean", "perf/env_steps_per_s")


def _optimizer_steps_per_update(ckpt: dict) -> float:
    return ckpt["global_step"] / int(ckpt["state_dict"]["n_updates"])


@pytest.mark.slow
def test_mappo_fit_writes_mlflow_run_and_resumes(workdir):
    main(["fit", *TINY_MAPPO])
    (run,) = _runs(workdir, "smax-3m")
    assert run.info.status == "FINISHED"
    for key in PPO_METRICS:
        assert key in run.data.metrics, key
    history = _client(workdir).get_metric_history(run.info.run_id, "test/win_rate")
    assert history[0].step == 0 and history[-1].step >= 400
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)
    assert ckpt["acorm_pl"]["class_path"] == "acorm_pl.algos.mappo.MAPPO"
    assert ckpt["RolloutDataModule"]["buffer"] is None  # on-policy: nothing is replayed
    assert _optimizer_steps_per_update(ckpt) == 2 * 2  # ppo_epochs x 1 minibatch x (actor, critic), every update
    main(["fit", *TINY_MAPPO, "--data.total_env_steps", "800", "--ckpt_path", str(_checkpoints(run) / "last.ckpt")])
    (resumed,) = _runs(workdir, "smax-3m")
    later = torch.load(_checkpoints(resumed) / "last.ckpt", weights_only=False)
    assert later["RolloutDataModule"]["env_steps"] >= 800 > ckpt["RolloutDataModule"]["env_steps"]
    assert later["state_dict"]["n_updates"] > ckpt["state_dict"]["n_updates"]


@pytest.mark.slow
def test_acorm_mappo_bf16_fit_takes_contrastive_steps(workdir):
    main(["fit", *TINY_ACORM_MAPPO, "--trainer.precision", "bf16-mixed"])
    (run,) = _runs(workdir, "smax-3m")
    assert run.info.status == "FINISHED"
    for key in (*PPO_METRICS, "roles/contrastive_loss", "roles/n_anchors"):
        assert key in run.data.metrics, key
    assert run.data.metrics["roles/n_anchors"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for k, v in run.data.metrics.items() if k.startswith("train/"))
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["state_dict"].values())
    # every update: 2 epochs x (actor, critic) steps plus one contrastive step (T_cl = 1)
    assert _optimizer_steps_per_update(ckpt) == 2 * 2 + 1


@pytest.mark.slow
def test_acorm_mappo_ddp_two_processes_with_value_normalisation(workdir):
    proc = _ddp_fit(workdir, "--model.init_args.value_norm", "true", base=TINY_ACORM_MAPPO)
    assert "find_unused_parameters enabled" in proc.stdout + proc.stderr
    (run,) = _runs(workdir, "smax-3m")
    assert run.info.status == "FINISHED" and "roles/contrastive_loss" in run.data.metrics
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)
    assert ckpt["RolloutDataModule"]["world_size"] == 2 and ckpt["RolloutDataModule"]["env_steps"] >= 400
    assert _optimizer_steps_per_update(ckpt) == 2 * 2 + 1  # the same on both ranks, or DDP would hang
    assert ckpt["state_dict"]["value_normalizer.debias"] > 0  # statistics summed over both ranks' batches
