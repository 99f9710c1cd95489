"""Turn a :class:`~rlreg.config.DatasetConfig` into a :class:`TransitionDataset`, whatever its source."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from rlreg.config import DatasetConfig
from rlreg.data.d4rl import load_d4rl, load_d4rl_package, write_d4rl_hdf5
from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError
from rlreg.data.minari_io import load_minari


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
