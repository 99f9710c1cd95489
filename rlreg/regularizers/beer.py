"""BEER: BEllman Equation-based automatic rank Regularizer (He, Zhou, Fang, Maghsudi, ICLR 2024, "Adaptive
Regularization of Representation Rank as an Implicit Constraint of Bellman Equation"; docs/agents/beer.md).

Write the critic as ``Q(s, a) = w^T phi(s, a)`` with ``phi`` the last hidden (post-ReLU) layer. If Q satisfies
the Bellman equation, ``r = w^T (phi - gamma phi')`` and Cauchy-Schwarz bounds the similarity of consecutive
representations. As the official code (sweetice/BEER-ICLR2024 ``BEER.py``) computes it, per sample:

    B   = ( ||phi||^2 + gamma^2 ||phi+||^2 - r^2 / ||w||_F^2 ) / ( 2 gamma ||phi|| ||phi_bar'|| )   (no gradient)
    R   = mean_B ReLU( cos(phi, phi_bar') - B )                                  (paper Eq. 12, per the reviews)
    L_Q = L_TD + beta * R

    phi      = phi(s, a; theta)                  online critic, gradient flows only through it
    phi_bar' = phi(s', mu_bar(s'); theta_bar)     target critic at the TD target's next action (no gradient)
    phi+     = phi(s', mu(s'); theta)             online critic at the online actor's next action (no gradient)

Options (docs/agents/beer.md):

* ``bound_next_feature="target"`` uses ``phi_bar'`` instead of ``phi+`` in the numerator: the paper's
  target-only form (pitfall 1). ``"online"`` (default) is the official code.
* ``bound_gamma``: the official code hard-codes 0.99 in the bound; ``null`` uses ``agent.gamma`` (0.99 by
  default, so both coincide; pitfall 2).
* ``penalty="inner_product"``: ``ReLU(<phi, phi_bar'> - B ||phi|| ||phi_bar'||)``, the inner-product variant a
  reviewer proposed (it does not differentiate ``1/||phi||``); ``"cosine"`` (default) is the official form.
* The critic head bias, which the derivation ignores, is ``agent.critic_head_bias`` of the TD3 learner.

Deviation from the official code: the two norms in the bound's denominator are clamped at ``norm_eps`` (an
all-zero ReLU feature would otherwise divide by zero and turn the loss into NaN; pitfall 5). Nothing changes
while the norms exceed ``norm_eps``. With an ensemble of E > 1 critics (BEER on top of TD3), each member has
its own bound with its own ``w`` and the penalties are summed over members like the TD losses.

Logged: ``beer/penalty`` (beta * R), ``beer/bound`` (mean B), ``beer/active_frac`` (share of samples whose
ReLU is active; pitfall 4), ``beer/cos`` (mean cosine similarity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch
from rlreg.regularizers import register
from rlreg.regularizers.base import CriticContext, Regularizer, SetupContext


@dataclass
class BEERConfig:
    beta: float = 1e-3
    bound_gamma: float | None = None  # None: agent.gamma
    bound_next_feature: str = "online"  # online (official code) | target (paper form)
    penalty: str = "cosine"  # cosine (official) | inner_product (reviewer's variant)
    cos_eps: float = 1e-6
    norm_eps: float = 1e-6


def beer_bound(
    phi: Tensor, phi_next_num: Tensor, phi_next_target: Tensor, rewards: Tensor, w_sq_norm: Tensor, gamma: float,
    norm_eps: float = 1e-6,
) -> Tensor:
    """The adaptive bound ``B`` ``(E, B)``: features ``(E, B, H)``, ``rewards`` ``(B,)``, ``w_sq_norm`` ``(E,)``
    (squared Frobenius norm of each member's head weight). ``phi_next_num`` enters the numerator (``phi+`` in
    the official code), ``phi_next_target`` the denominator."""
    phi_norm = phi.norm(dim=-1)
    r_term = rewards.square() / w_sq_norm[:, None]
    numerator = phi_norm.square() + gamma**2 * phi_next_num.norm(dim=-1).square() - r_term
    denominator = 2.0 * gamma * phi_norm.clamp_min(norm_eps) * phi_next_target.norm(dim=-1).clamp_min(norm_eps)
    return numerator / denominator


@register("beer", BEERConfig, families=("td3",), requires=("critic_features",))
class BEERRegularizer(Regularizer):

    def __init__(self, config: BEERConfig) -> None:
        super().__init__()
        if config.bound_next_feature not in ("online", "target"):
            raise ConfigError(
                f"regularizer.beer.bound_next_feature={config.bound_next_feature!r} is unknown; choose online or target"
            )
        if config.penalty not in ("cosine", "inner_product"):
            raise ConfigError(f"regularizer.beer.penalty={config.penalty!r} is unknown; choose cosine or inner_product")
        if config.beta < 0:
            raise ConfigError(f"regularizer.beer.beta must be >= 0, got {config.beta}")
        self.config = config
        self._stats: dict[str, Tensor] = {}

    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        self.gamma = float(self.config.bound_gamma if self.config.bound_gamma is not None else learner.config.gamma)

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        cfg = self.config
        phi = ctx.extras["features"]  # (E, B, H), with gradient
        phi_t = ctx.extras["next_target_features"]  # (E, B, H), no gradient
        critic = self.learner.critic
        with torch.no_grad():
            if cfg.bound_next_feature == "online":
                _, phi_num = critic.q_and_features(batch.next_observations, self.learner.actor(batch.next_observations))
            else:
                phi_num = phi_t
            w = critic.net.linears[-1].weight  # (E, H, 1)
            bound = beer_bound(phi.detach(), phi_num, phi_t, batch.rewards, w.square().sum(dim=(1, 2)), self.gamma,
                               cfg.norm_eps)
        cos = F.cosine_similarity(phi, phi_t, dim=-1, eps=cfg.cos_eps)  # (E, B)
        if cfg.penalty == "cosine":
            excess = cos - bound
        else:
            scale = phi.detach().norm(dim=-1).clamp_min(cfg.norm_eps) * phi_t.norm(dim=-1).clamp_min(cfg.norm_eps)
            excess = (phi * phi_t).sum(-1) - bound * scale
        penalty = F.relu(excess).mean(dim=1).sum()
        self._stats = {
            "bound": bound.mean(),
            "active_frac": (excess.detach() > 0).float().mean(),
            "cos": cos.detach().mean(),
        }
        return {"penalty": cfg.beta * penalty}

    def after_critic_step(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        stats, self._stats = self._stats, {}
        return stats
