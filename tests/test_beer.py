"""BEER (docs/agents/beer.md): the adaptive bound and the penalty against hand computations, the DDPG setting,
exact resume (Gymnasium and DeepMind Control), learning on Pendulum-v1."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from test_training import assert_same_learner, comparable, final_state

from rlreg.learners.td3 import TD3Config
from rlreg.data.buffers import Batch
from rlreg.learners.td3 import TD3Learner
from rlreg.logging import read_metrics
from rlreg.regularizers import SetupContext
from rlreg.regularizers.beer import BEERConfig, BEERRegularizer, beer_bound
from rlreg.trainers import train

HAS_DMC = importlib.util.find_spec("dm_control") is not None and importlib.util.find_spec("shimmy") is not None


def test_bound_matches_hand_computation() -> None:
    # sample 1: ||phi|| = 5, ||phi+|| = 2, ||phi_bar'|| = 1, r = 1, ||w||^2 = 4, gamma = 0.5
    #   B = (25 + 0.25 * 4 - 1 / 4) / (2 * 0.5 * 5 * 1) = 25.75 / 5 = 5.15
    # sample 2: ||phi|| = 1, ||phi+|| = 0, ||phi_bar'|| = 2, r = -3
    #   B = (1 + 0 - 9 / 4) / (2 * 0.5 * 1 * 2) = -1.25 / 2 = -0.625
    phi = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    phi_plus = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])
    phi_t = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    bound = beer_bound(phi, phi_plus, phi_t, torch.tensor([1.0, -3.0]), torch.tensor([4.0]), gamma=0.5)
    assert bound[0].tolist() == pytest.approx([5.15, -0.625])
    # an all-zero feature does not divide by zero (norms clamped at norm_eps)
    zero = beer_bound(torch.zeros(1, 1, 2), phi_plus[:, :1], phi_t[:, :1], torch.zeros(1), torch.tensor([4.0]), 0.5)
    assert torch.isfinite(zero).all()


def ddpg_beer(beta: float = 1.0, **kw) -> tuple[TD3Learner, BEERRegularizer]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    reg = BEERRegularizer(BEERConfig(beta=beta, **kw))
    cfg = TD3Config(actor_hidden=(8,), critic_hidden=(8, 8), num_critics=1, target_noise=0.0, policy_freq=1,
                    gamma=0.9)
    learner = TD3Learner(SetupContext.box(3, 2), cfg, regularizers=[reg])
    with torch.no_grad():  # positive hidden biases: no all-zero ReLU feature, where the official code divides by 0
        for net in (learner.critic, learner.critic_target):
            for lin in net.net.linears[:-1]:
                lin.bias.fill_(0.5)
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    return learner, reg


def beer_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    b = 16
    rewards = torch.zeros(b)
    rewards[::2] = 50.0  # large |r|: negative bound, the penalty is active
    return Batch.one_step(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1, rewards,
                          torch.randn(b, 3, generator=g), torch.ones(b), gamma=0.9)


def reference(before: TD3Learner, batch: Batch, beta: float, gamma: float, numerator: str) -> dict[str, torch.Tensor]:
    """The official BEER.py computation, line by line, on networks exported as plain nn.Sequential."""
    critic = before.critic.net.member(0)
    target = before.critic_target.net.member(0)
    trunk, trunk_t = critic[:-1], target[:-1]  # up to the last hidden ReLU: phi
    with torch.no_grad():
        next_action = before.actor_target(batch.next_observations)
        target_feature = trunk_t(torch.cat([batch.next_observations, next_action], 1))
        next_feature1 = trunk(torch.cat([batch.next_observations, before.actor(batch.next_observations)], 1))
        if numerator == "target":
            next_feature1 = target_feature
        current_feature = trunk(torch.cat([batch.observations, batch.actions], 1))
        reward = batch.rewards.reshape(-1, 1)
        nn_norm_square = torch.norm(critic[-1].weight) ** 2
        upper = (0.5 / gamma) * (torch.norm(current_feature, dim=1, keepdim=True) ** 2
                                 + gamma**2 * torch.norm(next_feature1, dim=1, keepdim=True) ** 2
                                 - reward**2 / nn_norm_square)
        upper = upper / (torch.norm(current_feature, dim=1, keepdim=True) * torch.norm(target_feature, dim=1,
                                                                                      keepdim=True))
        cos = F.cosine_similarity(current_feature, target_feature, dim=1, eps=1e-6)
        excess = cos - upper.reshape(1, -1)
        return {"penalty": beta * F.relu(excess).mean(), "bound": upper.mean(),
                "active_frac": (excess > 0).float().mean(), "cos": cos.mean()}


@pytest.mark.parametrize("numerator", ["online", "target"])
def test_penalty_matches_the_official_computation(numerator: str) -> None:
    learner, reg = ddpg_beer(beta=1.0, bound_next_feature=numerator, bound_gamma=0.95)
    batch = beer_batch()
    before = copy.deepcopy(learner)
    # move the target away from the online nets so that phi+ != phi_bar'
    with torch.no_grad():
        for p in [*before.critic_target.parameters(), *before.actor_target.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    learner.load_state_dict(before.state_dict())
    metrics = learner.update(batch, step=1, generator=torch.Generator().manual_seed(0))
    ref = reference(before, batch, beta=1.0, gamma=0.95, numerator=numerator)
    for key in ("penalty", "bound", "active_frac", "cos"):
        assert metrics[f"beer/{key}"].item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6), key
    assert 0.0 < metrics["beer/active_frac"].item() < 1.0  # both kinds of samples are in the batch


def test_penalty_gradient_flows_through_the_online_features_only() -> None:
    learner, reg = ddpg_beer(beta=1.0)
    batch = beer_batch()
    q, phi = learner.critic.q_and_features(batch.observations, batch.actions)
    with torch.no_grad():
        _, phi_t = learner.critic_target.q_and_features(batch.next_observations,
                                                       learner.actor_target(batch.next_observations))
    from rlreg.regularizers.base import CriticContext

    ctx = CriticContext(q=q, target=torch.zeros(16), step=1, extras={"features": phi, "next_target_features": phi_t})
    penalty = reg.critic_terms(batch, ctx)["penalty"]
    (grad_phi,) = torch.autograd.grad(penalty, phi)
    # d/dphi of mean ReLU(cos(phi, phi_t) - B) with B a constant: only the active samples' cosine gradient
    phi_ = phi.detach().requires_grad_(True)
    cos = F.cosine_similarity(phi_, phi_t, dim=-1, eps=1e-6)
    active = (cos - reg_bound(reg, batch, phi, phi_t) > 0).float()
    (expected,) = torch.autograd.grad((cos * active).mean(), phi_)
    assert torch.allclose(grad_phi, expected, atol=1e-7)


def reg_bound(reg: BEERRegularizer, batch: Batch, phi: torch.Tensor, phi_t: torch.Tensor) -> torch.Tensor:
    learner = reg.learner
    with torch.no_grad():
        _, phi_plus = learner.critic.q_and_features(batch.next_observations, learner.actor(batch.next_observations))
        w = learner.critic.net.linears[-1].weight
        return beer_bound(phi.detach(), phi_plus, phi_t, batch.rewards, w.square().sum(dim=(1, 2)), reg.gamma)


def test_inner_product_variant() -> None:
    learner, reg = ddpg_beer(beta=1.0, penalty="inner_product")
    batch = beer_batch()
    q, phi = learner.critic.q_and_features(batch.observations, batch.actions)
    with torch.no_grad():
        _, phi_t = learner.critic_target.q_and_features(batch.next_observations,
                                                       learner.actor_target(batch.next_observations))
    from rlreg.regularizers.base import CriticContext

    ctx = CriticContext(q=q, target=torch.zeros(16), step=1, extras={"features": phi, "next_target_features": phi_t})
    got = reg.critic_terms(batch, ctx)["penalty"]
    bound = reg_bound(reg, batch, phi, phi_t)
    expected = F.relu((phi * phi_t).sum(-1) - bound * phi.norm(dim=-1) * phi_t.norm(dim=-1)).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_head_without_bias_is_q_equals_w_phi() -> None:
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), num_critics=1,
                                         critic_head_bias=False))
    assert learner.critic.net.linears[-1].bias is None and learner.critic_target.net.linears[-1].bias is None
    s, a = torch.randn(4, 3), torch.rand(4, 2)
    q, phi = learner.critic.q_and_features(s, a)
    assert torch.allclose(q[0], phi[0] @ learner.critic.net.linears[-1].weight[0, :, 0], atol=1e-6)


def test_beer_and_ddpg_configs(tmp_path: Path) -> None:
    run = run_config(["agent=beer"], tmp_path)
    lc = run.agent.learner_config
    assert (lc.num_critics, lc.target_noise, lc.policy_freq, lc.exploration_noise) == (1, 0.0, 1, 0.1)
    assert (run.trainer.warmup_steps, run.trainer.utd_ratio, run.trainer.eval_every) == (25000, 1, 10000)
    assert run.env.id == "dm_control/walker-walk-v0" and list(run.agent.regularizers) == ["beer"]
    assert run.agent.regularizers["beer"].beta == 1e-3
    ddpg = run_config(["agent=ddpg"], tmp_path)
    assert ddpg.agent.regularizers == {} and ddpg.agent.learner_config == lc


ONLINE = [
    "agent=beer",
    "env=pendulum",
    "trainer.warmup_steps=30",
    "trainer.log_every=5",
    "trainer.eval_every=60",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=15",
    "trainer.batch_size=32",
    "agent.actor_hidden=[32,32]",
    "agent.critic_hidden=[32,32]",
]


def _resume_round_trip(tmp_path: Path, base: list[str], total: int, stop: int) -> None:
    train(run_config(base + [f"trainer.total_steps={total}", f"run_dir={tmp_path / 'full'}"], tmp_path),
          announce=False)
    train(run_config(base + [f"trainer.total_steps={stop}", f"run_dir={tmp_path / 'part'}"], tmp_path),
          announce=False)
    train(run_config(base + [f"trainer.total_steps={total}", f"run_dir={tmp_path / 'part'}"], tmp_path),
          announce=False)
    assert_same_learner(final_state(tmp_path / "full"), final_state(tmp_path / "part"))
    rows_full = comparable(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    assert rows_full == comparable(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    train_rows = [r for r in rows_full if r["kind"] == "train" and "beer/bound" in r]
    assert train_rows and all(0.0 <= r["beer/active_frac"] <= 1.0 for r in train_rows)


def test_beer_resume_is_exact_mid_episode(tmp_path: Path) -> None:
    _resume_round_trip(tmp_path, ONLINE, total=60, stop=45)


@pytest.mark.skipif(not HAS_DMC, reason="DeepMind Control needs the dmc extra (pip install 'rlreg[dmc]')")
def test_beer_resume_is_exact_on_deepmind_control(tmp_path: Path) -> None:
    base = [o for o in ONLINE if not o.startswith("env=")] + ["env=dmc-cartpole-swingup", "env.max_episode_steps=100"]
    _resume_round_trip(tmp_path, base, total=60, stop=45)


@pytest.mark.skipif(not HAS_DMC, reason="DeepMind Control needs the dmc extra (pip install 'rlreg[dmc]')")
def test_deepmind_control_env_is_flat_float32_and_never_terminates() -> None:
    from rlreg.config import EnvConfig
    from rlreg.envs import env_spaces, make_env

    cfg = EnvConfig(id="dm_control/cartpole-swingup-v0")
    obs_dim, act_dim, max_action, _, _ = env_spaces(cfg)
    assert (obs_dim, act_dim, max_action) == (5, 1, 1.0)
    env = make_env(cfg)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (5,)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        steps += 1
        assert 0.0 <= reward <= 1.0
    assert (steps, terminated, truncated) == (1000, False, True)  # time limit = truncation: bootstrap
    env.close()


def test_beer_learns_pendulum(tmp_path: Path) -> None:
    """Random actions score about -1200 on Pendulum-v1; BEER (DDPG + the rank regularizer, 64-unit nets) must
    reach -400 within 8,000 env steps (about 50 s of one CPU core)."""
    run = run_config(
        [
            "agent=beer",
            "env=pendulum",
            "seed=0",
            "trainer.total_steps=8000",
            "trainer.warmup_steps=1000",
            "trainer.eval_every=4000",
            "trainer.eval_episodes=5",
            "trainer.log_every=500",
            "trainer.checkpoint_every=4000",
            "agent.actor_hidden=[64,64]",
            "agent.critic_hidden=[64,64]",
        ],
        tmp_path,
    )
    summary = train(run, announce=False)
    rows = read_metrics(Path(summary["metrics"]))
    assert any(r.get("beer/active_frac", 0.0) > 0.0 for r in rows if r["kind"] == "train")  # the penalty acted
    assert summary["last_return"] > -400, [r["eval/return"] for r in rows if r["kind"] == "eval"]
