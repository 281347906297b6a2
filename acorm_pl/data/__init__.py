"""Episode storage, rollout collection and the rollout DataModule."""

from acorm_pl.data.datamodule import RolloutDataModule
from acorm_pl.data.episode_buffer import EpisodeBatch, EpisodeReplayBuffer
from acorm_pl.data.rollout import Actor, Rollout, collect_rollout

__all__ = ["Actor", "EpisodeBatch", "EpisodeReplayBuffer", "Rollout", "RolloutDataModule",
           "collect_rollout"]
