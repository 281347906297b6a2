"""Environment families behind one interface (:class:`VecEnv`), looked up by family name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from acorm_pl.envs.base import (
    AgentFeatures,
    EnvConfigError,
    EnvInfo,
    ResetResult,
    SingleEnv,
    SingleReset,
    SingleStep,
    StepResult,
    UnitStateLayout,
    VecEnv,
)
from acorm_pl.imports import import_attr


def _smax_info(map_name: str, **kwargs: Any) -> EnvInfo:
    from acorm_pl.envs.smax import smax_env_info

    return smax_env_info(map_name, **kwargs)


def _smax_make(map_name: str, seeds: Sequence[int], **kwargs: Any) -> VecEnv:
    from acorm_pl.envs.smax import SMAXVecEnv

    return SMAXVecEnv(map_name, seeds=seeds, **kwargs)


def _smac_info(map_name: str, **kwargs: Any) -> EnvInfo:
    from acorm_pl.envs.smac import smac_env_info

    return smac_env_info(map_name, **kwargs)


def _smac_make(map_name: str, seeds: Sequence[int], **kwargs: Any) -> VecEnv:
    from acorm_pl.envs.smac import make_smac_vec_env

    return make_smac_vec_env(map_name, seeds=seeds, **kwargs)


def _football_info(map_name: str, **kwargs: Any) -> EnvInfo:
    from acorm_pl.envs.football import football_env_info

    return football_env_info(map_name, **kwargs)


def _football_make(map_name: str, seeds: Sequence[int], **kwargs: Any) -> VecEnv:
    from acorm_pl.envs.football import make_football_vec_env

    return make_football_vec_env(map_name, seeds=seeds, **kwargs)


# family -> (env_info(map_name, **kwargs), make(map_name, seeds, **kwargs)); imports stay lazy so a
# family's heavy dependency (jax, gfootball, StarCraft II) is only needed when it is used.
FAMILIES: dict[str, tuple[Callable[..., EnvInfo], Callable[..., VecEnv]]] = {
    "smax": (_smax_info, _smax_make),
    "smac": (_smac_info, _smac_make),
    "football": (_football_info, _football_make),
}


def _family(name: str) -> tuple[Callable[..., EnvInfo], Callable[..., VecEnv]]:
    """A built-in family, or ``package.module.NAME``: a pair (env_info, make) defined outside acorm_pl
    (docs/extending.md), imported when a config names it."""
    if name in FAMILIES:
        return FAMILIES[name]
    family = import_attr(name)
    if not (isinstance(family, tuple) and len(family) == 2 and all(callable(f) for f in family)):
        raise EnvConfigError(f"unknown environment family {name!r}; available: {', '.join(sorted(FAMILIES))}, or "
                             "the import path of a pair (env_info, make) (docs/extending.md)")
    return family


def get_env_info(family: str, map_name: str, **kwargs: Any) -> EnvInfo:
    """Static facts of ``family``/``map_name`` without building the environments."""
    return _family(family)[0](map_name, **kwargs)


def make_vec_env(family: str, map_name: str, seeds: Sequence[int], **kwargs: Any) -> VecEnv:
    """``len(seeds)`` copies of ``family``/``map_name``, copy ``i`` seeded with ``seeds[i]``."""
    return _family(family)[1](map_name, seeds=seeds, **kwargs)


__all__ = [
    "FAMILIES",
    "AgentFeatures",
    "EnvConfigError",
    "EnvInfo",
    "ResetResult",
    "SingleEnv",
    "SingleReset",
    "SingleStep",
    "StepResult",
    "UnitStateLayout",
    "VecEnv",
    "get_env_info",
    "make_vec_env",
]
