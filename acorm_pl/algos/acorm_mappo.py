"""ACORM on MAPPO (paper Appendix D, Fig. 8): MAPPO's hooks filled by the shared role machinery.

The actor acts on [agent embedding e, role representation z] (Fig. 8b, the same :class:`RoleQAgent` as
ACORM-QMIX); contrastive role learning (Fig. 8c) is the very code of ACORM-QMIX
(:class:`~acorm_pl.algos.roles.ContrastiveRoles`): batched K-means every T_cl updates, InfoNCE over the
bilinear score, momentum key encoder, its own optimizer. The critic (Fig. 8d) sees each agent's
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
from acorm_pl.algos.roles import ContrastiveRoles
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.nets import AgentOutput
from acorm_pl.nets.attention import AttentionMixerInput


class ACORMMAPPO(ContrastiveRoles, MAPPO):
    """ACORM-MAPPO learner and actor.

    Args:
        embed_dim: agent embedding size e (Table 3: 128).
        add_agent_id: feed one-hot agent IDs to the actor and the critic (Table 3: False; roles tell agents
            apart, Sec. 2.1).
        **kwargs: the role switches and sizes of :class:`~acorm_pl.algos.roles.ContrastiveRoles` and
            everything :class:`~acorm_pl.algos.MAPPO` takes.
    """

    def __init__(self, env_info: dict[str, int] | None = None, embed_dim: int = 128, add_agent_id: bool = False,
                 **kwargs: Any):
        super().__init__(env_info=env_info, embed_dim=embed_dim, add_agent_id=add_agent_id, **kwargs)

    def build_networks(self) -> None:
        self.build_role_head()
        self.critic_input: AttentionMixerInput | None = self.build_state_input()
        super().build_networks()  # the actor and the critic, through build_agent and critic_cond_dim

    def critic_cond_dim(self) -> int:
        return super().critic_cond_dim() if self.critic_input is None else self.critic_input.cond_dim

    def critic_conditioning(self, batch: EpisodeBatch, agents: AgentOutput) -> torch.Tensor:
        """The augmented state s~ = [tau_mha, tau] (Fig. 8e), tau alone (w/o MHA) or the raw state (Vanilla);
        dead agents and padded steps are left out of the attention."""
        roles = None if agents.roles is None else agents.roles.detach()
        return self.role_conditioning(self.critic_input, batch, roles)

    def critic_parameters(self) -> list[nn.Parameter]:
        extra = [] if self.critic_input is None else list(self.critic_input.parameters())
        return [*super().critic_parameters(), *extra]

