"""Rollout DataModule: owns the environments and the replay buffer, interleaves collection and learning."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from acorm_pl.data.episode_buffer import OBS_DTYPES, EpisodeBatch, EpisodeReplayBuffer
from acorm_pl.data.rollout import Rollout, collect_rollout
from acorm_pl.envs import EnvInfo, VecEnv, get_env_info, make_vec_env
from acorm_pl.envs.seeds import copy_seeds
from acorm_pl.errors import require


class RolloutDataModule(pl.LightningDataModule):
    """Environments + episode replay buffer as a Lightning DataModule.

    Each training "batch" is produced by collecting one episode in each of ``n_envs`` environments with
    the current policy (the LightningModule's ``act``), storing them, then sampling ``updates_per_collect``
    batches of ``batch_size`` episodes. Training stops once ``total_env_steps`` environment steps (summed
    over all environments and ranks) have been collected; one epoch spans ``epoch_env_steps`` env steps
    (checkpoints are written at epoch ends).

    ``env_steps`` and ``episodes`` count complete episodes only: an episode a crashed or hung environment
    worker lost is dropped whole (never stored) and not counted. ``worker_restarts`` counts the worker
    restarts of the training environments over all ranks (as of the last collection).

    On-policy algorithms (a LightningModule with ``on_policy = True``, e.g. MAPPO) get no replay buffer:
    episodes are collected in rounds of ``n_envs`` with the current policy until every rank holds at least
    ``batch_size`` of them, which are handed over as one batch (padded to the longest) and then dropped.
    The module does its own epochs and minibatches over that batch, so ``updates_per_collect`` must be 1.
    A batch is always completed, even past the end of an epoch or of the budget (by less than one batch),
    so every collected episode is learned from and checkpoints never hold half a batch.

    Args:
        env: environment family (``smax``).
        map_name: map / scenario of that family, e.g. ``3m``.
        env_kwargs: extra options of the family (e.g. ``episode_limit``, ``reward``).
        n_envs: environments stepped in lockstep on each rank.
        seed: environment seeds are ``seed + rank * n_envs + i``.
        buffer_size: replay capacity in episodes.
        buffer_steps: replay capacity in transitions (env steps), shared by the stored episodes; null: room
            for ``buffer_size`` episodes at the episode limit. Smaller saves memory: the oldest episodes are
            then also evicted when a new one does not fit (counted, with a warning).
        buffer_obs_dtype: storage dtype of observations and states in the replay buffer: ``float32``, or
            ``float16`` / ``bfloat16`` for half the memory (rounded; batches are float32 either way).
        batch_size: episodes per sampled batch (on-policy: episodes collected per update, at least).
        updates_per_collect: gradient updates per collected batch of ``n_envs`` episodes.
        total_env_steps: env-step budget of the run.
        epoch_env_steps: env steps per epoch.
        buffer_device: where the replay storage lives (``cpu`` or a CUDA device).
        checkpoint_buffer: store the replay buffer in checkpoints (exact resume; large on big maps).
    """

    def __init__(
        self,
        env: str = "smax",
        map_name: str = "3m",
        env_kwargs: dict[str, Any] | None = None,
        n_envs: int = 8,
        seed: int = 0,
        buffer_size: int = 5000,
        buffer_steps: int | None = None,
        buffer_obs_dtype: str = "float32",
        batch_size: int = 32,
        updates_per_collect: int = 1,
        total_env_steps: int = 2_000_000,
        epoch_env_steps: int = 10_000,
        buffer_device: str = "cpu",
        checkpoint_buffer: bool = True,
    ):
        super().__init__()
        for name, value in [("n_envs", n_envs), ("buffer_size", buffer_size), ("batch_size", batch_size),
                            ("updates_per_collect", updates_per_collect), ("total_env_steps", total_env_steps),
                            ("epoch_env_steps", epoch_env_steps)]:
            require(isinstance(value, int) and value >= 1, f"data.{name} must be a positive integer, got {value!r}")
        require(batch_size <= buffer_size,
                f"data.batch_size ({batch_size}) must not exceed data.buffer_size ({buffer_size})")
        require(seed >= 0, f"data.seed must be >= 0, got {seed}")
        require(buffer_obs_dtype in OBS_DTYPES,
                f"data.buffer_obs_dtype must be one of {', '.join(OBS_DTYPES)}, got {buffer_obs_dtype!r}")
        self.save_hyperparameters()
        self.env_name, self.map_name, self.env_kwargs = env, map_name, dict(env_kwargs or {})
        self.n_envs, self.seed = n_envs, seed
        self.buffer_size, self.batch_size = buffer_size, batch_size
        self.updates_per_collect, self.total_env_steps = updates_per_collect, total_env_steps
        self.epoch_env_steps, self.buffer_device = epoch_env_steps, buffer_device
        self.checkpoint_buffer = checkpoint_buffer
        self.env_info: EnvInfo = get_env_info(env, map_name, **self.env_kwargs)
        min_steps = batch_size * self.env_info.episode_limit
        require(buffer_steps is None or (isinstance(buffer_steps, int) and buffer_steps >= min_steps),
                f"data.buffer_steps must be null or at least data.batch_size x the episode limit ({batch_size} x "
                f"{self.env_info.episode_limit} = {min_steps}, a batch of the longest episodes), got {buffer_steps!r}")
        self.buffer_steps, self.buffer_obs_dtype = buffer_steps, buffer_obs_dtype
        self.env: VecEnv | None = None
        self.buffer: EpisodeReplayBuffer | None = None
        self.env_steps = 0  # global (all ranks) environment steps collected
        self.episodes = 0  # global episodes collected
        self.worker_restarts = 0  # global restarts of crashed / hung environment workers
        self._restarts_seen = 0  # this rank's env.restarts already added to worker_restarts
        self._all_can_sample = False  # every rank's buffer holds a batch (decided together after each collect)
        self.last_rollout: Rollout | None = None
        self.on_policy = False  # decided by the LightningModule in setup()
        self._fresh: list[EpisodeBatch] = []  # on-policy episodes collected for the next batch
        self._fresh_episodes = 0
        self.collect_seconds = 0.0
        self._pending_state: dict[str, Any] | None = None

    # ---- ranks ---------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def env_seeds(self, offset: int = 0) -> list[int]:
        """Seeds of this rank's copies: ``seed + offset + rank * n_envs + i`` (:mod:`acorm_pl.envs.seeds`)."""
        return copy_seeds(self.seed + offset, self.rank, self.n_envs)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def use_algorithm(self, module: Any) -> None:
        """Feed ``module`` on-policy batches (its ``on_policy`` attribute) or replay samples; checks the settings."""
        self.on_policy = bool(getattr(module, "on_policy", False))
        require(not self.on_policy or self.updates_per_collect == 1,
                f"data.updates_per_collect must be 1 for an on-policy algorithm ({type(module).__name__} does its "
                f"own epochs over each batch), got {self.updates_per_collect}")
        check_data = getattr(module, "check_data", None)  # MARLModule's hook; any LightningModule may train
        if check_data is not None:
            check_data(self)

    def setup(self, stage: str) -> None:
        self.use_algorithm(self.trainer.lightning_module if self.trainer is not None else None)
        if self.env is None:
            self.env = make_vec_env(self.env_name, self.map_name, self.env_seeds(), **self.env_kwargs)
        if self.on_policy:
            rank_zero_info(f"on-policy: batches of >= {self.batch_size} fresh episodes per rank, no replay buffer")
        elif self.buffer is None:
            self.buffer = EpisodeReplayBuffer(self.env_info, self.buffer_size, self.buffer_device,
                                              seed=self.seed + 1000 * self.rank, steps=self.buffer_steps,
                                              obs_dtype=self.buffer_obs_dtype)
            rank_zero_info(f"replay buffer: {self.buffer_size} episodes, {self.buffer.steps} steps preallocated, "
                           f"{self.buffer.nbytes / 2**20:.1f} MiB (observations {self.buffer_obs_dtype}) "
                           f"on {self.buffer_device}")
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def teardown(self, stage: str) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
            self._restarts_seen = 0

    def make_env(self, n_envs: int, seed_offset: int) -> VecEnv:
        """A separate set of ``n_envs`` copies (e.g. for evaluation) seeded away from the training ones."""
        return make_vec_env(self.env_name, self.map_name, copy_seeds(self.seed + seed_offset, self.rank, n_envs),
                            **self.env_kwargs)

    # ---- collection ----------------------------------------------------------------------------------
    def _global_sum(self, value: int) -> int:
        return self._global_sums(value)[0]

    def _global_sums(self, *values: int) -> list[int]:
        """Each value summed over all ranks, in one collective (none when there is a single process)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.trainer.strategy.root_device)
        return [int(round(v)) for v in self.trainer.strategy.reduce(t, reduce_op="sum").tolist()]

    def collect(self) -> Rollout:
        """One episode in every environment with the current exploring policy, stored in the buffer (or, on
        policy, kept for the next batch)."""
        assert self.env is not None and (self.on_policy or self.buffer is not None), "setup() must run first"
        actor = self.trainer.lightning_module
        start = time.perf_counter()
        rollout = collect_rollout(self.env, actor, explore=True)
        self.collect_seconds += time.perf_counter() - start
        new_restarts = self.env.restarts - self._restarts_seen
        self._restarts_seen = self.env.restarts
        # Ranks may keep different numbers of episodes, so whether to sample is decided together: only when
        # every rank's buffer holds a batch (a count of ready ranks rides along in the same all-reduce).
        if self.on_policy:
            if rollout.n_episodes:  # kept (complete) episodes only
                self._fresh.append(rollout.episodes)
                self._fresh_episodes += rollout.n_episodes
            ready = int(self._fresh_episodes >= self.batch_size)
        else:
            early = self.buffer.evicted_early
            self.buffer.add(rollout.episodes, rollout.lengths)  # kept (complete) episodes only
            if early == 0 and self.buffer.evicted_early:
                rank_zero_warn(f"replay buffer: {self.buffer.steps} steps are full at {len(self.buffer)} episodes "
                               f"(< data.buffer_size {self.buffer_size}): the oldest are evicted early; raise "
                               "data.buffer_steps to keep them")
            ready = int(self.buffer.can_sample(self.batch_size))
        steps, episodes, restarts, ready = self._global_sums(rollout.env_steps, rollout.n_episodes, new_restarts, ready)
        self.env_steps += steps
        self.episodes += episodes
        self.worker_restarts += restarts
        self._all_can_sample = ready == self.world_size
        self.last_rollout = rollout
        return rollout

    def take_fresh_batch(self) -> EpisodeBatch:
        """The on-policy episodes collected so far as one batch; they are dropped from the data module."""
        batch = EpisodeBatch.cat(self._fresh)
        self._fresh, self._fresh_episodes = [], 0
        return batch

    def _batches(self) -> Iterator[EpisodeBatch]:
        assert self.on_policy or self.buffer is not None
        epoch_end = min(self.env_steps + self.epoch_env_steps, self.total_env_steps)
        while self.env_steps < epoch_end:
            self.collect()
            # Decided over all ranks in collect(), so all ranks take these branches together.
            if self.on_policy:
                while not self._all_can_sample:
                    self.collect()
                yield self.take_fresh_batch()
                continue
            if not self._all_can_sample:
                continue
            for _ in range(self.updates_per_collect):
                yield self.buffer.sample(self.batch_size)
        if self.env_steps >= self.total_env_steps and self.trainer is not None:
            self.trainer.should_stop = True

    def train_dataloader(self) -> _SizedBatches:
        return _SizedBatches(self)

    # ---- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "worker_restarts": self.worker_restarts,
            "world_size": self.world_size,
            "buffer": self.buffer.state_dict() if self.buffer is not None and self.checkpoint_buffer else None,
            "env": self.env.state_dict() if self.env is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning restores the datamodule before setup() builds the envs and buffer: apply it then.
        if self.env is None:
            self._pending_state = state
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.env is not None
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self.worker_restarts = state.get("worker_restarts", 0)
        if state["buffer"] is not None and self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        same_layout = state.get("world_size", 1) == 1 and self.world_size == 1
        if same_layout and state["env"]:
            self.env.load_state_dict(state["env"])
        else:
            # The checkpoint holds rank 0's data only: give every rank fresh, distinct streams.
            if self.buffer is not None:
                self.buffer.generator.manual_seed(self.seed + 1000 * self.rank + self.episodes)
            self.env.close()
            self.env = make_vec_env(self.env_name, self.map_name, self.env_seeds(offset=self.episodes),
                                    **self.env_kwargs)
            self._restarts_seen = 0


class _SizedBatches:
    """The training iterable. Its length is an upper bound so Lightning never prefetches (a prefetched
    batch would be collected with a stale policy); it stops early once the epoch's env steps are done.
    (Collections that lose episodes to failed workers add fewer steps; the epoch may then end a little early.)"""

    def __init__(self, dm: RolloutDataModule):
        self.dm = dm

    def __len__(self) -> int:
        per_collect = self.dm.n_envs * self.dm.world_size  # every episode has at least one step
        return (self.dm.epoch_env_steps // per_collect + 1) * self.dm.updates_per_collect

    def __iter__(self) -> Iterator[EpisodeBatch]:
        return self.dm._batches()
