"""Small training runs for the notebooks and tests: ``acorm-pl fit`` in-process with settings that train in
minutes (or, with ``quick``, seconds) on a CPU, into an MLflow store of their own."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient

from acorm_pl.errors import require

# Learns within minutes on a 2-core CPU (the quick start's loop settings with a smaller buffer).
SMALL = ["--data.n_envs", "8", "--data.buffer_size", "1000", "--data.batch_size", "32",
         "--data.updates_per_collect", "4", "--epsilon.anneal_steps", "20000",
         "--evaluation.n_eval_episodes", "16", "--evaluation.final_n_eval_episodes", "32"]
# Seconds: tiny networks, a few hundred env steps; enough to exercise every code path.
QUICK = ["--data.n_envs", "4", "--data.buffer_size", "32", "--data.batch_size", "4",
         "--evaluation.n_eval_episodes", "4", "--evaluation.final_n_eval_episodes", "4",
         "--model.init_args.embed_dim", "32", "--roles.interval", "2"]


def small_run_args(config: str | Path | Sequence[str | Path], workdir: str | Path, run_name: str, env_steps: int,
                   seed: int = 0, eval_interval: int = 2500, experiment: str = "notebooks", quick: bool = False,
                   extra: list[str] | None = None) -> list[str]:
    """``acorm-pl fit`` arguments of a small run of ``config`` (one file, or files composed in order, e.g. an
    algorithm file then an environment file) logging to ``<workdir>/mlruns.db``."""
    configs = [config] if isinstance(config, (str, Path)) else list(config)
    return ["fit", *[a for c in configs for a in ("--config", str(c))], "--seed_everything", str(seed),
            *(QUICK if quick else SMALL),
            "--data.total_env_steps", str(env_steps), "--data.epoch_env_steps", str(env_steps),
            "--evaluation.eval_interval", str(eval_interval),
            "--trainer.logger.init_args.tracking_uri", f"sqlite:///{Path(workdir).resolve() / 'mlruns.db'}",
            "--trainer.logger.init_args.experiment_name", experiment,
            "--trainer.logger.init_args.run_name", run_name,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *(extra or [])]


def _runs(workdir: str | Path, run_name: str, experiment: str) -> list:
    """Runs called ``run_name`` in ``<workdir>/mlruns.db``, newest first."""
    db = Path(workdir).resolve() / "mlruns.db"
    if not db.is_file():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"]) if exp else []


def run_checkpoint(workdir: str | Path, run_name: str, experiment: str = "notebooks") -> Path:
    """``last.ckpt`` of the newest run called ``run_name`` in ``<workdir>/mlruns.db``."""
    runs = _runs(workdir, run_name, experiment)
    require(bool(runs), f"no run {run_name!r} in experiment {experiment!r} of {workdir}/mlruns.db")
    path = Path(runs[0].info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.ckpt"
    require(path.is_file(), f"run {run_name!r} has no checkpoint at {path}")
    return path


def train_small_run(config: str | Path | Sequence[str | Path], workdir: str | Path, run_name: str, env_steps: int,
                    seed: int = 0, eval_interval: int = 2500, experiment: str = "notebooks", quick: bool = False,
                    extra: list[str] | None = None, reuse: bool = True) -> Path:
    """Train a small run (see :func:`small_run_args`) in this process; returns its ``last.ckpt``. With
    ``reuse`` a finished run of the same name in ``workdir`` is returned instead of training again."""
    from acorm_pl.cli import main

    runs = _runs(workdir, run_name, experiment) if reuse else []
    if runs and runs[0].info.status == "FINISHED":
        return run_checkpoint(workdir, run_name, experiment)
    args = small_run_args(config, workdir, run_name, env_steps, seed, eval_interval, experiment, quick, extra)
    saved, sys.argv = sys.argv, sys.argv[:1]  # a notebook kernel's own argv is not the CLI's
    try:
        main(args)
    finally:
        sys.argv = saved
    return run_checkpoint(workdir, run_name, experiment)
