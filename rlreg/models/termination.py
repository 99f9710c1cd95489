"""Termination functions of model rollouts: ``done(next_obs)`` for Gymnasium v5 MuJoCo tasks, on the device.

A model rollout cannot ask the simulator whether the robot fell, so MBPO decides termination from the
predicted next observation with a fixed function per task (jannerm/mbpo @ ac694ff9f1ebb789cc5b3f164d9d67f93ed8f129,
``mbpo/static/*.py``). rlreg writes them against the *Gymnasium v5* health checks instead of MBPO's v2 ones
(``gymnasium/envs/mujoco/*_v5.py``, Gymnasium 1.x), with the observation layout of the default
``exclude_current_positions_from_observation=True`` (x, and y for Ant/Humanoid, dropped; ``obs[0]`` is the
torso height). Ranges follow the env's keyword arguments when the config overrides them.

* Hopper:   unhealthy unless every ``obs[1:]`` is in (-100, 100), ``z`` in (0.7, inf) and ``angle`` in
  (-0.2, 0.2) (open intervals). The env checks the *unclipped* velocities against 100 while the observation
  holds velocities clipped to [-10, 10], so a real velocity beyond 100 is the one case the function cannot
  see (MBPO's v2 function had a one-sided ``obs[1:] < 100`` check).
* Walker2d: ``z`` in (0.8, 2.0) and ``angle`` in (-1, 1).
* Ant:      all finite and ``z`` in [0.2, 1.0] (closed).
* Humanoid: ``z`` in (1.0, 2.0).
* InvertedPendulum: done when not finite or ``|obs[1]| > 0.2``.
* HalfCheetah, Pendulum-v1 (classic control), DeepMind Control, ``terminate_when_unhealthy=False``: never.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["TerminationFn", "TERMINATIONS", "termination_fn", "hopper", "walker2d", "ant", "humanoid",
           "inverted_pendulum", "never"]

TerminationFn = Callable[[Tensor], Tensor]  # next_obs (B, ds) -> terminated (B,) bool


def _open(x: Tensor, lo: float, hi: float) -> Tensor:
    return (x > lo) & (x < hi)


def hopper(next_obs: Tensor, *, z_range=(0.7, math.inf), angle_range=(-0.2, 0.2), state_range=(-100.0, 100.0),
           offset: int = 0) -> Tensor:
    z, angle = next_obs[:, offset], next_obs[:, offset + 1]
    healthy = (torch.isfinite(next_obs).all(-1) & _open(next_obs[:, offset + 1:], *state_range).all(-1)
               & _open(z, *z_range) & _open(angle, *angle_range))
    return ~healthy


def walker2d(next_obs: Tensor, *, z_range=(0.8, 2.0), angle_range=(-1.0, 1.0), offset: int = 0) -> Tensor:
    return ~(_open(next_obs[:, offset], *z_range) & _open(next_obs[:, offset + 1], *angle_range))


def ant(next_obs: Tensor, *, z_range=(0.2, 1.0), offset: int = 0) -> Tensor:
    z = next_obs[:, offset]
    return ~(torch.isfinite(next_obs).all(-1) & (z >= z_range[0]) & (z <= z_range[1]))


def humanoid(next_obs: Tensor, *, z_range=(1.0, 2.0), offset: int = 0) -> Tensor:
    return ~_open(next_obs[:, offset], *z_range)


def inverted_pendulum(next_obs: Tensor) -> Tensor:
    return ~torch.isfinite(next_obs).all(-1) | (next_obs[:, 1].abs() > 0.2)


def never(next_obs: Tensor) -> Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


TERMINATIONS: dict[str, Callable[..., Tensor]] = {
    "hopper": hopper, "walker2d": walker2d, "ant": ant, "humanoid": humanoid,
    "inverted_pendulum": inverted_pendulum, "halfcheetah": never, "never": never,
}
# Gymnasium id prefix -> (name, keyword arguments of the env that change the function, x/y positions dropped)
_BY_ENV = {
    "Hopper": ("hopper", ("healthy_z_range", "healthy_angle_range", "healthy_state_range"), 1),
    "Walker2d": ("walker2d", ("healthy_z_range", "healthy_angle_range"), 1),
    "Ant": ("ant", ("healthy_z_range",), 2),
    "Humanoid": ("humanoid", ("healthy_z_range",), 2),
    "InvertedPendulum": ("inverted_pendulum", (), 0),
    "HalfCheetah": ("halfcheetah", (), 0),
}


def termination_fn(name: str, env_id: str | None = None, env_kwargs: dict[str, Any] | None = None,
                   option: str = "agent.termination") -> TerminationFn:
    """The termination function ``name`` (one of :data:`TERMINATIONS`), or with ``name="auto"`` the one of the
    Gymnasium v5 env ``env_id`` (DeepMind Control ids: never), with the health ranges of ``env_kwargs``."""
    kwargs = dict(env_kwargs or {})
    if name != "auto":
        if name not in TERMINATIONS:
            raise ValueError(f"{option}={name!r} is unknown; choose one of: auto, {', '.join(sorted(TERMINATIONS))}")
        return TERMINATIONS[name]
    if env_id is None:
        raise ValueError(f"{option}=auto needs the training env; name the function instead (e.g. {option}=never)")
    if env_id.startswith("dm_control/") or env_id == "Pendulum-v1":
        return never
    base, _, version = env_id.partition("-")
    if base not in _BY_ENV or version != "v5":
        raise ValueError(
            f"{option}=auto: no termination function for env.id={env_id} (known: Gymnasium v5 "
            f"{', '.join(sorted(_BY_ENV))}, Pendulum-v1 and dm_control/*); set {option} to one of "
            f"{', '.join(sorted(TERMINATIONS))}"
        )
    fn_name, range_keys, n_pos = _BY_ENV[base]
    if not kwargs.get("terminate_when_unhealthy", True):
        return never
    fn = TERMINATIONS[fn_name]
    extra: dict[str, Any] = {k.removeprefix("healthy_"): tuple(kwargs[k]) for k in range_keys if k in kwargs}
    if n_pos and not kwargs.get("exclude_current_positions_from_observation", True):
        extra["offset"] = n_pos
    return functools.partial(fn, **extra) if extra else fn
