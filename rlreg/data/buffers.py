"""Device-resident offline and online replay buffers.

``sample`` is the hot path: indices come from ``torch.randint`` on the buffer's device,
with no host synchronisation (no ``.item()``, no numpy).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from rlreg.data.dataset import TransitionDataset, make_reward_fn
from rlreg.data.errors import DatasetError

__all__ = ["BUFFER_ROWS", "Batch", "OfflineBuffer", "ReplayBuffer", "MixedSampler", "Sampler", "make_reward_fn"]


class Batch(NamedTuple):
    observations: Tensor       # (B, obs_dim)
    actions: Tensor            # (B, act_dim)
    rewards: Tensor            # (B,)
    next_observations: Tensor  # (B, obs_dim)
    not_done: Tensor           # (B,) float, 1 - terminal (a truncation never zeroes it)
    # (B,) gamma^k * (1 - terminated) for the k rewards summed into ``rewards`` (k = 1 unless an n-step
    # writer filled the buffer); every TD target is rewards + discounts * next value
    discounts: Tensor

    @classmethod
    def one_step(cls, observations: Tensor, actions: Tensor, rewards: Tensor, next_observations: Tensor,
                 not_done: Tensor, gamma: float) -> "Batch":
        """One-step transitions: ``discounts = gamma * not_done``."""
        return cls(observations, actions, rewards, next_observations, not_done, gamma * not_done)


class Sampler(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch: ...


class OfflineBuffer:
    """A whole :class:`TransitionDataset` stored as device tensors.

    Observations (and next observations) are normalised with ``obs_mean``/``obs_std`` if
    given; ``reward_fn`` is applied once at construction.
    """

    def __init__(
        self,
        dataset: TransitionDataset,
        device: torch.device | str = "cpu",
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        reward_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        gamma: float = 0.99,
    ) -> None:
        if len(dataset) == 0:
            raise DatasetError(f"{dataset.source}: cannot build an OfflineBuffer from an empty dataset")
        self.device = torch.device(device)
        obs = dataset.observations
        next_obs = dataset.next_observations
        if (obs_mean is None) != (obs_std is None):
            raise ValueError("OfflineBuffer: give both obs_mean and obs_std, or neither")
        if obs_mean is not None and obs_std is not None:
            mean = np.asarray(obs_mean, dtype=np.float32)
            std = np.asarray(obs_std, dtype=np.float32)
            obs = (obs - mean) / std
            next_obs = (next_obs - mean) / std
        rewards = dataset.rewards if reward_fn is None else np.asarray(reward_fn(dataset.rewards))
        if rewards.shape != dataset.rewards.shape:
            raise ValueError(f"reward_fn changed the reward shape from {dataset.rewards.shape} to {rewards.shape}")
        self.obs_mean = None if obs_mean is None else np.asarray(obs_mean, dtype=np.float32)
        self.obs_std = None if obs_std is None else np.asarray(obs_std, dtype=np.float32)

        def to(x: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype).to(self.device)

        act_dtype = torch.int64 if np.issubdtype(dataset.actions.dtype, np.integer) else torch.float32
        self.observations = to(obs)
        self.actions = to(dataset.actions, act_dtype)
        self.rewards = to(rewards)
        self.next_observations = to(next_obs)
        self.not_done = to(1.0 - dataset.terminals.astype(np.float32))
        self.gamma = float(gamma)
        self.discounts = self.not_done * self.gamma
        self.size = len(dataset)

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniform sample with replacement."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return Batch(
            self.observations[idx], self.actions[idx], self.rewards[idx],
            self.next_observations[idx], self.not_done[idx], self.discounts[idx],
        )


BUFFER_ROWS = ("observations", "actions", "rewards", "next_observations", "not_done", "discounts")


class ReplayBuffer:
    """Online ring buffer stored on ``device``; only ``terminated`` (not truncated) sets done."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        action_dtype: torch.dtype = torch.float32,
        gamma: float = 0.99,
        n_step: int = 1,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"ReplayBuffer: capacity must be positive, got {capacity}")
        self.device = torch.device(device)
        self._capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.action_dtype = action_dtype
        self.observations = torch.zeros(capacity, obs_dim, device=self.device)
        self.actions = torch.zeros(capacity, act_dim, dtype=action_dtype, device=self.device)
        self.rewards = torch.zeros(capacity, device=self.device)
        self.next_observations = torch.zeros(capacity, obs_dim, device=self.device)
        self.not_done = torch.zeros(capacity, device=self.device)
        self.discounts = torch.zeros(capacity, device=self.device)
        self.gamma = float(gamma)
        if n_step != 1:
            raise ValueError(f"ReplayBuffer: n_step={n_step} is not supported yet (1 only)")
        self.n_step = int(n_step)
        self.ptr = 0
        self.size = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return self.size

    def _t(self, x: Any, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(x, dtype=dtype, device=self.device)

    @staticmethod
    def _rows(x: Tensor, n: int, tail: tuple[int, ...], name: str) -> Tensor:
        try:
            return x.reshape(n, *tail)
        except RuntimeError as e:
            raise ValueError(
                f"ReplayBuffer.add: '{name}' has shape {tuple(x.shape)}; expected ({'n' if n < 0 else n}, "
                f"{', '.join(map(str, tail))}) or one row"
            ) from e

    def add(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any = False) -> None:
        """Add one transition (1-D ``obs``) or a batch (leading dim n); numpy or tensors. ``truncated`` (a time
        limit) never stops bootstrapping; it ends the pending n-step window."""
        o = self._t(obs, torch.float32)
        if o.dim() == 1 and o.numel() != self.obs_dim:
            raise ValueError(f"ReplayBuffer.add: 1-D obs of length {o.numel()}; expected obs_dim = {self.obs_dim}")
        o = self._rows(o, -1, (self.obs_dim,), "obs")
        n = o.shape[0]
        no = self._rows(self._t(next_obs, torch.float32), n, (self.obs_dim,), "next_obs")
        a = self._rows(self._t(action, self.action_dtype), n, (self.act_dim,), "action")
        r = self._rows(self._t(reward, torch.float32), n, (), "reward")
        nd = 1.0 - self._rows(self._t(terminated, torch.float32), n, (), "terminated")
        self._write(o, a, r, no, nd, nd * self.gamma)

    def _write(self, o: Tensor, a: Tensor, r: Tensor, no: Tensor, nd: Tensor, disc: Tensor) -> None:
        """Store finished rows (their rewards and discounts already summed over their k steps)."""
        n = o.shape[0]
        if n > self._capacity:  # only the newest `capacity` rows survive
            skip = n - self._capacity
            self.ptr = (self.ptr + skip) % self._capacity
            o, no, a, r, nd, disc = o[skip:], no[skip:], a[skip:], r[skip:], nd[skip:], disc[skip:]
            n = self._capacity
        first = min(n, self._capacity - self.ptr)
        for dst, src in ((self.observations, o), (self.next_observations, no), (self.actions, a),
                         (self.rewards, r), (self.not_done, nd), (self.discounts, disc)):
            dst[self.ptr:self.ptr + first] = src[:first]
            if first < n:
                dst[: n - first] = src[first:]
        self.ptr = (self.ptr + n) % self._capacity
        self.size = min(self.size + n, self._capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniform sample with replacement over the filled part."""
        if self.size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return Batch(
            self.observations[idx], self.actions[idx], self.rewards[idx],
            self.next_observations[idx], self.not_done[idx], self.discounts[idx],
        )

    def resized(self, capacity: int) -> "ReplayBuffer":
        """A new buffer of ``capacity`` rows holding this one's newest ``min(size, capacity)`` rows in insertion
        order (MBPO reallocates its model buffer whenever the rollout length changes, keeping the data)."""
        new = ReplayBuffer(capacity, self.obs_dim, self.act_dim, device=self.device, action_dtype=self.action_dtype,
                           gamma=self.gamma, n_step=self.n_step)
        order = torch.arange(self.size, device=self.device)
        if self.size == self._capacity:
            order = (order + self.ptr) % self._capacity
        rows = [getattr(self, key)[order] for key in ("observations", "actions", "rewards", "next_observations",
                                                        "not_done", "discounts")]
        new._write(*rows)
        return new

    def state_dict(self) -> dict[str, Tensor | int]:
        """Filled rows (CPU copies) + ``ptr``/``size``/``capacity``; loadable with ``weights_only=True``."""
        n = self.size
        state: dict[str, Tensor | int] = {"ptr": self.ptr, "size": n, "capacity": self._capacity}
        for key in BUFFER_ROWS:
            state[key] = getattr(self, key)[:n].detach().to("cpu", copy=True)
        return state

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        """Restore a :meth:`state_dict` from a buffer of the same capacity and dims."""
        size, ptr, cap = int(state["size"]), int(state["ptr"]), int(state["capacity"])
        if cap != self._capacity:
            raise ValueError(f"ReplayBuffer.load_state_dict: saved capacity {cap} != this buffer's {self._capacity}")
        if not (0 <= size <= cap and 0 <= ptr < cap and (size == cap or ptr == size)):
            raise ValueError(f"ReplayBuffer.load_state_dict: inconsistent size {size} / ptr {ptr} for capacity {cap}")
        if "discounts" not in state:  # written before discounts were stored: one-step rows
            state = {**state, "discounts": state["not_done"] * self.gamma}  # type: ignore[operator]
        for key in BUFFER_ROWS:
            src = state[key]
            assert isinstance(src, Tensor)
            dst = getattr(self, key)
            if src.shape[0] != size or src.shape[1:] != dst.shape[1:]:
                raise ValueError(
                    f"ReplayBuffer.load_state_dict: '{key}' has shape {tuple(src.shape)}; expected "
                    f"({size}, {', '.join(map(str, dst.shape[1:]))})"
                )
            dst[:size] = src.to(device=self.device, dtype=dst.dtype)
        self.size, self.ptr = size, ptr


class MixedSampler:
    """Sample ``round(B * first_ratio)`` rows from ``first`` and the rest from ``second``."""

    def __init__(self, first: Sampler, second: Sampler, first_ratio: float) -> None:
        if not 0.0 <= first_ratio <= 1.0:
            raise ValueError(f"MixedSampler: first_ratio must be in [0, 1], got {first_ratio}")
        self.first, self.second, self.first_ratio = first, second, float(first_ratio)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n_first = int(round(batch_size * self.first_ratio))
        n_second = batch_size - n_first
        if n_second == 0:
            return self.first.sample(n_first, generator)
        if n_first == 0:
            return self.second.sample(n_second, generator)
        a = self.first.sample(n_first, generator)
        b = self.second.sample(n_second, generator)
        return Batch(*(torch.cat([x, y], dim=0) for x, y in zip(a, b)))
