"""Behaviour cloning towards the dataset action (TD3+BC, Fujimoto & Gu 2021; docs/agents/td3bc.md).

    pi = argmax_pi  E_(s,a)~D [ lambda * Q(s, pi(s)) - (pi(s) - a)^2 ],  lambda = alpha / mean|Q(s, pi(s))|

The Q-normalised first term belongs to the TD3 learner (``q_norm_alpha``); this regularizer adds the
second: ``weight * mean_{batch, action dims} (pi(s) - a)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, Regularizer


@dataclass
class BCConfig:
    weight: float = 1.0


@register("bc", BCConfig)
class BCRegularizer(Regularizer):

    def __init__(self, config: BCConfig) -> None:
        super().__init__()
        self.weight = config.weight

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        # CORL td3_bc.py: F.mse_loss(pi, action), a mean over batch and action dimensions.
        return {"loss": self.weight * (ctx.actions - batch.actions).pow(2).mean()}

