"""DemoReg-SAC (docs/agents/demoreg.md, rlreg's design): the closed-form KL against a Monte-Carlo estimate through
the tanh map, the BC prior's loss and std floor, SAC's losses with lambda * KL in place of the entropy,
both lambda modes, demonstrations from a dataset and from a policy, exact resume through the behaviour-cloning
phase, learning on Pendulum-v1 from 5 demonstrations of a scripted expert."""

from __future__ import annotations

import copy
import math
import os
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import pendulum_offline_overrides, run_config
from test_training import assert_same_learner, comparable, final_state

from rlreg.config import ConfigError, EnvConfig
from rlreg.learners.sac import SACConfig
from rlreg.data.buffers import Batch
from rlreg.data.d4rl import write_d4rl_hdf5
from rlreg.learners.sac import SACLearner
from rlreg.logging import read_metrics
from rlreg.nets import TanhGaussianActor, gaussian_kl
from rlreg.regularizers import SetupContext
from rlreg.regularizers.demoreg import DemoRegConfig, DemoRegRegularizer
from rlreg.trainers import StopRequested, train

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def tanh_gaussian_log_density(a: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log density of a = tanh(u), u ~ N(mean, std^2), written out independently of rlreg's code."""
    u = torch.atanh(a)
    log_normal = -0.5 * ((u - mean) / std) ** 2 - torch.log(std) - HALF_LOG_2PI
    return (log_normal - torch.log1p(-a**2)).sum(-1)


def test_closed_form_kl_equals_monte_carlo_estimate_through_tanh() -> None:
    g = torch.Generator().manual_seed(0)
    mean_p, std_p = torch.tensor([[0.3, -1.2, 0.8]], dtype=torch.float64), torch.tensor([[0.5, 0.3, 0.7]],
                                                                                       dtype=torch.float64)
    mean_q, std_q = torch.tensor([[-0.2, -0.9, 1.5]], dtype=torch.float64), torch.tensor([[0.8, 0.25, 0.4]],
                                                                                        dtype=torch.float64)
    closed = gaussian_kl(mean_p, std_p.log(), mean_q, std_q.log()).item()
    n = 100_000
    u = mean_p + std_p * torch.randn(n, 3, generator=g, dtype=torch.float64)
    a = torch.tanh(u).clamp(-1 + 1e-15, 1 - 1e-15)
    log_ratio = tanh_gaussian_log_density(a, mean_p, std_p) - tanh_gaussian_log_density(a, mean_q, std_q)
    mc, se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(n)
    assert closed == pytest.approx(mc, abs=4 * se)
    assert se < 0.01 * closed
    # the regularizer's KL is that closed form between the actor's and the prior's pre-tanh Gaussians
    reg = bound_regularizer()[1]
    obs = torch.randn(5, 3)
    mean, log_std = torch.randn(5, 2), torch.randn(5, 2) * 0.3
    m0, l0 = reg.prior.dist_params(obs)
    var_ratio = torch.exp(2 * (log_std - l0))
    expected = (l0 - log_std + 0.5 * (var_ratio + (mean - m0) ** 2 / torch.exp(2 * l0) - 1)).sum(-1)
    assert torch.allclose(reg.kl(obs, mean, log_std), expected, atol=1e-5)


def bound_regularizer(**kw) -> tuple[SACLearner, DemoRegRegularizer]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    reg = DemoRegRegularizer(DemoRegConfig(**kw))
    learner = SACLearner(SetupContext.box(3, 2), SACConfig(actor_hidden=(8, 8), critic_hidden=(8,), learn_alpha=False, gamma=0.9),
                         regularizers=[reg])
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    return learner, reg


def tiny_batch(b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch.one_step(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 1.8 - 0.9,
                          torch.randn(b, generator=g), torch.randn(b, 3, generator=g),
                          (torch.rand(b, generator=g) > 0.3).float(), gamma=0.9)


def test_bc_loss_is_the_tanh_gaussian_nll_and_std_has_a_floor() -> None:
    learner, reg = bound_regularizer(std_min=0.1)
    batch = tiny_batch()
    with torch.no_grad():
        mean, log_std = reg.prior.dist_params(batch.observations)
        expected = -tanh_gaussian_log_density(batch.actions.double(), mean.double(), log_std.exp().double()).mean()
    metrics = reg.pretrain_step(batch, step=1)
    assert metrics["nll"].item() == pytest.approx(expected.item(), rel=1e-4)
    with torch.no_grad():
        reg.prior.log_std_head.bias.fill_(-30.0)
    assert torch.allclose(reg.prior.dist_params(batch.observations)[1], torch.full((6, 2), math.log(0.1)))


def test_sac_losses_use_lambda_kl_in_place_of_the_entropy() -> None:
    """L_pi = mean(lambda KL(pi(s) || pi_BC(s)) - min_j Q_j(s, a~)); y = r + gamma (1 - d) (min_j Q'_j(s', a')
    - lambda KL(pi(s') || pi_BC(s'))), sequential order (actor step before the critic loss)."""
    learner, reg = bound_regularizer(lam=0.7, mode="fixed")
    with torch.no_grad():
        reg.prior.mean_head.bias.fill_(0.5)  # a prior unlike the actor: KL > 0
    batch = tiny_batch()
    before = copy.deepcopy(learner)
    prior = copy.deepcopy(reg.prior)
    metrics = learner.update(batch, step=1, generator=torch.Generator().manual_seed(3))

    def kl_at(actor: TanhGaussianActor, obs: torch.Tensor) -> torch.Tensor:
        m, ls = actor.dist_params(obs)
        m0, l0 = prior.dist_params(obs)
        return gaussian_kl(m, ls, m0, l0)

    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        a, _ = before.actor(batch.observations, generator=gen)  # same draws as the learner's sampler
        x = torch.cat([batch.observations, a], -1)
        q = torch.minimum(before.critic.net.member(0)(x), before.critic.net.member(1)(x)).squeeze(-1)
        expected_actor = (0.7 * kl_at(before.actor, batch.observations) - q).mean()
        actor_after = learner.actor
        a_next, _ = actor_after(batch.next_observations, generator=gen)
        x_next = torch.cat([batch.next_observations, a_next], -1)
        q_next = torch.minimum(before.critic_target.net.member(0)(x_next),
                               before.critic_target.net.member(1)(x_next)).squeeze(-1)
        y = batch.rewards + 0.9 * batch.not_done * (q_next - 0.7 * kl_at(actor_after, batch.next_observations))
        x = torch.cat([batch.observations, batch.actions], -1)
        expected_critic = sum(((before.critic.net.member(i)(x).squeeze(-1) - y) ** 2).mean() for i in range(2))
    assert metrics["actor/loss"].item() == pytest.approx(expected_actor.item(), rel=1e-5)
    assert metrics["critic/loss"].item() == pytest.approx(float(expected_critic), rel=1e-5)
    assert metrics["actor/kl"].item() == pytest.approx(kl_at(before.actor, batch.observations).mean().item(),
                                                       rel=1e-5)
    assert "actor/entropy" not in metrics and metrics["demoreg/lambda"].item() == pytest.approx(0.7)


@pytest.mark.parametrize("target_kl, direction", [(1e-3, 1), (1e3, -1)])
def test_target_mode_raises_lambda_while_kl_exceeds_the_target(target_kl: float, direction: int) -> None:
    learner, reg = bound_regularizer(lam=0.1, mode="target", target_kl=target_kl)
    with torch.no_grad():
        reg.prior.mean_head.bias.fill_(0.5)
    learner.update(tiny_batch(), step=1, generator=torch.Generator().manual_seed(0))
    assert direction * (reg.coef().item() - 0.1) > 0


def test_fixed_mode_keeps_lambda_and_learn_alpha_is_refused() -> None:
    learner, reg = bound_regularizer(lam=0.1, mode="fixed")
    learner.update(tiny_batch(), step=1, generator=torch.Generator().manual_seed(0))
    assert reg.coef().item() == pytest.approx(0.1)
    reg2 = DemoRegRegularizer(DemoRegConfig())
    sac = SACLearner(SetupContext.box(3, 2), SACConfig(actor_hidden=(8,), critic_hidden=(8,)), regularizers=[reg2])
    with pytest.raises(ConfigError, match="learn_alpha=false"):
        reg2.bind(sac, SetupContext(3, 2, 1.0, torch.device("cpu")))
    with pytest.raises(ConfigError, match="regularizer.demoreg.mode"):
        DemoRegRegularizer(DemoRegConfig(mode="adaptive"))


# ---- demonstrations ----------------------------------------------------------------------------------------


def scripted_pendulum(obs: np.ndarray) -> np.ndarray:
    """Energy pumping ``u = 0.1 w (E_top - E)`` (smooth in the state, so that it can be cloned) plus a PD
    controller near the top: about -130 average return (uniform random actions: about -1200)."""
    c, s, w = obs
    if c > 0.85:
        u = -(12.0 * np.arctan2(s, c) + 2.5 * w)
    else:
        energy = 0.5 * w**2 + 15.0 * (c - 1.0)  # 0 upright at rest, -30 hanging down at rest
        u = 0.1 * w * (-energy) if abs(w) > 0.05 else 1.0
    return np.clip([u], -2.0, 2.0).astype(np.float32)


def write_expert_dataset(path: Path, episodes: int = 5) -> list[float]:
    env = gym.make("Pendulum-v1")
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "tout")}
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 + ep)
        done, ret = False, 0.0
        while not done:
            act = scripted_pendulum(obs)
            nxt, r, term, trunc, _ = env.step(act)
            for k, v in zip(rows, (obs, act, r, nxt, term, trunc)):
                rows[k].append(v)
            obs, done, ret = nxt, term or trunc, ret + r
        returns.append(ret)
    write_d4rl_hdf5(
        path,
        observations=np.asarray(rows["obs"], np.float32),
        actions=np.asarray(rows["act"], np.float32),
        rewards=np.asarray(rows["rew"], np.float32),
        terminals=np.asarray(rows["term"]),
        timeouts=np.asarray(rows["tout"]),
        next_observations=np.asarray(rows["next"], np.float32),
    )
    return returns


def test_demos_from_a_dataset_are_its_best_episodes(pendulum_dataset: Path, tmp_path: Path) -> None:
    run = run_config(["agent=demoreg_sac", "env=pendulum", "regularizer.demoreg.source=dataset",
                      "regularizer.demoreg.num_episodes=2", "regularizer.demoreg.holdout=0.25"]
                     + pendulum_offline_overrides(pendulum_dataset), tmp_path)
    cfg = run.agent.regularizers["demoreg"]
    assert cfg.dataset.path == str(pendulum_dataset)
    reg = DemoRegRegularizer(cfg)
    learner = SACLearner(SetupContext.box(3, 1, 2.0), run.agent.learner_config, regularizers=[reg])
    reg.bind(learner, SetupContext(3, 1, 2.0, torch.device("cpu")))
    batch = reg.pretrain_batch(8, torch.Generator().manual_seed(0))
    assert batch.observations.shape == (8, 3) and batch.actions.shape == (8, 1)
    from rlreg.data.sources import load_dataset

    data = load_dataset(cfg.dataset)
    returns = data.episode_returns()
    best = np.argsort(-returns)[:2]
    assert reg.demos["returns"].tolist() == pytest.approx(returns[best].tolist())
    starts, ends = data.episode_starts_ends()
    n = int(sum(ends[i] - starts[i] + 1 for i in best))
    assert reg.demos["observations"].shape == (n, 3) and reg.demos["num_train"] == n - int(n * 0.25)
    assert returns[best].min() >= np.delete(returns, best).max()


def test_demos_from_a_policy_rollout(tmp_path: Path) -> None:
    from rlreg.policies import save_policy

    actor = TanhGaussianActor(3, 1, hidden=(8,), max_action=2.0)
    meta = {"architecture": {"kind": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [8]}, "env": "Pendulum-v1"}
    # load_policy builds the actor with max_action 1 (actions are clipped to the env's bounds afterwards)
    save_policy(actor, tmp_path / "expert.pt", meta)
    cfg = DemoRegConfig(policy=str(tmp_path / "expert.pt"), env=EnvConfig(id="Pendulum-v1"), num_episodes=3)
    reg = DemoRegRegularizer(cfg)
    learner = SACLearner(SetupContext.box(3, 1, 2.0), SACConfig(actor_hidden=(8,), critic_hidden=(8,), learn_alpha=False),
                         regularizers=[reg])
    reg.bind(learner, SetupContext(3, 1, 2.0, torch.device("cpu")))
    reg.pretrain_batch(4, torch.Generator().manual_seed(0))
    assert reg.demos["observations"].shape == (600, 3) and len(reg.demos["returns"]) == 3
    wrong = DemoRegRegularizer(DemoRegConfig(policy=str(tmp_path / "expert.pt"), env=EnvConfig(id="Hopper-v5")))
    wrong.bind(SACLearner(SetupContext.box(11, 3), SACConfig(actor_hidden=(8,), critic_hidden=(8,), learn_alpha=False),
                          regularizers=[wrong]), SetupContext(11, 3, 1.0, torch.device("cpu")))
    with pytest.raises(ConfigError, match="trained on Pendulum-v1"):
        wrong.pretrain_batch(4, torch.Generator().manual_seed(0))


# ---- end to end --------------------------------------------------------------------------------------------


def expert_overrides(path: Path, episodes: int) -> list[str]:
    return pendulum_offline_overrides(path) + [
        "agent=demoreg_sac",
        "env=pendulum",
        "regularizer.demoreg.source=dataset",
        f"regularizer.demoreg.num_episodes={episodes}",
    ]


def test_demoreg_resume_is_exact_through_behaviour_cloning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_expert_dataset(tmp_path / "expert.hdf5", episodes=2)
    base = expert_overrides(tmp_path / "expert.hdf5", 2) + [
        "regularizer.demoreg.bc_steps=40",
        "regularizer.demoreg.eval_every=10",
        "regularizer.demoreg.patience=2",
        "trainer.warmup_steps=20",
        "trainer.total_steps=50",
        "trainer.log_every=5",
        "trainer.eval_every=50",
        "trainer.eval_episodes=1",
        "trainer.checkpoint_every=10",
        "trainer.batch_size=32",
        "agent.actor_hidden=[32,32]",
        "agent.critic_hidden=[32,32]",
    ]
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    original = DemoRegRegularizer.pretrain_step

    def stop_at_bc_step_23(self, batch, step):  # type: ignore[no-untyped-def]
        out = original(self, batch, step)
        if step == 23:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(DemoRegRegularizer, "pretrain_step", stop_at_bc_step_23)
    part = run_config(base + [f"run_dir={tmp_path / 'part'}"], tmp_path)
    with pytest.raises(StopRequested):
        train(part, announce=False)
    assert final_state(tmp_path / "part")["extra"]["pretrain_done"] == {"demoreg": 23}
    monkeypatch.undo()
    train(part, announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(a, b)
    assert torch.equal(a["learner"]["regularizers"]["demoreg"]["extra"]["demos"]["observations"],
                       b["learner"]["regularizers"]["demoreg"]["extra"]["demos"]["observations"])
    for key, value in a["learner"]["regularizers"]["demoreg"]["modules"].items():
        assert torch.equal(value, b["learner"]["regularizers"]["demoreg"]["modules"][key]), key
    assert comparable(read_metrics(tmp_path / "full" / "metrics.jsonl")) == comparable(
        read_metrics(tmp_path / "part" / "metrics.jsonl")
    )


def test_demoreg_sac_learns_pendulum_from_5_demonstrations(tmp_path: Path) -> None:
    """The scripted expert scores about -140 and uniform random actions about -1200. Behaviour cloning on 5 of
    its episodes gives pi_BC (evaluated at the end of the warm-up, which acts with pi_BC: no update yet); SAC
    regularised towards it (fixed lambda = 10) must then score above -400 after 3,000 online env steps."""
    returns = write_expert_dataset(tmp_path / "expert.hdf5", episodes=5)
    assert np.mean(returns) > -200
    run = run_config(
        expert_overrides(tmp_path / "expert.hdf5", 5) + [
            "seed=0",
            "regularizer.demoreg.bc_steps=10000",
            "regularizer.demoreg.mode=fixed",
            "regularizer.demoreg.lam=10.0",
            "trainer.total_steps=4000",
            "trainer.warmup_steps=1000",
            "trainer.eval_every=1000",
            "trainer.eval_episodes=5",
            "trainer.log_every=500",
            "trainer.checkpoint_every=1000",
            "agent.actor_hidden=[64,64]",
            "agent.critic_hidden=[64,64]",
        ],
        tmp_path,
    )
    summary = train(run, announce=False)
    rows = read_metrics(Path(summary["metrics"]))
    evals = {r["step"]: r["eval/return"] for r in rows if r["kind"] == "eval"}
    warmup_returns = [r["train/episode_return"] for r in rows if r["kind"] == "episode" and r["step"] <= 1000]
    assert evals[1000] > -600 and np.mean(warmup_returns) > -1000  # pi_BC, deterministic and as sampled
    assert summary["last_return"] > -400, evals
