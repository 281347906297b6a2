"""Algorithms as LightningModules."""

from acorm_pl.algos.acorm import ACORM
from acorm_pl.algos.acorm_mappo import ACORMMAPPO
from acorm_pl.algos.mappo import MAPPO
from acorm_pl.algos.qmix import QMIX
from acorm_pl.algos.vdn import QPLEX, VDN

__all__ = ["ACORM", "ACORMMAPPO", "MAPPO", "QMIX", "QPLEX", "VDN"]
