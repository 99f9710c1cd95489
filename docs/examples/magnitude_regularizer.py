"""A complete regularizer: small Q values on the critic and small actions on the actor.

    critic term:  w_Q(t) * mean_{i,B} Q_i(s, a)^2,      w_Q(t) = q_weight * max(0, 1 - t / decay_steps)
    actor term:   action_weight * mean_{B,dims} pi(s)^2

Importing this module registers it under the name ``magnitude``; inside ``rlreg/regularizers/`` (plus
``conf/regularizer/magnitude.yaml``) it would be selectable as ``regularizer=[magnitude]``.
``tests/test_docs_examples.py`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rlreg.config import check_range
from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer


@dataclass
class MagnitudeConfig:
    """Options, typed: ``regularizer.magnitude.q_weight=0.1`` on the command line."""

    q_weight: float = 1e-3
    action_weight: float = 0.0
    decay_steps: int = 0  # 0: no decay

    def __post_init__(self) -> None:  # bad values fail before anything runs, naming the option as typed
        check_range("regularizer.magnitude.q_weight", self.q_weight, low=0.0)
        check_range("regularizer.magnitude.action_weight", self.action_weight, low=0.0)
        check_range("regularizer.magnitude.decay_steps", self.decay_steps, low=0)


@register("magnitude", MagnitudeConfig, families=None)  # None: fits any learner (e.g. ("td3",) to restrict it)
class MagnitudeRegularizer(Regularizer):
    """Adds the two terms above; every returned term is logged as ``magnitude/<term>``. It only reads what the
    learner hands it (``ctx.q``, ``ctx.actions``) and never changes the learner."""

    def __init__(self, config: MagnitudeConfig) -> None:
        super().__init__()
        self.cfg = config

    def q_weight(self, step: int) -> float:
        """The decayed weight, a function of the step counter alone (so a resumed run gets the same value)."""
        if self.cfg.decay_steps == 0:
            return self.cfg.q_weight
        return self.cfg.q_weight * max(0.0, 1.0 - step / self.cfg.decay_steps)

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        # ctx.q: (E, B) online Q_i(s, a) with gradient; the learner adds the term to its critic loss
        return {"q_loss": self.q_weight(ctx.step) * ctx.q.pow(2).mean()}

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        if self.cfg.action_weight == 0:
            return {}
        # ctx.actions: (B, A) policy actions pi(s), differentiable w.r.t. the actor
        return {"action_loss": self.cfg.action_weight * ctx.actions.pow(2).mean()}
