"""REValueD's regularisation loss (Ireland & Montana, ICLR 2024; docs/agents/revalued.md), for DecQN-family learners.

Value decomposition lets an exploratory sub-action in one dimension change the TD target of the utilities of
all the others. The penalty keeps each member's utility of the taken sub-action near the target network's
value, more strongly when that dimension's TD error is large:

    delta_{k,i} = y_k - U_{k,i}(s, a_i)                           (per-dimension TD error, no gradient)
    w_{k,i}     = 1 - exp(-|delta_{k,i}|)                         (in [0, 1), no gradient)
    L_reg       = mean_{B, k} (1/N) sum_i w_{k,i} (U_{k,i}(s, a_i) - Ubar_{k,i}(s, a_i))^2
    L           = L_TD + beta * L_reg

with ``Ubar`` the target network and ``y_k`` the learner's TD target of member k. The official code does not
contain this loss (its README lists it as a TODO: davidireland3/REValueD@3baa946 ``README.md``, and the 2025
refactor @2e811a5 has none either), so this is our reading of the paper. Both the form above and the default
``beta = 0.5`` are UNCONFIRMED against the paper's text and hyperparameter table; sweep beta in {0.1, 0.5, 1}
before relying on it. ``agent=revalued regularizer=[]`` is the official code's training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlreg.config import check_range
from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import CriticContext, Regularizer


@dataclass
class REValueDRegConfig:
    beta: float = 0.5  # unconfirmed (see the module docstring)

    def __post_init__(self) -> None:
        check_range("regularizer.revalued.beta", self.beta, 0.0)


def revalued_penalty(utilities: Tensor, target_utilities: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_reg, mean w)`` for ``utilities`` ``U_{k,i}(s, a_i)`` ``(K, B, N)`` (with gradient),
    ``target_utilities`` ``Ubar_{k,i}(s, a_i)`` ``(K, B, N)`` and TD targets ``y_k`` ``(K, B)`` (or ``(B,)``)."""
    if targets.dim() == 1:
        targets = targets.unsqueeze(0)
    delta = targets.unsqueeze(-1) - utilities.detach()
    weight = 1.0 - torch.exp(-delta.abs())
    penalty = (weight * (utilities - target_utilities.detach()).square()).mean(dim=-1)  # (1/N) sum_i
    return penalty.mean(), weight.mean()


@register("revalued", REValueDRegConfig, families=("decqn",), requires=("target_utilities",))
class REValueDRegularizer(Regularizer):

    def __init__(self, config: REValueDRegConfig) -> None:
        super().__init__()
        self.beta = config.beta
        self._weight = torch.zeros(())

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        penalty, self._weight = revalued_penalty(ctx.extras["utilities"], ctx.extras["target_utilities"], ctx.target)
        return {"loss": self.beta * penalty}  # every returned term is added to the critic loss

    def after_critic_step(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        return {"weight_mean": self._weight.detach()}  # a metric only
