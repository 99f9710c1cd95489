"""python -m rlreg.results: tables and curves from run and sweep directories, sweep manifests."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import pendulum_offline_overrides

from rlreg.results import MANIFEST, collect_runs, main, summarize


def fake_run(
    root: Path,
    agent: str,
    task: str,
    seed: int,
    budget: int,
    evals: list[tuple[int, float | None, float]],
    finished: bool,
    regs: tuple[str, ...] = (),
    online: bool = False,
) -> Path:
    """A run directory as the trainer writes it: config.json, metrics.jsonl, summary.json when finished."""
    name = agent + (f"-{'+'.join(regs)}" if regs else "")
    run_dir = root / name / task / f"seed{seed}"
    run_dir.mkdir(parents=True)
    cfg: dict[str, Any] = {
        "agent": {"name": agent, "learner": "td3", "learner_config": {}, "regularizers": {r: {} for r in regs}},
        "trainer": {"mode": "online" if online else "offline", "total_steps": budget},
        "logging": {},
        "dataset": None if online else {"name": task},
        "env": {"id": task} if online else None,
        "seed": seed,
        "tag": "",
    }
    (run_dir / "config.json").write_text(json.dumps(cfg))
    rows = []
    for step, score, ret in evals:
        rows.append({"step": step, "kind": "train", "critic/loss": 1.0})
        rows.append({"step": step, "kind": "eval", "eval/return": ret, "eval/normalized_score": score})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"steps": budget}))
    return run_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, final in enumerate([50.0, 60.0, 70.0]):
        evals = [(500, 10.0, 100.0), (1000, final, 10 * final)]
        fake_run(root, "td3bc", "hopper-medium-v2", seed, 1000, evals, True, ("bc",))
    fake_run(root, "td3bc", "hopper-medium-v2", 3, 1000, [(500, 30.0, 300.0)], False, ("bc",))  # in progress
    fake_run(root, "iql", "hopper-medium-v2", 0, 1000, [(500, 20.0, 200.0), (1000, 40.0, 400.0)], True)
    failed = fake_run(root, "iql", "hopper-medium-v2", 1, 1000, [(500, 5.0, 50.0)], False)
    fake_run(root, "sac", "Hopper-v5", 0, 2000, [(1000, None, 800.0), (2000, None, 1200.0)], True, online=True)
    fake_run(root, "sac", "Hopper-v5", 1, 2000, [(1000, None, 900.0), (2000, None, 1600.0)], True, online=True)
    # a sweep: one job failed in training, one failed before creating its run directory
    sweep = root / ".sweeps" / "2024-01-01_00-00-00"
    for num, info in enumerate([
        {"status": "failed", "run_dir": str(failed), "error": "NonFiniteError: 'bc/loss' became NaN/inf at step 612"},
        {"status": "started", "run_dir": None, "overrides": ["agent=nope"], "error": "ConfigError: agent=nope"},
    ]):  # fmt: skip
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / MANIFEST).write_text(json.dumps(info))
    return root


def test_table_rows_over_seeds(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summarize([runs], out)
    rows = {(r["agent"], r["dataset"]): r for r in read_csv(out / "results.csv")}
    assert list(rows) == [("sac", "Hopper-v5"), ("iql", "hopper-medium-v2"), ("td3bc-bc", "hopper-medium-v2")]

    td3bc = rows[("td3bc-bc", "hopper-medium-v2")]
    assert (td3bc["step_budget"], td3bc["seeds"], td3bc["seed_list"]) == ("1000", "3", "0;1;2")
    assert float(td3bc["score_mean"]) == pytest.approx(60.0)
    assert float(td3bc["score_std"]) == pytest.approx(math.sqrt(200 / 3), abs=1e-5)  # population std
    assert float(td3bc["return_mean"]) == pytest.approx(600.0)
    assert (td3bc["incomplete"], td3bc["failed"]) == ("1", "0")

    iql = rows[("iql", "hopper-medium-v2")]
    assert (iql["seeds"], iql["score_mean"], iql["score_std"], iql["failed"]) == ("1", "40.0", "0.0", "1")

    sac = rows[("sac", "Hopper-v5")]  # online, no reference returns: the return only
    assert (sac["step_budget"], sac["score_mean"], float(sac["return_mean"])) == ("2000", "", 1400.0)
    assert float(sac["return_std"]) == pytest.approx(200.0)

    md = (out / "results.md").read_text()
    # agents named as people write them (td3bc-bc is TD3+BC)
    assert "| TD3+BC | hopper-medium-v2 | 1000 | 3 | 60.0 ± 8.2 | 600.0 ± 81.6 | 1 | 0 |" in md
    assert "| SAC | Hopper-v5 | 2000 | 2 | n/a | 1400.0 ± 200.0 | 0 | 0 |" in md
    # unfinished runs are listed with how far they got and why
    unfinished = md.split("## Runs not finished")[1]
    assert "td3bc-bc/hopper-medium-v2/seed3 | incomplete | 500/1000 | 30.0 |" in unfinished
    assert "iql/hopper-medium-v2/seed1 | failed | 500/1000 | 5.0 | NonFiniteError: 'bc/loss' became" in unfinished
    assert "| failed | 0/? | n/a | ConfigError: agent=nope |" in unfinished
    statuses = sorted((r["agent"], r["seed"], r["status"]) for r in read_csv(out / "runs.csv"))
    assert ("iql", "1", "failed") in statuses and ("td3bc-bc", "3", "incomplete") in statuses
    assert sum(s == "finished" for _, _, s in statuses) == 6
    for png in ("curves_hopper-medium-v2.png", "curves_Hopper-v5.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in md


def test_a_budget_still_running_is_not_mixed_into_the_finished_one(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fake_run(root, "td3bc", "hopper-medium-v2", 0, 1000, [(1000, 50.0, 500.0)], True)
    extended = fake_run(root / "b", "td3bc", "hopper-medium-v2", 0, 2000, [(1000, 50.0, 500.0)], False)
    (extended / "summary.json").write_text(json.dumps({"steps": 1000}))  # written when it stopped at 1000
    records = collect_runs([root])
    assert [(r.budget, r.status) for r in records] == [(1000, "finished"), (2000, "incomplete")]


def test_run_and_sweep_arguments_select_their_runs(runs: Path, tmp_path: Path) -> None:
    single = runs / "td3bc-bc" / "hopper-medium-v2" / "seed0"
    assert [r.run_dir for r in collect_runs([single])] == [single.resolve()]
    sweep = runs / ".sweeps" / "2024-01-01_00-00-00"
    records = collect_runs([sweep])  # only the sweep's jobs, not everything under runs/
    assert [(r.agent, r.status) for r in records] == [("iql", "failed"), ("agent=nope", "failed")]


def test_cli_reports_missing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no run directories" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_sweep_manifest_from_a_local_multirun(tmp_path: Path, pendulum_dataset: Path) -> None:
    """A real (basic launcher) multirun: one job finishes, one fails on a missing dataset file; both are
    reported, the failure with its error."""
    shutil.copy(pendulum_dataset, tmp_path / "good.hdf5")
    overrides = [o for o in pendulum_offline_overrides(pendulum_dataset) if not o.startswith("dataset.path=")]
    cmd = [
        sys.executable, "-m", "rlreg.train", "--multirun", *overrides,
        f"dataset.path={tmp_path}/${{tag}}.hdf5", "tag=good,bad",
        "trainer.total_steps=20", "trainer.log_every=10", "trainer.eval_every=10", "trainer.eval_episodes=1",
        "trainer.checkpoint_every=10", "trainer.batch_size=16", "agent.actor_hidden=[16]", "agent.critic_hidden=[16]",
        "threads=1", "logging.wandb_mode=disabled", "logging.progress_bar=false", f"run_root={tmp_path / 'runs'}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # this checkout's rlreg
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "bad.hdf5" in proc.stderr  # hydra reports the failed job at the end
    (sweep,) = (tmp_path / "runs" / ".sweeps").iterdir()
    jobs = [json.loads((sweep / str(i) / MANIFEST).read_text()) for i in range(2)]
    assert [j["status"] for j in jobs] == ["completed", "failed"]
    assert jobs[0]["run_dir"] == str((tmp_path / "runs" / "td3bc-bc_good" / "pendulum-random" / "seed0").resolve())
    assert "DatasetError" in jobs[1]["error"] and "bad.hdf5" in jobs[1]["error"]
    assert not (tmp_path / MANIFEST).exists()  # nothing written outside the sweep

    out = tmp_path / "out"
    summarize([sweep], out, plots=False)
    rows = read_csv(out / "results.csv")
    assert [(r["agent"], r["seeds"], r["failed"]) for r in rows] == [
        ("td3bc-bc_bad", "0", "1"),
        ("td3bc-bc_good", "1", "0"),
    ]
    assert "DatasetError" in (out / "results.md").read_text()


def test_finetune_runs_of_two_datasets_are_two_rows(tmp_path: Path) -> None:
    """Fine-tuning runs are named as the trainer names their run directories (rlreg.runs): one row per dataset,
    not one row per env."""
    root = tmp_path / "runs"
    for dataset in ("hopper-medium-v2", "hopper-medium-replay-v2"):
        for seed in (0, 1):
            run_dir = fake_run(root, "spot", f"{dataset}-finetune", seed, 100, [(100, 50.0 + seed, 500.0)], True,
                               ("spot",))
            cfg = json.loads((run_dir / "config.json").read_text())
            cfg["trainer"]["mode"] = "finetune"
            cfg["dataset"] = {"name": dataset, "env": {"id": "Hopper-v5"}}
            cfg["env"] = {"id": "Hopper-v5"}
            (run_dir / "config.json").write_text(json.dumps(cfg))
    rows = summarize([root], tmp_path / "out", plots=False)["rows"]
    assert [(r.agent, r.dataset, len(r.seeds)) for r in rows] == [
        ("spot-spot", "hopper-medium-replay-v2-finetune", 2),
        ("spot-spot", "hopper-medium-v2-finetune", 2),
    ]


def test_results_and_trainers_name_runs_alike(tmp_path: Path) -> None:
    from conftest import run_config

    from rlreg.runs import config_to_dict, derive_run_dir, run_name, task_name

    for overrides in ([], ["agent=sac", "env=pendulum", "tag=x"], ["agent=spot", "trainer=finetune",
                                                                    "dataset=hopper-medium-replay-v2"]):
        run = run_config(overrides, tmp_path)
        stored = config_to_dict(run)
        assert (run_name(stored), task_name(stored)) == (run_name(run), task_name(run))
        assert derive_run_dir(run).parts[-3:-1] == (run_name(stored), task_name(stored))
