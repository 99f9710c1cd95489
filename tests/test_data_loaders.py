"""Tests for rlreg.data loaders: D4RL hdf5 files, checksums, Minari datasets, validation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rlreg.data import d4rl as d4rl_mod
from rlreg.data import (
    DatasetError,
    TransitionDataset,
    create_minari_dataset,
    find_d4rl_file,
    load_d4rl,
    load_d4rl_package,
    load_minari,
    official_file_info,
    read_d4rl_hdf5,
    reference_scores,
    verify_d4rl_file,
    write_d4rl_hdf5,
)

# Layout used throughout: 10 rows, 3 episodes.
#   episode A: rows 0-3, time-out at row 3
#   episode B: rows 4-6, terminal at row 6
#   episode C: rows 7-9, unfinished (file ends)
N = 10
TIMEOUT_ROWS = [3]
TERMINAL_ROWS = [6]


def make_raw(dtype=np.float32, column_flags: bool = False) -> dict[str, np.ndarray]:
    obs = np.stack([np.arange(N), 10 + np.arange(N)], axis=1).astype(dtype)
    actions = (np.linspace(-0.9, 0.9, N)[:, None]).astype(dtype)
    rewards = (np.arange(N) * 0.5).astype(dtype)
    terminals = np.zeros(N, dtype=bool)
    terminals[TERMINAL_ROWS] = True
    timeouts = np.zeros(N, dtype=bool)
    timeouts[TIMEOUT_ROWS] = True
    if column_flags:
        rewards, terminals = rewards[:, None], terminals[:, None]
    return dict(observations=obs, actions=actions, rewards=rewards, terminals=terminals, timeouts=timeouts)


def write_raw(path: Path, raw: dict, **extra) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in {**raw, **extra}.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("dtype,column_flags", [(np.float32, False), (np.float64, True)])
def test_load_d4rl_matches_qlearning_dataset(tmp_path, dtype, column_flags):
    raw = make_raw(dtype, column_flags)
    path = write_raw(tmp_path / "toy.hdf5", raw, **{
        "metadata/algorithm": "SAC", "metadata/iteration": 7, "infos/qpos": np.zeros((N, 3), dtype),
        "next_observations": raw["observations"] + 100,
    })
    ds = load_d4rl("toy", path=path)
    kept = np.array([0, 1, 2, 4, 5, 6, 7, 8])  # rows 0..N-2 minus the time-out row 3
    assert len(ds) == N - 1 - 1
    obs = make_raw(np.float32)["observations"]
    np.testing.assert_array_equal(ds.observations, obs[kept])
    np.testing.assert_array_equal(ds.next_observations, obs[kept + 1])  # next_observations key ignored
    np.testing.assert_allclose(ds.rewards, kept * 0.5)
    np.testing.assert_array_equal(ds.terminals, kept == 6)
    assert not ds.timeouts.any()
    # ends: row 2 (before dropped time-out row 3), row 6 (terminal), row 8 (final kept row)
    np.testing.assert_array_equal(np.flatnonzero(ds.episode_ends), [2, 5, 7])
    assert ds.observations.dtype == np.float32 and ds.rewards.dtype == np.float32
    assert ds.rewards.shape == (8,) and ds.terminals.dtype == bool
    assert ds.source == str(path)
    np.testing.assert_allclose(ds.episode_returns(), [0 + 0.5 + 1.0, 2 + 2.5 + 3.0, 3.5 + 4.0])


def test_read_d4rl_hdf5_reads_scalars_and_groups(tmp_path):
    raw = make_raw(np.float64, column_flags=True)
    path = write_raw(tmp_path / "toy.hdf5", raw, **{"metadata/algorithm": "SAC", "metadata/iteration": 7,
                                                    "infos/qpos": np.ones((N, 3))})
    data = read_d4rl_hdf5(path)
    assert data["metadata/algorithm"] == b"SAC" and data["metadata/iteration"] == 7
    assert data["infos/qpos"].dtype == np.float32 and data["infos/qpos"].shape == (N, 3)
    assert data["rewards"].shape == (N,) and data["terminals"].shape == (N,) and data["terminals"].dtype == bool


def test_use_next_observations_keeps_timeout_rows(tmp_path):
    raw = make_raw()
    nxt = raw["observations"] + 100
    path = write_raw(tmp_path / "toy.hdf5", raw, next_observations=nxt)
    ds = load_d4rl("toy", path=path, use_next_observations=True)
    assert len(ds) == N
    np.testing.assert_array_equal(ds.observations, raw["observations"])
    np.testing.assert_array_equal(ds.next_observations, nxt)
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), TIMEOUT_ROWS)
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), TERMINAL_ROWS)
    np.testing.assert_array_equal(np.flatnonzero(ds.episode_ends), [3, 6, 9])


def test_use_next_observations_without_key_falls_back(tmp_path):
    path = write_raw(tmp_path / "toy.hdf5", make_raw())
    with pytest.warns(UserWarning, match="next_observations"):
        ds = load_d4rl("toy", path=path, use_next_observations=True)
    assert len(ds) == 8


def test_missing_timeouts_end_episodes_every_1000_steps(tmp_path):
    n = 2500
    terminals = np.zeros(n, dtype=bool)
    terminals[499] = True  # the step counter restarts after a terminal, as in D4RL
    raw = dict(observations=np.zeros((n, 2), np.float32), actions=np.zeros((n, 1), np.float32),
               rewards=np.zeros(n, np.float32), terminals=terminals)
    path = write_raw(tmp_path / "old.hdf5", raw)
    with pytest.warns(UserWarning, match="no 'timeouts' key"):
        data = read_d4rl_hdf5(path)
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [1499, 2499])


def test_write_d4rl_hdf5_round_trip(tmp_path):
    raw = make_raw(np.float64)
    path = write_d4rl_hdf5(tmp_path / "sub" / "out.hdf5", **raw, next_observations=raw["observations"] + 1,
                           **{"infos/qpos": np.ones((N, 2))}, metadata={"algorithm": "BC", "iteration": 3})
    assert [p.name for p in path.parent.iterdir()] == ["out.hdf5"]  # temp file renamed away
    with h5py.File(path) as f:
        assert f["observations"].dtype == np.float64
        assert f["metadata/iteration"][()] == 3
    data = read_d4rl_hdf5(path)
    for key in ("observations", "actions", "rewards"):
        np.testing.assert_allclose(data[key], raw[key])
    np.testing.assert_array_equal(data["terminals"], raw["terminals"])
    np.testing.assert_array_equal(data["timeouts"], raw["timeouts"])
    np.testing.assert_allclose(data["next_observations"], raw["observations"] + 1)
    np.testing.assert_allclose(data["infos/qpos"], 1.0)
    assert data["metadata/algorithm"] == b"BC"


# ------------------------------------------------------------- official table
def test_official_table_and_reference_scores():
    assert official_file_info("hopper-medium-v2")["filename"] == "hopper_medium-v2.hdf5"
    assert official_file_info("/x/hopper_medium-v2.hdf5")["bytes"] == 152756557
    assert official_file_info("walker2d-medium-replay-v0")["filename"] == "walker_mixed.hdf5"
    assert official_file_info("halfcheetah-medium-v0")["filename"] == "halfcheetah_medium.hdf5"
    assert official_file_info("my-own-v2") is None
    assert len(d4rl_mod.OFFICIAL_FILES) == 51
    assert {r["version"] for r in d4rl_mod.OFFICIAL_FILES.values()} == {"v0", "v1", "v2"}
    assert reference_scores("hopper") == (-20.272305, 3234.3)
    assert reference_scores("halfcheetah-medium-expert-v2") == (-280.178953, 12135.0)
    assert reference_scores("antmaze-umaze-v2") == (0.0, 1.0)
    with pytest.raises(DatasetError, match="pong"):
        reference_scores("pong")


def test_verify_size_mismatch_error_and_warn(tmp_path):
    path = write_raw(tmp_path / "hopper_medium-v2.hdf5", make_raw())
    size = path.stat().st_size
    with pytest.raises(DatasetError) as exc:
        verify_d4rl_file(path)
    msg = str(exc.value)
    assert "152756557" in msg and str(size) in msg and "hopper_medium-v2.hdf5" in msg
    assert "dataset.verify" in msg and "not the official file" in msg
    with pytest.warns(UserWarning, match="152756557"):
        assert verify_d4rl_file(path, mode="warn") is False
    assert verify_d4rl_file(path, mode="off") is True
    # load_d4rl verifies by default, and the id alone identifies an official file too
    other = write_raw(tmp_path / "copy.hdf5", make_raw())
    with pytest.raises(DatasetError, match="152756557"):
        load_d4rl("hopper-medium-v2", path=other)
    with pytest.warns(UserWarning, match="checksum"):
        assert len(load_d4rl("hopper-medium-v2", path=other, verify="warn")) == 8
    with pytest.raises(DatasetError, match="dataset.verify"):
        verify_d4rl_file(path, mode="maybe")


def test_verify_sha_mismatch_and_sidecar_cache(tmp_path, monkeypatch):
    path = write_raw(tmp_path / "tiny_test-v2.hdf5", make_raw())
    real_sha = d4rl_mod._sha256_file(path)
    row = dict(id="tiny-test-v2", filename="tiny_test-v2.hdf5", bytes=path.stat().st_size, sha256="0" * 64,
               version="v2")
    monkeypatch.setitem(d4rl_mod.OFFICIAL_FILES, "tiny-test-v2", row)
    with pytest.raises(DatasetError) as exc:
        verify_d4rl_file(path)
    assert real_sha in str(exc.value) and "0" * 64 in str(exc.value)
    assert not (tmp_path / "tiny_test-v2.hdf5.sha256ok").exists()

    monkeypatch.setitem(d4rl_mod.OFFICIAL_FILES, "tiny-test-v2", {**row, "sha256": real_sha})
    assert verify_d4rl_file(path) is True
    assert (tmp_path / "tiny_test-v2.hdf5.sha256ok").exists()

    def no_hash(p):
        raise AssertionError("re-hashed although the sidecar is valid")

    monkeypatch.setattr(d4rl_mod, "_sha256_file", no_hash)
    assert verify_d4rl_file(path) is True  # served from the sidecar
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # file changed -> cache invalid
    with pytest.raises(AssertionError, match="re-hashed"):
        verify_d4rl_file(path)


def test_verify_unknown_names_pass(tmp_path):
    path = write_raw(tmp_path / "custom.hdf5", make_raw())
    assert verify_d4rl_file(path, name="custom") is True


def test_find_d4rl_file(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    write_raw(tmp_path / "hopper_medium-v2.hdf5", make_raw())
    write_raw(tmp_path / "walker_mixed.hdf5", make_raw())
    assert find_d4rl_file("hopper-medium-v2") == tmp_path / "hopper_medium-v2.hdf5"
    assert find_d4rl_file("walker2d-medium-replay-v0") == tmp_path / "walker_mixed.hdf5"
    explicit = write_raw(tmp_path / "elsewhere.hdf5", make_raw())
    assert find_d4rl_file("hopper-medium-v2", path=explicit) == explicit

    with pytest.raises(DatasetError) as exc:
        find_d4rl_file("hopper-random-v2")
    msg = str(exc.value)
    assert str(tmp_path / "hopper_random-v2.hdf5") in msg and str(tmp_path / "hopper-random-v2.hdf5") in msg
    assert "pip install 'rlreg[d4rl]'" in msg and "qlearning_dataset" in msg and "dataset.path" in msg
    assert "gym_mujoco_v2/hopper_random-v2.hdf5" in msg

    with pytest.raises(DatasetError, match="dataset.path.*nope.hdf5"):
        find_d4rl_file("hopper-medium-v2", path=tmp_path / "nope.hdf5")


# ------------------------------------------------------------ bad input errors
def test_missing_key_names_key_and_file(tmp_path):
    raw = make_raw()
    del raw["actions"]
    path = write_raw(tmp_path / "noact.hdf5", raw)
    with pytest.raises(DatasetError, match=r"noact\.hdf5.*'actions'"):
        load_d4rl("x", path=path)


def test_length_mismatch(tmp_path):
    raw = make_raw()
    raw["actions"] = raw["actions"][:-2]
    path = write_raw(tmp_path / "short.hdf5", raw)
    with pytest.raises(DatasetError) as exc:
        load_d4rl("x", path=path)
    msg = str(exc.value)
    assert "short.hdf5" in msg and "'actions' has 8 rows" in msg and "'observations' has 10" in msg


def test_nan_and_inf_are_rejected(tmp_path):
    raw = make_raw()
    raw["observations"][5, 1] = np.nan
    path = write_raw(tmp_path / "nan.hdf5", raw)
    with pytest.raises(DatasetError, match=r"nan\.hdf5: key 'observations' contains NaN .*first bad row index 4"):
        load_d4rl("x", path=path)  # obs row 5 is output row 4 (time-out row 3 was dropped)
    raw = make_raw()
    raw["rewards"][[1, 7]] = np.inf
    path = write_raw(tmp_path / "inf.hdf5", raw)
    with pytest.raises(DatasetError, match=r"key 'rewards' contains inf values in 2 row\(s\); first bad row index 1"):
        load_d4rl("x", path=path)


def test_wrong_rewards_shape(tmp_path):
    raw = make_raw()
    raw["rewards"] = np.zeros((N, 2), np.float32)
    path = write_raw(tmp_path / "wide.hdf5", raw)
    with pytest.raises(DatasetError, match=r"wide\.hdf5: key 'rewards' has shape \(10, 2\)"):
        load_d4rl("x", path=path)


def test_empty_dataset(tmp_path):
    raw = {k: v[:1] for k, v in make_raw().items()}  # one row -> no transition
    path = write_raw(tmp_path / "one.hdf5", raw)
    with pytest.raises(DatasetError, match=r"one\.hdf5: dataset is empty"):
        load_d4rl("x", path=path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "fake.hdf5"
    path.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(DatasetError, match=r"fake\.hdf5: not a readable HDF5 file"):
        load_d4rl("x", path=path)


def _toy_dataset() -> TransitionDataset:
    raw = make_raw()
    return d4rl_mod.qlearning_transitions(raw, "toy-source")


def test_validate_shapes_and_action_bounds():
    ds = _toy_dataset()
    ds.validate(observation_shape=(2,), action_shape=(1,), action_low=-np.ones(1), action_high=np.ones(1))
    with pytest.raises(DatasetError, match=r"toy-source: key 'observations' has per-row shape \(2,\); expected .*\(3,\)"):
        ds.validate(observation_shape=(3,))
    with pytest.raises(DatasetError, match=r"key 'actions' has per-row shape \(1,\); expected .*\(2,\)"):
        ds.validate(action_shape=(2,))
    ds.actions[5, 0] = 1.5
    ds.actions[6, 0] = 1.25
    with pytest.raises(DatasetError) as exc:
        ds.validate(action_low=-np.ones(1), action_high=np.ones(1))
    msg = str(exc.value)
    assert "toy-source" in msg and "'actions'" in msg and "2 row(s)" in msg
    assert "max violation 0.5" in msg and "first bad row index 5" in msg
    ds.actions[5, 0] = 1.0 + 1e-7  # within tolerance
    ds.actions[6, 0] = -1.0
    ds.validate(action_low=-np.ones(1), action_high=np.ones(1))


def test_validate_generic_errors():
    ds = _toy_dataset()
    ds.next_observations = ds.next_observations[:-1]
    with pytest.raises(DatasetError, match="'next_observations' has 7 rows but key 'observations' has 8"):
        ds.validate()
    ds = _toy_dataset()
    ds.observations = ds.observations[:, 0]
    ds.next_observations = ds.next_observations[:, 0]
    with pytest.raises(DatasetError, match=r"key 'observations' has shape \(8,\)"):
        ds.validate()
    empty = TransitionDataset(np.zeros((0, 2)), np.zeros((0, 1)), np.zeros(0), np.zeros((0, 2)),
                              np.zeros(0), np.zeros(0), np.zeros(0), source="nothing")
    with pytest.raises(DatasetError, match="nothing: dataset is empty"):
        empty.validate()


def test_from_episodes_concat_and_stats():
    eps = [
        dict(observations=np.arange(4, dtype=float)[:, None], actions=np.zeros((3, 1)), rewards=[1.0, 2.0, 3.0],
             terminations=[0, 0, 1], truncations=[0, 0, 0]),
        dict(observations=10 + np.arange(3, dtype=float)[:, None], actions=np.ones((2, 1)), rewards=[5.0, 5.0],
             terminations=[0, 0], truncations=[0, 1]),
    ]
    ds = TransitionDataset.from_episodes(eps, source="eps")
    np.testing.assert_array_equal(ds.observations[:, 0], [0, 1, 2, 10, 11])
    np.testing.assert_array_equal(ds.next_observations[:, 0], [1, 2, 3, 11, 12])
    np.testing.assert_array_equal(ds.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.episode_ends, [0, 0, 1, 0, 1])
    np.testing.assert_allclose(ds.episode_returns(), [6.0, 10.0])
    mean, std = ds.state_stats()
    obs = np.array([0, 1, 2, 10, 11.0])
    np.testing.assert_allclose(mean, [obs.mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [obs.std() + 1e-3], rtol=1e-6)
    assert mean.dtype == np.float32 and std.shape == (1,)

    part = TransitionDataset.from_episodes(eps[:1], source="a")
    part.episode_ends[:] = False  # unfinished: concat must still split episodes at the seam
    both = TransitionDataset.concat([part, ds], source="a+b")
    assert len(both) == 8 and both.episode_ends[2] and both.source == "a+b"
    np.testing.assert_allclose(both.episode_returns(), [6.0, 6.0, 10.0])

    bad = [dict(eps[0], observations=np.zeros((3, 1)))]
    with pytest.raises(DatasetError, match=r"eps: episode 0 key 'observations' has 3 rows; expected T\+1 = 4"):
        TransitionDataset.from_episodes(bad, source="eps")


# ---------------------------------------------------------------------- minari
def _minari_episodes(rng: np.random.Generator) -> list[dict]:
    eps = []
    for t, term, trunc in [(4, True, False), (3, False, True), (2, False, False)]:
        eps.append(dict(
            observations=rng.uniform(-1, 1, (t + 1, 3)).astype(np.float32),
            actions=rng.uniform(-2, 2, (t, 1)).astype(np.float32),
            rewards=rng.normal(size=t),
            terminations=np.r_[np.zeros(t - 1, bool), term],
            truncations=np.r_[np.zeros(t - 1, bool), trunc],
        ))
    return eps


def test_minari_round_trip(tmp_path, monkeypatch):
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    eps = _minari_episodes(np.random.default_rng(0))
    created = create_minari_dataset("rlregtest/pendulum-random-v0", eps, "Pendulum-v1",
                                    metadata={"ref_min_score": -1.5, "ref_max_score": 2.5}, data_path=tmp_path)
    assert "MINARI_DATASETS_PATH" not in os.environ  # restored
    meta = created.storage.metadata
    assert meta["ref_min_score"] == -1.5 and meta["ref_max_score"] == 2.5

    ds = load_minari("rlregtest/pendulum-random-v0", data_path=tmp_path)
    np.testing.assert_array_equal(ds.observations, np.concatenate([e["observations"][:-1] for e in eps]))
    np.testing.assert_array_equal(ds.next_observations, np.concatenate([e["observations"][1:] for e in eps]))
    np.testing.assert_array_equal(ds.actions, np.concatenate([e["actions"] for e in eps]))
    np.testing.assert_allclose(ds.rewards, np.concatenate([e["rewards"] for e in eps]).astype(np.float32))
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [3])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [6])
    np.testing.assert_array_equal(np.flatnonzero(ds.episode_ends), [3, 6, 8])
    assert "rlregtest/pendulum-random-v0" in ds.source

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # env var route
    assert len(load_minari("rlregtest/pendulum-random-v0")) == 9


def test_minari_unknown_id(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_minari("rlregtest/missing-v0", data_path=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "rlregtest" / "missing-v0") in msg and "download is disabled" in msg


def test_load_d4rl_package_without_d4rl(monkeypatch):
    monkeypatch.setitem(sys.modules, "d4rl", None)  # makes `import d4rl` raise ImportError
    with pytest.raises(DatasetError) as exc:
        load_d4rl_package("hopper-medium-v2")
    msg = str(exc.value)
    assert "pip install 'rlreg[d4rl]'" in msg and "d4rl_hdf5" in msg and "hopper-medium-v2" in msg
