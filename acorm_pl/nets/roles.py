"""Role encoder f_theta and the MoCo-style contrastive head of ACORM (Sec. 2.1, Eqs. 4-5)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class RoleEncoder(nn.Module):
    """f_theta: agent embedding e [..., embed_dim] -> role representation z [..., role_dim].

    ``Linear(embed_dim, hidden_dim) -> ReLU -> Linear(hidden_dim, role_dim)``; ``hidden_dim=0`` gives a
    single Linear. The output is left unbounded: the authors' final sigmoid is not in the paper.
    """

    def __init__(self, embed_dim: int = 128, role_dim: int = 64, hidden_dim: int = 128):
        super().__init__()
        self.embed_dim, self.role_dim = embed_dim, role_dim
        if hidden_dim > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, role_dim)
            )
        else:
            self.net = nn.Linear(embed_dim, role_dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e [..., embed_dim] -> z [..., role_dim]."""
        return self.net(e)


class ContrastiveRoleHead(nn.Module):
    """Query encoder theta_q, momentum key encoder theta_k and the bilinear score S(q, k) = q^T W k (Eq. 4).

    Only the query encoder and W are trained by gradients (:meth:`contrastive_parameters`); the key
    encoder follows the query encoder through :meth:`momentum_update` (Eq. 5).
    """

    def __init__(self, embed_dim: int = 128, role_dim: int = 64, hidden_dim: int = 128):
        super().__init__()
        self.role_dim = role_dim
        self.query_encoder = RoleEncoder(embed_dim, role_dim, hidden_dim)
        self.key_encoder = copy.deepcopy(self.query_encoder).requires_grad_(False)
        # Identity start, so S(q, k) = q^T k at first; the authors initialise W uniform in [0, 1).
        self.W = nn.Parameter(torch.eye(role_dim))

    def query(self, e: torch.Tensor) -> torch.Tensor:
        """z_q = f_theta_q(e): role representations from the query encoder (with gradients)."""
        return self.query_encoder(e)

    def key(self, e: torch.Tensor) -> torch.Tensor:
        """z_k = f_theta_k(e): role representations from the key encoder, computed without autograd."""
        with torch.no_grad():
            return self.key_encoder(e).detach()

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Bilinear scores of Eq. (4): q [..., N, d], k [..., N, d] -> S [..., N, N] with S[i, j] = q_i^T W k_j."""
        return (q @ self.W) @ k.transpose(-1, -2)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Agent embeddings e [..., N, embed_dim] -> scores between queries and keys [..., N, N]."""
        return self.scores(self.query(e), self.key(e))

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """Eq. (5) as a soft update: theta_k <- (1 - tau) * theta_k + tau * theta_q (parameters and buffers).

        Eq. (5) reads theta_k <- beta * theta_k + (1 - beta) * theta_q, so beta = 1 - tau. Table 2's
        "momentum coefficient 0.005" is the step size tau: read literally as beta = 0.005, the key
        encoder would be a near copy of the query encoder after every update, contradicting MoCo's
        slowly moving keys (MoCo uses beta = 0.999). ``tau = 0`` leaves the keys unchanged.
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        pairs = list(zip(self.key_encoder.parameters(), self.query_encoder.parameters()))
        pairs += list(zip(self.key_encoder.buffers(), self.query_encoder.buffers()))
        for key_t, query_t in pairs:
            if key_t.is_floating_point():
                key_t.lerp_(query_t.to(key_t.dtype), tau)
            else:
                key_t.copy_(query_t)

    def contrastive_parameters(self) -> list[nn.Parameter]:
        """What the contrastive optimizer updates: the query encoder's parameters and W."""
        return [*self.query_encoder.parameters(), self.W]
