"""Observation attacks (docs/robustness.md): the eps box, the attacks' objectives, and the CLI on trained runs
(offline and online) rebuilt from their run dirs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import pendulum_offline_overrides, run_config

from rlreg.regularizers.base import SetupContext
from rlreg.learners.sac import SACConfig
from rlreg.learners.td3 import TD3Config
from rlreg.learners.sac import SACLearner
from rlreg.learners.td3 import TD3Learner
from rlreg.robustness import ATTACKS, ObservationAttack, load_run, main, policy_action, policy_divergence
from rlreg.trainers import train

SCALE = torch.tensor([0.5, 2.0, 10.0])


def sac() -> SACLearner:
    torch.manual_seed(0)
    return SACLearner(SetupContext.box(3, 1), SACConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), num_critics=3)).eval()


def td3() -> TD3Learner:
    torch.manual_seed(0)
    return TD3Learner(SetupContext.box(3, 1), TD3Config(actor_hidden=(32, 32), critic_hidden=(32, 32))).eval()


def q_fn(learner):  # type: ignore[no-untyped-def]
    return lambda x, a: learner.critic(x, a).mean(dim=0)


@pytest.mark.parametrize("mode", list(ATTACKS))
@pytest.mark.parametrize("make", [sac, td3])
def test_attacks_never_leave_the_eps_box(mode: str, make) -> None:  # type: ignore[no-untyped-def]
    learner = make()
    learner.requires_grad_(False)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)) * 3
    eps = 0.2
    gen = torch.Generator().manual_seed(2)
    attack = ObservationAttack(mode, eps, learner, SCALE, q_fn=q_fn(learner), generator=gen)
    x_hat = attack(x)
    dev = (x_hat - x).abs()
    assert (dev <= eps * SCALE * (1 + 1e-5)).all()
    assert (dev.amax(dim=0) > 0).all()  # it does perturb every dimension
    zero = ObservationAttack(mode, 0.0, learner, SCALE, q_fn=q_fn(learner))
    assert torch.equal(zero(x), x)


def _mean_q(learner, x, x_hat) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return learner.critic(x, policy_action(learner, x_hat)).mean().item()


def test_min_q_lowers_q_and_action_diff_moves_the_policy_more_than_random() -> None:
    learner = sac()
    learner.requires_grad_(False)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    eps, scale = 0.3, torch.ones(3)

    def perturbed(mode: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(4)
        return ObservationAttack(mode, eps, learner, scale, q_fn=q_fn(learner), generator=gen)(x)

    q_clean = _mean_q(learner, x, x)
    q_random = _mean_q(learner, x, perturbed("random"))
    q_min = _mean_q(learner, x, perturbed("min_Q"))
    q_grad = _mean_q(learner, x, perturbed("min_Q_mixed_order"))
    assert q_min < q_random and q_min <= q_clean
    assert q_grad < q_random and q_grad <= q_clean
    with torch.no_grad():
        kl = {m: policy_divergence(learner, x, perturbed(m)).mean().item() for m in ("random", "action_diff",
                                                                                    "action_diff_mixed_order")}
    assert kl["action_diff"] > kl["random"] and kl["action_diff_mixed_order"] > kl["random"]


def test_unknown_attack_and_negative_eps_are_refused() -> None:
    learner = sac()
    with pytest.raises(ValueError, match="--attack 'max_Q'"):
        ObservationAttack("max_Q", 0.1, learner, SCALE)
    with pytest.raises(ValueError, match="--eps"):
        ObservationAttack("random", -0.1, learner, SCALE)
    with pytest.raises(ValueError, match="Q function"):
        ObservationAttack("min_Q", 0.1, learner, SCALE, q_fn=None)


# ------------------------------------------------------------------------------------------------
# the CLI on trained runs
# ------------------------------------------------------------------------------------------------

TINY = [
    "trainer.total_steps=20",
    "trainer.log_every=10",
    "trainer.eval_every=20",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=20",
    "trainer.batch_size=16",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
    "agent.num_critics=3",
]
RORL = ["agent=rorl"] + [f"regularizer.{r}.num_samples=2" for r in ("rorl_policy", "rorl_q", "rorl_ood")]


def read(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_cli_on_offline_runs_writes_table_plot_and_summary(tmp_path: Path, pendulum_dataset: Path) -> None:
    base = pendulum_offline_overrides(pendulum_dataset) + TINY
    rorl_dir, sacn_dir, td3bc_dir = tmp_path / "rorl", tmp_path / "sacn", tmp_path / "td3bc"
    train(run_config(base + RORL + [f"run_dir={rorl_dir}"], tmp_path), announce=False)
    train(run_config(base + ["agent=sacn", f"run_dir={sacn_dir}"], tmp_path), announce=False)
    train(run_config(base + ["agent=td3bc", "agent.num_critics=2", f"run_dir={td3bc_dir}"], tmp_path), announce=False)

    rows = main([str(rorl_dir), str(sacn_dir), str(td3bc_dir), "--eps", "0", "0.3", "--attack", "random", "min_Q",
                 "action_diff_mixed_order", "--episodes", "2", "--grad-steps", "2", "--samples", "4",
                 "--summary", str(tmp_path / "summary")])
    assert len(rows) == 3 * 3 * 2
    # RORL and TD3+BC train on normalised states (the learner's state normaliser), SAC-N on raw ones
    for run_dir, source in ((rorl_dir, "checkpoint"), (sacn_dir, "dataset"), (td3bc_dir, "checkpoint")):
        table = read(run_dir / "robustness.csv")
        assert len(table) == 6 and {r["std_source"] for r in table} == {source}
        clean = {r["return_mean"] for r in table if float(r["eps"]) == 0.0}
        assert len(clean) == 1  # eps = 0: every attack is the unperturbed policy on the same env seeds
        assert (run_dir / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| eps | random | min_Q | action_diff_mixed_order |" in (run_dir / "robustness.md").read_text()
    summary = read(tmp_path / "summary" / "robustness_summary.csv")
    assert len(summary) == 18 and {r["seeds"] for r in summary} == {"1"}
    assert (tmp_path / "summary" / "robustness_summary.png").exists()


def test_cli_on_an_online_run_with_a_separate_attacker(tmp_path: Path, pendulum_dataset: Path) -> None:
    online = tmp_path / "online"
    train(run_config(["agent=sac", "env=pendulum", "trainer.warmup_steps=40", "trainer.total_steps=60",
                      "trainer.log_every=10", "trainer.eval_every=60", "trainer.eval_episodes=1",
                      "trainer.checkpoint_every=60", "trainer.batch_size=16", "agent.actor_hidden=[16,16]",
                      "agent.critic_hidden=[16,16]", f"run_dir={online}"], tmp_path), announce=False)
    offline = tmp_path / "offline"
    train(run_config(pendulum_offline_overrides(pendulum_dataset) + TINY + ["agent=sacn", f"run_dir={offline}"],
                     tmp_path), announce=False)
    loaded = load_run(online)
    assert loaded.run.trainer.mode == "online" and not any(p.requires_grad for p in loaded.learner.parameters())
    main([str(online), "--eps", "0.1", "--attack", "min_Q", "--episodes", "1", "--attacker-run", str(offline)])
    (row,) = read(online / "robustness.csv")
    assert row["std_source"] == "buffer" and row["score_mean"] == ""  # Pendulum has no reference scores
    main([str(online), "--eps", "0.1", "--attack", "random", "--episodes", "1", "--std", "ones", "--prefix", "raw"])
    assert read(online / "raw.csv")[0]["std_source"] == "ones"
    with pytest.raises(ValueError, match="--std dataset"):
        main([str(online), "--eps", "0.1", "--attack", "random", "--episodes", "1", "--std", "dataset"])
