"""What every acorm-pl algorithm shares: the environment facts, agent inputs, the rollout actor, the
update counter, optimizers and learning-rate schedulers by name, logging against environment steps, and the
life cycle of ACORM's role learning for the modules that own one.

QMIX (value decomposition, off-policy replay) and MAPPO (policy gradient, on-policy batches) both derive
from :class:`MARLModule`; the DataModule reads :attr:`MARLModule.on_policy` to decide how to feed them. The
ACORM modules own a :class:`~acorm_pl.algos.roles.RoleLearning` as ``roles``; this module steps it after
every update and gives it its optimizer.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from acorm_pl import __version__
from acorm_pl.algos.guard import check_state, check_update
from acorm_pl.checkpoints import CHECKPOINT_FORMAT
from acorm_pl.envs.base import EnvInfo
from acorm_pl.errors import require
from acorm_pl.nets import AgentOutput, agent_inputs, shift_actions

if TYPE_CHECKING:
    from acorm_pl.algos.roles import RoleLearning
    from acorm_pl.clustering import Clustering
    from acorm_pl.data.episode_buffer import EpisodeBatch

# State-dict prefixes of checkpoints written before role learning became a component (old -> new).
_RENAMED_PREFIXES = (("role_head.", "roles.head."), ("target_mixer_input.", "roles.target_state_input."),
                     ("mixer_input.", "roles.state_input."), ("critic_input.", "roles.state_input."))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that no optimizer trains (a target network)."""
    return copy.deepcopy(module).requires_grad_(False)


def upgrade_state_dict(state_dict: MutableMapping[str, Any], prefix: str = "") -> None:
    """Rename, in place, the keys of a state dict written before ACORM's role learning became a component
    (``role_head.*``, ``mixer_input.*``, ``critic_input.*``) to today's (``roles.*``); ``prefix``: where the
    module's keys start. Today's state dicts are left as they are."""
    for old, new in _RENAMED_PREFIXES:
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict.setdefault(prefix + new + key[len(prefix + old):], state_dict.pop(key))
    # "w/o CL" kept its role encoder in the agent only; the component holds it too now (the same tensors).
    agent_encoder = prefix + "agent.role_encoder."
    if not any(k.startswith(prefix + "roles.head.") for k in state_dict):
        for key in [k for k in state_dict if k.startswith(agent_encoder)]:
            state_dict.setdefault(prefix + "roles.encoder." + key[len(agent_encoder):], state_dict[key])


class EnvStepLRDecay(LambdaLR):
    """The learning rate of an optimizer as its initial one times ``factor()``, read at every :meth:`step`.
    The schedule keeps no state: a resumed run follows its configuration's learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[], float]):
        super().__init__(optimizer, lambda _: factor())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see the class)."""


class MARLModule(pl.LightningModule, abc.ABC):
    """Base LightningModule of the algorithms (manual optimisation; subclasses build ``self.agent``).

    Subclasses save their hyperparameters, which must include ``embed_dim``, ``add_last_action``,
    ``add_agent_id``, ``lr_decay_env_steps`` and ``lr_final_ratio``, and implement :meth:`select_actions`,
    :meth:`update` and :meth:`named_optimizers`. The ACORM modules set ``roles`` while building their networks.
    """

    on_policy: bool = False  # True: the DataModule hands over fresh episodes of the current policy, no replay

    def __init__(self, env_info: dict[str, int] | None = None, gamma: float = 0.99,
                 lr_decay_env_steps: int | None = 0, lr_final_ratio: float = 0.1):
        super().__init__()
        require(env_info is not None, "model.env_info is missing: it is linked from the data module by the CLI")
        require(0.0 <= gamma <= 1.0, f"model.gamma must be in [0, 1], got {gamma}")
        require(lr_decay_env_steps is None or lr_decay_env_steps >= 0,
                f"model.lr_decay_env_steps must be >= 0 or null, got {lr_decay_env_steps}")
        require(0.0 < lr_final_ratio <= 1.0, f"model.lr_final_ratio must be in (0, 1], got {lr_final_ratio}")
        self.automatic_optimization = False
        self.info = EnvInfo(**env_info)
        self.roles: RoleLearning | None = None  # ACORM's role learning, for the modules that have it
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self.action_generator = torch.Generator()
        self._restored_generator: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(_upgrade_loaded_state)

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
        if self.roles is not None:
            self.roles.prepare_strategy(self.trainer.strategy)

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

    @torch.no_grad()
    def agent_embeddings(self, batch: EpisodeBatch) -> torch.Tensor:
        """Online agent embeddings e_i^t of every step of ``batch`` ([B, T, N, embed_dim])."""
        x = self.inputs(batch.obs, shift_actions(batch.actions))[:, :-1]
        return self.agent.encoder(x)[0].float()

    def on_agent_output(self, out: AgentOutput) -> None:
        """Called with the online agent network's output over every training batch (role learning keeps the
        embeddings for its contrastive step: no second GRU pass)."""
        if self.roles is not None:
            self.roles.observe(out)

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

    # ---- learning --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def update(self, batch: EpisodeBatch) -> torch.Tensor:
        """One update of the algorithm's networks on ``batch`` (counted in ``n_updates``), with its
        learning-rate schedule and logging; returns the (detached) loss."""

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        """:meth:`update`, then role learning's step (contrastive step when due, Eq. 5) when the module has it."""
        loss = self.update(batch)
        if self.roles is not None:
            self.roles.after_update(self, batch)
        return loss

    # ---- ACORM's role learning, as analysis reads it ---------------------------------------------------
    @property
    def last_attention(self) -> torch.Tensor | None:
        """Role-attention weights [B, T+1, heads, N] of the latest online conditioning (None without)."""
        return None if self.roles is None else self.roles.last_attention

    @property
    def clustering(self) -> Clustering | None:
        """The clustering strategy of role learning (None without role learning)."""
        return None if self.roles is None else self.roles.clustering

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def lr_scale(self) -> float:
        """Linear decay factor from 1 to ``lr_final_ratio`` over ``lr_decay_env_steps`` env steps (None: over
        the run's env-step budget; 0: constant 1)."""
        hp = self.hparams
        steps = self._datamodule_count("total_env_steps") if hp.lr_decay_env_steps is None else hp.lr_decay_env_steps
        if steps <= 0:
            return 1.0
        frac = min(1.0, self.env_steps / steps)
        return 1.0 - frac * (1.0 - hp.lr_final_ratio)

    @property
    def env_steps(self) -> int:
        return self._datamodule_count("env_steps")

    def _datamodule_count(self, name: str) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(dm, name, 0))

    def should_log(self) -> bool:
        """Whether Lightning flushes step metrics after this update (every ``log_every_n_steps`` updates; call
        after counting the update).

        Logging only then matters: each ``self.log`` call costs milliseconds of bookkeeping, a sizeable
        share of a small model's update.
        """
        if self._trainer is None:
            return True
        every = self.trainer.log_every_n_steps
        return every > 0 and (int(self.n_updates) % every == 0 or self.trainer.should_stop)

    def log_train(self, metrics: dict[str, Any]) -> None:
        """Log step metrics against the env-step count (Lightning uses a logged ``step`` as the x value)."""
        if not self.should_log():
            return
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("step", float(self.env_steps), on_step=True, on_epoch=False)

    # ---- optimizers and learning-rate schedulers, by name ----------------------------------------------
    @abc.abstractmethod
    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The algorithm's optimizers by name, in a fixed order (their states are saved in that order); each
        gets the linear learning-rate decay of :meth:`lr_scale` as its scheduler, of the same name."""

    def configure_optimizers(self) -> list[dict[str, Any]]:
        """:meth:`named_optimizers` with their schedulers, then role learning's (constant learning rates)."""
        decayed = self.named_optimizers()
        constant = {} if self.roles is None else self.roles.named_optimizers()
        require(not set(decayed) & set(constant), f"optimizer names {sorted(set(decayed) & set(constant))} taken twice")
        self.optimizer_names = [*decayed, *constant]
        self.lr_scheduler_names = list(decayed)
        return [*({"optimizer": opt, "lr_scheduler": EnvStepLRDecay(opt, self.lr_scale)} for opt in decayed.values()),
                *({"optimizer": opt} for opt in constant.values())]

    def optimizer(self, name: str) -> Any:
        """The (Lightning-wrapped) optimizer called ``name``."""
        require(name in self.optimizer_names, f"no optimizer {name!r}; this module has {self.optimizer_names}")
        return _as_list(self.optimizers())[self.optimizer_names.index(name)]

    def lr_scheduler(self, name: str) -> EnvStepLRDecay:
        """The learning-rate scheduler of the optimizer called ``name``."""
        require(name in self.lr_scheduler_names,
                f"no learning-rate scheduler {name!r}; this module has {self.lr_scheduler_names}")
        return _as_list(self.lr_schedulers())[self.lr_scheduler_names.index(name)]

    def decay_learning_rates(self) -> None:
        """Set every scheduled learning rate for the current env step (after each update)."""
        for name in self.lr_scheduler_names:
            self.lr_scheduler(name).step()

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


def _as_list(items: Any) -> list[Any]:
    """Lightning's ``optimizers()`` / ``lr_schedulers()`` as a list (they return a lone item bare)."""
    return items if isinstance(items, list) else [items]


def _upgrade_loaded_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    upgrade_state_dict(state_dict, prefix)
