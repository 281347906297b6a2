"""MAPPO (Yu et al., 2022) as a LightningModule with manual optimisation, the paper's second host (Appendix D).

Read top to bottom: a shared recurrent actor over available actions (the same agent network as QMIX's,
its outputs read as logits), a centralised recurrent critic on [o_i, s] per agent (Fig. 8d), GAE, the
clipped surrogate with an entropy bonus and a value loss, ``ppo_epochs`` passes of ``n_minibatches``
minibatches over every freshly collected batch of episodes. ACORM-MAPPO (next module) overrides the hooks
``build_agent``, ``critic_cond_dim``, ``critic_conditioning`` and ``critic_parameters`` with its role learning
component.

The DataModule sees ``on_policy = True`` and hands over each batch of episodes once, collected by the
current policy. Old log-probabilities and values are recomputed at the start of the update by the
unchanged networks over whole sequences (equal to the step-by-step actor; tested), so the rollout stores
nothing but the episodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acorm_pl.algos.base import MARLModule
from acorm_pl.data.episode_buffer import EpisodeBatch
from acorm_pl.errors import require
from acorm_pl.losses import (
    clipped_surrogate_loss,
    gae,
    greedy_actions,
    masked_entropy,
    masked_log_softmax,
    masked_mean,
    normalize_advantages,
    sample_actions,
    value_loss,
)
from acorm_pl.nets import AgentOutput, RecurrentCritic, RecurrentQAgent, ValueNormalizer, agent_inputs, shift_actions


@dataclass
class PolicyEvaluation:
    """What the actor and the critic compute over a batch of episodes."""

    agents: AgentOutput  # the actor's forward over [B, T+1] steps
    log_probs: torch.Tensor  # [B, T, N] log pi(a_t | history) of the taken actions (float32)
    entropy: torch.Tensor  # [B, T, N] entropy over available actions (float32)
    values: torch.Tensor  # [B, T+1, N] V_i (normalised when value normalisation is on; float32)


class MAPPO(MARLModule):
    """MAPPO learner and actor.

    Args:
        env_info: task facts (linked from the DataModule by the CLI).
        embed_dim: actor GRU hidden size (the agent embedding for ACORM-MAPPO).
        add_last_action: feed a_{t-1} (one-hot) to the actor.
        add_agent_id: feed a one-hot agent index to the actor and the critic (Table 3: False).
        critic_hidden_dim: critic GRU hidden size (Table 3: 64).
        critic_obs: give the critic each agent's observation next to the state (Fig. 8a).
        gamma: discount factor.
        gae_lambda: lambda of GAE (Table 4: 0.95).
        clip: PPO ratio clip epsilon (Table 4: 0.2).
        value_clip: clip the value change per update by this much (0: plain squared error).
        entropy_coef: entropy bonus coefficient (Table 4: 0.02).
        value_coef: weight of the value loss.
        ppo_epochs: passes over each batch (Table 4: K epochs 5).
        n_minibatches: minibatches per pass (Table 4: batch 32, minibatch 32, so 1).
        advantage_norm: normalise advantages over the valid steps of each batch, across ranks (Table 4: True).
        value_norm: learn normalised value targets with running statistics (Yu et al.'s ValueNorm).
        actor_lr: Adam learning rate of the actor (Table 4: 6e-4).
        critic_lr: Adam learning rate of the critic (Table 4: 8e-4).
        lr_decay_env_steps: decay both learning rates linearly over this many env steps (None: over the run's
            budget, ``data.total_env_steps``; 0: constant; Table 4: no decay).
        lr_final_ratio: the decayed learning rates as a fraction of the initial ones.
        adam_eps: Adam epsilon.
        grad_clip_norm: gradient-norm clip of the actor and of the critic (0 disables).
    """

    on_policy = True

    def __init__(
        self,
        env_info: dict[str, int] | None = None,
        embed_dim: int = 64,
        add_last_action: bool = True,
        add_agent_id: bool = False,
        critic_hidden_dim: int = 64,
        critic_obs: bool = True,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip: float = 0.2,
        value_clip: float = 0.0,
        entropy_coef: float = 0.02,
        value_coef: float = 1.0,
        ppo_epochs: int = 5,
        n_minibatches: int = 1,
        advantage_norm: bool = True,
        value_norm: bool = False,
        actor_lr: float = 6e-4,
        critic_lr: float = 8e-4,
        lr_decay_env_steps: int | None = 0,
        lr_final_ratio: float = 0.1,
        adam_eps: float = 1e-5,
        grad_clip_norm: float = 10.0,
    ):
        super().__init__(env_info, gamma, lr_decay_env_steps, lr_final_ratio)
        require(0.0 <= gae_lambda <= 1.0, f"model.gae_lambda must be in [0, 1], got {gae_lambda}")
        require(0.0 < clip < 1.0, f"model.clip must be in (0, 1), got {clip}")
        require(value_clip >= 0, f"model.value_clip must be >= 0 (0 disables), got {value_clip}")
        require(entropy_coef >= 0 and value_coef > 0,
                f"model.entropy_coef must be >= 0 and model.value_coef > 0, got {entropy_coef} and {value_coef}")
        require(ppo_epochs >= 1, f"model.ppo_epochs must be a positive integer, got {ppo_epochs}")
        require(n_minibatches >= 1, f"model.n_minibatches must be a positive integer, got {n_minibatches}")
        require(actor_lr > 0 and critic_lr > 0,
                f"model.actor_lr and model.critic_lr must be > 0, got {actor_lr} and {critic_lr}")
        require(embed_dim >= 1 and critic_hidden_dim >= 1, "model.embed_dim and model.critic_hidden_dim must be >= 1")
        self.save_hyperparameters()
        self.build_networks()
        self.value_normalizer = ValueNormalizer() if value_norm else None

    # ---- networks (hooks for subclasses) -------------------------------------------------------------
    def build_networks(self) -> None:
        """Create the actor ``self.agent`` and the critic ``self.critic``."""
        self.agent = self.build_agent()
        critic_dim = (self.info.obs_dim if self.hparams.critic_obs else 0) + self.critic_cond_dim()
        critic_dim += self.info.n_agents if self.hparams.add_agent_id else 0
        self.critic = RecurrentCritic(critic_dim, self.hparams.critic_hidden_dim)

    def build_agent(self) -> nn.Module:
        """The actor shared by all agents: trajectory GRU and a linear head giving logits over actions."""
        return RecurrentQAgent(self.input_dim, self.info.n_actions, self.hparams.embed_dim)

    def critic_cond_dim(self) -> int:
        """Size of the global information every agent's critic input carries (the state for MAPPO)."""
        return self.info.state_dim

    def critic_conditioning(self, batch: EpisodeBatch, agents: AgentOutput) -> torch.Tensor:
        """The global information of every step, [B, T+1, C]: the raw state for MAPPO."""
        return batch.state

    def critic_inputs(self, batch: EpisodeBatch, agents: AgentOutput) -> torch.Tensor:
        """Per-agent critic inputs [o_i (, c) (, agent id)] of every step, [B, T+1, N, D]."""
        cond = self.critic_conditioning(batch, agents).to(batch.obs.dtype)
        cond = cond.unsqueeze(-2).expand(*cond.shape[:-1], self.info.n_agents, cond.shape[-1])
        x = torch.cat([batch.obs, cond], dim=-1) if self.hparams.critic_obs else cond
        return agent_inputs(x, None, self.info.n_actions, self.hparams.add_agent_id)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.agent.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    # ---- acting ----------------------------------------------------------------------------------------
    def select_actions(self, outputs: torch.Tensor, avail: torch.Tensor, explore: bool) -> torch.Tensor:
        """A draw from the masked categorical pi(. | o) when exploring, its mode when evaluating."""
        return sample_actions(outputs, avail, self.action_generator) if explore else greedy_actions(outputs, avail)

    # ---- learning --------------------------------------------------------------------------------------
    def evaluate(self, batch: EpisodeBatch) -> PolicyEvaluation:
        """Actor and critic over whole episodes: log-probabilities and entropies of the taken actions, values."""
        x = self.inputs(batch.obs, shift_actions(batch.actions))  # [B, T+1, N, D]
        lengths = batch.obs_lengths  # padded steps past them cost nothing in the recurrent networks
        agents = self.agent_forward(x, lengths=lengths)
        avail = batch.avail_actions[:, :-1]
        log_pi = masked_log_softmax(agents.logits[:, :-1], avail)
        taken = log_pi.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        values = self.critic(self.critic_inputs(batch, agents), lengths)
        return PolicyEvaluation(agents, taken, masked_entropy(log_pi, avail), values)

    def loss_mask(self, batch: EpisodeBatch) -> torch.Tensor:
        """[B, T, N]: valid steps of alive agents (a dead agent's forced no-op carries no learning signal)."""
        return batch.filled.float().unsqueeze(-1) * batch.alive[:, :-1].float()

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    @torch.no_grad()
    def prepare(self, batch: EpisodeBatch) -> tuple[PolicyEvaluation, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Before any step on ``batch``: the behaviour policy's evaluation, the (normalised) advantages and
        the value targets (normalised when value normalisation is on), with summary statistics."""
        hp = self.hparams
        old = self.evaluate(batch)
        self.on_agent_output(old.agents)
        mask = self.loss_mask(batch)
        norm = self.value_normalizer
        values = old.values if norm is None else norm.denormalize(old.values)
        advantages, returns = gae(batch.reward, values, batch.terminated, batch.filled, hp.gamma, hp.gae_lambda)
        stats = {"advantage_mean": masked_mean(advantages, mask), "value_mean": masked_mean(values[:, :-1], mask),
                 "return_target_mean": masked_mean(returns, mask)}
        if norm is not None:
            norm.update(returns, mask, self._sum_over_ranks)
            returns = norm.normalize(returns)
        if hp.advantage_norm:
            advantages = normalize_advantages(advantages, mask, reduce=self._sum_over_ranks)
        return old, advantages, returns, stats

    def minibatches(self, n_episodes: int) -> list[torch.Tensor]:
        """Episode indices of the ``n_minibatches`` minibatches of one pass (shuffled when there are several)."""
        if self.hparams.n_minibatches == 1:
            return [torch.arange(n_episodes)]
        order = torch.randperm(n_episodes, generator=self.action_generator)
        return list(order.tensor_split(self.hparams.n_minibatches))

    def ppo_step(self, batch: EpisodeBatch, old: PolicyEvaluation, advantages: torch.Tensor, returns: torch.Tensor,
                 opts: list[Any]) -> dict[str, torch.Tensor]:
        """One gradient step of actor and critic on a minibatch (``old``, advantages, returns indexed alike)."""
        hp = self.hparams
        mask = self.loss_mask(batch)
        new = self.evaluate(batch)
        policy_loss, stats = clipped_surrogate_loss(new.log_probs, old.log_probs, advantages, mask, hp.clip)
        entropy = masked_mean(new.entropy, mask)
        v_loss = value_loss(new.values[:, :-1], old.values[:, :-1], returns, mask, hp.value_clip)
        loss = policy_loss - hp.entropy_coef * entropy + hp.value_coef * v_loss  # PPO's joint objective
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.check_update(opts, {"PPO policy loss": policy_loss, "PPO value loss": v_loss, "entropy": entropy})
        for opt in opts:
            if hp.grad_clip_norm > 0:
                self.clip_gradients(opt, gradient_clip_val=hp.grad_clip_norm, gradient_clip_algorithm="norm")
            opt.step()
        return {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": v_loss.detach(),
                "entropy": entropy.detach(), **stats}

    def update(self, batch: EpisodeBatch) -> torch.Tensor:
        """One PPO update: ``ppo_epochs`` x ``n_minibatches`` steps of the actor and the critic on ``batch``, the
        learning-rate schedule, logging."""
        hp = self.hparams
        old, advantages, returns, stats = self.prepare(batch)
        opts = [self.optimizer("actor"), self.optimizer("critic")]
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        n_steps = 0
        for _ in range(hp.ppo_epochs):
            for idx in self.minibatches(batch.batch_size):
                idx = idx.to(batch.actions.device)
                old_mb = PolicyEvaluation(old.agents, old.log_probs[idx], old.entropy[idx], old.values[idx])
                step = self.ppo_step(batch.select(idx), old_mb, advantages[idx], returns[idx], opts)
                for k, v in step.items():
                    sums[k] = sums[k] + v
                n_steps += 1
        self.n_updates += 1
        self.decay_learning_rates()
        means = {f"train/{k}": v / n_steps for k, v in sums.items()}
        self.log_train({**means, **{f"train/{k}": v for k, v in stats.items()},
                        "train/lr": self.lr_scheduler("actor").get_last_lr()[0]})
        return means["train/loss"]

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        hp = self.hparams
        return {"actor": torch.optim.Adam(self.actor_parameters(), lr=hp.actor_lr, eps=hp.adam_eps),
                "critic": torch.optim.Adam(self.critic_parameters(), lr=hp.critic_lr, eps=hp.adam_eps)}

    def check_data(self, data: Any) -> None:
        # Every rank must take the same number of steps per update (DDP).
        require(self.hparams.n_minibatches <= data.batch_size,
                f"model.n_minibatches ({self.hparams.n_minibatches}) must not exceed data.batch_size "
                f"({data.batch_size}), the episodes per update")
