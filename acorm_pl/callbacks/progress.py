"""A rich progress bar over environment steps (not batches)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class EnvStepProgressBar(ProgressBar):
    """Shows env steps against the budget, episodes, the latest test win rate and env steps/s (rank 0 only).

    Args:
        refresh_per_second: redraws per second.
        console: the rich console to draw on (default: stdout).
    """

    def __init__(self, refresh_per_second: float = 4.0, console: Console | None = None):
        super().__init__()
        self.refresh_per_second = refresh_per_second
        self._enabled = True
        self._console = console
        self._progress: Progress | None = None
        self._task: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _fields(self, trainer: pl.Trainer) -> dict[str, str]:
        metrics = trainer.callback_metrics
        win = metrics.get("test/win_rate")
        sps = metrics.get("perf/env_steps_per_s")
        return {
            "episodes": f"{trainer.datamodule.episodes:,}",
            "win": "-" if win is None else f"{float(win):.2f}",
            "sps": "-" if sps is None else f"{float(sps):,.0f}",
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        dm = trainer.datamodule
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("env steps | episodes {task.fields[episodes]} | test win {task.fields[win]} | "
                       "{task.fields[sps]} steps/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            refresh_per_second=self.refresh_per_second,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"{dm.env_name}:{dm.map_name}", total=dm.total_env_steps,
                                             completed=dm.env_steps, **self._fields(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.datamodule.env_steps, **self._fields(trainer))

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.datamodule.env_steps, **self._fields(trainer))
            self._progress.stop()
            self._progress = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop(trainer)
