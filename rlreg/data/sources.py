"""Turn a :class:`~rlreg.config.DatasetConfig` into a :class:`TransitionDataset`, whatever its source."""

from __future__ import annotations

import hashlib
import json
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from rlreg.config import DatasetConfig
from rlreg.data.d4rl import load_d4rl, load_d4rl_package, write_d4rl_hdf5
from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError
from rlreg.data.minari_io import installed_env_id, load_minari, minari_env_spec, read_minari_metadata


def cache_dir() -> Path:
    """Where datasets made on this machine are kept: ``$RLREG_DATA_DIR`` or ``~/.cache/rlreg/datasets``."""
    return Path(os.environ.get("RLREG_DATA_DIR", Path.home() / ".cache" / "rlreg" / "datasets"))


def load_dataset(config: DatasetConfig) -> TransitionDataset:
    """Load the dataset of ``config`` (errors name the file/id and the option to fix)."""
    if config.source == "d4rl_hdf5":
        return load_d4rl(config.id or config.name, path=config.path, verify=config.verify)
    if config.source == "d4rl":
        return load_d4rl_package(config.id or config.name)
    if config.source == "minari":
        return load_minari(config.id or config.name, data_path=config.path)
    if config.source == "embedded":
        return load_embedded(config)
    if config.source == "rlreg":
        from rlreg.datasets import ensure

        ensure(config.id or config.name, root=config.path)  # built once, on first use
        return load_minari(config.id or config.name, data_path=config.path)
    raise DatasetError(
        f"dataset.source={config.source!r} is unknown; use d4rl_hdf5, d4rl, minari, embedded or rlreg"
    )


def configure_from_metadata(config: DatasetConfig) -> DatasetConfig:
    """Fill what a Minari dataset (``source: minari`` or ``rlreg``) records and the config leaves unset
    (``None``): the evaluation env ``dataset.env.id`` (from the dataset's ``eval_env_spec`` or ``env_spec``,
    mapped to an installed Gymnasium id, with its kwargs and time limit) and D4RL-style reference returns
    ``dataset.env.ref_min_score`` / ``ref_max_score``. Values the user set always win. A dataset without an env
    raises :class:`DatasetError` naming the option to set; one without reference scores warns (returns are
    reported, the normalized score is n/a)."""
    env = config.env
    if config.source not in ("minari", "rlreg") or None not in (env.id, env.ref_min_score, env.ref_max_score):
        return config
    ds_id = config.id or config.name
    meta = read_minari_metadata(ds_id, config.path)
    updates: dict = {}
    if env.id is None:
        spec = minari_env_spec(meta)
        if spec is None:
            raise DatasetError(
                f"Minari dataset {ds_id!r} records no environment (no env_spec or eval_env_spec in its metadata): "
                "set the evaluation env with dataset.env.id=<Gymnasium id> (e.g. dataset.env.id=Hopper-v5)"
            )
        gym_id = installed_env_id(str(spec["id"]))
        if gym_id is None:
            raise DatasetError(
                f"Minari dataset {ds_id!r} was recorded in {spec['id']!r}, which no installed Gymnasium package "
                "registers (MuJoCo envs need gymnasium[mujoco]): install it or set dataset.env.id=<Gymnasium id>"
            )
        updates["id"] = gym_id
        if gym_id == spec["id"]:  # kwargs of another version may not apply
            if not env.kwargs and isinstance(spec.get("kwargs"), dict):
                updates["kwargs"] = {k: v for k, v in spec["kwargs"].items() if k != "render_mode"}
            if env.max_episode_steps is None and spec.get("max_episode_steps") is not None:
                updates["max_episode_steps"] = int(spec["max_episode_steps"])
    for key in ("ref_min_score", "ref_max_score"):
        if getattr(env, key) is None and meta.get(key) is not None:
            updates[key] = float(meta[key])
    env = dataclasses.replace(env, **updates)
    if env.ref_min_score is None or env.ref_max_score is None:
        warnings.warn(
            f"Minari dataset {ds_id!r} has no ref_min_score/ref_max_score in its metadata: evaluations report the "
            "return and no normalized score; set dataset.env.ref_min_score and dataset.env.ref_max_score to "
            "normalize",
            stacklevel=2,
        )
    return dataclasses.replace(config, env=env)


def embedded_path(config: DatasetConfig, policy_sha: str) -> Path:
    key = json.dumps(
        [config.name, config.env.id, policy_sha, config.num_transitions, config.action_noise, config.collect_seed]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(config.path) if config.path else cache_dir() / f"{config.name}-{digest}.hdf5"


def load_embedded(config: DatasetConfig) -> TransitionDataset:
    """A dataset collected on this machine by a policy the project ships, cached as a D4RL-layout file
    (keyed by policy hash, size, noise and seed, so a changed recipe never reuses a stale file)."""
    from rlreg.policies import collect_episodes, load_policy, policy_fn

    if not config.policy or config.num_transitions <= 0:
        raise DatasetError(
            f"dataset {config.name}: source=embedded needs dataset.policy and a positive dataset.num_transitions"
        )
    actor, meta = load_policy(config.policy)
    path = embedded_path(config, meta["sha256"])
    if not path.exists():
        print(f"[rlreg] collecting {config.name}: {config.num_transitions} transitions in {config.env.id} with "
              f"policy {config.policy} (once; cached at {path})", flush=True)
        episodes = collect_episodes(
            policy_fn(actor), config.env, config.num_transitions, config.collect_seed, config.action_noise,
            progress=True,
        )
        data = TransitionDataset.from_episodes(episodes, source=str(path))
        write_d4rl_hdf5(
            path,
            observations=data.observations,
            actions=data.actions,
            rewards=data.rewards,
            terminals=data.terminals,
            timeouts=data.timeouts,
            next_observations=data.next_observations,
            **{"metadata/policy_sha256": np.bytes_(meta["sha256"]), "metadata/env_id": np.bytes_(config.env.id),
               "metadata/seed": np.int64(config.collect_seed), "metadata/action_noise": np.float64(config.action_noise)},
        )
    return load_d4rl(config.name, path=str(path), verify="off", use_next_observations=True)
