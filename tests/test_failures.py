"""Runs that go wrong end in one line and lose nothing: diverging updates, a process killed mid-save, Ctrl-C
during the first evaluation, bad settings and stores, and the commands acorm-pl does not have."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_errors import all_runs, assert_one_line_error, one_line_error
from mlflow.tracking import MlflowClient
from paper_configs import config_args

from acorm_pl.algos import ACORM, QMIX
from acorm_pl.analysis import load_checkpoint
from acorm_pl.checkpoints import read_checkpoint
from acorm_pl.cli import COMMANDS, main
from acorm_pl.data import EpisodeBatch
from acorm_pl.errors import ConfigError, DivergenceError
from acorm_pl.tracking import AtomicCheckpointIO, replace_link

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY = [
    "--data.n_envs", "4", "--data.batch_size", "4", "--data.total_env_steps", "400", "--data.epoch_env_steps", "200",
    "--evaluation.eval_interval", "200", "--evaluation.n_eval_episodes", "4",
    "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false",
]
TINY_QMIX = ["--config", str(REPO / "conf" / "quickstart.yaml"), "--data.buffer_size", "64", *TINY]
INFO = {"n_agents": 3, "n_actions": 5, "obs_dim": 6, "state_dim": 7, "episode_limit": 4}


def _checkpoint_dir(run) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"


def _finite(path: Path) -> bool:
    model, _ = load_checkpoint(path)
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


# ---- divergence guard -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "args", "loss"),
    [
        (["--config", str(REPO / "conf" / "quickstart.yaml")], ["--data.buffer_size", "64",
                                                                "--model.init_args.adam_eps", "0"], "TD loss = nan"),
        (config_args("mappo", "3m"), ["--data.batch_size", "8", "--model.init_args.actor_lr", "1e30",
                                "--model.init_args.critic_lr", "1e30", "--model.init_args.grad_clip_norm", "0"],
         "PPO value loss = "),
    ],
    ids=["qmix adam_eps 0", "mappo lr 1e30"],
)
def test_a_diverging_run_stops_at_that_update_in_one_line(config, args, loss, workdir, capsys):
    line = one_line_error(["fit", *config, *TINY, *args], capsys)
    assert line.startswith("acorm-pl: error: training diverged after ") and ", at env step " in line, line
    assert loss in line and "largest |gradient| = " in line, line
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["acorm_pl.failure"] == line.removeprefix("acorm-pl: error: ")
    assert all(_finite(p) for p in _checkpoint_dir(run).glob("*.ckpt"))  # none holds NaN or Inf weights


def _batch(b: int = 2, t: int = 4) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    n, a = INFO["n_agents"], INFO["n_actions"]
    return EpisodeBatch(obs=torch.rand(b, t + 1, n, INFO["obs_dim"], generator=g),
                        state=torch.rand(b, t + 1, INFO["state_dim"], generator=g),
                        avail_actions=torch.ones(b, t + 1, n, a, dtype=torch.bool),
                        actions=torch.randint(0, a, (b, t, n), generator=g), reward=torch.rand(b, t, generator=g),
                        terminated=torch.zeros(b, t), filled=torch.ones(b, t),
                        alive=torch.ones(b, t + 1, n, dtype=torch.bool))


def test_the_contrastive_step_is_guarded_too():
    model = ACORM(env_info=INFO, embed_dim=8, role_dim=4, role_hidden_dim=0, state_embed_dim=4, n_heads=1,
                  attn_dim=4, attn_out_dim=4, hypernet_embed=8, mixing_embed_dim=4)
    model.manual_backward = lambda loss: loss.backward()  # no Trainer here
    opt = model.roles.named_optimizers()["contrastive"]
    batch = _batch()
    embeddings = model.agent_embeddings(batch)
    labels = torch.tensor([0, 0, 1]).expand(*embeddings.shape[:3])
    before = [p.detach().clone() for p in model.roles.head.contrastive_parameters()]
    model.roles.contrastive_update(model, batch, embeddings, labels, opt)  # finite: the step is taken
    assert any(not torch.equal(a, p) for a, p in zip(before, model.roles.head.contrastive_parameters(), strict=True))
    with pytest.raises(DivergenceError, match=r"after 0 updates, at env step 0: contrastive loss = nan"):
        model.roles.contrastive_update(model, batch, embeddings * math.nan, labels, opt)


def test_non_finite_weights_are_named_and_never_checkpointed():
    model = QMIX(env_info=INFO, embed_dim=8, hypernet_embed=8, mixing_embed_dim=4, grad_clip_norm=0)
    model.manual_backward = lambda loss: loss.backward()
    opt = model.named_optimizers()["td"]
    model.td_update(_batch(), opt)  # finite
    with torch.no_grad():
        model.mixer.hyper_b1.weight[0, 0] = math.inf
    with pytest.raises(DivergenceError, match="weights are already non-finite after the previous optimizer step"):
        model.td_update(_batch(), opt)
    with pytest.raises(DivergenceError, match=r"1 weight tensor is not finite \(e.g. mixer.hyper_b1.weight\); "
                                              "refused to write a checkpoint"):
        model.on_save_checkpoint({})


# ---- atomic checkpoints -----------------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(3.0)}, target)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(target)["w"], torch.arange(3.0))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file left


def test_the_last_link_is_replaced_in_one_step(tmp_path):
    (tmp_path / "a.ckpt").write_text("a")
    (tmp_path / "b.ckpt").write_text("b")
    link = tmp_path / "last.ckpt"
    replace_link(tmp_path / "a.ckpt", link)
    replace_link(tmp_path / "b.ckpt", link)
    assert link.is_symlink() and os.readlink(link) == "b.ckpt" and link.read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_sigkill_mid_save_leaves_a_checkpoint_to_resume_from(workdir):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "acorm_pl.cli", "fit", *TINY_QMIX, "--torch_num_threads", "1",
           "--trainer.callbacks+=failure_callbacks.KillDuringSave", "--trainer.callbacks.save", "2"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (run,) = all_runs(workdir)
    folder = _checkpoint_dir(run)
    (partial,) = folder.glob(".*.partial")  # the second save was cut off mid-write...
    assert partial.stat().st_size > 0
    last = folder / "last.ckpt"  # ...and last.ckpt still names the first, whole
    assert read_checkpoint(last)["RolloutDataModule"]["env_steps"] < 400 and _finite(last)
    main(["fit", *TINY_QMIX, "--ckpt_path", str(last)])
    (run,) = all_runs(workdir)
    assert run.info.status == "FINISHED"
    assert read_checkpoint(last)["RolloutDataModule"]["env_steps"] >= 400
    assert not list(folder.glob(".*.partial"))


# ---- Ctrl-C -----------------------------------------------------------------------------------------------
def test_ctrl_c_during_the_first_evaluation_marks_the_run_and_loses_nothing(workdir, capsys, caplog):
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *TINY_QMIX, "--trainer.callbacks+=failure_callbacks.InterruptDuringFirstEvaluation"])
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C while it shuts down
    assert exit_info.value.code != 0
    assert "Traceback" not in capsys.readouterr().err
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in caplog.text  # Lightning's one line
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED"
    assert run.data.tags["acorm_pl.failure"] == "interrupted (Ctrl-C or SIGTERM) at env step 0"
    assert not list(_checkpoint_dir(run).glob("*"))  # no checkpoint yet, and no partial one


def test_ctrl_c_outside_a_run_ends_in_one_line(workdir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("acorm_pl.analysis.commands.evaluate_checkpoint", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "some.ckpt"])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["acorm-pl: interrupted; nothing was written after the last completed step"]
    assert not all_runs(workdir)


# ---- bad input ----------------------------------------------------------------------------------------------
def test_n_clusters_above_the_number_of_agents_is_refused_before_anything_starts(workdir, capsys):
    assert_one_line_error(["fit", *config_args("acorm", "3m"),
                           "--model.init_args.n_clusters", "7"], capsys,
                          "model.n_clusters must not exceed the number of agents (3 on this map), got 7")
    assert not all_runs(workdir)
    ACORM(env_info={**INFO, "n_agents": 1}, embed_dim=8, n_clusters=3)  # one agent: nothing to contrast, K moot
    with pytest.raises(ConfigError):
        ACORM(env_info=INFO, embed_dim=8, n_clusters=4)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_describes_acorm_pl_and_lists_its_commands(argv, capsys):
    main(argv)
    out = capsys.readouterr().out
    assert out.startswith("usage: acorm-pl COMMAND") and "ACORM" in out
    for name, (summary, _) in COMMANDS.items():
        assert f"  {name}  " in out and summary in out
    assert {"fit", "evaluate", "curves"} <= set(COMMANDS) and "validate" not in out


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_lightning_commands_without_a_loop_say_what_to_use(command, capsys):
    assert_one_line_error([command, "--config", str(REPO / "conf" / "quickstart.yaml")], capsys,
                          f"acorm-pl {command} is not available")
    assert_one_line_error(["fitt"], capsys, "unknown command 'fitt'; commands: fit, evaluate, curves")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--episodes", "0"], "argument --episodes: must be a positive integer, got '0'"),
        (["--n-envs", "0"], "argument --n-envs: must be a positive integer, got '0'"),
        (["--confidence", "1.5"], "argument --confidence: must be a confidence level in (0, 1)"),
    ],
)
def test_bad_evaluate_arguments_fail_in_one_line(args, expected, workdir, capsys):
    assert_one_line_error(["evaluate", "some.ckpt", *args], capsys, expected)


def test_a_map_whose_engine_is_missing_fails_in_one_line(workdir, capsys, monkeypatch):
    from acorm_pl.envs.football import scenario_layout

    for name in ["gfootball", *(n for n in sys.modules if n.startswith("gfootball."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as on a machine without gfootball
    scenario_layout.cache_clear()  # read from gfootball by earlier tests of the session
    config = config_args("qmix", "academy_3_vs_1_with_keeper", "football")
    # Tiny settings, so that if the engine were found after all the test fails fast instead of training.
    line = one_line_error(["fit", *config, *TINY, "--data.n_envs", "1", "--data.buffer_size", "8",
                           "--data.total_env_steps", "1", "--evaluation.n_eval_episodes", "1"], capsys)
    assert "Google Research Football is not installed" in line and "bash scripts/install_football.sh" in line, line
    assert not all_runs(workdir)


def test_curves_without_a_finished_run_fail_in_one_line(workdir, capsys):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'store' / 'mlruns.db'}")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "test/win_rate", 0.5, step=0)
    client.set_terminated(run.info.run_id, "FAILED")
    assert_one_line_error(["curves", str(workdir / "store"), "--no-mlflow"], capsys,
                          "no FINISHED run with metric 'test/win_rate'")


def test_an_unwritable_store_fails_before_anything_runs(workdir, capsys, monkeypatch):
    (workdir / "a_file").write_text("")
    uri = f"sqlite:///{workdir / 'a_file' / 'mlruns.db'}"
    expected = f"cannot write the MLflow store {workdir / 'a_file' / 'mlruns.db'}: {workdir / 'a_file'} is a file"
    assert_one_line_error(["evaluate", "some.ckpt", "--tracking-uri", uri], capsys, expected)
    assert_one_line_error(["curves", str(workdir), "--tracking-uri", uri], capsys, expected)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert_one_line_error(["fit", *TINY_QMIX], capsys, expected)
