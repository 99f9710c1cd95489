"""SPOT (docs/agents/spot.md): density term, frozen VAE, VAE density ranking, divergence guard, fine-tuning schedule,
exact resume (pre-training and RL), online fine-tuning from an offline checkpoint, learning on a toy task.

The toy task used here and in test_a2pr.py: ``PointGoal-v0``, a 2-D point moved by ``0.1 * a`` (``a`` in
``[-1, 1]^2``) from a uniform start in ``[-1, 1]^2``, reward ``-||x||`` after the move, 30-step episodes. Its
dataset is 50 episodes of uniformly random actions (mean return about -25); moving straight to the origin
scores about -3. It learns in about a thousand updates with tiny networks, which Pendulum from random data
does not (a few thousand updates still leave it near the random return).
"""

from __future__ import annotations

import copy
import math
import os
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_config

from rlreg.checkpoint import latest_checkpoint, load_checkpoint
from rlreg.errors import RunDirError
from rlreg.learners.td3 import TD3Config
from rlreg.data.buffers import Batch
from rlreg.learners.td3 import TD3Learner
from rlreg.logging import read_metrics
from rlreg.nets import ConditionalVAE
from rlreg.regularizers import SetupContext
from rlreg.regularizers.base import ActorContext
from rlreg.regularizers import spot as spot_module
from rlreg.regularizers.spot import QDivergenceError, SPOTConfig, SPOTRegularizer, VAECacheError, neg_log_density
from rlreg.trainers import StopRequested, train

# ------------------------------------------------------------------------------------------------
# toy task shared with test_a2pr.py
# ------------------------------------------------------------------------------------------------
POINT_ENV = "rlreg-test/PointGoal-v0"


class PointGoal(gym.Env):
    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.x = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):  # type: ignore[override]
        self.x = (self.x + 0.1 * np.clip(np.asarray(action, np.float32), -1, 1)).astype(np.float32)
        return self.x.copy(), -float(np.linalg.norm(self.x)), False, False, {}


if POINT_ENV not in gym.registry:
    gym.register(id=POINT_ENV, entry_point=PointGoal, max_episode_steps=30)


def write_point_dataset(path: Path, episodes: int = 50) -> float:
    """Random-action PointGoal data in the D4RL layout; returns the dataset's mean episode return."""
    from rlreg.data.d4rl import write_d4rl_hdf5

    env = gym.make(POINT_ENV)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "tout")}
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        done, ret = False, 0.0
        while not done:
            act = rng.uniform(-1, 1, size=2).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(act)
            for k, v in zip(rows, (obs, act, r, nxt, term, trunc)):
                rows[k].append(v)
            obs, done, ret = nxt, term or trunc, ret + r
        returns.append(ret)
    write_d4rl_hdf5(
        path,
        observations=np.asarray(rows["obs"], np.float32),
        actions=np.asarray(rows["act"], np.float32),
        rewards=np.asarray(rows["rew"], np.float32),
        terminals=np.asarray(rows["term"]),
        timeouts=np.asarray(rows["tout"]),
        next_observations=np.asarray(rows["next"], np.float32),
    )
    return float(np.mean(returns))


def point_overrides(path: Path) -> list[str]:
    return [
        "dataset=minari",  # every field is overridden below
        "dataset.name=point-random",
        "dataset.source=d4rl_hdf5",
        f"dataset.path={path}",
        "dataset.id=point-random",
        "dataset.verify=off",
        f"dataset.env.id={POINT_ENV}",
        "dataset.env.ref_min_score=null",
        "dataset.env.ref_max_score=null",
    ]


@pytest.fixture
def point_dataset(tmp_path: Path) -> tuple[Path, float]:
    path = tmp_path / "point_random.hdf5"
    return path, write_point_dataset(path)


def assert_same_state(a: dict, b: dict) -> None:
    """Same step, networks, optimiser states and regularizer state (modules, optimisers, extra)."""
    assert a["step"] == b["step"]

    def same(x, y, where):  # type: ignore[no-untyped-def]
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), where
        else:
            assert x == y, where

    same(a["learner"], b["learner"], "learner")


def final_state(run_dir: Path) -> dict:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    return load_checkpoint(ckpt)


# ------------------------------------------------------------------------------------------------
# loss terms on tiny tensors
# ------------------------------------------------------------------------------------------------
def tiny_spot(lambd: float = 0.3, **kw) -> tuple[TD3Learner, SPOTRegularizer]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = SPOTConfig(lambd=lambd, vae_hidden=(16, 16), pretrain_steps=kw.pop("pretrain_steps", 0), **kw)
    reg = SPOTRegularizer(cfg)
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=1.0), regularizers=[reg])
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    return learner, reg


def tiny_batch(b: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.one_step(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1,
                          torch.randn(b, generator=g), torch.randn(b, 3, generator=g), torch.ones(b), gamma=0.99)


def test_density_term_is_lambda_times_the_vae_negative_elbo() -> None:
    learner, reg = tiny_spot(lambd=0.3)
    batch = tiny_batch()
    pi = torch.tensor([[0.1, -0.2], [0.5, 0.5], [-0.9, 0.0], [0.3, 0.7], [0.0, 0.0]])
    torch.manual_seed(5)
    term = reg.actor_terms(batch, ActorContext(actions=pi, q=torch.zeros(5), step=2))["density"]
    # by hand from the encoder/decoder: one latent sample z = mu + sigma * eps with the same eps
    torch.manual_seed(5)
    mu, sigma = reg.vae.encode(batch.observations, pi)
    eps = torch.randn(mu.shape)
    recon = reg.vae.decode(batch.observations, mu + sigma * eps)
    rec = ((recon - pi) ** 2).mean(-1)
    kl = (-0.5 * (1 + torch.log(sigma**2) - mu**2 - sigma**2)).mean(-1)
    assert term.item() == pytest.approx(0.3 * (rec + 0.5 * kl).mean().item(), rel=1e-5)
    torch.manual_seed(5)
    assert term.item() == pytest.approx(0.3 * reg.vae.negative_elbo(batch.observations, pi).mean().item(), rel=1e-6)


def test_multi_sample_elbo_and_iwae_estimates_match_hand_computation() -> None:
    torch.manual_seed(0)
    vae = ConditionalVAE(3, 2, hidden=(16,))
    s, a = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    for iwae in (False, True):
        torch.manual_seed(1)
        got = neg_log_density(vae, s, a, beta=0.5, num_samples=3, iwae=iwae)
        torch.manual_seed(1)
        mu, sigma = vae.encode(s, a)
        eps = torch.randn(3, *mu.shape)
        z = mu + sigma * eps
        dec = torch.stack([vae.decode(s, z[i]) for i in range(3)])
        if not iwae:
            kl = (-0.5 * (1 + torch.log(sigma**2) - mu**2 - sigma**2)).mean(-1)
            expected = ((dec - a) ** 2).mean(dim=(0, 2)) + 0.5 * kl
        else:
            normal = torch.distributions.Normal
            w = (normal(dec, math.sqrt(0.5 / 4)).log_prob(a).sum(-1) + normal(0.0, 1.0).log_prob(z).sum(-1)
                 - normal(mu, sigma).log_prob(z).sum(-1))
            expected = -(torch.logsumexp(w, 0) - math.log(3))
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), iwae


def test_q_term_is_official_minus_mean_q_over_mean_abs_q() -> None:
    # agent=spot uses the learner's q_norm_alpha = 1: -lambda * mean Q1 with lambda = 1 / mean|Q1|
    learner, _ = tiny_spot()
    learner.config.critic_lr = 0.0
    for group in learner.optimizers["critic"].param_groups:
        group["lr"] = 0.0  # the critic step leaves Q unchanged, so Q1(s, pi(s)) is computable beforehand
    batch = tiny_batch()
    before = copy.deepcopy(learner)
    metrics = learner.update(batch, step=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = before.critic(batch.observations, before.actor(batch.observations))[0]
    assert metrics["actor/q_term"].item() == pytest.approx((-q.mean() / q.abs().mean()).item(), rel=1e-6)
    assert metrics["actor/loss"].item() == pytest.approx(
        metrics["actor/q_term"].item() + metrics["spot/density"].item(), rel=1e-6)


def test_frozen_vae_gets_no_updates_but_passes_gradients_to_the_actor() -> None:
    learner, reg = tiny_spot(pretrain_steps=3)
    gen = torch.Generator().manual_seed(0)
    initial = copy.deepcopy(reg.vae.state_dict())
    for i in range(1, 4):
        reg.pretrain_step(tiny_batch(seed=i), i)
    pretrained = copy.deepcopy(reg.vae.state_dict())
    assert any(not torch.equal(initial[k], pretrained[k]) for k in initial)  # pre-training did train it
    vae_steps = reg.optimizers["vae"].state_dict()["state"][0]["step"].item()
    actor_before = copy.deepcopy(learner.actor.state_dict())
    for step in range(1, 7):
        learner.update(tiny_batch(seed=10 + step), step, gen)
    for k, v in reg.vae.state_dict().items():
        assert torch.equal(v, pretrained[k]), k
    assert all(not p.requires_grad and p.grad is None for p in reg.vae.parameters())
    assert reg.optimizers["vae"].state_dict()["state"][0]["step"].item() == vae_steps == 3
    assert any(not torch.equal(v, actor_before[k]) for k, v in learner.actor.state_dict().items())
    # the density term alone has a non-zero gradient on the actor's weights (through the frozen VAE)
    learner.actor.zero_grad()
    batch = tiny_batch(seed=99)
    pi = learner.actor(batch.observations)
    reg.actor_terms(batch, ActorContext(actions=pi, q=torch.zeros(5), step=8))["density"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.actor.parameters())
    assert all(p.grad is None for p in reg.vae.parameters())


def test_pretrained_vae_density_ranks_dataset_actions_above_far_away_ones() -> None:
    # toy behaviour policy a = 0.6 * sin(2 s_0) * (1, -1) + small noise; "far" actions are the mirror image
    torch.manual_seed(0)
    reg = SPOTRegularizer(SPOTConfig(vae_hidden=(64, 64), pretrain_steps=600, vae_lr=3e-3))
    reg.bind(None, SetupContext(3, 2, 1.0, torch.device("cpu")))
    g = torch.Generator().manual_seed(1)

    def behaviour(s: torch.Tensor) -> torch.Tensor:
        base = 0.6 * torch.sin(2 * s[:, :1])
        return torch.cat([base, -base], -1)

    for i in range(1, 601):
        s = torch.randn(256, 3, generator=g)
        a = (behaviour(s) + 0.05 * torch.randn(256, 2, generator=g)).clamp(-1, 1)
        reg.pretrain_step(Batch.one_step(s, a, torch.zeros(256), s, torch.ones(256), gamma=0.99), i)
    s = torch.randn(500, 3, generator=g)
    s = s[(behaviour(s)[:, 0].abs() > 0.3)]  # states where the mirrored action is clearly away from the data
    with torch.no_grad():
        near = neg_log_density(reg.vae, s, behaviour(s), beta=0.5, num_samples=10)
        far = neg_log_density(reg.vae, s, -behaviour(s), beta=0.5, num_samples=10)
        uniform = neg_log_density(reg.vae, s, torch.rand(len(s), 2, generator=g) * 2 - 1, beta=0.5, num_samples=10)
    assert (near < far).float().mean() > 0.95
    assert near.mean() < 0.5 * uniform.mean()


def test_divergence_guard_raises_a_clear_error_with_the_first_update() -> None:
    learner, reg = tiny_spot(q_divergence_threshold=-1e9, divergence_check_every=4)  # always "diverged"
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2, 3):
        learner.update(tiny_batch(), step, gen)
    message = r"exceeded regularizer\.spot\.q_divergence_threshold=-1e\+09 at update 2"
    with pytest.raises(QDivergenceError, match=message):
        learner.update(tiny_batch(), 4, gen)
    # a threshold that is not reached, no guard, and fine-tuning (official: no guard online) never raise
    for kw in ({"q_divergence_threshold": 1e4}, {"q_divergence_threshold": None}):
        learner, _ = tiny_spot(divergence_check_every=2, **kw)
        for step in range(1, 7):
            learner.update(tiny_batch(), step, gen)
    learner, reg = tiny_spot(q_divergence_threshold=-1e9, divergence_check_every=2)
    reg.start_finetune()
    for step in range(1, 7):
        learner.update(tiny_batch(), step, gen)


def test_finetune_lambda_schedule() -> None:
    _, reg = tiny_spot(lambd=0.25, lambda_end=0.2, anneal_steps=100)
    assert reg.current_lambda(50) == 0.25  # offline: constant
    reg.start_finetune()
    assert [reg.current_lambda(t) for t in (0, 50, 80, 90, 1000)] == pytest.approx([0.25, 0.125, 0.05, 0.05, 0.05])


def test_density_term_stacks_with_another_actor_regularizer() -> None:
    from rlreg.regularizers.bc import BCConfig, BCRegularizer

    torch.manual_seed(0)
    regs = [BCRegularizer(BCConfig()), SPOTRegularizer(SPOTConfig(lambd=0.5, vae_hidden=(16,), pretrain_steps=0))]
    learner = TD3Learner(SetupContext.box(3, 2), TD3Config(actor_hidden=(8,), critic_hidden=(8,), q_norm_alpha=2.5), regularizers=regs)
    for reg in regs:
        reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu")))
    gen = torch.Generator().manual_seed(0)
    learner.update(tiny_batch(), 1, gen)
    m = learner.update(tiny_batch(), 2, gen)
    total = m["actor/q_term"] + m["bc/loss"] + m["spot/density"]
    assert m["actor/loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert m["spot/density"].item() > 0 and m["bc/loss"].item() > 0


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"regularizer\.spot\.num_samples"):
        SPOTRegularizer(SPOTConfig(num_samples=0))
    with pytest.raises(ValueError, match=r"regularizer\.spot\.lambda_end"):
        SPOTRegularizer(SPOTConfig(lambda_end=1.5))


def test_configs_follow_the_official_tables(tmp_path: Path) -> None:
    run = run_config(["agent=spot", "dataset=hopper-medium-v2"], tmp_path)
    lc, spot = run.agent.learner_config, run.agent.regularizers["spot"]
    assert (lc.q_norm_alpha, lc.actor_dropout, spot.lambd, spot.pretrain_steps, spot.beta) == (1.0, 0.1, 0.1, 1e5, 0.5)
    walker = run_config(["agent=spot", "dataset=walker2d-medium-expert-v2"], tmp_path)
    assert walker.agent.regularizers["spot"].lambd == 0.5
    # one VAE per dataset, seed 0, shared by the RL seeds (official train_vae.py + main.py --vae_model_path)
    assert (spot.vae_cache, spot.vae_seed) == (str(tmp_path / "runs" / ".spot_vae"), 0)


# ------------------------------------------------------------------------------------------------
# training runs
# ------------------------------------------------------------------------------------------------
SMALL = [
    "agent=spot",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
    "regularizer.spot.vae_hidden=[16,16]",
    "regularizer.spot.pretrain_steps=30",
    "regularizer.spot.divergence_check_every=5",
    "trainer.batch_size=32",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=2",
    "trainer.checkpoint_every=20",
]


def signal_at(monkeypatch: pytest.MonkeyPatch, method: str, step: int) -> None:
    """Deliver SIGUSR1 right after ``SPOTRegularizer.<method>`` ran for ``step``."""
    original = getattr(SPOTRegularizer, method)

    def patched(self, *args):  # type: ignore[no-untyped-def]
        out = original(self, *args)
        if (args[1] if method == "pretrain_step" else args[0]) == step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(SPOTRegularizer, method, patched)


def test_spot_resume_is_exact_in_pretraining_and_rl(
    tmp_path: Path, point_dataset: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a VAE per run (vae_cache=null): its 30 pre-training steps are checkpointed like RL steps
    base = point_overrides(point_dataset[0]) + SMALL + ["trainer.total_steps=40", "regularizer.spot.vae_cache=null"]
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    part = base + [f"run_dir={tmp_path / 'part'}"]
    signal_at(monkeypatch, "pretrain_step", 13)  # stopped in the VAE pre-training phase
    with pytest.raises(StopRequested):
        train(run_config(part, tmp_path), announce=False)
    monkeypatch.undo()
    assert final_state(tmp_path / "part")["extra"]["pretrain_done"]["spot"] == 13
    train(run_config(part + ["trainer.total_steps=20"], tmp_path), announce=False)  # stopped by the budget
    signal_at(monkeypatch, "after_update", 33)  # and by a signal mid-window in the RL stage
    with pytest.raises(StopRequested):
        train(run_config(part, tmp_path), announce=False)
    monkeypatch.undo()
    train(run_config(part, tmp_path), announce=False)
    full, resumed = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_state(full, resumed)
    assert resumed["learner"]["regularizers"]["spot"]["extra"]["pretrained"] == 30
    rows_full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert rows_full == read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert {"pretrain/spot/loss", "spot/density"} <= set().union(*rows_full)


def test_spot_vae_is_pretrained_once_per_dataset_and_reused_across_seeds(
    tmp_path: Path, point_dataset: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "vae_cache"
    base = point_overrides(point_dataset[0]) + SMALL + ["trainer.total_steps=20", f"regularizer.spot.vae_cache={cache}"]

    def vae_of(run_dir: Path) -> dict:
        return final_state(run_dir)["learner"]["regularizers"]["spot"]["modules"]

    train(run_config(base + ["seed=0", f"run_dir={tmp_path / 's0'}"], tmp_path), announce=False)  # a miss: trains
    entries = sorted(cache.glob("spot_vae-*.pt"))
    assert len(entries) == 1 and "-seed0-" in entries[0].name
    state = final_state(tmp_path / "s0")
    assert state["extra"]["pretrain_done"]["spot"] == 1 and state["learner"]["regularizers"]["spot"]["extra"]["pretrained"] == 30

    # another RL seed on the same data: a hit, no VAE step at all, the very same VAE
    def no_training(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("the cached VAE was pre-trained again")

    monkeypatch.setattr(spot_module, "vae_loss", no_training)
    train(run_config(base + ["seed=1", f"run_dir={tmp_path / 's1_hit'}"], tmp_path), announce=False)
    monkeypatch.undo()
    assert_same_state({"step": 0, "learner": vae_of(tmp_path / "s0")}, {"step": 0, "learner": vae_of(tmp_path / "s1_hit")})
    rows = read_metrics(tmp_path / "s1_hit" / "metrics.jsonl")
    assert any("pretrain/spot/loss" in r for r in rows)  # the cached VAE's final pre-training loss is reported

    # the cached VAE depends on the data and vae_seed alone and leaves the run's RNG untouched: seed 1 with an
    # empty cache (a miss) ends exactly like seed 1 with the hit
    miss = [o if not o.startswith("regularizer.spot.vae_cache=") else f"regularizer.spot.vae_cache={tmp_path / 'c2'}"
            for o in base]
    train(run_config(miss + ["seed=1", f"run_dir={tmp_path / 's1_miss'}"], tmp_path), announce=False)
    assert_same_state(final_state(tmp_path / "s1_hit"), final_state(tmp_path / "s1_miss"))
    assert read_metrics(tmp_path / "s1_hit" / "metrics.jsonl") == read_metrics(tmp_path / "s1_miss" / "metrics.jsonl")

    # other data gets its own entry; an entry made from other data is refused, naming the file
    other = tmp_path / "point_other.hdf5"
    write_point_dataset(other, episodes=20)
    other_base = point_overrides(other) + SMALL + ["trainer.total_steps=20", f"regularizer.spot.vae_cache={cache}"]
    train(run_config(other_base + [f"run_dir={tmp_path / 'o0'}"], tmp_path), announce=False)
    (other_entry,) = set(cache.glob("spot_vae-*.pt")) - set(entries)
    other_entry.write_bytes(entries[0].read_bytes())  # e.g. a file copied by hand under the other data's name
    with pytest.raises(VAECacheError, match=r"pre-trained on other data.*refusing"):
        train(run_config(other_base + [f"run_dir={tmp_path / 'o1'}", "seed=1"], tmp_path), announce=False)


def test_spot_finetunes_online_from_the_offline_checkpoint(
    tmp_path: Path, point_dataset: tuple[Path, float]
) -> None:
    path, _ = point_dataset
    offline = point_overrides(path) + SMALL + ["trainer.total_steps=40"]
    finetune = offline[:-1] + [
        "trainer=finetune",
        "trainer.total_steps=70",
        "trainer.buffer_size=2000",
        "trainer.eval_every=35",
        "trainer.checkpoint_every=35",
        "trainer.eval_episodes=2",
    ]
    with pytest.raises(FileNotFoundError, match=r"trainer\.init_from"):
        train(run_config(finetune, tmp_path), announce=False)
    summary = train(run_config(offline, tmp_path), announce=False)
    off = load_checkpoint(Path(summary["checkpoint"]))
    other = tmp_path / "point_other.hdf5"  # the offline checkpoint must come from the data fine-tuned on
    write_point_dataset(other, episodes=20)
    other_ft = point_overrides(other) + SMALL + finetune[len(offline) - 1:] + [
        f"trainer.init_from={summary['checkpoint']}", f"run_dir={tmp_path / 'ft_other'}"]
    with pytest.raises(RunDirError, match="trained on other data"):
        train(run_config(other_ft, tmp_path), announce=False)
    # 50 episodes of 30 steps minus the 50 time-out transitions (dropped as in d4rl.qlearning_dataset)
    with pytest.raises(Exception, match=r"trainer\.buffer_size"):  # must hold 1,450 offline + 70 online rows
        train(run_config(finetune + ["trainer.buffer_size=1500"], tmp_path), announce=False)

    summary = train(run_config(finetune, tmp_path), announce=False)
    assert summary["run_dir"].endswith("point-random-finetune/seed0") and summary["steps"] == 70
    state = final_state(Path(summary["run_dir"]))
    spot = state["learner"]["regularizers"]["spot"]
    assert spot["extra"]["finetuning"] is True
    for k, v in spot["modules"].items():  # the pre-trained VAE came from the offline run and stayed frozen
        assert torch.equal(v, off["learner"]["regularizers"]["spot"]["modules"][k]), k
    buf = state["extra"]["buffer"]
    assert buf["prefill"] == 1450 and buf["observations"].shape[0] == 70 and buf["size"] == 1520
    assert state["extra"]["updates"] == 70
    rows = read_metrics(Path(summary["metrics"]))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [35, 70]
    assert len([r for r in rows if r["kind"] == "episode"]) == 2  # 30-step episodes

    # the same fine-tuning interrupted mid-episode (step 35) and resumed ends identically
    part = finetune + [f"run_dir={tmp_path / 'ft_part'}"]
    train(run_config(part + ["trainer.total_steps=35"], tmp_path), announce=False)
    train(run_config(part, tmp_path), announce=False)
    assert_same_state(state, final_state(tmp_path / "ft_part"))


def assert_learns_point_task(tmp_path: Path, point_dataset: tuple[Path, float], agent_overrides: list[str]) -> None:
    """Train ``agent_overrides`` for 1,500 updates on the point task (random data scores about -25) and require
    a last return above -10 (moving straight to the goal scores about -3). Shared by SPOT, PRDC and A2PR."""
    path, data_return = point_dataset
    budget = ["trainer.total_steps=1500", "trainer.eval_every=500", "trainer.eval_episodes=10",
              "trainer.log_every=500", "trainer.checkpoint_every=1500"]
    summary = train(run_config(point_overrides(path) + agent_overrides + budget, tmp_path), announce=False)
    assert data_return < -20
    assert summary["last_return"] > -10, summary


def test_spot_learns_the_point_task(tmp_path: Path, point_dataset: tuple[Path, float]) -> None:
    """SPOT reaches -10 in 1,500 updates after 500 VAE pre-training steps (small networks)."""
    assert_learns_point_task(tmp_path, point_dataset, [
        "agent=spot",
        "agent.actor_hidden=[32,32]",
        "agent.critic_hidden=[32,32]",
        "regularizer.spot.vae_hidden=[32,32]",
        "regularizer.spot.pretrain_steps=500",
        "regularizer.spot.lambd=0.1",
    ])
