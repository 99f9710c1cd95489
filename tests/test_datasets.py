"""D4RL-recipe datasets made here (rlreg.datasets): tiny generations written as Minari datasets, read back
through rlreg's loader, minari.load_dataset and the D4RL hdf5 export; determinism; medium-replay episodes
rebuilt from a replay buffer; the recipe's bookkeeping."""

from __future__ import annotations

import hashlib

import minari
import numpy as np
import pytest
import torch

from rlreg.config import DatasetConfig, load_env_config
from rlreg.data.buffers import ReplayBuffer
from rlreg.data.d4rl import load_d4rl
from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError
from rlreg.data.minari_io import _datasets_path
from rlreg.data.sources import load_dataset
from rlreg.datasets import (
    Recipe,
    buffer_prefix,
    collect,
    dataset_id,
    export_hdf5,
    load_replay,
    main,
    make,
    parse_id,
    random_actor,
    replay_episodes,
    save_replay,
    state_sha256,
    summarize,
)
from rlreg.envs import make_env
from rlreg.policies import save_policy

KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def arrays_hash(data: TransitionDataset) -> str:
    h = hashlib.sha256()
    for key in KEYS:
        h.update(np.ascontiguousarray(getattr(data, key)).tobytes())
    return h.hexdigest()


def rlreg_config(ds_id: str, root) -> DatasetConfig:  # type: ignore[no-untyped-def]
    return DatasetConfig(name=ds_id, source="rlreg", id=ds_id, path=str(root), env=load_env_config("hopper"))


def test_tiny_generation_loads_back_identically(tmp_path):
    recipe = Recipe("hopper", "random", seed=3, num_transitions=300, num_envs=4)
    expected = TransitionDataset.from_episodes(collect(recipe)[0], source="direct")
    assert len(expected) == 300 and expected.terminals.any(), "random Hopper episodes terminate"
    ds_id = make(recipe, root=str(tmp_path), progress=False)
    assert ds_id == "rlreg/hopper/random-v0" and (tmp_path / "rlreg" / "hopper" / "random-v0" / "data").exists()

    ours = load_dataset(rlreg_config(ds_id, tmp_path))  # rlreg's loader (source: rlreg)
    with _datasets_path(tmp_path):
        ds = minari.load_dataset(ds_id, download=False)  # Minari's own
        theirs = TransitionDataset.from_episodes(
            [{"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
              "terminations": ep.terminations, "truncations": ep.truncations} for ep in ds.iterate_episodes()],
            source="minari",
        )
        meta = ds.storage.metadata
    for key in KEYS:
        np.testing.assert_array_equal(getattr(ours, key), getattr(expected, key), err_msg=key)
        np.testing.assert_array_equal(getattr(theirs, key), getattr(expected, key), err_msg=key)
    assert ds.total_steps == 300 and ds.total_episodes == int(expected.episode_ends.sum())
    # the record of how it was made
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    assert meta["env_id"] == "Hopper-v5" and meta["recipe_seed"] == 3 and meta["recipe_level"] == "random"
    env = make_env(load_env_config("hopper"))
    assert meta["policy_sha256"] == state_sha256(random_actor(env.observation_space.shape[0], env.action_space.shape[0], 3))
    for key in ("mujoco_version", "rlreg_version", "gymnasium_version"):
        assert meta[key]


def test_same_seed_same_arrays_other_seed_differs(tmp_path):
    hashes = []
    for root, seed in (("a", 0), ("b", 0), ("c", 1)):
        ds_id = make(Recipe("hopper", "random", seed=seed, num_transitions=200, num_envs=4), root=str(tmp_path / root),
                     progress=False)
        hashes.append(arrays_hash(load_dataset(rlreg_config(ds_id, tmp_path / root))))
    assert hashes[0] == hashes[1] != hashes[2]


def test_hdf5_export_reads_back_through_the_d4rl_loader(tmp_path):
    ds_id = make(Recipe("hopper", "random", num_transitions=250, num_envs=4), root=str(tmp_path), progress=False)
    ours = load_dataset(rlreg_config(ds_id, tmp_path))
    path = export_hdf5(ds_id, tmp_path / "hopper-random.hdf5", root=str(tmp_path))
    back = load_d4rl("hopper-random", path=str(path), verify="off", use_next_observations=True)
    for key in KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(ours, key), err_msg=key)
    import h5py

    with h5py.File(path) as f:
        assert f["metadata/ref_max_score"][()] == pytest.approx(3234.3)
        assert f["metadata/policy_sha256"][()].decode() == summarize(ds_id, str(tmp_path))["policy_sha256"]


def test_policy_levels_and_medium_expert_concatenation(tmp_path):
    env = make_env(load_env_config("hopper"))
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    policies = {}
    for level, seed in (("medium", 11), ("expert", 12)):
        policies[level] = tmp_path / f"{level}.pt"
        save_policy(random_actor(obs_dim, act_dim, seed), policies[level], {
            "architecture": {"kind": "tanh_gaussian", "obs_dim": obs_dim, "act_dim": act_dim, "hidden": [256, 256]},
            "env": "Hopper-v5"})
        make(Recipe("hopper", level, num_transitions=150, policy=str(policies[level]), num_envs=2),
             root=str(tmp_path), progress=False)
    make(Recipe("hopper", "medium-expert", num_transitions=150), root=str(tmp_path), progress=False)
    parts = [load_dataset(rlreg_config(dataset_id("hopper", lv), tmp_path)) for lv in ("medium", "expert")]
    both = load_dataset(rlreg_config(dataset_id("hopper", "medium-expert"), tmp_path))
    assert len(both) == 300
    for key in KEYS:
        np.testing.assert_array_equal(getattr(both, key), np.concatenate([getattr(p, key) for p in parts]), err_msg=key)
    meta = summarize(dataset_id("hopper", "medium"), str(tmp_path))
    assert meta["policy_sha256"] == hashlib.sha256(policies["medium"].read_bytes()).hexdigest()
    # a policy trained in another env is refused, naming the policy
    save_policy(random_actor(obs_dim, act_dim, 0), tmp_path / "w.pt", {
        "architecture": {"kind": "tanh_gaussian", "obs_dim": obs_dim, "act_dim": act_dim, "hidden": [256, 256]},
        "env": "Walker2d-v5"})
    with pytest.raises(DatasetError, match="w.pt.*Walker2d-v5"):
        collect(Recipe("hopper", "medium", num_transitions=10, policy=str(tmp_path / "w.pt")))


def test_existing_dataset_is_kept_unless_forced(tmp_path):
    make(Recipe("hopper", "random", seed=0, num_transitions=100, num_envs=2), root=str(tmp_path), progress=False)
    first = arrays_hash(load_dataset(rlreg_config("rlreg/hopper/random-v0", tmp_path)))
    make(Recipe("hopper", "random", seed=5, num_transitions=100, num_envs=2), root=str(tmp_path), progress=False)
    assert arrays_hash(load_dataset(rlreg_config("rlreg/hopper/random-v0", tmp_path))) == first
    make(Recipe("hopper", "random", seed=5, num_transitions=100, num_envs=2), root=str(tmp_path), force=True,
         progress=False)
    assert arrays_hash(load_dataset(rlreg_config("rlreg/hopper/random-v0", tmp_path))) != first


def rollout_into_buffer(steps: int, max_len: int) -> tuple[ReplayBuffer, list[dict]]:
    """A single-env rollout stored as an online run does (s, a, r, s', terminated), and its true episodes."""
    cfg = load_env_config("hopper")
    cfg.max_episode_steps = max_len
    env = make_env(cfg)
    buf = ReplayBuffer(10_000, env.observation_space.shape[0], env.action_space.shape[0])
    rng = np.random.default_rng(0)
    episodes, obs = [], env.reset(seed=0)[0]
    ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    for t in range(steps):
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        nxt, reward, terminated, truncated, _ = env.step(action)
        buf.add(obs, action, reward, nxt, terminated)
        for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                        (nxt, action, reward, terminated, truncated)):
            ep[k].append(v)
        obs = nxt
        if terminated or truncated or t == steps - 1:
            ep["truncations"][-1] = ep["truncations"][-1] or not terminated  # the unfinished last one: truncated
            episodes.append({k: np.asarray(v) for k, v in ep.items()})
            obs = env.reset(seed=t + 1)[0]
            ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    return buf, episodes


def test_medium_replay_episodes_rebuilt_from_the_replay_buffer(tmp_path):
    buf, truth = rollout_into_buffer(400, max_len=15)  # short time limit: truncations as well as terminations
    got = replay_episodes(buf.state_dict())
    assert len(got) == len(truth) > 10
    assert any(ep["terminations"][-1] for ep in truth) and any(ep["truncations"][-1] for ep in truth)
    for g, t in zip(got, truth):
        np.testing.assert_array_equal(g["observations"], t["observations"].astype(np.float32))
        np.testing.assert_array_equal(g["actions"], t["actions"])
        np.testing.assert_array_equal(g["rewards"], t["rewards"].astype(np.float32))
        np.testing.assert_array_equal(g["terminations"], t["terminations"])
        np.testing.assert_array_equal(g["truncations"], t["truncations"])
    path = tmp_path / "replay.npz"
    save_replay(got, path, {"env": "Hopper-v5"})
    back, record = load_replay(path)
    assert record["policy_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for g, b in zip(got, back, strict=True):
        for k in g:
            np.testing.assert_array_equal(g[k], b[k])
    make(Recipe("hopper", "medium-replay", policy=str(path)), root=str(tmp_path), progress=False)
    data = load_dataset(rlreg_config("rlreg/hopper/medium-replay-v0", tmp_path))
    assert len(data) == 400 and data.terminals.sum() == sum(int(ep["terminations"].sum()) for ep in truth)


def refill(state: dict, capacity: int, rows: int) -> ReplayBuffer:
    """A ReplayBuffer of ``capacity`` with the first ``rows`` transitions of a buffer's ``state`` added one by one."""
    buffer = ReplayBuffer(capacity, state["observations"].shape[1], state["actions"].shape[1])
    for i in range(rows):
        buffer.add(state["observations"][i], state["actions"][i], state["rewards"][i], state["next_observations"][i],
                   1.0 - state["not_done"][i])
    return buffer


def test_a_full_ring_is_read_oldest_first():
    buf, truth = rollout_into_buffer(60, max_len=1000)
    state = buf.state_dict()
    small = refill(state, 50, 60)  # the ring wraps: rows 10..59 survive, the oldest at ptr = 10
    got = replay_episodes(small.state_dict())
    flat = np.concatenate([ep["actions"] for ep in got])
    np.testing.assert_array_equal(flat, state["actions"][10:].numpy())


def test_a_buffer_prefix_is_the_buffer_an_earlier_step_had():
    buf, _ = rollout_into_buffer(300, max_len=40)
    state = buf.state_dict()
    earlier = refill(state, 10_000, 170)  # the same run stopped at step 170
    prefix = buffer_prefix(state, 170, added=300)
    got, want = replay_episodes(prefix), replay_episodes(earlier.state_dict())
    assert all(len(prefix[k]) == 170 for k in ("observations", "rewards", "discounts"))  # every row array cut
    assert len(got) == len(want) > 3 and got[-1]["truncations"][-1]  # the cut episode ends in a truncation
    for g, w in zip(got, want, strict=True):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])
    with pytest.raises(DatasetError, match=r"upto=301 must be in \[1, 300\]"):
        buffer_prefix(state, 301, added=300)
    for added in (50, 60, 100):  # exactly full (never wrapped), wrapped, wrapped twice (ptr back at 0 as at 50)
        small = refill(state, 50, added)
        if added == 50:
            np.testing.assert_array_equal(buffer_prefix(small.state_dict(), 20, added)["observations"],
                                          state["observations"][:20].numpy())
            continue
        with pytest.raises(DatasetError, match="wrapped around"):
            buffer_prefix(small.state_dict(), 20, added=added)


def test_bad_replay_arguments_name_the_argument(capsys):
    from rlreg.datasets import main

    for argv, message in [(["replay", "run=/tmp/x", "name=a"], "needs step=..."),
                          (["replay", "run=/tmp/x", "step=1k", "name=a"], "step='1k' must be an integer"),
                          (["make", "env=hopper", "level=random", "seed=x"], "seed='x' must be an integer")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_names_and_missing_sources_are_clear(tmp_path, capsys):
    with pytest.raises(DatasetError, match="env='ant'"):
        make(Recipe("ant", "medium"), root=str(tmp_path))
    with pytest.raises(DatasetError, match="level='mediocre'"):
        make(Recipe("hopper", "mediocre"), root=str(tmp_path))
    with pytest.raises(DatasetError, match="rlreg/<env>/<level>-v0"):
        parse_id("mujoco/hopper/medium-v0")
    with pytest.raises(DatasetError, match="nope.npz not found"):
        make(Recipe("hopper", "medium-replay", policy=str(tmp_path / "nope.npz")), root=str(tmp_path))
    with pytest.raises(SystemExit, match="level='mediocre'"):
        main(["make", "env=hopper", "level=mediocre", f"root={tmp_path}"])
    with pytest.raises(SystemExit, match="key=value"):
        main(["make", "hopper"])
    assert not (tmp_path / "rlreg").exists() or not any((tmp_path / "rlreg").rglob("data"))


def test_all_fifteen_dataset_configs_compose_and_point_at_their_ids():
    from conftest import compose

    from rlreg.config import to_run_config

    for env, env_id in (("hopper", "Hopper-v5"), ("halfcheetah", "HalfCheetah-v5"), ("walker2d", "Walker2d-v5")):
        for level in ("random", "medium", "expert", "medium-replay", "medium-expert"):
            run = to_run_config(compose(["agent=td3bc", f"dataset=rlreg-{env}-{level}"]))
            assert run.dataset is not None
            assert (run.dataset.source, run.dataset.id) == ("rlreg", dataset_id(env, level))
            assert run.dataset.env.id == env_id and run.dataset.env.ref_max_score is not None


def test_stochastic_policy_fn_is_seeded():
    from rlreg.policies import policy_fn

    actor = random_actor(11, 3, 0)
    obs = torch.randn(4, 11)
    a1 = policy_fn(actor, stochastic=True, seed=7)(obs)
    a2 = policy_fn(actor, stochastic=True, seed=7)(obs)
    a3 = policy_fn(actor, stochastic=True, seed=8)(obs)
    torch.testing.assert_close(a1, a2)
    assert not torch.equal(a1, a3)
    assert not torch.equal(a1, policy_fn(actor)(obs))
