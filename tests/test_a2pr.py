"""A2PR (docs/agents/a2pr.md): BC target/gate with ties, value and VAE losses in the official order, the actor term and
its gradients, configs, exact resume and learning on the toy PointGoal task (defined in test_spot.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import run_config, stop_after_update
from test_spot import assert_learns_point_task, assert_same_state, final_state, point_dataset, point_overrides  # noqa: F401 (fixture)

from rlreg.learners.sac import SACConfig
from rlreg.learners.td3 import TD3Config
from rlreg.config import ConfigError
from rlreg.data.buffers import Batch
from rlreg.learners.sac import SACLearner
from rlreg.learners.td3 import TD3Learner
from rlreg.logging import read_metrics
from rlreg.regularizers import SetupContext
from rlreg.regularizers.a2pr import A2PRConfig, A2PRRegularizer, bc_target_and_weight
from rlreg.regularizers.base import ActorContext
from rlreg.trainers import StopRequested, train


def test_bc_target_and_gate_ties() -> None:
    v = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 0.0])
    q_data = torch.tensor([1.0, 2.0, 0.5, 1.0, 0.5, 1.0, 1.0])  # A_data = 1, 2, .5, 0, -.5, -1, 1
    q_gen = torch.tensor([2.0, 1.0, 0.5, 1.0, 0.0, 2.0, -1.0])  # A_gen  = 2, 1, .5, 0, -1,  0, -1
    data = torch.arange(14.0).reshape(7, 2)
    gen = -torch.arange(14.0).reshape(7, 2) - 1
    target, weight = bc_target_and_weight(q_data, q_gen, v, data, gen, mask=0.5)
    # a* = a_gen iff A_gen >= A_data (ties -> generated): rows 0, 2 (tie), 3 (tie), 5
    use_gen = torch.tensor([True, False, True, True, False, True, False])
    assert torch.equal(target, torch.where(use_gen[:, None], gen, data))
    # w = mask * (1[Q(s, a_gen) >= v] OR 1[Q(s, a) > v]) (official bool + bool), all four gate cases:
    #   both gates (rows 0-2) -> mask, not 2 mask; generated only (row 3: Q(s, a) = v is not > v; row 5) -> mask;
    #   dataset only (row 6) -> mask; neither (row 4) -> 0
    assert torch.equal(weight, 0.5 * torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]))
    official = 0.5 * ((q_gen >= v) + (q_data > v))  # the official expression on bool tensors, for the record
    assert torch.equal(weight, official)


def tiny(gamma: float = 0.9, **kw) -> tuple[TD3Learner, A2PRRegularizer]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    reg = A2PRRegularizer(A2PRConfig(value_hidden=(8, 8), vae_hidden=(16, 16), **kw))
    cfg = TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=2.5, gamma=gamma)
    learner = TD3Learner(SetupContext.box(3, 2), cfg, regularizers=[reg])
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    return learner, reg


def tiny_batch(b: int = 6, seed: int = 0, gamma: float = 0.9) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.one_step(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1,
                          torch.randn(b, generator=g), torch.randn(b, 3, generator=g),
                          torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])[:b], gamma)


def test_value_and_vae_losses_follow_the_official_order() -> None:
    learner, reg = tiny(vae_weight=1.5)
    batch = tiny_batch()
    with torch.no_grad():  # V(s) = median Q1(s, a): the gate Q1(s, a) > V(s) holds for some samples, not others
        reg.value[-1].weight.zero_()
        reg.value[-1].bias.fill_(learner.critic(batch.observations, batch.actions)[0].median().item())
    before = copy.deepcopy((learner, reg.value, reg.vae))
    torch.manual_seed(3)
    metrics = learner.update(batch, step=1, generator=torch.Generator().manual_seed(0))  # no actor step
    old_learner, old_value, old_vae = before
    new_critic = learner.critic  # the critic after this update's step (step 1 changes no target)
    with torch.no_grad():
        s, a, r, s2, nd, _ = batch
        # the critic's smoothed target action a' (same noise draw), reused for the value target
        noise = (0.2 * torch.randn(s2.shape[0], 2, generator=torch.Generator().manual_seed(0))).clamp(-0.5, 0.5)
        a2 = (old_learner.actor_target(s2) + noise).clamp(-1.0, 1.0)
        y_tgt = r + 0.9 * nd * old_learner.critic_target(s2, a2).min(0).values
        y_cur = r + 0.9 * nd * new_critic(s2, a2).min(0).values
        v = old_value(s).squeeze(-1)  # V before its own step
        expected_value_loss = ((v - torch.minimum(y_cur, y_tgt)) ** 2).mean()
        gate = (new_critic(s, a)[0] > v).float()
    assert 0 < gate.sum() < len(gate)
    torch.manual_seed(3)  # the VAE's latent noise is the first draw of the global RNG in this update
    with torch.no_grad():
        mu, sigma = old_vae.encode(s, a)
        recon = old_vae.decode(s, mu + sigma * torch.randn(mu.shape))
        kl = -0.5 * (1 + torch.log(sigma**2) - mu**2 - sigma**2)
        expected_vae = (1.5 * gate[:, None] * (recon - a) ** 2).mean() + 0.5 * kl.mean()
    assert metrics["a2pr/value_loss"].item() == pytest.approx(expected_value_loss.item(), rel=1e-5)
    assert metrics["a2pr/vae_loss"].item() == pytest.approx(expected_vae.item(), rel=1e-5)
    assert metrics["a2pr/gate"].item() == pytest.approx(gate.mean().item())
    for name, p in reg.vae.named_parameters():  # both nets took a step
        assert not torch.equal(p, dict(old_vae.named_parameters())[name]), name
    assert not torch.equal(reg.value[-1].weight, old_value[-1].weight)


def test_actor_term_value_and_gradient_match_the_official_expression() -> None:
    learner, reg = tiny(mask=0.7)
    batch = tiny_batch()
    s, a = batch.observations, batch.actions
    with torch.no_grad():
        q_data = learner.critic(s, a)[0]
    v = q_data - torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 0.0])  # pre-update V(s): data gate on, off, tie (off)
    reg._v, reg._q_data = v, q_data
    pi = (torch.rand(6, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    torch.manual_seed(4)
    bc = reg.actor_terms(batch, ActorContext(actions=pi, q=torch.zeros(6), step=2))["bc"]
    (grad,) = torch.autograd.grad(bc, pi)
    assert all(p.grad is None for p in reg.vae.parameters())  # no gradient reaches the VAE weights

    # the official A2PR.train actor lines, written out with the same latent noise
    pi2 = pi.detach().clone().requires_grad_(True)
    torch.manual_seed(4)
    recon_pi, _, _ = reg.vae(s, pi2)
    q_pi = learner.critic(s, recon_pi)[0].detach()
    adv_pi, adv_a = q_pi - v, q_data - v
    embedding = recon_pi * (adv_pi >= adv_a)[:, None] + a * (adv_a > adv_pi)[:, None]
    adv = 0.7 * ((q_pi >= v) + (q_data > v))  # bool + bool: logical OR, as in the official code
    expected = ((pi2 - embedding) ** 2 * adv[:, None]).mean()
    (expected_grad,) = torch.autograd.grad(expected, pi2)
    assert bc.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert all(x == 0.0 or x == pytest.approx(0.7) for x in adv.tolist())  # mask or 0, never 2 mask
    assert adv[[0, 3]].tolist() == pytest.approx([0.7, 0.7]) and adv[[1, 4]].tolist() == [0.0, 0.0]


def test_one_full_update_runs_all_nets_and_reports() -> None:
    learner, reg = tiny()
    gen = torch.Generator().manual_seed(0)
    actor_before = copy.deepcopy(learner.actor.state_dict())
    for step in (1, 2):
        metrics = learner.update(tiny_batch(seed=step), step, gen)
    assert {"a2pr/bc", "a2pr/value_loss", "a2pr/vae_loss", "actor/q_term"} <= set(metrics)
    assert any(not torch.equal(p, actor_before[k]) for k, p in learner.actor.state_dict().items())


def test_needs_the_td3_learner_and_valid_options() -> None:
    reg = A2PRRegularizer(A2PRConfig())
    with pytest.raises(ConfigError, match=r"a2pr needs a TD3-family learner.*agent\.learner=sac"):
        SACLearner(SetupContext.box(3, 2), SACConfig(actor_hidden=(8,), critic_hidden=(8,)), regularizers=[reg])
    with pytest.raises(ValueError, match=r"regularizer\.a2pr\.mask"):
        A2PRRegularizer(A2PRConfig(mask=-1.0))


def test_configs_follow_the_official_tables(tmp_path: Path) -> None:
    run = run_config(["agent=a2pr", "dataset=hopper-medium-v2"], tmp_path)
    lc, reg = run.agent.learner_config, run.agent.regularizers["a2pr"]
    assert lc.actor_hidden == (256,) * 3 and lc.critic_hidden == (256,) * 4 and reg.value_hidden == (256,) * 4
    assert (lc.q_norm_alpha, lc.gamma, reg.mask, reg.vae_weight, reg.vae_lr) == (2.5, 0.995, 0.4, 1.0, 1e-3)
    run = run_config(["agent=a2pr", "dataset=halfcheetah-medium-expert-v2"], tmp_path)
    assert (run.agent.learner_config.q_norm_alpha, run.agent.regularizers["a2pr"].mask) == (40.0, 10.0)


SMALL = [
    "agent=a2pr",
    "agent.actor_hidden=[16,16,16]",
    "agent.critic_hidden=[16,16,16,16]",
    "regularizer.a2pr.value_hidden=[16,16]",
    "regularizer.a2pr.vae_hidden=[16,16]",
    "trainer.batch_size=32",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=2",
    "trainer.checkpoint_every=20",
]


def test_a2pr_resume_is_exact(  # noqa: F811 (point_dataset is a fixture)
    tmp_path: Path, point_dataset: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = point_overrides(point_dataset[0]) + SMALL + ["trainer.total_steps=40"]
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    part = base + [f"run_dir={tmp_path / 'part'}"]
    train(run_config(part + ["trainer.total_steps=20"], tmp_path), announce=False)  # stopped by the budget
    stop_after_update(monkeypatch, A2PRRegularizer, 33)  # and by a signal mid-window
    with pytest.raises(StopRequested):
        train(run_config(part, tmp_path), announce=False)
    monkeypatch.undo()
    train(run_config(part, tmp_path), announce=False)
    full = final_state(tmp_path / "full")
    assert_same_state(full, final_state(tmp_path / "part"))
    assert set(full["learner"]["regularizers"]["a2pr"]["optimizers"]) == {"value", "vae"}
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert rows == read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert {"a2pr/bc", "a2pr/vae_loss"} <= set().union(*rows)


def test_a2pr_learns_the_point_task(tmp_path: Path, point_dataset: tuple[Path, float]) -> None:  # noqa: F811
    """A2PR reaches -10 on the point task in 1,500 updates (small networks)."""
    assert_learns_point_task(tmp_path, point_dataset, [
        "agent=a2pr",
        "agent.actor_hidden=[32,32,32]",
        "agent.critic_hidden=[32,32,32,32]",
        "regularizer.a2pr.value_hidden=[32,32,32,32]",
        "regularizer.a2pr.vae_hidden=[32,32]",
    ])
