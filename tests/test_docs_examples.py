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
    from rlreg.config import AgentConfig, TD3Config
    from rlreg.data.buffers import Batch

    torch.manual_seed(0)
    cfg = ex.MagnitudeConfig(q_weight=0.5, action_weight=2.0, decay_steps=10)
    agent = AgentConfig("td3", "td3", TD3Config(actor_hidden=(16,), critic_hidden=(16,)), {"magnitude": cfg})
    learner = build_agent(agent, obs_dim=3, act_dim=2, max_action=1.0, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 3, generator=g), torch.rand(8, 2, generator=g) * 2 - 1, torch.randn(8, generator=g),
                  torch.randn(8, 3, generator=g), torch.ones(8))
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
