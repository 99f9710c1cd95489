"""Conditional VAE behaviour model shared by SPOT (docs/agents/spot.md) and A2PR (docs/agents/a2pr.md)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConditionalVAE"]


class ConditionalVAE(nn.Module):
    """``q(z|s,a)`` / ``p(a|s,z)`` with PyTorch default init (docs/agents/a2pr.md, docs/agents/spot.md).

    Encoder ``[s, a] -> 750 ReLU -> 750 ReLU -> (mean, log_std)`` heads of size ``latent_dim``
    (default ``2 |A|``), ``log_std`` clamped to ``log_std_bounds`` (``[-4, 15]``).  Decoder
    ``[s, z] -> 750 ReLU -> 750 ReLU -> |A| -> tanh * max_action``; prior samples for ``decode(s)``
    are ``N(0, I)`` clipped to ``[-0.5, 0.5]``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        latent_dim: int | None = None,
        hidden: Sequence[int] = (750, 750),
        max_action: float = 1.0,
        log_std_bounds: tuple[float, float] = (-4.0, 15.0),
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.latent_dim = int(latent_dim) if latent_dim is not None else 2 * act_dim
        self.max_action = float(max_action)
        self.log_std_min, self.log_std_max = float(log_std_bounds[0]), float(log_std_bounds[1])

        def trunk(d_in: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for h in hidden:
                layers += [nn.Linear(d_in, h), nn.ReLU(inplace=True)]
                d_in = h
            return nn.Sequential(*layers)

        self.encoder = trunk(obs_dim + act_dim)
        self.mean_head = nn.Linear(hidden[-1], self.latent_dim)
        self.log_std_head = nn.Linear(hidden[-1], self.latent_dim)
        self.decoder = trunk(obs_dim + self.latent_dim)
        self.decoder_out = nn.Linear(hidden[-1], act_dim)

    # --- pieces -----------------------------------------------------------------------------------
    def _encode(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(torch.cat([obs, action], dim=-1))
        mean = self.mean_head(h)
        log_std = self.log_std_head(h).clamp(self.log_std_min, self.log_std_max)
        return mean, log_std

    def encode(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, std)`` of ``q(z | s, a)``; ``std = exp(clamp(log_std))``."""
        mean, log_std = self._encode(obs, action)
        return mean, log_std.exp()

    def decode(self, obs: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Decoded action ``tanh(...) * max_action``; ``z=None`` draws ``z ~ N(0, I)`` clipped to
        ``[-0.5, 0.5]``."""
        if z is None:
            z = torch.randn(*obs.shape[:-1], self.latent_dim, generator=generator,
                            dtype=obs.dtype, device=obs.device).clamp_(-0.5, 0.5)
        a = torch.tanh(self.decoder_out(self.decoder(torch.cat([obs, z], dim=-1))))
        return a if self.max_action == 1.0 else a * self.max_action

    def forward(self, obs: Tensor, action: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(recon, mean, std)`` with ``z = mean + std * eps``."""
        mean, log_std = self._encode(obs, action)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        recon = self.decode(obs, torch.addcmul(mean, std, eps))
        return recon, mean, std

    # --- losses -------------------------------------------------------------------------------------
    def elbo_terms(self, obs: Tensor, action: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample ``(recon, kl)``, both ``(B,)``: reconstruction MSE averaged over action dims and
        ``KL_elem = -0.5 * (1 + log std^2 - mean^2 - std^2)`` averaged over latent dims (one ``z`` sample)."""
        mean, log_std = self._encode(obs, action)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        recon = self.decode(obs, torch.addcmul(mean, std, eps))
        rec = (recon - action).square().mean(-1)
        kl = (-0.5 * (1.0 + 2.0 * log_std - mean.square() - std.square())).mean(-1)
        return rec, kl

    def negative_elbo(self, obs: Tensor, action: Tensor, kl_weight: float = 0.5,
                      generator: torch.Generator | None = None) -> Tensor:
        """Per-sample ``recon + kl_weight * kl`` ``(B,)`` - SPOT's ``-log density`` surrogate (docs/agents/spot.md)."""
        rec, kl = self.elbo_terms(obs, action, generator)
        return rec + kl_weight * kl

    def loss(self, obs: Tensor, action: Tensor, kl_weight: float = 0.5,
             generator: torch.Generator | None = None) -> Tensor:
        """Scalar training loss ``mean recon + kl_weight * mean KL`` (SPOT ``train_vae`` / A2PR, docs/agents/spot.md)."""
        return self.negative_elbo(obs, action, kl_weight, generator).mean()
