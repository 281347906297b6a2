"""Where a sweep stands, read from its MLflow runs (tagged with the sweep and trial) and its trial directories:
the ``acorm-pl sweep --status`` table and the rows of the live table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from rich.table import Table

from acorm_pl.sweep.runner import TAG, checkpoint_env_steps, latest_checkpoint
from acorm_pl.sweep.spec import Sweep, Trial

WIN_RATE = "test/win_rate"


@dataclass(frozen=True)
class RunProgress:
    """A trial's MLflow run as the tables show it."""

    run_id: str
    status: str  # MLflow's: RUNNING (also a run whose process was killed), FINISHED, FAILED, KILLED
    env_steps: int | None  # the largest step any metric was logged at (metrics are logged against env steps)
    win_rate: float | None  # the latest test win rate
    last_logged: int  # unix ms of the run's start or its latest metric, whichever is later


def sweep_runs(client: MlflowClient, sweep: Sweep) -> dict[str, list[Run]]:
    """The sweep's runs in its experiment, by trial id (a trial restarted from scratch has several)."""
    experiment = client.get_experiment_by_name(sweep.experiment)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG}sweep` = '{sweep.name}'",
                              max_results=50_000)
    by_trial: dict[str, list[Run]] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags.get(f"{TAG}trial", ""), []).append(run)
    return by_trial


def main_run(runs: Sequence[Run]) -> Run | None:
    """The run that speaks for a trial: its FINISHED run, else its newest."""
    if not runs:
        return None
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return max(finished or runs, key=lambda r: r.info.start_time or 0)


def progress_of(run: Run) -> RunProgress:
    """Env steps, latest test win rate and last activity of ``run`` (from the latest value of each metric)."""
    latest = run.data.to_proto().metrics  # the latest point of each metric, with its step and timestamp
    env_steps = max((m.step for m in latest), default=None)
    last = max([run.info.start_time or 0, *(m.timestamp for m in latest)])
    return RunProgress(run.info.run_id, run.info.status, env_steps, run.data.metrics.get(WIN_RATE), last)


def finished_trials(runs: dict[str, list[Run]]) -> set[str]:
    """Trial ids with a FINISHED run."""
    return {trial for trial, rs in runs.items() if any(r.info.status == "FINISHED" for r in rs)}


def retire_stale_runs(client: MlflowClient, runs: Sequence[Run]) -> list[str]:
    """Mark a finished trial's other runs that never ended (attempts killed before their first checkpoint,
    so their retry started a new run) KILLED, so that ``acorm-pl curves`` reads one run per trial."""
    keep = main_run(runs)
    stale = [r.info.run_id for r in runs if r is not keep and r.info.status == "RUNNING"]
    for run_id in stale:
        client.set_terminated(run_id, "KILLED")
    return stale


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> Table:
    """A rich table; the first column left-aligned, the rest right-aligned."""
    out = Table(title=title, caption=caption, caption_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    return out


def fmt_steps(steps: int | None) -> str:
    return "" if steps is None else f"{steps:,}"


def fmt_rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.3f}"


def status_table(sweep: Sweep, trials: Sequence[Trial], runs: dict[str, list[Run]]) -> Table:
    """``acorm-pl sweep --status``: every trial's run status, env steps, latest test win rate and newest
    checkpoint (what a rerun resumes from)."""
    rows = []
    counts: dict[str, int] = {}
    for trial in trials:
        run = main_run(runs.get(trial.trial_id, []))
        progress = progress_of(run) if run is not None else None
        status = progress.status if progress else "not started"
        counts[status] = counts.get(status, 0) + 1
        checkpoint = latest_checkpoint(sweep.trial_dir(trial) / "checkpoints")
        resume_at = checkpoint_env_steps(checkpoint) if checkpoint is not None else None
        rows.append([trial.trial_id, status, fmt_steps(progress.env_steps if progress else None),
                     fmt_rate(progress.win_rate if progress else None), fmt_steps(resume_at),
                     progress.run_id if progress else ""])
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    caption = (f"{summary}. Running the sweep again starts or resumes (from the checkpoint) every trial that is not "
               f"FINISHED. Logs: {sweep.directory / 'trials'}/<trial>/fit.log")
    return table(f"sweep {sweep.name} (experiment {sweep.experiment!r}, {Path(sweep.directory)})",
                 ["trial", "status", "env steps", WIN_RATE, "checkpoint at", "MLflow run"], rows, caption)
