"""One attempt at one trial, as a Ray task: an ordinary ``acorm-pl fit`` in a child process, resumed from the
trial's newest checkpoint when it has one, its output appended to ``<trial dir>/fit.log``."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acorm_pl.sweep.spec import Sweep, Trial

LOG = "fit.log"
CONFIG_ERROR = 2  # acorm-pl's exit code for bad input: the same input fails again, so it is not retried
TAG = "acorm_pl."


@dataclass(frozen=True)
class TrialJob:
    """What a Ray worker needs to run one attempt."""

    trial_id: str
    attempt: int
    args: tuple[str, ...]  # acorm-pl arguments (fit ...), without --ckpt_path
    trial_dir: str


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended."""

    trial_id: str
    attempt: int
    returncode: int | None  # None: the worker or its node was lost
    error: str | None  # the attempt's error line (acorm-pl's one-line error, or the last line of its log)
    checkpoint: str | None  # the checkpoint it resumed from
    resumed_env_steps: int | None  # that checkpoint's env-step counter
    host: str
    started: float  # unix time
    ended: float

    @property
    def config_error(self) -> bool:
        return self.returncode == CONFIG_ERROR

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_tags(sweep: Sweep, trial: Trial, config: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of a trial's run: sweep, trial id, variant, seed, map, and one tag per grid key."""
    tags = {f"{TAG}sweep": sweep.name, f"{TAG}trial": trial.trial_id, f"{TAG}variant": trial.variant,
            f"{TAG}seed": str(trial.seed)}
    map_name = (config.get("data") or {}).get("map_name")
    if map_name is not None:
        tags[f"{TAG}map"] = str(map_name)
    tags.update({f"{TAG}grid.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in trial.point.items()})
    return tags


def tracked_args(sweep: Sweep, trial: Trial, tracking_uri: str, tags: dict[str, str]) -> tuple[str, ...]:
    """The trial's ``acorm-pl fit`` arguments with its MLflow run: the sweep's experiment, the trial id as
    run name, the tags."""
    prefix = "--trainer.logger.init_args."
    return (*sweep.fit_args(trial), f"{prefix}tracking_uri={tracking_uri}",
            f"{prefix}experiment_name={sweep.experiment}", f"{prefix}run_name={trial.trial_id}",
            f"{prefix}tags={json.dumps(tags)}")


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest readable checkpoint file in ``directory`` (None without one).

    Not ``last.ckpt``: it is a link that a resume may leave behind (Lightning saves ``last-v1.ckpt`` when it
    resumes from a first-epoch checkpoint), and a kill between saving and relinking leaves it dangling. A
    file cut short by a kill while it was written is skipped for the one before it."""
    files = [p for p in directory.glob("*.ckpt") if p.is_file() and not p.is_symlink()]
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            checkpoint_env_steps(path)
        except Exception:  # truncated or otherwise unreadable: torch raises several types for that
            continue
        return path
    return None


def checkpoint_env_steps(path: Path) -> int | None:
    """The env-step counter stored in a checkpoint (memory-mapped: tensors are not read)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    steps = (state.get("RolloutDataModule") or {}).get("env_steps")
    return int(steps) if steps is not None else None


def _error_line(log_path: Path, offset: int, returncode: int) -> str | None:
    """The attempt's one-line error: acorm-pl's ``acorm-pl: error:`` line, else the signal or last log line."""
    if returncode == 0:
        return None
    with log_path.open("rb") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("acorm-pl: error:")]
    if errors:
        return errors[-1]
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return (lines[-1] if lines else f"exit code {returncode}")[:300]


def run_trial(job: TrialJob) -> AttemptResult:
    """Run one attempt (the body of the sweep's Ray task). A ``KeyboardInterrupt`` (``ray.cancel``) or the
    task's end for any other reason stops the child first (SIGTERM, which acorm-pl handles like Ctrl-C)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Ray cancels a running task with a simulated SIGINT, which does nothing while SIGINT is ignored, as it
        # is in every process of a sweep that a shell started in the background.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    trial_dir = Path(job.trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(trial_dir / "checkpoints")
    env_steps = checkpoint_env_steps(checkpoint) if checkpoint is not None else None
    resume = ["--ckpt_path", str(checkpoint)] if checkpoint is not None else []
    command = [sys.executable, "-m", "acorm_pl.sweep.child", str(os.getpid()), *job.args, *resume]
    host, started = socket.gethostname(), time.time()
    log_path = trial_dir / LOG
    with log_path.open("ab") as log:
        offset = log.tell()
        origin = f"resuming from {checkpoint} ({env_steps} env steps)" if checkpoint else "from the start"
        header = f"=== {job.trial_id} attempt {job.attempt} on {host} at {time.ctime(started)}: {origin}\n"
        log.write(f"{header}$ {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=trial_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            # Not one blocking wait: Ray delivers a cancellation as a KeyboardInterrupt, which Python raises
            # only between bytecodes, never inside waitpid.
            while (returncode := proc.poll()) is None:
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return AttemptResult(job.trial_id, job.attempt, returncode, _error_line(log_path, offset, returncode),
                         str(checkpoint) if checkpoint else None, env_steps, host, started, time.time())
