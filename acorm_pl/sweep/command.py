"""``acorm-pl sweep SWEEP.yaml``: every trial of a sweep file as an ordinary ``acorm-pl fit``, scheduled by Ray
(a local Ray by default, ``--address`` for a cluster), all logging to one MLflow tracking server.

    acorm-pl sweep conf/sweeps/smoke.yaml                 # run (or resume) the sweep
    acorm-pl sweep conf/sweeps/smoke.yaml --status        # where it stands
    acorm-pl sweep conf/sweeps/study.yaml --address auto --tracking-uri http://head:5000   # on a cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.live import Live
from rich.table import Table

from acorm_pl.errors import ConfigError, require
from acorm_pl.sweep.runner import AttemptResult, TrialJob, run_trial, tracked_args, trial_tags
from acorm_pl.sweep.server import STORE, TrackingServer, store_uri
from acorm_pl.sweep.spec import Sweep, Trial, check_trials, load_sweep
from acorm_pl.sweep.status import (
    finished_trials,
    fmt_rate,
    fmt_steps,
    main_run,
    progress_of,
    retire_stale_runs,
    status_table,
    sweep_runs,
    table,
)

POLL_S = 3.0  # how often the live table reads progress from MLflow


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` (printed as one line by ``acorm-pl``) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="acorm-pl sweep", description="Run every trial of a sweep file (base configs x seeds x grid "
                "of overrides) as an ordinary `acorm-pl fit` on Ray, each with its own MLflow run in one "
                "experiment and its own checkpoint directory. Rerunning skips FINISHED trials and resumes the "
                "others from their last checkpoint.")
    p.add_argument("sweep_file", help="the sweep file (YAML; see conf/sweeps/smoke.yaml)")
    p.add_argument("--status", action="store_true",
                   help="print each trial's status, env steps and latest test win rate, and run nothing")
    p.add_argument("--dir", type=Path, default=None,
                   help="sweep directory: checkpoints, logs, MLflow store (default: the file's `directory`, else "
                        "sweeps/<name>, relative to the working directory)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster ('auto', or the head's address that `ray start --head` prints); "
                        "default: a local Ray started and stopped by this command")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server of every trial (on a cluster: one every node reaches); default: an "
                        "`mlflow server` on 127.0.0.1 over <dir>/mlruns.db, stopped when the sweep ends")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray (default: all of this machine's); trials run side by side as far as "
                        "their resources.cpus allow")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray (default: those Ray detects)")
    p.add_argument("--only", action="append", metavar="PATTERN", default=None,
                   help="run (or show) only the trials whose id matches this shell-style pattern, e.g. "
                        "'*-2s3z-*' for one map of the grid first; repeat for several; a rerun without it runs "
                        "the rest")
    return p


@dataclass
class Row:
    """A trial's line in the live table."""

    trial: Trial
    status: str = "queued"  # queued, running, retrying, finished, failed, config error
    attempt: int = 0
    submitted_ms: int = 0
    env_steps: int | None = None
    win_rate: float | None = None
    note: str = ""


def sweep_command(argv: list[str], console: Console | None = None) -> None:
    """``acorm-pl sweep``: see :func:`sweep_parser`."""
    console = console or Console()
    args = sweep_parser().parse_args(argv)
    require(args.num_cpus is None or args.num_cpus >= 1, f"--num-cpus must be >= 1, got {args.num_cpus}")
    require(args.num_gpus is None or args.num_gpus >= 0, f"--num-gpus must be >= 0, got {args.num_gpus}")
    require(args.address is None or (args.num_cpus is None and args.num_gpus is None),
            "--num-cpus/--num-gpus size a local Ray; a cluster joined with --address has its own resources")
    sweep = load_sweep(args.sweep_file, args.dir)
    local_cpus = args.num_cpus or os.cpu_count() or 1
    require(args.address is not None or args.status or sweep.cpus <= local_cpus,
            f"a trial needs {sweep.cpus} CPUs (resources.cpus in {sweep.source}) but the local Ray has {local_cpus}")
    trials = sweep.select(args.only)
    reader = _reader(sweep, args.tracking_uri)
    if args.status:
        console.print(status_table(sweep, trials, sweep_runs(reader, sweep) if reader else {}))
        return
    configs = check_trials(sweep, trials)
    done = finished_trials(sweep_runs(reader, sweep)) if reader else set()
    todo = [t for t in trials if t.trial_id not in done]
    if not todo:
        console.print(f"sweep {sweep.name}: all {len(trials)} {'selected ' if args.only else ''}trials are FINISHED; "
                      "nothing to run")
        return
    console.print(f"sweep {sweep.name}: {len(todo)} of {len(trials)} {'selected ' if args.only else ''}trials to run"
                  + (f" ({len(done)} FINISHED earlier)" if done else "") + f"; directory {sweep.directory}")
    try:
        rows = _run(sweep, todo, configs, args, console)
    except KeyboardInterrupt:
        console.print(f"sweep {sweep.name}: interrupted; trials keep their checkpoints: run the same command "
                      "again to resume")
        raise SystemExit(130) from None
    failed = [r for r in rows if r.status != "finished"]
    for row in failed:
        console.print(f"trial {row.trial.trial_id} {row.status} after {row.attempt} attempt(s): {row.note}; "
                      f"log: {sweep.trial_dir(row.trial) / 'fit.log'}", highlight=False)
    store = sweep.directory if args.tracking_uri is None else args.tracking_uri
    console.print(f"sweep {sweep.name}: {len(rows) - len(failed)} of {len(rows)} trials finished. Curves: "
                  f"acorm-pl curves {store} --experiment {sweep.experiment}", highlight=False)
    if failed:
        raise SystemExit(1)


def _reader(sweep: Sweep, tracking_uri: str | None) -> MlflowClient | None:
    """A client of the sweep's store for reading: the given server, else the sqlite file (None before the
    first run created it)."""
    if tracking_uri is not None:
        return MlflowClient(tracking_uri=tracking_uri)
    if (sweep.directory / STORE).is_file():
        return MlflowClient(tracking_uri=store_uri(sweep.directory))
    return None


def _start_ray(args: argparse.Namespace, sweep: Sweep, stack: contextlib.ExitStack) -> Any:
    """``ray.init``: a local Ray of ``--num-cpus`` (default all) CPUs, or the cluster at ``--address``;
    ``ray.shutdown`` is queued on ``stack``. Checks that one trial's resources fit the cluster."""
    import ray

    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if args.address is not None:
        try:
            ray.init(address=args.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(f"cannot join the Ray cluster at {args.address!r}: {' '.join(str(err).split())}") \
                from None
    else:
        # Ray starts its workers at niceness 15; a trial is a plain fit and gets the CPU as one would.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=args.num_cpus or os.cpu_count() or 1, num_gpus=args.num_gpus, **options)
    stack.callback(ray.shutdown)
    if threading.current_thread() is threading.main_thread():
        # ray.init installs a SIGTERM handler that exits at once; acorm-pl's stops the trials first, as Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    resources = ray.cluster_resources()
    for name, need in (("CPU", sweep.cpus), ("GPU", sweep.gpus)):
        require(need <= resources.get(name, 0), f"a trial needs {need:g} {name}s (resources in {sweep.source}) "
                                                f"but the Ray cluster has {resources.get(name, 0):g}")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    require(len(nodes) == 1 or args.tracking_uri is not None,
            f"the Ray cluster has {len(nodes)} nodes, and trials on the others cannot reach a server on this "
            "machine's 127.0.0.1: run `mlflow server` where every node reaches it and pass --tracking-uri")
    return ray


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def _run(sweep: Sweep, todo: list[Trial], configs: dict[str, dict[str, Any]], args: argparse.Namespace,
         console: Console) -> list[Row]:
    """Start Ray and (unless --tracking-uri) the server, run ``todo`` with retries under a live table, and
    stop everything again."""
    with contextlib.ExitStack() as stack:
        server = None
        if args.tracking_uri is None:
            server = TrackingServer(sweep.directory)
            server.start()  # it starts while Ray does
            stack.callback(server.stop)
        ray = _start_ray(args, sweep, stack)
        if server is not None:
            server.wait_ready()
        uri = args.tracking_uri or server.uri
        client = MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(sweep.experiment) is None:  # made once here: trials would race for it
            client.create_experiment(sweep.experiment)
        task = ray.remote(run_trial).options(num_cpus=sweep.cpus, num_gpus=sweep.gpus, max_retries=0)
        rows = {t.trial_id: Row(t) for t in todo}
        pending: dict[Any, Row] = {}

        def submit(row: Row) -> None:
            row.attempt += 1
            row.status = "queued" if row.attempt == 1 else "retrying"
            row.submitted_ms = int(time.time() * 1000)
            tags = trial_tags(sweep, row.trial, configs[row.trial.trial_id])
            job = TrialJob(row.trial.trial_id, row.attempt, tracked_args(sweep, row.trial, uri, tags),
                           str(sweep.trial_dir(row.trial)))
            pending[task.remote(job)] = row

        for row in rows.values():
            submit(row)
        started, last_poll = time.monotonic(), 0.0
        if not console.is_terminal:  # rich leaves the last line of a Live printed to a file or pipe unterminated
            stack.callback(console.line)
        with Live(_live_table(sweep, rows, uri, started), console=console, refresh_per_second=1) as live:
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in ready:
                        row = pending.pop(ref)
                        result = _result(ray, ref, row)
                        _record(sweep, row.trial, result)
                        _conclude(row, result, sweep.retries, submit)
                    if ready or time.monotonic() - last_poll >= POLL_S:
                        with contextlib.suppress(MlflowException, OSError):  # shown progress only: next poll
                            _poll(client, sweep, rows)
                        last_poll = time.monotonic()
                    live.update(_live_table(sweep, rows, uri, started))
            except KeyboardInterrupt:
                for ref in pending:  # the tasks stop their fits with SIGTERM; their checkpoints stay
                    ray.cancel(ref)
                ray.wait(list(pending), num_returns=len(pending), timeout=60)
                raise
            runs = sweep_runs(client, sweep)
            for trial_id in (r.trial.trial_id for r in rows.values() if r.status == "finished"):
                retire_stale_runs(client, runs.get(trial_id, []))
            _poll(client, sweep, rows)
            live.update(_live_table(sweep, rows, uri, started))
        return list(rows.values())


def _result(ray: Any, ref: Any, row: Row) -> AttemptResult:
    """The attempt's result; a lost worker or node (or a failure of the task itself) counts as a crash."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        now = time.time()
        return AttemptResult(row.trial.trial_id, row.attempt, None, line[:300], None, None, "", now, now)


def _conclude(row: Row, result: AttemptResult, retries: int, submit: Any) -> None:
    """Next state of a trial after an attempt: finished, retried (from its checkpoint), or given up on."""
    if result.returncode == 0:
        resumed = result.resumed_env_steps is not None
        row.status, row.note = "finished", f"resumed at {result.resumed_env_steps:,} env steps" if resumed else ""
    elif result.config_error:
        row.status, row.note = "config error", result.error or ""  # the same input fails again: no retry
    elif row.attempt <= retries:
        row.note = f"attempt {row.attempt}: {result.error}"
        submit(row)
    else:
        row.status, row.note = "failed", result.error or ""


def _record(sweep: Sweep, trial: Trial, result: AttemptResult) -> None:
    """Append the attempt to ``<trial dir>/attempts.jsonl``."""
    path = sweep.trial_dir(trial) / "attempts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result.as_dict()) + "\n")


def _poll(client: MlflowClient, sweep: Sweep, rows: dict[str, Row]) -> None:
    """Env steps and win rates from MLflow; a queued trial is running once its run logs after submission."""
    runs = sweep_runs(client, sweep)
    for trial_id, row in rows.items():
        run = main_run(runs.get(trial_id, []))
        if run is None:
            continue
        progress = progress_of(run)
        row.env_steps, row.win_rate = progress.env_steps, progress.win_rate
        if row.status in ("queued", "retrying") and progress.last_logged >= row.submitted_ms:
            row.status = "running"


def _live_table(sweep: Sweep, rows: dict[str, Row], uri: str, started: float) -> Table:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row.status] = counts.get(row.status, 0) + 1
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    title = (f"sweep {sweep.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
             + f" ({minutes}:{seconds:02d})")
    return table(title, ["trial", "status", "attempt", "env steps", "test/win_rate", "note"],
                 [[r.trial.trial_id, r.status, r.attempt, fmt_steps(r.env_steps), fmt_rate(r.win_rate), r.note]
                  for r in rows.values()],
                 caption=f"MLflow {uri}, experiment {sweep.experiment!r}; logs {sweep.directory / 'trials'}"
                         "/<trial>/fit.log")
