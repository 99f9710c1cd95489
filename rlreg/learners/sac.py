"""SAC with an N-critic ensemble and learned temperature (Haarnoja et al. 2018; SAC-N, An et al. 2021;
offline.md 2.2). N=2 is SAC; N>2 is SAC-N.

    L_alpha = -mean( log_alpha * (log pi(a~|s) + H_target) )
    L_pi    = mean( alpha * log pi(a~|s) - Q_reduce(s, a~) ),     a~ ~ pi(.|s) reparameterised
    y       = r + gamma * (1 - d) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),   a' ~ pi(.|s')
    L_Q     = sum_i mean_B (Q_i(s, a) - y)^2

``update_order="sequential"`` steps alpha, actor, critic one after the other (CORL SAC-N/EDAC);
``"simultaneous"`` builds all losses from the parameters at the start of the step and then steps
alpha -> actor -> critic (RORL). Targets are Polyak-averaged after every step.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from rlreg.config import SACConfig
from rlreg.data.buffers import Batch
from rlreg.learners.base import Learner, adam, set_requires_grad
from rlreg.nets import EnsembleCritic, TanhGaussianActor, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer


class SACLearner(Learner):
    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: SACConfig,
        max_action: float = 1.0,
        regularizers: Sequence[Regularizer] = (),
    ) -> None:
        super().__init__(regularizers)
        self.config = config
        self.max_action = max_action
        self.actor = TanhGaussianActor(
            obs_dim,
            act_dim,
            hidden=config.actor_hidden,
            log_std_bounds=config.log_std_bounds,
            init=config.init,
            max_action=max_action,
        )
        self.critic = EnsembleCritic(
            obs_dim,
            act_dim,
            num_members=config.num_critics,
            hidden=config.critic_hidden,
            layer_norm=config.critic_layer_norm,
            dropout=config.critic_dropout,
            init=config.init,
        )
        self.critic_target = copy.deepcopy(self.critic)
        set_requires_grad(self.critic_target, False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(config.init_alpha)).log())
        self.target_entropy = float(config.target_entropy if config.target_entropy is not None else -act_dim)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), config.actor_lr),
            "critic": adam(self.critic.parameters(), config.critic_lr),
        }
        if config.learn_alpha:
            self.optimizers["alpha"] = adam([self.log_alpha], config.alpha_lr)
        self._online = list(self.critic.parameters())
        self._target = list(self.critic_target.parameters())

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        action, _ = self.actor(obs, deterministic=deterministic, with_log_prob=False, generator=generator)
        return action

    def _q_reduce(self, q: Tensor) -> Tensor:
        return q.min(dim=0).values if self.config.actor_q_reduce == "min" else q.mean(dim=0)

    @staticmethod
    def _step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _alpha_loss(self, log_prob: Tensor) -> Tensor:
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

    def _actor_loss(
        self, batch: Batch, step: int, alpha: Tensor, metrics: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        action, log_prob = self.actor(batch.observations, generator=generator)
        set_requires_grad(self.critic, False)
        q = self._q_reduce(self.critic(batch.observations, action))
        set_requires_grad(self.critic, True)
        loss = (alpha * log_prob - q).mean()
        metrics["actor/entropy"] = -log_prob.detach().mean()
        ctx = ActorContext(actions=action, q=q, step=step, log_prob=log_prob)
        extra = self._regularizer_terms(metrics, "actor_terms", batch, ctx)
        loss = loss if extra is None else loss + extra
        metrics["actor/loss"] = loss.detach()
        return loss, log_prob

    def _critic_loss(
        self, batch: Batch, step: int, alpha: Tensor, metrics: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, CriticContext]:
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch.next_observations, generator=generator)
            next_q = self.critic_target(batch.next_observations, next_action).min(dim=0).values
            target = batch.rewards + self.config.gamma * batch.not_done * (next_q - alpha * next_log_prob)
        q = self.critic(batch.observations, batch.actions)
        loss = (q - target).pow(2).mean(dim=1).sum()
        metrics["critic/loss"] = loss.detach()
        metrics["critic/q_mean"] = q.detach().mean()
        ctx = CriticContext(q=q, target=target, step=step)
        extra = self._regularizer_terms(metrics, "critic_terms", batch, ctx)
        return (loss if extra is None else loss + extra), ctx

    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        metrics: dict[str, Tensor] = {}
        learn_alpha = "alpha" in self.optimizers
        if self.config.update_order == "sequential":
            # CORL SAC-N/EDAC: alpha (on its own policy sample), then actor with the new alpha, then critic.
            if learn_alpha:
                with torch.no_grad():
                    _, sample_log_prob = self.actor(batch.observations, generator=generator)
                self._step(self.optimizers["alpha"], self._alpha_loss(sample_log_prob))
            alpha = self.log_alpha.detach().exp()
            actor_loss, _ = self._actor_loss(batch, step, alpha, metrics, generator)
            self._step(self.optimizers["actor"], actor_loss)
            critic_loss, ctx = self._critic_loss(batch, step, alpha, metrics, generator)
            self._step(self.optimizers["critic"], critic_loss)
        else:
            alpha = self.log_alpha.detach().exp()
            actor_loss, log_prob = self._actor_loss(batch, step, alpha, metrics, generator)
            critic_loss, ctx = self._critic_loss(batch, step, alpha, metrics, generator)
            if learn_alpha:
                self._step(self.optimizers["alpha"], self._alpha_loss(log_prob))
            self._step(self.optimizers["actor"], actor_loss)
            self._step(self.optimizers["critic"], critic_loss)
        metrics["alpha"] = self.log_alpha.detach().exp()
        ctx.q = ctx.q.detach()
        for reg in self.regularizers:
            for key, value in reg.after_critic_step(batch, ctx).items():
                metrics[f"{reg.name}/{key}"] = value.detach()
        polyak_update_(self._target, self._online, self.config.tau)
        for reg in self.regularizers:
            reg.after_update(step)
        return metrics
