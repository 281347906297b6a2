"""Looking inside trained policies."""

from acorm_pl.analysis.inspect import EpisodeRecord, inspect_checkpoint, load_checkpoint, record_episodes

__all__ = ["EpisodeRecord", "inspect_checkpoint", "load_checkpoint", "record_episodes"]
