"""RORL (docs/agents/rorl.md): each loss term against hand-computed values, the perturbation box, the lambda
schedule, the reused-buffer passes against autograd, configs, exact resume and learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, pendulum_offline_overrides, run_config
from test_training import assert_same_learner, comparable, final_state

from rlreg.config import ConfigError, to_run_config
from rlreg.learners.sac import SACConfig
from rlreg.data.buffers import Batch, OfflineBuffer
from rlreg.data.dataset import TransitionDataset
from rlreg.learners.sac import SACLearner
from rlreg.logging import read_metrics
from rlreg.regularizers import SetupContext
from rlreg.regularizers.rorl import (
    RORLOODConfig,
    RORLOODPessimism,
    RORLPolicyConfig,
    RORLPolicySmoothing,
    RORLQConfig,
    RORLQSmoothing,
    Workspace,
    asymmetric_sq,
    ensemble_q,
    ood_lambda,
    ood_loss,
    policy_smoothing_loss,
    q_smoothing_loss,
    symmetric_kl,
)
from rlreg.trainers import train

CONF = Path(__file__).resolve().parent.parent / "conf"

# ------------------------------------------------------------------------------------------------
# the loss terms on tiny tensors
# ------------------------------------------------------------------------------------------------


def test_symmetric_kl_closed_form() -> None:
    # sym KL = (s_p^2 / s_q^2 + s_q^2 / s_p^2) / 2 - 1 + dmu^2 (1 / s_p^2 + 1 / s_q^2) / 2 per dim
    # s_p = 1, s_q = 2, dmu = 1: (1/4 + 4) / 2 - 1 + (1 + 1/4) / 2 = 1.125 + 0.625
    zero = torch.tensor([[0.0]])
    kl = symmetric_kl(zero, zero, torch.tensor([[1.0]]), torch.tensor([[math.log(2)]]))
    assert kl.item() == pytest.approx(1.75, rel=1e-6)
    # summed over action dims
    two = symmetric_kl(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))
    assert two.item() == pytest.approx(1.0 + 4.0)


def test_policy_smoothing_takes_the_max_over_perturbations() -> None:
    mean, log_std = torch.zeros(2, 1), torch.zeros(2, 1)
    mean_hat = torch.tensor([[[0.5], [1.0], [2.0]], [[0.0], [0.0], [-1.0]]])  # (B=2, n=3, A=1)
    log_std_hat = torch.zeros(2, 3, 1)
    log_std_hat[1, 1, 0] = math.log(2.0)
    # b0: dmu^2 = 0.25, 1, 4 -> 4;  b1: 0, 1.125 (std 1 vs 2), 1 -> 1.125
    loss = policy_smoothing_loss(mean, log_std, mean_hat, log_std_hat)
    assert loss.item() == pytest.approx((4.0 + 1.125) / 2, rel=1e-6)


def test_q_smoothing_asymmetric_weights_and_max() -> None:
    assert asymmetric_sq(torch.tensor([1.0, -1.0, 0.0]), 0.2).tolist() == pytest.approx([0.8, 0.2, 0.0])
    q = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # (E=2, B=2)
    q_hat = torch.tensor([[[2.0, 0.5], [0.0, 1.0]], [[3.0, 4.0], [-2.0, 0.0]]])  # (E, B, n=2)
    # diffs member 0: b0 [1, -0.5], b1 [0, 1]; member 1: b0 [0, 1], b1 [-2, 0]
    # l(b0) = [mean(0.8, 0), mean(0.2 * 0.25, 0.8)] = [0.4, 0.425] -> 0.425
    # l(b1) = [mean(0, 0.2 * 4), mean(0.8, 0)] = [0.4, 0.4] -> 0.4
    assert q_smoothing_loss(q, q_hat, tau=0.2).item() == pytest.approx((0.425 + 0.4) / 2, rel=1e-6)
    # symmetric weights make b1's decrease of 2 its worst perturbation: l(b0) = [0.25, 0.3125], l(b1) = [1, 0.25]
    assert q_smoothing_loss(q, q_hat, tau=0.5).item() == pytest.approx((0.3125 + 1.0) / 2, rel=1e-6)


def test_ood_loss_value_and_gradient() -> None:
    q_hat = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]], requires_grad=True)  # (E=3, R=2)
    # unbiased std over members: column 0 -> 1, column 1 -> sqrt(3)
    loss = ood_loss(q_hat, lam=0.5)
    assert loss.item() == pytest.approx((3 * 0.25 + 3 * 0.75) / 6, rel=1e-6)
    loss.backward()
    # every member is pulled down by lam * std: d/dq = 2 lam std / (E R)
    expected = torch.tensor([[1 / 6, math.sqrt(3) / 6]]).expand(3, 2)
    assert torch.allclose(q_hat.grad, expected, atol=1e-6)


def test_lambda_schedule_decays_to_its_floor() -> None:
    lams = [ood_lambda(t, 2.0, 0.6, 0.5) for t in (1, 2, 3, 4, 5, 1000)]
    assert lams == pytest.approx([2.0, 1.5, 1.0, 0.6, 0.6, 0.6])
    assert ood_lambda(10**6, 2.0, 0.1, 1e-6) == pytest.approx(1.000001)  # hopper-medium after 1M steps
    assert ood_lambda(5, 0.0, 0.0, 0.0) == 0.0
    assert ood_lambda(7, 0.1, 0.1, 0.0) == pytest.approx(0.1)  # walker2d-medium-replay: constant


def test_ood_term_switches_off_when_lambda_reaches_zero() -> None:
    learner, batch = tiny_learner(), tiny_batch()
    reg = bind(learner, RORLOODPessimism(RORLOODConfig(eps=0.01, weight=1.0, num_samples=3, lambda_init=0.1,
                                                       lambda_min=0.0, lambda_decay=0.05)))
    ctx = critic_ctx(learner, batch, step=2)
    assert reg.critic_terms(batch, ctx)["loss"].item() > 0  # lambda 0.05
    ctx.step = 3  # lambda 0: the term is not computed at all (hopper-medium-replay after 1e5 steps)
    assert reg.critic_terms(batch, ctx) == {}
    assert reg.after_critic_step(batch, ctx)["lambda"].item() == 0.0


@pytest.mark.parametrize(
    ("cls", "kwargs", "option"),
    [
        (RORLOODConfig, {"lambda_init": 0.1, "lambda_min": 0.5}, "rorl_ood.lambda_min"),
        (RORLQConfig, {"tau": 1.5}, "rorl_q.tau"),
        (RORLPolicyConfig, {"eps": -0.1}, "rorl_policy.eps"),
        (RORLQConfig, {"num_samples": 0}, "rorl_q.num_samples"),
    ],
)
def test_bad_values_name_the_option(cls, kwargs, option) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        cls(**kwargs)


# ------------------------------------------------------------------------------------------------
# regularizers bound to a tiny SAC-N learner
# ------------------------------------------------------------------------------------------------

OBS_STD = np.array([0.01, 1.0, 100.0], dtype=np.float32)


def tiny_dataset(rows: int = 500) -> TransitionDataset:
    rng = np.random.default_rng(0)
    obs = (rng.standard_normal((rows, 3)) * OBS_STD + np.array([5.0, -1.0, 20.0])).astype(np.float32)
    return TransitionDataset(
        observations=obs, actions=rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
        rewards=rng.standard_normal(rows).astype(np.float32), next_observations=np.roll(obs, -1, 0),
        terminals=np.zeros(rows, bool), timeouts=np.zeros(rows, bool), episode_ends=np.zeros(rows, bool),
    )


def tiny_learner(num_critics: int = 3) -> SACLearner:
    torch.manual_seed(0)
    cfg = SACConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), num_critics=num_critics, init="sacn",
                    update_order="simultaneous")
    return SACLearner(SetupContext.box(3, 2), cfg)


def bind(learner: SACLearner, reg, buffer=None):  # type: ignore[no-untyped-def]
    data = tiny_dataset()
    reg.bind(learner, SetupContext(3, 2, 1.0, torch.device("cpu"), dataset=data, buffer=buffer))
    return reg


def tiny_batch(b: int = 8) -> Batch:
    data = tiny_dataset()
    idx = torch.arange(b)
    return Batch.one_step(torch.as_tensor(data.observations)[idx], torch.as_tensor(data.actions)[idx],
                          torch.as_tensor(data.rewards)[idx], torch.as_tensor(data.next_observations)[idx],
                          torch.ones(b), gamma=0.99)


def critic_ctx(learner: SACLearner, batch: Batch, step: int = 1):  # type: ignore[no-untyped-def]
    from rlreg.regularizers.base import CriticContext

    return CriticContext(q=learner.critic(batch.observations, batch.actions), target=torch.zeros(len(batch.rewards)),
                         step=step)


def test_trainer_normalisation_puts_the_box_in_units_of_the_dataset_std() -> None:
    """RORL's --norm_input is the trainer's state normalisation ((s - mean) / (std + 1e-6), conf/agent/rorl.yaml):
    the networks stay untouched and the perturbation box is eps wide in normalised units, eps * sd_D raw."""
    learner = tiny_learner()
    data = tiny_dataset()
    mean, std = data.state_stats(eps=1e-6)
    buffer = OfflineBuffer(data, obs_mean=mean, obs_std=std)
    reg = bind(learner, RORLQSmoothing(RORLQConfig()), buffer=buffer)
    assert not learner.critic.obs_normalizer.active and not learner.actor.obs_normalizer.active
    assert torch.equal(reg.sampler.scale, torch.ones(3))
    s = buffer.observations[:16]
    eps, n = 0.1, 200
    s_hat = reg.sampler.perturb(s, eps, n)
    assert s_hat.shape == (16 * n, 3)
    delta = s_hat.view(16, n, 3) - s.unsqueeze(1)
    assert delta.abs().max().item() <= eps * (1 + 1e-4)  # the box, in normalised units, on every dim
    assert (delta.abs().amax(dim=(0, 1)) > 0.9 * eps).all()  # and it is filled
    assert torch.allclose(delta, delta[:1].expand_as(delta), atol=1e-4 * eps)  # offsets shared by the batch
    raw = (delta * torch.as_tensor(std)).abs().amax(dim=(0, 1))
    assert torch.allclose(raw / torch.as_tensor(OBS_STD), torch.full((3,), eps), rtol=0.1)  # eps * sd_D raw
    other = bind(learner, RORLOODPessimism(RORLOODConfig()), buffer=buffer)  # every RORL term: the same scale
    assert torch.equal(other.sampler.scale, reg.sampler.scale)


def test_q_smoothing_on_selected_rows_equals_the_full_max() -> None:
    """Only the arg-max perturbation of each state gets gradient: evaluating the B*n rows without a graph
    and the B selected rows with one gives the value and gradient of the full computation."""
    learner, batch = tiny_learner(), tiny_batch()
    reg = bind(learner, RORLQSmoothing(RORLQConfig(eps=0.3, weight=2.0, tau=0.2, num_samples=5)))
    state = reg.sampler.generator.get_state()
    loss = reg.critic_terms(batch, critic_ctx(learner, batch))["loss"]
    loss.backward()
    fast = [p.grad.clone() for p in learner.critic.parameters()]
    learner.critic.zero_grad()
    reg.sampler.generator.set_state(state)
    s_hat = reg.sampler.perturb(batch.observations, 0.3, 5)
    q = learner.critic(batch.observations, batch.actions)
    q_hat = learner.critic(s_hat, batch.actions.repeat_interleave(5, dim=0)).view(3, 8, 5)
    full = 2.0 * q_smoothing_loss(q, q_hat, tau=0.2)
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5) and full.item() > 0
    for a, b in zip(fast, (p.grad for p in learner.critic.parameters())):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_policy_smoothing_on_selected_rows_equals_the_full_max() -> None:
    learner, batch = tiny_learner(), tiny_batch()
    reg = bind(learner, RORLPolicySmoothing(RORLPolicyConfig(eps=0.3, weight=0.5, num_samples=6)))
    state = reg.sampler.generator.get_state()
    from rlreg.regularizers.base import ActorContext

    loss = reg.actor_terms(batch, ActorContext(actions=batch.actions, q=torch.zeros(8), step=1))["loss"]
    loss.backward()
    fast = [p.grad.clone() for p in learner.actor.parameters()]
    learner.actor.zero_grad()
    reg.sampler.generator.set_state(state)
    s_hat = reg.sampler.perturb(batch.observations, 0.3, 6)
    mean, log_std = learner.actor.dist_params(batch.observations)
    mean_hat, log_std_hat = learner.actor.dist_params(s_hat)
    full = 0.5 * policy_smoothing_loss(mean, log_std, mean_hat.view(8, 6, 2), log_std_hat.view(8, 6, 2))
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5) and full.item() > 0
    for a, b in zip(fast, (p.grad for p in learner.actor.parameters())):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)


def test_ood_term_reused_buffers_equal_autograd() -> None:
    learner, batch = tiny_learner(num_critics=4), tiny_batch()
    cfg = RORLOODConfig(eps=0.05, weight=0.5, num_samples=7, lambda_init=2.0, lambda_min=0.1, lambda_decay=0.0)
    grads, values = [], []
    for use_workspace in (True, False):
        reg = bind(learner, RORLOODPessimism(cfg))
        reg.use_workspace = use_workspace
        learner.critic.zero_grad()
        loss = reg.critic_terms(batch, critic_ctx(learner, batch))["loss"]
        loss.backward()
        values.append(loss.item())
        grads.append([p.grad.clone() for p in learner.critic.parameters()])
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[0] > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    # the buffers hold the activations until backward: a second pass before it is refused
    ws = Workspace()
    q1 = ensemble_q(learner.critic, batch.observations, batch.actions, ws)
    ensemble_q(learner.critic, batch.observations, batch.actions, ws)
    with pytest.raises(RuntimeError, match="workspace"):
        q1.sum().backward()


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------


def test_agent_and_every_tuned_file_compose(tmp_path: Path) -> None:
    run = run_config(["agent=rorl", "dataset=walker2d-medium-v2"], tmp_path)
    lc = run.agent.learner_config
    assert lc.num_critics == 10 and lc.update_order == "simultaneous" and lc.init == "sacn"
    assert run.dataset is not None and run.dataset.normalize_states and run.dataset.state_std_eps == 1e-6
    regs = run.agent.regularizers
    assert list(regs) == ["rorl_policy", "rorl_q", "rorl_ood"]
    assert (regs["rorl_policy"].eps, regs["rorl_policy"].weight) == (0.01, 1.0)
    assert (regs["rorl_ood"].weight, regs["rorl_ood"].lambda_init, regs["rorl_ood"].lambda_decay) == (0.1, 1.0, 5e-7)
    hc = run_config(["agent=rorl", "dataset=halfcheetah-medium-v2"], tmp_path).agent.regularizers
    assert hc["rorl_q"].num_samples == 10 and hc["rorl_ood"].weight == 0.0
    hmr = run_config(["agent=rorl", "dataset=hopper-medium-replay-v2"], tmp_path).agent.regularizers
    assert (hmr["rorl_ood"].lambda_init, hmr["rorl_ood"].lambda_min) == (0.1, 0.0)
    att = run_config(["agent=rorl", "dataset=hopper-medium-v2", "tuned=rorl/attack/hopper-medium-v2"], tmp_path)
    assert att.agent.regularizers["rorl_ood"].eps == 0.02
    tuned = sorted((CONF / "tuned" / "rorl").glob("*.yaml"))
    assert len(tuned) == 15
    for path in tuned:
        run = to_run_config(compose(["agent=rorl", f"dataset={path.stem}"]))
        assert run.agent.regularizers["rorl_q"].tau == 0.2
    for path in sorted((CONF / "tuned" / "rorl" / "attack").glob("*.yaml")):
        to_run_config(compose(["agent=rorl", f"dataset={path.stem}", f"tuned=rorl/attack/{path.stem}"]))


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------

TINY = [
    "agent=rorl",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=20",
    "trainer.batch_size=16",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
    "agent.num_critics=3",
    "regularizer.rorl_policy.num_samples=3",
    "regularizer.rorl_q.num_samples=3",
    "regularizer.rorl_ood.num_samples=3",
    "regularizer.rorl_policy.eps=0.05",
    "regularizer.rorl_q.eps=0.05",
    "regularizer.rorl_q.weight=0.1",
    "regularizer.rorl_ood.lambda_decay=0.01",
]


def test_rorl_resume_is_exact(tmp_path: Path, pendulum_dataset: Path) -> None:
    base = pendulum_offline_overrides(pendulum_dataset) + TINY
    train(run_config(base + ["trainer.total_steps=40", f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    train(run_config(base + ["trainer.total_steps=20", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    train(run_config(base + ["trainer.total_steps=40", f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_learner(a, b)
    assert "state_normalizer.std" in a["learner"]["networks"]  # the trainer's normalisation, with the run
    for name in ("rorl_policy", "rorl_q", "rorl_ood"):
        assert torch.equal(a["learner"]["regularizers"][name]["extra"]["generator"],
                           b["learner"]["regularizers"][name]["extra"]["generator"])
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert rows == comparable(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {"rorl_policy/loss", "rorl_q/loss", "rorl_ood/loss", "rorl_ood/lambda"} <= set(train_rows[-1])
    assert train_rows[-1]["rorl_ood/lambda"] == pytest.approx(2.0 - 0.01 * np.mean(range(35, 40)), rel=1e-5)


def random_pendulum_dataset(path: Path, episodes: int = 50) -> float:
    """``episodes`` x 200 steps of uniform random actions on Pendulum-v1 (D4RL layout); returns the mean
    episode return of the data."""
    import gymnasium as gym

    from rlreg.data.d4rl import write_d4rl_hdf5

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "tout")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            act = rng.uniform(-2, 2, size=1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(act)
            for k, v in zip(cols, (obs, act, r, nxt, term, trunc)):
                cols[k].append(v)
            obs, done = nxt, term or trunc
    write_d4rl_hdf5(path, observations=np.asarray(cols["obs"], np.float32), actions=np.asarray(cols["act"], np.float32),
                    rewards=np.asarray(cols["rew"], np.float32), terminals=np.asarray(cols["term"]),
                    timeouts=np.asarray(cols["tout"]), next_observations=np.asarray(cols["next"], np.float32))
    return float(np.sum(cols["rew"]) / episodes)


def test_rorl_learns_offline_pendulum_from_random_data(tmp_path: Path) -> None:
    """10,000 random Pendulum-v1 transitions (mean episode return about -1230). A small RORL (N = 3, n = 3,
    64x64 nets, all three terms on) must reach -900 within 2,000 gradient steps (seeds 0/1/2 reached
    -662/-560/-622 with these settings)."""
    path = tmp_path / "pendulum_random50.hdf5"
    data_return = random_pendulum_dataset(path)
    assert -1400 < data_return < -1050
    overrides = pendulum_offline_overrides(path) + [
        "agent=rorl",
        "seed=0",
        "trainer.total_steps=2000",
        "trainer.eval_every=2000",
        "trainer.eval_episodes=5",
        "trainer.log_every=500",
        "trainer.checkpoint_every=2000",
        "trainer.batch_size=256",
        "agent.actor_hidden=[64,64]",
        "agent.critic_hidden=[64,64]",
        "agent.num_critics=3",
        "agent.actor_lr=2e-3",
        "agent.critic_lr=2e-3",
        "agent.init_alpha=0.1",
        "agent.tau=0.02",
        *(f"regularizer.{r}.num_samples=3" for r in ("rorl_policy", "rorl_q", "rorl_ood")),
    ]
    summary = train(run_config(overrides, tmp_path), announce=False)
    rows = [r for r in read_metrics(Path(summary["metrics"])) if r["kind"] == "train"]
    assert all(r["rorl_policy/loss"] > 0 and r["rorl_q/loss"] > 0 and r["rorl_ood/loss"] > 0 for r in rows)
    assert summary["last_return"] > -900, summary
