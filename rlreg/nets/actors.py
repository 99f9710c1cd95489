"""Policies: deterministic tanh actor (TD3 family) and tanh-Gaussian actor (SAC family)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ObsNormalizer, init_bias_, init_last_layer_uniform_, init_weight_fan_out_, mlp

__all__ = ["DeterministicActor", "TanhGaussianActor", "gaussian_kl", "ACTOR_INITS"]

ACTOR_INITS = ("pytorch", "corl", "rlkit", "xavier")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)


def _xavier_(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=1.0)
            nn.init.zeros_(m.bias)


class DeterministicActor(nn.Module):
    """``s -> hidden (ReLU) -> |A| -> tanh * max_action`` (TD3+BC docs/agents/td3bc.md, A2PR with
    ``hidden=(256,256,256)``, BEER docs/agents/beer.md).

    ``dropout > 0``: SPOT block ``Linear -> Dropout -> ReLU`` (docs/agents/spot.md); dropout follows
    ``train()``/``eval()``.  ``last_layer_init=w``: output weight and bias ``U(-w, w)`` (SPOT AntMaze
    1e-3).  PyTorch default init otherwise.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        max_action: float = 1.0,
        dropout: float = 0.0,
        last_layer_init: float | None = None,
        obs_normalizer: ObsNormalizer | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.max_action = float(max_action)
        self.net = mlp(obs_dim, hidden, act_dim, dropout=dropout, output_activation=nn.Tanh)
        if last_layer_init is not None:
            init_last_layer_uniform_(self.net[-2], last_layer_init)
        self.obs_normalizer = obs_normalizer if obs_normalizer is not None else ObsNormalizer()

    def forward(self, obs: Tensor) -> Tensor:
        a = self.net(self.obs_normalizer(obs))
        return a if self.max_action == 1.0 else a * self.max_action


class TanhGaussianActor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy (SAC-N/EDAC docs/agents/edac.md, RORL, DroQ
    docs/agents/droq.md, DemoReg-SAC, MBPO).

    Trunk ``s -> hidden (ReLU)``, then two separate linear heads (mean, log_std); ``log_std`` is
    clamped to ``log_std_bounds`` (``[-5, 2]`` CORL/RORL, ``[-20, 2]`` DroQ).

    ``init``: ``"pytorch"`` default; ``"corl"``: hidden biases 0.1, both heads' weights and biases
    ``U(-1e-3, 1e-3)``, PyTorch's default hidden weights ``U(+-1/sqrt(in))`` (CORL SAC-N/EDAC ``Actor``,
    tinkoff-ai/CORL @ 6afec90); ``"rlkit"``: the same except every hidden weight, the first included, is
    ``U(+-1/sqrt(out))`` (rlkit ``fanin_init`` applied to an ``(out, in)`` ``nn.Linear`` weight: RORL's
    ``TanhGaussianPolicy``/``Mlp``, YangRui2015/RORL @ c604043); ``"xavier"``: xavier uniform weights, zero
    biases (DroQ's REDQ code).

    Log-prob of ``a = max_action * tanh(u)``: ``Normal(mean, std).log_prob(u).sum(-1) -
    sum(log(max_action * (1 - tanh(u)^2) + 1e-6))`` (CORL/EDAC ``+1e-6`` form, default) or, with
    ``exact_log_prob=True``, the numerically stable exact Jacobian
    ``log(max_action) + 2 * (log 2 - u - softplus(-2u))``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        init: str = "pytorch",
        max_action: float = 1.0,
        obs_normalizer: ObsNormalizer | None = None,
        exact_log_prob: bool = False,
    ) -> None:
        super().__init__()
        if init not in ACTOR_INITS:
            raise ValueError(f"unknown actor init {init!r}; choose from {ACTOR_INITS}")
        hidden = tuple(hidden)
        if len(hidden) == 0:
            raise ValueError("TanhGaussianActor needs at least one hidden layer")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.max_action = float(max_action)
        self.log_std_min, self.log_std_max = float(log_std_bounds[0]), float(log_std_bounds[1])
        self.exact_log_prob = exact_log_prob
        self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1], output_activation=nn.ReLU)
        self.mean_head = nn.Linear(hidden[-1], act_dim)
        self.log_std_head = nn.Linear(hidden[-1], act_dim)
        self.obs_normalizer = obs_normalizer if obs_normalizer is not None else ObsNormalizer()
        if init in ("corl", "rlkit"):
            for m in self.trunk:
                if isinstance(m, nn.Linear):
                    if init == "rlkit":
                        init_weight_fan_out_(m)
                    init_bias_(m, 0.1)
            init_last_layer_uniform_(self.mean_head, 1e-3)
            init_last_layer_uniform_(self.log_std_head, 1e-3)
        elif init == "xavier":
            _xavier_(self)

    def dist_params(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-tanh ``mean`` and clamped ``log_std`` (RORL policy KL, DemoReg closed-form KL)."""
        h = self.trunk(self.obs_normalizer(obs))
        mean = self.mean_head(h)
        log_std = self.log_std_head(h).clamp(self.log_std_min, self.log_std_max)
        return mean, log_std

    def _log_det(self, u: Tensor, tanh_u: Tensor) -> Tensor:
        """``sum log |d a / d u|`` over the action dims."""
        if self.exact_log_prob:
            ld = (2.0 * (_LOG2 - u - F.softplus(-2.0 * u))).sum(-1)
            if self.max_action != 1.0:
                ld = ld + self.act_dim * math.log(self.max_action)
            return ld
        return torch.log(self.max_action * (1.0 - tanh_u.square()) + 1e-6).sum(-1)

    def forward(
        self,
        obs: Tensor,
        deterministic: bool = False,
        with_log_prob: bool = True,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Reparameterised sample ``a = tanh(mean + std * eps) * max_action`` (``eps`` from
        ``torch.randn(..., generator=generator)``, or ``noise`` when given: drawn by the caller, e.g. outside a
        ``vmap``) and its log-prob ``(B,)`` (None if not requested).
        ``deterministic=True``: ``a = tanh(mean) * max_action`` with the log-density at that point."""
        mean, log_std = self.dist_params(obs)
        if deterministic:
            u = mean
            normal_lp = (-log_std - _HALF_LOG_2PI).sum(-1) if with_log_prob else None
        else:
            eps = noise if noise is not None else torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                                                              device=mean.device)
            u = torch.addcmul(mean, log_std.exp(), eps)
            # Normal(mean, std).log_prob(u) with (u - mean) / std == eps exactly
            normal_lp = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1) if with_log_prob else None
        tanh_u = torch.tanh(u)
        action = tanh_u if self.max_action == 1.0 else tanh_u * self.max_action
        if not with_log_prob:
            return action, None
        return action, normal_lp - self._log_det(u, tanh_u)

    def log_prob(self, obs: Tensor, action: Tensor, clip: float = 1e-6) -> Tensor:
        """``log pi(action | obs)`` ``(B,)`` for given (e.g. demonstration) actions; ``u = atanh(a /
        max_action)`` with ``|a / max_action|`` clipped to ``1 - clip``."""
        mean, log_std = self.dist_params(obs)
        y = (action / self.max_action).clamp(-1.0 + clip, 1.0 - clip)
        u = torch.atanh(y)
        z = (u - mean) * torch.exp(-log_std)
        normal_lp = (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)
        return normal_lp - self._log_det(u, y)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """Closed-form ``KL(N(mean_p, std_p^2) || N(mean_q, std_q^2))`` for diagonal Gaussians, summed over
    the last dim."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    t = (mean_p - mean_q).square() * torch.exp(-2.0 * log_std_q)
    return (log_std_q - log_std_p + 0.5 * (var_ratio + t - 1.0)).sum(-1)
