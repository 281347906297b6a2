"""Episode replay buffer: whole episodes in preallocated float32 tensors, padded to the episode limit."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from acorm_pl.envs.base import EnvInfo


@dataclass
class EpisodeBatch:
    """A batch of B episodes padded to T steps.

    Time-indexed fields with T+1 entries hold the observation *before* each step plus the one after the
    last step (needed to bootstrap truncated episodes). ``filled[b, t]`` is 1 where step t is a real
    transition of episode b.
    """

    obs: torch.Tensor  # [B, T+1, N, obs_dim] float32
    state: torch.Tensor  # [B, T+1, state_dim] float32
    avail_actions: torch.Tensor  # [B, T+1, N, A] bool
    actions: torch.Tensor  # [B, T, N] int64
    reward: torch.Tensor  # [B, T] float32
    terminated: torch.Tensor  # [B, T] float32, 1 on a true terminal transition
    filled: torch.Tensor  # [B, T] float32 mask of valid steps

    @property
    def batch_size(self) -> int:
        return self.actions.shape[0]

    @property
    def max_t(self) -> int:
        return self.actions.shape[1]

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return EpisodeBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def truncate(self, t: int) -> EpisodeBatch:
        """The first ``t`` steps (and ``t + 1`` observations)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value[:, : t + 1] if f.name in _PLUS_ONE else value[:, :t]
        return EpisodeBatch(**out)

    def select(self, idx: torch.Tensor) -> EpisodeBatch:
        """The episodes ``idx`` (a minibatch), with the same padding."""
        return EpisodeBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(batches: list[EpisodeBatch]) -> EpisodeBatch:
        """Episodes of several batches in one, padded (zeros, ``filled`` 0) to the longest of them."""
        batches = [b for b in batches if b.batch_size > 0]
        if not batches:
            raise ValueError("no episodes to concatenate")
        t = max(b.max_t for b in batches)
        out = {}
        for f in fields(EpisodeBatch):
            steps = t + 1 if f.name in _PLUS_ONE else t
            parts = []
            for b in batches:
                value = getattr(b, f.name)
                pad = torch.zeros(value.shape[0], steps - value.shape[1], *value.shape[2:], dtype=value.dtype,
                                  device=value.device)
                parts.append(torch.cat([value, pad], dim=1))
            out[f.name] = torch.cat(parts, dim=0)
        return EpisodeBatch(**out)


_PLUS_ONE = {"obs", "state", "avail_actions"}


class EpisodeReplayBuffer:
    """FIFO store of at most ``capacity`` episodes with uniform sampling.

    Storage is allocated once at construction (float32 / bool / int64 on ``device``) so memory use is
    known up front (:attr:`nbytes`). Sampled batches are cut to the longest episode among them.
    """

    def __init__(self, info: EnvInfo, capacity: int = 5000, device: torch.device | str = "cpu", seed: int = 0):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be a positive number of episodes, got {capacity}")
        self.info = info
        self.capacity = int(capacity)
        self.device = torch.device(device)
        c, t, n = self.capacity, info.episode_limit, info.n_agents
        kw = {"device": self.device}
        self.storage: dict[str, torch.Tensor] = {
            "obs": torch.zeros(c, t + 1, n, info.obs_dim, dtype=torch.float32, **kw),
            "state": torch.zeros(c, t + 1, info.state_dim, dtype=torch.float32, **kw),
            "avail_actions": torch.zeros(c, t + 1, n, info.n_actions, dtype=torch.bool, **kw),
            "actions": torch.zeros(c, t, n, dtype=torch.int64, **kw),
            "reward": torch.zeros(c, t, dtype=torch.float32, **kw),
            "terminated": torch.zeros(c, t, dtype=torch.float32, **kw),
            "filled": torch.zeros(c, t, dtype=torch.float32, **kw),
        }
        self.lengths = torch.zeros(c, dtype=torch.int64)
        self.insert_pos = 0
        self.size = 0
        self.episodes_added = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage."""
        return sum(v.numel() * v.element_size() for v in self.storage.values())

    def __len__(self) -> int:
        return self.size

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def add(self, episodes: EpisodeBatch, lengths: torch.Tensor) -> None:
        """Store each episode of ``episodes`` (padded to any T <= episode_limit), overwriting the oldest.

        ``episodes`` must hold whole episodes only; an empty batch (every episode discarded) is a no-op.
        """
        b, t = episodes.batch_size, episodes.max_t
        if b == 0:
            return
        if t > self.info.episode_limit:
            raise ValueError(f"episode of {t} steps exceeds the episode limit {self.info.episode_limit}")
        idx = (torch.arange(b) + self.insert_pos) % self.capacity
        for f in fields(episodes):
            dst = self.storage[f.name]
            src = getattr(episodes, f.name).to(self.device)
            steps = t + 1 if f.name in _PLUS_ONE else t
            dst[idx] = 0 if dst.dtype != torch.bool else False
            dst[idx, :steps] = src[:, :steps].to(dst.dtype)
        self.lengths[idx] = lengths.to(torch.int64).cpu()
        self.insert_pos = int((self.insert_pos + b) % self.capacity)
        self.size = min(self.size + b, self.capacity)
        self.episodes_added += b

    def sample(self, batch_size: int) -> EpisodeBatch:
        """``batch_size`` distinct episodes drawn uniformly, cut to the longest of them."""
        if not self.can_sample(batch_size):
            raise ValueError(f"cannot sample {batch_size} episodes from a buffer holding {self.size}")
        idx = torch.randperm(self.size, generator=self.generator)[:batch_size]
        max_t = int(self.lengths[idx].max())
        dev_idx = idx.to(self.device)
        out = {}
        for name, tensor in self.storage.items():
            steps = max_t + 1 if name in _PLUS_ONE else max_t
            out[name] = tensor[dev_idx, :steps]
        return EpisodeBatch(**out)

    def state_dict(self) -> dict[str, Any]:
        """The stored episodes (only the filled slots), pointers and the sampling RNG."""
        return {
            "storage": {k: v[: self.size].clone().cpu() for k, v in self.storage.items()},
            "lengths": self.lengths[: self.size].clone(),
            "insert_pos": self.insert_pos,
            "size": self.size,
            "episodes_added": self.episodes_added,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} differs from configured {self.capacity}")
        size = state["size"]
        for k, v in state["storage"].items():
            if v.shape[1:] != self.storage[k].shape[1:]:
                raise ValueError(f"checkpoint buffer field {k!r} has shape {tuple(v.shape[1:])}, "
                                 f"expected {tuple(self.storage[k].shape[1:])} (different map or episode limit?)")
            self.storage[k][:size] = v.to(self.device)
        self.lengths[:size] = state["lengths"]
        self.insert_pos = state["insert_pos"]
        self.size = size
        self.episodes_added = state["episodes_added"]
        self.generator.set_state(state["generator"])
