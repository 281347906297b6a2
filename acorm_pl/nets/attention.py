"""Attention-guided role coordination (Sec. 2.2, Eqs. 6-8): state GRU, role attention, mixer conditioning."""

from __future__ import annotations

import math

import torch
from torch import nn

from acorm_pl.nets.agent import RecurrentEncoder


class StateEncoder(RecurrentEncoder):
    """tau^t = GRU(ReLU(Linear(s^t)), tau^{t-1}): the state history s^0..s^t encoded as a state embedding.

    Runs over whole sequences in one ``nn.GRU`` call, like :class:`~acorm_pl.nets.agent.TrajectoryEncoder`.
    """

    def __init__(self, state_dim: int, embed_dim: int = 64):
        super().__init__(state_dim, embed_dim)

    def forward(self, states: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, T, state_dim] (h0 [B, embed_dim], lengths [B] valid steps) -> tau [B, T, embed_dim] and
        last hidden [B, embed_dim]."""
        return super().forward(states, h0, lengths)

    def initial_state(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, self.embed_dim, device=device)


class RoleAttention(nn.Module):
    """Multi-head attention with the state embedding tau as the query and role representations z as keys/values.

    Per head h: alpha^h = softmax_i(tau W_h^Q (z_i W_h^K)^T / sqrt(d_k)) (Eq. 7),
    tau_atten^h = sum_i alpha_i^h z_i W_h^V (Eq. 6), and tau_mha = Concat_h(tau_atten^h) W^O (Eq. 8),
    with d_k = d_v = attn_dim // n_heads. All projections are bias-free, as in the equations.
    Absent agents (``agent_mask`` False) get weight exactly 0. If no agent is present, all weights are 0
    (not uniform), so tau_atten = 0 and the output never depends on padded role representations.
    """

    def __init__(
        self, query_dim: int = 64, role_dim: int = 64, n_heads: int = 4, attn_dim: int = 128, out_dim: int = 64
    ):
        super().__init__()
        if attn_dim % n_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_k, self.out_dim = n_heads, attn_dim // n_heads, out_dim
        self.w_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.w_k = nn.Linear(role_dim, attn_dim, bias=False)
        self.w_v = nn.Linear(role_dim, attn_dim, bias=False)
        self.w_o = nn.Linear(attn_dim, out_dim, bias=False)

    def forward(
        self, tau: torch.Tensor, z: torch.Tensor, agent_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tau [..., query_dim], z [..., N, role_dim], agent_mask [..., N] -> (tau_mha [..., out_dim],
        per-head weights alpha [..., n_heads, N] in float32)."""
        heads = (self.n_heads, self.d_k)
        q = self.w_q(tau).unflatten(-1, heads).unsqueeze(-2)  # tau W_h^Q: [..., H, 1, d_k]
        k = self.w_k(z).unflatten(-1, heads).transpose(-3, -2)  # z_i W_h^K: [..., H, N, d_k]
        v = self.w_v(z).unflatten(-1, heads).transpose(-3, -2)  # v_i = z_i W_h^V (Eq. 6): [..., H, N, d_v]
        logits = (q @ k.transpose(-1, -2)).squeeze(-2).float() / math.sqrt(self.d_k)  # Eq. (7) exponent
        if agent_mask is not None:
            present = agent_mask.bool().unsqueeze(-2)  # [..., 1, N]
            logits = logits.masked_fill(~present, torch.finfo(logits.dtype).min)
        alpha = torch.softmax(logits, dim=-1)  # Eq. (7): [..., H, N]
        if agent_mask is not None:
            # exp(min - min) = 1 would make a fully masked row uniform; zero it (partial rows are exact already).
            alpha = alpha * present.any(dim=-1, keepdim=True)
        atten = (alpha.unsqueeze(-2).to(v.dtype) @ v).squeeze(-2)  # Eq. (6): tau_atten^h [..., H, d_v]
        out = self.w_o(atten.flatten(-2))  # Eq. (8): Concat_h(tau_atten^h) W^O
        return out, alpha


class AttentionMixerInput(nn.Module):
    """The mixer conditioning of Fig. 1(d): c = Concat(tau_mha, tau), tau from the state GRU.

    ``attention=False`` is the "w/o MHA" ablation: c = tau, and no attention parameters exist, so the
    ablation removes exactly the :class:`RoleAttention` weights and keeps the state GRU.
    """

    def __init__(
        self,
        state_dim: int,
        role_dim: int = 64,
        state_embed_dim: int = 64,
        n_heads: int = 4,
        attn_dim: int = 128,
        out_dim: int = 64,
        attention: bool = True,
    ):
        super().__init__()
        self.state_encoder = StateEncoder(state_dim, state_embed_dim)
        self.attention = RoleAttention(state_embed_dim, role_dim, n_heads, attn_dim, out_dim) if attention else None

    @property
    def cond_dim(self) -> int:
        """Size of the conditioning vector fed to the mixer's hypernetworks."""
        extra = 0 if self.attention is None else self.attention.out_dim
        return extra + self.state_encoder.embed_dim

    def forward(
        self, states: torch.Tensor, roles: torch.Tensor | None = None, agent_mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """states [B, T, S], roles [B, T, N, role_dim], agent_mask [B, T, N], lengths [B] (valid steps; the
        state GRU skips later ones) -> (cond [B, T, cond_dim], attention weights [B, T, n_heads, N], or None
        without attention)."""
        tau, _ = self.state_encoder(states, lengths=lengths)
        if self.attention is None:
            return tau, None
        if roles is None:
            raise ValueError("roles are required when attention is enabled")
        tau_mha, weights = self.attention(tau, roles, agent_mask)
        return torch.cat([tau_mha.to(tau.dtype), tau], dim=-1), weights
