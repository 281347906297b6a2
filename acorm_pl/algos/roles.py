"""ACORM's role machinery, shared by ACORM-QMIX and ACORM-MAPPO (one implementation for both hosts).

Agent side (Fig. 1b / Fig. 8b): trajectory encoder -> agent embedding e, query role encoder -> role
representation z, the agent's head on [e, z]; no one-hot agent IDs by default (Sec. 2.1: role
representations, not identities, tell agents apart). Contrastive role learning (Fig. 1c / 8c, Eqs. 3-5):
every T_cl updates (the :class:`~acorm_pl.callbacks.RoleClustering` callback says when) the module clusters
the agent embeddings of the batch with its clustering strategy (K-means by default) and takes one step of
the InfoNCE loss with its own optimizer. The key encoder follows the query encoder by momentum (Eq. 5)
after *every* update of the module (a TD update of ACORM-QMIX, a PPO update of ACORM-MAPPO), since the
host's loss trains the query encoder on every update; MoCo and the authors' code do the same. State side
(Fig. 1d / 8e, Eqs. 6-8): a GRU encodes the state history into tau and multi-head attention lets tau attend
to the role representations of the alive agents; [tau_mha, tau] conditions the QMIX mixer (ACORM-QMIX) or
the critic (ACORM-MAPPO).

Ablations (Fig. 3) are switches: ``contrastive=False`` (w/o CL), ``attention=False`` (w/o MHA, state GRU
kept), ``attention=False, state_encoder=False`` (w/o MHA (Vanilla)); all three off builds exactly the
host algorithm's networks.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from acorm_pl.algos.base import alive_agents
from acorm_pl.clustering import Clustering, make_clustering
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.nets import AgentOutput, RoleQAgent, shift_actions
from acorm_pl.nets.attention import AttentionMixerInput
from acorm_pl.nets.roles import ContrastiveRoleHead, RoleEncoder


@torch.no_grad()
def cluster_batch(clustering: Clustering, embeddings: torch.Tensor, batch: EpisodeBatch, k: int, seed: int = 0
                  ) -> torch.Tensor:
    """``clustering`` of the alive agents of every valid (episode, timestep) of ``batch`` on their ``embeddings``
    [B, T, N, H], in one call: labels [B, T, N], -1 at padded steps and for dead agents."""
    valid = batch.filled.bool()
    alive = alive_agents(batch.avail_actions[:, :-1])
    labels = torch.full(alive.shape, -1, dtype=torch.int64, device=embeddings.device)
    labels[valid] = clustering(embeddings[valid].float(), alive[valid], k, seed).to(labels.device)
    return labels


class ContrastiveRoles:
    """Mixin placed before the host algorithm (``class ACORM(ContrastiveRoles, QMIX)``).

    The host calls :meth:`build_agent` while building its networks; the subclass builds the role head and
    the state input with :meth:`build_role_head` and :meth:`build_state_input` first. After the host's
    update, :meth:`training_step` takes the contrastive step when the clustering callback says it is due,
    on the agent embeddings the host reported through ``on_agent_output`` (no second GRU pass).

    Args:
        contrastive: learn role representations with the contrastive loss (off: "w/o CL").
        attention: let the state embedding attend to the role representations (off: "w/o MHA").
        state_encoder: encode the state history with a GRU (off with attention off: "Vanilla", the raw
            state is used).
        role_dim: size of the role representation z (Tables 1 and 3: 64).
        role_hidden_dim: hidden width of the role encoder MLP (0: a single linear map).
        n_clusters: K of the clustering that defines positive and negative keys (Tables 2 and 4: 3; the most
            clusters for :class:`~acorm_pl.clustering.AutoK`).
        clustering: how the agent embeddings of each (episode, timestep) are clustered: a
            :class:`~acorm_pl.clustering.Clustering` (``class_path`` in a config): ``KMeans`` (default, the
            paper's), ``GMM`` (diagonal Gaussian mixture, the paper's footnote 4), ``AutoK`` (K per step by
            the silhouette score).
        contrastive_lr: Adam learning rate of the contrastive optimizer (Tables 2 and 4: 8e-4).
        key_encoder_tau: momentum update rate of the key encoder, Eq. (5) with beta = 1 - tau (Tables 2
            and 4: 0.005).
        state_embed_dim: size of the state embedding tau (Tables 1 and 3: 64).
        n_heads: attention heads (Tables 1 and 3: 4).
        attn_dim: attention embedding size over all heads (Tables 1 and 3: 128).
        attn_out_dim: attention output size (Tables 1 and 3: 64).
        **kwargs: everything the host algorithm takes (``embed_dim`` is the agent embedding size, 128).
    """

    hparams: Any
    info: Any
    agent: nn.Module
    role_head: ContrastiveRoleHead

    def __init__(
        self,
        contrastive: bool = True,
        attention: bool = True,
        state_encoder: bool = True,
        role_dim: int = 64,
        role_hidden_dim: int = 128,
        n_clusters: int = 3,
        clustering: Clustering | None = None,
        contrastive_lr: float = 8e-4,
        key_encoder_tau: float = 0.005,
        state_embed_dim: int = 64,
        n_heads: int = 4,
        attn_dim: int = 128,
        attn_out_dim: int = 64,
        **kwargs: Any,
    ):
        require(not attention or state_encoder,
                "model.attention needs model.state_encoder: the state embedding is the attention query")
        require(n_clusters >= 2, f"model.n_clusters must be >= 2, got {n_clusters}")
        require(contrastive_lr > 0, f"model.contrastive_lr must be > 0, got {contrastive_lr}")
        require(0.0 <= key_encoder_tau <= 1.0, f"model.key_encoder_tau must be in [0, 1], got {key_encoder_tau}")
        require(attn_dim % n_heads == 0, f"model.attn_dim ({attn_dim}) must be divisible by model.n_heads ({n_heads})")
        # Set before the host's __init__, which builds the networks.
        self._switches = (contrastive, attention, state_encoder)
        super().__init__(**kwargs)  # the host saves these arguments with its own
        # A single agent has no one to contrast with whatever K is (the paper keeps K = 3 on 1-agent GRF).
        require(n_clusters <= self.info.n_agents or self.info.n_agents == 1,
                f"model.n_clusters must not exceed the number of agents ({self.info.n_agents} on this map), "
                f"got {n_clusters}")
        self.clustering: Clustering = make_clustering(clustering)
        self.contrastive_due = False  # set by the RoleClustering callback every T_cl updates
        self.last_embeddings: torch.Tensor | None = None  # e of the latest training forward (detached)
        self.last_attention: torch.Tensor | None = None

    @property
    def contrastive(self) -> bool:
        return self._switches[0]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy if self._trainer is not None else None
        if self.contrastive and isinstance(strategy, DDPStrategy):
            # The host's loss never touches W (and the contrastive loss only f_theta and W): DDP must be told
            # that some parameters get no gradient in a backward pass. setup() runs before the model is wrapped.
            kwargs = getattr(strategy, "_ddp_kwargs", None)
            require(kwargs is not None, "ACORM with contrastive learning under DDP needs "
                    "--trainer.strategy ddp_find_unused_parameters_true")
            if not kwargs.get("find_unused_parameters"):
                kwargs["find_unused_parameters"] = True
                rank_zero_info("ACORM: DDP find_unused_parameters enabled (W is trained by the contrastive loss only)")

    # ---- networks ----------------------------------------------------------------------------------------
    def build_role_head(self) -> None:
        """The query/key role encoders and W (Fig. 1c), when contrastive learning is on."""
        hp = self.hparams
        if self.contrastive:
            self.role_head = ContrastiveRoleHead(hp.embed_dim, hp.role_dim, hp.role_hidden_dim)

    def build_state_input(self) -> AttentionMixerInput | None:
        """State GRU (+ role attention) producing [tau_mha, tau] (Fig. 1d), or None for the Vanilla ablation."""
        _, attention, state_encoder = self._switches
        hp = self.hparams
        if not state_encoder:
            return None
        return AttentionMixerInput(self.info.state_dim, hp.role_dim, hp.state_embed_dim, hp.n_heads, hp.attn_dim,
                                   hp.attn_out_dim, attention=attention)

    def build_agent(self) -> nn.Module:
        """Fig. 1(b) / 8(b) when role representations are used (by the contrastive loss or the attention);
        else the host's own agent network."""
        contrastive, attention, _ = self._switches
        hp = self.hparams
        if contrastive:
            role_encoder: nn.Module = self.role_head.query_encoder
        elif attention:
            role_encoder = RoleEncoder(hp.embed_dim, hp.role_dim, hp.role_hidden_dim)
        else:
            return super().build_agent()
        return RoleQAgent(self.input_dim, self.info.n_actions, hp.embed_dim, role_encoder, hp.role_dim)

    def role_conditioning(self, net: AttentionMixerInput | None, batch: EpisodeBatch, roles: torch.Tensor | None,
                          record: bool = True) -> torch.Tensor:
        """[tau_mha, tau] (with attention), tau alone (w/o MHA) or the raw state (Vanilla, ``net`` None) for
        every step [B, T+1, .]. Dead agents and padded steps are left out of the attention (one policy for
        both hosts): a dead agent's role representation is meaningless and must not move the conditioning.
        With ``record`` the attention weights are kept in ``last_attention``."""
        if net is None:
            return batch.state
        cond, weights = net(batch.state, roles, alive_agents(batch.avail_actions), batch.obs_lengths)
        if record:
            self.last_attention = None if weights is None else weights.detach()
        return cond

    def on_agent_output(self, out: AgentOutput) -> None:
        # Kept so a contrastive step on the same batch reuses e instead of running the GRU again.
        self.last_embeddings = out.embedding.detach()

    # ---- contrastive role learning (Eqs. 3-5) ----------------------------------------------------------
    @torch.no_grad()
    def cluster_roles(self, embeddings: torch.Tensor, batch: EpisodeBatch, seed: int = 0) -> torch.Tensor:
        """Cluster labels [B, T, N] of agent ``embeddings`` [B, T, N, H] of ``batch`` by the module's clustering
        (K = ``n_clusters``), all valid (episode, timestep) groups at once; -1 at padded steps and for dead agents."""
        return cluster_batch(self.clustering, embeddings, batch, self.hparams.n_clusters, seed)

    @torch.no_grad()
    def agent_embeddings(self, batch: EpisodeBatch) -> torch.Tensor:
        """Online agent embeddings e_i^t of every step of ``batch`` ([B, T, N, embed_dim])."""
        x = self.inputs(batch.obs, shift_actions(batch.actions))[:, :-1]
        return self.agent.encoder(x)[0].float()

    def contrastive_update(self, batch: EpisodeBatch, embeddings: torch.Tensor, labels: torch.Tensor, opt: Any
                           ) -> dict[str, torch.Tensor]:
        """One step of the InfoNCE loss (Eq. 4) on the valid steps of ``batch``, given the agent
        ``embeddings`` [B, T, N, H] (treated as constants: this loss trains f_theta and W only) and their
        cluster ``labels`` [B, T, N]. The key encoder moves afterwards, with every update (:meth:`training_step`)."""
        valid = batch.filled.bool()
        e = embeddings.detach().float()[valid]  # [M, N, H]
        alive = alive_agents(batch.avail_actions[:, :-1])[valid]
        head = self.role_head
        scores = head.scores(head.query(e), head.key(e))  # S(q, k) = q^T W k (Eq. 4)
        loss, stats = contrastive_role_loss(scores, labels.to(e.device)[valid], alive)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.check_update(opt, {"contrastive loss": loss})
        opt.step()
        return {"contrastive_loss": loss.detach(), **stats}

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        """The host's update, the contrastive step when the clustering callback has marked it due, then the
        key encoder's momentum update (Eq. 5), once per update whether or not a contrastive step ran."""
        loss = super().training_step(batch, batch_idx)
        due, self.contrastive_due = self.contrastive_due, False
        if self.contrastive and due:
            embeddings = self.last_embeddings[:, :-1]  # from this update's forward, before its optimizer step
            labels = self.cluster_roles(embeddings, batch, int(self.n_updates))
            stats = self.contrastive_update(batch, embeddings, labels, self.optimizer("contrastive"))
            # Logged on every contrastive step (rare), whatever log_every_n_steps says.
            for logger in self.loggers:
                logger.log_metrics({f"roles/{k}": float(v) for k, v in stats.items()}, step=self.env_steps)
        self.update_key_encoder()
        return loss

    def update_key_encoder(self) -> None:
        """Eq. (5): theta_k <- beta * theta_k + (1 - beta) * theta_q with beta = 1 - ``key_encoder_tau``, after
        every update of the query encoder theta_q (which the host's loss trains on every update)."""
        if self.contrastive:
            self.role_head.momentum_update(self.hparams.key_encoder_tau)

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The host's optimizers, then ``contrastive`` (Adam over the query role encoder and W) when on."""
        named = super().named_optimizers()
        if self.contrastive:
            named["contrastive"] = torch.optim.Adam(self.role_head.contrastive_parameters(),
                                                    lr=self.hparams.contrastive_lr)
        return named
