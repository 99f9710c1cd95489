"""MBPO and the single-model Lipschitz agent: schedule, model buffer, data hooks, spectral-norm critics, the
adversarial term in the learner, exact resume and a learning check on InvertedPendulum-v5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_config
from test_training import assert_same_learner, comparable, final_state

from rlreg.agents import build_agent
from rlreg.config import ConfigError
from rlreg.data.buffers import ReplayBuffer
from rlreg.envs import env_setup
from rlreg.learners.mbpo import MBPOLearner, model_buffer_capacity, rollout_length
from rlreg.logging import read_metrics
from rlreg.trainers import train

SMALL = [
    "agent.actor_hidden=[32,32]",
    "agent.critic_hidden=[32,32]",
    "agent.model.hidden=[32,32]",
    "agent.model.weight_decays=[2.5e-5,5e-5,1e-4]",
    "agent.model.max_epochs=5",
    "agent.rollout_batch_size=64",
    "agent.lipschitz_probe=32",
]


def test_rollout_length_schedule_by_hand() -> None:
    hopper = (20, 150, 1, 15)
    assert [rollout_length(e, hopper) for e in (0, 20, 21, 85, 149, 150, 400)] == [1, 1, 1, 8, 14, 15, 15]
    ant = (20, 100, 1, 25)
    assert rollout_length(60, ant) == 13  # int(40 / 80 * 24 + 1)
    assert rollout_length(3, (1, 15, 1, 1)) == 1


def test_model_buffer_capacity_follows_k() -> None:
    assert model_buffer_capacity(1, 100_000, 1000, 250, 1) == 400_000
    assert model_buffer_capacity(15, 100_000, 1000, 250, 1) == 6_000_000
    assert model_buffer_capacity(25, 100_000, 1000, 1000, 5) == 12_500_000  # Humanoid
    assert model_buffer_capacity(1, 100_000, 250, 250, 1) == 100_000  # InvertedPendulum: 250-step epochs


def _rows(buf: ReplayBuffer) -> torch.Tensor:
    """Rewards in insertion order (oldest first)."""
    r = buf.rewards[: buf.size]
    return r if buf.size < buf.capacity else torch.cat([r[buf.ptr:], r[: buf.ptr]])


def test_resized_buffer_keeps_the_newest_rows_in_order() -> None:
    buf = ReplayBuffer(5, 2, 1, gamma=0.9)
    for i in range(7):  # wraps: holds rows 2..6
        buf.add(torch.full((2,), float(i)), torch.zeros(1), float(i), torch.zeros(2), i == 4)
    grown = buf.resized(10)
    assert grown.capacity == 10 and _rows(grown).tolist() == [2, 3, 4, 5, 6]
    assert grown.not_done[:5].tolist() == [1, 1, 0, 1, 1] and grown.discounts[2].item() == 0.0
    assert torch.equal(grown.observations[:5, 0], torch.tensor([2.0, 3, 4, 5, 6]))
    grown.add(torch.zeros(2), torch.zeros(1), 7.0, torch.zeros(2), False)
    assert _rows(grown).tolist() == [2, 3, 4, 5, 6, 7]
    shrunk = buf.resized(3)
    assert _rows(shrunk).tolist() == [4, 5, 6]
    shrunk.add(torch.zeros(2), torch.zeros(1), 7.0, torch.zeros(2), False)
    assert _rows(shrunk).tolist() == [5, 6, 7]


def _learner(tmp_path: Path, agent: str = "mbpo", extra: tuple[str, ...] = ()) -> MBPOLearner:
    run = run_config([f"agent={agent}", "env=inverted_pendulum", "trainer.warmup_steps=100", *SMALL, *extra], tmp_path)
    assert run.env is not None
    learner = build_agent(run.agent, env_setup(run.env, "cpu"))
    assert isinstance(learner, MBPOLearner)
    return learner


def _real_buffer(n: int, obs_dim: int = 4) -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(1000, obs_dim, 1)
    s = torch.randn(n, obs_dim, generator=g) * 0.05
    a = torch.rand(n, 1, generator=g) * 6 - 3
    buf.add(s, a, torch.full((n,), 1000.0), s + 0.01 * a, torch.zeros(n))
    return buf


def test_model_phase_starts_after_warmup_and_rollouts_fill_the_model_buffer(tmp_path: Path) -> None:
    learner = _learner(tmp_path, extra=("agent.model_train_freq=50", "agent.epoch_length=100",
                                        "agent.rollout_schedule=[0,2,1,3]", "agent.termination=never"))
    real, gen = _real_buffer(150), torch.Generator().manual_seed(0)
    assert learner.on_env_step(100, real, gen) == {}
    assert learner.model_buffer is None
    m = learner.on_env_step(101, real, gen)  # t = 0: epoch 0, k = 1
    assert learner.rollout_k == 1 and len(learner.model_buffer) == 64
    assert learner.model_buffer.capacity == model_buffer_capacity(1, 64, 100, 50, 1) == 128
    for key in ("model/holdout_mse", "model/rollout_length", "model/mean_rollout_length", "model/q_lipschitz"):
        assert torch.isfinite(m[key]) and m[key].dim() == 0, key
    assert learner.on_env_step(102, real, gen) == {}
    before = learner.model_buffer.observations[:64].clone()
    learner.on_env_step(251, real, gen)  # t = 150: epoch 1, k = int(1/2 * 2 + 1) = 2: reallocated, data kept
    assert learner.rollout_k == 2 and learner.model_buffer.capacity == 256
    assert torch.equal(learner.model_buffer.observations[:64], before)
    assert len(learner.model_buffer) == 64 + 2 * 64
    # the sampler mixes int(B * real_ratio) real rows (reward 1000 here) with model rows
    batch = learner.sampler(real).sample(256, gen)
    assert (batch.rewards == 1000.0).sum().item() == int(256 * 0.05) == 12
    assert batch.discounts.shape == (256,)


def test_terminated_model_rows_stop_and_store_done(tmp_path: Path) -> None:
    learner = _learner(tmp_path, extra=("agent.rollout_schedule=[0,1,3,3]",))
    real = _real_buffer(150)
    real.observations[:150, 1] = 0.19  # pole angle near the 0.2 limit: many predicted next states terminate
    real.next_observations[:150, 1] = 0.25
    learner.on_env_step(101, real, torch.Generator().manual_seed(0))
    buf = learner.model_buffer
    done = buf.not_done[: len(buf)] == 0
    assert done.any()
    angles = buf.next_observations[: len(buf), 1]
    assert torch.equal(done, angles.abs() > 0.2)
    assert torch.equal(buf.discounts[: len(buf)], 0.99 * buf.not_done[: len(buf)])
    assert len(buf) < 3 * 64  # terminated rollouts were not continued


def _layers(critic) -> list:
    return list(critic.net.linears)


def test_spectral_norm_critics_and_their_targets(tmp_path: Path) -> None:
    learner = _learner(tmp_path, "mbpo_lipschitz")
    tau = learner.config.tau
    learner.train()
    real, gen = _real_buffer(300), torch.Generator().manual_seed(0)
    learner.on_env_step(101, real, gen)
    sampler = learner.sampler(real)
    for lin, tgt in zip(_layers(learner.critic), _layers(learner.critic_target)):
        assert lin.spectral_norm and tgt.spectral_norm
        assert tgt.sn_u.data_ptr() != lin.sn_u.data_ptr()  # the target's own power-iteration vectors
    for step in range(1, 41):
        target_before = [lin.weight.detach().clone() for lin in _layers(learner.critic_target)]
        u_before = [lin.sn_u.clone() for lin in _layers(learner.critic_target)]
        learner.update(sampler.sample(64, gen), step, gen)
        for lin, old, online in zip(_layers(learner.critic_target), target_before, _layers(learner.critic)):
            # Polyak on the raw (un-normalised) weights; u, v are the target's own, moved by its own forward
            assert torch.allclose(lin.weight, torch.lerp(old, online.weight.detach(), tau), atol=1e-6)
        assert any(not torch.equal(lin.sn_u, u) for lin, u in zip(_layers(learner.critic_target), u_before))
    # one power iteration per training forward: the estimate lags a moving weight by a few percent at most
    scale = learner.config.critic_spectral_norm_scale  # c: each layer is c * W / sigma(W)
    assert scale == 3.0  # the agent's default (docs/agents/mbpo_lipschitz.md)
    for net in (learner.critic, learner.critic_target):
        for lin in _layers(net):
            sigma = torch.linalg.matrix_norm(lin.effective_weight().detach(), ord=2)
            assert (sigma <= 1.05 * scale).all() and (sigma >= 0.9 * scale).all(), sigma
    plain = _learner(tmp_path, "mbpo")
    assert max(torch.linalg.matrix_norm(lin.weight.detach(), ord=2).max().item() for lin in _layers(plain.critic)) > 1.5
    # in eval mode the stored u, v are used as they are (no power iteration)
    learner.eval()
    u = [lin.sn_u.clone() for lin in _layers(learner.critic_target)]
    learner.critic_target(real.observations[:8], real.actions[:8])
    assert all(torch.equal(lin.sn_u, x) for lin, x in zip(_layers(learner.critic_target), u))
    # the actor is not spectrally normalised
    assert not any("sn_u" in name for name, _ in learner.actor.named_buffers())


def test_adversarial_term_in_the_critic_loss(tmp_path: Path) -> None:
    learner = _learner(tmp_path, "mbpo_lipschitz", ("regularizer.lipschitz.eps=0.5",))
    real, gen = _real_buffer(300), torch.Generator().manual_seed(0)
    learner.on_env_step(101, real, gen)
    batch = learner.sampler(real).sample(64, gen)
    metrics = learner.update(batch, 1, gen)
    assert metrics["lipschitz/robust"].item() > 0.0
    assert learner.state_std().shape == (4,)
    assert torch.allclose(learner.state_std(), real.observations[:300].std(0, unbiased=False), rtol=0.3)


def test_lipschitz_needs_a_learner_that_provides_the_state_std(tmp_path: Path) -> None:
    run = run_config(["agent=sac", "env=inverted_pendulum", "regularizer=[lipschitz]"], tmp_path)
    assert run.env is not None
    with pytest.raises(ConfigError, match="regularizer=lipschitz needs state_std from its learner"):
        build_agent(run.agent, env_setup(run.env, "cpu"))


def test_bad_model_options_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent.model.num_elites"):
        run_config(["agent=mbpo", "env=inverted_pendulum", "agent.model.num_elites=9"], tmp_path)
    with pytest.raises(ConfigError, match="agent.model.weight_decays"):
        run_config(["agent=mbpo", "env=inverted_pendulum", "agent.model.hidden=[8]"], tmp_path)
    with pytest.raises(ConfigError, match="agent.real_ratio"):
        run_config(["agent=mbpo", "env=inverted_pendulum", "agent.real_ratio=1.5"], tmp_path)


RESUME = [
    "agent=mbpo_lipschitz",
    "env=inverted_pendulum",
    *SMALL,
    "agent.model.type=gaussian",
    "agent.model.num_members=3",
    "agent.model.num_elites=2",
    "agent.model_train_freq=20",
    "agent.epoch_length=40",
    "agent.rollout_schedule=[0,2,1,3]",
    "trainer.warmup_steps=50",
    "trainer.utd_ratio=2",
    "trainer.batch_size=32",
    "trainer.log_every=10",
    "trainer.eval_every=100",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=70",
]


def test_resume_is_exact(tmp_path: Path) -> None:
    train(run_config(RESUME + ["trainer.total_steps=200", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    # stopped at env step 140 (model trained at steps 51, 71, ..., 131; k grew 1 -> 2 -> 3, the model buffer was
    # reallocated twice), then resumed: three more model trainings and rollouts
    train(run_config(RESUME + ["trainer.total_steps=140", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    mid = final_state(tmp_path / "part")["learner"]["extra"]
    assert mid["rollout_k"] == 3 and mid["model_buffer"]["capacity"] == 3 * 64 * 2
    train(run_config(RESUME + ["trainer.total_steps=200", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(a, b)
    ea, eb = a["learner"]["extra"], b["learner"]["extra"]
    assert ea["rollout_k"] == eb["rollout_k"] == 3
    for key, value in ea["model_buffer"].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(eb["model_buffer"][key])), key
    assert torch.equal(a["learner"]["networks"]["dynamics.elites"], b["learner"]["networks"]["dynamics.elites"])
    rows_a = comparable(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    assert rows_a == comparable(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert any("model/holdout_mse" in r for r in rows_a) and any("lipschitz/robust" in r for r in rows_a)


LEARN = [
    "agent=mbpo",
    "env=inverted_pendulum",
    "agent.actor_hidden=[64,64]",
    "agent.critic_hidden=[64,64]",
    "agent.model.num_members=3",
    "agent.model.num_elites=2",
    "agent.model.hidden=[64,64,64,64]",
    "agent.model.max_epochs=5",
    "agent.rollout_batch_size=1000",
    "agent.lipschitz_probe=0",
    "trainer.total_steps=1000",
    "trainer.warmup_steps=250",
    "trainer.utd_ratio=10",
    "trainer.batch_size=128",
    "trainer.eval_every=1000",
    "trainer.eval_episodes=5",
    "trainer.log_every=250",
    "trainer.checkpoint_every=1000",
]
LEARN_RETURN = 50.0  # measured: 78.4 (torch 2.13 CPU, 1 thread); the untrained policy: about 25


def test_mbpo_learns_inverted_pendulum(tmp_path: Path) -> None:
    """MBPO (3 Gaussian members, 64-unit networks, UTD 10, 1,000-state rollouts, real ratio 0.05) on
    InvertedPendulum-v5: after 1,000 env steps (250 random) the deterministic policy balances for at least
    LEARN_RETURN steps on average over 5 episodes (the untrained policy: about 25)."""
    summary = train(run_config(LEARN + [f"run_dir={tmp_path / 'run'}"], tmp_path), announce=False)
    assert summary["last_return"] >= LEARN_RETURN
