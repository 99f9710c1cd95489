"""Learned dynamics models for model-based agents: MBPO's probabilistic ensemble and its single-model variants.

One batched module (:class:`EnsembleDynamics`) holds ``E`` MLPs ``[s, a] -> (r, s' - s)`` evaluated with one
``baddbmm`` per layer (:class:`rlreg.nets.EnsembleMLP`). MBPO (Janner et al., NeurIPS 2019) trains
``E = 7`` Gaussian members and samples from the 5 elites; the single-model agent of Zheng et al. (ICLR 2023)
uses ``E = 1`` with ``model_type="deterministic"`` (or ``"gaussian"``).

Every detail below follows the official code, jannerm/mbpo @ ac694ff9f1ebb789cc5b3f164d9d67f93ed8f129
(``mbpo/models/{bnn,fc,utils,constructor}.py``), in our own words:

* member: 4 hidden layers of 200 units (400 for Humanoid), swish, output ``(r, s' - s)``; weights drawn
  from a normal with std ``1 / (2 sqrt(fan_in))`` truncated at two std, biases zero;
* inputs ``[s, a]`` standardised by a scaler refit on the training split at every :meth:`fit`
  (std below 1e-12 replaced by 1);
* Gaussian members output a mean and a log-variance softly bounded by learned ``max_logvar`` (init 0.5) and
  ``min_logvar`` (init -10), shared by the members:
      logvar = max_lv - softplus(max_lv - raw);   logvar = min_lv + softplus(logvar - min_lv)
* loss, summed over members (``B`` rows, ``D`` outputs):
      L = sum_e [ mean_{B,D} (mu_e - y)^2 exp(-logvar_e) + mean_{B,D} logvar_e ]
          + sum_l wd_l ||W_l||^2 / 2 + 0.01 (sum max_lv - sum min_lv)
  with per-layer decays ``wd = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)`` (weights only, all members);
  a deterministic member uses ``sum_e mean_{B,D} (mu_e - y)^2`` + the decays instead;
* training (:meth:`fit`): a holdout of ``min(20% of the data, 5000)`` rows; each member trains on its own
  bootstrap resample of the rest (drawn once per call, reshuffled every epoch), minibatches of 256, Adam
  lr 1e-3 (the optimiser persists across calls); after every epoch each member whose holdout MSE improved by
  more than 1% of its best is snapshotted, and training stops once no member improved for more than 5
  epochs; every member is then reset to its snapshot and the ``num_elites`` members with the lowest holdout
  MSE become the elites;
* prediction (:meth:`step`): each row uses a uniformly random elite and a sample of its Gaussian (not the
  mean), ``s' = s + delta``.

rlreg design choice (docs/agents/mbpo_lipschitz.md): a deterministic model regresses *standardised* targets (a second
scaler fit on the training targets), so that rewards and large velocities do not dominate the MSE; the
Gaussian model keeps raw targets as in the official code. ``standardize_targets`` overrides either default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from rlreg.nets import EnsembleMLP

__all__ = ["EnsembleDynamics", "gaussian_nll", "soft_bound_logvar", "MBPO_WEIGHT_DECAYS"]

MBPO_WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)


def soft_bound_logvar(raw: Tensor, max_logvar: Tensor, min_logvar: Tensor) -> Tensor:
    """MBPO's soft clamp of a raw log-variance into ``(min_logvar, max_logvar)`` (differentiable)."""
    logvar = max_logvar - nn.functional.softplus(max_logvar - raw)
    return min_logvar + nn.functional.softplus(logvar - min_logvar)


def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """Per-member MBPO Gaussian loss ``mean_{B,D}[(mu - y)^2 exp(-logvar)] + mean_{B,D}[logvar]``, shape ``(E,)``
    for ``mean``/``logvar``/``target`` of shape ``(E, B, D)`` (the NLL without ``log 2 pi`` and the 1/2)."""
    return ((mean - target).pow(2) * torch.exp(-logvar)).mean(dim=(1, 2)) + logvar.mean(dim=(1, 2))


@dataclass
class FitResult:
    """What one :meth:`EnsembleDynamics.fit` call reports (tensors stay on the device)."""

    holdout_mse: Tensor  # () mean holdout MSE of the elites (after restoring the snapshots)
    member_holdout_mse: Tensor  # (E,)
    train_loss: Tensor  # () the training loss of the last minibatch
    epochs: int
    num_train: int
    num_holdout: int


class EnsembleDynamics(nn.Module):
    """``E`` dynamics MLPs ``[s, a] -> (r, s' - s)`` as one batched module (see the module docstring).

    Buffers (checkpointed with the module): the input scaler ``in_mean``/``in_std``, the target scaler
    ``out_mean``/``out_std`` (identity unless targets are standardised) and the ``elites`` indices.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        num_members: int = 7,
        num_elites: int = 5,
        hidden: Sequence[int] = (200, 200, 200, 200),
        model_type: Literal["gaussian", "deterministic"] = "gaussian",
        weight_decays: Sequence[float] = MBPO_WEIGHT_DECAYS,
        logvar_bound_penalty: float = 0.01,
        standardize_targets: bool | None = None,
    ) -> None:
        super().__init__()
        if model_type not in ("gaussian", "deterministic"):
            raise ValueError(f"model type must be 'gaussian' or 'deterministic', got {model_type!r}")
        if not 1 <= num_elites <= num_members:
            raise ValueError(f"num_elites ({num_elites}) must be between 1 and num_members ({num_members})")
        if len(weight_decays) != len(hidden) + 1:
            raise ValueError(f"weight_decays needs one value per layer ({len(hidden) + 1}), got {len(weight_decays)}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.in_dim = self.obs_dim + self.act_dim
        self.out_dim = self.obs_dim + 1  # (reward, delta obs)
        self.num_members, self.num_elites = int(num_members), int(num_elites)
        self.model_type = model_type
        self.gaussian = model_type == "gaussian"
        self.weight_decays = tuple(float(w) for w in weight_decays)
        self.logvar_bound_penalty = float(logvar_bound_penalty)
        self.standardize_targets = (not self.gaussian) if standardize_targets is None else bool(standardize_targets)
        self.net = EnsembleMLP(num_members, self.in_dim, hidden, self.out_dim * (2 if self.gaussian else 1),
                               activation=nn.SiLU)
        with torch.no_grad():
            for lin in self.net.linears:
                std = 1.0 / (2.0 * math.sqrt(lin.in_features))
                nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
                lin.bias.zero_()
        if self.gaussian:
            self.max_logvar = nn.Parameter(torch.full((1, self.out_dim), 0.5))
            self.min_logvar = nn.Parameter(torch.full((1, self.out_dim), -10.0))
        self.register_buffer("in_mean", torch.zeros(self.in_dim))
        self.register_buffer("in_std", torch.ones(self.in_dim))
        self.register_buffer("out_mean", torch.zeros(self.out_dim))
        self.register_buffer("out_std", torch.ones(self.out_dim))
        self.register_buffer("elites", torch.arange(self.num_elites))

    # -- the network -----------------------------------------------------------------------------
    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Raw ``[s, a]`` ``(B, in)`` (shared by all members) or ``(E, B, in)`` -> ``(mean, logvar)`` of the
        (possibly standardised) targets, each ``(E, B, out)``; ``logvar`` is None for a deterministic model."""
        out = self.net((inputs - self.in_mean) / self.in_std)
        if not self.gaussian:
            return out, None
        mean, raw = out[..., : self.out_dim], out[..., self.out_dim:]
        return mean, soft_bound_logvar(raw, self.max_logvar, self.min_logvar)

    def decay_loss(self) -> Tensor:
        """``sum_l wd_l ||W_l||^2 / 2`` over all members (TF ``l2_loss``; biases are not decayed)."""
        return sum(wd * lin.weight.pow(2).sum() / 2 for wd, lin in zip(self.weight_decays, self.net.linears))

    def member_losses(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Training loss per member ``(E,)`` (Gaussian NLL or MSE) on targets in the training space."""
        mean, logvar = self(inputs)
        if logvar is None:
            return (mean - targets).pow(2).mean(dim=(1, 2))
        return gaussian_nll(mean, logvar, targets)

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """The full training objective: summed member losses + decays (+ the log-variance bound penalty)."""
        total = self.member_losses(inputs, targets).sum() + self.decay_loss()
        if self.gaussian:
            total = total + self.logvar_bound_penalty * (self.max_logvar.sum() - self.min_logvar.sum())
        return total

    @torch.no_grad()
    def member_mse(self, inputs: Tensor, targets: Tensor, chunk: int = 8192) -> Tensor:
        """Per-member MSE ``(E,)`` of the predicted means (training target space), in row chunks."""
        total = torch.zeros(self.num_members, device=inputs.device)
        for start in range(0, inputs.shape[-2], chunk):
            x, y = inputs[..., start:start + chunk, :], targets[..., start:start + chunk, :]
            mean, _ = self(x)
            total += (mean - y).pow(2).sum(dim=(-2, -1))
        return total / (inputs.shape[-2] * self.out_dim)

    # -- data --------------------------------------------------------------------------------------
    def targets_of(self, obs: Tensor, reward: Tensor, next_obs: Tensor) -> Tensor:
        """Raw regression targets ``(r, s' - s)`` ``(B, 1 + ds)``."""
        return torch.cat([reward.reshape(-1, 1), next_obs - obs], dim=-1)

    @torch.no_grad()
    def fit_scalers(self, inputs: Tensor, targets: Tensor) -> None:
        """Refit the input scaler (and the target scaler if targets are standardised) on the training rows."""
        self.in_mean.copy_(inputs.mean(0))
        std = inputs.std(0, unbiased=False)
        self.in_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))
        if self.standardize_targets:
            self.out_mean.copy_(targets.mean(0))
            std = targets.std(0, unbiased=False)
            self.out_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))

    # -- training ----------------------------------------------------------------------------------
    def fit(
        self,
        inputs: Tensor,
        targets: Tensor,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        batch_size: int = 256,
        holdout_ratio: float = 0.2,
        max_holdout: int = 5000,
        patience: int = 5,
        min_improvement: float = 0.01,
        max_epochs: int | None = None,
    ) -> FitResult:
        """Train on all rows of ``inputs`` ``[s, a]`` ``(N, in)`` and raw ``targets`` ``(r, s' - s)`` ``(N, out)``
        with holdout early stopping and elite selection (module docstring). One host sync per epoch."""
        n = inputs.shape[0]
        dev = inputs.device
        n_hold = min(int(n * holdout_ratio), int(max_holdout))
        perm = torch.randperm(n, generator=generator, device=dev)
        x_tr, y_tr = inputs[perm[n_hold:]], targets[perm[n_hold:]]
        x_ho, y_ho = (inputs[perm[:n_hold]], targets[perm[:n_hold]]) if n_hold > 0 else (x_tr, y_tr)
        self.fit_scalers(x_tr, y_tr)
        y_tr = (y_tr - self.out_mean) / self.out_std
        y_ho = (y_ho - self.out_mean) / self.out_std
        n_tr = x_tr.shape[0]
        e = self.num_members
        boot = torch.randint(n_tr, (e, n_tr), generator=generator, device=dev)  # one bootstrap per member
        linears = list(self.net.linears)
        snapshot = [(lin.weight.detach().clone(), lin.bias.detach().clone()) for lin in linears]
        best = torch.full((e,), 1e10, device=dev)
        since_update, epoch = 0, 0
        train_loss = torch.zeros((), device=dev)
        while True:
            for start in range(0, n_tr, batch_size):
                idx = boot[:, start:start + batch_size]
                loss = self.loss(x_tr[idx], y_tr[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                train_loss = loss.detach()
            epoch += 1
            order = torch.argsort(torch.rand(e, n_tr, generator=generator, device=dev), dim=1)
            boot = boot.gather(1, order)
            hold = self.member_mse(x_ho, y_ho)
            improved = (best - hold) / best > min_improvement
            with torch.no_grad():
                mask = improved.view(e, 1, 1)
                for (w_s, b_s), lin in zip(snapshot, linears):
                    w_s.copy_(torch.where(mask, lin.weight, w_s))
                    b_s.copy_(torch.where(mask, lin.bias, b_s))
            best = torch.where(improved, hold, best)
            since_update = 0 if bool(improved.any()) else since_update + 1
            if since_update > patience or (max_epochs is not None and epoch >= max_epochs):
                break
        with torch.no_grad():
            for (w_s, b_s), lin in zip(snapshot, linears):
                lin.weight.copy_(w_s)
                lin.bias.copy_(b_s)
        hold = self.member_mse(x_ho, y_ho)
        self.elites.copy_(torch.argsort(hold)[: self.num_elites])
        return FitResult(
            holdout_mse=hold[self.elites].mean(),
            member_holdout_mse=hold,
            train_loss=train_loss,
            epochs=epoch,
            num_train=n_tr,
            num_holdout=n_hold,
        )

    # -- prediction --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(
        self,
        obs: Tensor,
        action: Tensor,
        generator: torch.Generator,
        deterministic: bool = False,
        chunk: int = 25_000,
    ) -> tuple[Tensor, Tensor]:
        """One model transition for each row: ``(next_obs (B, ds), reward (B,))``. Each row uses a uniformly
        random elite; a Gaussian model samples ``mean + std * N(0, I)`` unless ``deterministic``. All members are
        evaluated (one batched pass per ``chunk`` rows, as the official code does)."""
        b = obs.shape[0]
        dev = obs.device
        member = self.elites[torch.randint(self.num_elites, (b,), generator=generator, device=dev)]
        outs = []
        for start in range(0, b, chunk):
            x = torch.cat([obs[start:start + chunk], action[start:start + chunk]], dim=-1)
            mean, logvar = self(x)
            rows = torch.arange(x.shape[0], device=dev)
            m = member[start:start + chunk]
            out = mean[m, rows]
            if logvar is not None and not deterministic:
                noise = torch.randn(out.shape, generator=generator, device=dev)
                out = out + noise * torch.exp(0.5 * logvar[m, rows])
            outs.append(out)
        out = torch.cat(outs) * self.out_std + self.out_mean
        return obs + out[:, 1:], out[:, 0]
