"""DroQ (docs/agents/droq.md): dropout Q-functions with dropout on in the target, the mean-Q actor, UTD 20 with one
actor update per env step, exact resume, learning on Pendulum-v1."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import run_config
from test_training import assert_same_learner, comparable, final_state

import rlreg.learners.sac as sac_module
from rlreg.regularizers.base import SetupContext
from rlreg.learners.sac import SACConfig
from rlreg.data.buffers import Batch
from rlreg.learners.sac import SACLearner
from rlreg.logging import read_metrics
from rlreg.trainers import train

SMALL = ["agent.actor_hidden=[32,32]", "agent.critic_hidden=[32,32]"]


def droq_config(**kw) -> SACConfig:  # type: ignore[no-untyped-def]
    base = dict(actor_hidden=(8,), critic_hidden=(8, 8), critic_dropout=0.5, critic_layer_norm=True,
                actor_q_reduce="mean", init="xavier", log_std_bounds=(-20.0, 2.0), update_order="simultaneous",
                policy_freq=20)
    base.update(kw)
    return SACConfig(**base)  # type: ignore[arg-type]


def tiny_batch(b: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.one_step(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1,
                          torch.randn(b, generator=g), torch.randn(b, 3, generator=g),
                          (torch.rand(b, generator=g) > 0.2).float(), gamma=0.99)


def test_droq_config_composes_to_the_paper_settings(tmp_path: Path) -> None:
    run = run_config(["agent=droq"], tmp_path)
    lc = run.agent.learner_config
    assert (lc.num_critics, lc.critic_layer_norm, lc.actor_q_reduce) == (2, True, "mean")
    assert (lc.policy_freq, run.trainer.utd_ratio, run.trainer.warmup_steps) == (20, 20, 5000)
    assert lc.target_entropy == -1.0 and run.env.id == "Hopper-v5"  # conf/tuned/droq/hopper.yaml
    assert lc.log_std_bounds == (-20.0, 2.0) and lc.init_alpha == 1.0
    assert run_config(["agent=droq", "env=walker2d"], tmp_path).agent.learner_config.target_entropy == -3.0
    # dropout rate per env: the REDQ-based codebase's README table (Hopper 1e-4, Walker2d 5e-3, Ant 1e-2), 0.01 else
    rates = {env: run_config(["agent=droq", f"env={env}"], tmp_path).agent.learner_config.critic_dropout
             for env in ("hopper", "walker2d", "ant", "halfcheetah", "dmc-cheetah-run")}
    assert rates == {"hopper": 1e-4, "walker2d": 5e-3, "ant": 1e-2, "halfcheetah": 0.01, "dmc-cheetah-run": 0.01}
    assert lc.critic_dropout == 1e-4  # env=hopper is the default
    assert run_config(["agent=droq", "agent.critic_dropout=0.1"], tmp_path).agent.learner_config.critic_dropout == 0.1
    # one actor update per env step whatever the UTD
    assert run_config(["agent=droq", "trainer.utd_ratio=5"], tmp_path).agent.learner_config.policy_freq == 5


def test_dropout_q_block_order_is_linear_dropout_layernorm_relu() -> None:
    learner = SACLearner(SetupContext.box(3, 2), droq_config())
    member = learner.critic.net.member(0)
    kinds = [type(m).__name__ for m in member]
    assert kinds == ["Linear", "Dropout", "LayerNorm", "ReLU", "Linear", "Dropout", "LayerNorm", "ReLU", "Linear"]
    # the batched ensemble computes exactly that block (checked with dropout off)
    learner.critic.eval()
    x_s, x_a = torch.randn(5, 3), torch.rand(5, 2)
    member.eval()
    expected = member(torch.cat([x_s, x_a], -1)).squeeze(-1)
    assert torch.allclose(learner.critic(x_s, x_a)[0], expected, atol=1e-6)


def test_target_critic_keeps_dropout_on_during_updates() -> None:
    torch.manual_seed(0)
    learner = SACLearner(SetupContext.box(3, 2), droq_config())
    learner.train()
    s, a = torch.randn(64, 3), torch.rand(64, 2)
    with torch.no_grad():  # no_grad does not switch dropout off: the target is stochastic
        q1, q2 = learner.critic_target(s, a), learner.critic_target(s, a)
    assert not torch.allclose(q1, q2)
    modes: list[bool] = []
    target_net = learner.critic_target.net
    original = target_net.forward

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        modes.append(target_net.training)
        return original(*args, **kwargs)

    target_net.forward = spy  # type: ignore[method-assign]
    learner.update(tiny_batch(), step=1, generator=torch.Generator().manual_seed(0))
    assert modes == [True]  # the TD target was computed with dropout on
    assert not any(p.requires_grad for p in learner.critic_target.parameters())


def test_actor_step_every_policy_freq_updates_on_the_mean_q() -> None:
    """At update 20 (policy_freq=20, simultaneous): L_pi = mean(alpha log pi(a~|s) - (Q1 + Q2)/2 (s, a~)) from
    the parameters at the start of the update; updates 1..19 leave the actor and alpha untouched."""
    torch.manual_seed(0)
    learner = SACLearner(SetupContext.box(3, 2), droq_config(critic_dropout=0.0, init_alpha=0.3))
    batch = tiny_batch()
    actor0, alpha0 = copy.deepcopy(learner.actor.state_dict()), learner.log_alpha.item()
    for step in range(1, 20):
        metrics = learner.update(batch, step, torch.Generator().manual_seed(step))
        assert "actor/loss" not in metrics
    assert all(torch.equal(v, learner.actor.state_dict()[k]) for k, v in actor0.items())
    assert learner.log_alpha.item() == alpha0
    before = copy.deepcopy(learner)
    metrics = learner.update(batch, 20, torch.Generator().manual_seed(99))
    with torch.no_grad():
        a, logp = before.actor(batch.observations, generator=torch.Generator().manual_seed(99))
        x = torch.cat([batch.observations, a], -1)
        q_mean = (before.critic.net.member(0)(x) + before.critic.net.member(1)(x)).squeeze(-1) / 2
        expected = (0.3 * logp - q_mean).mean()
    assert metrics["actor/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert learner.log_alpha.item() != alpha0


ONLINE = [
    "agent=droq",
    "env=pendulum",
    "trainer.warmup_steps=30",
    "trainer.log_every=10",
    "trainer.eval_every=60",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=30",
    "trainer.batch_size=32",
    "agent.critic_dropout=0.1",
    *SMALL,
]


def test_utd20_is_20_critic_updates_and_one_actor_update_per_env_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polyak_calls = []
    original = sac_module.polyak_update_
    monkeypatch.setattr(sac_module, "polyak_update_", lambda *a: (polyak_calls.append(1), original(*a)))
    train(run_config(ONLINE + ["trainer.total_steps=40"], tmp_path), announce=False)
    state = final_state(tmp_path / "runs" / "droq" / "Pendulum-v1" / "seed0")
    env_steps_with_updates = 40 - 30
    assert state["extra"]["updates"] == 20 * env_steps_with_updates
    opt = state["learner"]["optimizers"]
    adam_steps = {name: int(next(iter(opt[name]["state"].values()))["step"]) for name in ("critic", "actor", "alpha")}
    assert adam_steps == {"critic": 200, "actor": 10, "alpha": 10}
    assert len(polyak_calls) == 200  # the target follows every critic update


def test_droq_resume_is_exact_mid_episode(tmp_path: Path) -> None:
    base = ONLINE + ["trainer.utd_ratio=4", "trainer.log_every=5", "trainer.checkpoint_every=15"]
    train(run_config(base + ["trainer.total_steps=60", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    # stopped at env step 45, in the middle of a 200-step episode, then resumed
    train(run_config(base + ["trainer.total_steps=45", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    train(run_config(base + ["trainer.total_steps=60", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert a["extra"]["updates"] == 4 * 30
    assert_same_learner(a, b)  # dropout masks come from the checkpointed global torch RNG
    assert comparable(read_metrics(tmp_path / "full" / "metrics.jsonl")) == comparable(
        read_metrics(tmp_path / "part" / "metrics.jsonl")
    )


def test_droq_learns_pendulum(tmp_path: Path) -> None:
    """Random actions score about -1200 on Pendulum-v1; DroQ (UTD 20, dropout 0.01 + LayerNorm critics,
    64-unit nets, batch 128) must reach -400 after 750 learning env steps (15,000 updates)."""
    run = run_config(
        [
            "agent=droq",
            "env=pendulum",
            "seed=1",
            "trainer.total_steps=1250",
            "trainer.warmup_steps=500",
            "trainer.batch_size=128",
            "trainer.eval_every=1250",
            "trainer.eval_episodes=5",
            "trainer.log_every=250",
            "trainer.checkpoint_every=1250",
            "agent.actor_hidden=[64,64]",
            "agent.critic_hidden=[64,64]",
        ],
        tmp_path,
    )
    summary = train(run, announce=False)
    rows = read_metrics(Path(summary["metrics"]))
    first_episodes = [r["train/episode_return"] for r in rows if r["kind"] == "episode"][:2]
    assert sum(first_episodes) / 2 < -900  # the warm-up really was random
    assert [r["updates"] for r in rows if r["kind"] == "train"][-1] == 20 * 750
    assert summary["last_return"] > -400, summary
