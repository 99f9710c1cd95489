"""Learner and regularizer losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlreg.learners.sac import SACConfig
from rlreg.learners.td3 import TD3Config
from rlreg.data.buffers import Batch
from rlreg.learners.sac import SACLearner
from rlreg.learners.td3 import TD3Learner
from rlreg.regularizers import SetupContext
from rlreg.regularizers.base import ActorContext
from rlreg.regularizers.bc import BCConfig, BCRegularizer
from rlreg.regularizers.edac import EDACConfig, EDACRegularizer, diversity_loss


def tiny_batch(b: int = 4, obs_dim: int = 3, act_dim: int = 2, seed: int = 0, gamma: float = 0.99) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.one_step(
        torch.randn(b, obs_dim, generator=g),
        torch.rand(b, act_dim, generator=g) * 2 - 1,
        torch.randn(b, generator=g),
        torch.randn(b, obs_dim, generator=g),
        torch.tensor([1.0, 0.0, 1.0, 1.0])[:b],
        gamma,
    )


def bind(learner, regs):  # type: ignore[no-untyped-def]
    for reg in regs:
        reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    return learner


def test_bc_term_is_mean_squared_error_over_batch_and_dims() -> None:
    reg = BCRegularizer(BCConfig(weight=2.0))
    batch = tiny_batch(b=2)
    batch = batch._replace(actions=torch.zeros(2, 2))
    pi = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    terms = reg.actor_terms(batch, ActorContext(actions=pi, q=torch.zeros(2), step=1))
    # (0.25 + 0.25 + 1 + 0) / 4 = 0.375, times weight 2
    assert terms["loss"].item() == pytest.approx(0.75)


def test_td3_critic_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    cfg = TD3Config(actor_hidden=(8,), critic_hidden=(8,), target_noise=0.0, gamma=0.9)
    learner = TD3Learner(SetupContext.box(3, 2), cfg)
    batch = tiny_batch(gamma=0.9)
    before = copy.deepcopy(learner)
    metrics = learner.update(batch, step=1, generator=torch.Generator().manual_seed(0))
    q1, q2 = (before.critic.net.member(i) for i in range(2))
    t1, t2 = (before.critic_target.net.member(i) for i in range(2))
    with torch.no_grad():
        a_next = before.actor_target(batch.next_observations)
        x_next = torch.cat([batch.next_observations, a_next], -1)
        y = batch.rewards + 0.9 * batch.not_done * torch.minimum(t1(x_next), t2(x_next)).squeeze(-1)
        x = torch.cat([batch.observations, batch.actions], -1)
        expected = ((q1(x).squeeze(-1) - y) ** 2).mean() + ((q2(x).squeeze(-1) - y) ** 2).mean()
    assert metrics["critic/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "actor/loss" not in metrics  # delayed actor: step 1 is not a policy step (policy_freq=2)


def test_td3bc_q_normalised_term_is_minus_alpha_when_q_positive() -> None:
    # lambda = alpha / mean|Q|, so -lambda * mean Q = -alpha exactly when every Q(s, pi(s)) > 0.
    torch.manual_seed(0)
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=2.5))
    with torch.no_grad():
        learner.critic.net.linears[-1].bias.fill_(100.0)
    metrics = learner.update(tiny_batch(), step=2, generator=torch.Generator().manual_seed(0))
    assert metrics["actor/q_term"].item() == pytest.approx(-2.5, rel=1e-6)


def test_ddpg_setting_one_critic_no_smoothing_actor_every_step() -> None:
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), num_critics=1, target_noise=0.0,
                                         policy_freq=1))
    metrics = learner.update(tiny_batch(), step=1, generator=torch.Generator().manual_seed(0))
    assert learner.critic.num_members == 1 and "actor/loss" in metrics


class LinearEnsemble(torch.nn.Module):
    """Q_i(s, a) = <w_i, a>: action-gradients are exactly w_i."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w)
        self.num_members = w.shape[0]

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (act * self.w[:, None, :]).sum(-1)


def test_edac_diversity_is_mean_pairwise_cosine() -> None:
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    critic = LinearEnsemble(w)
    loss = diversity_loss(critic, torch.zeros(5, 3), torch.zeros(5, 2))
    c = 1 / math.sqrt(2)  # cos(w1, w2); cos(w1, w3) = 0; cos(w2, w3) = -1/sqrt(2)
    expected = 2 * (c + 0.0 - c) / (3 - 1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    w2 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert diversity_loss(LinearEnsemble(w2), torch.zeros(1, 3), torch.zeros(1, 2)).item() == pytest.approx(2.0)
    loss.backward()  # differentiable w.r.t. the critic (create_graph=True)
    assert critic.w.grad is not None


def test_sac_critic_target_and_alpha_loss_match_hand_computation() -> None:
    torch.manual_seed(0)
    cfg = SACConfig(actor_hidden=(8,), critic_hidden=(8,), num_critics=3, learn_alpha=False, init_alpha=0.5,
                    gamma=0.9)
    learner = SACLearner(SetupContext.box(3, 2), cfg)
    batch = tiny_batch(gamma=0.9)
    before = copy.deepcopy(learner)
    gen = torch.Generator().manual_seed(7)
    metrics = learner.update(batch, step=1, generator=gen)
    # replay the same random draws: the one hook order steps the critic first, so its target's next-action
    # sample is the first draw, from the actor as it was before the update
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        a_next, logp_next = before.actor(batch.next_observations, generator=gen)
        x_next = torch.cat([batch.next_observations, a_next], -1)
        q_next = torch.stack([before.critic_target.net.member(i)(x_next).squeeze(-1) for i in range(3)]).min(0).values
        y = batch.rewards + 0.9 * batch.not_done * (q_next - 0.5 * logp_next)
        x = torch.cat([batch.observations, batch.actions], -1)
        expected = sum(((before.critic.net.member(i)(x).squeeze(-1) - y) ** 2).mean() for i in range(3))
    assert metrics["critic/loss"].item() == pytest.approx(float(expected), rel=1e-5)
    assert metrics["alpha"].item() == pytest.approx(0.5)


def test_alpha_moves_towards_target_entropy() -> None:
    torch.manual_seed(0)
    learner = SACLearner(SetupContext.box(3, 2), SACConfig(actor_hidden=(8,), critic_hidden=(8,), target_entropy=100.0))
    learner.update(tiny_batch(), step=1, generator=torch.Generator().manual_seed(0))
    # entropy (< 100) below target -> L_alpha gradient raises log_alpha
    assert learner.log_alpha.item() > 0.0


def test_stacked_regularizers_both_act_and_report() -> None:
    def make(regs):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=2.5), regularizers=regs)
        return bind(learner, regs)

    batch = tiny_batch()
    stacked = make([BCRegularizer(BCConfig()), EDACRegularizer(EDACConfig(eta=1.0))])
    bc_only = make([BCRegularizer(BCConfig())])
    plain = make([])
    results = {}
    for name, learner in (("stacked", stacked), ("bc", bc_only), ("plain", plain)):
        metrics: dict = {}
        for step in (1, 2):
            metrics.update(learner.update(batch, step, torch.Generator().manual_seed(0)))
        results[name] = (learner, metrics)
    assert {"bc/loss", "edac/diversity"} <= set(results["stacked"][1])
    assert "edac/diversity" not in results["bc"][1]
    crit = lambda l: torch.cat([p.flatten() for p in l.critic.parameters()])  # noqa: E731
    act = lambda l: torch.cat([p.flatten() for p in l.actor.parameters()])  # noqa: E731
    # EDAC changes the critic update; BC changes the actor update.
    assert not torch.allclose(crit(results["stacked"][0]), crit(results["bc"][0]))
    assert not torch.allclose(act(results["bc"][0]), act(results["plain"][0]))


@pytest.mark.parametrize("agent,critic_fan,actor_fan,independent", [
    ("sacn", "out", "in", False),  # CORL sac_n.py: VectorizedLinear (fan = out), nn.Linear actor (fan = in)
    ("edac", "out", "in", False),  # CORL edac.py: the same networks
    ("rorl", "in", "out", True),  # YangRui2015/RORL: rlkit fanin_init, a second independently drawn target ensemble
])
def test_sac_family_agents_initialise_like_their_official_code(
    agent: str, critic_fan: str, actor_fan: str, independent: bool, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_config

    lc = run_config([f"agent={agent}", "dataset=halfcheetah-medium-v2"], tmp_path).agent.learner_config
    torch.manual_seed(0)
    learner = SACLearner(SetupContext.box(17, 6), lc)
    critic_dims, actor_dims = [17 + 6, *lc.critic_hidden], [17, *lc.actor_hidden]
    actor_lins = [m for m in learner.actor.trunk if isinstance(m, torch.nn.Linear)]
    for lins, dims, fan in ((list(learner.critic.net.linears)[:-1], critic_dims, critic_fan),
                            (actor_lins, actor_dims, actor_fan)):
        for i, lin in enumerate(lins):
            bound = 1 / math.sqrt(dims[i + 1] if fan == "out" else dims[i])  # first layer: 1/16 or 1/sqrt(23|17)
            assert 0.95 * bound < lin.weight.abs().max().item() <= bound, (agent, fan, i)
            assert torch.all(lin.bias == 0.1)
    pairs = zip(learner.critic.net.linears, learner.critic_target.net.linears)
    same = [torch.equal(a.weight, b.weight) for a, b in pairs]  # (hidden biases are 0.1 in both either way)
    assert (not any(same)) if independent else all(same)
    assert torch.equal(learner.critic_target.net.linears[0].bias, learner.critic.net.linears[0].bias)


def test_critic_and_actor_init_options_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_config
    from rlreg.config import ConfigError

    for key in ("critic_init", "actor_init"):
        with pytest.raises(ConfigError, match=rf"agent\.{key}='kaiming'"):
            run_config(["agent=sacn", f"agent.{key}=kaiming"], tmp_path)
