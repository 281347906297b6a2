"""Callbacks: exploration schedule, evaluation, role clustering, throughput, progress."""

from acorm_pl.callbacks.epsilon import EpsilonSchedule
from acorm_pl.callbacks.evaluation import Evaluation
from acorm_pl.callbacks.progress import EnvStepProgressBar
from acorm_pl.callbacks.role_figures import RoleFigures
from acorm_pl.callbacks.roles import RoleClustering
from acorm_pl.callbacks.throughput import ThroughputMonitor

__all__ = ["EnvStepProgressBar", "EpsilonSchedule", "Evaluation", "RoleClustering", "RoleFigures", "ThroughputMonitor"]
