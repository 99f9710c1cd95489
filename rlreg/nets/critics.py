"""Q-function ensembles (twin critics, SAC-N/EDAC/RORL ensembles, DroQ dropout critics, SN critics)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

import torch.nn.functional as F

from .layers import (
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    EnsembleResidualBlock,
    ObsNormalizer,
    init_bias_,
    init_last_layer_uniform_,
    init_weight_fan_out_,
)

__all__ = ["EnsembleCritic", "CRITIC_INITS", "DecoupledQEnsemble", "DECOUPLED_ARCHS"]

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
    ``spectral_norm`` (bool / ``"all"`` / ``"hidden"``) and its per-layer scale ``spectral_norm_scale`` per
    docs/agents/mbpo_lipschitz.md.
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
        spectral_norm_scale: float = 1.0,
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
                               dropout=dropout, spectral_norm=spectral_norm,
                               spectral_norm_scale=spectral_norm_scale)
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


DECOUPLED_ARCHS = ("acme", "revalued")


class DecoupledQEnsemble(nn.Module):
    """``K`` value-decomposition critics (DecQN / REValueD, docs/agents/revalued.md) as one batched module:
    ``forward(s) -> U`` of shape ``(K, B, N, n_max)``, the utility ``U_{k,i}(s, b)`` of bin ``b`` of action
    dimension ``i`` for member ``k``. ``Q_k(s, a) = mean_i U_{k,i}(s, a_i)``. Padded bins are not masked
    here (the learner adds its action spec's mask).

    Both architectures are ``Linear(d_s -> H)``, one residual block of two ``H x H`` layers, a LayerNorm
    after the residual sum, and one linear head per dimension (all heads of a member are one
    ``H -> N * n_max`` matmul, which is the same function as ``N`` separate ``H -> n_max`` heads):

    * ``arch="acme"`` (DecQN, tseyde/decqn@2309e0b ``agents/dqn/networks.py`` with Acme's
      ``LayerNormAndResidualMLP(H, num_blocks=1)``): ``h = LN(h0 + W2 relu(W1 h0))``, then ELU, then the
      heads; weights ``U(+-sqrt(0.999 / fan_out))`` (VarianceScaling(0.333, fan_out, uniform)), zero biases;
      LayerNorm per member (each DecQN critic is a separate network).
    * ``arch="revalued"`` (davidireland3/REValueD@2e811a5 ``revalued/networks/q_networks.py``
      ``EnsembleDecoupledQNetwork``): ``h = LN(h0 + relu(W2 relu(W1 h0)))``, no activation before the heads;
      ``nn.Linear``-style ``U(+-1/sqrt(fan_in))`` weights and biases; ``shared_layer_norm=True`` uses ONE
      LayerNorm module for all members, as the official code does.
    """

    def __init__(
        self,
        obs_dim: int,
        num_dims: int,
        max_bins: int,
        num_members: int = 2,
        hidden: int = 512,
        *,
        arch: str = "acme",
        shared_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if arch not in DECOUPLED_ARCHS:
            raise ValueError(f"unknown decoupled critic arch {arch!r}; choose from {DECOUPLED_ARCHS}")
        self.obs_dim, self.num_dims, self.max_bins = obs_dim, num_dims, max_bins
        self.num_members, self.hidden, self.arch = num_members, hidden, arch
        self.shared_layer_norm = bool(shared_layer_norm)
        self.inp = EnsembleLinear(num_members, obs_dim, hidden)
        self.block = EnsembleResidualBlock(num_members, hidden, final_activation=arch == "revalued")
        self.norm: nn.Module = nn.LayerNorm(hidden) if shared_layer_norm else EnsembleLayerNorm(num_members, hidden)
        self.head = EnsembleLinear(num_members, hidden, num_dims * max_bins)
        if arch == "acme":
            with torch.no_grad():
                for lin in (self.inp, self.block.fc1, self.block.fc2, self.head):
                    bound = math.sqrt(3.0 * 0.333 / lin.out_features)
                    lin.weight.uniform_(-bound, bound)
                    lin.bias.zero_()

    def forward(self, obs: Tensor, members: int | slice | None = None) -> Tensor:
        """``obs`` ``(B, d_s)`` (shared by the members) or ``(K, B, d_s)`` -> ``(K, B, N, n_max)``."""
        h = self.block(self.inp(obs, members), members)
        h = self.norm(h) if self.shared_layer_norm else self.norm(h, members)
        if self.arch == "acme":
            h = F.elu(h)
        u = self.head(h, members)
        return u.view(*u.shape[:-1], self.num_dims, self.max_bins)
