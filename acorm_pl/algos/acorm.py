"""ACORM on QMIX (paper Sec. 2, Algorithm 1): QMIX's network hooks filled by the role learning component.

The role encoders, the contrastive step and the state attention are :class:`~acorm_pl.algos.roles.RoleLearning`
(owned as ``roles``, the same component as ACORM-MAPPO's); here they are wired into value decomposition: Q_i
from [e, z] (Fig. 1b) and [tau_mha, tau] conditioning the QMIX hypernetworks (Fig. 1d), with a target copy of
the state input. All three switches off builds exactly the networks of :class:`~acorm_pl.algos.QMIX` (the
same code path, not a copy). ``mixer: qplex`` (or ``vdn``, with the state input off) puts the same roles on
another mixer: ACORM-QPLEX, ACORM-VDN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acorm_pl.algos.qmix import QMIX
from acorm_pl.algos.roles import RoleLearning
from acorm_pl.clustering import Clustering
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.nets import AgentOutput
from acorm_pl.nets.mixers import mixer_class

__all__ = ["ACORM"]


class ACORM(QMIX):
    """ACORM-QMIX learner and actor.

    Args:
        embed_dim: agent embedding size e (Table 1: 128).
        add_agent_id: feed one-hot agent IDs to the agent network. Off by default, unlike QMIX: the agent
            input is [o_t, a_{t-1}] and role representations tell agents apart (Sec. 2.1; the authors'
            code does the same). On, it is the "ACORM + IDs" variant.
        contrastive, attention, state_encoder: the ablation switches
            (:class:`~acorm_pl.algos.roles.RoleSwitches`).
        role_dim, role_hidden_dim, n_clusters, clustering, contrastive_lr, key_encoder_tau, state_embed_dim,
            n_heads, attn_dim, attn_out_dim: role learning's settings
            (:class:`~acorm_pl.algos.roles.RoleLearning`; Tables 1 and 2).
        **kwargs: everything :class:`~acorm_pl.algos.QMIX` takes.
    """

    def __init__(self, env_info: dict[str, int] | None = None, embed_dim: int = 128, add_agent_id: bool = False,
                 contrastive: bool = True, attention: bool = True, state_encoder: bool = True, role_dim: int = 64,
                 role_hidden_dim: int = 128, n_clusters: int = 3, clustering: Clustering | None = None,
                 contrastive_lr: float = 8e-4, key_encoder_tau: float = 0.005, state_embed_dim: int = 64,
                 n_heads: int = 4, attn_dim: int = 128, attn_out_dim: int = 64, **kwargs: Any):
        # QMIX saves every argument above as a hyperparameter; build_networks reads them back.
        super().__init__(env_info=env_info, embed_dim=embed_dim, add_agent_id=add_agent_id, **kwargs)

    # ---- networks ----------------------------------------------------------------------------------------
    def build_networks(self) -> None:
        hp = self.hparams
        require(mixer_class(hp.mixer).uses_conditioning or not hp.state_encoder,
                f"model.mixer {hp.mixer} ignores the mixer conditioning, so ACORM's state encoder and attention "
                "would never be trained: set model.state_encoder false and model.attention false with it")
        self.roles = RoleLearning.from_hparams(hp, self.info, target_state_input=True)
        super().build_networks()  # the agent and the mixer, through build_agent and mixer_cond_dim

    def build_agent(self) -> nn.Module:
        """Fig. 1(b) when role representations are used (by the contrastive loss or the attention), else QMIX's."""
        agent = self.roles.build_agent(self.input_dim, self.info.n_actions)
        return super().build_agent() if agent is None else agent

    def mixer_cond_dim(self) -> int:
        return self.roles.cond_dim

    def mixer_conditioning(self, batch: EpisodeBatch, agents: AgentOutput, target: bool = False) -> torch.Tensor:
        """[tau_mha, tau] (Fig. 1d), tau alone (w/o MHA) or the raw state (Vanilla), for every step."""
        return self.roles.conditioning(batch, agents.roles, target=target)

    def td_parameters(self) -> list[nn.Parameter]:
        return [*super().td_parameters(), *self.roles.conditioning_parameters()]

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [*super().target_pairs(), *self.roles.target_pairs()]
