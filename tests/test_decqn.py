"""DecQN / REValueD: discretisation, n-step rows, targets, the revalued penalty, exploration, the batched
ensemble, exact resume and a learning check (online_mb.md 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlreg.data.buffers import NStepWriter
from rlreg.learners.decqn import next_values, selected_utilities, td_loss, uniform_bins
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


def test_uniform_bins_respect_unequal_bin_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = uniform_bins(torch.tensor([2, 3, 5]), (4000,), gen)
    for i, n in enumerate((2, 3, 5)):
        counts = torch.bincount(draws[:, i], minlength=n)
        assert counts.numel() == n and (counts > 4000 / n * 0.85).all()


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
