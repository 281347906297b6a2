"""VDN and QPLEX: QMIX's learner with another mixer (``acorm_pl.nets.mixers``); everything else is shared."""

from __future__ import annotations

from typing import Any

from acorm_pl.algos.qmix import QMIX


class VDN(QMIX):
    """VDN (Sunehag et al., 2018): Q_tot = sum_i Q_i. Arguments as :class:`~acorm_pl.algos.QMIX` (the mixer sizes
    are unused)."""

    def __init__(self, env_info: dict[str, int] | None = None, mixer: str = "vdn", **kwargs: Any):
        super().__init__(env_info=env_info, mixer=mixer, **kwargs)


class QPLEX(QMIX):
    """QPLEX (Wang et al., 2021): duplex dueling mixer, Q_tot = V_tot + A_tot with positive advantage weights.
    Arguments as :class:`~acorm_pl.algos.QMIX` (``mixing_embed_dim``, ``hypernet_embed`` and ``hypernet_layers``
    size its weight networks)."""

    def __init__(self, env_info: dict[str, int] | None = None, mixer: str = "qplex", **kwargs: Any):
        super().__init__(env_info=env_info, mixer=mixer, **kwargs)
