"""Small nn.Modules: agent networks and mixers."""

from acorm_pl.nets.agent import AgentOutput, RecurrentQAgent, TrajectoryEncoder, agent_inputs, shift_actions
from acorm_pl.nets.mixers import QMixer

__all__ = ["AgentOutput", "QMixer", "RecurrentQAgent", "TrajectoryEncoder", "agent_inputs", "shift_actions"]
