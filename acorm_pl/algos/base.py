"""What every acorm-pl algorithm shares: the environment facts, agent inputs, the rollout actor, the
update counter, the learning-rate decay and logging against environment steps.

QMIX (value decomposition, off-policy replay) and MAPPO (policy gradient, on-policy batches) both derive
from :class:`MARLModule`; the DataModule reads :attr:`MARLModule.on_policy` to decide how to feed them.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning.pytorch as pl
import torch

from acorm_pl import __version__
from acorm_pl.algos.guard import check_state, check_update
from acorm_pl.checkpoints import CHECKPOINT_FORMAT
from acorm_pl.envs.base import EnvInfo
from acorm_pl.errors import require
from acorm_pl.nets import AgentOutput, agent_inputs


def alive_agents(avail_actions: torch.Tensor) -> torch.Tensor:
    """Agents that are alive: more than one available action (SMAC and SMAX let dead units only no-op)."""
    return avail_actions.sum(-1) > 1


class MARLModule(pl.LightningModule, abc.ABC):
    """Base LightningModule of the algorithms (manual optimisation; subclasses build ``self.agent``).

    Subclasses save their hyperparameters, which must include ``embed_dim``, ``add_last_action``,
    ``add_agent_id``, ``lr_decay_env_steps`` and ``lr_final_ratio``, and implement :meth:`select_actions`.
    """

    on_policy: bool = False  # True: the DataModule hands over fresh episodes of the current policy, no replay

    def __init__(self, env_info: dict[str, int] | None = None, gamma: float = 0.99, lr_decay_env_steps: int = 0,
                 lr_final_ratio: float = 0.1):
        super().__init__()
        require(env_info is not None, "model.env_info is missing: it is linked from the data module by the CLI")
        require(0.0 <= gamma <= 1.0, f"model.gamma must be in [0, 1], got {gamma}")
        require(lr_decay_env_steps >= 0, f"model.lr_decay_env_steps must be >= 0, got {lr_decay_env_steps}")
        require(0.0 < lr_final_ratio <= 1.0, f"model.lr_final_ratio must be in (0, 1], got {lr_final_ratio}")
        self.automatic_optimization = False
        self.info = EnvInfo(**env_info)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self.action_generator = torch.Generator()
        self._restored_generator: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        """Size of the per-agent network input [o, onehot(a_{t-1}) (, agent id)]."""
        hp, info = self.hparams, self.info
        return info.obs_dim + (info.n_actions if hp.add_last_action else 0) + (info.n_agents if hp.add_agent_id else 0)

    def check_data(self, data: Any) -> None:
        """Raise :class:`~acorm_pl.errors.ConfigError` for DataModule settings this algorithm cannot train
        with; the DataModule calls it before a run starts."""

    # ---- acting ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # One exploration stream per rank, derived from the (seeded) global RNG.
        self.action_generator.manual_seed(int(torch.randint(0, 2**31 - 1, ())) + self.global_rank)

    def inputs(self, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return agent_inputs(obs, last_actions if hp.add_last_action else None, self.info.n_actions, hp.add_agent_id)

    def initial_state(self, n_envs: int) -> torch.Tensor:
        return torch.zeros(n_envs, self.info.n_agents, self.hparams.embed_dim, device=self.device)

    def agent_forward(self, inputs: torch.Tensor, h0: torch.Tensor | None = None,
                      lengths: torch.Tensor | None = None) -> AgentOutput:
        """The shared agent network over agent inputs [B, T, N, D] (from hidden state ``h0``; ``lengths`` [B]
        valid steps per episode, later ones are not computed)."""
        return self.agent(inputs, h0, lengths)

    def on_agent_output(self, out: AgentOutput) -> None:
        """Called with the online agent network's output over every training batch (a hook for subclasses)."""

    @abc.abstractmethod
    def select_actions(self, outputs: torch.Tensor, avail: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions [E, N] from the agent network's outputs [E, N, A] (float32) over available actions."""

    @torch.no_grad()
    def act(self, obs: torch.Tensor, last_actions: torch.Tensor, avail: torch.Tensor, hidden: torch.Tensor,
            explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (exploring or greedy) for one step of ``E`` environments, and the new recurrent state."""
        x = self.inputs(obs.to(self.device).unsqueeze(1), last_actions.to(self.device).unsqueeze(1))
        out = self.agent_forward(x, h0=hidden)
        return self.select_actions(out.q[:, 0].float(), avail.to(self.device), explore), out.hidden

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def lr_scale(self) -> float:
        """Linear decay factor from 1 to ``lr_final_ratio`` over ``lr_decay_env_steps`` env steps (0: constant 1)."""
        hp = self.hparams
        if hp.lr_decay_env_steps <= 0:
            return 1.0
        frac = min(1.0, self.env_steps / hp.lr_decay_env_steps)
        return 1.0 - frac * (1.0 - hp.lr_final_ratio)

    @property
    def env_steps(self) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(dm, "env_steps", 0))

    def should_log(self) -> bool:
        """Whether Lightning flushes step metrics after this batch (every ``log_every_n_steps``).

        Logging only then matters: each ``self.log`` call costs milliseconds of bookkeeping, a sizeable
        share of a small model's update.
        """
        connector = getattr(self.trainer, "_logger_connector", None) if self._trainer is not None else None
        return bool(getattr(connector, "should_update_logs", True))

    def log_train(self, metrics: dict[str, Any]) -> None:
        """Log step metrics against the env-step count (Lightning uses a logged ``step`` as the x value)."""
        if not self.should_log():
            return
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("step", float(self.env_steps), on_step=True, on_epoch=False)

    # ---- optimizers, by name -----------------------------------------------------------------------------
    @abc.abstractmethod
    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The module's optimizers by name, in a fixed order (their states are saved in that order)."""

    def configure_optimizers(self) -> Any:
        named = self.named_optimizers()
        self.optimizer_names = list(named)
        optimizers = list(named.values())
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def optimizer(self, name: str) -> Any:
        """The (Lightning-wrapped) optimizer called ``name`` in :meth:`named_optimizers`."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        require(name in self.optimizer_names, f"no optimizer {name!r}; this module has {self.optimizer_names}")
        return optimizers[self.optimizer_names.index(name)]

    def check_update(self, optimizers: Any, losses: dict[str, torch.Tensor]) -> None:
        """Stop the run (:class:`~acorm_pl.errors.DivergenceError`, one line) unless ``losses`` (name ->
        scalar), the gradients of the ``optimizers``' parameters and those parameters are finite. Call
        after the backward pass, before clipping and stepping (:mod:`acorm_pl.algos.guard`)."""
        check_update(self, optimizers if isinstance(optimizers, (list, tuple)) else [optimizers], losses)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_state(self)  # a checkpoint never holds NaN or Inf weights
        cls = type(self)
        checkpoint["acorm_pl"] = {"action_generator": self.action_generator.get_state(),
                                  "class_path": f"{cls.__module__}.{cls.__qualname__}",
                                  "format": CHECKPOINT_FORMAT, "package_version": __version__}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("acorm_pl", {})
        if "action_generator" in state:
            self._restored_generator = state["action_generator"]

    def on_fit_start(self) -> None:
        if self._restored_generator is not None and self.global_rank == 0:
            self.action_generator.set_state(self._restored_generator)
