"""The regularizer interface: objects that add loss terms to a learner's actor and/or critic loss.

A learner calls every regularizer of the agent, in config order, at fixed points of its update:

* ``critic_terms(batch, ctx)``: extra critic loss terms (added to the TD loss before the critic step);
* ``after_critic_step(batch, ctx)``: the regularizer's own optimisation (e.g. A2PR's value net and VAE);
* ``actor_terms(batch, ctx)``: extra actor loss terms (added to the policy objective);
* ``after_update(step)``: schedules (e.g. RORL's decaying lambda);

in the one order written in :mod:`rlreg.learners.base` (critic terms, critic step, after_critic_step,
actor terms, actor step, after_update);
* ``start_finetune()``: once, when online fine-tuning from an offline checkpoint begins (``trainer=finetune``).

A regularizer may own networks (``self.modules``) and optimizers (``self.optimizers``), a pre-training
phase (``pretrain_steps`` and ``pretrain_step``), checkpointed state (``state_dict``) and metrics: every
returned term is logged as ``<regularizer>/<term>``. Stacking works because terms are only added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from rlreg.data.buffers import Batch

if TYPE_CHECKING:
    from rlreg.learners.base import ActionSpec, Learner


@dataclass
class CriticContext:
    """What a critic regularizer can see: the online Q values of the batch and the TD target."""

    q: Tensor  # (E, B) online Q_i(s, a)
    target: Tensor  # (B,) TD target y (no gradient)
    step: int
    next_action: Tensor | None = None  # (B, A) the next action a' the TD target used (TD3: smoothed target action)
    # learner-specific tensors, e.g. TD3 with ``critic_features`` on: ``features`` phi(s, a) (E, B, H) with
    # gradient and ``next_target_features`` phi'(s', a') (E, B, H) of the target critic (BEER, docs/agents/beer.md)
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ActorContext:
    """What an actor regularizer can see at the current states ``batch.observations``."""

    actions: Tensor  # (B, A) policy actions, differentiable w.r.t. the actor
    q: Tensor  # (B,) the Q value the learner's objective uses (differentiable w.r.t. actions)
    step: int
    log_prob: Tensor | None = None  # (B,) stochastic policies only
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SetupContext:
    """Static facts a learner is built from and a regularizer may need when it is bound to a learner."""

    obs_dim: int
    act_dim: int
    max_action: float
    device: torch.device
    dataset: Any = None  # the raw TransitionDataset of an offline run (as loaded, not normalised)
    buffer: Any = None  # the OfflineBuffer of an offline run: device tensors, states normalised as trained on
    action_spec: "ActionSpec | None" = None  # the env's Box (None: [-max_action, max_action]^act_dim)
    env: Any = None  # the EnvConfig of the training env (online) or evaluation env (offline), if any
    seed: int = 0  # the run seed (for generators a learner or regularizer owns)
    # the trainer's state normalisation, decided once (dataset.normalize_states): batches come normalised with
    # it, and the learner's ``state_normalizer`` applies it to env observations; None: raw states
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        from rlreg.learners.base import ActionSpec

        if self.action_spec is None:
            bound = np.full(self.act_dim, self.max_action, dtype=np.float32)
            self.action_spec = ActionSpec(-bound, bound)
        self.device = torch.device(self.device)

    @classmethod
    def box(cls, obs_dim: int, act_dim: int, max_action: float = 1.0, device: torch.device | str = "cpu",
            **kwargs: Any) -> "SetupContext":
        """A setup for a symmetric Box ``[-max_action, max_action]^act_dim`` (tests, scripts)."""
        return cls(obs_dim=obs_dim, act_dim=act_dim, max_action=max_action, device=torch.device(device), **kwargs)


class Regularizer:
    """Base class with no-op hooks; subclasses override what they need.

    ``families``: the learner families it fits (None: any learner), checked when the agent is built;
    ``requires``: what it needs the learner to provide (e.g. ``{"critic_features"}``: TD3 then returns the
    critic's features in ``CriticContext.extras``). A regularizer never changes its learner's attributes."""

    name: str = "regularizer"
    families: frozenset[str] | None = None
    requires: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.modules = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.learner: Learner | None = None

    # -- wiring -----------------------------------------------------------------------------------
    def bind(self, learner: "Learner", ctx: SetupContext) -> None:
        """Called once when the agent is built; create networks and optimizers here."""
        self.learner = learner

    # -- pre-training ----------------------------------------------------------------------------
    @property
    def pretrain_steps(self) -> int:
        return 0

    def pretrain_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- loss hooks ------------------------------------------------------------------------------
    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        return {}

    def after_critic_step(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        return {}

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        return {}

    def after_update(self, step: int) -> dict[str, Tensor] | None:
        """After the learner's update (schedules, the regularizer's own post-update steps); may return metrics."""
        return None

    def start_finetune(self) -> None:
        """Called once by the fine-tuning trainer when online fine-tuning from an offline checkpoint
        begins (e.g. SPOT switches to its annealed lambda, docs/agents/spot.md)."""
        return None

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": self.modules.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.modules.load_state_dict(state["modules"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Schedules and counters (tensors or plain numbers) to checkpoint."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None
