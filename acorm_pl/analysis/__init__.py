"""Looking inside trained policies: evaluation, per-timestep inspection, role maps, attention heatmaps and
learning curves with bootstrap confidence bands."""

from acorm_pl.analysis.curves import GroupCurve, RunCurve, learning_curves, load_runs, summary_rows, write_curves
from acorm_pl.analysis.evaluate import EvaluationResult, evaluate_checkpoint, log_evaluation
from acorm_pl.analysis.figures import (
    RoleMapPanel,
    attention_figure,
    role_map_data,
    role_map_figure,
    write_episode_figures,
)
from acorm_pl.analysis.inspect import (
    EpisodeRecord,
    inspect_checkpoint,
    load_checkpoint,
    load_records,
    record_episodes,
    save_records,
)
from acorm_pl.analysis.stats import area_under_curve, bootstrap_band, bootstrap_ci, wilson_interval

__all__ = [
    "EpisodeRecord", "EvaluationResult", "GroupCurve", "RoleMapPanel", "RunCurve", "area_under_curve",
    "attention_figure", "bootstrap_band", "bootstrap_ci", "evaluate_checkpoint", "inspect_checkpoint",
    "learning_curves", "load_checkpoint", "load_records", "load_runs", "log_evaluation", "record_episodes",
    "role_map_data", "role_map_figure", "save_records", "summary_rows", "wilson_interval", "write_curves",
    "write_episode_figures",
]
