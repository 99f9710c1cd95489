"""K seeds in one process (rlreg/seeds.py): copy k of a K-seed stack trains exactly like the single run with seed k."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import compose

from rlreg.agents import build_agent
from rlreg.config import to_run_config
from rlreg.data.buffers import OfflineBuffer
from rlreg.data.dataset import TransitionDataset
from rlreg.regularizers.base import SetupContext
from rlreg.seeds import SeedStack

SEEDS = (0, 3, 7)
# float32 rounding only: under vmap the copies' matmuls run as one batched product (another summation order
# than the single run's addmm), ~1e-7 relative per op; 12 updates of a small net stay well below this
ATOL, RTOL = 1e-5, 1e-4


def dataset(rows: int = 500, obs_dim: int = 5, act_dim: int = 2) -> TransitionDataset:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((rows, obs_dim), dtype=np.float32)
    return TransitionDataset(
        observations=obs, actions=rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(rows, dtype=np.float32), next_observations=np.roll(obs, -1, axis=0),
        terminals=rng.random(rows) < 0.05, timeouts=np.zeros(rows, dtype=bool),
        episode_ends=np.zeros(rows, dtype=bool), source="synthetic",
    )


def build(agent: str, seed: int, data: TransitionDataset, buffer: OfflineBuffer):  # type: ignore[no-untyped-def]
    extra = ["agent.num_critics=4"] if agent == "sacn" else []
    run = to_run_config(compose([f"agent={agent}", "agent.actor_hidden=[32,32]", "agent.critic_hidden=[32,32]",
                                 *extra]))
    torch.manual_seed(seed)  # as the trainer seeds before building the agent
    return build_agent(run.agent, SetupContext.box(5, 2, 1.0, "cpu", dataset=data, buffer=buffer, seed=seed))


@pytest.mark.parametrize("agent", ["td3bc", "sacn"])
def test_copy_k_equals_the_single_run_with_seed_k(agent: str) -> None:
    data = dataset()
    buffer = OfflineBuffer(data)
    singles = [build(agent, s, data, buffer) for s in SEEDS]
    stack = SeedStack([build(agent, s, data, buffer) for s in SEEDS])
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    stack_gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    for step in range(1, 13):
        single_metrics = [ln.update(buffer.sample(64, g), step, g) for ln, g in zip(singles, gens)]
        metrics = stack.update(SeedStack.sample(buffer, 64, stack_gens), step, stack_gens)
        assert set(metrics) == set(single_metrics[0])
        for key in metrics:
            expected = torch.stack([m[key] for m in single_metrics])
            torch.testing.assert_close(metrics[key], expected, atol=ATOL, rtol=RTOL, msg=f"{key} at step {step}")
    # the copies really differ (different seeds), and each one matches its own single run
    first = next(singles[0].actor.parameters())
    assert not torch.allclose(first, next(singles[1].actor.parameters()))
    stack.write_back()
    for single, copy in zip(singles, stack.learners):
        for (name, a), (_, b) in zip(single.state_dict().items(), copy.state_dict().items()):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL, msg=name)
        for key in single.optimizers:
            sa, sb = single.optimizers[key].state_dict(), copy.optimizers[key].state_dict()
            for i in sa["state"]:
                for field in ("exp_avg", "exp_avg_sq", "step"):
                    torch.testing.assert_close(sb["state"][i][field], sa["state"][i][field], atol=ATOL, rtol=RTOL)
    # the generators advanced exactly as the single runs' did (same draws, same order)
    for g, h in zip(gens, stack_gens):
        assert torch.equal(g.get_state(), h.get_state())


def test_unsupported_agents_are_named() -> None:
    data = dataset()
    buffer = OfflineBuffer(data)
    with pytest.raises(ValueError, match="TD3-family"):
        SeedStack([torch.nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="regularizer 'prdc'"):
        SeedStack([build("prdc", 0, data, buffer)])


def test_seed_runs_checks_the_config_before_anything_is_written() -> None:
    """The launcher's checks (:func:`rlreg.trainers.seeds.seed_runs`) name the option, from the config alone."""
    from rlreg.trainers.seeds import seed_runs

    base = ["dataset=hopper-embedded"]
    run = to_run_config(compose(["agent=td3bc", *base, "run_dir=/tmp/one_run"]))
    assert [r.seed for r in seed_runs(run, [3])] == [3]  # one seed (compile=true): an explicit run_dir is fine
    with pytest.raises(ValueError, match="do not set run_dir"):
        seed_runs(run, [0, 1])
    for agent, extra, match in [("prdc", [], "regularizer 'prdc'"), ("sacn", ["+agent.critic_dropout=0.1"], "critic_dropout"),
                                ("edac", [], "regularizer 'edac'"), ("td3bc", ["+agent.actor_dropout=0.1"],
                                                                      "actor_dropout")]:
        with pytest.raises(ValueError, match=match):
            seed_runs(to_run_config(compose([f"agent={agent}", *base, *extra])), [0, 1])


def test_compiled_update_agrees_with_the_eager_oracle() -> None:
    """``torch.compile`` of the vmapped losses (fullgraph, so no graph breaks) against the eager stack: same
    metrics and parameters after 6 updates (3 actor steps) from the same state, to float32 rounding (inductor
    fuses and reorders float32 arithmetic; Adam's first steps amplify nothing here: equal gradients' signs)."""
    data = dataset()
    buffer = OfflineBuffer(data)
    eager = SeedStack([build("td3bc", s, data, buffer) for s in SEEDS[:2]])
    compiled = SeedStack([build("td3bc", s, data, buffer) for s in SEEDS[:2]], compile=True)
    ge = [torch.Generator().manual_seed(s) for s in SEEDS[:2]]
    gc = [torch.Generator().manual_seed(s) for s in SEEDS[:2]]
    for step in range(1, 7):
        me = eager.update(SeedStack.sample(buffer, 64, ge), step, ge)
        mc = compiled.update(SeedStack.sample(buffer, 64, gc), step, gc)
        for key in me:
            torch.testing.assert_close(mc[key], me[key], atol=ATOL, rtol=RTOL, msg=f"{key} at step {step}")
    for name, params in eager.params.items():
        for key, value in params.items():
            torch.testing.assert_close(compiled.params[name][key], value, atol=ATOL, rtol=RTOL, msg=f"{name}.{key}")


def test_k_seed_training_writes_k_ordinary_runs(tmp_path, pendulum_dataset) -> None:  # type: ignore[no-untyped-def]
    """``seeds=[1,2]`` in one process vs the two single runs: same run directories' layout, metrics rows and
    final networks (to the float32 tolerance above), and each K-seed run resumes as a single run."""
    from conftest import pendulum_offline_overrides, run_config

    from rlreg.checkpoint import latest_checkpoint, load_checkpoint
    from rlreg.logging import read_metrics
    from rlreg.trainers import derive_run_dir, train
    from rlreg.trainers.seeds import seed_runs, train_seeds

    base = pendulum_offline_overrides(pendulum_dataset) + [
        "trainer.total_steps=30", "trainer.log_every=5", "trainer.eval_every=15", "trainer.eval_episodes=1",
        "trainer.checkpoint_every=15", "trainer.batch_size=32", "agent.actor_hidden=[32,32]",
        "agent.critic_hidden=[32,32]",
    ]
    together = run_config(base + ["tag=together"], tmp_path)
    summaries = train_seeds(seed_runs(together, [1, 2]), announce=False)
    assert [s["steps"] for s in summaries] == [30, 30]
    for seed, summary in zip((1, 2), summaries):
        single = run_config(base + ["tag=alone", f"seed={seed}"], tmp_path)
        train(single, announce=False)
        a_dir, b_dir = derive_run_dir(single), derive_run_dir(dataclasses.replace(together, seed=seed))
        assert summary["run_dir"] == str(b_dir) and b_dir.name == f"seed{seed}"
        rows_a, rows_b = read_metrics(a_dir / "metrics.jsonl"), read_metrics(b_dir / "metrics.jsonl")
        assert [(r["step"], r["kind"], sorted(r)) for r in rows_a] == [(r["step"], r["kind"], sorted(r)) for r in rows_b]
        for ra, rb in zip(rows_a, rows_b):
            for key, value in ra.items():
                if isinstance(value, float) and key != "time":
                    assert rb[key] == pytest.approx(value, rel=1e-3, abs=1e-3), (key, ra["step"])
        sa = load_checkpoint(latest_checkpoint(a_dir))
        sb = load_checkpoint(latest_checkpoint(b_dir))
        assert sa["step"] == sb["step"] == 30
        for key, value in sa["learner"]["networks"].items():
            torch.testing.assert_close(sb["learner"]["networks"][key], value, atol=ATOL, rtol=RTOL, msg=key)
        # the run's own generator drew exactly what the single run drew
        assert torch.equal(sa["rng"]["generators"]["train"], sb["rng"]["generators"]["train"])
    # a K-seed run dir is an ordinary run: extend seed 2 alone by 10 steps
    more = dataclasses.replace(together, seed=2)
    more = dataclasses.replace(more, trainer=dataclasses.replace(more.trainer, total_steps=40))
    assert train(more, announce=False)["steps"] == 40
    # ... and K-seed training resumes from single-run checkpoints (the Adam moments are stacked back in)
    longer = dataclasses.replace(together, trainer=dataclasses.replace(together.trainer, total_steps=40))
    train_seeds(seed_runs(longer, [1]), announce=False)
    alone = run_config(base + ["tag=alone", "seed=1", "trainer.total_steps=40"], tmp_path)
    train(alone, announce=False)
    sa = load_checkpoint(latest_checkpoint(derive_run_dir(alone)))
    sb = load_checkpoint(latest_checkpoint(derive_run_dir(dataclasses.replace(longer, seed=1))))
    assert sa["step"] == sb["step"] == 40
    for key, value in sa["learner"]["networks"].items():
        torch.testing.assert_close(sb["learner"]["networks"][key], value, atol=ATOL, rtol=RTOL, msg=key)


def test_compile_true_takes_the_stacked_update_path(tmp_path, pendulum_dataset) -> None:  # type: ignore[no-untyped-def]
    """``compile=true`` on the command line trains through :class:`rlreg.seeds.SeedStack` (here refused for PRDC,
    which the stacked update does not support, with an error that names the option); a run's stored config has
    no ``compile`` key (a launcher option, like ``seeds``)."""
    import json

    from conftest import pendulum_offline_overrides
    from test_faults import TINY, cli

    out = cli(["agent=prdc", "compile=true", *pendulum_offline_overrides(pendulum_dataset), *TINY], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "compile=true" in out.stdout + out.stderr and "regularizer 'prdc'" in out.stdout + out.stderr
    assert not list(tmp_path.rglob("config.json")), "a refused launch must not create a run directory"
    ok = cli(["agent=td3bc", "compile=false", *pendulum_offline_overrides(pendulum_dataset), *TINY], tmp_path)
    assert ok.returncode == 0, ok.stderr
    config = json.loads(next((tmp_path / "runs").rglob("config.json")).read_text())
    assert "compile" not in config and "seeds" not in config
