"""Small nn.Modules: agent networks, role encoders, attention and mixers."""

from acorm_pl.nets.agent import AgentOutput, RecurrentQAgent, RoleQAgent, TrajectoryEncoder, agent_inputs, shift_actions
from acorm_pl.nets.attention import AttentionMixerInput, RoleAttention, StateEncoder
from acorm_pl.nets.critic import RecurrentCritic, ValueNormalizer
from acorm_pl.nets.mixers import Mixer, QMixer, QPLEXMixer, VDNMixer, build_mixer
from acorm_pl.nets.roles import ContrastiveRoleHead, RoleEncoder

__all__ = [
    "AgentOutput",
    "AttentionMixerInput",
    "ContrastiveRoleHead",
    "Mixer",
    "QMixer",
    "QPLEXMixer",
    "RecurrentCritic",
    "RecurrentQAgent",
    "RoleAttention",
    "RoleEncoder",
    "RoleQAgent",
    "StateEncoder",
    "TrajectoryEncoder",
    "VDNMixer",
    "ValueNormalizer",
    "agent_inputs",
    "build_mixer",
    "shift_actions",
]
