"""Building blocks shared by every rlreg network.

* :func:`mlp` - plain ``nn.Sequential`` MLP (DroQ block order Linear -> Dropout -> LayerNorm -> act,
  docs/agents/droq.md; SPOT actor Linear -> Dropout -> ReLU, docs/agents/spot.md).
* :class:`EnsembleLinear` / :class:`EnsembleMLP` - E independent MLPs evaluated with one
  ``baddbmm`` per layer (vectorised critics of SAC-N / EDAC / RORL, docs/agents/edac.md).
* :func:`polyak_update_` - fused target-network update.
* :class:`ObsNormalizer` / :class:`RunningNormalizer` - in-network state normalisation (RORL
  ``--norm_input``, docs/agents/rorl.md).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "mlp",
    "EnsembleLinear",
    "EnsembleLayerNorm",
    "EnsembleMLP",
    "EnsembleResidualBlock",
    "polyak_update_",
    "hard_update_",
    "init_last_layer_uniform_",
    "init_bias_",
    "init_weight_fan_out_",
    "ObsNormalizer",
    "RunningNormalizer",
]


# ----------------------------------------------------------------------------------------------
# plain MLP
# ----------------------------------------------------------------------------------------------
def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    activation: type[nn.Module] = nn.ReLU,
    layer_norm: bool = False,
    dropout: float = 0.0,
    spectral_norm: bool = False,
    output_activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    """Plain MLP ``in -> hidden... -> out``.

    Hidden block order: ``Linear -> Dropout(p) (p > 0) -> LayerNorm (if on) -> activation`` (DroQ,
    docs/agents/droq.md; with LayerNorm off this is SPOT's actor block, docs/agents/spot.md).
    ``spectral_norm=True`` wraps every Linear (output layer included) in
    ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training forward,
    docs/agents/mbpo_lipschitz.md).  PyTorch default initialisation.
    """
    layers: list[nn.Module] = []
    d = in_dim
    dims = list(hidden) + [out_dim]
    for i, h in enumerate(dims):
        lin: nn.Module = nn.Linear(d, h)
        if spectral_norm:
            lin = nn.utils.parametrizations.spectral_norm(lin)
        layers.append(lin)
        if i < len(dims) - 1:
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(activation())
        d = h
    if output_activation is not None:
        layers.append(output_activation())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------
# ensemble layers
# ----------------------------------------------------------------------------------------------
def _as_slice(members: int | slice | None) -> slice | None:
    if members is None or isinstance(members, slice):
        return members
    return slice(int(members), int(members) + 1)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated as one batched matmul.

    ``weight``: ``(E, in, out)``, ``bias``: ``(E, 1, out)``; ``forward(x)`` with ``x`` of shape
    ``(E, B, in)`` returns ``baddbmm(bias, x, weight)`` of shape ``(E, B, out)``.  A 2-D input
    ``(B, in)`` is shared by all members (stride-0 expand, no copy).

    Default init is, per member, exactly ``nn.Linear``'s (kaiming_uniform a=sqrt(5), i.e.
    ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and bias), the convention of rlkit's ensembles (RORL's
    ``ParallelizedEnsembleFlattenMLP``). It is *not* what CORL's ``VectorizedLinear`` draws
    (tinkoff-ai/CORL @ 6afec90, ``algorithms/offline/sac_n.py`` and ``edac.py``, ``reset_parameters``): CORL
    calls ``kaiming_uniform_`` on each member's ``(in, out)`` slice, for which PyTorch takes
    ``fan_in = out``, so its weights are ``U(-1/sqrt(out), 1/sqrt(out))``; see :func:`init_weight_fan_out_`
    and ``EnsembleCritic(init="corl")``.

    ``spectral_norm=True``: each member's weight is divided by its largest singular value, estimated
    by batched power iteration with the semantics of
    ``torch.nn.utils.parametrizations.spectral_norm(n_power_iterations=1)`` applied per member
    (15 warm-up iterations at construction, one iteration per training-mode forward, stored ``u``/``v``
    reused without iterating in eval mode, gradient flows through ``sigma = u^T W v`` with ``u, v``
    constant). ``sn_scale=c`` multiplies the normalised weight: ``c * W / sigma``, a layer of Lipschitz constant c
    (docs/agents/mbpo_lipschitz.md).
    """

    def __init__(
        self,
        num_members: int,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        spectral_norm: bool = False,
        sn_eps: float = 1e-12,
        sn_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_members = num_members
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_members, 1, out_features))
        else:
            self.register_parameter("bias", None)
        self.spectral_norm = bool(spectral_norm)
        self.sn_eps = sn_eps
        self.sn_scale = float(sn_scale)
        self.reset_parameters()
        if self.spectral_norm:
            u = F.normalize(torch.randn(num_members, out_features), dim=-1, eps=sn_eps)
            v = F.normalize(torch.randn(num_members, in_features), dim=-1, eps=sn_eps)
            self.register_buffer("sn_u", u)
            self.register_buffer("sn_v", v)
            self._power_iteration(15)

    def reset_parameters(self) -> None:
        """``nn.Linear`` default init, per member."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    # --- spectral norm --------------------------------------------------------------------------
    @torch.no_grad()
    def _power_iteration(self, n: int) -> None:
        # member weight matrix in nn.Linear layout is W_e = weight[e].T  (out, in)
        w = self.weight.detach()
        u, v = self.sn_u, self.sn_v
        for _ in range(n):  # same order as torch: u <- W v / |W v|, then v <- W^T u / |W^T u|
            u = F.normalize(torch.bmm(v.unsqueeze(1), w).squeeze(1), dim=-1, eps=self.sn_eps)  # W v
            v = F.normalize(torch.bmm(w, u.unsqueeze(-1)).squeeze(-1), dim=-1, eps=self.sn_eps)  # W^T u
        self.sn_u.copy_(u)
        self.sn_v.copy_(v)

    def sigma(self) -> Tensor:
        """Current spectral-norm estimate per member, shape ``(E,)`` (``u^T W v``)."""
        u, v = self.sn_u.clone(), self.sn_v.clone()
        return (torch.bmm(v.unsqueeze(1), self.weight).squeeze(1) * u).sum(-1)

    def effective_weight(self) -> Tensor:
        """Weight used in the forward pass (``sn_scale * weight / sigma`` under spectral norm)."""
        if not self.spectral_norm:
            return self.weight
        if self.training:
            self._power_iteration(1)
        if self.sn_scale != 1.0:
            return self.weight * (self.sn_scale / self.sigma()).view(-1, 1, 1)
        return self.weight / self.sigma().view(-1, 1, 1)

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor, members: int | slice | None = None) -> Tensor:
        """``x``: ``(E, B, in)`` (or ``(B, in)`` shared by all members) -> ``(E, B, out)``.

        ``members`` (int or slice) evaluates only those members (parameter views, gradients flow).
        """
        w = self.effective_weight()
        b = self.bias
        sl = _as_slice(members)
        if sl is not None:
            w = w[sl]
            b = b[sl] if b is not None else None
        e = w.shape[0]
        if x.dim() == 2:
            # shared input: a stride-0 expand is as fast as one wide GEMM and keeps (E, B, out) contiguous
            x = x.expand(e, *x.shape)
        if b is None:
            return torch.bmm(x, w)
        return torch.baddbmm(b, x, w)

    def extra_repr(self) -> str:
        return (f"num_members={self.num_members}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}, "
                f"spectral_norm={self.spectral_norm}" + (f", sn_scale={self.sn_scale}" if self.sn_scale != 1.0 else ""))


class EnsembleLayerNorm(nn.Module):
    """Per-member LayerNorm over the last dim: ``F.layer_norm`` without affine, then
    ``x * weight + bias`` with member-specific ``weight``/``bias`` of shape ``(E, 1, H)``
    (init 1 / 0 like ``nn.LayerNorm``)."""

    def __init__(self, num_members: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, dim))

    def forward(self, x: Tensor, members: int | slice | None = None) -> Tensor:
        w, b = self.weight, self.bias
        sl = _as_slice(members)
        if sl is not None:
            w, b = w[sl], b[sl]
        return torch.addcmul(b, F.layer_norm(x, (self.dim,), eps=self.eps), w)


class EnsembleMLP(nn.Module):
    """``E`` independent MLPs ``in -> hidden... -> out`` evaluated with one batched matmul per layer.

    Hidden block: ``EnsembleLinear -> Dropout(p) -> EnsembleLayerNorm -> activation`` (same order as
    :func:`mlp`).  Dropout masks are drawn independently per member and element.
    ``spectral_norm``: ``True``/``"all"`` = every layer, ``"hidden"`` = all but the output layer
    (docs/agents/mbpo_lipschitz.md ``sn_layers`` switch), ``False`` = none; ``spectral_norm_scale=c`` makes each
    normalised layer c-Lipschitz (``c * W / sigma``), so the network is at most ``c^L``-Lipschitz over its L
    normalised layers.
    """

    def __init__(
        self,
        num_members: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        layer_norm: bool = False,
        dropout: float = 0.0,
        spectral_norm: bool | str = False,
        spectral_norm_scale: float = 1.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if spectral_norm not in (True, False, "all", "hidden", "none"):
            raise ValueError(f"spectral_norm must be bool, 'all', 'hidden' or 'none', got {spectral_norm!r}")
        sn_hidden = spectral_norm in (True, "all", "hidden")
        sn_out = spectral_norm in (True, "all")
        self.num_members = num_members
        self.in_dim = in_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.out_dim = out_dim
        self.layer_norm = layer_norm
        self.dropout = float(dropout)
        self.activation_cls = activation
        self.act = activation()
        self._relu = activation is nn.ReLU
        dims = [in_dim, *self.hidden, out_dim]
        self.linears = nn.ModuleList(
            EnsembleLinear(num_members, dims[i], dims[i + 1],
                           spectral_norm=sn_hidden if i < len(dims) - 2 else sn_out, sn_scale=spectral_norm_scale)
            for i in range(len(dims) - 1)
        )
        self.norms = nn.ModuleList(EnsembleLayerNorm(num_members, h) for h in self.hidden) if layer_norm else None

    def forward(self, x: Tensor, members: int | slice | None = None, return_features: bool = False):
        """``x``: ``(B, in)`` broadcast to all members or ``(E, B, in)``; returns ``(E, B, out)``.

        ``members`` restricts evaluation to one member (int) or a slice (e.g. TD3's Q1 only).
        ``return_features=True`` returns ``(out, phi)`` with ``phi`` the last hidden activation
        ``(E, B, H)`` (BEER's feature map, docs/agents/beer.md).
        """
        h = x
        n_hidden = len(self.hidden)
        for i, lin in enumerate(self.linears):
            h = lin(h, members)
            if i < n_hidden:
                if self.dropout > 0.0 and self.training:
                    h = F.dropout(h, self.dropout, True)
                if self.norms is not None:
                    h = self.norms[i](h, members)
                if self._relu:
                    h = torch.relu_(h)
                else:
                    h = self.act(h)
                phi = h
        if return_features:
            return h, (phi if n_hidden > 0 else x)
        return h

    @torch.no_grad()
    def member(self, i: int) -> nn.Sequential:
        """Export member ``i`` as a plain :func:`mlp` with copied weights (spectral norm is baked in:
        the exported Linear holds the current effective weight ``W / sigma``)."""
        was_training = self.training
        net = mlp(self.in_dim, self.hidden, self.out_dim, activation=self.activation_cls,
                  layer_norm=self.layer_norm, dropout=self.dropout)
        lins = [m for m in net if isinstance(m, nn.Linear)]
        lns = [m for m in net if isinstance(m, nn.LayerNorm)]
        self.eval()
        for lin, el in zip(lins, self.linears):
            lin.weight.copy_(el.effective_weight()[i].T)
            lin.bias.copy_(el.bias[i, 0])
        if self.norms is not None:
            for ln, en in zip(lns, self.norms):
                ln.weight.copy_(en.weight[i, 0])
                ln.bias.copy_(en.bias[i, 0])
        self.train(was_training)
        net.train(was_training)
        return net

    @torch.no_grad()
    def load_member_(self, i: int, net: nn.Sequential) -> None:
        """Copy the weights of a plain :func:`mlp` (same architecture) into member ``i``."""
        lins = [m for m in net if isinstance(m, nn.Linear)]
        lns = [m for m in net if isinstance(m, nn.LayerNorm)]
        assert len(lins) == len(self.linears)
        for lin, el in zip(lins, self.linears):
            el.weight[i].copy_(lin.weight.T)
            el.bias[i, 0].copy_(lin.bias)
        if self.norms is not None:
            for ln, en in zip(lns, self.norms):
                en.weight[i, 0].copy_(ln.weight)
                en.bias[i, 0].copy_(ln.bias)


class EnsembleResidualBlock(nn.Module):
    """``E`` residual blocks ``h + f(h)`` with ``f = Linear -> ReLU -> Linear [-> ReLU]``, one batched
    matmul per layer (the width is kept: ``(E, B, H) -> (E, B, H)``).

    ``final_activation=False`` is Acme's ``LayerNormAndResidualMLP`` block (``snt.nets.MLP([H, H])`` has no
    final activation; DecQN, tseyde/decqn@2309e0b ``agents/dqn/networks.py``); ``True`` is REValueD's
    ``VectorisedMLPResidualLayer`` (ReLU after both layers, davidireland3/REValueD@2e811a5
    ``revalued/networks/layers.py``). The LayerNorm that both apply after the sum is left to the caller
    (REValueD shares one across members).
    """

    def __init__(self, num_members: int, dim: int, *, final_activation: bool) -> None:
        super().__init__()
        self.fc1 = EnsembleLinear(num_members, dim, dim)
        self.fc2 = EnsembleLinear(num_members, dim, dim)
        self.final_activation = bool(final_activation)

    def forward(self, h: Tensor, members: int | slice | None = None) -> Tensor:
        r = self.fc2(torch.relu(self.fc1(h, members)), members)
        if self.final_activation:
            r = torch.relu(r)
        return h + r


# ----------------------------------------------------------------------------------------------
# target updates, init helpers
# ----------------------------------------------------------------------------------------------
def polyak_update_(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` for all tensors, one fused ``_foreach_lerp_``."""
    t = [p.data if isinstance(p, nn.Parameter) else p for p in target]
    o = [p.data if isinstance(p, nn.Parameter) else p for p in online]
    if len(t) != len(o):
        raise ValueError(f"polyak_update_: {len(t)} target tensors vs {len(o)} online tensors")
    if not t:
        return
    with torch.no_grad():
        torch._foreach_lerp_(t, o, float(tau))


def hard_update_(target: Iterable[Tensor], online: Iterable[Tensor]) -> None:
    """``target <- online`` (hard copy, e.g. DecQN every 100 steps)."""
    with torch.no_grad():
        torch._foreach_copy_([p.data for p in target], [p.data for p in online])


def init_last_layer_uniform_(layer: nn.Module, bound: float) -> nn.Module:
    """``U(-bound, bound)`` on weight and bias (CORL SAC-N/EDAC 3e-3 critic, 1e-3 actor heads,
    docs/agents/sacn.md; SPOT AntMaze ``init_w``, docs/agents/spot.md).  Works for ``nn.Linear`` and
    :class:`EnsembleLinear`."""
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        if getattr(layer, "bias", None) is not None:
            layer.bias.uniform_(-bound, bound)
    return layer


def init_weight_fan_out_(layer: nn.Module) -> nn.Module:
    """Weight ``U(-1/sqrt(out), 1/sqrt(out))`` with ``out`` the layer's output width (bias untouched).

    Two official codebases draw this instead of ``nn.Linear``'s ``1/sqrt(in)``, each by applying a fan-in
    rule to a weight stored the other way round: CORL's ``VectorizedLinear`` (``kaiming_uniform_`` on an
    ``(in, out)`` slice; tinkoff-ai/CORL @ 6afec90, SAC-N/EDAC critics) and rlkit's ``fanin_init`` on an
    ``nn.Linear`` weight of shape ``(out, in)`` (YangRui2015/RORL @ c604043, ``lifelong_rl/models/networks.py``
    ``Mlp``, the RORL policy). Works for ``nn.Linear`` and :class:`EnsembleLinear`."""
    out = layer.weight.shape[0] if isinstance(layer, nn.Linear) else layer.weight.shape[-1]
    bound = 1.0 / math.sqrt(out)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
    return layer


def init_bias_(layer: nn.Module, value: float) -> nn.Module:
    """Fill the bias with a constant (rlkit / CORL hidden bias 0.1, docs/agents/sacn.md)."""
    with torch.no_grad():
        if getattr(layer, "bias", None) is not None:
            layer.bias.fill_(value)
    return layer


# ----------------------------------------------------------------------------------------------
# observation normalisation inside networks
# ----------------------------------------------------------------------------------------------
class ObsNormalizer(nn.Module):
    """``forward(x) = (x - mean) / std`` with float32 buffers; identity while ``mean``/``std`` are None.

    RORL normalises inside both networks with ``(s - mu_D) / (sd_D + 1e-6)`` (docs/agents/rorl.md): the
    caller passes ``std = sd + 1e-6``.  Buffers travel with ``state_dict``/``deepcopy``.
    """

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)
        if mean is not None or std is not None:
            self.set_stats(mean, std)

    @torch.no_grad()
    def set_stats(self, mean, std) -> None:
        if mean is None or std is None:
            raise ValueError("ObsNormalizer.set_stats needs both mean and std")
        self.mean = torch.as_tensor(mean, dtype=torch.float32).clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).clone()

    @property
    def active(self) -> bool:
        return self.mean is not None and self.std is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean) / self.std

    def unnormalize(self, x: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            return x
        return x * self.std + self.mean


class RunningNormalizer(ObsNormalizer):
    """:class:`ObsNormalizer` whose statistics are running estimates updated with :meth:`update`
    (parallel Welford / Chan merge); ``std = sqrt(var) + eps``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(torch.zeros(dim), torch.ones(dim))
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("_m", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("_m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = torch.as_tensor(x).reshape(-1, self._m.numel()).to(torch.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count.item()
        n = n_a + n_b
        delta = mean_b - self._m
        self._m += delta * (n_b / n)
        self._m2 += m2_b + delta.pow(2) * (n_a * n_b / n)
        self.count.fill_(n)
        var = self._m2 / max(n, 1.0)
        self.mean.copy_(self._m.to(torch.float32))
        self.std.copy_((var.sqrt() + self.eps).to(torch.float32))
