"""The shipped configs as tests use them: an algorithm file (``conf/algo``) composed with an environment file
(``conf/env/<family>``), as ``acorm-pl fit --config ALGO --config ENV`` does."""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def paper_config(algo: str, map_name: str, family: str = "smax") -> list[Path]:
    """The files of ``algo`` (``qmix``, ``acorm``, ``mappo``, ``acorm_mappo``) on ``map_name`` of ``family``."""
    return [CONF / "algo" / f"{algo}.yaml", CONF / "env" / family / f"{map_name}.yaml"]


def config_args(algo: str, map_name: str, family: str = "smax") -> list[str]:
    """``--config`` arguments of :func:`paper_config`."""
    return [a for path in paper_config(algo, map_name, family) for a in ("--config", str(path))]
