"""Callbacks that break a run the way the outside world does: Ctrl-C during the first evaluation, and SIGKILL in
the middle of writing a checkpoint (used through ``--trainer.callbacks+=failure_callbacks.<name>``)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from typing import Any

import lightning.pytorch as pl
import torch


class InterruptDuringFirstEvaluation(pl.Callback):
    """Raises KeyboardInterrupt (what Ctrl-C raises) at the ``at_step``-th step of the evaluation environments."""

    def __init__(self, at_step: int = 3):
        self.at_step = at_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        make_env = data.make_env

        def make_interrupting_env(*args: Any, **kwargs: Any) -> Any:
            env = make_env(*args, **kwargs)
            step, calls = env.step, [0]

            def interrupting_step(*a: Any, **k: Any) -> Any:
                calls[0] += 1
                if calls[0] == self.at_step:
                    raise KeyboardInterrupt
                return step(*a, **k)

            env.step = interrupting_step
            return env

        data.make_env = make_interrupting_env  # the Evaluation callback builds its environments through this


class _DieAfter:
    """A file wrapper that SIGKILLs the process once ``limit`` bytes were written through it."""

    def __init__(self, f: Any, limit: int):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) >= self.limit:
            self.f.write(bytes(data)[: self.limit - self.written])
            self.f.flush()
            with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
                os.fsync(self.f.fileno())  # the bytes are on disk, as a real crash mid-write leaves them
            os.kill(os.getpid(), signal.SIGKILL)
        self.written += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class KillDuringSave(pl.Callback):
    """SIGKILLs its own process after ``after_bytes`` bytes of the ``save``-th checkpoint reached the disk."""

    def __init__(self, save: int = 2, after_bytes: int = 65536):
        self.save, self.after_bytes, self.saves = save, after_bytes, 0

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.saves += 1
        if self.saves != self.save:
            return
        real_save, limit = torch.save, self.after_bytes

        def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            return real_save(obj, _DieAfter(f, limit) if hasattr(f, "write") else f, *args, **kwargs)

        torch.save = dying_save  # the checkpoint is written right after this hook
