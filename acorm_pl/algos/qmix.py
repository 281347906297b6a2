"""QMIX as a LightningModule with manual optimisation.

Read top to bottom next to Rashid et al. (2018): agent Q-values over whole episodes, double-Q targets
from target networks, monotonic mixing conditioned on the state, masked TD loss. ACORM (next module)
overrides the network hooks (``build_agent``, ``mixer_cond_dim``, ``mixer_conditioning``, ...) with its role
learning component.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acorm_pl.algos.base import MARLModule, frozen_copy
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.losses import epsilon_greedy, greedy_actions, masked_td_loss, td_lambda_targets, td_targets
from acorm_pl.nets import AgentOutput, RecurrentQAgent, shift_actions
from acorm_pl.nets.mixers import Mixer, build_mixer, mixer_class


class QMIX(MARLModule):
    """QMIX learner and actor.

    Args:
        env_info: task facts (linked from the DataModule by the CLI).
        embed_dim: agent GRU hidden size.
        add_last_action: feed a_{t-1} (one-hot) to the agent network.
        add_agent_id: feed a one-hot agent index to the agent network.
        mixer: the value-decomposition mixer: ``qmix`` (monotonic hypernetwork mixer), ``vdn`` (sum),
            ``qplex`` (duplex dueling), or the import path of a :class:`~acorm_pl.nets.mixers.Mixer` subclass.
        mixing_embed_dim: mixer hidden size (32 in QMIX).
        hypernet_embed: hypernetwork hidden size.
        hypernet_layers: 1 or 2 layers in the weight hypernetworks.
        gamma: discount factor.
        td_lambda: lambda of TD(lambda) targets; 0 gives the paper's one-step double-Q targets.
        lr: Adam learning rate of the TD optimizer.
        lr_decay_env_steps: decay the TD learning rate linearly over this many env steps (None: over the run's
            budget, ``data.total_env_steps``; 0: constant).
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
        mixer: str = "qmix",
        mixing_embed_dim: int = 32,
        hypernet_embed: int = 64,
        hypernet_layers: int = 2,
        gamma: float = 0.99,
        td_lambda: float = 0.0,
        lr: float = 6e-4,
        lr_decay_env_steps: int | None = 0,
        lr_final_ratio: float = 0.1,
        adam_eps: float = 1e-5,
        grad_clip_norm: float = 10.0,
        double_q: bool = True,
        target_update: str = "soft",
        tau: float = 0.005,
        target_update_interval: int = 200,
    ):
        super().__init__(env_info, gamma, lr_decay_env_steps, lr_final_ratio)
        require(0.0 <= td_lambda <= 1.0, f"model.td_lambda must be in [0, 1], got {td_lambda}")
        require(lr > 0, f"model.lr must be > 0, got {lr}")
        require(target_update in ("soft", "hard"),
                f"model.target_update must be 'soft' or 'hard', got {target_update!r}")
        require(0.0 < tau <= 1.0, f"model.tau must be in (0, 1], got {tau}")
        require(target_update_interval >= 1,
                f"model.target_update_interval must be >= 1, got {target_update_interval}")
        require(embed_dim >= 1 and mixing_embed_dim >= 1, "model.embed_dim and model.mixing_embed_dim must be >= 1")
        require(hypernet_layers in (1, 2), f"model.hypernet_layers must be 1 or 2, got {hypernet_layers}")
        mixer_class(mixer)  # a bad name fails here, in one line
        self.save_hyperparameters()
        self.build_networks()
        self.target_agent = frozen_copy(self.agent)
        self.target_mixer = frozen_copy(self.mixer)
        self.epsilon = 1.0  # set by the EpsilonSchedule callback

    # ---- networks (hooks for subclasses) -------------------------------------------------------------
    def build_networks(self) -> None:
        """Create ``self.agent`` and ``self.mixer`` (everything that gets a target copy)."""
        self.agent = self.build_agent()
        self.mixer = self.build_mixer(self.mixer_cond_dim())

    def build_mixer(self, cond_dim: int) -> Mixer:
        """The mixer named by ``model.mixer``, conditioned on vectors of size ``cond_dim``."""
        hp = self.hparams
        return build_mixer(hp.mixer, self.info.n_agents, self.info.n_actions, cond_dim,
                           embed_dim=hp.mixing_embed_dim, hypernet_embed=hp.hypernet_embed,
                           hypernet_layers=hp.hypernet_layers)

    def build_agent(self) -> nn.Module:
        """The individual Q-network shared by all agents."""
        return RecurrentQAgent(self.input_dim, self.info.n_actions, self.hparams.embed_dim)

    def mixer_cond_dim(self) -> int:
        """Size of what conditions the mixer's hypernetworks (the state for QMIX)."""
        return self.info.state_dim

    def agent_forward(self, inputs: torch.Tensor, target: bool = False, h0: torch.Tensor | None = None,
                      lengths: torch.Tensor | None = None) -> AgentOutput:
        """Per-agent Q values [B, T, N, A] (and embeddings) for agent inputs [B, T, N, D]; with ``lengths`` [B]
        only each episode's valid steps are computed (the rest are 0)."""
        return (self.target_agent if target else self.agent)(inputs, h0, lengths)

    def mixer_conditioning(self, batch: EpisodeBatch, agents: AgentOutput, target: bool = False) -> torch.Tensor:
        """What the mixer's hypernetworks see at every time step: the raw state for QMIX ([B, T+1, S])."""
        return batch.state

    def mix(self, q: torch.Tensor, actions: torch.Tensor, avail: torch.Tensor, cond: torch.Tensor,
            target: bool = False) -> torch.Tensor:
        """Q_tot [B, T] of the agents' Q-values q [B, T, N, A] at ``actions`` [B, T, N] (the online or target
        mixer), given the available actions [B, T, N, A] and the mixer conditioning [B, T, C]."""
        mixer = self.target_mixer if target else self.mixer
        chosen = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # Q_i(tau_i, a_i)
        if not mixer.uses_advantages:
            return mixer(chosen, cond)
        # V_i = max over available actions, as a fixed baseline of the advantage (QPLEX's learner detaches it
        # too); a padded step with no available action gets V_i = Q_i(a_i), so its advantage is 0, not huge.
        best = q.detach().masked_fill(~avail, torch.finfo(q.dtype).min).amax(-1)
        max_qs = torch.where(avail.any(-1), best, chosen.detach())
        return mixer(chosen, cond, actions=actions, max_qs=max_qs)

    def td_parameters(self) -> list[nn.Parameter]:
        return [*self.agent.parameters(), *self.mixer.parameters()]

    # ---- acting ----------------------------------------------------------------------------------------
    def select_actions(self, outputs: torch.Tensor, avail: torch.Tensor, explore: bool) -> torch.Tensor:
        """Epsilon-greedy over the Q values when exploring, greedy otherwise."""
        return epsilon_greedy(outputs, avail, self.epsilon if explore else 0.0, self.action_generator)

    # ---- learning --------------------------------------------------------------------------------------
    def td_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked double-Q TD loss of QMIX over a batch of episodes, with summary statistics."""
        hp = self.hparams
        x = self.inputs(batch.obs, shift_actions(batch.actions))  # [B, T+1, N, D]
        lengths = batch.obs_lengths  # padded steps past them cost nothing in the recurrent encoders
        online = self.agent_forward(x, lengths=lengths)
        self.on_agent_output(online)
        q = online.q  # [B, T+1, N, A]
        with torch.no_grad():
            target = self.agent_forward(x, target=True, lengths=lengths)
            target_q = target.q
        avail, avail_next = batch.avail_actions[:, :-1], batch.avail_actions[:, 1:]
        q_tot = self.mix(q[:, :-1], batch.actions, avail, self.mixer_conditioning(batch, online)[:, :-1]).float()
        with torch.no_grad():
            # a* from the online network (double Q) or the target network, valued by the target network
            next_actions = greedy_actions((q[:, 1:] if hp.double_q else target_q[:, 1:]).float(), avail_next)
            next_q_tot = self.mix(target_q[:, 1:].float(), next_actions, avail_next,
                                  self.mixer_conditioning(batch, target, target=True)[:, 1:], target=True)
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

    def update(self, batch: EpisodeBatch) -> torch.Tensor:
        """One TD update, the learning-rate schedule, logging."""
        loss, stats = self.td_update(batch, self.optimizer("td"))
        self.decay_learning_rates()
        lr = self.lr_scheduler("td").get_last_lr()[0]
        self.log_train({"train/td_loss": loss, "train/lr": lr, **{f"train/{k}": v for k, v in stats.items()}})
        return loss

    def td_update(self, batch: EpisodeBatch, opt: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One TD step with ``opt``: loss, backward, clip, Adam, target refresh; the (detached) loss and its
        statistics."""
        loss, stats = self.td_loss(batch)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.check_update(opt, {"TD loss": loss})
        if self.hparams.grad_clip_norm > 0:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.n_updates += 1
        self.update_targets()
        return loss.detach(), stats

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

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"td": torch.optim.Adam(self.td_parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)}

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def log_train(self, metrics: dict[str, Any]) -> None:
        super().log_train({**metrics, "train/epsilon": self.epsilon})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["acorm_pl"]["epsilon"] = self.epsilon

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.epsilon = checkpoint.get("acorm_pl", {}).get("epsilon", self.epsilon)
