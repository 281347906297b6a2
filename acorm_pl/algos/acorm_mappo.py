"""ACORM on MAPPO (paper Appendix D, Fig. 8): MAPPO's network hooks filled by the role learning component.

The actor acts on [agent embedding e, role representation z] (Fig. 8b, the same :class:`RoleQAgent` as
ACORM-QMIX); contrastive role learning (Fig. 8c) is the very component of ACORM-QMIX
(:class:`~acorm_pl.algos.roles.RoleLearning`, owned as ``roles``): batched K-means every T_cl updates, InfoNCE
over the bilinear score, momentum key encoder, its own optimizer. The critic (Fig. 8d) sees each agent's
observation and the attention-augmented state [tau_mha, tau] (Fig. 8e): the state history's GRU embedding
attending to the role representations of the alive agents. Role representations reach the critic
detached, so the value loss trains the critic side only and the actor's encoders learn from the policy
and contrastive losses. All three switches off builds exactly the networks of :class:`~acorm_pl.algos.MAPPO`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acorm_pl.algos.mappo import MAPPO
from acorm_pl.algos.roles import RoleLearning
from acorm_pl.clustering import Clustering
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.nets import AgentOutput


class ACORMMAPPO(MAPPO):
    """ACORM-MAPPO learner and actor.

    Args:
        embed_dim: agent embedding size e (Table 3: 128).
        add_agent_id: feed one-hot agent IDs to the actor and the critic (Table 3: False; roles tell agents
            apart, Sec. 2.1).
        contrastive, attention, state_encoder: the ablation switches
            (:class:`~acorm_pl.algos.roles.RoleSwitches`).
        role_dim, role_hidden_dim, n_clusters, clustering, contrastive_lr, key_encoder_tau, state_embed_dim,
            n_heads, attn_dim, attn_out_dim: role learning's settings
            (:class:`~acorm_pl.algos.roles.RoleLearning`; Tables 3 and 4).
        **kwargs: everything :class:`~acorm_pl.algos.MAPPO` takes.
    """

    def __init__(self, env_info: dict[str, int] | None = None, embed_dim: int = 128, add_agent_id: bool = False,
                 contrastive: bool = True, attention: bool = True, state_encoder: bool = True, role_dim: int = 64,
                 role_hidden_dim: int = 128, n_clusters: int = 3, clustering: Clustering | None = None,
                 contrastive_lr: float = 8e-4, key_encoder_tau: float = 0.005, state_embed_dim: int = 64,
                 n_heads: int = 4, attn_dim: int = 128, attn_out_dim: int = 64, **kwargs: Any):
        # MAPPO saves every argument above as a hyperparameter; build_networks reads them back.
        super().__init__(env_info=env_info, embed_dim=embed_dim, add_agent_id=add_agent_id, **kwargs)

    def build_networks(self) -> None:
        self.roles = RoleLearning.from_hparams(self.hparams, self.info)
        super().build_networks()  # the actor and the critic, through build_agent and critic_cond_dim

    def build_agent(self) -> nn.Module:
        """Fig. 8(b) when role representations are used (by the contrastive loss or the attention), else MAPPO's."""
        agent = self.roles.build_agent(self.input_dim, self.info.n_actions)
        return super().build_agent() if agent is None else agent

    def critic_cond_dim(self) -> int:
        return self.roles.cond_dim

    def critic_conditioning(self, batch: EpisodeBatch, agents: AgentOutput) -> torch.Tensor:
        """The augmented state s~ = [tau_mha, tau] (Fig. 8e), tau alone (w/o MHA) or the raw state (Vanilla);
        dead agents and padded steps are left out of the attention."""
        roles = None if agents.roles is None else agents.roles.detach()
        return self.roles.conditioning(batch, roles)

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*super().critic_parameters(), *self.roles.conditioning_parameters()]
