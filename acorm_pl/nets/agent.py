"""Agent-side networks: the trajectory encoder (MLP + GRU -> agent embedding) and the recurrent Q agent."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def agent_inputs(
    obs: torch.Tensor, last_actions: torch.Tensor | None, n_actions: int, add_agent_id: bool
) -> torch.Tensor:
    """Per-agent network input [o_t, onehot(a_{t-1}) (, agent id)] for obs [..., N, obs_dim].

    ``last_actions`` holds integer actions a_{t-1} with shape obs.shape[:-1]; -1 means "no previous
    action" (t = 0) and encodes as zeros. ``None`` leaves the last action out.
    """
    parts = [obs]
    if last_actions is not None:
        onehot = F.one_hot(last_actions.clamp(min=0), n_actions).to(obs.dtype)
        parts.append(onehot * (last_actions >= 0).unsqueeze(-1).to(obs.dtype))
    if add_agent_id:
        n_agents = obs.shape[-2]
        eye = torch.eye(n_agents, dtype=obs.dtype, device=obs.device)
        parts.append(eye.expand(*obs.shape[:-1], n_agents))
    return torch.cat(parts, dim=-1)


def shift_actions(actions: torch.Tensor) -> torch.Tensor:
    """Last actions a_{t-1} for t = 0..T from actions [B, T, N]: -1 at t = 0, then a_0..a_{T-1} ([B, T+1, N])."""
    first = torch.full_like(actions[:, :1], -1)
    return torch.cat([first, actions], dim=1)


# The fixed cost of one GRU step (forward and backward, one CPU thread) in rows of work: a step over R sequences
# costs about R + 20 rows' work (measured 10-40 rows at embed dims 128-64: benchmarks/acorm_speed.py --parts gru).
STEP_OVERHEAD_ROWS = 20


def length_buckets(lengths: torch.Tensor, steps: int, max_buckets: int = 4, min_saving: float = 0.15
                   ) -> list[torch.Tensor] | None:
    """Sequence indices grouped by length so each group runs only to its own longest sequence, or None when
    no grouping saves at least ``min_saving`` of the ``steps``-long padded GRU's cost.

    ``lengths`` [S] (CPU, int64) are the valid steps of each sequence. The candidates are the length-sorted
    order cut into 2..``max_buckets`` equal parts; each is costed as sum over groups of longest length x
    (rows + :data:`STEP_OVERHEAD_ROWS`), since a GRU step has a fixed cost that small groups pay as often as
    large ones (why PyTorch's packed sequences, which shrink the batch at every step, ran 3.5x slower on CPU,
    and why small batches of short sequences gain nothing from grouping).
    """
    n = lengths.numel()
    order = torch.argsort(lengths, stable=True)
    padded = steps * (n + STEP_OVERHEAD_ROWS)
    best, best_cost = None, float(padded)
    for k in range(2, min(max_buckets, n) + 1):
        groups = order.tensor_split(k)
        cost = sum(int(lengths[g].max()) * (g.numel() + STEP_OVERHEAD_ROWS) for g in groups if g.numel())
        if cost < best_cost:
            best, best_cost = groups, cost
    return best if best_cost <= (1.0 - min_saving) * padded else None


class RecurrentEncoder(nn.Module):
    """MLP + GRU over whole sequences in one ``nn.GRU`` call: x [S, T, D] -> [S, T, H] and last hidden [S, H].

    Under CPU/CUDA autocast the GRU itself runs in the autocast dtype (weights cast once per call): autocast
    alone leaves ``nn.GRU`` in the weights' float32 or casts inside its step loop, which costs more than the
    recurrence. Given ``lengths``, sequences are run in groups of similar length, each only up to its own
    longest sequence, where that saves work (:func:`length_buckets`); outputs past a sequence's end are then
    meaningless (0 or computed from padding), so only valid steps may be used.
    """

    def __init__(self, input_dim: int, embed_dim: int = 64):
        super().__init__()
        self.embed_dim = embed_dim
        self.fc = nn.Linear(input_dim, embed_dim)
        self.gru = nn.GRU(embed_dim, embed_dim, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [S, T, D] (h0 [S, H], lengths [S]) -> outputs [S, T, H] and the hidden state after the last step
        (after each sequence's last valid step, given ``lengths``)."""
        hidden = F.relu(self.fc(x))
        groups = None if lengths is None else length_buckets(lengths.cpu(), x.shape[1])
        if groups is None:
            out, h_n = self._gru(hidden, h0)
            if lengths is None:
                return out, h_n
        else:
            parts = []
            for idx in groups:
                steps = int(lengths[idx].max())
                part, _ = self._gru(hidden[idx.to(x.device), :steps], None if h0 is None else h0[idx.to(x.device)])
                parts.append(F.pad(part, (0, 0, 0, x.shape[1] - steps)))
            inverse = torch.argsort(torch.cat(groups)).to(x.device)
            out = torch.cat(parts)[inverse]
        last = (lengths.to(x.device) - 1).clamp(min=0)
        return out, out[torch.arange(out.shape[0], device=x.device), last]

    def _gru(self, hidden: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        device = hidden.device.type
        dtype = self.gru.weight_hh_l0.dtype
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != dtype:
            dtype = torch.get_autocast_dtype(device)
            weights = {name: p.to(dtype) for name, p in self.gru.named_parameters()}
            h = None if h0 is None else h0.unsqueeze(0).to(dtype)
            out, h_n = functional_call(self.gru, weights, (hidden.to(dtype), h))
        else:
            h = None if h0 is None else h0.unsqueeze(0).to(dtype)
            out, h_n = self.gru(hidden.to(dtype), h)
        return out, h_n.squeeze(0)


class TrajectoryEncoder(RecurrentEncoder):
    """e_i^t = GRU(MLP([o_i^t, a_{i}^{t-1}]), e_i^{t-1}): the agent embedding, shared by all agents.

    Runs over whole sequences in one ``nn.GRU`` call (inputs never depend on earlier outputs).
    """

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, N, D] (h0 [B, N, H], lengths [B] valid steps per episode) -> embeddings [B, T, N, H] and
        last hidden [B, N, H]."""
        b, t, n, d = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b * n, t, d)
        per_agent = None if lengths is None else lengths.repeat_interleave(n)  # one sequence per (episode, agent)
        out, h_n = super().forward(seq, None if h0 is None else h0.reshape(b * n, self.embed_dim), per_agent)
        # Contiguous [B, T, N, H]: a Linear on the permuted view is a batched matmul that copies its weight
        # once per (episode, step) (measured ~6% of an ACORM update at MMM2 shapes).
        embedding = out.reshape(b, n, t, self.embed_dim).permute(0, 2, 1, 3).contiguous()
        return embedding, h_n.reshape(b, n, self.embed_dim)

    def initial_state(self, batch: int, n_agents: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, n_agents, self.embed_dim, device=device)


@dataclass
class AgentOutput:
    """What an agent network computes over a sequence."""

    q: torch.Tensor  # [B, T, N, A] individual Q values
    hidden: torch.Tensor  # [B, N, H] recurrent state after the last step
    embedding: torch.Tensor  # [B, T, N, H] agent embeddings e_i^t
    roles: torch.Tensor | None = None  # [B, T, N, R] role representations z_i^t (ACORM)

    @property
    def logits(self) -> torch.Tensor:
        """The head's outputs read as policy logits: MAPPO's actor is the same network as QMIX's Q agent."""
        return self.q


class RecurrentQAgent(nn.Module):
    """Individual Q-network: trajectory encoder then a linear head to Q_i(e_i, .) over all actions."""

    def __init__(self, input_dim: int, n_actions: int, embed_dim: int = 64):
        super().__init__()
        self.encoder = TrajectoryEncoder(input_dim, embed_dim)
        self.head = nn.Linear(embed_dim, n_actions)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> AgentOutput:
        """x [B, T, N, D] (lengths [B]: valid steps) -> Q values [B, T, N, A], embeddings and the last hidden."""
        embedding, h_n = self.encoder(x, h0, lengths)
        return AgentOutput(q=self.head(embedding), hidden=h_n, embedding=embedding)


class RoleQAgent(nn.Module):
    """ACORM's individual Q-network (Fig. 1b): e = trajectory encoder, z = f_theta(e), Q_i from [e, z].

    ``role_encoder`` is the query role encoder (shared with the contrastive head when there is one).
    """

    def __init__(self, input_dim: int, n_actions: int, embed_dim: int, role_encoder: nn.Module, role_dim: int):
        super().__init__()
        self.encoder = TrajectoryEncoder(input_dim, embed_dim)
        self.role_encoder = role_encoder
        self.head = nn.Linear(embed_dim + role_dim, n_actions)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> AgentOutput:
        embedding, h_n = self.encoder(x, h0, lengths)
        roles = self.role_encoder(embedding)
        q = self.head(torch.cat([embedding, roles.to(embedding.dtype)], dim=-1))
        return AgentOutput(q=q, hidden=h_n, embedding=embedding, roles=roles)
