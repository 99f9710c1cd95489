"""Lipschitz regularisation of Q by an adversarial value loss (Zheng, Wang, Xu, Huang, ICLR 2023,
"Is Model Ensemble Necessary? Model-based RL via a Single Model with Lipschitz Regularized Value Function").

The paper's robust regulariser asks Q to vary little inside a small box around each state. No official code
is known; this is rlreg's reconstruction (docs: the single-model agent, ``agent=mbpo_lipschitz``):

    L_rob = lambda * sum_j mean_b ( Q_j(s_b + delta_jb, a_b) - Q_j(s_b, a_b) )^2
    delta_jb ~ argmax_{ |delta|_inf <= eps * sigma_s } ( Q_j(s_b + delta, a_b) - sg[Q_j(s_b, a_b)] )^2

with ``sigma_s`` the per-dimension std of the real states (so ``eps`` is in normalised units; the learner
provides it, ``requires = {"state_std"}``) and the action held fixed. The inner max is K steps of projected
sign-gradient ascent (PGD; K = 1 is FGSM from a random start):

    delta_0 ~ U(-eps sigma_s, eps sigma_s)
    delta_{k+1} = clip( delta_k + eta sigma_s * sign(grad_delta (Q_j(s + delta_k, a) - sg[Q_j(s, a)])^2),
                        +-eps sigma_s )
    eta = 2.5 eps / K (``step_size`` overrides)

Each critic member j gets its own perturbation (one batched pass through the ensemble). ``delta`` is
detached after the inner loop; the outer term back-propagates through both ``Q_j(s + delta, a)`` and the
clean ``Q_j(s, a)`` of the TD loss. Random starts come from a generator of the regularizer (seeded from the
run seed and the name, checkpointed). Cost: K + 1 extra critic passes per update (about 2x the critic step at
K = 1, ``scripts/bench_mbpo.py``); with spectral-norm critics each training-mode pass also advances the power
iteration, so the sigma estimate is refreshed K + 1 more times per update.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import CriticContext, Regularizer, SetupContext


@dataclass
class LipschitzConfig:
    weight: float = 1.0  # lambda_rob
    eps: float = 0.01  # box half-width in units of the state std
    steps: int = 1  # K (PGD steps; 1 = FGSM from a random start)
    step_size: float | None = None  # eta in units of the state std; None: 2.5 * eps / K

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ConfigError(f"regularizer.lipschitz.eps must be positive, got {self.eps}")
        if self.steps < 1:
            raise ConfigError(f"regularizer.lipschitz.steps must be >= 1, got {self.steps}")
        if self.weight < 0:
            raise ConfigError(f"regularizer.lipschitz.weight must be >= 0, got {self.weight}")


def pgd_perturbation(
    q_fn: Callable[[Tensor], Tensor],
    obs: Tensor,
    q_ref: Tensor,
    radius: Tensor,
    step: Tensor,
    steps: int,
    generator: torch.Generator,
    members: int,
) -> Tensor:
    """``delta`` ``(E, B, ds)`` maximising ``(q_fn(obs + delta) - q_ref)^2`` per member in the box ``|delta| <= radius``
    by ``steps`` sign-gradient steps of size ``step`` (both ``(ds,)``) from a uniform random start.

    ``q_fn`` maps ``(E, B, ds)`` states to ``(E, B)`` values; ``q_ref`` ``(E, B)`` is held constant."""
    u = torch.rand((members, *obs.shape), generator=generator, device=obs.device, dtype=obs.dtype)
    delta = (2.0 * u - 1.0) * radius
    q_ref = q_ref.detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        gap = (q_fn(obs + delta) - q_ref).pow(2).sum()
        (grad,) = torch.autograd.grad(gap, delta)
        delta = torch.maximum(torch.minimum(delta.detach() + step * grad.sign(), radius), -radius)
    return delta.detach()


def _generator(device: torch.device, name: str) -> torch.Generator:
    seed = int(np.random.SeedSequence([torch.initial_seed(), zlib.crc32(name.encode())]).generate_state(1)[0])
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@register("lipschitz", LipschitzConfig, requires=("state_std",))
class LipschitzRegularizer(Regularizer):
    """The adversarial value loss above, as a critic term ``lipschitz/robust`` (needs a learner that provides
    ``state_std()`` and an ensemble ``critic``: MBPO's)."""

    def __init__(self, config: LipschitzConfig) -> None:
        super().__init__()
        self.config = config

    def bind(self, learner: Any, ctx: SetupContext) -> None:
        super().bind(learner, ctx)
        self.generator = _generator(ctx.device, self.name)

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        c = self.config
        if c.weight == 0:
            return {}
        learner: Any = self.learner
        critic = learner.critic
        std = learner.state_std()
        radius = c.eps * std
        step = (c.step_size if c.step_size is not None else 2.5 * c.eps / c.steps) * std
        a = batch.actions
        delta = pgd_perturbation(lambda s: critic(s, a), batch.observations, ctx.q, radius, step, c.steps,
                                 self.generator, critic.num_members)
        q_adv = critic(batch.observations + delta, a)
        return {"robust": c.weight * (q_adv - ctx.q).pow(2).mean(dim=1).sum()}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
