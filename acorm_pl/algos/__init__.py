"""Algorithms as LightningModules."""

from acorm_pl.algos.acorm import ACORM
from acorm_pl.algos.qmix import QMIX

__all__ = ["ACORM", "QMIX"]
