"""Dynamics models (MBPO ensemble / single model), termination functions and the adversarial value loss."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlreg.models import EnsembleDynamics, soft_bound_logvar, termination_fn
from rlreg.regularizers.lipschitz import pgd_perturbation


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def test_soft_logvar_bounds_by_hand() -> None:
    raw = torch.tensor([[0.0, 50.0, -50.0]])
    lv = soft_bound_logvar(raw, torch.full((1, 3), 0.5), torch.full((1, 3), -10.0))
    by_hand_0 = -10.0 + math.log1p(math.exp((0.5 - math.log1p(math.exp(0.5))) + 10.0))
    assert lv[0, 0].item() == pytest.approx(by_hand_0, abs=1e-6)
    assert lv[0, 1].item() == pytest.approx(0.5, abs=1e-4)  # saturates at max_logvar
    assert lv[0, 2].item() == pytest.approx(-10.0, abs=1e-4)  # and at min_logvar
    mid = soft_bound_logvar(torch.linspace(-12, 3, 31), torch.tensor(0.5), torch.tensor(-10.0))
    assert (mid < 0.5).all() and (mid > -10.0).all() and (mid.diff() > 0).all()


def test_gaussian_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    m = EnsembleDynamics(2, 1, num_members=2, num_elites=1, hidden=(4,), weight_decays=(0.1, 0.2))
    with torch.no_grad():
        m.max_logvar.copy_(torch.tensor([[0.3, 0.1, -0.2]]))
        m.min_logvar.copy_(torch.tensor([[-3.0, -2.0, -1.0]]))
        m.in_mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        m.in_std.copy_(torch.tensor([2.0, 1.0, 0.5]))
    x = torch.randn(5, 3)
    y = torch.randn(2, 5, 3)
    loss = m.loss(x.expand(2, 5, 3), y).item()

    w = [lin.weight.detach().numpy().astype(np.float64) for lin in m.net.linears]
    b = [lin.bias.detach().numpy().astype(np.float64) for lin in m.net.linears]
    xs = (x.numpy() - m.in_mean.numpy()) / m.in_std.numpy()
    mx, mn = m.max_logvar.detach().numpy().astype(np.float64), m.min_logvar.detach().numpy().astype(np.float64)
    total = 0.0
    for e in range(2):
        h = xs @ w[0][e] + b[0][e]
        h = h / (1 + np.exp(-h))  # swish
        o = h @ w[1][e] + b[1][e]
        mu, raw = o[:, :3], o[:, 3:]
        lv = mx - _softplus(mx - raw)
        lv = mn + _softplus(lv - mn)
        total += np.mean((mu - y[e].numpy()) ** 2 * np.exp(-lv)) + np.mean(lv)
    total += 0.1 * (w[0] ** 2).sum() / 2 + 0.2 * (w[1] ** 2).sum() / 2
    total += 0.01 * (mx.sum() - mn.sum())
    assert loss == pytest.approx(total, rel=1e-5)


def test_deterministic_loss_is_mse_plus_decay() -> None:
    m = EnsembleDynamics(2, 1, num_members=1, num_elites=1, hidden=(8, 8), model_type="deterministic",
                         weight_decays=(0.0, 0.0, 0.0))
    assert not hasattr(m, "max_logvar") and m.standardize_targets
    x, y = torch.randn(7, 3), torch.randn(1, 7, 3)
    mean, logvar = m(x)
    assert logvar is None
    assert m.loss(x, y).item() == pytest.approx((mean - y).pow(2).mean().item(), rel=1e-6)


def test_scaler_is_refit_on_training_rows_and_makes_the_model_affine_invariant() -> None:
    m = EnsembleDynamics(2, 1, num_members=2, num_elites=1, hidden=(8,), weight_decays=(0.0, 0.0))
    x = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.1]) + 3.0
    x[:, 2] = 4.0  # a constant column keeps std 1
    m.fit_scalers(x, torch.zeros(50, 3))
    assert torch.allclose(m.in_mean, x.mean(0))
    assert torch.allclose(m.in_std[:2], x[:, :2].std(0, unbiased=False))
    assert m.in_std[2].item() == 1.0
    out_a, _ = m(x)
    x2 = x * 5.0 - 7.0
    m.fit_scalers(x2, torch.zeros(50, 3))
    out_b, _ = m(x2)
    assert torch.allclose(out_a, out_b, atol=1e-4)


def _corrupted_model(offsets: list[float]) -> tuple[EnsembleDynamics, torch.Tensor, torch.Tensor]:
    """Deterministic members that differ only by a constant added to the output bias."""
    torch.manual_seed(1)
    m = EnsembleDynamics(2, 1, num_members=len(offsets), num_elites=2, hidden=(8,), model_type="deterministic",
                         weight_decays=(0.0, 0.0),
                         standardize_targets=False)
    with torch.no_grad():
        m.net.linears[-1].bias.zero_()
        m.net.linears[-1].bias += torch.tensor(offsets).view(-1, 1, 1)
        m.net.linears[-1].weight.zero_()
    x = torch.randn(100, 3)
    y = torch.zeros(100, 3)
    return m, x, y


def test_elites_are_the_lowest_holdout_mse_and_early_stopping_counts_epochs() -> None:
    m, x, y = _corrupted_model([3.0, 0.1, 5.0, 0.5])
    frozen = torch.optim.SGD(m.parameters(), lr=0.0)
    res = m.fit(x, y, frozen, torch.Generator().manual_seed(0), holdout_ratio=0.2, max_holdout=10, patience=5)
    assert res.num_holdout == 10 and res.num_train == 90
    assert sorted(m.elites.tolist()) == [1, 3]
    assert res.holdout_mse.item() == pytest.approx((0.1**2 + 0.5**2) / 2, rel=1e-5)
    # epoch 1 improves on the initial 1e10; then no member improves: stop after more than 5 such epochs
    assert res.epochs == 7


def test_rollout_step_samples_only_elites_uniformly() -> None:
    m, x, _ = _corrupted_model([3.0, 0.1, 5.0, 0.5])
    m.elites.copy_(torch.tensor([0, 2]))
    obs, act = torch.zeros(4000, 2), torch.zeros(4000, 1)
    nxt, rew = m.step(obs, act, torch.Generator().manual_seed(0))
    assert set(rew.unique().tolist()) == {3.0, 5.0}
    assert abs((rew == 3.0).float().mean().item() - 0.5) < 0.05
    assert torch.equal(nxt, obs + rew.view(-1, 1))  # s' = s + delta, delta equal to the bias here


def test_gaussian_step_samples_around_the_mean_with_the_predicted_std() -> None:
    m = EnsembleDynamics(1, 1, num_members=1, num_elites=1, hidden=(4,), weight_decays=(0.0, 0.0))
    with torch.no_grad():
        for lin in m.net.linears:
            lin.weight.zero_()
            lin.bias.zero_()
        m.net.linears[-1].bias[0, 0, :2] = torch.tensor([1.0, 2.0])  # means of (r, ds)
        m.net.linears[-1].bias[0, 0, 2:] = 50.0  # raw logvar far above max_logvar: logvar = 0.5
    nxt, rew = m.step(torch.zeros(20000, 1), torch.zeros(20000, 1), torch.Generator().manual_seed(0))
    assert rew.mean().item() == pytest.approx(1.0, abs=0.03)
    assert rew.std().item() == pytest.approx(math.exp(0.25), rel=0.03)
    det, _ = m.step(torch.zeros(5, 1), torch.zeros(5, 1), torch.Generator(), deterministic=True)
    assert torch.allclose(det, torch.full((5, 1), 2.0))


def test_fit_learns_a_simple_dynamics_and_restores_the_best_snapshot() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    s, a = torch.randn(1500, 3), torch.rand(1500, 1) * 2 - 1
    ns, r = s + 0.1 * torch.tanh(s) + 0.2 * a, s[:, 0] - a[:, 0] ** 2
    for kind in ("gaussian", "deterministic"):
        ens = kind == "gaussian"
        m = EnsembleDynamics(3, 1, num_members=3 if ens else 1, num_elites=2 if ens else 1,
                             hidden=(64, 64), model_type=kind, weight_decays=(2.5e-5, 5e-5, 1e-4))
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        inputs, targets = torch.cat([s, a], -1), m.targets_of(s, r, ns)
        res = m.fit(inputs, targets, opt, g, max_epochs=30)
        # the holdout MSE in the training target space is small compared with the target variance
        var = ((targets - m.out_mean) / m.out_std).var(0).mean().item()
        assert res.holdout_mse.item() < 0.1 * var, kind
        pred, rew = m.step(s[:200], a[:200], g, deterministic=True)
        assert (pred - ns[:200]).pow(2).mean().item() < 0.05, kind


# -- termination functions vs the real environments -------------------------------------------------------------
ENVS = [
    ("Hopper-v5", {}),
    ("Hopper-v5", {"healthy_z_range": (1.1, float("inf")), "healthy_angle_range": (-0.1, 0.1)}),
    ("Walker2d-v5", {}),
    ("Ant-v5", {"include_cfrc_ext_in_observation": False}),  # random actions never make it fall
    ("Ant-v5", {"include_cfrc_ext_in_observation": False, "healthy_z_range": (0.3, 0.8)}),
    ("Humanoid-v5", {"include_cinert_in_observation": False, "include_cvel_in_observation": False,
                     "include_qfrc_actuator_in_observation": False, "include_cfrc_ext_in_observation": False}),
    ("InvertedPendulum-v5", {}),
    ("HalfCheetah-v5", {}),
]


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_termination_fn_agrees_with_the_env(env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, **kwargs)
    fn = termination_fn("auto", env_id, kwargs)
    rng = np.random.default_rng(0)
    flags, preds = [], []
    steps = 0
    for ep in range(200):
        obs, _ = env.reset(seed=ep)
        # a biased random policy makes the robots fall in several ways
        bias = rng.uniform(-1, 1, env.action_space.shape) * env.action_space.high
        done = False
        while not done and steps < 3000:
            act = np.clip(bias + 0.5 * rng.standard_normal(env.action_space.shape), env.action_space.low,
                          env.action_space.high)
            obs, _, term, trunc, _ = env.step(act)
            flags.append(term)
            preds.append(bool(fn(torch.as_tensor(obs, dtype=torch.float32).view(1, -1))[0]))
            done = term or trunc
            steps += 1
        if steps >= 3000:
            break
    env.close()
    assert preds == flags
    if env_id != "HalfCheetah-v5" and kwargs != ENVS[3][1]:
        assert sum(flags) >= 5, "the check must see terminations"
    assert len(flags) - sum(flags) >= 100


def test_termination_fn_names_the_option_for_unknown_envs() -> None:
    with pytest.raises(ValueError, match="agent.termination=auto: no termination function for env.id=Swimmer-v5"):
        termination_fn("auto", "Swimmer-v5")
    assert not termination_fn("auto", "dm_control/walker-walk-v0")(torch.zeros(3, 24)).any()
    assert not termination_fn("auto", "Hopper-v5", {"terminate_when_unhealthy": False})(torch.zeros(3, 11)).any()


# -- adversarial value loss ---------------------------------------------------------------------------------------
def test_fgsm_on_a_linear_value_finds_the_box_corner() -> None:
    """For Q(s) = w.s the max of (Q(s + d) - Q(s))^2 over |d_i| <= r_i is (sum_i |w_i| r_i)^2 at d = +-r sign(w)."""
    w = torch.tensor([2.0, -1.0, 0.5])
    obs = torch.randn(16, 3)
    radius = torch.tensor([0.1, 0.2, 0.4])
    q = lambda s: (s @ w)  # noqa: E731  (E, B, 3) -> (E, B)
    q_ref = q(obs).expand(2, 16)
    delta = pgd_perturbation(q, obs, q_ref, radius, 2.5 * radius, 1, torch.Generator().manual_seed(0), 2)
    assert delta.shape == (2, 16, 3)
    assert torch.allclose(delta.abs(), radius.expand_as(delta))
    gap = (q(obs + delta) - q_ref).pow(2)
    assert torch.allclose(gap, torch.full_like(gap, float((w.abs() * radius).sum() ** 2)), rtol=1e-4)


def test_pgd_increases_the_gap_and_stays_in_the_box() -> None:
    from rlreg.nets import EnsembleCritic

    torch.manual_seed(0)
    critic = EnsembleCritic(5, 2, num_members=2, hidden=(32, 32))
    obs, act = torch.randn(64, 5), torch.rand(64, 2)
    q_fn = lambda s: critic(s, act)  # noqa: E731
    q_ref = critic(obs, act)
    radius = torch.full((5,), 0.05)
    gen = torch.Generator().manual_seed(3)
    start = pgd_perturbation(q_fn, obs, q_ref, radius, radius * 0, 1, gen, 2)  # zero step: the random start
    gen.manual_seed(3)
    adv = pgd_perturbation(q_fn, obs, q_ref, radius, radius * 2.5 / 5, 5, gen, 2)
    assert (adv.abs() <= radius + 1e-7).all()
    gap = lambda d: (q_fn(obs + d) - q_ref).pow(2).mean().item()  # noqa: E731
    assert gap(adv) > 1.5 * gap(start) > 0.0
