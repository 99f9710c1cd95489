"""Shipped-policy format, the embedded dataset (deterministic collection), checkpoint safety."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rlreg.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from rlreg.config import DatasetConfig, EnvConfig
from rlreg.data.sources import load_dataset
from rlreg.nets import TanhGaussianActor
from rlreg.policies import load_policy, save_policy


def make_policy(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 1, hidden=(16, 16))
    path = tmp_path / "pendulum_policy.pt"
    meta = {"architecture": {"kind": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [16, 16]}}
    save_policy(actor, path, meta)
    return path


def test_policy_round_trip(tmp_path: Path) -> None:
    path = make_policy(tmp_path)
    actor, meta = load_policy(str(path))
    assert len(meta["sha256"]) == 64
    obs = torch.randn(4, 3)
    ref = TanhGaussianActor(3, 1, hidden=(16, 16))
    ref.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(actor(obs, deterministic=True)[0], ref(obs, deterministic=True)[0])


def embedded_config(policy: Path, cache: Path, seed: int = 0) -> DatasetConfig:
    return DatasetConfig(
        name="pendulum-embedded",
        source="embedded",
        path=str(cache / f"data-{seed}.hdf5"),
        env=EnvConfig(id="Pendulum-v1"),
        policy=str(policy),
        num_transitions=450,
        action_noise=0.2,
        collect_seed=seed,
    )


def test_embedded_dataset_is_deterministic_and_cached(tmp_path: Path) -> None:
    policy = make_policy(tmp_path)
    a = load_dataset(embedded_config(policy, tmp_path / "a"))
    b = load_dataset(embedded_config(policy, tmp_path / "b"))
    c = load_dataset(embedded_config(policy, tmp_path / "c", seed=1))
    assert len(a) == 450
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert not np.array_equal(a.observations, c.observations)
    # 8 envs stepped together, 450 < 8 x 200 (Pendulum's episode length): 8 episodes cut by truncation
    assert a.timeouts.sum() == 8 and a.episode_ends.sum() == 8 and not a.terminals.any()
    assert sorted(np.diff(np.flatnonzero(np.r_[True, a.episode_ends]))) == [56] * 6 + [57] * 2
    assert np.abs(a.actions).max() <= 2.0
    # consecutive rows inside an episode chain: next_obs[t] == obs[t+1]
    end = int(np.flatnonzero(a.episode_ends)[0])
    assert np.array_equal(a.next_observations[:end], a.observations[1 : end + 1])
    mtime = (tmp_path / "a" / "data-0.hdf5").stat().st_mtime_ns
    load_dataset(embedded_config(policy, tmp_path / "a"))  # cached: not collected again
    assert (tmp_path / "a" / "data-0.hdf5").stat().st_mtime_ns == mtime


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_checkpoints_do_not_unpickle_code(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2), "n": 3, "s": "x"})
    assert load_checkpoint(path)["n"] == 3
    evil = tmp_path / "checkpoints" / "ckpt_0000000002.pt"
    torch.save({"payload": Evil()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(evil)


def test_only_the_last_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000000004.pt", "ckpt_0000000005.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))
