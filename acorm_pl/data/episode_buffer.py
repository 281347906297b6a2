"""Episode replay: the padded batch of episodes the algorithms learn from, and a FIFO buffer that stores only
the real steps of each episode in one preallocated ring of compact tensors."""

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
    transition of episode b. ``alive[b, t, i]`` says whether agent i was alive at observation t, as the
    environment reported it (False in padding, as ``avail_actions``).
    """

    obs: torch.Tensor  # [B, T+1, N, obs_dim] float32
    state: torch.Tensor  # [B, T+1, state_dim] float32
    avail_actions: torch.Tensor  # [B, T+1, N, A] bool
    actions: torch.Tensor  # [B, T, N] int64
    reward: torch.Tensor  # [B, T] float32
    terminated: torch.Tensor  # [B, T] float32, 1 on a true terminal transition
    filled: torch.Tensor  # [B, T] float32 mask of valid steps
    alive: torch.Tensor  # [B, T+1, N] bool

    def __post_init__(self) -> None:
        # A mis-shaped flag would broadcast silently in the masks that use it.
        if self.alive.dtype != torch.bool or self.alive.shape != self.avail_actions.shape[:-1]:
            raise ValueError(f"EpisodeBatch.alive must be a bool tensor of shape {tuple(self.avail_actions.shape[:-1])}"
                             f" [B, T+1, N], got {self.alive.dtype} {tuple(self.alive.shape)}")

    @property
    def batch_size(self) -> int:
        return self.actions.shape[0]

    @property
    def max_t(self) -> int:
        return self.actions.shape[1]

    @property
    def obs_lengths(self) -> torch.Tensor:
        """Observations of each episode [B] (int64): its steps plus the one after the last step."""
        return self.filled.sum(1).long() + 1

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


_PLUS_ONE = {"obs", "state", "avail_actions", "alive"}


def alive_from_avail(avail_actions: torch.Tensor) -> torch.Tensor:
    """Alive agents [..., N] inferred from available actions [..., N, A] by the rule used before environments
    reported ``alive``: more than one available action (SMAC and SMAX leave a dead unit only one). Only for
    data that lacks the field: replay buffers in older checkpoints (and hand-built test batches)."""
    return avail_actions.sum(-1) > 1


OBS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_BITS = 8


def action_dtype(n_actions: int) -> torch.dtype:
    """The smallest integer dtype that holds action indices ``0 .. n_actions - 1``."""
    if n_actions <= 256:
        return torch.uint8
    return torch.int16 if n_actions <= 2**15 else torch.int32


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., A]`` -> uint8 ``[..., ceil(A / 8)]``, flag ``j`` in bit ``j % 8`` of byte ``j // 8``."""
    pad = (-flags.shape[-1]) % _BITS
    bits = torch.nn.functional.pad(flags.to(torch.uint8), (0, pad)).unflatten(-1, (-1, _BITS))
    shifts = torch.arange(_BITS, dtype=torch.uint8, device=flags.device)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 ``[..., K]`` -> bool ``[..., n]``."""
    shifts = torch.arange(_BITS, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n].bool()


def step_nbytes(info: EnvInfo, obs_dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one slot of the step ring: obs, state, bit-packed available actions and alive flags, action,
    reward, terminal."""
    obs_bytes = torch.finfo(obs_dtype).bits // 8
    n, a = info.n_agents, info.n_actions
    avail, alive = n * -(-a // _BITS), -(-n // _BITS)
    act = torch.iinfo(action_dtype(a)).bits // 8
    return (n * info.obs_dim + info.state_dim) * obs_bytes + avail + alive + n * act + 4 + 1


def buffer_nbytes(info: EnvInfo, capacity: int, steps: int | None = None,
                  obs_dtype: torch.dtype = torch.float32) -> int:
    """Bytes an :class:`EpisodeReplayBuffer` with these settings allocates (without allocating it)."""
    slots = _ring_steps(info, capacity, steps) + capacity + 1  # + the zero slot padding reads
    return slots * step_nbytes(info, obs_dtype) + 2 * capacity * 8


def _ring_steps(info: EnvInfo, capacity: int, steps: int | None) -> int:
    worst = capacity * info.episode_limit
    return worst if steps is None else min(int(steps), worst)


class EpisodeReplayBuffer:
    """FIFO store of at most ``capacity`` episodes and ``steps`` transitions, with uniform sampling.

    Only real steps are stored, in one preallocated ring of step slots: an episode of ``L`` steps takes
    ``L + 1`` consecutive slots (its ``L + 1`` observations; the transition fields of the last slot are
    zero), wrapping around the end of the ring. The ring has ``steps + capacity`` slots, so it holds
    ``capacity`` episodes as long as they average at most ``steps / capacity`` steps. ``steps=None``
    sizes it for ``capacity`` episodes at the episode limit: eviction is then by episode count alone.

    Eviction: before an episode is stored, the oldest episodes are dropped until the buffer holds fewer
    than ``capacity`` episodes and the ring has room for the new one. Episodes dropped only for lack of
    room (while fewer than ``capacity`` were held) are counted in :attr:`evicted_early`.

    Storage (on ``device``, allocated and zeroed at construction, so :attr:`nbytes` is what it takes from
    the start): observations and states in ``obs_dtype`` (float32, or float16 / bfloat16 at half the
    memory, rounded), available actions and alive flags bit-packed, actions in the smallest integer type for
    ``n_actions``, reward float32, terminal bool; ``filled`` is implied by the episode's length. One more
    slot past the ring stays zero. Sampling draws distinct episodes uniformly and gathers their steps in one
    indexing per field (O(batch x T)), positions past an episode's end reading the zero slot: it hands back
    exactly the float32 / int64 :class:`EpisodeBatch` the algorithms take, padded (zeros, ``filled`` 0) to
    the longest sampled episode.
    """

    def __init__(self, info: EnvInfo, capacity: int = 5000, device: torch.device | str = "cpu", seed: int = 0,
                 steps: int | None = None, obs_dtype: str | torch.dtype = "float32"):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be a positive number of episodes, got {capacity}")
        if isinstance(obs_dtype, str):
            if obs_dtype not in OBS_DTYPES:
                raise ValueError(f"buffer obs_dtype must be one of {', '.join(OBS_DTYPES)}, got {obs_dtype!r}")
            obs_dtype = OBS_DTYPES[obs_dtype]
        if obs_dtype not in OBS_DTYPES.values():
            raise ValueError(f"buffer obs_dtype must be one of {', '.join(OBS_DTYPES)}, got {obs_dtype}")
        if steps is not None and steps < info.episode_limit:
            raise ValueError(f"buffer steps ({steps}) must hold at least one episode of the limit "
                             f"({info.episode_limit})")
        self.info = info
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.obs_dtype = obs_dtype
        self.steps = _ring_steps(info, self.capacity, steps)
        self.slots = self.steps + self.capacity
        s, n, kw = self.slots + 1, info.n_agents, {"device": self.device}
        self.storage: dict[str, torch.Tensor] = {
            "obs": torch.zeros(s, n, info.obs_dim, dtype=obs_dtype, **kw),
            "state": torch.zeros(s, info.state_dim, dtype=obs_dtype, **kw),
            "avail_actions": torch.zeros(s, n, -(-info.n_actions // _BITS), dtype=torch.uint8, **kw),
            "alive": torch.zeros(s, -(-n // _BITS), dtype=torch.uint8, **kw),
            "actions": torch.zeros(s, n, dtype=action_dtype(info.n_actions), **kw),
            "reward": torch.zeros(s, dtype=torch.float32, **kw),
            "terminated": torch.zeros(s, dtype=torch.bool, **kw),
        }
        # Per episode slot (an episode ring of ``capacity``): first step slot and length. CPU: bookkeeping only.
        self.starts = torch.zeros(self.capacity, dtype=torch.int64)
        self.episode_lengths = torch.zeros(self.capacity, dtype=torch.int64)
        self.head = 0  # episode slot of the oldest stored episode
        self.size = 0  # stored episodes
        self.used = 0  # step slots they take
        self.episodes_added = 0
        self.evicted_early = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage (step ring and per-episode bookkeeping)."""
        tensors = [*self.storage.values(), self.starts, self.episode_lengths]
        return sum(v.numel() * v.element_size() for v in tensors)

    @property
    def lengths(self) -> torch.Tensor:
        """Lengths of the stored episodes, oldest first ([size] int64)."""
        return self.episode_lengths[self._episode_slots(torch.arange(self.size))]

    def __len__(self) -> int:
        return self.size

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def _episode_slots(self, index: torch.Tensor) -> torch.Tensor:
        return (self.head + index) % self.capacity

    def _evict_oldest(self) -> None:
        self.used -= int(self.episode_lengths[self.head]) + 1
        self.head = (self.head + 1) % self.capacity
        self.size -= 1

    def add(self, episodes: EpisodeBatch, lengths: torch.Tensor) -> None:
        """Store each episode of ``episodes`` (padded to any T <= episode_limit), evicting the oldest.

        ``episodes`` must hold whole episodes only (``filled`` is 1 for exactly the first ``lengths[b]``
        steps); an empty batch (every episode discarded) is a no-op.
        """
        b, t = episodes.batch_size, episodes.max_t
        if b == 0:
            return
        if t > self.info.episode_limit:
            raise ValueError(f"episode of {t} steps exceeds the episode limit {self.info.episode_limit}")
        lengths = lengths.to(torch.int64).cpu()
        steps_mask = torch.arange(t) < lengths.unsqueeze(1)  # [b, t]
        if lengths.shape != (b,) or bool((lengths < 1).any()) or not torch.equal(
                episodes.filled.bool().cpu(), steps_mask):
            raise ValueError("only whole episodes can be stored: filled must be 1 for exactly the first "
                             "`lengths` steps of each episode (lengths >= 1)")
        need = lengths + 1
        # Older episodes of this same batch that the newer ones would evict are never written.
        fits = (need.flip(0).cumsum(0).flip(0) <= self.slots) & (torch.arange(b) >= b - self.capacity)
        first = int((~fits).sum())
        rows = self._rows(episodes, first, lengths[first:])  # converted (and checked) before anything changes
        self.evicted_early += first - min(first, max(0, b - self.capacity))
        starts = []
        for n_slots, length in zip(need[first:].tolist(), lengths[first:].tolist(), strict=True):
            while self.size == self.capacity or self.slots - self.used < n_slots:
                self.evicted_early += int(self.size < self.capacity)
                self._evict_oldest()
            slot = (self.head + self.size) % self.capacity
            start = (int(self.starts[self.head]) + self.used) % self.slots if self.size else 0
            self.starts[slot], self.episode_lengths[slot] = start, length
            self.size += 1
            self.used += n_slots
            starts.append(start)
        self.episodes_added += b
        dst = self._slots_of(torch.tensor(starts), need[first:]).to(self.device)
        for name, values in rows.items():
            self.storage[name][dst] = values

    def _rows(self, episodes: EpisodeBatch, first: int, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The slots of episodes ``first:`` in storage types, episode after episode ([sum(L + 1), ...])."""
        live = (torch.arange(episodes.max_t + 1) <= lengths.unsqueeze(1)).to(self.device)  # [K, T+1]

        def rows(value: torch.Tensor, transition: bool) -> torch.Tensor:
            value = value[first:].to(self.device)
            if transition:  # [K, T, ...] -> [K, T+1, ...]: the final observation's slot holds no transition
                value = torch.cat([value, value.new_zeros(value.shape[0], 1, *value.shape[2:])], dim=1)
            return value[live]

        return {"obs": self._compact(rows(episodes.obs, False), "observations"),
                "state": self._compact(rows(episodes.state, False), "states"),
                "avail_actions": pack_bits(rows(episodes.avail_actions, False)),
                "alive": pack_bits(rows(episodes.alive, False)),
                "actions": rows(episodes.actions, True).to(self.storage["actions"].dtype),
                "reward": rows(episodes.reward, True).float(),
                "terminated": rows(episodes.terminated, True).bool()}

    def _compact(self, values: torch.Tensor, what: str) -> torch.Tensor:
        out = values.to(self.obs_dtype)
        if self.obs_dtype != values.dtype and bool((out.isinf() & values.isfinite()).any()):
            raise ValueError(f"{what} beyond the range of {self.obs_dtype} cannot be stored in it; "
                             "use bfloat16 or float32")
        return out

    def sample(self, batch_size: int) -> EpisodeBatch:
        """``batch_size`` distinct episodes drawn uniformly, padded to the longest of them."""
        if not self.can_sample(batch_size):
            raise ValueError(f"cannot sample {batch_size} episodes from a buffer holding {self.size}")
        return self.get(torch.randperm(self.size, generator=self.generator)[:batch_size])

    def get(self, index: torch.Tensor) -> EpisodeBatch:
        """The stored episodes ``index`` (0 = the oldest) as float32 / int64 tensors on the buffer's device,
        padded (zeros, ``filled`` 0) to the longest of them."""
        ep = self._episode_slots(torch.as_tensor(index, dtype=torch.int64))
        lengths = self.episode_lengths[ep]
        t = int(lengths.max())
        offsets = torch.arange(t + 1, device=self.device)
        lengths = lengths.to(self.device).unsqueeze(1)
        slots = (self.starts[ep].to(self.device).unsqueeze(1) + offsets) % self.slots  # [B, T+1]
        # Past the final observation: the zero slot. (The final observation's own slot holds no transition.)
        slots = slots.masked_fill_(offsets > lengths, self.slots)
        store, steps = self.storage, slots[:, :t]
        return EpisodeBatch(
            obs=store["obs"][slots].float(),
            state=store["state"][slots].float(),
            avail_actions=unpack_bits(store["avail_actions"][slots], self.info.n_actions),
            alive=unpack_bits(store["alive"][slots], self.info.n_agents),
            actions=store["actions"][steps].long(),
            reward=store["reward"][steps],
            terminated=store["terminated"][steps].float(),
            filled=(offsets[:t] < lengths).float(),
        )

    def _slots_of(self, starts: torch.Tensor, n_slots: torch.Tensor) -> torch.Tensor:
        """The ring slots of episodes starting at ``starts`` with ``n_slots`` slots each, one after the other."""
        within = torch.arange(int(n_slots.sum())) - torch.repeat_interleave(n_slots.cumsum(0) - n_slots, n_slots)
        return (torch.repeat_interleave(starts, n_slots) + within) % self.slots

    def _live_slots(self) -> torch.Tensor:
        """Step slots of every stored episode, oldest episode first ([used] int64)."""
        ep = self._episode_slots(torch.arange(self.size))
        return self._slots_of(self.starts[ep], self.episode_lengths[ep] + 1)

    def state_dict(self) -> dict[str, Any]:
        """The stored episodes (their step slots only, oldest first, in the storage dtypes), counters and
        the sampling RNG."""
        live = self._live_slots().to(self.device)
        return {
            "steps": {k: v[live].cpu() for k, v in self.storage.items()},
            "lengths": self.lengths.clone(),
            "size": self.size,
            "capacity": self.capacity,
            "episodes_added": self.episodes_added,
            "evicted_early": self.evicted_early,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (or the padded layout of earlier versions); the ring may differ in size
        or ``obs_dtype`` from the one saved as long as the episodes fit.

        Buffers saved before environments reported ``alive`` lack that field: it is derived here, once, from
        the stored available actions by :func:`alive_from_avail` (the rule the algorithms used then)."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} differs from configured {self.capacity}")
        if "steps" not in state:
            state = self._from_padded(state)
        if "alive" not in state["steps"]:
            avail = unpack_bits(state["steps"]["avail_actions"], self.info.n_actions)
            state = {**state, "steps": {**state["steps"], "alive": pack_bits(alive_from_avail(avail))}}
        lengths = state["lengths"].to(torch.int64)
        used = int((lengths + 1).sum())
        if used > self.slots:
            raise ValueError(f"checkpoint buffer holds {used - lengths.numel()} steps, more than the "
                             f"{self.steps} configured")
        for k, v in state["steps"].items():
            if v.shape[1:] != self.storage[k].shape[1:]:
                raise ValueError(f"checkpoint buffer field {k!r} has shape {tuple(v.shape[1:])}, "
                                 f"expected {tuple(self.storage[k].shape[1:])} (different map?)")
            v = v.to(self.device)
            self.storage[k][:used] = self._compact(v, k) if k in ("obs", "state") else v
        size = lengths.numel()
        self.episode_lengths[:size] = lengths
        self.starts[:size] = (lengths + 1).cumsum(0) - (lengths + 1)
        self.head, self.size, self.used = 0, size, used
        self.episodes_added = state["episodes_added"]
        self.evicted_early = state.get("evicted_early", 0)
        self.generator.set_state(state["generator"])

    def _from_padded(self, state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint of the earlier layout (every episode padded to the limit, float32) in today's."""
        size, old = state["size"], state["storage"]
        order = torch.arange(size)  # oldest first: slot order until the buffer was full, then from insert_pos
        if size == state["capacity"]:
            order = (state["insert_pos"] + order) % size
        lengths = state["lengths"][order]
        t = old["actions"].shape[1]
        live = torch.arange(t + 1) <= lengths.unsqueeze(1)

        def rows(name: str) -> torch.Tensor:
            value = old[name][order]
            if value.shape[1] == t:
                value = torch.cat([value, value.new_zeros(size, 1, *value.shape[2:])], dim=1)
            return value[live]

        steps = {"obs": rows("obs"), "state": rows("state"), "avail_actions": pack_bits(rows("avail_actions")),
                 "actions": rows("actions").to(self.storage["actions"].dtype), "reward": rows("reward"),
                 "terminated": rows("terminated").bool()}
        return {**state, "steps": steps, "lengths": lengths}
