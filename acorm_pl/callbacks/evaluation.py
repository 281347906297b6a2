"""Greedy evaluation every ``eval_interval`` env steps, aggregated over ranks with torchmetrics."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric

from acorm_pl.callbacks.schedule import next_due
from acorm_pl.data.rollout import collect_rollout
from acorm_pl.envs.base import VecEnv
from acorm_pl.envs.seeds import EVAL_SEED_OFFSET, evaluation_seeds
from acorm_pl.errors import require


class Evaluation(pl.Callback):
    """Runs ``n_eval_episodes`` greedy episodes (split over ranks) at the start, every ``eval_interval`` env
    steps and at the end; logs test/win_rate, test/return_mean and test/ep_length_mean against env steps, and
    time/run_s: the seconds this run has trained so far, summed over its attempts.

    Evaluation number ``j`` re-seeds its environments from ``j`` alone (:mod:`acorm_pl.envs.seeds`), so it
    plays the same episodes whatever ran before it: a resumed run evaluates what an uninterrupted one does.
    Likewise time/run_s continues from the checkpoint's value: neither the pause between attempts nor the work
    lost after the last checkpoint is counted, so it reads what an uninterrupted run would take.

    Args:
        eval_interval: env steps between evaluations.
        n_eval_episodes: greedy episodes per evaluation, over all ranks.
        n_eval_envs: environments stepped in parallel per rank (default: the training ``data.n_envs``, which
            reuses the compiled environment; episodes run in rounds of that many).
        eval_at_start: also evaluate before the first update.
        final_n_eval_episodes: episodes of the evaluation at the end of training (default: ``n_eval_episodes``);
            more episodes give the final number a tighter error bar.
        save_replay: after each evaluation, ask the evaluation environments to write replays (SMAC: one
            ``.SC2Replay`` per worker under ``data.env_kwargs.replay_dir``, holding every evaluation episode
            since its game was launched); a no-op for families without replays.
    """

    def __init__(self, eval_interval: int = 5000, n_eval_episodes: int = 32, n_eval_envs: int | None = None,
                 eval_at_start: bool = True, final_n_eval_episodes: int | None = None, save_replay: bool = False):
        require(eval_interval >= 1, f"evaluation.eval_interval must be a positive integer, got {eval_interval}")
        require(n_eval_episodes >= 1, f"evaluation.n_eval_episodes must be a positive integer, got {n_eval_episodes}")
        require(n_eval_envs is None or n_eval_envs >= 1, f"evaluation.n_eval_envs must be >= 1, got {n_eval_envs}")
        require(final_n_eval_episodes is None or final_n_eval_episodes >= 1,
                f"evaluation.final_n_eval_episodes must be >= 1, got {final_n_eval_episodes}")
        self.final_n_eval_episodes = final_n_eval_episodes
        self.save_replay = save_replay
        self.eval_interval, self.n_eval_episodes = eval_interval, n_eval_episodes
        self.n_eval_envs, self.eval_at_start = n_eval_envs, eval_at_start
        self.next_eval = 0
        self.n_evaluations = 0  # evaluations run so far: the next one's seed index
        self.last_eval_step = -1
        self.latest: dict[str, float] = {}
        self._run_s_before = 0.0  # seconds trained by earlier attempts, up to the checkpoint resumed from
        self._attempt_start = time.perf_counter()
        self._env: VecEnv | None = None
        self._metrics: dict[str, MeanMetric] = {}

    def run_seconds(self) -> float:
        """Seconds this run has trained (from the setup of each attempt), summed over its attempts."""
        return self._run_s_before + time.perf_counter() - self._attempt_start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._attempt_start = time.perf_counter()  # a checkpoint, restored after setup, adds earlier attempts

    def _episodes_per_rank(self, trainer: pl.Trainer, n_episodes: int | None = None) -> int:
        return math.ceil((n_episodes or self.n_eval_episodes) / trainer.world_size)

    def _eval_env(self, trainer: pl.Trainer) -> VecEnv:
        if self._env is None:
            per_rank = self._episodes_per_rank(trainer)
            n_envs = self.n_eval_envs or trainer.datamodule.n_envs
            self._env = trainer.datamodule.make_env(min(per_rank, n_envs), EVAL_SEED_OFFSET)
        return self._env

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, n_episodes: int | None = None
                 ) -> dict[str, float]:
        """Run ``n_episodes`` (default ``n_eval_episodes``) greedy episodes now; returns (and logs) the
        rank-aggregated metrics."""
        env = self._eval_env(trainer)
        dm = trainer.datamodule
        env.reseed(evaluation_seeds(dm.seed, self.n_evaluations, dm.rank, env.n_envs, trainer.world_size))
        self.n_evaluations += 1
        device = pl_module.device
        if not self._metrics:
            self._metrics = {k: MeanMetric().to(device) for k in ("win_rate", "return_mean", "ep_length_mean")}
        remaining = self._episodes_per_rank(trainer, n_episodes)
        while remaining > 0:
            rollout = collect_rollout(env, pl_module, explore=False)
            take = min(remaining, rollout.n_episodes)  # a failed worker's episode is dropped, not counted
            self._metrics["win_rate"].update(rollout.won[:take].float().to(device))
            self._metrics["return_mean"].update(rollout.returns[:take].to(device))
            self._metrics["ep_length_mean"].update(rollout.lengths[:take].float().to(device))
            remaining -= take
        if self.save_replay:
            env.save_replay()
        results = {f"test/{k}": float(m.compute()) for k, m in self._metrics.items()}
        for m in self._metrics.values():
            m.reset()
        step = trainer.datamodule.env_steps
        for logger in trainer.loggers:
            logger.log_metrics({**results, "time/run_s": self.run_seconds()}, step=step)
        for k, v in results.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        self.latest = results
        self.last_eval_step = step
        return results

    def _maybe_evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.datamodule.env_steps
        if step >= self.next_eval:
            self.evaluate(trainer, pl_module)
            self.next_eval = next_due(step, self.eval_interval)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.datamodule.env_steps == 0 and not self.eval_at_start:
            self.next_eval = self.eval_interval
        self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last_eval_step != trainer.datamodule.env_steps or self.final_n_eval_episodes:
            self.evaluate(trainer, pl_module, self.final_n_eval_episodes)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def state_dict(self) -> dict[str, Any]:
        return {"next_eval": self.next_eval, "last_eval_step": self.last_eval_step, "latest": self.latest,
                "n_evaluations": self.n_evaluations, "run_s": self.run_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_eval = state_dict["next_eval"]
        self.last_eval_step = state_dict["last_eval_step"]
        self.latest = state_dict.get("latest", {})
        # Checkpoints from before evaluations were indexed: one evaluation per interval before the next one due.
        self.n_evaluations = state_dict.get("n_evaluations", self.next_eval // self.eval_interval)
        # Checkpoints from before the clock: the earlier attempts' time is unknown (the export then falls back).
        self._run_s_before = float(state_dict.get("run_s", 0.0))
