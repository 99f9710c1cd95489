"""DecQN / REValueD: discretisation, n-step rows, targets, the revalued penalty, exploration, the batched
ensemble, exact resume and a learning check (docs/agents/revalued.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlreg.data.buffers import NStepWriter
from rlreg.learners.decqn import next_values, selected_utilities, td_loss
from rlreg.nets import DecoupledQEnsemble
from rlreg.regularizers.revalued import revalued_penalty

NEG = float("-inf")


# ---------------------------------------------------------------------------------------------------
# n-step rows
# ---------------------------------------------------------------------------------------------------
def _episode_rows(writer: NStepWriter, rewards, ends, start: int, obs_offset: float):
    """Push one episode (obs t is the vector [obs_offset + t]); returns the emitted rows as numpy arrays."""
    rows = []
    for t, r in enumerate(rewards):
        last = t == len(rewards) - 1
        out = writer.push(torch.tensor([obs_offset + t]), torch.tensor([start + t]), r,
                          torch.tensor([obs_offset + t + 1]), last and ends == "terminated", last and ends == "truncated")
        if out is not None:
            rows.extend(zip(*(x.tolist() for x in out)))
    return rows


def test_nstep_rows_on_a_truncated_and_a_terminated_episode() -> None:
    g = 0.5
    w = NStepWriter(gamma=g, n_step=3)
    rows = _episode_rows(w, [1.0, 2.0, 3.0, 4.0, 5.0], "truncated", 0, 0.0)
    rows += _episode_rows(w, [10.0, 20.0], "terminated", 100, 50.0)
    # (obs, action, R, next_obs, terminated, discount)
    expected = [
        ([0.0], [0], 1 + g * 2 + g * g * 3, [3.0], 0.0, g ** 3),
        ([1.0], [1], 2 + g * 3 + g * g * 4, [4.0], 0.0, g ** 3),
        # truncation at t = 4: the last three rows bootstrap from s_5 with gamma^k, k = rewards summed
        ([2.0], [2], 3 + g * 4 + g * g * 5, [5.0], 0.0, g ** 3),
        ([3.0], [3], 4 + g * 5, [5.0], 0.0, g ** 2),
        ([4.0], [4], 5.0, [5.0], 0.0, g),
        # termination after two steps: both rows flushed without bootstrap
        ([50.0], [100], 10 + g * 20, [52.0], 1.0, 0.0),
        ([51.0], [101], 20.0, [52.0], 1.0, 0.0),
    ]
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3]
        assert got[2] == pytest.approx(want[2]) and got[4] == want[4] and got[5] == pytest.approx(want[5])
    assert len(w) == 0


def test_nstep_pending_rows_survive_a_state_dict_round_trip() -> None:
    a, b = NStepWriter(0.9, 3), NStepWriter(0.9, 3)
    for t in range(2):
        assert a.push(torch.tensor([float(t)]), torch.tensor([t]), float(t + 1), torch.tensor([t + 1.0]), False, False) is None
    state = a.state_dict()
    b.load_state_dict(state)
    args = (torch.tensor([2.0]), torch.tensor([2]), 3.0, torch.tensor([3.0]), False, True)
    for x, y in zip(a.push(*args), b.push(*args)):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="n_step"):
        NStepWriter(0.9, 2).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# targets and losses on tiny tensors (K = 2 members, B = 1, N = 2 dimensions, dimension 1 has 2 of 3 bins)
# ---------------------------------------------------------------------------------------------------
MASK = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, NEG]])
ONLINE = torch.tensor([[[[1.0, 3.0, 2.0], [0.0, 1.0, 9.0]]],
                       [[[4.0, 0.0, 1.0], [2.0, 0.5, 9.0]]]]) + MASK
TARGET = torch.tensor([[[[2.0, 1.0, 5.0], [3.0, 1.0, 9.0]]],
                       [[[0.0, 6.0, 1.0], [1.0, 4.0, 9.0]]]]) + MASK


def test_decqn_double_mean_target() -> None:
    # member 0 selects bins (1, 1), member 1 selects (0, 0) (the 9.0 on the padded bin never wins);
    # both are evaluated on the average of the two target nets: mean = [[1, 3.5, 3], [2, 2.5, -inf]]
    v = next_values("double_mean", TARGET, ONLINE)
    assert v.tolist() == [[(3.5 + 2.5) / 2], [(1.0 + 2.0) / 2]]


def test_revalued_decqn_target_uses_each_members_own_target() -> None:
    v = next_values("decqn", TARGET, ONLINE)
    assert v.tolist() == [[(1.0 + 1.0) / 2], [(0.0 + 1.0) / 2]]


def test_revalued_mean_target() -> None:
    # ensemble-mean utilities [[1, 3.5, 3], [2, 2.5, -inf]] -> max per dim (3.5, 2.5) -> mean 3.0, for both members
    assert next_values("mean", TARGET).tolist() == [[3.0], [3.0]]


def test_revalued_redq_target() -> None:
    # member 0: max (5, 3) -> 4; member 1: max (6, 4) -> 5; min over the subset {0, 1} = 4, for all members
    assert next_values("redq", TARGET, subset=torch.tensor([1, 0])).tolist() == [[4.0], [4.0]]
    assert next_values("redq", TARGET, subset=torch.tensor([1])).tolist() == [[5.0], [5.0]]


def test_td_loss_is_huber_of_the_mean_utility_reduced_over_members() -> None:
    u = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]],
                      [[[5.0, 6.0], [7.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (K=2, B=2, N=2, n=2)
    actions = torch.tensor([[1, 0], [0, 1]])
    chosen = selected_utilities(u, actions)
    assert chosen.tolist() == [[[2.0, 3.0], [0.0, 0.0]], [[6.0, 7.0], [1.0, 1.0]]]
    q = chosen.mean(-1)  # [[2.5, 0], [6.5, 1]]
    y = torch.tensor([[2.0, 3.0], [4.0, 1.5]])
    # Huber(1): |d| <= 1: d^2 / 2, else |d| - 1/2
    huber = [[0.125, 2.5], [2.0, 0.125]]
    per_member = [sum(h) / 2 for h in huber]
    assert td_loss(q, y, 1.0, "sum").item() == pytest.approx(sum(per_member))
    assert td_loss(q, y, 1.0, "mean").item() == pytest.approx(sum(per_member) / 2)


def test_revalued_penalty_matches_a_hand_computation() -> None:
    u = torch.tensor([[[1.0, 2.0]], [[0.5, -1.0]]], requires_grad=True)  # (K=2, B=1, N=2)
    ubar = torch.tensor([[[1.5, 2.0]], [[0.0, 0.0]]])
    y = torch.tensor([[2.0], [0.5]])
    loss, wmean = revalued_penalty(u, ubar, y)
    w = [[1 - math.exp(-1.0), 1 - math.exp(0.0)], [1 - math.exp(0.0), 1 - math.exp(-1.5)]]
    sq = [[0.25, 0.0], [0.25, 1.0]]
    expected = sum(sum(wi * si for wi, si in zip(wr, sr)) / 2 for wr, sr in zip(w, sq)) / 2
    assert loss.item() == pytest.approx(expected)
    assert wmean.item() == pytest.approx(sum(map(sum, w)) / 4)
    loss.backward()  # the weights are constants: d/du = w (u - ubar) / (N K B)
    assert u.grad[1, 0, 1].item() == pytest.approx(w[1][1] * 2 * (-1.0) / 4)


# ---------------------------------------------------------------------------------------------------
# the batched ensemble equals K separate networks
# ---------------------------------------------------------------------------------------------------
def _member_forward(net: DecoupledQEnsemble, k: int, x: torch.Tensor) -> torch.Tensor:
    """Member ``k`` of ``net`` as a plain single network (its own weights, ordinary F.linear calls)."""
    lin = lambda layer, h: F.linear(h, layer.weight[k].T, layer.bias[k, 0])  # noqa: E731
    h0 = lin(net.inp, x)
    r = lin(net.block.fc2, torch.relu(lin(net.block.fc1, h0)))
    if net.arch == "revalued":
        r = torch.relu(r)
    if net.shared_layer_norm:
        h = F.layer_norm(h0 + r, (net.hidden,), net.norm.weight, net.norm.bias)
    else:
        h = F.layer_norm(h0 + r, (net.hidden,), net.norm.weight[k, 0], net.norm.bias[k, 0])
    if net.arch == "acme":
        h = F.elu(h)
    return lin(net.head, h).view(x.shape[0], net.num_dims, net.max_bins)


@pytest.mark.parametrize("arch,shared", [("acme", False), ("revalued", True), ("revalued", False)])
def test_ensemble_equals_separate_networks(arch: str, shared: bool) -> None:
    torch.manual_seed(0)
    net = DecoupledQEnsemble(5, 3, 4, num_members=4, hidden=16, arch=arch, shared_layer_norm=shared)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for p in net.norm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(7, 5)
    out = net(x)
    assert out.shape == (4, 7, 3, 4)
    for k in range(4):
        torch.testing.assert_close(out[k], _member_forward(net, k, x))
        torch.testing.assert_close(net(x, members=k)[0], out[k])
    # a loss on member 2 moves no other member's own weights
    net(x)[2].sum().backward()
    for lin in (net.inp, net.block.fc1, net.block.fc2, net.head):
        assert lin.weight.grad[[0, 1, 3]].abs().sum() == 0 and lin.weight.grad[2].abs().sum() > 0


def test_acme_init_is_fan_out_variance_scaling() -> None:
    net = DecoupledQEnsemble(11, 6, 3, num_members=2, hidden=512)
    assert net.head.weight.abs().max() <= math.sqrt(0.999 / 18) and net.head.bias.abs().max() == 0
    assert net.inp.weight.abs().max() <= math.sqrt(0.999 / 512)
    assert net.inp.weight.abs().max() > 0.9 * math.sqrt(0.999 / 512)


# ---------------------------------------------------------------------------------------------------
# the learner (built as the trainer builds it)
# ---------------------------------------------------------------------------------------------------
def _learner(agent: str = "decqn", overrides: list[str] | None = None, low=(-1.0, -2.0, 0.0), high=(1.0, 2.0, 1.0),
             obs_dim: int = 4, regularizer: str | None = None):
    from conftest import compose

    from rlreg.agents import build_agent
    from rlreg.config import to_run_config
    from rlreg.learners.base import ActionSpec
    from rlreg.regularizers.base import SetupContext

    extra = [f"regularizer={regularizer}"] if regularizer is not None else []
    run = to_run_config(compose([f"agent={agent}", "env=pendulum", "agent.hidden=16", *extra, *(overrides or [])]))
    spec = ActionSpec(np.asarray(low, np.float32), np.asarray(high, np.float32))
    setup = SetupContext(obs_dim=obs_dim, act_dim=spec.dim, max_action=spec.max_action, device=torch.device("cpu"),
                         action_spec=spec)
    torch.manual_seed(0)
    return build_agent(run.agent, setup), run


def test_discretisation_round_trip_and_masking_of_unequal_bins() -> None:
    learner, _ = _learner(overrides=["agent.bins=[2,3,5]"])
    spec = learner.action_spec
    assert spec.is_discrete and spec.bins == (2, 3, 5) and spec.max_bins == 5 and spec.stored_dtype == torch.int64
    table = [[-1.0, 1.0], [-2.0, 0.0, 2.0], [0.0, 0.25, 0.5, 0.75, 1.0]]
    for idx in [(0, 0, 0), (1, 2, 4), (0, 1, 2), (1, 0, 3)]:
        assert spec.to_env(np.array(idx)).tolist() == [table[i][b] for i, b in enumerate(idx)]
    # the padded bins get huge utilities: no argmax, max or mean may ever use them
    with torch.no_grad():
        bias = learner.critic.head.bias.view(learner.critic.num_members, 1, 3, 5)
        bias[:, :, 0, 2:] = 1e6
        bias[:, :, 1, 3:] = 1e6
    obs = torch.randn(64, 4)
    gen = torch.Generator().manual_seed(0)
    for action in (learner.act(obs), learner.act(obs, deterministic=False, generator=gen)):
        assert (action < torch.tensor([2, 3, 5])).all()
    u = learner.utilities(obs)
    for kind in ("double_mean", "decqn", "mean", "redq"):
        v = next_values(kind, u, u, subset=torch.tensor([0, 1]))
        assert torch.isfinite(v).all() and v.abs().max() < 1e3
    with pytest.raises(Exception, match="agent.bins"):
        _learner(overrides=["agent.bins=[2,3]"])


def test_epsilon_decays_only_on_random_actions() -> None:
    learner, _ = _learner("revalued", ["agent.bins=40", "agent.explore_member=ensemble", "agent.epsilon=0.6",
                                       "agent.epsilon_decay=0.9", "agent.epsilon_min=0.2"], regularizer="[]")
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(4)
    greedy = learner.act(obs)
    eps, decays = 0.6, 0
    for _ in range(300):
        action = learner.act(obs, deterministic=False, generator=gen)
        random = not torch.equal(action, greedy)  # a uniform joint action over 40^3 equals the greedy one w.p. 1.6e-5
        eps = max(eps * 0.9, 0.2) if random else eps
        decays += random
        assert learner.epsilon.item() == pytest.approx(eps)
        learner.random_action(gen)  # warm-up actions and evaluation never decay epsilon
        learner.act(obs)
        assert learner.epsilon.item() == pytest.approx(eps)
    assert 0 < decays < 300 and learner.epsilon.item() == pytest.approx(0.2)
    assert learner.extra_state()["epsilon"].item() == pytest.approx(0.2)


def test_decqn_exploration_is_per_dimension() -> None:
    learner, _ = _learner(overrides=["agent.bins=50"])  # eps 0.1, N = 3: a dimension explores w.p. 0.0357
    obs = torch.randn(1, 4).expand(20000, 4)
    greedy = learner.act(obs[:1])
    action = learner.act(obs, deterministic=False, generator=torch.Generator().manual_seed(0))
    changed = (action != greedy).float()
    q = (0.1 / 3) / (0.1 / 3 + 0.9) * 49 / 50
    assert changed.mean(0).sub(q).abs().max() < 0.006
    # dimensions explore independently: P(two dims changed) = q^2, not q
    assert (changed.sum(1) >= 2).float().mean() < 3 * q * q
    assert learner.epsilon.item() == pytest.approx(0.1)


def test_revalued_without_regularizer_is_the_official_training_step() -> None:
    """One update of agent=revalued regularizer=[] against the official step written out here
    (davidireland3/REValueD@2e811a5 REValueD.update with update_type Mean / REDQ, Polyak tau)."""
    import copy

    from rlreg.data.buffers import Batch

    for target in ("mean", "decqn"):
        learner, run = _learner("revalued", ["agent.ensemble_size=3", "agent.bins=[2,3,4]", f"agent.target={target}",
                                             "agent.grad_clip=0.05"], regularizer="[]")
        cfg = run.agent.learner_config
        critic, critic_target = copy.deepcopy(learner.critic), copy.deepcopy(learner.critic_target)
        opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
        mask = torch.tensor([[0, 0, NEG, NEG], [0, 0, 0, NEG], [0, 0, 0, 0]])
        gen = torch.Generator().manual_seed(1)
        b = 32
        batch = Batch(torch.randn(b, 4, generator=gen), torch.stack([torch.randint(0, n, (b,), generator=gen) for n in (2, 3, 4)], 1),
                      torch.randn(b, generator=gen), torch.randn(b, 4, generator=gen), torch.ones(b),
                      torch.full((b,), 0.99 ** 3) * (torch.rand(b, generator=gen) > 0.1))
        # official layout (B, K, N, n)
        q_all = critic(batch.observations).permute(1, 0, 2, 3) + mask
        q = q_all.gather(-1, batch.actions[:, None, :, None].expand(b, 3, 3, 1)).squeeze(-1).mean(-1)
        with torch.no_grad():
            nt = critic_target(batch.next_observations).permute(1, 0, 2, 3) + mask
            if target == "mean":
                nv = nt.mean(1).max(-1).values.mean(-1, keepdim=True).repeat(1, 3)
            else:
                sel = (critic(batch.next_observations).permute(1, 0, 2, 3) + mask).argmax(-1)
                nv = nt.gather(-1, sel.unsqueeze(-1)).squeeze(-1).mean(-1)
            y = batch.rewards[:, None] + batch.discounts[:, None] * nv
        loss = torch.nn.HuberLoss()(q, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.copy_(cfg.tau * p + (1 - cfg.tau) * tp)
        metrics = learner.update(batch, 1, torch.Generator().manual_seed(0))
        assert metrics["critic/loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        for mine, ref in ((learner.critic, critic), (learner.critic_target, critic_target)):
            for (name, p), r in zip(mine.named_parameters(), ref.parameters()):
                torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6, msg=name)


def test_revalued_regularizer_adds_beta_times_the_penalty() -> None:
    from rlreg.data.buffers import Batch

    learner, _ = _learner("revalued", ["agent.ensemble_size=3", "regularizer.revalued.beta=0.7"])
    gen = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16, 3), generator=gen), torch.randn(16, generator=gen),
                  torch.randn(16, 4, generator=gen), torch.ones(16), torch.full((16,), 0.97))
    with torch.no_grad():
        learner.critic_target.head.bias.add_(0.3)  # target != online
        u = selected_utilities(learner.utilities(batch.observations), batch.actions)
        ubar = selected_utilities(learner.utilities(batch.observations, target=True), batch.actions)
        y = batch.rewards + batch.discounts * next_values("mean", learner.utilities(batch.next_observations, target=True))
        expected, _ = revalued_penalty(u, ubar, y)
    metrics = learner.update(batch, 1, torch.Generator().manual_seed(0))
    assert metrics["revalued/loss"].item() == pytest.approx(0.7 * expected.item(), rel=1e-5)
    assert 0 < metrics["revalued/weight_mean"].item() < 1


def test_revalued_regularizer_needs_a_decqn_learner() -> None:
    from conftest import compose

    from rlreg.agents import build_agent
    from rlreg.config import ConfigError, to_run_config
    from rlreg.regularizers.base import SetupContext

    run = to_run_config(compose(["agent=sac", "env=pendulum", "regularizer=[revalued]"]))
    with pytest.raises(ConfigError, match="regularizer=revalued needs a DECQN-family learner"):
        build_agent(run.agent, SetupContext.box(3, 1, 2.0))


def test_replay_buffer_writes_nstep_rows_and_checkpoints_the_pending_ones() -> None:
    from rlreg.data.buffers import ReplayBuffer

    g = 0.5
    buf = ReplayBuffer(20, 1, 1, action_dtype=torch.int64, gamma=g, n_step=3)
    other = ReplayBuffer(20, 1, 1, action_dtype=torch.int64, gamma=g, n_step=3)
    steps = [(0.0, 1.0, False, False), (1.0, 2.0, False, False), (2.0, 3.0, False, False), (3.0, 4.0, False, False),
             (4.0, 5.0, False, True), (50.0, 10.0, False, False), (51.0, 20.0, True, False)]
    for t, (o, r, term, trunc) in enumerate(steps):
        buf.add([o], [t], r, [o + 1], term, trunc)
        if t == 3:  # mid-episode: two transitions pending
            other.load_state_dict(buf.state_dict())
        if t > 3:
            other.add([o], [t], r, [o + 1], term, trunc)
    assert len(buf) == 7
    assert buf.rewards[:7].tolist() == pytest.approx([2.75, 4.5, 6.25, 6.5, 5.0, 20.0, 20.0])
    assert buf.discounts[:7].tolist() == pytest.approx([g ** 3, g ** 3, g ** 3, g ** 2, g, 0.0, 0.0])
    assert buf.next_observations[:7, 0].tolist() == [3.0, 4.0, 5.0, 5.0, 5.0, 52.0, 52.0]
    assert buf.not_done[:7].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert buf.actions[:7, 0].tolist() == list(range(7))
    for key, value in buf.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(other.state_dict()[key])) if not isinstance(value, dict) else True
    with pytest.raises(ValueError, match="one transition"):
        buf.add([[0.0], [1.0]], [[0], [1]], [0.0, 0.0], [[1.0], [2.0]], [False, False])


# ---------------------------------------------------------------------------------------------------
# end to end: exact resume and learning
# ---------------------------------------------------------------------------------------------------
def test_revalued_resume_is_exact_mid_episode(tmp_path) -> None:
    from conftest import run_config
    from test_training import assert_same_learner, comparable, final_state

    from rlreg.logging import read_metrics
    from rlreg.trainers import train

    base = ["agent=revalued", "env=pendulum", "agent.hidden=16", "agent.ensemble_size=3", "agent.bins=5",
            "agent.epsilon_decay=0.99", "trainer.warmup_steps=40", "trainer.update_every=2", "trainer.log_every=10",
            "trainer.eval_every=150", "trainer.eval_episodes=1", "trainer.checkpoint_every=70", "trainer.batch_size=16"]
    train(run_config(base + ["trainer.total_steps=150", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    # stop at env step 70: mid-episode, with two n-step transitions pending and epsilon part-way down
    train(run_config(base + ["trainer.total_steps=70", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    mid = final_state(tmp_path / "part")
    assert mid["extra"]["updates"] == 15 and 0.05 < mid["learner"]["extra"]["epsilon"].item() < 1.0
    train(run_config(base + ["trainer.total_steps=150", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(a, b)
    assert torch.equal(a["learner"]["extra"]["epsilon"], b["learner"]["extra"]["epsilon"])
    for key, value in a["extra"]["buffer"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["extra"]["buffer"][key]), key
    assert comparable(read_metrics(tmp_path / "full" / "metrics.jsonl")) == comparable(
        read_metrics(tmp_path / "part" / "metrics.jsonl"))


def test_decqn_learns_discretised_pendulum(tmp_path) -> None:
    """DecQN with 11 bins on Pendulum-v1, 6,000 env steps (1,000 uniform, then one update every 2 steps): the
    mean greedy return of the evaluations at 5k and 6k steps beats -900 (a uniform random policy gets about
    -1,200, the untrained greedy one about -1,500; single runs of this budget reach -300 to -500 but are noisy)."""
    from conftest import run_config

    from rlreg.logging import read_metrics
    from rlreg.trainers import train

    run = run_config(["agent=decqn", "env=pendulum", "agent.bins=11", "agent.hidden=64", "agent.lr=1e-3",
                      "trainer.total_steps=6000", "trainer.warmup_steps=1000", "trainer.warmup_policy=uniform",
                      "trainer.update_every=2", "trainer.batch_size=128", "trainer.eval_every=1000",
                      "trainer.eval_episodes=5", "trainer.log_every=500", "trainer.checkpoint_every=6000",
                      f"run_dir={tmp_path / 'run'}"], tmp_path)
    train(run, announce=False)
    evals = [r["eval/return"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 6 and evals[0] < -1000, evals
    assert np.mean(evals[-2:]) > -900, evals


# ---------------------------------------------------------------------------------------------------
# robustness evaluation of discrete agents
# ---------------------------------------------------------------------------------------------------
def test_attacks_on_a_discrete_learner_stay_in_the_box_and_hurt_more_than_random() -> None:
    from rlreg.robustness import ATTACKS, ObservationAttack, QFunction, discrete_policy_change, policy_action

    learner, _ = _learner("revalued", ["agent.ensemble_size=3", "agent.bins=7"], regularizer="[]")
    learner.eval().requires_grad_(False)

    class Loaded:  # what QFunction reads of a loaded run
        run_dir, obs_mean, obs_std = "tiny", None, None

    Loaded.learner = learner
    q_fn = QFunction(Loaded())
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    scale, eps = torch.ones(4), 0.5
    perturbed = {}
    for mode in ATTACKS:
        x_hat = ObservationAttack(mode, eps, learner, scale, q_fn=q_fn, generator=torch.Generator().manual_seed(4))(x)
        assert ((x_hat - x).abs() <= eps * (1 + 1e-5)).all()
        perturbed[mode] = x_hat
    with torch.no_grad():
        q = {m: q_fn(x, policy_action(learner, perturbed[m])).mean().item() for m in perturbed}
        moved = {m: discrete_policy_change(learner, x, perturbed[m]).mean().item() for m in perturbed}
        q_clean = q_fn(x, policy_action(learner, x)).mean().item()
    for mode in ("min_Q", "min_Q_mixed_order"):
        assert q[mode] < q["random"] and q[mode] <= q_clean + 1e-6, (mode, q)
    for mode in ("action_diff", "action_diff_mixed_order"):
        assert moved[mode] > moved["random"], (mode, moved)


def test_robustness_cli_on_a_revalued_run(tmp_path) -> None:
    from conftest import run_config

    from rlreg.robustness import main
    from rlreg.trainers import train

    run_dir = tmp_path / "rev"
    train(run_config(["agent=revalued", "env=pendulum", "agent.hidden=16", "agent.ensemble_size=3", "agent.bins=5",
                      "trainer.total_steps=100", "trainer.warmup_steps=50", "trainer.log_every=50",
                      "trainer.eval_every=100", "trainer.eval_episodes=1", "trainer.checkpoint_every=100",
                      "trainer.batch_size=16", f"run_dir={run_dir}"], tmp_path), announce=False)
    rows = main([str(run_dir), "--eps", "0", "0.1", "--attack", "random", "min_Q", "action_diff_first_order",
                 "--episodes", "1", "--std", "ones"])
    assert len(rows) == 6 and all(np.isfinite(r["return_mean"]) for r in rows)
    clean = [r["return_mean"] for r in rows if r["eps"] == 0.0]
    assert clean == [clean[0]] * 3  # eps = 0 is the unattacked greedy policy under every mode
    assert (run_dir / "robustness.csv").exists()


def test_bad_options_are_refused_naming_them() -> None:
    from conftest import compose

    from rlreg.config import ConfigError, to_run_config

    for override, match in [("agent.target=foo", "agent.target"), ("agent.bins=1", "agent.bins"),
                            ("agent.epsilon=2", "agent.epsilon"), ("trainer.update_every=0", "trainer.update_every"),
                            ("agent.target=redq agent.redq_subset=11", "agent.redq_subset")]:
        with pytest.raises(ConfigError, match=match):
            to_run_config(compose(["agent=revalued", *override.split()]))


@pytest.mark.parametrize("agent", ["decqn", "revalued", "mbpo"])
def test_online_only_learners_refuse_offline_and_finetune_trainers(agent: str) -> None:
    """DecQN's discrete bins and MBPO's model rollouts need the online trainer: other modes are refused by name."""
    from conftest import compose

    from rlreg.config import ConfigError, to_run_config

    for mode in ("offline", "finetune"):
        with pytest.raises(ConfigError, match=f"trains with trainer=online only, not trainer.mode={mode}"):
            to_run_config(compose([f"agent={agent}", f"trainer={mode}", "dataset=hopper-embedded"]))
