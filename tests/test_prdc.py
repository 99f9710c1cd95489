"""PRDC (docs/agents/prdc.md): the dataset-constraint term on tiny tensors, the beta limits, the term inside a TD3
update, identical training on both search paths, configs, exact resume and learning on the point task
(the toy task of test_spot.py: random data score about -25, going straight to the goal about -3)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose, run_config, stop_after_update
from omegaconf import OmegaConf
from test_spot import assert_learns_point_task, assert_same_state, final_state, point_dataset, point_overrides  # noqa: F401 (fixture)

from rlreg.config import ConfigError
from rlreg.learners.td3 import TD3Config
from rlreg.data.buffers import Batch, OfflineBuffer
from rlreg.data.dataset import TransitionDataset
from rlreg.data.knn import BruteForceIndex, TreeIndex, brute_force_reference
from rlreg.learners.td3 import TD3Learner
from rlreg.logging import read_metrics
from rlreg.regularizers import SetupContext
from rlreg.regularizers.base import ActorContext
from rlreg.regularizers.prdc import PRDCConfig, PRDCRegularizer, dataset_key
from rlreg.trainers import StopRequested, train


def make_buffer(observations: np.ndarray, actions: np.ndarray) -> OfflineBuffer:
    n = len(observations)
    data = TransitionDataset(
        observations=np.asarray(observations, np.float32),
        actions=np.asarray(actions, np.float32),
        rewards=np.linspace(-1, 1, n).astype(np.float32),
        next_observations=np.roll(np.asarray(observations, np.float32), -1, axis=0),
        terminals=np.zeros(n, dtype=bool),
        timeouts=np.zeros(n, dtype=bool),
        episode_ends=np.zeros(n, dtype=bool),
        source="test",
    )
    return OfflineBuffer(data)


def bound(buffer: OfflineBuffer, learner: TD3Learner | None = None, **cfg) -> PRDCRegularizer:  # type: ignore[no-untyped-def]
    obs_dim, act_dim = buffer.observations.shape[1], buffer.actions.shape[1]
    reg = PRDCRegularizer(PRDCConfig(**cfg))
    learner = learner or TD3Learner(SetupContext.box(obs_dim, act_dim), TD3Config(actor_hidden=(8,), critic_hidden=(8,)))
    reg.bind(learner, SetupContext(obs_dim, act_dim, 1.0, torch.device("cpu"), buffer=buffer))
    return reg


TINY_OBS = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
TINY_ACT = [[0.5], [-0.5], [1.0]]


@pytest.mark.parametrize("backend", ["tree", "brute"])
def test_dc_term_on_tiny_tensors(backend: str) -> None:
    buffer = make_buffer(np.array(TINY_OBS), np.array(TINY_ACT))
    batch = Batch.one_step(buffer.observations[:2], buffer.actions[:2], torch.zeros(2), buffer.observations[:2],
                          torch.ones(2), gamma=0.99)
    pi = torch.tensor([[-0.4], [0.9]], requires_grad=True)
    ctx = ActorContext(actions=pi, q=torch.zeros(2), step=2)
    # beta = 1: key (1, 0, 0.9) is 1.16^.5 from row 0 (state 1 away, action 0.4), 1.96^.5 from its own row 1
    # -> a_hat = (0.5, 0.5); loss = 2 * ((-0.4 - 0.5)^2 + (0.9 - 0.5)^2) / 2 = 0.97
    term = bound(buffer, beta=1.0, weight=2.0, backend=backend).actor_terms(batch, ctx)["loss"]
    assert term.item() == pytest.approx(0.97, rel=1e-6)
    (grad,) = torch.autograd.grad(term, pi)  # a_hat is a constant: d/dpi = weight * 2 (pi - a_hat) / (B |A|)
    torch.testing.assert_close(grad, torch.tensor([[2 * (-0.9)], [2 * 0.4]]))
    # beta = 2: the state part now dominates, row 1 (its own state) wins: a_hat = (0.5, -0.5)
    term = bound(buffer, beta=2.0, backend=backend).actor_terms(batch, ctx)["loss"]
    assert term.item() == pytest.approx((0.81 + 1.96) / 2, rel=1e-6)


@pytest.mark.parametrize("backend", ["tree", "brute"])
def test_large_beta_recovers_the_dataset_action_of_the_same_state(backend: str) -> None:
    rng = np.random.default_rng(0)
    buffer = make_buffer(rng.standard_normal((500, 3)), rng.uniform(-1, 1, (500, 2)))
    reg = bound(buffer, beta=1e3, backend=backend)
    pi = torch.as_tensor(rng.uniform(-1, 1, (500, 2)), dtype=torch.float32)  # far from the dataset actions
    a_hat = reg.nearest_actions(buffer.observations, pi, buffer.actions)
    assert torch.equal(a_hat, buffer.actions)
    # beta = 0: the state is ignored, a_hat is the dataset action nearest to pi(s)
    reg = bound(buffer, beta=0.0, backend=backend)
    a_hat = reg.nearest_actions(buffer.observations, pi, buffer.actions)
    nearest = ((pi[:, None] - buffer.actions[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(a_hat, buffer.actions[nearest])
    assert not torch.equal(a_hat, buffer.actions)


def test_dc_term_inside_a_td3_update() -> None:
    """The TD3+PRDC actor loss is -alpha/mean|Q| mean Q + mean (pi - a_hat)^2, with a_hat from the
    actor before the step; 'prdc/loss' is logged."""
    rng = np.random.default_rng(1)
    buffer = make_buffer(rng.standard_normal((300, 3)), rng.uniform(-1, 1, (300, 2)))
    torch.manual_seed(0)
    reg = PRDCRegularizer(PRDCConfig(beta=2.0))
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=2.5), regularizers=[reg])
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu"), buffer=buffer))
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    before = copy.deepcopy(learner)
    metrics = learner.update(batch, step=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pi = before.actor(batch.observations)
    keys = dataset_key(buffer.observations, buffer.actions, 2.0).numpy()
    idx, _ = brute_force_reference(keys, dataset_key(batch.observations, pi, 2.0).numpy())
    expected = ((pi - buffer.actions[idx]) ** 2).mean()
    assert metrics["prdc/loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["actor/loss"].item() == pytest.approx(metrics["actor/q_term"].item() + expected.item(), rel=1e-5)


def test_tree_and_brute_force_paths_train_identical_networks() -> None:
    """Same neighbours, same tie-break (half of the rows are duplicated), hence bit-identical training."""
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((400, 3))
    act = rng.uniform(-1, 1, (400, 2))
    obs[200:], act[200:] = obs[:200], act[:200]
    buffer = make_buffer(obs, act)
    states = []
    for backend in ("tree", "brute"):
        torch.manual_seed(0)
        reg = PRDCRegularizer(PRDCConfig(backend=backend, chunk_rows=64, candidates=2))
        learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(16,), critic_hidden=(16,), q_norm_alpha=2.5), regularizers=[reg])
        reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu"), buffer=buffer))
        assert isinstance(reg.index, TreeIndex if backend == "tree" else BruteForceIndex)
        gen = torch.Generator().manual_seed(0)
        for step in range(1, 41):
            learner.update(buffer.sample(32, gen), step, gen)
        states.append(learner.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_configs_follow_the_readme_table() -> None:
    from rlreg.config import to_run_config

    for dataset, alpha in (("halfcheetah-medium-v2", 40.0), ("hopper-medium-replay-v2", 2.5),
                           ("walker2d-medium-expert-v2", 2.5), ("hopper-embedded", 2.5)):
        run = to_run_config(compose(["agent=prdc", f"dataset={dataset}"]))
        assert run.agent.learner == "td3" and run.agent.learner_config.q_norm_alpha == alpha
        assert run.agent.learner_config.policy_freq == 2
        assert run.agent.regularizers["prdc"] == PRDCConfig(beta=2.0, k=1)
    # AntMaze (no dataset config yet): alpha = beta = 7.5 and rewards 10000 r - 1
    tuned = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "tuned/prdc/antmaze-medium-play-v2.yaml"))
    assert tuned["agent"] == {"q_norm_alpha": 7.5}
    assert tuned["regularizer"]["prdc"]["beta"] == 7.5
    assert {k: tuned["dataset"][k] for k in ("reward_transform", "reward_scale", "reward_shift")} == {
        "reward_transform": "affine", "reward_scale": 10000.0, "reward_shift": -1.0}


def test_bad_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="regularizer.prdc.kk"):
        run_config(["agent=prdc", "+regularizer.prdc.kk=1"], tmp_path)
    for option, value in (("backend", "kdtree"), ("k", 0), ("beta", -1.0), ("precision", "half")):
        with pytest.raises(ValueError, match=f"regularizer.prdc.{option}"):
            PRDCRegularizer(PRDCConfig(**{option: value}))
    reg = PRDCRegularizer(PRDCConfig())
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,)))
    with pytest.raises(ValueError, match="offline dataset"):
        reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))


SMALL = [
    "agent=prdc",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
    "trainer.batch_size=32",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=2",
    "trainer.checkpoint_every=20",
]


def test_prdc_resume_is_exact(tmp_path: Path, point_dataset: tuple[Path, float], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    base = point_overrides(point_dataset[0]) + SMALL + ["trainer.total_steps=40"]
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    part = base + [f"run_dir={tmp_path / 'part'}"]
    train(run_config(part + ["trainer.total_steps=20"], tmp_path), announce=False)  # stopped by the budget
    stop_after_update(monkeypatch, PRDCRegularizer, 33)  # and by a signal mid-window
    with pytest.raises(StopRequested):
        train(run_config(part, tmp_path), announce=False)
    monkeypatch.undo()
    train(run_config(part, tmp_path), announce=False)
    assert_same_state(final_state(tmp_path / "full"), final_state(tmp_path / "part"))
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert rows == read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert "prdc/loss" in set().union(*rows)


def test_prdc_learns_the_point_task(tmp_path: Path, point_dataset: tuple[Path, float]) -> None:  # noqa: F811
    """PRDC reaches -10 on the point task in 1,500 updates (small networks; about -5.5 on seeds 0 and 1)."""
    assert_learns_point_task(tmp_path, point_dataset, [
        "agent=prdc",
        "agent.actor_hidden=[32,32]",
        "agent.critic_hidden=[32,32]",
    ])
