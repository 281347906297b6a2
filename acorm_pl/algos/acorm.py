"""ACORM on QMIX (paper Sec. 2, Algorithm 1) as switches over the QMIX LightningModule.

Agent side (Fig. 1b): trajectory encoder -> agent embedding e (128-d), query role encoder -> role
representation z (64-d), Q_i from [e, z]. Contrastive role learning (Fig. 1c, Eqs. 3-5): every T_cl
TD updates the :class:`~acorm_pl.callbacks.RoleClustering` callback clusters the agent embeddings of the
batch with K-means and this module takes one step of the InfoNCE loss with its own optimizer, then
moves the key encoder by momentum. Mixer side (Fig. 1d, Eqs. 6-8): a GRU encodes the state history
into tau, multi-head attention lets tau attend to the role representations, and [tau_mha, tau]
conditions the QMIX hypernetworks.

Ablations (Fig. 3) are switches: ``contrastive=False`` (w/o CL), ``attention=False`` (w/o MHA, state
GRU kept), ``attention=False, state_encoder=False`` (w/o MHA (Vanilla)); all three off builds exactly
the networks of :class:`~acorm_pl.algos.QMIX` (the same code path, not a copy).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from acorm_pl.algos.qmix import QMIX
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.losses.contrastive import contrastive_role_loss
from acorm_pl.nets import AgentOutput, RoleQAgent, shift_actions
from acorm_pl.nets.attention import AttentionMixerInput
from acorm_pl.nets.roles import ContrastiveRoleHead, RoleEncoder


def alive_agents(avail_actions: torch.Tensor) -> torch.Tensor:
    """Agents that are alive: more than one available action (SMAC and SMAX let dead units only no-op)."""
    return avail_actions.sum(-1) > 1


class ACORM(QMIX):
    """ACORM-QMIX learner and actor.

    Args:
        contrastive: learn role representations with the contrastive loss (off: "w/o CL").
        attention: let the state embedding attend to the role representations (off: "w/o MHA").
        state_encoder: encode the state history with a GRU for the mixer (off with attention off:
            "Vanilla", the raw state conditions the mixer).
        role_dim: size of the role representation z (Table 1: 64).
        role_hidden_dim: hidden width of the role encoder MLP (0: a single linear map).
        n_clusters: K of the K-means that defines positive and negative keys (Table 2: 3).
        contrastive_lr: Adam learning rate of the contrastive optimizer (Table 2: 8e-4).
        key_encoder_tau: momentum update rate of the key encoder, Eq. (5) with beta = 1 - tau (Table 2:
            0.005).
        state_embed_dim: size of the state embedding tau (Table 1: 64).
        n_heads: attention heads (Table 1: 4).
        attn_dim: attention embedding size over all heads (Table 1: 128).
        attn_out_dim: attention output size (Table 1: 64).
        **qmix_kwargs: everything :class:`~acorm_pl.algos.QMIX` takes (``embed_dim`` is the agent
            embedding size, 128 in Table 1).
    """

    def __init__(
        self,
        env_info: dict[str, int] | None = None,
        contrastive: bool = True,
        attention: bool = True,
        state_encoder: bool = True,
        role_dim: int = 64,
        role_hidden_dim: int = 128,
        n_clusters: int = 3,
        contrastive_lr: float = 8e-4,
        key_encoder_tau: float = 0.005,
        state_embed_dim: int = 64,
        n_heads: int = 4,
        attn_dim: int = 128,
        attn_out_dim: int = 64,
        embed_dim: int = 128,
        **qmix_kwargs: Any,
    ):
        require(not attention or state_encoder,
                "model.attention needs model.state_encoder: the state embedding is the attention query")
        require(n_clusters >= 2, f"model.n_clusters must be >= 2, got {n_clusters}")
        require(contrastive_lr > 0, f"model.contrastive_lr must be > 0, got {contrastive_lr}")
        require(0.0 <= key_encoder_tau <= 1.0, f"model.key_encoder_tau must be in [0, 1], got {key_encoder_tau}")
        require(attn_dim % n_heads == 0, f"model.attn_dim ({attn_dim}) must be divisible by model.n_heads ({n_heads})")
        # Set before QMIX.__init__, which calls build_networks().
        self._switches = (contrastive, attention, state_encoder)
        super().__init__(env_info=env_info, embed_dim=embed_dim, **qmix_kwargs)  # saves ACORM's args too
        self.role_clustering: Any = None  # set by the RoleClustering callback when a contrastive step is due
        self.last_embeddings: torch.Tensor | None = None  # e of the latest TD forward (detached)
        self.last_attention: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy if self._trainer is not None else None
        if self.contrastive and isinstance(strategy, DDPStrategy):
            # The TD loss never touches W (and the contrastive loss only f_theta and W): DDP must be told that
            # some parameters get no gradient in a backward pass. setup() runs before the model is wrapped.
            kwargs = getattr(strategy, "_ddp_kwargs", None)
            require(kwargs is not None, "ACORM with contrastive learning under DDP needs "
                    "--trainer.strategy ddp_find_unused_parameters_true")
            if not kwargs.get("find_unused_parameters"):
                kwargs["find_unused_parameters"] = True
                rank_zero_info("ACORM: DDP find_unused_parameters enabled (W is trained by the contrastive loss only)")

    @property
    def contrastive(self) -> bool:
        return self._switches[0]

    # ---- networks ----------------------------------------------------------------------------------------
    def build_networks(self) -> None:
        contrastive, attention, state_encoder = self._switches
        hp = self.hparams
        if contrastive:
            self.role_head = ContrastiveRoleHead(hp.embed_dim, hp.role_dim, hp.role_hidden_dim)
        self.mixer_input: AttentionMixerInput | None = None
        if state_encoder:
            self.mixer_input = AttentionMixerInput(self.info.state_dim, hp.role_dim, hp.state_embed_dim, hp.n_heads,
                                                   hp.attn_dim, hp.attn_out_dim, attention=attention)
        super().build_networks()  # the agent and the mixer, through the two hooks below
        if self.mixer_input is not None:
            self.target_mixer_input = self._frozen_copy(self.mixer_input)

    def build_agent(self) -> nn.Module:
        """Fig. 1(b) when role representations are used (by the contrastive loss or the attention); else QMIX's."""
        contrastive, attention, _ = self._switches
        hp = self.hparams
        if contrastive:
            role_encoder: nn.Module = self.role_head.query_encoder
        elif attention:
            role_encoder = RoleEncoder(hp.embed_dim, hp.role_dim, hp.role_hidden_dim)
        else:
            return super().build_agent()
        return RoleQAgent(self.input_dim, self.info.n_actions, hp.embed_dim, role_encoder, hp.role_dim)

    def mixer_cond_dim(self) -> int:
        return super().mixer_cond_dim() if self.mixer_input is None else self.mixer_input.cond_dim

    def mixer_conditioning(self, batch: EpisodeBatch, agents: AgentOutput, target: bool = False) -> torch.Tensor:
        """[tau_mha, tau] (Fig. 1d), tau alone (w/o MHA) or the raw state (Vanilla), for every step."""
        if self.mixer_input is None:
            return batch.state
        net = self.target_mixer_input if target else self.mixer_input
        cond, weights = net(batch.state, agents.roles)
        if not target:
            self.last_attention = None if weights is None else weights.detach()
        return cond

    def on_agent_output(self, out: AgentOutput) -> None:
        # Kept so a contrastive step on the same batch reuses e instead of running the GRU again.
        self.last_embeddings = out.embedding.detach()

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

    # ---- contrastive role learning (Eqs. 3-5) ----------------------------------------------------------
    @torch.no_grad()
    def agent_embeddings(self, batch: EpisodeBatch) -> torch.Tensor:
        """Online agent embeddings e_i^t of every step of ``batch`` ([B, T, N, embed_dim])."""
        x = self.inputs(batch.obs, shift_actions(batch.actions))[:, :-1]
        return self.agent.encoder(x)[0].float()

    def contrastive_update(self, batch: EpisodeBatch, embeddings: torch.Tensor, labels: torch.Tensor, opt: Any
                           ) -> dict[str, torch.Tensor]:
        """One step of the InfoNCE loss (Eq. 4) on the valid steps of ``batch``, given the agent
        ``embeddings`` [B, T, N, H] (treated as constants: this loss trains f_theta and W only) and their
        cluster ``labels`` [B, T, N]; then the momentum update of the key encoder (Eq. 5)."""
        valid = batch.filled.bool()
        e = embeddings.detach().float()[valid]  # [M, N, H]
        alive = alive_agents(batch.avail_actions[:, :-1])[valid]
        head = self.role_head
        scores = head.scores(head.query(e), head.key(e))  # S(q, k) = q^T W k (Eq. 4)
        loss, stats = contrastive_role_loss(scores, labels.to(self.device)[valid], alive)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        head.momentum_update(self.hparams.key_encoder_tau)  # Eq. (5)
        return {"contrastive_loss": loss.detach(), **stats}

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        loss = self.td_update(batch, self.td_optimizer())
        clustering, self.role_clustering = self.role_clustering, None
        if self.contrastive and clustering is not None:
            embeddings = self.last_embeddings[:, :-1]  # from this step's TD forward, before its update
            labels = clustering.cluster_embeddings(embeddings, batch, self.hparams.n_clusters, int(self.n_updates))
            stats = self.contrastive_update(batch, embeddings, labels, self.optimizers()[1])
            # Logged on every contrastive step (rare), whatever log_every_n_steps says.
            for logger in self.loggers:
                logger.log_metrics({f"roles/{k}": float(v) for k, v in stats.items()}, step=self.env_steps)
        return loss

    def configure_optimizers(self) -> Any:
        td = torch.optim.Adam(self.td_parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)
        if not self.contrastive:
            return td
        cl = torch.optim.Adam(self.role_head.contrastive_parameters(), lr=self.hparams.contrastive_lr)
        return [td, cl]
