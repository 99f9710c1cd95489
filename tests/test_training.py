"""End-to-end runs on tiny budgets: exact resume (offline and online), NaN guard, bad data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import pendulum_offline_overrides, run_config, stop_after_update

from rlreg.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rlreg.data.errors import DatasetError
from rlreg.logging import NonFiniteError, read_metrics
from rlreg.regularizers.bc import BCRegularizer
from rlreg.trainers import StopRequested, derive_run_dir, train

OFFLINE = [
    "trainer.total_steps=40",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=2",
    "trainer.checkpoint_every=20",
    "trainer.batch_size=32",
    "agent.actor_hidden=[32,32]",
    "agent.critic_hidden=[32,32]",
]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in rows]


def final_state(run_dir: Path) -> dict:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    return load_checkpoint(ckpt)


def assert_same_learner(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key, value in a["learner"]["networks"].items():
        assert torch.equal(value, b["learner"]["networks"][key]), key
    opt_a, opt_b = a["learner"]["optimizers"], b["learner"]["optimizers"]
    for name in opt_a:
        for pid, st in opt_a[name]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, opt_b[name]["state"][pid][k]), (name, pid, k)


def test_offline_resume_is_exact(tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = pendulum_offline_overrides(pendulum_dataset) + OFFLINE
    full = run_config(base + ["run_dir=" + str(tmp_path / "full")], tmp_path)
    train(full, announce=False)

    # interrupted twice: by a budget (step 20, at a checkpoint) and by a signal mid-window (step 33)
    part = run_config(base + ["run_dir=" + str(tmp_path / "part"), "trainer.total_steps=20"], tmp_path)
    train(part, announce=False)
    rest = run_config(base + ["run_dir=" + str(tmp_path / "part")], tmp_path)
    stop_after_update(monkeypatch, BCRegularizer, 33)
    with pytest.raises(StopRequested):
        train(rest, announce=False)
    assert final_state(tmp_path / "part")["step"] == 33
    monkeypatch.undo()
    train(rest, announce=False)

    assert_same_learner(final_state(tmp_path / "full"), final_state(tmp_path / "part"))
    rows_full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    rows_part = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert comparable(rows_full) == comparable(rows_part)
    assert [r["step"] for r in rows_full if r["kind"] == "eval"] == [20, 40]
    assert len(list_checkpoints(tmp_path / "part")) <= 3


def test_online_resume_is_exact_mid_episode(tmp_path: Path) -> None:
    base = [
        "agent=sac",
        "env=pendulum",
        "trainer.warmup_steps=50",
        "trainer.log_every=10",
        "trainer.eval_every=150",
        "trainer.eval_episodes=1",
        "trainer.checkpoint_every=70",
        "trainer.batch_size=32",
        "trainer.utd_ratio=2",
        "agent.actor_hidden=[32,32]",
        "agent.critic_hidden=[32,32]",
    ]
    train(run_config(base + ["trainer.total_steps=150", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    # stop at env step 70: in the middle of a 200-step Pendulum episode
    train(run_config(base + ["trainer.total_steps=70", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    mid = final_state(tmp_path / "part")
    assert mid["extra"]["episode_actions"].shape[0] == 70 and mid["extra"]["updates"] == 40
    train(run_config(base + ["trainer.total_steps=150", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(a, b)
    for key in ("observations", "actions", "rewards", "not_done"):
        if key in a["extra"]["buffer"]:
            assert torch.equal(a["extra"]["buffer"][key], b["extra"]["buffer"][key])
    assert comparable(read_metrics(tmp_path / "full" / "metrics.jsonl")) == comparable(
        read_metrics(tmp_path / "part" / "metrics.jsonl")
    )


def test_nan_stops_training_and_keeps_last_good_checkpoint(
    tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = pendulum_offline_overrides(pendulum_dataset) + OFFLINE
    run = run_config(base + ["trainer.total_steps=20"], tmp_path)
    train(run, announce=False)
    run_dir = derive_run_dir(run)
    good = latest_checkpoint(run_dir)
    assert good is not None
    digest = hashlib.sha256(good.read_bytes()).hexdigest()

    original = BCRegularizer.actor_terms

    def poisoned(self, batch, ctx):  # type: ignore[no-untyped-def]
        terms = original(self, batch, ctx)
        if ctx.step >= 26:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(BCRegularizer, "actor_terms", poisoned)
    with pytest.raises(NonFiniteError, match=r"'bc/loss' became NaN/inf at step 26.*intact"):
        train(run_config(base, tmp_path), announce=False)
    assert latest_checkpoint(run_dir) == good
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest


def _corrupt(path: Path, key: str, value: float) -> None:
    with h5py.File(path, "r+") as f:
        data = f[key][:]
        data[5] = value
        f[key][...] = data


def test_nan_in_data_is_refused_before_training(tmp_path: Path, pendulum_dataset: Path) -> None:
    _corrupt(pendulum_dataset, "rewards", np.nan)
    run = run_config(pendulum_offline_overrides(pendulum_dataset) + OFFLINE, tmp_path)
    with pytest.raises(DatasetError, match=r"pendulum_random\.hdf5.*rewards"):
        train(run, announce=False)
    assert latest_checkpoint(derive_run_dir(run)) is None


def test_dataset_dims_must_match_the_env(tmp_path: Path, pendulum_dataset: Path) -> None:
    overrides = pendulum_offline_overrides(pendulum_dataset) + OFFLINE + ["dataset.env.id=Hopper-v5"]
    with pytest.raises(DatasetError, match="observations"):
        train(run_config(overrides, tmp_path), announce=False)


def test_actions_outside_bounds_are_refused(tmp_path: Path, pendulum_dataset: Path) -> None:
    _corrupt(pendulum_dataset, "actions", 7.5)
    with pytest.raises(DatasetError, match="actions"):
        train(run_config(pendulum_offline_overrides(pendulum_dataset) + OFFLINE, tmp_path), announce=False)


def test_missing_file_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    run = run_config(["dataset=hopper-medium-v2"] + OFFLINE, tmp_path)
    with pytest.raises(DatasetError, match=r"hopper_medium-v2\.hdf5"):
        train(run, announce=False)


def test_a_run_dir_is_trained_by_one_process_at_a_time(tmp_path: Path, pendulum_dataset: Path) -> None:
    import fcntl

    run = run_config(pendulum_offline_overrides(pendulum_dataset) + OFFLINE, tmp_path)
    run_dir = derive_run_dir(run)
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another process"):
            train(run, announce=False)
    assert latest_checkpoint(run_dir) is None
    train(run, announce=False)  # the lock is free again
    assert final_state(run_dir)["step"] == 40
