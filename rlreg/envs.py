"""Gymnasium environments for training and evaluation, and the batched evaluation loop."""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gymnasium as gym
import numpy as np
import torch

from rlreg.config import EnvConfig
from rlreg.learners.base import ActionSpec
from rlreg.regularizers.base import SetupContext


def _mujoco_compat_for_dm_control() -> None:
    """dm_control's named indexing lists every array field of ``MjModel``/``MjData`` of the MuJoCo release
    it was generated for (``mjbindings/sizes.py``); fields a newer MuJoCo dropped (dm_control 1.0.50 with
    MuJoCo 4.0: the ``flex_vertedge*``/``flexvert_*`` arrays of deformable bodies, which no Control Suite
    task has) would make every ``suite.load`` fail. Drop the listed fields that this MuJoCo lacks; nothing
    else changes (physics is stepped by the ``mujoco`` bindings themselves)."""
    import mujoco
    from dm_control.mujoco.wrapper.mjbindings import sizes

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
    for struct_name, struct in (("mjmodel", model), ("mjdata", mujoco.MjData(model))):
        fields = sizes.array_sizes.get(struct_name, {})
        for name in [f for f in fields if not hasattr(struct, f)]:
            del fields[name]


@functools.lru_cache(maxsize=None)
def _register_dm_control() -> None:
    """Import shimmy (registers ``dm_control/<domain>-<task>-v0``) with a clear error if the ``dmc`` extra
    is missing; rendering is never used, so the GLFW "no DISPLAY" warning is silenced."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*DISPLAY.*")
            import dm_control.suite  # noqa: F401
            import shimmy  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"DeepMind Control envs need the 'dmc' extra: pip install 'rlreg[dmc]' ({err})"
        ) from None
    _mujoco_compat_for_dm_control()


class SimulationErrorAsTruncation(gym.Wrapper):
    """Ends an episode as a truncation when the simulator gives up on it.

    DeepMind Control raises ``dm_control.rl.control.PhysicsError`` when MuJoCo's state diverges (it happens
    now and then on the 38-dim dog tasks under exploratory actions). Instead of killing a long run, that step
    returns the last valid observation, reward 0, ``truncated=True`` and ``info["physics_error"]`` (the
    message); the online trainer stores no transition for it and ends the episode's unfinished n-step rows as
    on a time limit, bootstrapping from that last valid observation (docs/environments.md). ``errors`` are the exception types to catch.
    """

    def __init__(self, env: gym.Env, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__(env)
        self.errors = errors
        self._last_obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except self.errors as err:
            return self._last_obs, 0.0, False, True, {"physics_error": f"{type(err).__name__}: {err}"}
        self._last_obs = obs
        return obs, reward, terminated, truncated, info


def make_env(config: EnvConfig) -> gym.Env:
    """Create the Gymnasium env of ``config``. ``dm_control/<domain>-<task>-v0`` ids (DeepMind Control via
    shimmy, docs/environments.md) get flattened float32 observations; their time limit (1000 steps) ends an
    episode as a truncation, never a termination, and so does a diverged simulation
    (:class:`SimulationErrorAsTruncation`)."""
    if config.id.startswith("dm_control/"):
        _register_dm_control()
        kwargs = dict(config.kwargs)
        if config.max_episode_steps is not None:
            kwargs["max_episode_steps"] = config.max_episode_steps
        env = gym.make(config.id, **kwargs)
        env = gym.wrappers.FlattenObservation(env)
        space = env.observation_space
        env = gym.wrappers.TransformObservation(
            env, lambda o: o.astype(np.float32), gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)
        )
        from dm_control.rl.control import PhysicsError

        return SimulationErrorAsTruncation(env, (PhysicsError,))
    kwargs = dict(config.kwargs)
    if config.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.max_episode_steps
    return gym.make(config.id, **kwargs)


_SPACES: dict[str, tuple[gym.spaces.Space, gym.spaces.Space]] = {}  # per env config, for this process


def box_spaces(config: EnvConfig) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The env's observation and action spaces, checked to be Box (discrete learners discretise a Box). The env is
    created (and closed) once per config and process: a launch asks for its spaces several times."""
    key = json.dumps([config.id, config.kwargs, config.max_episode_steps], sort_keys=True, default=str)
    if key not in _SPACES:
        env = make_env(config)
        try:
            _SPACES[key] = (env.observation_space, env.action_space)
        finally:
            env.close()
    obs_space, act_space = _SPACES[key]
    if not isinstance(act_space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"env.id={config.id}: rlreg's learners need Box observation and action spaces")
    return obs_space, act_space


def env_spaces(config: EnvConfig) -> tuple[int, int, float, gym.spaces.Box, gym.spaces.Box]:
    """obs_dim, act_dim, max_action and the two spaces of the env (checked to be Box, symmetric)."""
    obs_space, act_space = box_spaces(config)
    high = float(np.max(act_space.high))
    if not np.allclose(act_space.low, -act_space.high) or not np.allclose(act_space.high, high):
        raise ValueError(f"env.id={config.id}: action space must be symmetric [-m, m]^A, got {act_space}")
    return int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)), high, obs_space, act_space


def env_setup(config: EnvConfig, device: torch.device | str, seed: int = 0, **kwargs: Any) -> SetupContext:
    """What a learner is built from for env ``config``: observation size, the env's action Box (any bounds;
    continuous learners check they are symmetric), the device, the env config and any ``kwargs`` (dataset,
    buffer, state statistics of an offline run)."""
    obs_space, act_space = box_spaces(config)
    spec = ActionSpec(act_space.low, act_space.high)
    return SetupContext(obs_dim=int(np.prod(obs_space.shape)), act_dim=spec.dim, max_action=spec.max_action,
                        device=torch.device(device), action_spec=spec, env=config, seed=seed, **kwargs)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small-batch inference (acting, evaluation, data collection) on one torch thread: splitting a
    batch of a few observations over threads costs more than it saves, and stalls badly when another
    process holds a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def normalized_score(ret: float, ref_min: float | None, ref_max: float | None) -> float | None:
    """D4RL's normalised score x 100: 100 * (R - min) / (max - min); None without references."""
    if ref_min is None or ref_max is None:
        return None
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())


def evaluate(
    policy: Callable[[torch.Tensor], torch.Tensor],
    config: EnvConfig,
    episodes: int,
    seed: int,
    device: torch.device,
    obs_mean: np.ndarray | None = None,
    obs_std: np.ndarray | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes in parallel envs (env i reset with ``seed + i``), one batched policy
    call per step over the still-running episodes. ``policy`` maps normalised observations to actions."""
    with single_thread():
        return _evaluate(policy, config, episodes, seed, device, obs_mean, obs_std)


def _evaluate(
    policy: Callable[[torch.Tensor], torch.Tensor],
    config: EnvConfig,
    episodes: int,
    seed: int,
    device: torch.device,
    obs_mean: np.ndarray | None,
    obs_std: np.ndarray | None,
) -> EvalResult:
    envs = [make_env(config) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    active = np.ones(episodes, dtype=bool)
    mean = None if obs_mean is None else torch.as_tensor(obs_mean, device=device)
    std = None if obs_std is None else torch.as_tensor(obs_std, device=device)
    while active.any():
        idx = np.flatnonzero(active)
        x = torch.as_tensor(obs[idx], device=device)
        if mean is not None:
            x = (x - mean) / std
        actions = policy(x).cpu().numpy()
        for j, i in enumerate(idx):
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[j])
            returns[i] += reward
            lengths[i] += 1
            obs[i] = next_obs
            if terminated or truncated:
                active[i] = False
    for env in envs:
        env.close()
    return EvalResult(returns=returns, lengths=lengths)
