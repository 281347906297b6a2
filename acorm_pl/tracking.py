"""MLflow tracking: a logger with project defaults, the resolved config as an artifact, run-scoped checkpoints
written atomically, and the reason a run failed."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import warnings
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from acorm_pl.checkpoints import read_checkpoint
from acorm_pl.errors import ConfigError


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an sqlite store ``mlruns.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def check_tracking_store(uri: str) -> None:
    """Raise :class:`ConfigError` (one line) when the sqlite store of ``uri`` cannot be written, before any
    run starts; other stores are left to MLflow. Missing directories are created, as MLflow would."""
    if not uri.startswith("sqlite:///"):
        return
    store = Path(uri[len("sqlite:///"):])
    if str(store) in ("", ":memory:"):
        return
    hint = ("choose a writable place with MLFLOW_TRACKING_URI or --trainer.logger.init_args.tracking_uri "
            "(evaluate, curves: --tracking-uri)")
    existing = next(p for p in (store.parent, *store.parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise ConfigError(f"cannot write the MLflow store {store}: {existing} is a file, not a directory; {hint}")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        if store.exists():
            with open(store, "r+b"):
                pass
        else:
            with tempfile.TemporaryFile(dir=store.parent):
                pass
    except OSError as err:
        raise ConfigError(f"cannot write the MLflow store {store} ({err.strerror or err}); {hint}") from err


def source_commit(directory: Path | None = None) -> str | None:
    """The git commit of the checkout holding ``directory`` (default: the running acorm_pl source, when it is
    a git checkout of its own), with ``-dirty`` appended when its tracked ``acorm_pl/`` or ``conf/`` files differ
    from it; None outside a git checkout. Every run records the code it ran."""
    if directory is None:
        directory = Path(__file__).resolve().parent.parent
        if not (directory / ".git").exists():  # installed from a wheel, perhaps inside another repository
            return None
    git = ["git", "-C", str(directory)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "diff", "--quiet", "HEAD", "--", "acorm_pl", "conf"],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


STACK_TAG = "acorm_pl.stack."
STACK_PACKAGES = ("torch", "numpy", "jax", "jaxlib", "jaxmarl", "lightning")


def software_stack() -> dict[str, str]:
    """What a run's numbers depend on besides the code and the seed: Python, the numerical packages installed,
    the CPU and the instruction set torch picked kernels for, the CUDA torch was built with ("none" for a CPU
    build) and how many GPUs were visible. A seeded run repeats to the last digit on one machine and
    installation; across machines these say what a rerun has to match."""
    # torch counts GPUs through NVML where it can, without initialising CUDA, so a DDP fork after this still works
    stack = {"python": platform.python_version(), "cpu": _cpu_model(),
             "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "torch_cuda": torch.version.cuda or "none", "visible_gpus": str(torch.cuda.device_count())}
    for name in STACK_PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            stack[name] = metadata.version(name)
    return stack


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class MLflowTracker(MLFlowLogger):
    """Lightning's MLFlowLogger with acorm-pl's defaults.

    Args:
        experiment_name: MLflow experiment (created if missing).
        run_name: display name of the run.
        tracking_uri: tracking store; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``.
        tags: extra run tags.
        artifact_location: artifact root for a newly created experiment (default: ``./mlartifacts``
            next to an sqlite store).
        run_id: continue this existing run instead of starting a new one.
    """

    def __init__(self, experiment_name: str = "acorm-pl", run_name: str | None = None, tracking_uri: str | None = None,
                 tags: dict[str, Any] | None = None, artifact_location: str | None = None, run_id: str | None = None):
        uri = tracking_uri or default_tracking_uri()
        check_tracking_store(uri)
        if artifact_location is None and uri.startswith("sqlite:///"):
            store = Path(uri[len("sqlite:///"):])
            artifact_location = (store.parent / "mlartifacts").resolve().as_uri()
        tags = {k: str(v) for k, v in (tags or {}).items()}  # MLflow tags are strings; YAML reads "0" as 0
        commit = source_commit()
        if commit is not None:
            tags.setdefault("acorm_pl.git_commit", commit)
        for key, value in software_stack().items():
            tags.setdefault(STACK_TAG + key, value)
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags,
                         artifact_location=artifact_location, run_id=run_id)
        self.run_started = run_id is not None  # whether a run exists to log to; reading it starts none
        self._reopen = run_id is not None  # a continued run was left FAILED or KILLED by the attempt it continues

    @property
    def experiment(self) -> Any:
        """The MLflow client (Lightning's), with the run started; ``$MLFLOW_TRACKING_URI`` is left as it was."""
        # mlflow.set_tracking_uri, which Lightning calls here, also exports MLFLOW_TRACKING_URI: a second run
        # in the same process would then log into this run's store instead of its own default.
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            client = super().experiment
            self.run_started = True
            if self._reopen and rank_zero_only.rank == 0:  # other DDP ranks get Lightning's dummy client
                self._reopen = False
                if client.get_run(self.run_id).info.status != "RUNNING":
                    client.update_run(self.run_id, status="RUNNING")
            return client
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log hyperparameters; on a resumed run MLflow forbids changing a logged value, so changed ones
        (e.g. a larger env-step budget) are recorded in the tag ``acorm_pl.changed_on_resume`` instead."""
        flat = {k: str(v) for k, v in _flatten_dict(_convert_params(params)).items()}
        existing = self.experiment.get_run(self.run_id).data.params
        changed = {k: v for k, v in flat.items() if k in existing and existing[k] != v}
        fresh = {k: v for k, v in flat.items() if k not in existing}
        if changed:
            note = "; ".join(f"{k}: {existing[k]} -> {v}" for k, v in sorted(changed.items()))
            self.experiment.set_tag(self.run_id, "acorm_pl.changed_on_resume", note[:5000])
        if fresh:
            super().log_hyperparams(fresh)

    def artifact_dir(self) -> Path | None:
        """Local directory of this run's artifacts, or None when the artifact store is remote."""
        uri = self.experiment.get_run(self.run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path))
        return None

    def log_text(self, text: str, artifact_file: str) -> None:
        self.experiment.log_text(self.run_id, text, artifact_file)


class MLflowSaveConfig(SaveConfigCallback):
    """Stores the fully resolved CLI config as the run artifact ``config.yaml`` (and in the trainer's
    root dir when no MLflow logger is used)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, MLflowTracker) and trainer.is_global_zero:
                logger.log_text(text, "config.yaml")
                return
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; renamed into place when complete


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in its directory, flushes it to disk and renames it into place,
    so a process killed during a save leaves the previous checkpoints whole. The file is streamed, not
    built in memory first (a checkpoint with a replay buffer can be gigabytes). Remote paths go to Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        except BaseException:
            with suppress(OSError):
                partial.unlink()
            raise
        _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_link(target: str | os.PathLike[str], link: str | os.PathLike[str]) -> None:
    """Point the symlink ``link`` at ``target`` (relative) in one rename, so ``link`` always names a whole file."""
    link = Path(link)
    temp = link.with_name(f".{link.name}.{os.getpid()}.link")
    with suppress(FileNotFoundError):
        temp.unlink()
    os.symlink(os.path.relpath(target, link.parent), temp)
    os.replace(temp, link)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes into the MLflow run's artifact directory (``<artifacts>/checkpoints``)
    when no ``dirpath`` is given, records the run id in each checkpoint so a resume continues that run, and
    saves atomically: files through :class:`AtomicCheckpointIO`, the ``last.ckpt`` link (``save_last="link"``)
    re-pointed in one rename as soon as a new checkpoint is complete, before older ones are removed."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None and trainer.is_global_zero:
            tracker = next((lg for lg in trainer.loggers if isinstance(lg, MLflowTracker)), None)
            local = tracker.artifact_dir() if tracker is not None else None
            if local is not None:
                self.dirpath = str(local / "checkpoints")
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # leave a user's own CheckpointIO alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self.dirpath is not None and trainer.is_global_zero:
            for pattern in (f".*{PARTIAL_SUFFIX}", ".*.link"):  # left by a process killed mid-save
                for stale in Path(self.dirpath).glob(pattern):
                    stale.unlink(missing_ok=True)
        super().setup(trainer, pl_module, stage)

    # ModelCheckpoint has no public hook between writing a checkpoint and removing the previous one, which
    # last.ckpt may still point at; overriding its _save_checkpoint is the only place to re-point the link first.
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        last = self.last_model_path  # empty until the first link exists: Lightning creates that one
        if (self.save_last == "link" and last and os.path.islink(last) and trainer.is_global_zero
                and os.path.abspath(filepath) != os.path.abspath(last)):
            replace_link(filepath, last)

    # Lightning's version removes last.ckpt before creating the new link, leaving a moment without one.
    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            try:
                replace_link(filepath, linkpath)
            except OSError:  # no symlinks (e.g. Windows without the privilege): Lightning copies instead
                ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
                return
        trainer.strategy.barrier()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        tracker = next((lg for lg in trainer.loggers if isinstance(lg, MLflowTracker)), None)
        if tracker is not None and trainer.is_global_zero:
            checkpoint["mlflow_run_id"] = tracker.run_id


class FailureReason(Callback):
    """Tags a failed run with why it failed (``acorm_pl.failure``: the error's one line, or that it was
    interrupted); Lightning then marks it FAILED."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        if isinstance(exception, KeyboardInterrupt):
            reason = f"interrupted (Ctrl-C or SIGTERM) at env step {_env_steps(trainer):,}"
        else:
            reason = " ".join(str(exception).split()) or type(exception).__name__
        for tracker in trainer.loggers:
            if isinstance(tracker, MLflowTracker) and tracker.run_started:  # never start a run here
                try:
                    tracker.experiment.set_tag(tracker.run_id, "acorm_pl.failure", reason[:5000])
                except Exception as err:  # the store may be what failed; the original error matters more
                    warnings.warn(f"could not tag the MLflow run with its failure: {err}", stacklevel=1)


def _env_steps(trainer: pl.Trainer) -> int:
    return int(getattr(trainer.datamodule, "env_steps", 0)) if trainer.datamodule is not None else 0


def run_in_store(tracking_uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is a run of the tracking store ``tracking_uri`` (a checkpoint may come from another)."""
    check_tracking_store(tracking_uri)
    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def run_id_in_checkpoint(path: str | os.PathLike[str]) -> str | None:
    """The MLflow run id stored by :class:`RunCheckpoint` (tensors are memory-mapped, not read); a bad file
    raises :class:`ConfigError` (:func:`acorm_pl.checkpoints.read_checkpoint`)."""
    return read_checkpoint(path).get("mlflow_run_id")
