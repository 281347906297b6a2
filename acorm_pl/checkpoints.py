"""Reading acorm-pl checkpoints, with one-line errors for every way a checkpoint can be wrong.

Every reader goes through here: ``acorm-pl fit --ckpt_path`` (:func:`check_resume`, before Lightning starts
the fit or an MLflow run), ``acorm-pl evaluate``, :func:`acorm_pl.analysis.inspect_checkpoint` and the
notebooks (:func:`read_checkpoint`, :func:`build_model`), and :func:`acorm_pl.tracking.run_id_in_checkpoint`.
A file that is missing, not a checkpoint, truncated, written by an incompatible acorm-pl, or (on resume)
made for another algorithm, map or network size raises :class:`~acorm_pl.errors.ConfigError` naming the
file and what does not match.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from acorm_pl import __version__
from acorm_pl.errors import ConfigError

CHECKPOINT_FORMAT = 1
"""Layout version stored in every checkpoint (``checkpoint["acorm_pl"]["format"]``, next to the package
version). Checkpoints without it predate versioning and have format 1. Raise it when a change makes older
checkpoints unreadable."""

LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives


def _one_line(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an error message on one line (torch's archive errors go on for a paragraph)."""
    text = " ".join(str(err).split()).split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensors(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


def _ckpt_files(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("*.ckpt"))[:5]
    return f" (checkpoints there: {', '.join(names)})" if names else ""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict of ``path`` (tensors memory-mapped, on the CPU), checked to be an acorm-pl
    checkpoint of a format this version reads; :class:`ConfigError` otherwise."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise ConfigError(f"checkpoint {path} is a link to {os.readlink(p)}, which does not exist")
        where = _ckpt_files(p.parent) if p.parent.is_dir() else f" (no directory {p.parent})"
        raise ConfigError(f"no checkpoint at {path}: no such file{where}")
    if p.is_dir():
        raise ConfigError(f"checkpoint {path} is a directory, not a checkpoint file{_ckpt_files(p)}")
    try:
        with open(p, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err.strerror or _one_line(err)}") from err
    if not head:
        raise ConfigError(f"checkpoint {path} is empty (0 bytes): a save that never finished")
    if head != _ZIP_MAGIC:
        raise ConfigError(f"{path} is not a checkpoint: not a file written by torch.save (acorm-pl fit writes "
                          f"its checkpoints under <run artifacts>/checkpoints/)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch and pickle raise many types for damaged archives
        raise ConfigError(f"checkpoint {path} is truncated or corrupt and cannot be loaded ({_one_line(err)})"
                          ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ConfigError(f"{path} is a torch file but not a Lightning checkpoint (it holds no state_dict)")
    info = ckpt.get("acorm_pl")
    if not isinstance(info, dict) or "class_path" not in info:
        raise ConfigError(f"{path} is a Lightning checkpoint but was not written by an acorm-pl algorithm "
                          "(it has no acorm_pl section naming the algorithm)")
    _check_format(info, path)
    return ckpt


def _check_format(info: dict[str, Any], path: str | os.PathLike[str]) -> None:
    fmt = info.get("format", 1)
    if isinstance(fmt, int) and 1 <= fmt <= CHECKPOINT_FORMAT:
        return
    written = info.get("package_version", "an unknown version")
    readable = "format 1" if CHECKPOINT_FORMAT == 1 else f"formats 1 to {CHECKPOINT_FORMAT}"
    raise ConfigError(f"checkpoint {path} was written by acorm-pl {written} in checkpoint format {fmt!r}; this "
                      f"acorm-pl ({__version__}) reads {readable}: use the acorm-pl version that wrote it")


def _class_name(class_path: str) -> str:
    return class_path.rpartition(".")[2]


def algorithm_class(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> type:
    """The algorithm class a checkpoint was written by (``acorm_pl.class_path``)."""
    class_path = ckpt["acorm_pl"]["class_path"]
    module_name, _, cls_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"checkpoint {path} needs the algorithm {class_path}, which this acorm-pl ({__version__}) "
                          f"does not have") from err


def _settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hparams.items() if not k.startswith("_")}  # drop LightningCLI's bookkeeping


def state_mismatch(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], here: str = "here"
                   ) -> str | None:
    """What differs between a saved state dict and the one a model expects (None when they fit); ``here``
    names where the expected one comes from."""
    shapes = [(k, list(saved[k].shape), list(t.shape)) for k, t in expected.items()
              if k in saved and saved[k].shape != t.shape]
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    parts = []
    if shapes:
        name, was, now = shapes[0]
        more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"{name} is {was} in the checkpoint but {now} {here}{more}")
    if missing:
        parts.append(f"{_tensors(len(missing))} missing from the checkpoint (e.g. {missing[0]})")
    if extra:
        parts.append(f"{_tensors(len(extra))} in the checkpoint that this model does not have (e.g. {extra[0]})")
    return "; ".join(parts) or None


def _upgraded(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with the keys of older layouts renamed to today's (as loading renames them)."""
    from acorm_pl.algos.base import upgrade_state_dict  # here: acorm_pl.algos imports this module

    upgraded = dict(state_dict)
    upgrade_state_dict(upgraded)
    return upgraded


def build_model(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> Any:
    """The LightningModule of a checkpoint, rebuilt from the checkpoint's own settings (whatever today's
    defaults are) and loaded with its weights."""
    cls = algorithm_class(ckpt, path)
    try:
        model = cls(**_settings(ckpt.get("hyper_parameters", {})))
    except (TypeError, ConfigError) as err:
        raise ConfigError(f"checkpoint {path} does not fit this acorm-pl ({__version__}): {cls.__name__} refuses "
                          f"its settings ({_one_line(err)})") from err
    mismatch = state_mismatch(_upgraded(ckpt["state_dict"]), model.state_dict(), "in this version")
    if mismatch:
        raise ConfigError(f"checkpoint {path} does not fit this acorm-pl's ({__version__}) {cls.__name__} networks: "
                          f"{mismatch}")
    model.load_state_dict(ckpt["state_dict"])
    return model


def _differing(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: checkpoint value vs config value`` for the settings that differ (floats left out: learning
    rates and coefficients never change a network's sizes)."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "unset"), current.get(k, "unset")
        if a != b and not isinstance(a, float) and not isinstance(b, float):
            out.append(f"{k} {a} in the checkpoint, {b} in the config")
    return out


def check_resume(path: str | os.PathLike[str], model: Any, data: Any) -> dict[str, Any] | None:
    """Check that the checkpoint ``path`` can resume ``model`` (a :class:`~acorm_pl.algos.base.MARLModule`)
    on ``data`` (a :class:`~acorm_pl.data.datamodule.RolloutDataModule`): same algorithm, environment family,
    map, environment facts and network sizes. Returns the checkpoint (None for Lightning's keywords such as
    ``last``, which Lightning resolves itself)."""
    if str(path) in LIGHTNING_CKPT_KEYWORDS:
        return None
    ckpt = read_checkpoint(path)
    here = f"{type(model).__module__}.{type(model).__qualname__}"
    saved_class = ckpt["acorm_pl"]["class_path"]
    problems = []
    if _class_name(saved_class) != _class_name(here):
        problems.append(f"algorithm {_class_name(saved_class)} in the checkpoint, {_class_name(here)} in the config")
    dm = ckpt.get("datamodule_hyper_parameters", {})
    saved_map = f"{dm.get('env', 'smax')} {dm.get('map_name')}"
    if saved_map != f"{data.env_name} {data.map_name}":
        problems.append(f"map {saved_map} in the checkpoint, {data.env_name} {data.map_name} in the config")
    elif (saved_info := ckpt.get("hyper_parameters", {}).get("env_info")) is not None:
        problems += [f"environment {d}" for d in _differing(saved_info, data.env_info.as_dict())]
    if problems:
        raise ConfigError(f"cannot resume from {path}: {'; '.join(problems)}")
    mismatch = state_mismatch(_upgraded(ckpt["state_dict"]), model.state_dict(), "in the config")
    if mismatch:
        settings = _differing(_settings(ckpt.get("hyper_parameters", {})), _settings(dict(model.hparams)))
        because = f" ({'; '.join(settings)})" if settings else ""
        raise ConfigError(f"cannot resume from {path}: the network sizes differ from the config{because}: {mismatch}")
    return ckpt


__all__ = ["CHECKPOINT_FORMAT", "LIGHTNING_CKPT_KEYWORDS", "algorithm_class", "build_model", "check_resume",
           "read_checkpoint", "state_mismatch"]
