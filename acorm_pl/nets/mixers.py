"""Value-decomposition mixers: Q_tot from the agents' chosen Q-values and what conditions the mixing.

Every mixer takes ``(n_agents, n_actions, cond_dim, **sizes)`` and maps ``agent_qs [..., N]`` and
``cond [..., C]`` to ``Q_tot [...]``; a dueling mixer (``uses_advantages``) also gets the chosen actions and
each agent's max_a Q_i. :func:`build_mixer` makes one by name (``qmix``, ``vdn``, ``qplex``) or import path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acorm_pl.errors import require
from acorm_pl.imports import import_attr


def _hypernet(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Module:
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"hypernet_layers must be 1 or 2, got {layers}")


class Mixer(nn.Module):
    """Base of the mixers. ``uses_conditioning``: Q_tot depends on ``cond`` (the state, or ACORM's attention
    output); ``uses_advantages``: forward needs ``actions [..., N]`` and ``max_qs [..., N]``."""

    uses_conditioning = True
    uses_advantages = False

    def forward(self, agent_qs: torch.Tensor, cond: torch.Tensor, actions: torch.Tensor | None = None,
                max_qs: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class VDNMixer(Mixer):
    """VDN (Sunehag et al., 2018): Q_tot = sum_i Q_i. No parameters; the conditioning is ignored."""

    uses_conditioning = False

    def __init__(self, n_agents: int = 1, n_actions: int = 1, cond_dim: int = 1, **sizes: int):
        super().__init__()

    def forward(self, agent_qs: torch.Tensor, cond: torch.Tensor, actions: torch.Tensor | None = None,
                max_qs: torch.Tensor | None = None) -> torch.Tensor:
        return agent_qs.sum(-1)


class QMixer(Mixer):
    """QMIX: Q_tot = w2^T ELU(W1^T q + b1) + V(c), with |W1|, |w2| from hypernetworks on the conditioning c.

    Absolute hypernetwork weights make Q_tot monotonic in every Q_i (dQ_tot/dQ_i >= 0). ``cond_dim`` is
    the raw state size for QMIX; ACORM feeds the state embedding and attention output instead.
    """

    def __init__(self, n_agents: int, cond_dim: int, embed_dim: int = 32, hypernet_embed: int = 64,
                 hypernet_layers: int = 2, n_actions: int | None = None):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = _hypernet(cond_dim, hypernet_embed, n_agents * embed_dim, hypernet_layers)
        self.hyper_b1 = nn.Linear(cond_dim, embed_dim)
        self.hyper_w2 = _hypernet(cond_dim, hypernet_embed, embed_dim, hypernet_layers)
        self.hyper_v = nn.Sequential(nn.Linear(cond_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, cond: torch.Tensor, actions: torch.Tensor | None = None,
                max_qs: torch.Tensor | None = None) -> torch.Tensor:
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


class QPLEXMixer(Mixer):
    """QPLEX (Wang et al., ICLR 2021): duplex dueling, Q_tot = V_tot + A_tot.

    With V_i = max_a Q_i and A_i = Q_i(a_i) - V_i <= 0 (dueling per agent), the transformation (Eq. 9)
    V_i(tau) = w_i(c) V_i + b_i(c), A_i(tau, a) = w_i(c) A_i with w_i > 0, then (Eq. 10)
    V_tot = sum_i V_i(tau) and A_tot = sum_i lambda_i(c, a) A_i(tau, a) with lambda_i > 0 from
    ``n_heads`` heads (Eq. 11): lambda_i = sum_k v_k(c) phi_ik(c) sigmoid(g_k(c, a))_i, v, phi >= 0.
    Greedy actions give A_tot = 0 and any other joint action A_tot <= 0: the greedy joint action maximises
    Q_tot (IGM) for any positive weights.
    """

    uses_advantages = True

    def __init__(self, n_agents: int, n_actions: int, cond_dim: int, embed_dim: int = 32, hypernet_embed: int = 64,
                 hypernet_layers: int = 2, n_heads: int = 4):
        super().__init__()
        self.n_agents, self.n_actions, self.n_heads = n_agents, n_actions, n_heads
        self.hyper_w = _hypernet(cond_dim, hypernet_embed, n_agents, hypernet_layers)  # w_i(c), made positive
        self.hyper_b = _hypernet(cond_dim, hypernet_embed, n_agents, hypernet_layers)  # b_i(c)
        self.head_key = _hypernet(cond_dim, hypernet_embed, n_heads, hypernet_layers)  # v_k(c), made positive
        self.head_agents = _hypernet(cond_dim, hypernet_embed, n_heads * n_agents, hypernet_layers)  # phi_ik(c)
        self.head_action = nn.Linear(cond_dim + n_agents * n_actions, n_heads * n_agents)  # g_k(c, a)

    def advantage_weights(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """lambda_i(c, a) > 0: cond [M, C], actions [M, N] -> [M, N]."""
        onehot = F.one_hot(actions, self.n_actions).to(cond.dtype).flatten(-2)  # [M, N*A]
        key = self.head_key(cond).abs() + 1e-10  # [M, K]
        agents = self.head_agents(cond).abs().view(-1, self.n_heads, self.n_agents) + 1e-10  # [M, K, N]
        action = torch.sigmoid(self.head_action(torch.cat([cond, onehot], -1))).view(-1, self.n_heads, self.n_agents)
        return (key.unsqueeze(-1) * agents * action).sum(1)

    def duplex(self, agent_qs: torch.Tensor, cond: torch.Tensor, actions: torch.Tensor, max_qs: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(V_tot [...], A_tot [...], lambda [..., N]) for agent_qs, max_qs, actions [..., N], cond [..., C]."""
        lead = agent_qs.shape[:-1]
        c = cond.reshape(-1, cond.shape[-1])
        q, v = agent_qs.reshape(-1, self.n_agents).to(c.dtype), max_qs.reshape(-1, self.n_agents).to(c.dtype)
        w = self.hyper_w(c).abs() + 1e-10  # [M, N]
        v_i = w * v + self.hyper_b(c)  # Eq. 9
        a_i = w * (q - v)
        lam = self.advantage_weights(c, actions.reshape(-1, self.n_agents))
        return v_i.sum(-1).view(lead), (lam * a_i).sum(-1).view(lead), lam.view(*lead, self.n_agents)

    def forward(self, agent_qs: torch.Tensor, cond: torch.Tensor, actions: torch.Tensor | None = None,
                max_qs: torch.Tensor | None = None) -> torch.Tensor:
        require(actions is not None and max_qs is not None, "QPLEXMixer needs the chosen actions and max_a Q_i")
        v_tot, a_tot, _ = self.duplex(agent_qs, cond, actions, max_qs)
        return v_tot + a_tot


MIXERS: dict[str, type[Mixer]] = {"qmix": QMixer, "vdn": VDNMixer, "qplex": QPLEXMixer}


def mixer_class(name: str) -> type[Mixer]:
    """The mixer named ``name`` (a key of :data:`MIXERS`) or importable as ``package.module.Class``."""
    if name in MIXERS:
        return MIXERS[name]
    cls = import_attr(name)
    require(isinstance(cls, type) and issubclass(cls, Mixer),
            f"model.mixer must be one of {', '.join(MIXERS)} or the import path of a Mixer subclass, got {name!r}")
    return cls


def build_mixer(name: str, n_agents: int, n_actions: int, cond_dim: int, **sizes: int) -> Mixer:
    """A mixer by name (see :func:`mixer_class`) for ``n_agents`` agents with ``n_actions`` actions and
    conditioning of size ``cond_dim``; ``sizes`` (embed_dim, hypernet_embed, hypernet_layers) as it takes them."""
    return mixer_class(name)(n_agents=n_agents, n_actions=n_actions, cond_dim=cond_dim, **sizes)
