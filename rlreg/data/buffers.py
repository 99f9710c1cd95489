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
        self.n_step = int(n_step)
        # n > 1: rows are written once their n rewards are in (or the episode ended): NStepWriter below
        self.writer = NStepWriter(self.gamma, self.n_step) if self.n_step > 1 else None
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
        if self.writer is None:
            self._write(o, a, r, no, nd, nd * self.gamma)
            return
        if n != 1:
            raise ValueError(f"ReplayBuffer.add: with n_step={self.n_step} add one transition at a time (got {n})")
        rows = self.writer.push(o[0], a[0], float(r[0]), no[0], bool(nd[0] == 0), bool(truncated))
        if rows is not None:
            self._write_nstep(rows)

    def end_episode(self, last_obs: Any) -> int:
        """End the episode as a truncation after the last added transition, whose next observation is ``last_obs``
        (e.g. the step after it diverged and is not stored): the n-step writer's pending transitions are written
        with bootstrap from ``last_obs``, as on a time limit. Returns how many rows were written."""
        if self.writer is None or not len(self.writer):
            return 0
        return self._write_nstep(self.writer.flush(self._t(last_obs, torch.float32).reshape(self.obs_dim)))

    def _write_nstep(self, rows: tuple[Tensor, ...]) -> int:
        """Store the n-step writer's finished ``rows`` (see :meth:`NStepWriter.push`); returns how many."""
        obs_k, act_k, ret_k, next_k, term_k, disc_k = rows
        self._write(obs_k, act_k, ret_k, next_k, 1.0 - term_k, disc_k)
        return int(obs_k.shape[0])

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
        order (MBPO reallocates its model buffer whenever the rollout length changes, keeping the data). Only
        finished rows move: an n-step writer's pending transitions are not carried over."""
        new = ReplayBuffer(capacity, self.obs_dim, self.act_dim, device=self.device, action_dtype=self.action_dtype,
                           gamma=self.gamma, n_step=self.n_step)
        order = torch.arange(self.size, device=self.device)
        if self.size == self._capacity:
            order = (order + self.ptr) % self._capacity
        rows = [getattr(self, key)[order] for key in BUFFER_ROWS]
        new._write(*rows)
        return new

    def state_dict(self) -> dict[str, Any]:
        """Filled rows (CPU copies) + ``ptr``/``size``/``capacity`` (+ the n-step writer's pending transitions);
        loadable with ``weights_only=True``."""
        n = self.size
        state: dict[str, Any] = {"ptr": self.ptr, "size": n, "capacity": self._capacity}
        for key in BUFFER_ROWS:
            state[key] = getattr(self, key)[:n].detach().to("cpu", copy=True)
        if self.writer is not None:
            state["nstep_pending"] = self.writer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` from a buffer of the same capacity and dims."""
        size, ptr, cap = int(state["size"]), int(state["ptr"]), int(state["capacity"])
        if cap != self._capacity:
            raise ValueError(f"ReplayBuffer.load_state_dict: saved capacity {cap} != this buffer's {self._capacity}")
        if not (0 <= size <= cap and 0 <= ptr < cap and (size == cap or ptr == size)):
            raise ValueError(f"ReplayBuffer.load_state_dict: inconsistent size {size} / ptr {ptr} for capacity {cap}")
        if "discounts" not in state:  # written before discounts were stored: one-step rows
            state = {**state, "discounts": state["not_done"] * self.gamma}  # type: ignore[operator]
        for key in BUFFER_ROWS:  # every check before any write: a rejected state changes nothing
            src, dst = state[key], getattr(self, key)
            assert isinstance(src, Tensor)
            if src.shape[0] != size or src.shape[1:] != dst.shape[1:]:
                raise ValueError(
                    f"ReplayBuffer.load_state_dict: '{key}' has shape {tuple(src.shape)}; expected "
                    f"({size}, {', '.join(map(str, dst.shape[1:]))})"
                )
        if self.writer is not None:
            self.writer.load_state_dict(state.get("nstep_pending", {"count": 0}), self.device)
        for key in BUFFER_ROWS:
            dst = getattr(self, key)
            dst[:size] = state[key].to(device=self.device, dtype=dst.dtype)
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


class NStepWriter:
    """Turns one-step transitions into ``n``-step ones (DecQN / REValueD, docs/agents/revalued.md): the row written for time ``t`` holds
    ``R = sum_{j<k} gamma^j r_{t+j}``, the observation after those ``k`` rewards and ``discount = gamma^k (1 -
    terminated)``, with ``k = n`` inside an episode and ``k < n`` for the last rows of an episode.

    The last ``n - 1`` transitions of an episode are flushed when it ends: on a termination without bootstrap
    (``discount = 0``), on a truncation with it (``discount = gamma^k``), unlike the official REValueD trainer,
    which drops them on truncation (davidireland3/REValueD@2e811a5 ``revalued/trainers/trainer.py``). The pending transitions are part of :meth:`state_dict`, so a resumed run writes the same rows.
    """

    def __init__(self, gamma: float, n_step: int) -> None:
        if n_step < 1:
            raise ValueError(f"NStepWriter: n_step must be >= 1, got {n_step}")
        self.gamma = float(gamma)
        self.n_step = int(n_step)
        self._obs: list[Tensor] = []
        self._actions: list[Tensor] = []
        self._rewards: list[float] = []

    def __len__(self) -> int:
        return len(self._rewards)

    def _rows(self, count: int, next_obs: Tensor, terminated: bool) -> tuple[Tensor, ...]:
        """Rows for the first ``count`` pending transitions, all ending at ``next_obs``; pops them."""
        obs, actions, returns, discounts = [], [], [], []
        for i in range(count):
            k = len(self._rewards) - i
            ret = 0.0
            for j in range(k):
                ret += self.gamma ** j * self._rewards[i + j]
            obs.append(self._obs[i])
            actions.append(self._actions[i])
            returns.append(ret)
            discounts.append(0.0 if terminated else self.gamma ** k)
        del self._obs[:count], self._actions[:count], self._rewards[:count]
        device = next_obs.device
        return (
            torch.stack(obs),
            torch.stack(actions),
            torch.tensor(returns, dtype=torch.float32, device=device),
            next_obs.unsqueeze(0).expand(count, *next_obs.shape),
            torch.full((count,), float(terminated), device=device),
            torch.tensor(discounts, dtype=torch.float32, device=device),
        )

    def push(
        self, obs: Tensor, action: Tensor, reward: float, next_obs: Tensor, terminated: bool, truncated: bool
    ) -> tuple[Tensor, ...] | None:
        """Add one transition; returns the rows ready to store ``(obs, actions, returns, next_obs, terminated,
        discounts)`` (each with a leading row dim) or None."""
        self._obs.append(obs)
        self._actions.append(action)
        self._rewards.append(float(reward))
        if terminated or truncated:
            return self._rows(len(self._rewards), next_obs, bool(terminated))
        if len(self._rewards) == self.n_step:
            return self._rows(1, next_obs, False)
        return None

    def flush(self, next_obs: Tensor) -> tuple[Tensor, ...]:
        """The pending transitions' rows as on a truncation at ``next_obs`` (the observation after the last one)."""
        return self._rows(len(self._rewards), next_obs, False)

    def state_dict(self) -> dict[str, Any]:
        if not self._rewards:
            return {"count": 0}
        return {
            "count": len(self._rewards),
            "obs": torch.stack(self._obs).detach().to("cpu", copy=True),
            "actions": torch.stack(self._actions).detach().to("cpu", copy=True),
            "rewards": torch.tensor(self._rewards, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        count = int(state.get("count", 0))
        if count >= self.n_step:
            raise ValueError(f"NStepWriter.load_state_dict: {count} pending transitions for n_step={self.n_step}")
        if count == 0:
            self._obs, self._actions, self._rewards = [], [], []
            return
        self._obs = list(state["obs"].to(device).unbind(0))
        self._actions = list(state["actions"].to(device).unbind(0))
        self._rewards = [float(r) for r in state["rewards"].tolist()]
