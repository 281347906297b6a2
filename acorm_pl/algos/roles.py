"""ACORM's role machinery as one component, :class:`RoleLearning`, owned by ACORM-QMIX and ACORM-MAPPO.

Agent side (Fig. 1b / Fig. 8b): trajectory encoder -> agent embedding e, query role encoder -> role
representation z, the agent's head on [e, z]; no one-hot agent IDs by default (Sec. 2.1: role
representations, not identities, tell agents apart). Contrastive role learning (Fig. 1c / 8c, Eqs. 3-5):
every T_cl updates (the :class:`~acorm_pl.callbacks.RoleClustering` callback says when) the component clusters
the agent embeddings of the batch with its clustering strategy (K-means by default) and takes one step of
the InfoNCE loss with its own optimizer. The key encoder follows the query encoder by momentum (Eq. 5)
after *every* update of the host (a TD update of ACORM-QMIX, a PPO update of ACORM-MAPPO), since the
host's loss trains the query encoder on every update; MoCo and the authors' code do the same. State side
(Fig. 1d / 8e, Eqs. 6-8): a GRU encodes the state history into tau and multi-head attention lets tau attend
to the role representations of the alive agents; [tau_mha, tau] conditions the QMIX mixer (ACORM-QMIX) or
the critic (ACORM-MAPPO).

Ablations (Fig. 3) are :class:`RoleSwitches`: ``contrastive=False`` (w/o CL), ``attention=False`` (w/o MHA,
state GRU kept), ``attention=False, state_encoder=False`` (w/o MHA (Vanilla)); all three off builds exactly
the host algorithm's networks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from acorm_pl.algos.base import frozen_copy
from acorm_pl.clustering import Clustering, make_clustering
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.envs.base import EnvInfo
from acorm_pl.errors import require
from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.nets import AgentOutput, RoleQAgent
from acorm_pl.nets.attention import AttentionMixerInput
from acorm_pl.nets.roles import ContrastiveRoleHead, RoleEncoder

if TYPE_CHECKING:
    from acorm_pl.algos.base import MARLModule


@torch.no_grad()
def cluster_batch(clustering: Clustering, embeddings: torch.Tensor, batch: EpisodeBatch, k: int, seed: int = 0
                  ) -> torch.Tensor:
    """``clustering`` of the alive agents of every valid (episode, timestep) of ``batch`` on their ``embeddings``
    [B, T, N, H], in one call: labels [B, T, N], -1 at padded steps and for dead agents."""
    valid = batch.filled.bool()
    alive = batch.alive[:, :-1]
    labels = torch.full(alive.shape, -1, dtype=torch.int64, device=embeddings.device)
    labels[valid] = clustering(embeddings[valid].float(), alive[valid], k, seed).to(labels.device)
    return labels


@dataclass(frozen=True)
class RoleSwitches:
    """Which parts of ACORM exist (the ablations of Fig. 3).

    Attributes:
        contrastive: learn role representations with the contrastive loss (off: "w/o CL").
        attention: let the state embedding attend to the role representations (off: "w/o MHA").
        state_encoder: encode the state history with a GRU (off with attention off: "Vanilla", the raw state
            is used).
    """

    contrastive: bool = True
    attention: bool = True
    state_encoder: bool = True

    def __post_init__(self) -> None:
        require(not self.attention or self.state_encoder,
                "model.attention needs model.state_encoder: the state embedding is the attention query")

    @property
    def role_representations(self) -> bool:
        """Whether the agent computes role representations z (for the contrastive loss or the attention)."""
        return self.contrastive or self.attention


class RoleLearning(nn.Module):
    """The role encoder f_theta, the contrastive role head, the state input and the clustering strategy of
    ACORM, with the schedule flag ``contrastive_due`` and what the host's latest training forward left:
    ``last_embeddings`` (e, detached) and ``last_attention`` (the attention weights).

    Args:
        switches: the parts that exist (:class:`RoleSwitches`).
        n_agents: agents of the task.
        state_dim: size of the global state.
        embed_dim: size of the agent embedding e (the host's agent GRU; Tables 1 and 3: 128).
        role_dim: size of the role representation z (Tables 1 and 3: 64).
        role_hidden_dim: hidden width of the role encoder MLP (0: a single linear map).
        n_clusters: K of the clustering that defines positive and negative keys (Tables 2 and 4: 3; the most
            clusters for :class:`~acorm_pl.clustering.AutoK`).
        clustering: how the agent embeddings of each (episode, timestep) are clustered: a
            :class:`~acorm_pl.clustering.Clustering` (``class_path`` in a config): ``KMeans`` (None, the
            paper's), ``GMM`` (diagonal Gaussian mixture, the paper's footnote 4), ``AutoK`` (K per step by
            the silhouette score).
        contrastive_lr: Adam learning rate of the contrastive optimizer (Tables 2 and 4: 8e-4), constant.
        key_encoder_tau: momentum update rate of the key encoder, Eq. (5) with beta = 1 - tau (Tables 2
            and 4: 0.005).
        state_embed_dim: size of the state embedding tau (Tables 1 and 3: 64).
        n_heads: attention heads (Tables 1 and 3: 4).
        attn_dim: attention embedding size over all heads (Tables 1 and 3: 128).
        attn_out_dim: attention output size (Tables 1 and 3: 64).
        target_state_input: keep a frozen copy of the state input for the host's target network (ACORM-QMIX).
    """

    def __init__(self, switches: RoleSwitches, *, n_agents: int, state_dim: int, embed_dim: int, role_dim: int,
                 role_hidden_dim: int, n_clusters: int, clustering: Clustering | Mapping[str, Any] | str | None,
                 contrastive_lr: float, key_encoder_tau: float, state_embed_dim: int, n_heads: int, attn_dim: int,
                 attn_out_dim: int, target_state_input: bool = False):
        super().__init__()
        require(n_clusters >= 2, f"model.n_clusters must be >= 2, got {n_clusters}")
        require(contrastive_lr > 0, f"model.contrastive_lr must be > 0, got {contrastive_lr}")
        require(0.0 <= key_encoder_tau <= 1.0, f"model.key_encoder_tau must be in [0, 1], got {key_encoder_tau}")
        require(attn_dim % n_heads == 0, f"model.attn_dim ({attn_dim}) must be divisible by model.n_heads ({n_heads})")
        # A single agent has no one to contrast with whatever K is (the paper keeps K = 3 on 1-agent GRF).
        require(n_clusters <= n_agents or n_agents == 1,
                f"model.n_clusters must not exceed the number of agents ({n_agents} on this map), got {n_clusters}")
        self.switches = switches
        self.state_dim, self.embed_dim, self.role_dim = state_dim, embed_dim, role_dim
        self.n_clusters, self.contrastive_lr, self.key_encoder_tau = n_clusters, contrastive_lr, key_encoder_tau
        # Created in this order, the weights drawn for a seed equal those of the releases before the component.
        self.head = ContrastiveRoleHead(embed_dim, role_dim, role_hidden_dim) if switches.contrastive else None
        self.state_input = AttentionMixerInput(state_dim, role_dim, state_embed_dim, n_heads, attn_dim, attn_out_dim,
                                               attention=switches.attention) if switches.state_encoder else None
        self.encoder = (RoleEncoder(embed_dim, role_dim, role_hidden_dim)
                        if switches.attention and not switches.contrastive else None)
        self.target_state_input = (frozen_copy(self.state_input)
                                   if target_state_input and self.state_input is not None else None)
        self.clustering: Clustering = make_clustering(clustering)
        self.contrastive_due = False  # set by the RoleClustering callback every T_cl updates
        self.last_embeddings: torch.Tensor | None = None
        self.last_attention: torch.Tensor | None = None

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], info: EnvInfo, target_state_input: bool = False
                     ) -> RoleLearning:
        """The component that the saved settings of an ACORM module describe, for the task ``info``."""
        hp = hparams
        return cls(RoleSwitches(hp["contrastive"], hp["attention"], hp["state_encoder"]), n_agents=info.n_agents,
                   state_dim=info.state_dim, embed_dim=hp["embed_dim"], role_dim=hp["role_dim"],
                   role_hidden_dim=hp["role_hidden_dim"], n_clusters=hp["n_clusters"], clustering=hp["clustering"],
                   contrastive_lr=hp["contrastive_lr"], key_encoder_tau=hp["key_encoder_tau"],
                   state_embed_dim=hp["state_embed_dim"], n_heads=hp["n_heads"], attn_dim=hp["attn_dim"],
                   attn_out_dim=hp["attn_out_dim"], target_state_input=target_state_input)

    # ---- agent side (Fig. 1b / 8b) -------------------------------------------------------------------------
    @property
    def role_encoder(self) -> nn.Module | None:
        """f_theta of the agent: the contrastive head's query encoder, a plain role encoder without contrastive
        learning ("w/o CL"), or None when no part uses role representations."""
        return self.head.query_encoder if self.head is not None else self.encoder

    def build_agent(self, input_dim: int, n_actions: int) -> RoleQAgent | None:
        """The agent on [e, z] with :attr:`role_encoder`, or None when role representations are unused (the
        host's own agent network then)."""
        encoder = self.role_encoder
        return None if encoder is None else RoleQAgent(input_dim, n_actions, self.embed_dim, encoder, self.role_dim)

    def observe(self, out: AgentOutput) -> None:
        """Keep the agent embeddings of the host's training forward: the contrastive step reuses them."""
        self.last_embeddings = out.embedding.detach()

    # ---- state side (Fig. 1d / 8e, Eqs. 6-8) ------------------------------------------------------------
    @property
    def cond_dim(self) -> int:
        """Size of :meth:`conditioning`'s vectors."""
        return self.state_dim if self.state_input is None else self.state_input.cond_dim

    def conditioning(self, batch: EpisodeBatch, roles: torch.Tensor | None, target: bool = False) -> torch.Tensor:
        """[tau_mha, tau] (with attention), tau alone (w/o MHA) or the raw state (Vanilla) for every step
        [B, T+1, .], from the state input or (``target``) its target copy, given the role representations
        ``roles`` [B, T+1, N, R]. Dead agents and padded steps are left out of the attention (one policy for
        both hosts): a dead agent's role representation is meaningless and must not move the conditioning.
        The online attention weights are kept in ``last_attention``."""
        if self.state_input is None:
            return batch.state
        net = self.target_state_input if target else self.state_input
        require(net is not None, "this RoleLearning keeps no target copy of its state input")
        cond, weights = net(batch.state, roles, batch.alive, batch.obs_lengths)
        if not target:
            self.last_attention = None if weights is None else weights.detach()
        return cond

    def conditioning_parameters(self) -> list[nn.Parameter]:
        """The state input's parameters, trained by the host's loss (TD of ACORM-QMIX, value of ACORM-MAPPO)."""
        return [] if self.state_input is None else list(self.state_input.parameters())

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) state inputs, for the host's target updates."""
        if self.target_state_input is None or self.state_input is None:
            return []
        return [(self.target_state_input, self.state_input)]

    # ---- contrastive role learning (Eqs. 3-5) ----------------------------------------------------------
    @torch.no_grad()
    def cluster(self, embeddings: torch.Tensor, batch: EpisodeBatch, seed: int = 0) -> torch.Tensor:
        """Cluster labels [B, T, N] of agent ``embeddings`` [B, T, N, H] of ``batch`` by the clustering strategy
        (K = ``n_clusters``), all valid (episode, timestep) groups at once; -1 at padded steps and for dead agents."""
        return cluster_batch(self.clustering, embeddings, batch, self.n_clusters, seed)

    def contrastive_loss(self, batch: EpisodeBatch, embeddings: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The InfoNCE loss of Eq. (4) on the valid steps of ``batch`` and its statistics, given the agent
        ``embeddings`` [B, T, N, H] (constants: this loss trains f_theta and W only) and their cluster
        ``labels`` [B, T, N]."""
        require(self.head is not None, "the contrastive loss needs model.contrastive")
        valid = batch.filled.bool()
        e = embeddings.detach().float()[valid]  # [M, N, H]
        alive = batch.alive[:, :-1][valid]
        scores = self.head.scores(self.head.query(e), self.head.key(e))  # S(q, k) = q^T W k (Eq. 4)
        return contrastive_role_loss(scores, labels.to(e.device)[valid], alive)

    def contrastive_update(self, host: MARLModule, batch: EpisodeBatch, embeddings: torch.Tensor,
                           labels: torch.Tensor, opt: Any) -> dict[str, torch.Tensor]:
        """One step of :meth:`contrastive_loss` with the optimizer ``opt``, through the ``host``'s backward
        pass and divergence guard; returns the loss and its statistics."""
        loss, stats = self.contrastive_loss(batch, embeddings, labels)
        opt.zero_grad(set_to_none=True)
        host.manual_backward(loss)
        host.check_update(opt, {"contrastive loss": loss})
        opt.step()
        return {"contrastive_loss": loss.detach(), **stats}

    def after_update(self, host: MARLModule, batch: EpisodeBatch) -> None:
        """After every update of the ``host`` on ``batch``: the contrastive step when the clustering callback
        marked it due, on the embeddings of that update's forward, then the key encoder's momentum update."""
        due, self.contrastive_due = self.contrastive_due, False
        if due and self.head is not None:
            embeddings = self.last_embeddings[:, :-1]  # from the update's forward, before its optimizer step
            labels = self.cluster(embeddings, batch, int(host.n_updates))
            stats = self.contrastive_update(host, batch, embeddings, labels, host.optimizer("contrastive"))
            # Logged on every contrastive step (rare), whatever log_every_n_steps says.
            for logger in host.loggers:
                logger.log_metrics({f"roles/{k}": float(v) for k, v in stats.items()}, step=host.env_steps)
        self.momentum_update()

    def momentum_update(self) -> None:
        """Eq. (5): theta_k <- beta * theta_k + (1 - beta) * theta_q with beta = 1 - ``key_encoder_tau``, after
        every update of the query encoder theta_q (which the host's loss trains on every update)."""
        if self.head is not None:
            self.head.momentum_update(self.key_encoder_tau)

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``contrastive`` (Adam over the query role encoder and W, constant learning rate) when contrastive
        learning is on."""
        if self.head is None:
            return {}
        return {"contrastive": torch.optim.Adam(self.head.contrastive_parameters(), lr=self.contrastive_lr)}

    def prepare_strategy(self, strategy: Strategy) -> None:
        """Let DDP find unused parameters when contrastive learning is on: the host's loss never reaches W and
        the contrastive loss only f_theta and W. Call before the model is wrapped (the module's ``setup``)."""
        if self.head is None or not isinstance(strategy, DDPStrategy):
            return
        # No public setter: DDPStrategy takes find_unused_parameters only when built (by the CLI, from the config).
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        require(kwargs is not None, "ACORM with contrastive learning under DDP needs "
                "--trainer.strategy ddp_find_unused_parameters_true")
        if not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            rank_zero_info("ACORM: DDP find_unused_parameters enabled (W is trained by the contrastive loss only)")


__all__ = ["RoleLearning", "RoleSwitches", "cluster_batch"]
