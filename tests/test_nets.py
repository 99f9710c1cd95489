"""Tests for rlreg.nets (layers, critics, actors, VAE)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from rlreg.nets import (
    ConditionalVAE,
    DeterministicActor,
    EnsembleCritic,
    EnsembleLinear,
    EnsembleMLP,
    ObsNormalizer,
    RunningNormalizer,
    TanhGaussianActor,
    gaussian_kl,
    init_last_layer_uniform_,
    mlp,
    polyak_update_,
)

torch.set_num_threads(2)


def _randomize_(module: nn.Module, gen: torch.Generator) -> None:
    """Give every parameter (incl. LayerNorm affine) non-trivial random values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _copy_into_ensemble(ens: EnsembleMLP, nets: list[nn.Sequential]) -> None:
    with torch.no_grad():
        for i, net in enumerate(nets):
            lins = [m for m in net if isinstance(m, nn.Linear)]
            lns = [m for m in net if isinstance(m, nn.LayerNorm)]
            for lin, el in zip(lins, ens.linears):
                el.weight[i].copy_(lin.weight.T)
                el.bias[i, 0].copy_(lin.bias)
            if ens.norms is not None:
                for ln, en in zip(lns, ens.norms):
                    en.weight[i, 0].copy_(ln.weight)
                    en.bias[i, 0].copy_(ln.bias)


def _ensemble_grads(ens: EnsembleMLP, i: int) -> list[torch.Tensor]:
    g = []
    for el, k in zip(ens.linears, range(len(ens.linears))):
        g += [el.weight.grad[i].T, el.bias.grad[i, 0]]
        if ens.norms is not None and k < len(ens.norms):
            g += [ens.norms[k].weight.grad[i, 0], ens.norms[k].bias.grad[i, 0]]
    return g


def _seq_grads(net: nn.Sequential) -> list[torch.Tensor]:
    g = []
    mods = list(net)
    for j, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            g += [m.weight.grad, m.bias.grad]
            nxt = [x for x in mods[j + 1:j + 3] if isinstance(x, nn.LayerNorm)]
            if nxt:
                g += [nxt[0].weight.grad, nxt[0].bias.grad]
    return g


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------
def test_mlp_block_order():
    net = mlp(5, (8, 8), 2, layer_norm=True, dropout=0.1, output_activation=nn.Tanh)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.Dropout, nn.LayerNorm, nn.ReLU,
                     nn.Linear, nn.Dropout, nn.LayerNorm, nn.ReLU, nn.Linear, nn.Tanh]
    spot = mlp(5, (8, 8), 2, dropout=0.1)
    assert [type(m) for m in spot][:3] == [nn.Linear, nn.Dropout, nn.ReLU]


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("per_member_input", [False, True])
def test_ensemble_mlp_matches_separate_mlps(layer_norm, per_member_input):
    gen = torch.Generator().manual_seed(0)
    E, B, D, H, O = 4, 7, 5, (16, 12), 3
    nets = [mlp(D, H, O, layer_norm=layer_norm) for _ in range(E)]
    for n in nets:
        _randomize_(n, gen)
    ens = EnsembleMLP(E, D, H, O, layer_norm=layer_norm)
    _copy_into_ensemble(ens, nets)

    shape = (E, B, D) if per_member_input else (B, D)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    xs_ref = [x_ref[i] for i in range(E)] if per_member_input else [x_ref] * E

    out = ens(x)
    assert out.shape == (E, B, O)
    ref = torch.stack([n(xi) for n, xi in zip(nets, xs_ref)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    w = torch.randn(E, B, O, generator=gen)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for i, n in enumerate(nets):
        for ge, gr in zip(_ensemble_grads(ens, i), _seq_grads(n)):
            torch.testing.assert_close(ge, gr, rtol=1e-5, atol=1e-5)


def test_ensemble_member_export_and_subset():
    gen = torch.Generator().manual_seed(1)
    ens = EnsembleMLP(3, 4, (8, 8), 2, layer_norm=True)
    _randomize_(ens, gen)
    x = torch.randn(5, 4, generator=gen)
    full = ens(x)
    for i in range(3):
        torch.testing.assert_close(ens.member(i)(x), full[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ens(x, members=i)[0], full[i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ens(x, members=slice(1, 3)), full[1:], rtol=1e-5, atol=1e-6)
    # load_member_ round trip
    other = EnsembleMLP(3, 4, (8, 8), 2, layer_norm=True)
    for i in range(3):
        other.load_member_(i, ens.member(i))
    torch.testing.assert_close(other(x), full, rtol=1e-5, atol=1e-6)


def test_ensemble_linear_default_init_matches_nn_linear():
    E, din, dout = 64, 50, 40
    lin = EnsembleLinear(E, din, dout)
    bound = 1.0 / math.sqrt(din)
    assert lin.weight.shape == (E, din, dout) and lin.bias.shape == (E, 1, dout)
    for p in (lin.weight, lin.bias):
        assert p.abs().max() <= bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    ref = nn.Linear(din, dout)
    assert ref.weight.abs().max() <= bound  # same distribution as nn.Linear
    # members are independent draws
    assert not torch.allclose(lin.weight[0], lin.weight[1])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_critic_matches_separate_mlps(layer_norm):
    gen = torch.Generator().manual_seed(2)
    E, B, ds, da = 5, 9, 6, 3
    critic = EnsembleCritic(ds, da, E, (16, 16), layer_norm=layer_norm)
    nets = [mlp(ds + da, (16, 16), 1, layer_norm=layer_norm) for _ in range(E)]
    for n in nets:
        _randomize_(n, gen)
    _copy_into_ensemble(critic.net, nets)
    obs = torch.randn(B, ds, generator=gen)
    act = torch.randn(B, da, generator=gen, requires_grad=True)
    q = critic(obs, act)
    assert q.shape == (E, B)
    act_ref = act.detach().clone().requires_grad_(True)
    q_ref = torch.stack([n(torch.cat([obs, act_ref], -1)).squeeze(-1) for n in nets])
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-5)
    # per-member action gradients (EDAC diversity term needs these)
    g = torch.autograd.grad(q.sum(), act)[0]
    g_ref = torch.autograd.grad(q_ref.sum(), act_ref)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    # per-member inputs (E, B, .) and mixed shapes
    obs_e = torch.randn(E, B, ds, generator=gen)
    act_e = torch.randn(E, B, da, generator=gen)
    q_e = critic(obs_e, act_e)
    q_e_ref = torch.stack([n(torch.cat([obs_e[i], act_e[i]], -1)).squeeze(-1) for i, n in enumerate(nets)])
    torch.testing.assert_close(q_e, q_e_ref, rtol=1e-5, atol=1e-5)
    q_mix = critic(obs, act_e)
    q_mix_ref = torch.stack([n(torch.cat([obs, act_e[i]], -1)).squeeze(-1) for i, n in enumerate(nets)])
    torch.testing.assert_close(q_mix, q_mix_ref, rtol=1e-5, atol=1e-5)
    # Q1 only
    torch.testing.assert_close(critic(obs, act, members=0), q[:1], rtol=1e-6, atol=1e-6)
    qf, phi = critic.q_and_features(obs, act)
    assert phi.shape == (E, B, 16) and (phi >= 0).all()
    torch.testing.assert_close(qf, q, rtol=1e-6, atol=1e-6)


def _assert_uniform_bound(w: torch.Tensor, bound: float, what: str) -> None:
    """``w`` was drawn from U(-bound, bound): inside the bound and filling it (thousands of draws)."""
    m = w.abs().max().item()
    assert 0.95 * bound < m <= bound, f"{what}: max |w| = {m:.4f}, expected U(+-{bound:.4f})"


def test_critic_inits_bound_each_layer_like_its_codebase():
    torch.manual_seed(0)
    # what CORL's VectorizedLinear.reset_parameters does to one member's (in, out) slice: fan_in = out
    official = torch.empty(14, 32)
    nn.init.kaiming_uniform_(official, a=math.sqrt(5))
    _assert_uniform_bound(official, 1 / math.sqrt(32), "kaiming_uniform_ on an (in, out) slice")
    # widths all different so U(+-1/sqrt(in)) and U(+-1/sqrt(out)) differ on every hidden layer
    ds, da, hidden = 10, 4, (32, 64, 16)
    dims = [ds + da, *hidden]
    corl = EnsembleCritic(ds, da, 7, hidden, init="corl")
    rlkit = EnsembleCritic(ds, da, 7, hidden, init="rlkit")
    for c, fan in ((corl, "out"), (rlkit, "in")):
        lins = list(c.net.linears)
        for i, lin in enumerate(lins[:-1]):
            # CORL's VectorizedLinear: kaiming on an (in, out) slice -> fan_in = out; rlkit: fanin_init on (in, out)
            n = dims[i + 1] if fan == "out" else dims[i]
            _assert_uniform_bound(lin.weight, 1 / math.sqrt(n), f"{c.init} layer {i}")
            assert torch.all(lin.bias == 0.1)
        _assert_uniform_bound(lins[-1].weight, 3e-3, f"{c.init} head")
        assert lins[-1].bias.abs().max() <= 3e-3
    # the first layer [s, a] -> 256 of the paper's SAC-N critic: U(+-1/16) with CORL's draw, U(+-1/sqrt(in)) rlkit's
    _assert_uniform_bound(EnsembleCritic(17, 6, 2, (256, 256), init="corl").net.linears[0].weight, 1 / 16, "corl")
    _assert_uniform_bound(EnsembleCritic(17, 6, 2, (256, 256), init="rlkit").net.linears[0].weight,
                          1 / math.sqrt(23), "rlkit")
    c2 = EnsembleCritic(10, 4, 2, (32, 32), last_layer_init=3e-3)
    assert c2.net.linears[-1].weight.abs().max() <= 3e-3
    c3 = EnsembleCritic(10, 4, 2, (32, 32), init="xavier")
    assert torch.all(c3.net.linears[0].bias == 0)
    assert c3.net.linears[0].weight.abs().max() <= math.sqrt(6 / (14 + 32))
    assert corl.num_members == 7
    with pytest.raises(ValueError, match="unknown critic init 'sacn'"):
        EnsembleCritic(10, 4, 2, (8,), init="sacn")


def test_actor_inits_bound_each_layer_like_its_codebase():
    torch.manual_seed(0)
    ds, hidden = 17, (64, 32, 48)
    dims = [ds, *hidden]
    for init, fan in (("corl", "in"), ("rlkit", "out")):
        actor = TanhGaussianActor(ds, 6, hidden, init=init)
        lins = [m for m in actor.trunk if isinstance(m, nn.Linear)]
        assert len(lins) == 3
        for i, lin in enumerate(lins):
            # CORL: nn.Linear default (1/sqrt(in)); RORL: rlkit fanin_init on the (out, in) weight -> 1/sqrt(out)
            n = dims[i] if fan == "in" else dims[i + 1]
            _assert_uniform_bound(lin.weight, 1 / math.sqrt(n), f"{init} actor layer {i}")
            assert torch.all(lin.bias == 0.1)
        for head in (actor.mean_head, actor.log_std_head):
            _assert_uniform_bound(head.weight, 1e-3, f"{init} head")
            assert head.bias.abs().max() <= 1e-3
    # the paper's first policy layer (17 -> 256): U(+-1/16) in RORL's code
    first = TanhGaussianActor(17, 6, (256, 256, 256), init="rlkit").trunk[0]
    _assert_uniform_bound(first.weight, 1 / 16, "rlkit first layer")


def test_obs_normalizer_inside_critic_and_running():
    gen = torch.Generator().manual_seed(3)
    mean, std = torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.5
    norm = ObsNormalizer(mean, std + 1e-6)
    c = EnsembleCritic(6, 2, 3, (8,), obs_normalizer=norm)
    c_plain = copy.deepcopy(c)
    c_plain.obs_normalizer = ObsNormalizer()
    obs, act = torch.randn(4, 6, generator=gen), torch.randn(4, 2, generator=gen)
    torch.testing.assert_close(c(obs, act), c_plain((obs - mean) / (std + 1e-6), act))
    assert "obs_normalizer.mean" in c.state_dict()
    x = torch.randn(5, 3)
    assert torch.equal(ObsNormalizer()(x), x)

    data = np.random.default_rng(0).normal(2.0, 3.0, size=(1000, 4)).astype(np.float32)
    rn = RunningNormalizer(4, eps=0.0)
    for chunk in np.array_split(data, 7):
        rn.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(rn.mean.numpy(), data.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rn.std.numpy(), data.std(0), rtol=1e-5, atol=1e-5)


def test_polyak_update_matches_formula():
    gen = torch.Generator().manual_seed(4)
    online = EnsembleCritic(5, 2, 3, (8, 8))
    target = copy.deepcopy(online)
    _randomize_(online, gen)
    before = [p.detach().clone() for p in target.parameters()]
    tau = 0.005
    polyak_update_(target.parameters(), online.parameters(), tau)
    for t0, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, (1 - tau) * t0 + tau * o.detach(), rtol=1e-6, atol=1e-7)
        assert not t.requires_grad or t.grad is None
    polyak_update_(target.parameters(), online.parameters(), 1.0)
    for t, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(t, o.detach())


# --------------------------------------------------------------------------------------------------
# spectral norm
# --------------------------------------------------------------------------------------------------
def test_spectral_norm_top_singular_value():
    torch.manual_seed(5)
    ens = EnsembleMLP(4, 12, (32, 32), 1, spectral_norm=True)
    with torch.no_grad():
        for lin in ens.linears:
            lin.weight.mul_(5.0)
    x = torch.randn(16, 12)
    ens.train()
    for _ in range(100):
        ens(x)
    for lin in ens.linears:
        w = lin.effective_weight()
        s = torch.linalg.matrix_norm(w.detach(), ord=2)
        torch.testing.assert_close(s, torch.ones(4), rtol=5e-3, atol=5e-3)
    # eval mode: stored u/v are not iterated
    ens.eval()
    u0 = ens.linears[0].sn_u.clone()
    ens(x)
    assert torch.equal(ens.linears[0].sn_u, u0)
    # "hidden" switch leaves the output layer unnormalised
    ens_h = EnsembleMLP(2, 3, (8,), 1, spectral_norm="hidden")
    assert ens_h.linears[0].spectral_norm and not ens_h.linears[1].spectral_norm
    # scale c: every normalised layer has largest singular value c, so the output moves c^3 times as far
    scaled = EnsembleMLP(4, 12, (32, 32), 1, spectral_norm=True, spectral_norm_scale=3.0)
    scaled.load_state_dict(ens.state_dict())
    scaled.eval()
    for lin, ref in zip(scaled.linears, ens.linears):
        s = torch.linalg.matrix_norm(lin.effective_weight().detach(), ord=2)
        torch.testing.assert_close(s, 3.0 * torch.linalg.matrix_norm(ref.effective_weight().detach(), ord=2))
    lin_net = EnsembleMLP(1, 12, (32,), 1, spectral_norm=True, spectral_norm_scale=2.0, activation=nn.Identity)
    lin_net.eval()
    jac = lin_net.linears[0].effective_weight()[0] @ lin_net.linears[1].effective_weight()[0]
    assert float(jac.norm()) <= 4.0 + 1e-4  # a linear 2-layer net: Lipschitz <= c^2
    # critic with SN backprops
    c = EnsembleCritic(5, 2, 2, (16, 16), spectral_norm=True)
    c(torch.randn(4, 5), torch.randn(4, 2)).sum().backward()
    assert c.net.linears[0].weight.grad is not None


def test_spectral_norm_matches_torch_parametrization_per_member():
    torch.manual_seed(6)
    E, din, dout = 3, 7, 5
    el = EnsembleLinear(E, din, dout, spectral_norm=True)
    refs = []
    for i in range(E):
        ref = nn.utils.parametrizations.spectral_norm(nn.Linear(din, dout))
        with torch.no_grad():
            ref.parametrizations.weight.original.copy_(el.weight[i].T)
            ref.bias.copy_(el.bias[i, 0])
            ref.parametrizations.weight[0]._u.copy_(el.sn_u[i])
            ref.parametrizations.weight[0]._v.copy_(el.sn_v[i])
        refs.append(ref)
    x = torch.randn(E, 4, din)
    for _ in range(3):  # training forwards each run one power iteration
        y = el(x)
        y_ref = torch.stack([r(x[i]) for i, r in enumerate(refs)])
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    # gradients through sigma
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for i, r in enumerate(refs):
        torch.testing.assert_close(el.weight.grad[i].T, r.parametrizations.weight.original.grad, rtol=1e-4, atol=1e-6)
    el.eval()
    for r in refs:
        r.eval()
    torch.testing.assert_close(el(x), torch.stack([r(x[i]) for i, r in enumerate(refs)]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------------
def test_ensemble_dropout_independent_and_mode_dependent():
    torch.manual_seed(7)
    E = 3
    ens = EnsembleMLP(E, 6, (64, 64), 1, dropout=0.2, layer_norm=True)
    with torch.no_grad():  # identical members
        for lin in ens.linears:
            lin.weight.copy_(lin.weight[:1].expand_as(lin.weight))
            lin.bias.copy_(lin.bias[:1].expand_as(lin.bias))
    x = torch.randn(32, 6)
    ens.eval()
    y_eval = ens(x)
    torch.testing.assert_close(y_eval[0], y_eval[1])
    torch.testing.assert_close(ens(x), y_eval)  # deterministic
    ens.train()
    y1, y2 = ens(x), ens(x)
    assert not torch.allclose(y1[0], y1[1])  # independent masks per member
    assert not torch.allclose(y1, y2)  # fresh masks per call
    # roughly the right drop rate in the first hidden layer
    h = torch.nn.functional.dropout(ens.linears[0](x), 0.2, True)
    frac = (h == 0).float().mean().item()
    assert 0.15 < frac < 0.25
    c = EnsembleCritic(4, 2, 2, (32, 32), dropout=0.01, layer_norm=True)
    assert c.net.dropout == 0.01 and c.net.norms is not None


# --------------------------------------------------------------------------------------------------
# actors
# --------------------------------------------------------------------------------------------------
def _reference_log_prob(mean, log_std, a, max_action):
    """log density of a = max_action * tanh(u), u ~ N(mean, std), via autograd Jacobian (float64)."""
    mean, log_std, a = mean.double(), log_std.double(), a.double()
    u = torch.atanh(a / max_action).requires_grad_(True)
    f = max_action * torch.tanh(u)
    (jac,) = torch.autograd.grad(f.sum(), u)  # diagonal Jacobian
    base = torch.distributions.Normal(mean, log_std.exp()).log_prob(u.detach())
    return (base - jac.abs().log()).sum(-1)


def _fd_log_prob(mean, log_std, a, max_action, h=1e-5):
    """Density from finite differences of the CDF of a (no change-of-variables formula)."""
    mean, std, a = mean.double(), log_std.double().exp(), a.double()
    nrm = torch.distributions.Normal(mean, std)
    cdf = lambda x: nrm.cdf(torch.atanh(x / max_action))  # noqa: E731
    dens = (cdf(a + h) - cdf(a - h)) / (2 * h)
    return dens.log().sum(-1)


@pytest.mark.parametrize("max_action", [1.0, 2.0])
def test_tanh_gaussian_log_prob(max_action):
    torch.manual_seed(8)
    obs = torch.randn(64, 5)
    for exact in (True, False):
        actor = TanhGaussianActor(5, 3, (32, 32), max_action=max_action, exact_log_prob=exact)
        gen = torch.Generator().manual_seed(0)
        a, lp = actor(obs, generator=gen)
        assert a.shape == (64, 3) and lp.shape == (64,)
        mean, log_std = actor.dist_params(obs)
        ref = _reference_log_prob(mean.detach(), log_std.detach(), a.detach(), max_action)
        fd = _fd_log_prob(mean.detach(), log_std.detach(), a.detach(), max_action)
        torch.testing.assert_close(ref, fd, rtol=1e-4, atol=1e-4)
        if exact:
            torch.testing.assert_close(lp.double(), ref, rtol=1e-4, atol=1e-4)
        else:  # +1e-6 inside the log: bias <= sum 1e-6 / (max_action (1 - tanh^2))
            bound = (1e-6 / (max_action * (1 - (a.detach().double() / max_action) ** 2))).sum(-1) + 1e-4
            assert torch.all((lp.double() - ref).abs() <= bound)
        # log_prob of given actions agrees with the sampled log-prob
        torch.testing.assert_close(actor.log_prob(obs, a.detach()), lp.detach(), rtol=1e-3, atol=1e-3)
        # deterministic: tanh(mean), log density at that point
        a_det, lp_det = actor(obs, deterministic=True)
        torch.testing.assert_close(a_det, torch.tanh(mean) * max_action)
        ref_det = _reference_log_prob(mean.detach(), log_std.detach(), a_det.detach(), max_action)
        torch.testing.assert_close(lp_det.double(), ref_det, rtol=1e-3, atol=1e-3)
        a_nolp, none = actor(obs, with_log_prob=False, generator=torch.Generator().manual_seed(0))
        assert none is None
        torch.testing.assert_close(a_nolp, a)


def test_tanh_gaussian_samples_distribution_and_seeding():
    torch.manual_seed(9)
    actor = TanhGaussianActor(4, 2, (16,))
    obs = torch.randn(1, 4).expand(20000, 4)
    with torch.no_grad():
        a, _ = actor(obs, generator=torch.Generator().manual_seed(1))
        mean, log_std = actor.dist_params(obs[:1])
    u = torch.atanh(a.clamp(-1 + 1e-7, 1 - 1e-7))
    torch.testing.assert_close(u.mean(0), mean[0], atol=0.05, rtol=0)
    torch.testing.assert_close(u.std(0), log_std.exp()[0], atol=0.05, rtol=0.05)
    a1, _ = actor(obs[:8], generator=torch.Generator().manual_seed(3))
    a2, _ = actor(obs[:8], generator=torch.Generator().manual_seed(3))
    a3, _ = actor(obs[:8], generator=torch.Generator().manual_seed(4))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    # reparameterised: gradient reaches the trunk
    a1.sum().backward()
    assert actor.trunk[0].weight.grad is not None and actor.trunk[0].weight.grad.abs().sum() > 0


def test_tanh_gaussian_log_std_clamp_and_inits():
    actor = TanhGaussianActor(3, 2, (8, 8), log_std_bounds=(-5.0, 2.0))
    obs = torch.randn(4, 3)
    with torch.no_grad():
        actor.log_std_head.weight.zero_()
        actor.log_std_head.bias.fill_(100.0)
    assert torch.all(actor.dist_params(obs)[1] == 2.0)
    with torch.no_grad():
        actor.log_std_head.bias.fill_(-100.0)
    assert torch.all(actor.dist_params(obs)[1] == -5.0)

    p = TanhGaussianActor(17, 6, init="pytorch")
    assert p.mean_head.weight.abs().max() > 1e-2


def test_gaussian_kl_matches_torch():
    gen = torch.Generator().manual_seed(10)
    mp, mq = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    lp, lq = torch.randn(8, 4, generator=gen) * 0.5, torch.randn(8, 4, generator=gen) * 0.5
    P = torch.distributions.Independent(torch.distributions.Normal(mp, lp.exp()), 1)
    Q = torch.distributions.Independent(torch.distributions.Normal(mq, lq.exp()), 1)
    ref = torch.distributions.kl_divergence(P, Q)
    out = gaussian_kl(mp, lp, mq, lq)
    assert out.shape == (8,)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gaussian_kl(mp, lp, mp, lp), torch.zeros(8), atol=1e-6, rtol=0)


def test_deterministic_actor():
    torch.manual_seed(11)
    actor = DeterministicActor(5, 3, (32, 32), max_action=2.0)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(50.0)
    a = actor(torch.randn(100, 5) * 10)
    assert a.shape == (100, 3)
    assert a.abs().max() <= 2.0 and a.abs().max() > 1.5

    spot = DeterministicActor(5, 3, dropout=0.1, last_layer_init=1e-3)
    assert sum(isinstance(m, nn.Dropout) for m in spot.modules()) == 2
    lins = [m for m in spot.net if isinstance(m, nn.Linear)]
    assert lins[-1].weight.abs().max() <= 1e-3 and lins[-1].bias.abs().max() <= 1e-3
    kinds = [type(m) for m in spot.net]
    assert kinds[:3] == [nn.Linear, nn.Dropout, nn.ReLU]
    obs = torch.randn(16, 5)
    spot.train()
    assert not torch.equal(spot(obs), spot(obs))
    spot.eval()
    assert torch.equal(spot(obs), spot(obs))
    a2pr = DeterministicActor(5, 3, (256, 256, 256))
    assert sum(isinstance(m, nn.Linear) for m in a2pr.net) == 4
    assert sum(isinstance(m, nn.Dropout) for m in a2pr.modules()) == 0


# --------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------
def test_vae_shapes_and_clamp():
    vae = ConditionalVAE(7, 3)
    assert vae.latent_dim == 6
    lins = [m for m in vae.encoder if isinstance(m, nn.Linear)]
    assert [l.out_features for l in lins] == [750, 750]
    obs, act = torch.randn(10, 7), torch.rand(10, 3) * 2 - 1
    recon, mean, std = vae(obs, act)
    assert recon.shape == (10, 3) and mean.shape == (10, 6) and std.shape == (10, 6)
    rec, kl = vae.elbo_terms(obs, act)
    assert rec.shape == (10,) and kl.shape == (10,)
    assert vae.negative_elbo(obs, act).shape == (10,) and vae.loss(obs, act).dim() == 0
    d = vae.decode(obs, generator=torch.Generator().manual_seed(0))
    d2 = vae.decode(obs, generator=torch.Generator().manual_seed(0))
    assert d.shape == (10, 3) and torch.equal(d, d2) and d.abs().max() <= 1.0
    with torch.no_grad():
        vae.log_std_head.weight.zero_()
        vae.log_std_head.bias.fill_(50.0)
    _, s_hi = vae.encode(obs, act)
    torch.testing.assert_close(s_hi, torch.full_like(s_hi, math.exp(15.0)))
    with torch.no_grad():
        vae.log_std_head.bias.fill_(-50.0)
    _, s_lo = vae.encode(obs, act)
    torch.testing.assert_close(s_lo, torch.full_like(s_lo, math.exp(-4.0)))
    # KL formula
    mean, std = vae.encode(obs, act)
    kl_ref = (-0.5 * (1 + torch.log(std**2) - mean**2 - std**2)).mean(-1)
    torch.testing.assert_close(vae.elbo_terms(obs, act)[1], kl_ref, rtol=1e-5, atol=1e-5)
    big = ConditionalVAE(7, 3, max_action=2.5)
    assert big.decode(obs * 100).abs().max() <= 2.5


def test_vae_learns_toy_conditional_distribution():
    torch.manual_seed(12)
    gen = torch.Generator().manual_seed(12)

    def sample(n):
        s = torch.rand(n, 3, generator=gen) * 2 - 1
        a = torch.stack([0.6 * torch.sin(2 * s[:, 0]), 0.5 * s[:, 1] * s[:, 2]], -1)
        a = a + 0.02 * torch.randn(n, 2, generator=gen)
        return s, a

    vae = ConditionalVAE(3, 2, hidden=(128, 128))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        s, a = sample(256)
        loss = vae.loss(s, a, kl_weight=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    s, a = sample(512)
    far = (a + 0.8).clamp(-1, 1) * torch.where(a > 0, -1.0, 1.0)
    with torch.no_grad():
        nll_in = vae.negative_elbo(s, a, generator=torch.Generator().manual_seed(0))
        nll_far = vae.negative_elbo(s, far, generator=torch.Generator().manual_seed(0))
    assert nll_in.mean() < 0.5 * nll_far.mean()
    assert (nll_in < nll_far).float().mean() > 0.9


def test_init_helper_on_ensemble_linear():
    lin = EnsembleLinear(3, 4, 1)
    init_last_layer_uniform_(lin, 1e-3)
    assert lin.weight.abs().max() <= 1e-3 and lin.bias.abs().max() <= 1e-3
