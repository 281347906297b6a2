"""Algorithms as LightningModules."""

from acorm_pl.algos.qmix import QMIX

__all__ = ["QMIX"]
