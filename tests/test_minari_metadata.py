"""Minari datasets configure themselves: ``dataset=minari dataset.id=<id>`` evaluates in the env the dataset
records and normalizes with its reference scores; the user's overrides win; a dataset without an env or
without scores gives a clear message. Datasets are written here with Minari's own DataCollector and with
rlreg's D4RL-recipe generator."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
from conftest import compose

from rlreg.config import ConfigError, to_run_config
from rlreg.data.minari_io import create_minari_dataset, installed_env_id
from rlreg.runs import derive_run_dir


def collect(ds_id: str, root, monkeypatch, steps: int = 400, **create_kwargs):  # type: ignore[no-untyped-def]
    """Random Pendulum-v1 steps recorded by minari.DataCollector and written as dataset ``ds_id`` under root."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = minari.DataCollector(gym.make("Pendulum-v1"))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # author / permalink nags
        ds = env.create_dataset(dataset_id=ds_id, algorithm_name="random", **create_kwargs)
    env.close()
    return ds


def run_for(overrides: list[str], tmp_path):  # type: ignore[no-untyped-def]
    return to_run_config(compose([f"run_root={tmp_path / 'runs'}", "logging.wandb_mode=disabled", *overrides]))


def test_env_and_reference_scores_come_from_the_dataset(tmp_path, monkeypatch):
    collect("rlregtest/pendulum/scored-v0", tmp_path / "minari", monkeypatch,
            eval_env="Pendulum-v1", ref_min_score=-1400.0, ref_max_score=-150.0)
    run = run_for(["dataset=minari", "dataset.id=rlregtest/pendulum/scored-v0"], tmp_path)
    ds = run.dataset
    assert ds is not None and ds.env.id == "Pendulum-v1"  # not the Hopper-v5 of EnvConfig's default
    assert (ds.env.ref_min_score, ds.env.ref_max_score) == (-1400.0, -150.0)
    assert ds.env.max_episode_steps == 200  # the recorded time limit
    # the run is named after the id; the slashes do not nest directories
    assert ds.name == "rlregtest/pendulum/scored-v0"
    run_dir = derive_run_dir(run)
    assert run_dir == tmp_path / "runs" / "td3bc-bc" / "rlregtest_pendulum_scored-v0" / "seed0"

    # the user's values win over the metadata, each one separately
    run = run_for(["dataset=minari", "dataset.id=rlregtest/pendulum/scored-v0", "dataset.env.ref_max_score=-100",
                   "dataset.env.id=MountainCarContinuous-v0"], tmp_path)
    assert run.dataset is not None
    assert (run.dataset.env.id, run.dataset.env.ref_min_score, run.dataset.env.ref_max_score) == (
        "MountainCarContinuous-v0", -1400.0, -100.0)
    assert run.dataset.env.max_episode_steps is None  # kwargs/time limit only come with the recorded env


def test_dataset_without_scores_warns_and_reports_returns(tmp_path, monkeypatch):
    collect("rlregtest/pendulum/unscored-v0", tmp_path / "minari", monkeypatch)
    with pytest.warns(UserWarning, match=r"no ref_min_score/ref_max_score.*dataset.env.ref_min_score"):
        run = run_for(["dataset=minari", "dataset.id=rlregtest/pendulum/unscored-v0"], tmp_path)
    assert run.dataset is not None and run.dataset.env.id == "Pendulum-v1"
    assert run.dataset.env.ref_min_score is None and run.dataset.env.ref_max_score is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scores given by hand: no warning
        run = run_for(["dataset=minari", "dataset.id=rlregtest/pendulum/unscored-v0",
                       "dataset.env.ref_min_score=-1000", "dataset.env.ref_max_score=0"], tmp_path)
    assert run.dataset is not None and run.dataset.env.ref_max_score == 0.0


def test_missing_env_unknown_env_and_missing_dataset_are_clear(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    episodes = [{"observations": np.zeros((4, 3), np.float32), "actions": np.zeros((3, 1), np.float32),
                 "rewards": np.zeros(3), "terminations": [0, 0, 1], "truncations": [0, 0, 0]}]
    create_minari_dataset("rlregtest/noenv-v0", episodes, None, data_path=root,
                          observation_space=gym.spaces.Box(-1, 1, (3,)), action_space=gym.spaces.Box(-2, 2, (1,)))
    base = ["dataset=minari", f"dataset.path={root}"]
    with pytest.raises(ConfigError, match=r"'rlregtest/noenv-v0' records no environment.*dataset.env.id=<Gymnasium id>"):
        run_for([*base, "dataset.id=rlregtest/noenv-v0"], tmp_path)
    # given by hand, it trains (the spaces match Pendulum-v1)
    run = run_for([*base, "dataset.id=rlregtest/noenv-v0", "dataset.env.id=Pendulum-v1",
                   "dataset.env.ref_min_score=0", "dataset.env.ref_max_score=1"], tmp_path)
    assert run.dataset is not None and run.dataset.env.id == "Pendulum-v1"

    # an env this machine does not have
    collect("rlregtest/pendulum/alien-v0", root, monkeypatch, steps=10)
    meta_path = root / "rlregtest" / "pendulum" / "alien-v0" / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    spec = json.loads(meta["env_spec"])
    meta["env_spec"] = json.dumps({**spec, "id": "NoSuchRobot-v3"})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"recorded in 'NoSuchRobot-v3'.*dataset.env.id"):
        run_for([*base, "dataset.id=rlregtest/pendulum/alien-v0"], tmp_path)

    with pytest.raises(ConfigError, match=r"'rlregtest/absent-v0' not found locally.*metadata.json"):
        run_for([*base, "dataset.id=rlregtest/absent-v0"], tmp_path)


def test_recorded_versions_map_to_installed_ones():
    assert installed_env_id("Pendulum-v1") == "Pendulum-v1"
    assert installed_env_id("Pendulum-v0") == "Pendulum-v1"  # not registered: the installed version
    assert installed_env_id("Hopper-v3") in ("Hopper-v3", "Hopper-v5")  # registered by gymnasium[mujoco]
    assert installed_env_id("NoSuchRobot-v3") is None and installed_env_id("not an id!") is None


def test_made_here_dataset_trains_in_its_own_env(tmp_path):
    """A D4RL-recipe dataset made by rlreg.datasets, loaded as a plain Minari id: HalfCheetah-v5 and D4RL's
    halfcheetah reference returns from its metadata, a short run evaluates there, rlreg.results lists it."""
    from rlreg.datasets import Recipe, make
    from rlreg.results import read_run
    from rlreg.trainers import train

    root = tmp_path / "minari"
    ds_id = make(Recipe("halfcheetah", "random", seed=0, num_transitions=300, num_envs=2), root=str(root),
                 progress=False)
    run = run_for(["dataset=minari", f"dataset.id={ds_id}", f"dataset.path={root}", "logging.progress_bar=false",
                   "trainer.total_steps=20", "trainer.eval_every=20", "trainer.log_every=10",
                   "trainer.checkpoint_every=20", "trainer.eval_episodes=1", "trainer.batch_size=32"], tmp_path)
    assert run.dataset is not None and run.dataset.env.id == "HalfCheetah-v5"
    assert (run.dataset.env.ref_min_score, run.dataset.env.ref_max_score) == pytest.approx((-280.178953, 12135.0))
    summary = train(run)
    ret, score = summary["last_return"], summary["last_normalized_score"]
    assert score == pytest.approx(100 * (ret + 280.178953) / (12135.0 + 280.178953))
    rec = read_run(derive_run_dir(run))
    assert rec.dataset == "rlreg/halfcheetah/random-v0" and rec.status == "finished"
    assert derive_run_dir(run).parent.name == "rlreg_halfcheetah_random-v0"
