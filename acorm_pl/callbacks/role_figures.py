"""Role maps and attention heatmaps of the current policy during training, as MLflow artifacts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from acorm_pl.callbacks.schedule import next_due
from acorm_pl.envs.seeds import FIGURES_SEED_OFFSET
from acorm_pl.errors import require


class RoleFigures(pl.Callback):
    """Every ``interval`` env steps (and at the end of training) records one greedy episode of the current
    policy and writes its role map (t-SNE of agent embeddings and role representations, Fig. 4) and, for
    models with role attention, its attention heatmaps (Fig. 5) with the data behind them, as artifacts
    ``figures/step_<env steps>/{role_map,attention}.{png,json,csv}`` of the run's MLflow page (or under
    ``<trainer.default_root_dir>/figures`` without an MLflow logger). Runs on global rank 0 only, on
    environment copies of its own; the training RNG streams are not touched.

    Enable with ``--trainer.callbacks+=acorm_pl.callbacks.RoleFigures --trainer.callbacks.interval 50000``.

    Args:
        interval: env steps between figures.
        timesteps: episode steps shown in the role map (default: first, middle and last).
        at_start: also draw the untrained policy before the first update.
        at_end: also draw the final policy when training ends.
        seed: t-SNE seed.
    """

    def __init__(self, interval: int = 50_000, timesteps: list[int] | None = None, at_start: bool = False,
                 at_end: bool = True, seed: int = 0):
        require(interval >= 1, f"RoleFigures.interval must be a positive integer, got {interval}")
        require(timesteps is None or all(t >= 0 for t in timesteps), "RoleFigures.timesteps must be >= 0")
        self.interval, self.timesteps, self.seed = interval, timesteps, seed
        self.at_start, self.at_end = at_start, at_end
        self.next_step = 0 if at_start else interval
        self.last_step = -1
        self.written: list[Path] = []  # local files of the latest figures (without an MLflow logger)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record one greedy episode now and log its figures (global rank 0 only)."""
        # Imported here: acorm_pl.analysis imports the callbacks package (RoleClustering).
        from acorm_pl.analysis.figures import write_episode_figures
        from acorm_pl.analysis.inspect import record_episodes

        step = trainer.datamodule.env_steps
        self.last_step = step
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        env = dm.make_env(dm.n_envs, FIGURES_SEED_OFFSET)  # the training shapes: no new compilation for SMAX
        try:
            (record,) = record_episodes(pl_module, env, 1)
        finally:
            env.close()
        length = record.length
        steps = None if self.timesteps is None else sorted({min(t, length - 1) for t in self.timesteps})
        title = f"{type(pl_module).__name__} on {dm.map_name}, {step:,} env steps ({'won' if record.won else 'lost'})"
        # Imported here so that the callbacks load without MLflow (benchmarks/gpu_check.py on a bare GPU machine).
        from acorm_pl.tracking import MLflowTracker

        tracker = next((lg for lg in trainer.loggers if isinstance(lg, MLflowTracker)), None)
        artifact_dir = f"figures/step_{step:09d}"
        if tracker is None:
            out = Path(trainer.default_root_dir) / artifact_dir
            self.written = write_episode_figures(record, out, steps, title, self.seed)
            return
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_episode_figures(record, tmp, steps, title, self.seed):
                tracker.experiment.log_artifact(tracker.run_id, str(path), artifact_dir)

    def _maybe_draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.datamodule.env_steps
        if step >= self.next_step:
            self.draw(trainer, pl_module)
            self.next_step = next_due(step, self.interval)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and trainer.datamodule.env_steps == 0:
            self._maybe_draw(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_draw(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and self.last_step != trainer.datamodule.env_steps:
            self.draw(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self.next_step, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_step, self.last_step = state_dict["next_step"], state_dict["last_step"]
