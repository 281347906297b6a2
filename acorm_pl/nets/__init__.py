"""Small nn.Modules: agent networks and mixers."""

from acorm_pl.nets.agent import RecurrentQAgent, TrajectoryEncoder, agent_inputs, shift_actions
from acorm_pl.nets.mixers import QMixer

__all__ = ["QMixer", "RecurrentQAgent", "TrajectoryEncoder", "agent_inputs", "shift_actions"]
