"""In-memory transition dataset shared by every offline data source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rlreg.data.errors import DatasetError

_FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")
_FLAG_KEYS = ("terminals", "timeouts", "episode_ends")
_ALL_KEYS = ("observations", "actions", "rewards", "next_observations") + _FLAG_KEYS


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@dataclass
class TransitionDataset:
    """Flat arrays of transitions ``(s, a, r, s', terminal, timeout, episode_end)``.

    ``terminals`` marks a true termination (no bootstrapping), ``timeouts`` a truncation
    after this transition (bootstrap through it), ``episode_ends`` the last transition of
    an episode (terminal, timeout, or a break in the data).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ends: np.ndarray
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.observations = _as_float32(self.observations)
        self.next_observations = _as_float32(self.next_observations)
        self.rewards = _as_float32(self.rewards)
        actions = np.asarray(self.actions)
        if np.issubdtype(actions.dtype, np.integer):
            self.actions = actions.astype(np.int64, copy=False)
        else:
            self.actions = _as_float32(actions)
        for key in _FLAG_KEYS:
            setattr(self, key, np.asarray(getattr(self, key)).astype(bool, copy=False))

    def __len__(self) -> int:
        return int(self.rewards.shape[0]) if self.rewards.ndim > 0 else 0

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1]) if self.actions.ndim > 1 else 1

    # ------------------------------------------------------------------ checks
    def validate(
        self,
        observation_shape: tuple[int, ...] | None = None,
        action_shape: tuple[int, ...] | None = None,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
        action_tol: float = 1e-6,
    ) -> None:
        """Raise :class:`DatasetError` if the arrays are inconsistent or non-finite.

        Optionally check observation/action shapes against an environment's spaces and
        actions against ``[action_low - tol, action_high + tol]``.
        """
        src = self.source
        n = self.observations.shape[0] if self.observations.ndim > 0 else 0
        if n == 0:
            raise DatasetError(f"{src}: dataset is empty (key 'observations' has 0 rows); expected at least 1 transition")
        for key in _ALL_KEYS:
            arr = getattr(self, key)
            length = arr.shape[0] if arr.ndim > 0 else 0
            if length != n:
                raise DatasetError(
                    f"{src}: length mismatch: key '{key}' has {length} rows but key 'observations' has {n}"
                )
        expected_ndim = {"observations": (2,), "next_observations": (2,), "actions": (2,), "rewards": (1,)}
        if np.issubdtype(self.actions.dtype, np.integer):
            expected_ndim["actions"] = (1, 2)
        expected_ndim.update({k: (1,) for k in _FLAG_KEYS})
        for key, ndims in expected_ndim.items():
            arr = getattr(self, key)
            if arr.ndim not in ndims:
                raise DatasetError(
                    f"{src}: key '{key}' has shape {arr.shape} (ndim {arr.ndim}); expected ndim {' or '.join(map(str, ndims))}"
                )
        for key in _FLOAT_KEYS:
            arr = getattr(self, key)
            if not np.issubdtype(arr.dtype, np.floating):
                continue
            finite = np.isfinite(arr)
            if arr.ndim > 1:
                finite = finite.reshape(arr.shape[0], -1).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                kinds = []
                if np.isnan(arr).any():
                    kinds.append("NaN")
                if np.isinf(arr).any():
                    kinds.append("inf")
                raise DatasetError(
                    f"{src}: key '{key}' contains {'/'.join(kinds)} values in {bad.size} row(s); "
                    f"first bad row index {int(bad[0])}; expected all values finite"
                )
        if self.observations.shape[1:] != self.next_observations.shape[1:]:
            raise DatasetError(
                f"{src}: key 'next_observations' has per-row shape {self.next_observations.shape[1:]} "
                f"but key 'observations' has {self.observations.shape[1:]}; expected them equal"
            )
        if observation_shape is not None:
            for key in ("observations", "next_observations"):
                found = tuple(getattr(self, key).shape[1:])
                if found != tuple(observation_shape):
                    raise DatasetError(
                        f"{src}: key '{key}' has per-row shape {found}; expected the observation space shape "
                        f"{tuple(observation_shape)}"
                    )
        if action_shape is not None:
            found = tuple(self.actions.shape[1:])
            if found != tuple(action_shape):
                raise DatasetError(
                    f"{src}: key 'actions' has per-row shape {found}; expected the action space shape {tuple(action_shape)}"
                )
        if action_low is not None or action_high is not None:
            acts = self.actions.astype(np.float64, copy=False)
            viol = np.zeros(n, dtype=np.float64)
            if action_low is not None:
                low = np.asarray(action_low, dtype=np.float64)
                below = (low - acts).reshape(n, -1).max(axis=1)
                viol = np.maximum(viol, below)
            if action_high is not None:
                high = np.asarray(action_high, dtype=np.float64)
                above = (acts - high).reshape(n, -1).max(axis=1)
                viol = np.maximum(viol, above)
            bad = np.flatnonzero(viol > action_tol)
            if bad.size:
                raise DatasetError(
                    f"{src}: key 'actions' has {bad.size} row(s) outside the action bounds "
                    f"[{_fmt(action_low)}, {_fmt(action_high)}] (tolerance {action_tol}); max violation "
                    f"{viol.max():.6g}, first bad row index {int(bad[0])}"
                )

    # ---------------------------------------------------------------- summaries
    def episode_starts_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and (inclusive) end row of every episode; a trailing unfinished episode counts."""
        n = len(self)
        ends = np.flatnonzero(self.episode_ends)
        if n and (ends.size == 0 or ends[-1] != n - 1):
            ends = np.append(ends, n - 1)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if ends.size else ends
        return starts, ends

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode (split at ``episode_ends``), float64."""
        starts, _ = self.episode_starts_ends()
        if starts.size == 0:
            return np.zeros(0, dtype=np.float64)
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def state_stats(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Observation mean and ``std + eps`` (TD3+BC convention), both float32 of shape (obs_dim,)."""
        obs = self.observations.astype(np.float64)
        return obs.mean(axis=0).astype(np.float32), (obs.std(axis=0) + eps).astype(np.float32)

    # ------------------------------------------------------------- constructors
    @classmethod
    def from_episodes(cls, episodes: Sequence[dict], source: str) -> "TransitionDataset":
        """Build transitions from Gymnasium/Minari-style episodes.

        Each episode has ``observations`` (T+1, ...), ``actions`` (T, ...), ``rewards``,
        ``terminations`` and ``truncations`` (T,). Empty episodes are skipped.
        """
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ALL_KEYS}
        for i, ep in enumerate(episodes):
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                if key not in ep:
                    raise DatasetError(f"{source}: episode {i} has no key '{key}'; expected keys observations, "
                                       "actions, rewards, terminations, truncations")
            obs = np.asarray(ep["observations"])
            rew = np.asarray(ep["rewards"]).reshape(-1)
            t = rew.shape[0]
            if obs.ndim == 0 or obs.shape[0] != t + 1:
                raise DatasetError(
                    f"{source}: episode {i} key 'observations' has {obs.shape[0] if obs.ndim else 0} rows; "
                    f"expected T+1 = {t + 1} (T = {t} rewards)"
                )
            for key in ("actions", "terminations", "truncations"):
                length = np.asarray(ep[key]).shape[0]
                if length != t:
                    raise DatasetError(f"{source}: episode {i} key '{key}' has {length} rows; expected T = {t}")
            if t == 0:
                continue
            ends = np.zeros(t, dtype=bool)
            ends[-1] = True
            parts["observations"].append(obs[:-1])
            parts["next_observations"].append(obs[1:])
            parts["actions"].append(np.asarray(ep["actions"]))
            parts["rewards"].append(rew)
            parts["terminals"].append(np.asarray(ep["terminations"]).reshape(-1).astype(bool))
            parts["timeouts"].append(np.asarray(ep["truncations"]).reshape(-1).astype(bool))
            parts["episode_ends"].append(ends)
        if not parts["rewards"]:
            raise DatasetError(f"{source}: dataset is empty (no episode has any step); expected at least 1 transition")
        return cls(**{k: np.concatenate(v) for k, v in parts.items()}, source=source)

    @classmethod
    def concat(cls, datasets: Sequence["TransitionDataset"], source: str) -> "TransitionDataset":
        """Concatenate datasets (e.g. medium + expert); each part's last row ends an episode."""
        if not datasets:
            raise DatasetError(f"{source}: concat needs at least one dataset; got none")
        arrays = {}
        for key in _ALL_KEYS:
            arrays[key] = np.concatenate([getattr(d, key) for d in datasets])
        offset = 0
        for d in datasets:
            offset += len(d)
            if offset:
                arrays["episode_ends"][offset - 1] = True
        return cls(**arrays, source=source)


def _fmt(x: np.ndarray | None) -> str:
    if x is None:
        return "-inf/inf"
    arr = np.asarray(x)
    if arr.size and np.all(arr == arr.reshape(-1)[0]):
        return f"{float(arr.reshape(-1)[0]):g}"
    return np.array2string(arr, precision=4)


REWARD_TRANSFORMS = ("identity", "affine", "minus_one", "return_range")


def make_reward_fn(
    kind: str,
    scale: float = 1.0,
    shift: float = 0.0,
    dataset: TransitionDataset | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Return a numpy reward transform (applied once when a buffer is built).

    Kinds: ``identity``; ``affine`` (``scale * r + shift``); ``minus_one`` (``r - 1``,
    AntMaze); ``return_range`` (CORL: ``r * 1000 / (max_return - min_return)`` over the
    dataset's episodes; needs ``dataset``).
    """
    if kind == "identity":
        return lambda r: np.asarray(r, dtype=np.float32)
    if kind == "affine":
        return lambda r: (scale * np.asarray(r, dtype=np.float64) + shift).astype(np.float32)
    if kind == "minus_one":
        return lambda r: (np.asarray(r, dtype=np.float64) - 1.0).astype(np.float32)
    if kind == "return_range":
        if dataset is None:
            raise DatasetError("option 'dataset.reward_transform'='return_range' needs the dataset to compute "
                               "episode returns; got dataset=None")
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min()) if returns.size else 0.0
        if not spread > 0:
            raise DatasetError(
                f"{dataset.source}: option 'dataset.reward_transform'='return_range' needs episodes with different "
                f"returns; found {returns.size} episode(s) with max - min return = {spread}"
            )
        factor = 1000.0 / spread
        return lambda r: (np.asarray(r, dtype=np.float64) * factor).astype(np.float32)
    raise DatasetError(
        f"option 'dataset.reward_transform' = {kind!r} is unknown; expected one of {', '.join(REWARD_TRANSFORMS)}"
    )
