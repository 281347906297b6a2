"""ACORM on QMIX (paper Sec. 2, Algorithm 1): QMIX's hooks filled by the shared role machinery.

The role encoders, the contrastive step and the state attention live in :mod:`acorm_pl.algos.roles`
(used unchanged by ACORM-MAPPO); here they are wired into value decomposition: Q_i from [e, z]
(Fig. 1b) and [tau_mha, tau] conditioning the QMIX hypernetworks (Fig. 1d), with target copies of the
state input. All three switches off builds exactly the networks of :class:`~acorm_pl.algos.QMIX` (the
same code path, not a copy). ``mixer: qplex`` (or ``vdn``, with the state input off) puts the same roles on
another mixer: ACORM-QPLEX, ACORM-VDN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acorm_pl.algos.base import alive_agents
from acorm_pl.algos.qmix import QMIX
from acorm_pl.algos.roles import ContrastiveRoles
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.nets import AgentOutput
from acorm_pl.nets.attention import AttentionMixerInput
from acorm_pl.nets.mixers import mixer_class

__all__ = ["ACORM", "alive_agents"]


class ACORM(ContrastiveRoles, QMIX):
    """ACORM-QMIX learner and actor.

    Args:
        embed_dim: agent embedding size e (Table 1: 128).
        add_agent_id: feed one-hot agent IDs to the agent network. Off by default, unlike QMIX: the agent
            input is [o_t, a_{t-1}] and role representations tell agents apart (Sec. 2.1; the authors'
            code does the same). On, it is the "ACORM + IDs" variant.
        **kwargs: the role switches and sizes of :class:`~acorm_pl.algos.roles.ContrastiveRoles` and
            everything :class:`~acorm_pl.algos.QMIX` takes.
    """

    def __init__(self, env_info: dict[str, int] | None = None, embed_dim: int = 128, add_agent_id: bool = False,
                 **kwargs: Any):
        super().__init__(env_info=env_info, embed_dim=embed_dim, add_agent_id=add_agent_id,
                         **kwargs)  # saves ACORM's args too

    # ---- networks ----------------------------------------------------------------------------------------
    def build_networks(self) -> None:
        _, _, state_encoder = self._switches
        mixer = self.hparams.mixer
        require(mixer_class(mixer).uses_conditioning or not state_encoder,
                f"model.mixer {mixer} ignores the mixer conditioning, so ACORM's state encoder and attention would "
                "never be trained: set model.state_encoder false and model.attention false with it")
        self.build_role_head()
        self.mixer_input: AttentionMixerInput | None = self.build_state_input()
        super().build_networks()  # the agent and the mixer, through build_agent and mixer_cond_dim
        if self.mixer_input is not None:
            self.target_mixer_input = self._frozen_copy(self.mixer_input)

    def mixer_cond_dim(self) -> int:
        return super().mixer_cond_dim() if self.mixer_input is None else self.mixer_input.cond_dim

    def mixer_conditioning(self, batch: EpisodeBatch, agents: AgentOutput, target: bool = False) -> torch.Tensor:
        """[tau_mha, tau] (Fig. 1d), tau alone (w/o MHA) or the raw state (Vanilla), for every step."""
        net = self.target_mixer_input if target and self.mixer_input is not None else self.mixer_input
        return self.role_conditioning(net, batch, agents.roles, record=not target)

    def td_parameters(self) -> list[nn.Parameter]:
        params = {id(p): p for p in super().td_parameters()}
        if self.mixer_input is not None:
            params.update({id(p): p for p in self.mixer_input.parameters()})
        return list(params.values())

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = super().target_pairs()
        if self.mixer_input is not None:
            pairs.append((self.target_mixer_input, self.mixer_input))
        return pairs
