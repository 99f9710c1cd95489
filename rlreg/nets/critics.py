"""Q-function ensembles (twin critics, SAC-N/EDAC/RORL ensembles, DroQ dropout critics, SN critics)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .layers import EnsembleMLP, ObsNormalizer, init_bias_, init_last_layer_uniform_, init_weight_fan_out_

__all__ = ["EnsembleCritic", "CRITIC_INITS"]

CRITIC_INITS = ("pytorch", "corl", "rlkit", "xavier")


class EnsembleCritic(nn.Module):
    """``E`` Q-functions ``Q_i(s, a)`` evaluated as one batched module (``E=2`` twin critics, SAC-N up
    to hundreds of members).  Each member is ``[s, a] -> hidden (ReLU) -> 1``.

    ``init``:
      * ``"pytorch"`` - ``nn.Linear`` default per member (TD3+BC / SPOT / A2PR / PRDC / BEER,
        docs/agents/td3bc.md; docs/agents/beer.md).
      * ``"corl"`` - CORL's SAC-N/EDAC critic (tinkoff-ai/CORL @ 6afec90, ``VectorizedCritic``): hidden
        weights ``U(-1/sqrt(out), 1/sqrt(out))`` (its ``VectorizedLinear`` quirk, see
        :func:`~rlreg.nets.layers.init_weight_fan_out_`; the first layer ``[s, a] -> 256`` is ``U(+-1/16)``),
        hidden biases 0.1, output layer weight and bias ``U(-3e-3, 3e-3)``.
      * ``"rlkit"`` - RORL's critic (YangRui2015/RORL @ c604043, ``ParallelizedEnsembleFlattenMLP``): the same
        except hidden weights ``U(-1/sqrt(in), 1/sqrt(in))`` (rlkit ``fanin_init`` on an ``(in, out)`` weight).
      * ``"xavier"`` - ``xavier_uniform(gain=1)`` weights, zero biases (DroQ's REDQ code, docs/agents/droq.md).
    ``last_layer_init=w`` additionally re-draws the output layer ``U(-w, w)`` (SPOT AntMaze 3e-3,
    docs/agents/spot.md).  ``layer_norm``/``dropout`` follow the DroQ block order (docs/agents/droq.md);
    ``spectral_norm`` (bool / ``"all"`` / ``"hidden"``) per docs/agents/mbpo_lipschitz.md.
    ``obs_normalizer`` is applied to ``obs`` before concatenation (RORL ``--norm_input``, 6.2).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_members: int = 2,
        hidden: Sequence[int] = (256, 256),
        *,
        layer_norm: bool = False,
        dropout: float = 0.0,
        spectral_norm: bool | str = False,
        init: str = "pytorch",
        obs_normalizer: ObsNormalizer | None = None,
        last_layer_init: float | None = None,
    ) -> None:
        super().__init__()
        if init not in CRITIC_INITS:
            raise ValueError(f"unknown critic init {init!r}; choose from {CRITIC_INITS}")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.init = init
        self.net = EnsembleMLP(num_members, obs_dim + act_dim, hidden, 1, layer_norm=layer_norm,
                               dropout=dropout, spectral_norm=spectral_norm)
        self.obs_normalizer = obs_normalizer if obs_normalizer is not None else ObsNormalizer()
        lins = list(self.net.linears)
        if init in ("corl", "rlkit"):
            for lin in lins[:-1]:
                if init == "corl":
                    init_weight_fan_out_(lin)
                init_bias_(lin, 0.1)
            init_last_layer_uniform_(lins[-1], 3e-3)
        elif init == "xavier":
            with torch.no_grad():
                for lin in lins:
                    bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))
                    lin.weight.uniform_(-bound, bound)
                    lin.bias.zero_()
        if last_layer_init is not None:
            init_last_layer_uniform_(lins[-1], last_layer_init)
        if spectral_norm:
            # re-warm the power iteration on the final weights
            for lin in lins:
                if lin.spectral_norm:
                    lin._power_iteration(15)

    @property
    def num_members(self) -> int:
        return self.net.num_members

    def _inputs(self, obs: Tensor, action: Tensor) -> Tensor:
        obs = self.obs_normalizer(obs)
        if obs.dim() != action.dim():
            if obs.dim() == 2:
                obs = obs.expand(action.shape[0], *obs.shape)
            else:
                action = action.expand(obs.shape[0], *action.shape)
        return torch.cat([obs, action], dim=-1)

    def forward(self, obs: Tensor, action: Tensor, members: int | slice | None = None) -> Tensor:
        """``obs`` ``(B, ds)`` or ``(E, B, ds)``, ``action`` ``(B, da)`` or ``(E, B, da)`` -> ``(E, B)``.

        ``members`` (int or slice) evaluates only those members, e.g. ``critic(s, a, members=0)``
        gives TD3's ``Q1`` as shape ``(1, B)`` at half the cost.
        """
        return self.net(self._inputs(obs, action), members).squeeze(-1)

    def q_and_features(self, obs: Tensor, action: Tensor, members: int | slice | None = None) -> tuple[Tensor, Tensor]:
        """``(Q (E, B), phi (E, B, H))`` with ``phi`` the last post-activation hidden layer
        (BEER's feature map, docs/agents/beer.md)."""
        q, phi = self.net(self._inputs(obs, action), members, return_features=True)
        return q.squeeze(-1), phi
