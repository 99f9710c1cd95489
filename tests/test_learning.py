"""Small agents that measurably learn within the CI budget (about a minute each on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_config

from rlreg.logging import read_metrics
from rlreg.trainers import train


def test_online_sac_learns_pendulum(tmp_path: Path) -> None:
    """Random actions score about -1200 on Pendulum-v1; SAC must reach -400 within 5,000 env steps."""
    run = run_config(
        [
            "agent=sac",
            "env=pendulum",
            "seed=1",
            "trainer.total_steps=5000",
            "trainer.warmup_steps=1000",
            "trainer.eval_every=2500",
            "trainer.eval_episodes=5",
            "trainer.log_every=500",
            "trainer.checkpoint_every=2500",
        ],
        tmp_path,
    )
    summary = train(run, announce=False)
    first_episodes = [r["train/episode_return"] for r in read_metrics(Path(summary["metrics"])) if r["kind"] == "episode"]
    assert sum(first_episodes[:5]) / 5 < -900  # the warm-up really was random
    assert summary["last_return"] > -400, summary
