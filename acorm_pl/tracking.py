"""MLflow tracking: a logger with project defaults, the resolved config as an artifact, run-scoped checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an sqlite store ``mlruns.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


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
        if artifact_location is None and uri.startswith("sqlite:///"):
            store = Path(uri[len("sqlite:///"):])
            artifact_location = (store.parent / "mlartifacts").resolve().as_uri()
        tags = {k: str(v) for k, v in tags.items()} if tags else tags  # MLflow tags are strings; YAML reads "0" as 0
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags,
                         artifact_location=artifact_location, run_id=run_id)

    @property
    def experiment(self) -> Any:
        """The MLflow client (Lightning's); ``$MLFLOW_TRACKING_URI`` is left as it was."""
        # mlflow.set_tracking_uri, which Lightning calls here, also exports MLFLOW_TRACKING_URI: a second run
        # in the same process would then log into this run's store instead of its own default.
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return super().experiment
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


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes into the MLflow run's artifact directory (``<artifacts>/checkpoints``)
    when no ``dirpath`` is given, and records the run id in each checkpoint so a resume continues that run."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None and trainer.is_global_zero:
            tracker = next((lg for lg in trainer.loggers if isinstance(lg, MLflowTracker)), None)
            local = tracker.artifact_dir() if tracker is not None else None
            if local is not None:
                self.dirpath = str(local / "checkpoints")
        super().setup(trainer, pl_module, stage)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        tracker = next((lg for lg in trainer.loggers if isinstance(lg, MLflowTracker)), None)
        if tracker is not None and trainer.is_global_zero:
            checkpoint["mlflow_run_id"] = tracker.run_id


def run_id_in_checkpoint(path: str | os.PathLike[str]) -> str | None:
    """The MLflow run id stored by :class:`RunCheckpoint`, read without loading tensors into memory."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return ckpt.get("mlflow_run_id")
