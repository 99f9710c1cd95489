"""A complete learner: DDPG in its smallest form (one critic, a deterministic actor, Polyak targets).

    y    = r + discounts * Q'(s', pi'(s'))                 (discounts = gamma^k (1 - terminated))
    L_Q  = mean_B (Q(s, a) - y)^2
    L_pi = -mean_B Q(s, pi(s))                              (every ``policy_freq``-th update)
    targets: theta' <- (1 - tau) theta' + tau theta        (after every actor step)

Importing this module registers it as ``agent.learner=tiny_ddpg``; a file in ``rlreg/learners/`` is imported
automatically, and ``conf/agent/tiny_ddpg.yaml`` would make it ``agent=tiny_ddpg``. Regularizers that fit any
learner (``families = None``) stack on it. ``tests/test_docs_examples.py`` runs it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rlreg.config import check_range
from rlreg.data.buffers import Batch
from rlreg.learners.base import Learner, adam, optimizer_step, register_learner, set_requires_grad, symmetric_box_bound
from rlreg.nets import DeterministicActor, EnsembleCritic, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext


@dataclass
class TinyDDPGConfig:
    """Options, typed and checked: ``agent.tau=2`` fails naming ``agent.tau``."""

    hidden: tuple[int, ...] = (64, 64)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    gamma: float = 0.99  # every learner config has gamma and n_step (the buffer's n-step returns)
    n_step: int = 1
    tau: float = 0.005
    policy_freq: int = 1
    exploration_noise: float = 0.1

    def __post_init__(self) -> None:
        check_range("agent.gamma", self.gamma, low=0.0, high=1.0)
        check_range("agent.tau", self.tau, low=0.0, high=1.0)
        check_range("agent.n_step", self.n_step, low=1)
        check_range("agent.policy_freq", self.policy_freq, low=1)


@register_learner("tiny_ddpg", TinyDDPGConfig, family="tiny_ddpg")
class TinyDDPG(Learner):
    """Networks are submodules and optimizers live in ``self.optimizers``: both are checkpointed for you."""

    def __init__(self, setup: SetupContext, config: TinyDDPGConfig, regularizers: Sequence[Regularizer] = ()) -> None:
        super().__init__(setup, regularizers)
        self.config = config
        self.max_action = symmetric_box_bound(setup.action_spec, self.name)  # a clear error on other spaces
        obs_dim, act_dim = setup.obs_dim, setup.action_spec.dim
        self.actor = DeterministicActor(obs_dim, act_dim, hidden=config.hidden, max_action=self.max_action)
        self.critic = EnsembleCritic(obs_dim, act_dim, num_members=1, hidden=config.hidden)  # (1, B) outputs
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        for net in (self.actor_target, self.critic_target):
            set_requires_grad(net, False)
        self.optimizers = {"actor": adam(self.actor.parameters(), config.actor_lr),
                           "critic": adam(self.critic.parameters(), config.critic_lr)}

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        action = self.actor(obs)
        if not deterministic:  # Gaussian exploration, drawn from the run's generator (exact resume)
            noise = torch.randn(action.shape, device=action.device, generator=generator)
            action = (action + self.config.exploration_noise * self.max_action * noise).clamp(
                -self.max_action, self.max_action)
        return action

    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator,
                    metrics: dict[str, Tensor]) -> tuple[Tensor, CriticContext]:
        with torch.no_grad():
            next_action = self.actor_target(batch.next_observations)
            target = batch.rewards + batch.discounts * self.critic_target(batch.next_observations, next_action)[0]
        q = self.critic(batch.observations, batch.actions)  # (1, B)
        loss = (q - target).pow(2).mean(dim=1).sum()
        metrics["critic/loss"] = loss.detach()  # detached tensors: no host sync per update
        metrics["critic/q_mean"] = q.detach().mean()
        return loss, CriticContext(q=q, target=target, step=step, next_action=next_action)

    def actor_due(self, step: int) -> bool:
        return step % self.config.policy_freq == 0

    def actor_loss(self, batch: Batch, step: int, generator: torch.Generator,
                   metrics: dict[str, Tensor]) -> tuple[Tensor, ActorContext]:
        set_requires_grad(self.critic, False)  # the actor loss needs no critic weight gradients
        pi = self.actor(batch.observations)
        q_pi = self.critic(batch.observations, pi)[0]
        metrics["actor/q_term"] = -q_pi.mean().detach()
        return -q_pi.mean(), ActorContext(actions=pi, q=q_pi, step=step)

    def actor_step(self, loss: Tensor, ctx: ActorContext, metrics: dict[str, Tensor]) -> None:
        optimizer_step(self.optimizers["actor"], loss)
        set_requires_grad(self.critic, True)  # switched off in actor_loss

    def end_update(self, step: int, metrics: dict[str, Tensor]) -> None:
        if self.actor_due(step):
            polyak_update_([*self.actor_target.parameters(), *self.critic_target.parameters()],
                           [*self.actor.parameters(), *self.critic.parameters()], self.config.tau)
