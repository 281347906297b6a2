"""Value-decomposition mixers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _hypernet(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Module:
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"hypernet_layers must be 1 or 2, got {layers}")


class QMixer(nn.Module):
    """QMIX: Q_tot = w2^T ELU(W1^T q + b1) + V(c), with |W1|, |w2| from hypernetworks on the conditioning c.

    Absolute hypernetwork weights make Q_tot monotonic in every Q_i (dQ_tot/dQ_i >= 0). ``cond_dim`` is
    the raw state size for QMIX; ACORM feeds the state embedding and attention output instead.
    """

    def __init__(self, n_agents: int, cond_dim: int, embed_dim: int = 32, hypernet_embed: int = 64,
                 hypernet_layers: int = 2):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = _hypernet(cond_dim, hypernet_embed, n_agents * embed_dim, hypernet_layers)
        self.hyper_b1 = nn.Linear(cond_dim, embed_dim)
        self.hyper_w2 = _hypernet(cond_dim, hypernet_embed, embed_dim, hypernet_layers)
        self.hyper_v = nn.Sequential(nn.Linear(cond_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """agent_qs [..., N], cond [..., cond_dim] -> Q_tot [...]."""
        lead = agent_qs.shape[:-1]
        q = agent_qs.reshape(-1, 1, self.n_agents)
        c = cond.reshape(-1, cond.shape[-1])
        w1 = self.hyper_w1(c).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(c).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(q.to(w1.dtype), w1) + b1)
        w2 = self.hyper_w2(c).abs().view(-1, self.embed_dim, 1)
        v = self.hyper_v(c).view(-1, 1, 1)
        return (torch.bmm(hidden, w2) + v).view(lead)
