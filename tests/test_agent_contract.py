"""The agent contract, for every shipped agent (``conf/agent/*.yaml``): it builds from its config on a tiny
dataset or env, trains with finite metrics, and a run stopped at a checkpoint and resumed ends equal to an
uninterrupted one. A new agent is covered by adding its YAML (and, if it needs them, tiny-budget overrides
below); a new regularizer must appear in some agent (or in ``EXTRA_STACKS``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import CONF_DIR, pendulum_offline_overrides, run_config
from test_training import assert_same_learner, final_state

from rlreg.config import ConfigError
from rlreg.logging import read_metrics
from rlreg.regularizers import REGULARIZERS
from rlreg.trainers import train

AGENTS = sorted(p.stem for p in (Path(CONF_DIR) / "agent").glob("*.yaml"))

TINY = [
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=10",
    "trainer.batch_size=16",
]
ONLINE = ["env=pendulum", "trainer.warmup_steps=5", "trainer.buffer_size=1000"]

# Per-agent overrides that shrink networks, ensembles and pre-training phases to a tiny budget.
SMALL_NETS = ["agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]"]
SMALL_NETS_BY_LEARNER: dict[str, list[str]] = {"decqn": ["agent.hidden=16"]}
PER_AGENT: dict[str, list[str]] = {
    "spot": ["regularizer.spot.pretrain_steps=8"],
    "sacn": ["agent.num_critics=3"],
    "edac": ["agent.num_critics=3"],
    "rorl": ["agent.num_critics=3", "regularizer.rorl_policy.num_samples=2", "regularizer.rorl_q.num_samples=2",
             "regularizer.rorl_ood.num_samples=2"],
    "droq": ["trainer.utd_ratio=2"],
    "mbpo": ["trainer.utd_ratio=2", "agent.model.num_members=3", "agent.model.num_elites=2",
             "agent.model.hidden=[16,16]", "agent.model.weight_decays=[2.5e-5,5e-5,1e-4]", "agent.model.max_epochs=3",
             "agent.model_train_freq=10", "agent.epoch_length=10", "agent.rollout_batch_size=32",
             "agent.lipschitz_probe=8"],
    "mbpo_lipschitz": ["trainer.utd_ratio=2", "agent.model.hidden=[16,16]",
                       "agent.model.weight_decays=[2.5e-5,5e-5,1e-4]", "agent.model.max_epochs=3",
                       "agent.model_train_freq=10", "agent.epoch_length=10", "agent.rollout_batch_size=32",
                       "agent.lipschitz_probe=8"],
    "decqn": ["trainer.update_every=2"],
    "revalued": ["agent.ensemble_size=3"],
    "demoreg_sac": ["regularizer.demoreg.source=dataset", "regularizer.demoreg.num_episodes=2",
                    "regularizer.demoreg.bc_steps=8", "regularizer.demoreg.eval_every=4"],
}
# Regularizer stacks beyond the agents' own, so that every registered regularizer runs on a learner it fits.
EXTRA_STACKS: dict[str, list[str]] = {}


def overrides(agent: str, dataset: Path, tmp_path: Path) -> list[str]:
    run = run_config([f"agent={agent}"], tmp_path)
    extra = list(PER_AGENT.get(agent, []))
    if run.trainer.mode == "offline" or agent == "demoreg_sac":  # demoreg's demos come from the dataset
        extra += pendulum_offline_overrides(dataset)
    if run.trainer.mode == "online":
        extra += ONLINE
    return [f"agent={agent}", *TINY, *SMALL_NETS_BY_LEARNER.get(run.agent.learner, SMALL_NETS), *extra]


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_builds_trains_and_resumes_exactly(agent: str, tmp_path: Path, pendulum_dataset: Path) -> None:
    base = overrides(agent, pendulum_dataset, tmp_path)
    train(run_config(base + ["trainer.total_steps=30", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    train(run_config(base + ["trainer.total_steps=10", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    train(run_config(base + ["trainer.total_steps=30", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    full, part = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(full, part)
    rows = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    assert rows and any(k.startswith("critic/") for k in rows[-1])
    for row in rows:
        for key, value in row.items():
            assert not isinstance(value, float) or math.isfinite(value), (agent, key, value)
    assert rows == [r for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if r["kind"] == "train"]


def test_every_regularizer_is_exercised_by_some_agent(tmp_path: Path) -> None:
    covered = {name for agent in AGENTS for name in run_config([f"agent={agent}"], tmp_path).agent.regularizers}
    covered |= {name for stack in EXTRA_STACKS.values() for name in stack}
    assert sorted(set(REGULARIZERS) - covered) == []


def test_a_regularizer_on_a_learner_it_does_not_fit_is_refused_naming_both(tmp_path: Path, pendulum_dataset: Path) -> None:
    run = run_config(["agent=sacn", "regularizer=[a2pr]", *pendulum_offline_overrides(pendulum_dataset)], tmp_path)
    with pytest.raises(ConfigError, match=r"regularizer=a2pr needs a TD3-family learner.*agent\.learner=sac"):
        train(run, announce=False)
