"""Divergence guard: a run stops at the first update whose loss, gradients or weights are not finite.

The update sites (QMIX's TD step, MAPPO's PPO step, ACORM's contrastive step) call
:meth:`~acorm_pl.algos.base.MARLModule.check_update` after the backward pass and before clipping and the
optimizer step, so a non-finite update is never applied. One check costs one host synchronisation: the
losses, the largest absolute gradient and the largest absolute weight are stacked and tested together (max
norms: an L2 norm of huge but finite gradients can overflow, which gradient clipping already handles). Weights
that a step made non-finite (e.g. Adam with ``adam_eps`` 0 dividing 0 by 0) are caught by the next check,
and :func:`check_state` refuses to write such weights into a checkpoint, so the newest checkpoint on disk
always holds the last finite ones. The run ends with :class:`~acorm_pl.errors.DivergenceError`: one line,
the MLflow run marked FAILED with the line in the tag ``acorm_pl.failure``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils import get_total_norm

from acorm_pl.errors import DivergenceError


def _params(optimizers: Sequence[Any]) -> list[torch.Tensor]:
    return [p for opt in optimizers for group in opt.param_groups for p in group["params"]]


def _uses_grad_scaler(module: Any) -> bool:
    # With 16-bit mixed precision the GradScaler expects inf gradients now and then and skips those steps.
    trainer = module._trainer
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _where(module: Any) -> str:
    n = int(module.n_updates)
    return f"after {n} update{'s' if n != 1 else ''}, at env step {module.env_steps:,}"


def _last_checkpoint(module: Any) -> str:
    callback = module.trainer.checkpoint_callback if module._trainer is not None else None
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return f"the last checkpoint, {path}, keeps the last finite weights" if path else "no checkpoint was written yet"


def check_update(module: Any, optimizers: Sequence[Any], losses: dict[str, torch.Tensor]) -> None:
    """Raise :class:`DivergenceError` unless every loss in ``losses`` (name -> scalar), the gradients of the
    ``optimizers``' parameters and those parameters are finite. Call between the backward pass and the
    optimizer step; under DDP every rank decides together."""
    params = _params(optimizers)
    grads = [p.grad for p in params if p.grad is not None]
    device = params[0].device if params else torch.device("cpu")
    max_grad = get_total_norm(grads, math.inf) if grads else torch.zeros((), device=device)
    max_weight = get_total_norm([p.detach() for p in params], math.inf) if params else torch.zeros((), device=device)
    checked = [v.detach().float().reshape(()) for v in losses.values()] + [max_weight.float()]
    if not _uses_grad_scaler(module):
        checked.append(max_grad.float())
    finite = bool(torch.isfinite(torch.stack(checked)).all())  # the check's one host sync
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return
    values = [f"{name} = {_fmt(float(v.detach()))}" for name, v in losses.items()]
    values.append(f"largest |gradient| = {_fmt(float(max_grad))}")
    if not math.isfinite(float(max_weight)):
        values.append("the weights are already non-finite after the previous optimizer step")
    elif all(math.isfinite(float(v)) for v in checked):
        values.append("(non-finite on another process)")
    raise DivergenceError(f"training diverged {_where(module)}: {', '.join(values)}; stopped before this update's "
                          f"optimizer step, {_last_checkpoint(module)} (a learning rate too high, gradient clipping "
                          "off or adam_eps 0 are the usual causes)")


def check_state(module: torch.nn.Module) -> None:
    """Raise :class:`DivergenceError` if any floating-point tensor of ``module``'s state is not finite (called
    before a checkpoint is written, so none ever holds NaN or Inf weights)."""
    state = {k: t for k, t in module.state_dict().items() if t.is_floating_point()}
    if not state:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in state.values()])
    if bool(finite.all()):
        return
    bad = [name for name, ok in zip(state, finite.tolist(), strict=True) if not ok]
    what = f"{len(bad)} weight tensors are" if len(bad) > 1 else "1 weight tensor is"
    raise DivergenceError(f"training diverged {_where(module)}: {what} not finite (e.g. {bad[0]}); refused to write "
                          f"a checkpoint, {_last_checkpoint(module)}")


__all__ = ["check_state", "check_update"]
