"""python -m rlreg.plot: every metric's curves per dataset and the aggregate bar plot, checked on the
matplotlib figures themselves (curves per panel, their values, bar heights); agents named as people do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import BarContainer

from rlreg.names import display_name, split_run_name
from rlreg.plot import bootstrap_ci, main, plot

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, agent: str, regs: tuple[str, ...], task: str, seed: int, scores: list[float],
              budget: int = 200, online: bool = False, episodes: list[tuple[int, float]] = ()) -> Path:
    """A run directory as the trainer writes it; train rows carry losses, a Q value and regularizer terms."""
    run_dir = root / (agent + (f"-{'+'.join(regs)}" if regs else "")) / task / f"seed{seed}"
    run_dir.mkdir(parents=True)
    cfg: dict[str, Any] = {
        "agent": {"name": agent, "learner": "td3", "learner_config": {}, "regularizers": {r: {} for r in regs}},
        "trainer": {"mode": "online" if online else "offline", "total_steps": budget},
        "dataset": None if online else {"name": task}, "env": {"id": task} if online else None,
        "seed": seed, "tag": "", "logging": {},
    }
    (run_dir / "config.json").write_text(json.dumps(cfg))
    rows = [{"step": s, "kind": "episode", "train/episode_return": r} for s, r in episodes]
    for i, score in enumerate(scores):
        step = (i + 1) * budget // len(scores)
        train = {"step": step, "kind": "train", "critic/loss": 1.0 / step + seed, "critic/q_mean": float(step),
                 "actor/loss": -float(step)}
        for reg in regs:
            train[f"{reg}/term"] = float(seed)
        rows += [train, {"step": step, "kind": "eval", "eval/return": 10 * score,
                         "eval/normalized_score": None if online else score}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"steps": budget}))
    return run_dir


def panels(fig: Any) -> dict[str, Any]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def test_sweep_curves_and_aggregate(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    final = {("td3bc", "hopper-medium-v2"): [50, 60, 70], ("td3bc", "walker2d-medium-v2"): [80, 90, 100],
             ("prdc", "hopper-medium-v2"): [40, 44], ("prdc", "walker2d-medium-v2"): [20, 30]}
    for (agent, task), scores in final.items():
        regs = ("bc",) if agent == "td3bc" else ("prdc", "spot")
        for seed, s in enumerate(scores):
            write_run(root, agent, regs, task, seed, [10.0, float(s)])
    write_run(root, "prdc", ("prdc",), "hopper-medium-v2", 0, [5.0, 33.0])  # PRDC alone: one dataset only

    out = tmp_path / "plots"
    assert main([str(root), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["aggregate.png", "metrics_hopper-medium-v2.png", "metrics_walker2d-medium-v2.png"]
    assert all((out / n).read_bytes()[:8] == PNG for n in names)

    figs = {p.name: f for p, f in plot([root], tmp_path / "again", close=False).items()}
    hopper = panels(figs["metrics_hopper-medium-v2.png"])
    # score, return, losses, Q values, then the regularizers' terms
    assert list(hopper) == ["eval/normalized_score", "eval/return", "actor/loss", "critic/loss", "critic/q_mean",
                            "bc/term", "prdc/term", "spot/term"]
    score = hopper["eval/normalized_score"]
    assert sorted(line.get_label() for line in score.get_lines()) == ["PRDC (1 seed)", "PRDC+SPOT (2 seeds)",
                                                                       "TD3+BC (3 seeds)"]
    td3bc = next(line for line in score.get_lines() if line.get_label().startswith("TD3+BC"))
    np.testing.assert_allclose(td3bc.get_xdata(), [100, 200])
    np.testing.assert_allclose(td3bc.get_ydata(), [10.0, 60.0])  # mean over the three seeds
    assert len(hopper["bc/term"].get_lines()) == 1 and len(hopper["spot/term"].get_lines()) == 1
    assert len(hopper["prdc/term"].get_lines()) == 2  # PRDC and PRDC+SPOT
    assert len(panels(figs["metrics_walker2d-medium-v2.png"])["eval/return"].get_lines()) == 2

    (ax,) = figs["aggregate.png"].axes
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert sorted(bars) == ["PRDC", "PRDC+SPOT", "TD3+BC"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hopper-medium-v2", "walker2d-medium-v2",
                                                           "mean over datasets"]
    heights = [b.get_height() for b in bars["TD3+BC"]]
    assert heights == pytest.approx([60.0, 90.0, 75.0])
    assert [b.get_height() for b in bars["PRDC+SPOT"]] == pytest.approx([42.0, 25.0, 33.5])
    assert [b.get_height() for b in bars["PRDC"]] == pytest.approx([33.0])  # not averaged: one dataset only
    for fig in figs.values():
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_one_run_online_episodes_and_key_filter(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = write_run(root, "sac", (), "Hopper-v5", 0, [1.0, 2.0], online=True, episodes=[(30, 5.0), (90, 7.0)])
    write_run(root, "sac", (), "Hopper-v5", 1, [1.0, 4.0], online=True, episodes=[(50, 6.0), (150, 9.0)])
    figs = plot([run], tmp_path / "one", close=False)
    assert [p.name for p in figs] == ["metrics_Hopper-v5.png"]  # no normalized score: no aggregate plot
    one = panels(next(iter(figs.values())))
    assert "eval/normalized_score" not in one and list(one)[:2] == ["eval/return", "train/episode_return"]
    assert all(len(ax.get_lines()) == 1 for ax in one.values())

    # two seeds that logged episodes at different steps: interpolated on the range both reached
    both = panels(next(iter(plot([root], tmp_path / "two", keys=["train/*", "eval/*"], close=False).values())))
    assert list(both) == ["eval/return", "train/episode_return"]
    (line,) = both["train/episode_return"].get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    assert (x[0], x[-1]) == (50, 90)
    assert y[0] == pytest.approx((5.0 + 1 / 3 * 2.0 + 6.0) / 2)  # seed 0 interpolated at step 50
    assert y[-1] == pytest.approx((7.0 + 6.0 + 0.4 * 3.0) / 2)


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
    write_run(tmp_path / "runs", "td3bc", ("bc",), "hopper-medium-v2", 0, [1.0])
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--keys", "nothing*"]) == 2
    assert "no metrics to plot matching ['nothing*']" in capsys.readouterr().err


def test_bootstrap_ci_by_hand() -> None:
    assert bootstrap_ci([[3.0, 3.0, 3.0]]) == (3.0, 3.0, 3.0)
    # two seeds 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    assert bootstrap_ci([[0.0, 1.0]]) == (0.5, 0.0, 1.0)
    # stratified: the second dataset is always 2, the first as above -> averages 1.0, 1.25, 1.5
    assert bootstrap_ci([[0.0, 1.0], [2.0, 2.0]]) == (1.25, 1.0, 1.5)
    with pytest.raises(ValueError, match="at least one seed"):
        bootstrap_ci([[1.0], []])


def test_display_names() -> None:
    cases = {"td3bc-bc": "TD3+BC", "prdc-prdc": "PRDC", "prdc-prdc+spot": "PRDC+SPOT", "sacn": "SAC-N",
             "edac-edac": "EDAC", "sacn-edac": "SAC-N+EDAC", "rorl-rorl_policy+rorl_q+rorl_ood": "RORL",
             "rorl-rorl_policy+rorl_q+rorl_ood_attack": "RORL (attack)", "droq": "DroQ", "beer-beer": "BEER",
             "demoreg_sac-demoreg": "DemoReg-SAC", "td3bc": "TD3+BC without BC", "iql": "iql",
             "spot-spot_long": "SPOT (long)", "a2pr-a2pr": "A2PR"}
    assert {k: display_name(k) for k in cases} == cases
    assert split_run_name("demoreg_sac-demoreg_x") == ("demoreg_sac", ("demoreg",), "x")


def test_results_plot_flag_writes_the_same_plots(tmp_path: Path) -> None:
    from rlreg.results import main as results_main

    for seed, score in enumerate([30.0, 50.0]):
        write_run(tmp_path / "runs", "prdc", ("prdc",), "mujoco/hopper/medium-v0", seed, [10.0, score])
    out = tmp_path / "out"
    assert results_main([str(tmp_path / "runs"), "--out", str(out), "--plot"]) == 0
    # a Minari id as dataset name: listed as typed, files named without the slashes
    assert "| PRDC | mujoco/hopper/medium-v0 | 200 | 2 | 40.0 ± 10.0 |" in (out / "results.md").read_text()
    for name in ("metrics_mujoco_hopper_medium-v0.png", "aggregate.png", "curves_mujoco_hopper_medium-v0.png"):
        assert (out / name).read_bytes()[:8] == PNG
