"""Evaluate a checkpoint: greedy episodes on its own environment, the test win rate with a confidence
interval and the mean return, optionally with the per-timestep inspection data; logged to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from acorm_pl.analysis.inspect import (
    EpisodeRecord,
    checkpoint_env,
    checkpoint_summary,
    greedy_rollouts,
    load_checkpoint,
    record_episodes,
)
from acorm_pl.analysis.progress import interval, progress_task, rich_table
from acorm_pl.analysis.stats import bootstrap_ci, wilson_interval
from acorm_pl.envs.seeds import ANALYSIS_SEED
from acorm_pl.errors import require
from acorm_pl.tracking import MLflowTracker


@dataclass
class EvaluationResult:
    """Outcomes of the greedy episodes of one evaluation."""

    checkpoint: str
    algorithm: str  # class name of the policy
    env: str
    map_name: str
    env_steps: int  # env steps the checkpoint was trained for
    seed: int  # environment copies were seeded seed + i
    won: np.ndarray  # [K] bool
    returns: np.ndarray  # [K]
    lengths: np.ndarray  # [K]
    source_run_id: str | None = None  # MLflow run that wrote the checkpoint
    confidence: float = 0.95

    @property
    def n_episodes(self) -> int:
        return int(self.won.size)

    def metrics(self) -> dict[str, float]:
        """``test/win_rate`` with its Wilson interval over episodes, ``test/return_mean`` with its bootstrap
        interval, ``test/ep_length_mean`` and ``test/n_episodes``."""
        win_low, win_high = wilson_interval(int(self.won.sum()), self.n_episodes, self.confidence)
        ret_low, ret_high = bootstrap_ci(self.returns, self.confidence)
        return {"test/win_rate": float(self.won.mean()), "test/win_rate_low": win_low,
                "test/win_rate_high": win_high, "test/return_mean": float(self.returns.mean()),
                "test/return_low": ret_low, "test/return_high": ret_high,
                "test/ep_length_mean": float(self.lengths.mean()), "test/n_episodes": float(self.n_episodes)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (settings, metrics, per-episode outcomes)."""
        return {"checkpoint": self.checkpoint, "algorithm": self.algorithm, "env": self.env, "map_name": self.map_name,
                "env_steps": self.env_steps, "seed": self.seed, "confidence": self.confidence,
                "source_run_id": self.source_run_id, "metrics": self.metrics(),
                "episodes": {"won": self.won.astype(bool).tolist(), "return": self.returns.tolist(),
                             "length": self.lengths.tolist()}}

    def table(self) -> Table:
        """A rich table of the evaluation for the terminal."""
        m = self.metrics()
        pct = round(self.confidence * 100)
        columns = ["greedy episodes", f"test win rate [{pct}% Wilson CI]", f"mean return [{pct}% bootstrap CI]",
                   "mean length"]
        row = [self.n_episodes, interval(m["test/win_rate"], m["test/win_rate_low"], m["test/win_rate_high"]),
               interval(m["test/return_mean"], m["test/return_low"], m["test/return_high"], 2),
               f"{m['test/ep_length_mean']:.1f}"]
        title = f"{self.algorithm} on {self.env} {self.map_name} after {self.env_steps:,} env steps"
        return rich_table(title, columns, [row])


def evaluate_checkpoint(path: str | Path, n_episodes: int = 32, seed: int = ANALYSIS_SEED, n_envs: int | None = None,
                        record: bool = False, confidence: float = 0.95, progress: bool = False
                        ) -> tuple[EvaluationResult, list[EpisodeRecord]]:
    """Run ``n_episodes`` greedy episodes of the policy in checkpoint ``path`` on its own environment
    (``n_envs`` copies at a time, default min(n_episodes, 16), seeded ``seed + i``). With ``record`` the
    per-timestep data of every episode is returned too (else an empty list)."""
    require(n_episodes >= 1, f"episodes must be a positive integer, got {n_episodes}")
    require(n_envs is None or n_envs >= 1, f"n_envs must be a positive integer, got {n_envs}")
    summary = checkpoint_summary(path)
    model, data = load_checkpoint(path)
    env = checkpoint_env(data, seed, n_envs or min(n_episodes, 16))
    won, returns, lengths = [], [], []
    records: list[EpisodeRecord] = []
    try:
        with progress_task(f"greedy episodes on {data['map_name']}", n_episodes, progress) as advance:
            if record:
                records = record_episodes(model, env, n_episodes, on_episodes=advance)
                won = [torch.tensor([r.won for r in records])]
                returns = [torch.tensor([r.episode_return for r in records])]
                lengths = [torch.tensor([r.length for r in records])]
            else:
                for rollout, take in greedy_rollouts(model, env, n_episodes):
                    won.append(rollout.won[:take])
                    returns.append(rollout.returns[:take])
                    lengths.append(rollout.lengths[:take])
                    advance(take)
    finally:
        env.close()
    result = EvaluationResult(
        checkpoint=str(Path(path).resolve()), algorithm=type(model).__name__, env=summary["env"],
        map_name=summary["map_name"], env_steps=summary["env_steps"], seed=seed,
        won=torch.cat(won).numpy().astype(bool), returns=torch.cat(returns).double().numpy(),
        lengths=torch.cat(lengths).numpy(), source_run_id=summary["mlflow_run_id"], confidence=confidence)
    return result, records


def log_analysis_run(experiment: str, run_name: str, files: dict[str, Sequence[Path]],
                     metrics: dict[str, float] | None = None, step: int = 0, params: dict[str, Any] | None = None,
                     tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> str:
    """A new FINISHED MLflow run (same store conventions as training runs) holding ``metrics`` at ``step``,
    ``params``, ``tags`` and the ``files`` as artifacts (artifact directory -> local files); its run id."""
    tracker = MLflowTracker(experiment_name=experiment, run_name=run_name, tracking_uri=tracking_uri, tags=tags)
    if params:
        tracker.log_hyperparams(params)
    if metrics:
        tracker.log_metrics(metrics, step=step)
    log_files(tracker.experiment, tracker.run_id, files)
    tracker.finalize("success")
    return tracker.run_id


def log_files(client: Any, run_id: str, files: dict[str, Sequence[Path]]) -> None:
    """Log local ``files`` as artifacts of ``run_id`` (artifact directory -> files; "" for the root)."""
    for artifact_path, paths in files.items():
        for p in paths:
            client.log_artifact(run_id, str(p), artifact_path or None)


def log_evaluation(result: EvaluationResult, files: dict[str, Sequence[Path]] | None = None,
                   tracking_uri: str | None = None, experiment: str = "evaluation", run_name: str | None = None,
                   summary_path: Path | None = None) -> str:
    """Log ``result`` as a new MLflow run: the metrics at the checkpoint's env-step count, the settings as
    params, the source run and checkpoint as tags, ``files`` (and ``summary_path``) as artifacts."""
    tags = {"acorm_pl.checkpoint": result.checkpoint, "acorm_pl.algorithm": result.algorithm,
            "acorm_pl.map_name": result.map_name}
    if result.source_run_id:
        tags["acorm_pl.source_run_id"] = result.source_run_id
    params = {"n_episodes": result.n_episodes, "seed": result.seed, "confidence": result.confidence,
              "env": result.env, "map_name": result.map_name, "checkpoint_env_steps": result.env_steps}
    all_files = dict(files or {})
    if summary_path is not None:
        all_files[""] = [*all_files.get("", []), summary_path]
    name = run_name or f"evaluate-{result.algorithm}-{result.map_name}"
    return log_analysis_run(experiment, name, all_files, result.metrics(), result.env_steps, params, tags,
                            tracking_uri)
