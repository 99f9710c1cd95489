"""Shared fixtures: small datasets written to disk, tiny run configs, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: list[str]) -> dict[str, Any]:
    """Compose the project's Hydra config with ``overrides`` into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def run_config(overrides: list[str], tmp_path: Path):
    from rlreg.config import to_run_config

    base = [f"run_root={tmp_path / 'runs'}", "logging.wandb_mode=disabled", "logging.progress_bar=false"]
    return to_run_config(compose(base + overrides))


@pytest.fixture
def pendulum_dataset(tmp_path: Path) -> Path:
    """A D4RL-layout file of 2,000 random-policy Pendulum-v1 steps (episodes of 200, timeouts)."""
    import gymnasium as gym

    from rlreg.data.d4rl import write_d4rl_hdf5

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "tout")}
    for ep in range(10):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            act = rng.uniform(-2, 2, size=1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(act)
            for k, v in zip(rows, (obs, act, r, nxt, term, trunc)):
                rows[k].append(v)
            obs, done = nxt, term or trunc
    path = tmp_path / "pendulum_random.hdf5"
    write_d4rl_hdf5(
        path,
        observations=np.asarray(rows["obs"], np.float32),
        actions=np.asarray(rows["act"], np.float32),
        rewards=np.asarray(rows["rew"], np.float32),
        terminals=np.asarray(rows["term"]),
        timeouts=np.asarray(rows["tout"]),
        next_observations=np.asarray(rows["next"], np.float32),
    )
    return path


def pendulum_offline_overrides(path: Path) -> list[str]:
    return [
        "dataset=minari",  # any dataset config; every field is overridden below
        "dataset.name=pendulum-random",
        "dataset.source=d4rl_hdf5",
        f"dataset.path={path}",
        "dataset.id=pendulum-random",
        "dataset.verify=off",
        "dataset.env.id=Pendulum-v1",
        "dataset.env.ref_min_score=null",
        "dataset.env.ref_max_score=null",
    ]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def stop_after_update(monkeypatch: pytest.MonkeyPatch, regularizer_cls: type, step: int) -> None:
    """Deliver SIGUSR1 (as SLURM does before a time limit) right after update ``step`` of a run whose agent
    has a regularizer of class ``regularizer_cls``; the trainer checkpoints and raises StopRequested."""
    import signal

    original = regularizer_cls.after_update

    def after_update(self, s: int) -> None:  # type: ignore[no-untyped-def]
        original(self, s)
        if s == step:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(regularizer_cls, "after_update", after_update)
