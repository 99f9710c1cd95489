"""SAC with an N-critic ensemble and learned temperature (Haarnoja et al. 2018; SAC-N, An et al. 2021;
offline.md 2.2). N=2 is SAC; N>2 is SAC-N.

    L_alpha = -mean( log_alpha * (log pi(a~|s) + H_target) )
    L_pi    = mean( alpha * log pi(a~|s) - Q_reduce(s, a~) ),     a~ ~ pi(.|s) reparameterised
    y       = r + gamma * (1 - d) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),   a' ~ pi(.|s')
    L_Q     = sum_i mean_B (Q_i(s, a) - y)^2

``update_order="sequential"`` steps alpha, actor, critic one after the other (CORL SAC-N/EDAC);
``"simultaneous"`` builds all losses from the parameters at the start of the step and then steps
alpha -> actor -> critic (RORL). Targets are Polyak-averaged after every step.

``policy_freq=k`` updates the actor and alpha on every k-th update only (DroQ, online_mb.md 2.3-2.4: with
``trainer.utd_ratio=20`` and ``policy_freq=20``, 20 critic updates and one actor update per env step).

A regularizer may install a :class:`PolicyPrior` (``learner.policy_prior``): the entropy bonus is then
replaced by a divergence to a prior policy (DemoReg-SAC, online_mb.md 5.3; pre-tanh Gaussians, so the KL of
the tanh-squashed policies equals the Gaussian KL):

    L_pi = mean( lambda * KL(pi(.|s) || pi_0(.|s)) - Q_reduce(s, a~) )
    y    = r + gamma * (1 - d) * (min_i Q'_i(s', a') - lambda * KL(pi(.|s') || pi_0(.|s')))
"""

from __future__ import annotations

import copy
from typing import Protocol, Sequence

import torch
from torch import Tensor

from rlreg.config import SACConfig
from rlreg.data.buffers import Batch
from rlreg.learners.base import Learner, adam, set_requires_grad
from rlreg.nets import EnsembleCritic, TanhGaussianActor, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer


class PolicyPrior(Protocol):
    """Replaces SAC's ``alpha * log pi`` by ``coef() * kl(...)`` in the actor loss and the TD target."""

    def kl(self, obs: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
        """``KL(pi(.|obs) || prior(.|obs))`` ``(B,)`` for the pre-tanh Gaussian ``(mean, log_std)`` of pi."""
        ...

    def coef(self) -> Tensor:
        """The (detached) weight lambda of the KL term."""
        ...


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
        sacn = config.init == "sacn"  # hidden-weight conventions of CORL (SAC-N/EDAC) or rlkit (RORL)
        self.actor = TanhGaussianActor(
            obs_dim,
            act_dim,
            hidden=config.actor_hidden,
            log_std_bounds=config.log_std_bounds,
            init=config.actor_init if sacn else config.init,
            max_action=max_action,
        )

        def make_critic() -> EnsembleCritic:
            return EnsembleCritic(
                obs_dim,
                act_dim,
                num_members=config.num_critics,
                hidden=config.critic_hidden,
                layer_norm=config.critic_layer_norm,
                dropout=config.critic_dropout,
                init=config.critic_init if sacn else config.init,
            )

        self.critic = make_critic()
        # RORL's official code builds the target ensemble as a second, independently drawn network
        self.critic_target = make_critic() if config.independent_target_init else copy.deepcopy(self.critic)
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
        self.policy_prior: PolicyPrior | None = None  # set by a regularizer (DemoReg-SAC)

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

    def _sample_with_prior_cost(self, obs: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterised ``a ~ pi(.|obs)`` (the same draws as ``self.actor(obs)``), ``lambda * KL(pi || prior)``
        and the KL itself, both ``(B,)``."""
        assert self.policy_prior is not None
        mean, log_std = self.actor.dist_params(obs)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        action = torch.tanh(torch.addcmul(mean, log_std.exp(), eps))
        if self.max_action != 1.0:
            action = action * self.max_action
        kl = self.policy_prior.kl(obs, mean, log_std)
        return action, self.policy_prior.coef() * kl, kl

    def _actor_loss(
        self, batch: Batch, step: int, alpha: Tensor, metrics: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        extras: dict[str, Tensor] = {}
        log_prob: Tensor | None
        if self.policy_prior is None:
            action, log_prob = self.actor(batch.observations, generator=generator)
            cost = alpha * log_prob
            metrics["actor/entropy"] = -log_prob.detach().mean()
        else:
            action, cost, kl = self._sample_with_prior_cost(batch.observations, generator)
            log_prob = None
            extras["kl"] = kl
            metrics["actor/kl"] = kl.detach().mean()
        set_requires_grad(self.critic, False)
        q = self._q_reduce(self.critic(batch.observations, action))
        set_requires_grad(self.critic, True)
        loss = (cost - q).mean()
        ctx = ActorContext(actions=action, q=q, step=step, log_prob=log_prob, extras=extras)
        extra = self._regularizer_terms(metrics, "actor_terms", batch, ctx)
        loss = loss if extra is None else loss + extra
        metrics["actor/loss"] = loss.detach()
        return loss, log_prob

    def _critic_loss(
        self, batch: Batch, step: int, alpha: Tensor, metrics: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, CriticContext]:
        with torch.no_grad():
            if self.policy_prior is None:
                next_action, next_log_prob = self.actor(batch.next_observations, generator=generator)
                next_cost = alpha * next_log_prob
            else:
                next_action, next_cost, _ = self._sample_with_prior_cost(batch.next_observations, generator)
            # the target critic stays in train mode: with critic_dropout > 0 its dropout is on (DroQ 2.8.1)
            next_q = self.critic_target(batch.next_observations, next_action).min(dim=0).values
            target = batch.rewards + self.config.gamma * batch.not_done * (next_q - next_cost)
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
        if learn_alpha and self.policy_prior is not None:
            raise ValueError("agent.learn_alpha must be false when a regularizer replaces the entropy term by a KL")
        actor_step = step % self.config.policy_freq == 0
        if self.config.update_order == "sequential":
            # CORL SAC-N/EDAC: alpha (on its own policy sample), then actor with the new alpha, then critic.
            if actor_step:
                if learn_alpha:
                    with torch.no_grad():
                        _, sample_log_prob = self.actor(batch.observations, generator=generator)
                    self._step(self.optimizers["alpha"], self._alpha_loss(sample_log_prob))
                alpha = self.log_alpha.detach().exp()
                actor_loss, _ = self._actor_loss(batch, step, alpha, metrics, generator)
                self._step(self.optimizers["actor"], actor_loss)
            alpha = self.log_alpha.detach().exp()
            critic_loss, ctx = self._critic_loss(batch, step, alpha, metrics, generator)
            self._step(self.optimizers["critic"], critic_loss)
        else:
            alpha = self.log_alpha.detach().exp()
            if actor_step:
                actor_loss, log_prob = self._actor_loss(batch, step, alpha, metrics, generator)
            critic_loss, ctx = self._critic_loss(batch, step, alpha, metrics, generator)
            if actor_step:
                if learn_alpha:
                    assert log_prob is not None
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
