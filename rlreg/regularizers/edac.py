"""EDAC ensemble-diversity term (An et al. 2021; CORL edac.py; docs/agents/edac.md).

For each sample, the normalised action-gradients of the N critics should point in different directions:

    g_i = grad_a Q_i(s, a) / (||grad_a Q_i(s, a)||_2 + 1e-10)
    L_div = mean_B sum_{i != j} <g_i, g_j> / (N - 1)

added to the critic loss as ``eta * L_div`` (the gradient flows through g_i: ``create_graph=True``).
Works on any learner with an ensemble critic of N >= 2 members; SAC-N + EDAC is the EDAC agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import CriticContext, Regularizer, SetupContext


@dataclass
class EDACConfig:
    eta: float = 1.0


def diversity_loss(critic: torch.nn.Module, obs: Tensor, actions: Tensor) -> Tensor:
    """``L_div`` above for an ensemble critic mapping ``(E,B,ds), (E,B,da) -> (E,B)``."""
    num = critic.num_members
    if num < 2:
        raise ValueError("the EDAC diversity term needs an ensemble of at least 2 critics (agent.num_critics)")
    obs_e = obs.unsqueeze(0).expand(num, *obs.shape)
    act_e = actions.unsqueeze(0).expand(num, *actions.shape).clone().requires_grad_(True)
    q = critic(obs_e, act_e)  # (E, B)
    (grad,) = torch.autograd.grad(q.sum(), act_e, create_graph=True)  # (E, B, A)
    grad = grad / (grad.norm(dim=-1, keepdim=True) + 1e-10)
    # sum_{i != j} <g_i, g_j> = ||sum_i g_i||^2 - sum_i ||g_i||^2
    total = grad.sum(dim=0)
    pairwise = total.pow(2).sum(-1) - grad.pow(2).sum(dim=(0, 2))
    return pairwise.mean() / (num - 1)


@register("edac", EDACConfig)
class EDACRegularizer(Regularizer):

    def __init__(self, config: EDACConfig) -> None:
        super().__init__()
        self.eta = config.eta

    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        self.critic = learner.critic

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        return {"diversity": self.eta * diversity_loss(self.critic, batch.observations, batch.actions)}

