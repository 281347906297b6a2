"""QMIX as a LightningModule with manual optimisation.

Read top to bottom next to Rashid et al. (2018): agent Q-values over whole episodes, double-Q targets
from target networks, monotonic mixing conditioned on the state, masked TD loss. ACORM (next module)
overrides the hooks ``agent_forward`` and ``mixer_conditioning`` and adds its own optimizer.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.envs.base import EnvInfo
from acorm_pl.errors import require
from acorm_pl.losses import double_q_next_values, epsilon_greedy, masked_td_loss, td_lambda_targets, td_targets
from acorm_pl.nets import AgentOutput, QMixer, RecurrentQAgent, agent_inputs, shift_actions


class QMIX(pl.LightningModule):
    """QMIX learner and actor.

    Args:
        env_info: task facts (linked from the DataModule by the CLI).
        embed_dim: agent GRU hidden size.
        add_last_action: feed a_{t-1} (one-hot) to the agent network.
        add_agent_id: feed a one-hot agent index to the agent network.
        mixing_embed_dim: mixer hidden size (32 in QMIX).
        hypernet_embed: hypernetwork hidden size.
        hypernet_layers: 1 or 2 layers in the weight hypernetworks.
        gamma: discount factor.
        td_lambda: lambda of TD(lambda) targets; 0 gives the paper's one-step double-Q targets.
        lr: Adam learning rate of the TD optimizer.
        lr_decay_env_steps: decay the TD learning rate linearly over this many env steps (0: constant).
        lr_final_ratio: the decayed learning rate as a fraction of ``lr``.
        adam_eps: Adam epsilon.
        grad_clip_norm: gradient-norm clip of the TD update (0 disables).
        double_q: choose bootstrap actions with the online network.
        target_update: ``soft`` (Polyak with ``tau`` every update) or ``hard`` (copy every
            ``target_update_interval`` updates).
        tau: soft-update coefficient.
        target_update_interval: updates between hard copies.
    """

    def __init__(
        self,
        env_info: dict[str, int] | None = None,
        embed_dim: int = 64,
        add_last_action: bool = True,
        add_agent_id: bool = True,
        mixing_embed_dim: int = 32,
        hypernet_embed: int = 64,
        hypernet_layers: int = 2,
        gamma: float = 0.99,
        td_lambda: float = 0.0,
        lr: float = 6e-4,
        lr_decay_env_steps: int = 0,
        lr_final_ratio: float = 0.1,
        adam_eps: float = 1e-5,
        grad_clip_norm: float = 10.0,
        double_q: bool = True,
        target_update: str = "soft",
        tau: float = 0.005,
        target_update_interval: int = 200,
    ):
        super().__init__()
        require(env_info is not None, "model.env_info is missing: it is linked from the data module by the CLI")
        require(0.0 <= gamma <= 1.0, f"model.gamma must be in [0, 1], got {gamma}")
        require(0.0 <= td_lambda <= 1.0, f"model.td_lambda must be in [0, 1], got {td_lambda}")
        require(lr > 0, f"model.lr must be > 0, got {lr}")
        require(lr_decay_env_steps >= 0, f"model.lr_decay_env_steps must be >= 0, got {lr_decay_env_steps}")
        require(0.0 < lr_final_ratio <= 1.0, f"model.lr_final_ratio must be in (0, 1], got {lr_final_ratio}")
        require(target_update in ("soft", "hard"),
                f"model.target_update must be 'soft' or 'hard', got {target_update!r}")
        require(0.0 < tau <= 1.0, f"model.tau must be in (0, 1], got {tau}")
        require(target_update_interval >= 1,
                f"model.target_update_interval must be >= 1, got {target_update_interval}")
        require(embed_dim >= 1 and mixing_embed_dim >= 1, "model.embed_dim and model.mixing_embed_dim must be >= 1")
        require(hypernet_layers in (1, 2), f"model.hypernet_layers must be 1 or 2, got {hypernet_layers}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.info = EnvInfo(**env_info)
        self.input_dim = (self.info.obs_dim + (self.info.n_actions if add_last_action else 0)
                          + (self.info.n_agents if add_agent_id else 0))
        self.build_networks()
        self.target_agent = self._frozen_copy(self.agent)
        self.target_mixer = self._frozen_copy(self.mixer)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self.epsilon = 1.0  # set by the EpsilonSchedule callback
        self.action_generator = torch.Generator()
        self._restored_generator: torch.Tensor | None = None

    # ---- networks (hooks for subclasses) -------------------------------------------------------------
    def build_networks(self) -> None:
        """Create ``self.agent`` and ``self.mixer`` (everything that gets a target copy)."""
        hp = self.hparams
        self.agent = self.build_agent()
        self.mixer = QMixer(self.info.n_agents, self.mixer_cond_dim(), hp.mixing_embed_dim, hp.hypernet_embed,
                            hp.hypernet_layers)

    def build_agent(self) -> nn.Module:
        """The individual Q-network shared by all agents."""
        return RecurrentQAgent(self.input_dim, self.info.n_actions, self.hparams.embed_dim)

    def mixer_cond_dim(self) -> int:
        """Size of what conditions the mixer's hypernetworks (the state for QMIX)."""
        return self.info.state_dim

    def agent_forward(self, inputs: torch.Tensor, target: bool = False, h0: torch.Tensor | None = None
                      ) -> AgentOutput:
        """Per-agent Q values [B, T, N, A] (and embeddings) for agent inputs [B, T, N, D]."""
        return (self.target_agent if target else self.agent)(inputs, h0)

    def mixer_conditioning(self, batch: EpisodeBatch, agents: AgentOutput, target: bool = False) -> torch.Tensor:
        """What the mixer's hypernetworks see at every time step: the raw state for QMIX ([B, T+1, S])."""
        return batch.state

    def on_agent_output(self, out: AgentOutput) -> None:
        """Called with the online agent network's output in every TD loss (a hook for subclasses)."""

    def td_parameters(self) -> list[nn.Parameter]:
        return [*self.agent.parameters(), *self.mixer.parameters()]

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        target = copy.deepcopy(module)
        target.requires_grad_(False)
        return target

    # ---- acting ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # One exploration stream per rank, derived from the (seeded) global RNG.
        self.action_generator.manual_seed(int(torch.randint(0, 2**31 - 1, ())) + self.global_rank)

    def inputs(self, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return agent_inputs(obs, last_actions if hp.add_last_action else None, self.info.n_actions, hp.add_agent_id)

    def initial_state(self, n_envs: int) -> torch.Tensor:
        return torch.zeros(n_envs, self.info.n_agents, self.hparams.embed_dim, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, last_actions: torch.Tensor, avail: torch.Tensor, hidden: torch.Tensor,
            explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Epsilon-greedy (or greedy) actions for one step of ``E`` environments."""
        x = self.inputs(obs.to(self.device).unsqueeze(1), last_actions.to(self.device).unsqueeze(1))
        out = self.agent_forward(x, h0=hidden)
        eps = self.epsilon if explore else 0.0
        return epsilon_greedy(out.q[:, 0].float(), avail.to(self.device), eps, self.action_generator), out.hidden

    # ---- learning --------------------------------------------------------------------------------------
    def td_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked double-Q TD loss of QMIX over a batch of episodes, with summary statistics."""
        hp = self.hparams
        x = self.inputs(batch.obs, shift_actions(batch.actions))  # [B, T+1, N, D]
        online = self.agent_forward(x)
        self.on_agent_output(online)
        q = online.q  # [B, T+1, N, A]
        with torch.no_grad():
            target = self.agent_forward(x, target=True)
            target_q = target.q
        q_taken = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)  # Q_i(o_t, a_t)
        next_values = double_q_next_values(q[:, 1:].detach(), target_q[:, 1:], batch.avail_actions[:, 1:], hp.double_q)
        q_tot = self.mixer(q_taken, self.mixer_conditioning(batch, online)[:, :-1]).float()
        with torch.no_grad():
            next_q_tot = self.target_mixer(next_values, self.mixer_conditioning(batch, target, target=True)[:, 1:])
        if hp.td_lambda > 0:
            targets = td_lambda_targets(batch.reward, batch.terminated, batch.filled, next_q_tot, hp.gamma,
                                        hp.td_lambda)
        else:
            targets = td_targets(batch.reward, batch.terminated, next_q_tot, hp.gamma)
        loss = masked_td_loss(q_tot, targets, batch.filled)
        mask = batch.filled.float()
        n_valid = mask.sum().clamp(min=1.0)
        stats = {"q_taken_mean": (q_tot.detach() * mask).sum() / n_valid,
                 "target_mean": (targets * mask).sum() / n_valid}
        return loss, stats

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        return self.td_update(batch, self.td_optimizer())

    def td_optimizer(self) -> Any:
        opts = self.optimizers()
        return opts[0] if isinstance(opts, list) else opts

    def td_update(self, batch: EpisodeBatch, opt: Any) -> torch.Tensor:
        """One TD step: loss, backward, clip, Adam, target refresh, learning-rate schedule, logging."""
        loss, stats = self.td_loss(batch)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.grad_clip_norm > 0:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.n_updates += 1
        self.update_targets()
        lr = self.scheduled_lr()
        for group in opt.param_groups:
            group["lr"] = lr
        self.log_train({"train/td_loss": loss.detach(), "train/lr": lr, **{f"train/{k}": v for k, v in stats.items()}})
        return loss.detach()

    def scheduled_lr(self) -> float:
        """Linear decay from ``lr`` to ``lr * lr_final_ratio`` over ``lr_decay_env_steps`` env steps (0: constant)."""
        hp = self.hparams
        if hp.lr_decay_env_steps <= 0:
            return hp.lr
        frac = min(1.0, self.env_steps / hp.lr_decay_env_steps)
        return hp.lr * (1.0 - frac * (1.0 - hp.lr_final_ratio))

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) modules kept in sync by :meth:`update_targets`."""
        return [(self.target_agent, self.agent), (self.target_mixer, self.mixer)]

    @torch.no_grad()
    def update_targets(self) -> None:
        """Soft (Polyak, tau) or hard (every ``target_update_interval`` updates) target refresh."""
        pairs = self.target_pairs()
        if self.hparams.target_update == "soft":
            for target, online in pairs:
                for pt, po in zip(target.parameters(), online.parameters(), strict=True):
                    pt.lerp_(po, self.hparams.tau)
        elif int(self.n_updates) % self.hparams.target_update_interval == 0:
            for target, online in pairs:
                target.load_state_dict(online.state_dict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.td_parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)

    # ---- bookkeeping -----------------------------------------------------------------------------------
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
        metrics = {**metrics, "train/epsilon": self.epsilon}
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("step", float(self.env_steps), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        checkpoint["acorm_pl"] = {"epsilon": self.epsilon, "action_generator": self.action_generator.get_state(),
                                  "class_path": f"{cls.__module__}.{cls.__qualname__}"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("acorm_pl", {})
        self.epsilon = state.get("epsilon", self.epsilon)
        if "action_generator" in state:
            self._restored_generator = state["action_generator"]

    def on_fit_start(self) -> None:
        if self._restored_generator is not None and self.global_rank == 0:
            self.action_generator.set_state(self._restored_generator)
