"""The complete examples of the documentation's guides (docs/examples/*.py) run and do what the guides say:
the regularizer's terms equal their formula on a batch, enter the losses, are logged, and a short offline run
trains with them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose, pendulum_offline_overrides

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture(autouse=True)
def _registries_restored():  # type: ignore[no-untyped-def]
    """The examples register a learner and a regularizer; undo that after each test so that the project's own
    registries (checked by tests/test_agent_contract.py) never see them."""
    import rlreg.config as config
    from rlreg.learners import LEARNERS
    from rlreg.regularizers import REGULARIZERS

    saved = [(d, dict(d)) for d in (LEARNERS, REGULARIZERS, config.LEARNER_CONFIGS, config.REGULARIZER_CONFIGS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    for name in ("magnitude_regularizer", "tiny_ddpg"):
        sys.modules.pop(name, None)


def load_example(name: str):  # type: ignore[no-untyped-def]
    """Import docs/examples/<name>.py as a module (once; it registers what it defines)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_magnitude_regularizer_terms_match_their_formula() -> None:
    ex = load_example("magnitude_regularizer")
    from rlreg.agents import build_agent
    from rlreg.config import AgentConfig
    from rlreg.data.buffers import Batch
    from rlreg.learners.td3 import TD3Config
    from rlreg.regularizers.base import SetupContext

    torch.manual_seed(0)
    cfg = ex.MagnitudeConfig(q_weight=0.5, action_weight=2.0, decay_steps=10)
    agent = AgentConfig("td3", "td3", TD3Config(actor_hidden=(16,), critic_hidden=(16,)), {"magnitude": cfg})
    learner = build_agent(agent, SetupContext.box(obs_dim=3, act_dim=2))
    g = torch.Generator().manual_seed(1)
    batch = Batch.one_step(torch.randn(8, 3, generator=g), torch.rand(8, 2, generator=g) * 2 - 1,
                           torch.randn(8, generator=g), torch.randn(8, 3, generator=g), torch.ones(8), gamma=0.99)
    with torch.no_grad():  # the actor does not move during the critic step, so pi(s) is known in advance
        q = learner.critic(batch.observations, batch.actions)  # (E, B)
        pi = learner.actor(batch.observations)
    metrics = learner.update(batch, step=4, generator=g)  # policy_freq 2: an actor step
    assert metrics["magnitude/q_loss"].item() == pytest.approx(0.5 * (1 - 4 / 10) * q.pow(2).mean().item(), rel=1e-5)
    assert metrics["magnitude/action_loss"].item() == pytest.approx(2.0 * pi.pow(2).mean().item(), rel=1e-5)
    # the actor loss is the learner's Q term plus the regularizer's term
    assert metrics["actor/loss"].item() == pytest.approx(
        metrics["actor/q_term"].item() + metrics["magnitude/action_loss"].item(), rel=1e-5)
    # past the decay the critic term is zero
    assert learner.update(batch, step=11, generator=g)["magnitude/q_loss"].item() == 0.0
    with pytest.raises(Exception, match="regularizer.magnitude.decay_steps must be >= 0"):
        ex.MagnitudeConfig(decay_steps=-1)


def test_magnitude_regularizer_trains_and_logs(tmp_path: Path, pendulum_dataset: Path) -> None:
    load_example("magnitude_regularizer")
    from rlreg.config import to_run_config
    from rlreg.logging import read_metrics
    from rlreg.trainers import train

    raw = compose([f"run_root={tmp_path / 'runs'}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
                   *pendulum_offline_overrides(pendulum_dataset), "agent=td3bc", "agent.actor_hidden=[32,32]",
                   "agent.critic_hidden=[32,32]", "trainer.total_steps=40", "trainer.batch_size=32",
                   "trainer.log_every=10", "trainer.eval_every=40", "trainer.eval_episodes=1",
                   "trainer.checkpoint_every=20"])
    raw["regularizer"]["magnitude"] = {"q_weight": 0.1, "action_weight": 0.5}  # stacked on TD3+BC's bc
    run = to_run_config(raw)
    assert list(run.agent.regularizers) == ["bc", "magnitude"]
    summary = train(run, announce=False)
    rows = [r for r in read_metrics(Path(summary["metrics"])) if r["kind"] == "train" and "actor/loss" in r]
    assert rows and all(r["magnitude/q_loss"] > 0 and r["magnitude/action_loss"] > 0 for r in rows)
    assert summary["run_dir"].endswith("td3bc-bc+magnitude/pendulum-random/seed0")


# ------------------------------------------------------------------------- writing a learner (tiny_ddpg)
def test_tiny_ddpg_critic_loss_matches_its_formula_and_takes_regularizers() -> None:
    ex = load_example("tiny_ddpg")
    load_example("magnitude_regularizer")
    from rlreg.agents import build_agent
    from rlreg.config import AgentConfig
    from rlreg.data.buffers import Batch
    from rlreg.regularizers.base import SetupContext

    torch.manual_seed(0)
    cfg = ex.TinyDDPGConfig(hidden=(16,), gamma=0.9, policy_freq=2)
    magnitude = sys.modules["magnitude_regularizer"].MagnitudeConfig(q_weight=0.5)
    learner = build_agent(AgentConfig("tiny_ddpg", "tiny_ddpg", cfg, {"magnitude": magnitude}),
                          SetupContext.box(obs_dim=3, act_dim=2))
    assert isinstance(learner, ex.TinyDDPG)
    g = torch.Generator().manual_seed(1)
    not_done = torch.tensor([1.0, 0.0, 1.0, 1.0])
    batch = Batch.one_step(torch.randn(4, 3, generator=g), torch.rand(4, 2, generator=g) * 2 - 1,
                           torch.randn(4, generator=g), torch.randn(4, 3, generator=g), not_done, gamma=0.9)
    with torch.no_grad():
        y = batch.rewards + 0.9 * not_done * learner.critic_target(batch.next_observations,
                                                                   learner.actor_target(batch.next_observations))[0]
        q = learner.critic(batch.observations, batch.actions)[0]
    actor_before = [p.clone() for p in learner.actor.parameters()]
    metrics = learner.update(batch, step=1, generator=g)  # policy_freq 2: no actor step
    assert metrics["critic/loss"].item() == pytest.approx((q - y).pow(2).mean().item(), rel=1e-5)
    assert metrics["magnitude/q_loss"].item() == pytest.approx(0.5 * q.pow(2).mean().item(), rel=1e-5)
    assert "actor/loss" not in metrics and all(torch.equal(a, b) for a, b in zip(actor_before, learner.actor.parameters()))
    metrics = learner.update(batch, step=2, generator=g)
    assert "actor/loss" in metrics and not all(torch.equal(a, b) for a, b in zip(actor_before, learner.actor.parameters()))
    with pytest.raises(Exception, match="agent.tau"):
        ex.TinyDDPGConfig(tau=2.0)


def test_tiny_ddpg_trains_online_and_resumes_exactly(tmp_path: Path) -> None:
    load_example("tiny_ddpg")
    from rlreg.config import to_run_config
    from rlreg.logging import read_metrics
    from rlreg.trainers import train

    def run_for(total: int, root: Path):  # type: ignore[no-untyped-def]
        raw = compose([f"run_root={root}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
                       "agent=td3", "env=pendulum", f"trainer.total_steps={total}", "trainer.warmup_steps=100",
                       "trainer.eval_every=200", "trainer.eval_episodes=1", "trainer.log_every=50",
                       "trainer.checkpoint_every=100", "trainer.batch_size=32"])
        raw["agent"] = {"name": "tiny_ddpg", "learner": "tiny_ddpg", "hidden": [32, 32]}
        return to_run_config(raw)

    whole = train(run_for(400, tmp_path / "a"), announce=False)
    train(run_for(200, tmp_path / "b"), announce=False)
    resumed = train(run_for(400, tmp_path / "b"), announce=False)  # same run, longer budget
    rows = [r for r in read_metrics(Path(whole["metrics"])) if r["kind"] == "train" and "critic/loss" in r]
    assert rows and whole["run_dir"].endswith("tiny_ddpg/Pendulum-v1/seed0")
    assert resumed["last_return"] == pytest.approx(whole["last_return"], rel=1e-6)
