"""Stacking regularizers across methods: PRDC's dataset constraint plus SPOT's density term on one TD3
learner. Both terms are added to the actor loss and both show in the metrics."""

from __future__ import annotations

from pathlib import Path

from conftest import pendulum_offline_overrides, run_config

from rlreg.logging import read_metrics
from rlreg.trainers import train


def test_prdc_and_spot_stack(tmp_path: Path, pendulum_dataset: Path) -> None:
    run = run_config(
        pendulum_offline_overrides(pendulum_dataset)
        + [
            "agent=prdc",
            "regularizer=[prdc,spot]",
            "regularizer.spot.pretrain_steps=20",
            "regularizer.spot.vae_hidden=[32,32]",
            "regularizer.spot.lambd=0.5",
            "agent.actor_hidden=[32,32]",
            "agent.critic_hidden=[32,32]",
            "trainer.total_steps=40",
            "trainer.batch_size=32",
            "trainer.log_every=10",
            "trainer.eval_every=40",
            "trainer.eval_episodes=1",
            "trainer.checkpoint_every=20",
        ],
        tmp_path,
    )
    assert list(run.agent.regularizers) == ["prdc", "spot"]
    summary = train(run, announce=False)
    rows = [r for r in read_metrics(Path(summary["metrics"])) if r["kind"] == "train" and "actor/loss" in r]
    assert rows
    for row in rows:
        prdc, spot = row["prdc/loss"], row["spot/density"]
        assert prdc > 0 and spot > 0
        # the actor loss is the learner's Q term plus both regularizer terms (window means, so approx)
        assert abs(row["actor/loss"] - (row["actor/q_term"] + prdc + spot)) < 1e-4 * max(1.0, abs(row["actor/loss"]))
    pretrain = [r for r in read_metrics(Path(summary["metrics"])) if "pretrain/spot/loss" in r]
    assert pretrain and pretrain[-1]["pretrain_step"] == 20
