"""Behaviour policies the project ships (``rlreg/assets``) and rollouts that turn them into data.

A shipped policy is two files: ``<name>.pt`` (an actor ``state_dict`` of plain tensors, loaded with
``weights_only=True``) and ``<name>.json`` (architecture, env, observation normalisation, how it was
trained and what it scores).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlreg.checkpoint import atomic_torch_save, atomic_write_text
from rlreg.config import EnvConfig
from rlreg.envs import make_env, single_thread
from rlreg.logging import progress_bar
from rlreg.nets import DeterministicActor, TanhGaussianActor

ASSETS = Path(__file__).parent / "assets"


def policy_path(name_or_path: str) -> Path:
    """``name`` of a shipped policy (``rlreg/assets/<name>.pt``) or a path to a ``.pt`` file."""
    p = Path(name_or_path)
    if p.suffix == ".pt" and p.exists():
        return p
    shipped = ASSETS / f"{name_or_path}.pt"
    if shipped.exists():
        return shipped
    known = sorted(x.stem for x in ASSETS.glob("*.pt"))
    raise FileNotFoundError(f"policy {name_or_path!r}: no such file and no shipped policy of that name ({known})")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_policy(actor: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()}
    atomic_torch_save(state, Path(path))
    atomic_write_text(Path(path).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def load_policy(name_or_path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a shipped actor (eval mode, CPU) and its metadata."""
    path = policy_path(name_or_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    arch = meta["architecture"]
    actor: torch.nn.Module
    if arch["kind"] == "tanh_gaussian":
        actor = TanhGaussianActor(arch["obs_dim"], arch["act_dim"], hidden=tuple(arch["hidden"]),
                                  log_std_bounds=tuple(arch.get("log_std_bounds", (-5.0, 2.0))))
    elif arch["kind"] == "deterministic":
        actor = DeterministicActor(arch["obs_dim"], arch["act_dim"], hidden=tuple(arch["hidden"]))
    else:
        raise ValueError(f"{path}: unknown actor kind {arch['kind']!r}")
    actor.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    actor.eval()
    meta["sha256"] = sha256_file(path)
    return actor, meta


def policy_fn(
    actor: torch.nn.Module, stochastic: bool = False, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Action of a loaded actor: deterministic (tanh of the mean for Gaussian actors), or with
    ``stochastic=True`` a tanh-Gaussian sample drawn from a generator seeded with ``seed`` (reproducible)."""
    if isinstance(actor, TanhGaussianActor):
        if stochastic:
            gen = torch.Generator().manual_seed(seed)
            return lambda obs: actor(obs, deterministic=False, with_log_prob=False, generator=gen)[0]
        return lambda obs: actor(obs, deterministic=True, with_log_prob=False)[0]
    if stochastic:
        raise ValueError(f"{type(actor).__name__} is deterministic; stochastic=True needs a tanh-Gaussian actor")
    return actor


def collect_episodes(
    policy: Callable[[torch.Tensor], torch.Tensor],
    env_config: EnvConfig,
    num_transitions: int,
    seed: int,
    action_noise: float = 0.0,
    num_envs: int = 8,
    progress: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Roll out ``policy`` (plus Gaussian ``action_noise``, clipped to the bounds) in ``num_envs`` envs
    stepped together with one batched policy call, until ``num_transitions`` transitions; whole
    episodes only, the last ones cut by truncation. Deterministic given ``seed``."""
    with torch.no_grad(), single_thread():
        return _collect(policy, env_config, num_transitions, seed, action_noise, num_envs, progress)


def _collect(
    policy: Callable[[torch.Tensor], torch.Tensor],
    env_config: EnvConfig,
    num_transitions: int,
    seed: int,
    action_noise: float,
    num_envs: int,
    progress: bool,
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    envs = [make_env(env_config) for _ in range(num_envs)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    next_episode = 0

    def reset(i: int) -> dict[str, list]:
        nonlocal next_episode
        obs, _ = envs[i].reset(seed=seed * 1_000_003 + next_episode)
        next_episode += 1
        return {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}

    running = [reset(i) for i in range(num_envs)]
    episodes: list[dict[str, np.ndarray]] = []
    total = 0
    bar = progress_bar(num_transitions, 0, progress, f"collect {env_config.id}")
    while total < num_transitions:
        bar.update(total - bar.n)
        obs = torch.as_tensor(np.stack([ep["observations"][-1] for ep in running]), dtype=torch.float32)
        actions = policy(obs).numpy()
        if action_noise > 0:
            actions = actions + action_noise * rng.standard_normal(actions.shape)
        actions = np.clip(actions, low, high).astype(np.float32)
        for i, ep in enumerate(running):
            if total >= num_transitions:
                break
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[i])
            ep["observations"].append(next_obs)
            ep["actions"].append(actions[i])
            ep["rewards"].append(reward)
            ep["terminations"].append(terminated)
            ep["truncations"].append(truncated)
            total += 1
            if terminated or truncated:
                episodes.append({k: np.asarray(v) for k, v in ep.items()})
                running[i] = reset(i)
    bar.update(total - bar.n)
    bar.close()
    # the budget is reached: keep the unfinished episodes, cut by truncation (bootstrap through them)
    for ep in running:
        if ep["actions"]:
            ep["truncations"][-1] = True
            episodes.append({k: np.asarray(v) for k, v in ep.items()})
    for env in envs:
        env.close()
    return episodes
