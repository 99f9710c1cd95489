"""TD3 learner (Fujimoto et al. 2018; offline.md 1.4): twin critics, target policy smoothing, delayed
actor and target updates. ``num_critics=1, target_noise=0, policy_freq=1`` is DDPG (BEER's setting).

    a' = clip(pi'(s') + clip(eps, -c, c), -A, A),   eps ~ N(0, sigma^2)
    y  = r + gamma * (1 - d) * min_i Q'_i(s', a')
    L_Q = sum_i mean_B (Q_i(s, a) - y)^2
    L_pi = -lambda * mean Q_1(s, pi(s)) + sum of regularizer actor terms,
    lambda = alpha / mean|Q_1(s, pi(s))| (stop-gradient) when q_norm_alpha is set (TD3+BC), else 1.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from rlreg.config import TD3Config
from rlreg.data.buffers import Batch
from rlreg.learners.base import Learner, adam, set_requires_grad
from rlreg.nets import DeterministicActor, EnsembleCritic, EnsembleLinear, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer


class TD3Learner(Learner):
    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: TD3Config,
        max_action: float = 1.0,
        regularizers: Sequence[Regularizer] = (),
    ) -> None:
        super().__init__(regularizers)
        self.config = config
        self.max_action = max_action
        self.actor = DeterministicActor(
            obs_dim,
            act_dim,
            hidden=config.actor_hidden,
            max_action=max_action,
            dropout=config.actor_dropout,
            last_layer_init=config.actor_last_layer_init,
        )
        self.critic = EnsembleCritic(
            obs_dim,
            act_dim,
            num_members=config.num_critics,
            hidden=config.critic_hidden,
            last_layer_init=config.critic_last_layer_init,
        )
        if not config.critic_head_bias:  # Q = w^T phi exactly (BEER's derivation, online_mb.md 3.8 pitfall 3)
            head = self.critic.net.linears[-1]
            no_bias = EnsembleLinear(head.num_members, head.in_features, head.out_features, bias=False)
            with torch.no_grad():
                no_bias.weight.copy_(head.weight)
            self.critic.net.linears[-1] = no_bias
        # A regularizer that needs the critic's representation (BEER) sets this in ``bind``: the critic
        # step then also returns phi(s, a) and the target phi'(s', a') in ``CriticContext.extras``.
        self.critic_features = False
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        for net in (self.actor_target, self.critic_target):
            set_requires_grad(net, False)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), config.actor_lr),
            "critic": adam(self.critic.parameters(), config.critic_lr),
        }
        self._online = [*self.actor.parameters(), *self.critic.parameters()]
        self._target = [*self.actor_target.parameters(), *self.critic_target.parameters()]

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        was_training = self.actor.training
        self.actor.eval()
        action = self.actor(obs)
        self.actor.train(was_training)
        if not deterministic:
            noise = torch.randn(action.shape, device=action.device, generator=generator)
            action = (action + noise * (self.config.exploration_noise * self.max_action)).clamp(
                -self.max_action, self.max_action
            )
        return action

    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        cfg = self.config
        metrics: dict[str, Tensor] = {}

        # ---- critic ------------------------------------------------------------------------------
        with torch.no_grad():
            next_action = self.actor_target(batch.next_observations)
            if cfg.target_noise > 0:
                noise = torch.randn(next_action.shape, device=next_action.device, generator=generator)
                noise = (noise * (cfg.target_noise * self.max_action)).clamp(
                    -cfg.noise_clip * self.max_action, cfg.noise_clip * self.max_action
                )
                next_action = (next_action + noise).clamp(-self.max_action, self.max_action)
            extras: dict[str, Tensor] = {}
            if self.critic_features:
                next_q, extras["next_target_features"] = self.critic_target.q_and_features(
                    batch.next_observations, next_action
                )
            else:
                next_q = self.critic_target(batch.next_observations, next_action)
            target_q = next_q.min(dim=0).values
            target = batch.rewards + cfg.gamma * batch.not_done * target_q
        if self.critic_features:
            q, extras["features"] = self.critic.q_and_features(batch.observations, batch.actions)
        else:
            q = self.critic(batch.observations, batch.actions)  # (E, B)
        critic_loss = (q - target).pow(2).mean(dim=1).sum()
        metrics["critic/loss"] = critic_loss.detach()
        metrics["critic/q_mean"] = q.detach().mean()
        ctx = CriticContext(q=q, target=target, step=step, next_action=next_action, extras=extras)
        extra = self._regularizer_terms(metrics, "critic_terms", batch, ctx)
        total = critic_loss if extra is None else critic_loss + extra
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        ctx.q = q.detach()
        for reg in self.regularizers:
            for key, value in reg.after_critic_step(batch, ctx).items():
                metrics[f"{reg.name}/{key}"] = value.detach()

        # ---- delayed actor and targets -------------------------------------------------------------
        if step % cfg.policy_freq == 0:
            set_requires_grad(self.critic, False)  # the actor step needs no critic weight gradients
            pi = self.actor(batch.observations)
            q_pi = self.critic(batch.observations, pi, members=0)[0]  # Q1 only
            if cfg.q_norm_alpha is not None:
                lam = cfg.q_norm_alpha / q_pi.abs().mean().detach()
                actor_q = -lam * q_pi.mean()
            else:
                actor_q = -q_pi.mean()
            metrics["actor/q_term"] = actor_q.detach()
            extra = self._regularizer_terms(metrics, "actor_terms", batch, ActorContext(pi, q_pi, step))
            actor_loss = actor_q if extra is None else actor_q + extra
            metrics["actor/loss"] = actor_loss.detach()
            opt = self.optimizers["actor"]
            opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            opt.step()
            set_requires_grad(self.critic, True)
            polyak_update_(self._target, self._online, cfg.tau)
        for reg in self.regularizers:
            reg.after_update(step)
        return metrics
