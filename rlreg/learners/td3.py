"""TD3 learner (Fujimoto et al. 2018; docs/agents/td3bc.md): twin critics, target policy smoothing, delayed
actor and target updates. ``num_critics=1, target_noise=0, policy_freq=1`` is DDPG (BEER's setting).

    a' = clip(pi'(s') + clip(eps, -c, c), -A, A),   eps ~ N(0, sigma^2)
    y  = r + gamma^k (1 - d) * min_i Q'_i(s', a')     (batch.discounts: k = n-step, d = terminated)
    L_Q = sum_i mean_B (Q_i(s, a) - y)^2
    L_pi = -lambda * mean Q_1(s, pi(s)) + sum of regularizer actor terms,
    lambda = alpha / mean|Q_1(s, pi(s))| (stop-gradient) when q_norm_alpha is set (TD3+BC), else 1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rlreg.config import check_range
from rlreg.data.buffers import Batch
from rlreg.learners.base import (
    Learner,
    adam,
    check_actor_critic_config,
    optimizer_step,
    register_learner,
    set_requires_grad,
    symmetric_box_bound,
)
from rlreg.nets import DeterministicActor, EnsembleCritic, EnsembleLinear, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext


@dataclass
class TD3Config:
    """TD3 core (Fujimoto et al. 2018). ``num_critics=1, target_noise=0, policy_freq=1`` gives DDPG."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    n_step: int = 1
    tau: float = 0.005
    target_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    # TD3+BC "Q normalisation": actor Q term scaled by alpha / mean|Q| (None: plain -mean Q).
    q_norm_alpha: float | None = None
    actor_dropout: float = 0.0
    actor_last_layer_init: float | None = None  # U(-w, w) on the last layer (SPOT AntMaze: 1e-3)
    critic_last_layer_init: float | None = None  # (SPOT AntMaze: 3e-3)
    exploration_noise: float = 0.1  # online only: Gaussian std on the policy action
    # BEER (He et al. 2024, pitfall: the derivation assumes Q = w^T phi): false drops the critic head bias.
    critic_head_bias: bool = True

    def __post_init__(self) -> None:
        check_actor_critic_config(self)
        for key in ("target_noise", "noise_clip", "exploration_noise"):
            check_range(f"agent.{key}", getattr(self, key), low=0.0)
        check_range("agent.actor_dropout", self.actor_dropout, low=0.0, high=1.0, high_open=True)


@register_learner("td3", TD3Config, family="td3")
class TD3Learner(Learner):
    """TD3 / DDPG with a deterministic actor; provides ``critic_features`` (phi(s, a) and the target
    phi'(s', a') in ``CriticContext.extras``) to regularizers that require them (BEER)."""

    provides = frozenset({"critic_features", "deterministic_actor"})

    def __init__(self, setup: SetupContext, config: TD3Config, regularizers: Sequence[Regularizer] = ()) -> None:
        super().__init__(setup, regularizers)
        obs_dim, act_dim = setup.obs_dim, setup.action_spec.dim
        max_action = symmetric_box_bound(setup.action_spec, self.name)
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
        if not config.critic_head_bias:  # Q = w^T phi exactly (BEER's derivation, He et al. 2024)
            head = self.critic.net.linears[-1]
            no_bias = EnsembleLinear(head.num_members, head.in_features, head.out_features, bias=False)
            with torch.no_grad():
                no_bias.weight.copy_(head.weight)
            self.critic.net.linears[-1] = no_bias
        self.critic_features = "critic_features" in self.needs
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

    def critic_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, CriticContext]:
        cfg = self.config
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
            target = batch.rewards + batch.discounts * next_q.min(dim=0).values
        if self.critic_features:
            q, extras["features"] = self.critic.q_and_features(batch.observations, batch.actions)
        else:
            q = self.critic(batch.observations, batch.actions)  # (E, B)
        loss = (q - target).pow(2).mean(dim=1).sum()
        metrics["critic/loss"] = loss.detach()
        metrics["critic/q_mean"] = q.detach().mean()
        return loss, CriticContext(q=q, target=target, step=step, next_action=next_action, extras=extras)

    def actor_due(self, step: int) -> bool:
        return step % self.config.policy_freq == 0

    def actor_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, ActorContext]:
        set_requires_grad(self.critic, False)  # the actor step needs no critic weight gradients
        pi = self.actor(batch.observations)
        q_pi = self.critic(batch.observations, pi, members=0)[0]  # Q1 only
        if self.config.q_norm_alpha is not None:
            lam = self.config.q_norm_alpha / q_pi.abs().mean().detach()
            actor_q = -lam * q_pi.mean()
        else:
            actor_q = -q_pi.mean()
        metrics["actor/q_term"] = actor_q.detach()
        return actor_q, ActorContext(pi, q_pi, step)

    def actor_step(self, loss: Tensor, ctx: ActorContext, metrics: dict[str, Tensor]) -> None:
        optimizer_step(self.optimizers["actor"], loss)
        set_requires_grad(self.critic, True)

    def end_update(self, step: int, metrics: dict[str, Tensor]) -> None:
        if self.actor_due(step):  # delayed targets: with the actor
            polyak_update_(self._target, self._online, self.config.tau)
