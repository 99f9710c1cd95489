"""SAC with an N-critic ensemble and learned temperature (Haarnoja et al. 2018; SAC-N, An et al. 2021;
docs/agents/sacn.md). N=2 is SAC; N>2 is SAC-N.

    L_alpha = -mean( log_alpha * (log pi(a~|s) + H_target) )
    L_pi    = mean( alpha * log pi(a~|s) - Q_reduce(s, a~) ),     a~ ~ pi(.|s) reparameterised
    y       = r + gamma^k (1 - d) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),   a' ~ pi(.|s')
    L_Q     = sum_i mean_B (Q_i(s, a) - y)^2

Every learner follows the one hook order of :mod:`rlreg.learners.base`: critic step, then actor step, then
the temperature (on the actor's own sample), then the Polyak update of the targets.
``update_order="sequential"``: the actor loss sees the critic after this step's critic update (SAC,
softlearning; CORL SAC-N/EDAC step the actor first, which over a run is the same alternation shifted by
half a step); ``"simultaneous"``: the actor loss sees the critic parameters from the start of the step
(RORL, rlkit), so all losses come from the same parameters.

``policy_freq=k`` updates the actor and alpha on every k-th update only (DroQ, docs/agents/droq.md: with
``trainer.utd_ratio=20`` and ``policy_freq=20``, 20 critic updates and one actor update per env step).

A regularizer that ``requires`` ``"policy_prior"`` is a :class:`PolicyPrior`: the learner then replaces the
entropy bonus by a divergence to that prior policy (DemoReg-SAC, docs/agents/demoreg.md; pre-tanh Gaussians, so the KL of
the tanh-squashed policies equals the Gaussian KL):

    L_pi = mean( lambda * KL(pi(.|s) || pi_0(.|s)) - Q_reduce(s, a~) )
    y    = r + gamma * (1 - d) * (min_i Q'_i(s', a') - lambda * KL(pi(.|s') || pi_0(.|s')))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, cast

import torch
from torch import Tensor
from torch.func import functional_call

from rlreg.config import ConfigError, check_range
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
from rlreg.nets import EnsembleCritic, TanhGaussianActor, polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext


@dataclass
class SACConfig:
    """SAC with an N-critic ensemble (Haarnoja et al. 2018; An et al. 2021: N=2 is SAC, N>2 is SAC-N)."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    n_step: int = 1
    tau: float = 0.005
    init_alpha: float = 1.0
    learn_alpha: bool = True
    target_entropy: float | None = None  # None: -|A|
    log_std_bounds: tuple[float, float] = (-5.0, 2.0)
    # "sacn": CORL/RORL initialisation (hidden bias 0.1, small heads); "xavier": DroQ's REDQ code/DroQ
    init: Literal["pytorch", "sacn", "xavier"] = "pytorch"
    # With init=sacn, whose hidden weights each net gets (rlreg/nets EnsembleCritic / TanhGaussianActor):
    # "corl" (SAC-N/EDAC: critic U(+-1/sqrt(out)), actor U(+-1/sqrt(in))) or "rlkit" (RORL: the reverse).
    critic_init: Literal["corl", "rlkit"] = "corl"
    actor_init: Literal["corl", "rlkit"] = "corl"
    # False: the target critic starts as a copy of the critic; True: drawn independently (RORL's official code)
    independent_target_init: bool = False
    critic_layer_norm: bool = False
    critic_dropout: float = 0.0
    # spectral normalisation of the critics' linear layers: every layer, the hidden ones, or none (the
    # single-model Lipschitz agent, Zheng et al. 2023); the target critic keeps its own power iteration
    critic_spectral_norm: Literal["none", "all", "hidden"] = "none"
    # c: each normalised layer is c * W / sigma(W), so Q is at most c^L-Lipschitz (1: the paper's plain SN)
    critic_spectral_norm_scale: float = 1.0
    actor_q_reduce: Literal["min", "mean"] = "min"  # "min" (SAC, SAC-N) or "mean" (DroQ)
    # "sequential": the actor loss sees the critic after this step's update; "simultaneous": all losses from
    # the parameters at the start of the step (RORL).
    update_order: Literal["sequential", "simultaneous"] = "sequential"
    # Actor and temperature are updated on every policy_freq-th update only; the critic and its target on
    # every update. DroQ (Hiraoka et al. 2022): policy_freq = utd_ratio = 20, one actor update per env step.
    policy_freq: int = 1

    def __post_init__(self) -> None:
        check_actor_critic_config(self, positive=("actor_lr", "critic_lr", "alpha_lr", "init_alpha"))
        check_range("agent.critic_dropout", self.critic_dropout, low=0.0, high=1.0, high_open=True)
        check_range("agent.critic_spectral_norm_scale", self.critic_spectral_norm_scale, 0.0, low_open=True)
        if self.log_std_bounds[0] >= self.log_std_bounds[1]:
            raise ConfigError(f"agent.log_std_bounds must be [low, high] with low < high, got {list(self.log_std_bounds)}")


class PolicyPrior(Protocol):
    """Replaces SAC's ``alpha * log pi`` by ``coef() * kl(...)`` in the actor loss and the TD target."""

    def kl(self, obs: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
        """``KL(pi(.|obs) || prior(.|obs))`` ``(B,)`` for the pre-tanh Gaussian ``(mean, log_std)`` of pi."""
        ...

    def coef(self) -> Tensor:
        """The (detached) weight lambda of the KL term."""
        ...


@register_learner("sac", SACConfig, family="sac")
class SACLearner(Learner):
    """SAC-N. Provides ``policy_prior`` (a regularizer requiring it is the KL prior) and ``actor_init`` (a
    regularizer requiring it starts the actor from ``actor_init_state()`` when its pre-training ends)."""

    provides = frozenset({"policy_prior", "actor_init", "stochastic_actor"})

    def __init__(self, setup: SetupContext, config: SACConfig, regularizers: Sequence[Regularizer] = ()) -> None:
        super().__init__(setup, regularizers)
        obs_dim, act_dim = setup.obs_dim, setup.action_spec.dim
        max_action = symmetric_box_bound(setup.action_spec, self.name)
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
                spectral_norm=config.critic_spectral_norm,
                spectral_norm_scale=config.critic_spectral_norm_scale,
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
        priors = [reg for reg in self.regularizers if "policy_prior" in reg.requires]
        if len(priors) > 1:
            raise ConfigError(f"regularizers {', '.join(r.name for r in priors)} each replace the entropy term "
                              "by a KL to their prior; stack at most one of them")
        self.policy_prior: PolicyPrior | None = cast(PolicyPrior, priors[0]) if priors else None
        if self.policy_prior is not None and config.learn_alpha:
            raise ConfigError(f"regularizer={priors[0].name} replaces the entropy term by a KL: set "
                              "agent.learn_alpha=false")
        self._critic_at_start: dict[str, Tensor] | None = None  # "simultaneous": critic params before its step

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        action, _ = self.actor(obs, deterministic=deterministic, with_log_prob=False, generator=generator)
        return action

    def on_pretrain_finished(self, reg: Regularizer) -> None:
        if "actor_init" in reg.requires:
            state = reg.actor_init_state()  # type: ignore[attr-defined]
            if state is not None:
                self.actor.load_state_dict(state)

    def _q_reduce(self, q: Tensor) -> Tensor:
        return q.min(dim=0).values if self.config.actor_q_reduce == "min" else q.mean(dim=0)

    def _sample_with_cost(self, obs: Tensor, alpha: Tensor, generator: torch.Generator,
                          with_kl: bool = False) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Reparameterised ``a ~ pi(.|obs)`` and its cost ``(B,)``: ``alpha * log pi(a|obs)``, or with a
        policy prior ``lambda * KL(pi || prior)`` (the same draws as ``self.actor(obs)``). Also the log-prob
        (entropy case) or the KL (prior case)."""
        if self.policy_prior is None:
            action, log_prob = self.actor(obs, generator=generator)
            return action, alpha * log_prob, log_prob, None
        mean, log_std = self.actor.dist_params(obs)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        action = torch.tanh(torch.addcmul(mean, log_std.exp(), eps))
        if self.max_action != 1.0:
            action = action * self.max_action
        kl = self.policy_prior.kl(obs, mean, log_std)
        return action, self.policy_prior.coef() * kl, None, kl

    def critic_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, CriticContext]:
        alpha = self.log_alpha.detach().exp()
        if self.config.update_order == "simultaneous" and self.actor_due(step):
            self._critic_at_start = {k: v.detach().clone() for k, v in self.critic.named_parameters()}
        with torch.no_grad():
            next_action, next_cost, _, _ = self._sample_with_cost(batch.next_observations, alpha, generator)
            # the target critic stays in train mode: with critic_dropout > 0 its dropout is on (DroQ)
            next_q = self.critic_target(batch.next_observations, next_action).min(dim=0).values
            target = batch.rewards + batch.discounts * (next_q - next_cost)
        q = self.critic(batch.observations, batch.actions)
        loss = (q - target).pow(2).mean(dim=1).sum()
        metrics["critic/loss"] = loss.detach()
        metrics["critic/q_mean"] = q.detach().mean()
        return loss, CriticContext(q=q, target=target, step=step, next_action=next_action)

    def actor_due(self, step: int) -> bool:
        return step % self.config.policy_freq == 0

    def actor_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, ActorContext]:
        alpha = self.log_alpha.detach().exp()
        action, cost, log_prob, kl = self._sample_with_cost(batch.observations, alpha, generator)
        extras: dict[str, Tensor] = {}
        if kl is None:
            assert log_prob is not None
            metrics["actor/entropy"] = -log_prob.detach().mean()
        else:
            extras["kl"] = kl
            metrics["actor/kl"] = kl.detach().mean()
        set_requires_grad(self.critic, False)
        if self._critic_at_start is not None:  # "simultaneous": the critic as it was before this step's update
            q_all = functional_call(self.critic, self._critic_at_start, (batch.observations, action))
            self._critic_at_start = None
        else:
            q_all = self.critic(batch.observations, action)
        set_requires_grad(self.critic, True)
        q = self._q_reduce(q_all)
        return (cost - q).mean(), ActorContext(actions=action, q=q, step=step, log_prob=log_prob, extras=extras)

    def actor_step(self, loss: Tensor, ctx: ActorContext, metrics: dict[str, Tensor]) -> None:
        optimizer_step(self.optimizers["actor"], loss)
        if "alpha" in self.optimizers:  # the temperature, on the actor's own sample
            assert ctx.log_prob is not None
            alpha_loss = -(self.log_alpha * (ctx.log_prob.detach() + self.target_entropy)).mean()
            optimizer_step(self.optimizers["alpha"], alpha_loss)

    def end_update(self, step: int, metrics: dict[str, Tensor]) -> None:
        metrics["alpha"] = self.log_alpha.detach().exp()
        polyak_update_(self._target, self._online, self.config.tau)
