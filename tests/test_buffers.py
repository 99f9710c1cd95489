"""Tests for rlreg.data.buffers and reward transforms."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlreg.envs import SimulationErrorAsTruncation
from rlreg.data import DatasetError, MixedSampler, OfflineBuffer, ReplayBuffer, TransitionDataset, make_reward_fn


def make_dataset(n: int = 50, obs_dim: int = 3, act_dim: int = 2) -> TransitionDataset:
    """Row i has observations [i, 2i, ...] so every sampled row can be identified."""
    idx = np.arange(n, dtype=np.float32)
    obs = idx[:, None] * np.arange(1, obs_dim + 1, dtype=np.float32)
    terminals = idx % 7 == 6
    timeouts = idx % 10 == 9
    return TransitionDataset(
        observations=obs,
        actions=np.tile(idx[:, None] / n, (1, act_dim)),
        rewards=idx * 0.1,
        next_observations=obs + 1000,
        terminals=terminals,
        timeouts=timeouts,
        episode_ends=terminals | timeouts,
        source="toy",
    )


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Cheap stand-in for torch.testing.assert_close (whose first call costs ~1 s of imports)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), atol=atol, rtol=rtol)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_offline_buffer_shapes_dtypes_and_rows():
    ds = make_dataset()
    buf = OfflineBuffer(ds)
    assert len(buf) == 50
    b = buf.sample(256, gen())
    assert b.observations.shape == (256, 3) and b.next_observations.shape == (256, 3)
    assert b.actions.shape == (256, 2) and b.rewards.shape == (256,) and b.not_done.shape == (256,)
    assert all(t.dtype == torch.float32 for t in b)
    rows = b.observations[:, 0].long()
    assert rows.min() >= 0 and rows.max() < 50
    assert len(torch.unique(rows)) > 30  # uniform with replacement covers most rows
    # every field belongs to the same dataset row
    assert_close(b.observations[:, 1], 2 * rows.float())
    assert_close(b.next_observations, b.observations + 1000)
    assert_close(b.rewards, rows.float() * 0.1)
    assert_close(b.not_done, (rows % 7 != 6).float())  # time-outs (rows 9, 19, ...) keep not_done=1
    assert (b.not_done[rows % 10 == 9] == 1).all()


def test_offline_buffer_normalisation_and_reward_fn():
    ds = make_dataset()
    mean, std = ds.state_stats()
    buf = OfflineBuffer(ds, obs_mean=mean, obs_std=std, reward_fn=make_reward_fn("affine", scale=2.0, shift=-1.0))
    expected = torch.as_tensor((ds.observations - mean) / std)
    assert_close(buf.observations, expected)
    assert_close(buf.next_observations, torch.as_tensor((ds.next_observations - mean) / std))
    assert_close(buf.observations.mean(0), torch.zeros(3), atol=1e-5, rtol=0.0)
    assert_close(buf.rewards, torch.as_tensor(ds.rewards * 2 - 1))
    assert np.allclose(ds.rewards[:3], [0.0, 0.1, 0.2])  # the dataset itself is untouched


def test_offline_buffer_same_seed_same_batch():
    buf = OfflineBuffer(make_dataset())
    a, b, c = buf.sample(64, gen(3)), buf.sample(64, gen(3)), buf.sample(64, gen(4))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.observations, c.observations)


def test_offline_buffer_discrete_actions():
    ds = make_dataset()
    ds = TransitionDataset(ds.observations, np.arange(50) % 4, ds.rewards, ds.next_observations,
                           ds.terminals, ds.timeouts, ds.episode_ends)
    b = OfflineBuffer(ds).sample(8, gen())
    assert b.actions.dtype == torch.int64 and b.actions.shape == (8,)


def test_replay_buffer_wraps_around():
    rb = ReplayBuffer(5, obs_dim=2, act_dim=1)
    for i in range(8):
        rb.add(np.array([i, -i], np.float32), np.array([i / 10]), float(i), np.array([i + 1, 0.0]), i == 6)
    assert len(rb) == 5 and rb.capacity == 5 and rb.ptr == 3
    assert sorted(rb.observations[:, 0].tolist()) == [3, 4, 5, 6, 7]
    assert rb.observations[:, 0].tolist() == [5, 6, 7, 3, 4]  # ring order
    assert_close(rb.rewards, rb.observations[:, 0])
    assert rb.not_done.tolist() == [1, 0, 1, 1, 1]
    b = rb.sample(200, gen())
    assert set(b.observations[:, 0].long().tolist()) <= {3, 4, 5, 6, 7}


def test_replay_buffer_batched_add_and_not_done_from_terminated_only():
    rb = ReplayBuffer(10, obs_dim=3, act_dim=2)
    obs = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    terminated = torch.tensor([False, True, False, False])
    truncated = torch.tensor([False, False, True, False])  # noqa: F841 - never passed: truncation is not stored
    rb.add(obs, torch.ones(4, 2), torch.arange(4.0), obs + 1, terminated)
    assert len(rb) == 4
    assert rb.not_done[:4].tolist() == [1.0, 0.0, 1.0, 1.0]
    # a batch crossing the end of the ring, and one larger than the capacity
    rb.add(np.zeros((8, 3)) + 7, np.zeros((8, 2)), np.full(8, 7.0), np.zeros((8, 3)), np.zeros(8, bool))
    assert len(rb) == 10 and rb.ptr == 2
    assert rb.rewards.tolist() == [7.0, 7.0, 2.0, 3.0] + [7.0] * 6
    rb.add(np.arange(25.0)[:, None].repeat(3, 1), np.zeros((25, 2)), np.arange(25.0), np.zeros((25, 3)),
           np.zeros(25))
    assert sorted(rb.rewards.tolist()) == list(np.arange(15.0, 25.0))
    assert rb.ptr == (2 + 25) % 10 and rb.rewards[rb.ptr - 1] == 24.0
    with pytest.raises(ValueError, match="obs_dim"):
        rb.add(np.zeros(6), np.zeros(2), 0.0, np.zeros(6), False)


def test_replay_buffer_state_dict_round_trip():
    rb = ReplayBuffer(1000, obs_dim=4, act_dim=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        rb.add(rng.normal(size=(10, 4)), rng.normal(size=(10, 2)), rng.normal(size=10), rng.normal(size=(10, 4)),
               rng.random(10) < 0.2)
    state = rb.state_dict()
    assert state["size"] == 30 and state["ptr"] == 30 and state["observations"].shape == (30, 4)
    blob = io.BytesIO()
    torch.save(state, blob)
    assert blob.tell() < 20_000  # only the filled part is saved, not the 1000-row storage
    blob.seek(0)
    loaded = torch.load(blob, weights_only=True)
    rb2 = ReplayBuffer(1000, obs_dim=4, act_dim=2)
    rb2.load_state_dict(loaded)
    for x, y in zip(rb.sample(32, gen(5)), rb2.sample(32, gen(5))):
        assert torch.equal(x, y)
    more = (np.ones((5, 4)), np.ones((5, 2)), np.ones(5), np.ones((5, 4)), np.zeros(5))
    rb.add(*more)
    rb2.add(*more)
    for x, y in zip(rb.sample(64, gen(6)), rb2.sample(64, gen(6))):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(10, obs_dim=4, act_dim=2).load_state_dict(loaded)


def test_replay_buffer_state_dict_after_wrap():
    rb = ReplayBuffer(4, obs_dim=1, act_dim=1)
    for i in range(6):
        rb.add([float(i)], [0.0], float(i), [0.0], False)
    rb2 = ReplayBuffer(4, obs_dim=1, act_dim=1)
    rb2.load_state_dict(rb.state_dict())
    assert rb2.ptr == 2 and len(rb2) == 4
    rb.add([9.0], [0.0], 9.0, [0.0], False)
    rb2.add([9.0], [0.0], 9.0, [0.0], False)
    assert torch.equal(rb.rewards, rb2.rewards) and rb2.rewards.tolist() == [4.0, 5.0, 9.0, 3.0]


def test_mixed_sampler_exact_proportions():
    real = ReplayBuffer(10, obs_dim=1, act_dim=1)
    model = ReplayBuffer(10, obs_dim=1, act_dim=1)
    real.add(np.zeros((10, 1)), np.zeros((10, 1)), np.zeros(10), np.zeros((10, 1)), np.zeros(10))
    model.add(np.ones((10, 1)), np.zeros((10, 1)), np.ones(10), np.zeros((10, 1)), np.zeros(10))
    mix = MixedSampler(real, model, first_ratio=0.05)
    b = mix.sample(256, gen())
    n_real = round(256 * 0.05)  # 13
    assert b.rewards.shape == (256,) and (b.rewards[:n_real] == 0).all() and (b.rewards[n_real:] == 1).all()
    assert (MixedSampler(real, model, 1.0).sample(16, gen()).rewards == 0).all()
    assert (MixedSampler(real, model, 0.0).sample(16, gen()).rewards == 1).all()
    with pytest.raises(ValueError):
        MixedSampler(real, model, 1.5)


def test_reward_transforms():
    r = np.array([0.0, 1.0, -2.0], dtype=np.float32)
    np.testing.assert_allclose(make_reward_fn("identity")(r), r)
    np.testing.assert_allclose(make_reward_fn("affine", scale=3.0, shift=0.5)(r), [0.5, 3.5, -5.5])
    np.testing.assert_allclose(make_reward_fn("minus_one")(r), [-1.0, 0.0, -3.0])
    ds = TransitionDataset(
        observations=np.zeros((5, 1)), actions=np.zeros((5, 1)), rewards=np.array([1.0, 2.0, 10.0, 3.0, 1.0]),
        next_observations=np.zeros((5, 1)), terminals=np.zeros(5), timeouts=np.zeros(5),
        episode_ends=np.array([0, 1, 0, 1, 0]),  # returns 3, 13, and a trailing unfinished episode: 1
    )
    fn = make_reward_fn("return_range", dataset=ds)
    np.testing.assert_allclose(fn(r), r * 1000.0 / (13.0 - 1.0), rtol=1e-6)
    assert fn(r).dtype == np.float32
    with pytest.raises(DatasetError, match="dataset.reward_transform"):
        make_reward_fn("return_range")
    with pytest.raises(DatasetError, match=r"dataset\.reward_transform.*'sqrt'.*identity, affine"):
        make_reward_fn("sqrt")


class _Diverged(RuntimeError):
    pass


class _DivergesAtStep3(gym.Env):
    """A counter env whose simulator 'diverges' on its third step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 3:
            raise _Diverged("Physics state is invalid")
        return np.full(2, self.t, np.float32), 1.0, False, False, {}


def test_a_diverged_simulation_ends_the_episode_as_a_truncation():
    env = SimulationErrorAsTruncation(_DivergesAtStep3(), (_Diverged,))
    env.reset()
    buf = ReplayBuffer(16, 2, 1, gamma=0.5, n_step=3)
    obs = np.zeros(2, np.float32)
    for _ in range(2):
        nxt, r, term, trunc, info = env.step(np.zeros(1, np.float32))
        buf.add(obs, np.zeros(1), r, nxt, term, trunc)
        obs = nxt
    assert len(buf) == 0 and len(buf.writer) == 2  # two pending 3-step rows
    nxt, r, term, trunc, info = env.step(np.zeros(1, np.float32))
    assert (r, term, trunc) == (0.0, False, True) and "_Diverged: Physics state is invalid" in info["physics_error"]
    np.testing.assert_array_equal(nxt, np.full(2, 2, np.float32))  # the last valid observation
    # the two pending rows end as on a time limit at the last valid observation: 2-step and 1-step rows
    assert buf.end_episode(nxt) == 2 and len(buf.writer) == 0 and len(buf) == 2
    np.testing.assert_allclose(buf.rewards[:2].numpy(), [1.0 + 0.5 * 1.0, 1.0])
    np.testing.assert_allclose(buf.discounts[:2].numpy(), [0.25, 0.5])  # bootstrapped: gamma^k
    np.testing.assert_array_equal(buf.next_observations[:2].numpy(), np.full((2, 2), 2, np.float32))
    assert buf.end_episode(nxt) == 0  # nothing pending
    assert env.reset()[0].tolist() == [0.0, 0.0] and env.step(np.zeros(1, np.float32))[3] is False
    other = SimulationErrorAsTruncation(_DivergesAtStep3(), (KeyError,))
    other.reset()
    other.step(np.zeros(1)), other.step(np.zeros(1))
    with pytest.raises(_Diverged):  # errors not listed still surface
        other.step(np.zeros(1))


def test_a_rejected_replay_state_changes_nothing():
    buf = ReplayBuffer(8, 2, 1, gamma=0.5, n_step=3)
    buf.add(np.zeros(2), np.zeros(1), 1.0, np.ones(2), False)
    donor = ReplayBuffer(8, 2, 1, gamma=0.5, n_step=3)
    for t in range(4):
        donor.add(np.full(2, t), np.zeros(1), 2.0, np.full(2, t + 1), False)
    state = donor.state_dict()
    state["discounts"] = state["discounts"][:1]  # wrong length: checked after the other keys
    with pytest.raises(ValueError, match="'discounts' has shape"):
        buf.load_state_dict(state)
    assert len(buf) == 0 and len(buf.writer) == 1 and float(buf.observations.abs().sum()) == 0.0
