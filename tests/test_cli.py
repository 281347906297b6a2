"""End-to-end ``acorm-pl fit`` runs on SMAX 3m: MLflow records, resume, precision, DDP and error messages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from cli_errors import assert_one_line_error
from mlflow.tracking import MlflowClient

from acorm_pl.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--config", str(REPO / "conf" / "quickstart.yaml"),
    "--data.n_envs", "4", "--data.buffer_size", "64", "--data.batch_size", "4",
    "--data.total_env_steps", "400", "--data.epoch_env_steps", "200",
    "--evaluation.eval_interval", "200", "--evaluation.n_eval_episodes", "4",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
]


def _client(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")


def _runs(workdir: Path, experiment: str = "quickstart"):
    client = _client(workdir)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _checkpoints(run) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"


def test_fit_writes_mlflow_run_with_test_metrics_against_env_steps(workdir):
    main(["fit", *TINY])
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"
    client = _client(workdir)
    history = client.get_metric_history(run.info.run_id, "test/win_rate")
    steps = [m.step for m in history]
    assert steps[0] == 0 and steps[-1] >= 400 and len(steps) >= 3  # start, every 200 env steps, end
    for key in ("test/return_mean", "test/ep_length_mean", "train/td_loss", "train/epsilon", "train/q_taken_mean",
                "train/target_mean", "perf/env_steps_per_s", "perf/updates_per_s", "perf/buffer_episodes"):
        assert key in run.data.metrics, key
    td_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/td_loss")]
    assert all(0 < s <= 500 for s in td_steps)  # logged against env steps, not optimizer steps
    assert run.data.params["map_name"] == "3m"
    config = (Path(run.info.artifact_uri.removeprefix("file://")) / "config.yaml").read_text()
    assert "map_name: 3m" in config and "total_env_steps: 400" in config
    assert (_checkpoints(run) / "last.ckpt").exists()


def test_resume_continues_env_steps_buffer_and_run(workdir):
    main(["fit", *TINY])
    (run,) = _runs(workdir)
    ckpt = _checkpoints(run) / "last.ckpt"
    first = torch.load(ckpt, weights_only=False)
    dm_state = first["RolloutDataModule"]
    assert dm_state["env_steps"] >= 400 and dm_state["buffer"]["size"] == dm_state["episodes"]
    assert first["state_dict"]["n_updates"] > 0 and first["optimizer_states"]
    between_ms = time.time() * 1000
    main(["fit", *TINY, "--data.total_env_steps", "800", "--ckpt_path", str(ckpt)])
    runs = _runs(workdir)
    assert len(runs) == 1, "the resumed fit must continue the same MLflow run"
    second = torch.load(_checkpoints(runs[0]) / "last.ckpt", weights_only=False)
    dm2 = second["RolloutDataModule"]
    assert dm2["env_steps"] >= 800 and dm2["episodes"] > dm_state["episodes"]
    assert dm2["buffer"]["episodes_added"] == dm2["episodes"]  # the old episodes were kept, new ones added
    assert torch.equal(dm2["buffer"]["steps"]["obs"][:1], dm_state["buffer"]["steps"]["obs"][:1])  # the oldest
    assert second["state_dict"]["n_updates"] > first["state_dict"]["n_updates"]
    win_steps = [m.step for m in _client(workdir).get_metric_history(runs[0].info.run_id, "test/win_rate")]
    assert max(win_steps) >= 800
    # The run clock continues from the checkpoint: every evaluation has it, it rises within each attempt, and
    # the resumed attempt's starts from the checkpoint's value, not from 0.
    history = _client(workdir).get_metric_history(runs[0].info.run_id, "time/run_s")
    assert sorted(m.step for m in history) == sorted(win_steps)
    (eval_state,) = [v for k, v in first["callbacks"].items() if k.startswith("Evaluation")]
    first_attempt = [m for m in history if m.timestamp < between_ms]
    second_attempt = [m for m in history if m.timestamp >= between_ms]
    for attempt in (first_attempt, second_attempt):
        values = [m.value for m in sorted(attempt, key=lambda m: (m.step, m.timestamp))]
        assert values and all(a <= b for a, b in zip(values, values[1:]))
    assert min(m.value for m in second_attempt) >= eval_state["run_s"] > 0


def test_the_run_clock_counts_training_time_and_not_the_pause_between_attempts(monkeypatch):
    import acorm_pl.callbacks.evaluation as evaluation

    now = [100.0]
    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: now[0])
    first = evaluation.Evaluation()
    first.setup(None, None, "fit")
    now[0] = 130.0
    state = first.state_dict()  # a checkpoint after 30 s of training
    assert state["run_s"] == 30.0
    now[0] = 5_000.0  # the attempt died; the next one starts much later
    second = evaluation.Evaluation()
    second.setup(None, None, "fit")
    second.load_state_dict(state)
    now[0] = 5_010.0
    assert second.run_seconds() == 40.0
    legacy = {k: v for k, v in state.items() if k != "run_s"}  # a checkpoint from before the clock
    third = evaluation.Evaluation()
    third.setup(None, None, "fit")
    third.load_state_dict(legacy)
    assert third.run_seconds() == 0.0


def test_a_continued_run_is_running_again_until_it_ends(workdir, monkeypatch):
    """An interrupted attempt leaves its run FAILED; the attempt that resumes it logs into the same run, which
    must read RUNNING while it does (what `acorm-pl sweep --status` and the MLflow UI show)."""
    from acorm_pl.tracking import MLflowTracker

    first = MLflowTracker(experiment_name="resume", tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    first.log_metrics({"x": 1.0}, step=0)
    client = _client(workdir)
    client.set_terminated(first.run_id, "FAILED")
    again = MLflowTracker(experiment_name="resume", tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}",
                          run_id=first.run_id)
    assert client.get_run(first.run_id).info.status == "FAILED"  # constructing it reads nothing yet
    again.log_metrics({"x": 2.0}, step=1)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.finalize("success")
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(first.run_id, "x")] == [1.0, 2.0]

    from lightning.pytorch.utilities import rank_zero_only

    client.set_terminated(first.run_id, "FAILED")
    other_rank = MLflowTracker(experiment_name="resume", tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}",
                               run_id=first.run_id)
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # a DDP rank other than 0: Lightning hands it a dummy client
    other_rank.experiment  # noqa: B018  (reading it must not fail, nor reopen the run)
    assert client.get_run(first.run_id).info.status == "FAILED"


def test_a_run_records_the_software_stack_it_ran_on(workdir):
    """A seeded run repeats to the last digit only on the same installation and CPU kernels, so every run
    names them in its tags."""
    import platform

    import numpy as np

    from acorm_pl.tracking import MLflowTracker

    tracker = MLflowTracker(experiment_name="stack", tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    tracker.log_metrics({"x": 1.0}, step=0)
    tags = _client(workdir).get_run(tracker.run_id).data.tags
    assert tags["acorm_pl.stack.torch"] == torch.__version__ and tags["acorm_pl.stack.numpy"] == np.__version__
    assert tags["acorm_pl.stack.python"] == platform.python_version()
    assert tags["acorm_pl.stack.torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["acorm_pl.stack.cpu"]
    assert tags["acorm_pl.stack.torch_cuda"] == (torch.version.cuda or "none")
    assert tags["acorm_pl.stack.visible_gpus"] == str(torch.cuda.device_count())
    assert not torch.cuda.is_initialized()  # counting GPUs must leave CUDA untouched, or a later DDP fork fails


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_bar_switch_keeps_or_drops_the_env_step_bar(workdir, enabled):
    from acorm_pl.callbacks import EnvStepProgressBar
    from acorm_pl.cli import build_cli

    cli = build_cli([*TINY, "--trainer.enable_progress_bar", str(enabled).lower()], run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, EnvStepProgressBar)]
    assert len(bars) == int(enabled)


def test_bf16_mixed_fit(workdir):
    main(["fit", *TINY, "--trainer.precision", "bf16-mixed"])
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"
    assert torch.isfinite(torch.tensor(run.data.metrics["train/td_loss"]))
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["state_dict"].values())


def test_failed_run_is_marked_failed_and_keeps_checkpoints(workdir):
    with pytest.raises(RuntimeError, match="boom"):
        main(["fit", *TINY, "--data.total_env_steps", "2000",
              "--trainer.callbacks+=failing_callback.ExplodeAtEnvSteps", "--trainer.callbacks.env_steps", "450"])
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)  # written before the failure
    assert ckpt["RolloutDataModule"]["env_steps"] >= 200


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.map_name", "MMM2"], "unknown SMAX map 'MMM2'; available:"),
        (["--data.batch_size", "0"], "data.batch_size must be a positive integer, got 0"),
        (["--data.n_envs", "two"], "data.n_envs"),
        (["--model.init_args.target_update", "sometimes"], "model.target_update must be 'soft' or 'hard'"),
        (["--epsilon.anneal_steps", "0"], "epsilon.anneal_steps must be a positive integer, got 0"),
        (["--torch_num_threads", "0"], "torch_num_threads must be a positive integer or null, got 0"),
    ],
)
def test_bad_config_values_fail_with_one_line(workdir, capsys, args, expected):
    assert_one_line_error(["fit", *TINY, *args], capsys, expected)
    assert not _runs(workdir)  # nothing was started


def test_torch_num_threads_sets_the_thread_count_for_the_run(workdir):
    torch.set_num_threads(2)
    main(["fit", *TINY, "--torch_num_threads", "1", "--data.total_env_steps", "200"])
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"  # Lightning's launchers keep it
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"


def _ddp_fit(workdir: Path, *extra: str, base: list[str] | None = None) -> subprocess.CompletedProcess:
    """A 2-process DDP ``acorm-pl fit`` of ``base`` (default: TINY) and ``extra`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "acorm_pl.cli", "fit", *(base or TINY), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(workdir):
    _ddp_fit(workdir)
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"
    ckpt = torch.load(_checkpoints(run) / "last.ckpt", weights_only=False)
    dm = ckpt["RolloutDataModule"]
    assert dm["world_size"] == 2 and dm["env_steps"] >= 400
    assert dm["episodes"] == 2 * dm["buffer"]["episodes_added"]  # each rank holds its own 4 envs' episodes
    assert "test/win_rate" in run.data.metrics


@pytest.mark.slow
def test_acorm_ddp_two_processes_runs_the_contrastive_step(workdir):
    # W only gets gradients from the contrastive loss: ACORM must switch DDP to find unused parameters itself.
    proc = _ddp_fit(workdir, "--model.class_path", "acorm_pl.algos.ACORM", "--model.init_args.embed_dim", "32",
                    "--roles.interval", "2")
    assert "find_unused_parameters enabled" in proc.stdout + proc.stderr
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED" and "roles/contrastive_loss" in run.data.metrics


def test_mlflow_tracking_uri_from_environment(workdir, monkeypatch):
    uri = f"sqlite:///{workdir / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    main(["fit", *TINY, "--data.total_env_steps", "200"])
    assert not (workdir / "mlruns.db").exists()
    mlflow.set_tracking_uri(uri)
    assert len(mlflow.search_runs(experiment_names=["quickstart"])) == 1
