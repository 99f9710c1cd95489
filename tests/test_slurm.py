"""Cluster sweeps: launcher presets, the preemption signal path, and a real single-node SLURM.

The SLURM tests bring up a real cluster with scripts/slurm/up.sh (slurm-wlm + munge, slurmdbd + MariaDB
for accounting; installed with apt-get when missing) and stop it with scripts/slurm/down.sh. They need
root and hydra-submitit-launcher (``pip install -e ".[cluster]"``) and skip, saying why, otherwise.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from conftest import CONF_DIR, pendulum_offline_overrides, run_config

from rlreg.names import display_name
from rlreg.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rlreg.logging import read_metrics, stable_run_id
from rlreg.regularizers.bc import BCRegularizer
from rlreg.trainers import StopRequested, train

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "agent.actor_hidden=[32,32]",
    "agent.critic_hidden=[32,32]",
    "trainer.batch_size=32",
    "trainer.eval_episodes=1",
    "threads=1",
]
# Pendulum "normalized score": 100 * (R + 1600) / 1450, so the result tables have numbers to check.
REFS = ["dataset.env.ref_min_score=-1600", "dataset.env.ref_max_score=-150"]


def assert_same_final_state(a_dir: Path, b_dir: Path) -> None:
    a, b = (load_checkpoint(latest_checkpoint(d)) for d in (a_dir, b_dir))  # type: ignore[arg-type]
    assert a["step"] == b["step"]
    for key, value in a["learner"]["networks"].items():
        assert torch.equal(value, b["learner"]["networks"][key]), key
    for name, opt in a["learner"]["optimizers"].items():
        for pid, st in opt["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b["learner"]["optimizers"][name]["state"][pid][k]), (name, pid, k)
    assert read_metrics(a_dir / "metrics.jsonl") == read_metrics(b_dir / "metrics.jsonl")


# --------------------------------------------------------------------------------------------------
# Launcher presets (no cluster needed)
# --------------------------------------------------------------------------------------------------


def launcher_config(name: str) -> dict[str, Any]:
    plugin = "hydra_joblib_launcher" if name == "joblib" else "hydra_submitit_launcher"
    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f'the {name} preset needs {plugin.replace("_", "-")}: pip install -e ".[cluster]"')
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert isinstance(launcher, dict)
    if "setup" in launcher:  # resolve the one interpolation that does not need a running sweep
        launcher["setup"] = list(cfg.hydra.launcher.setup)
    launcher["_callbacks"] = OmegaConf.to_container(cfg.hydra.callbacks)
    return launcher


def test_slurm_preset_exposes_the_cluster_options() -> None:
    cfg = launcher_config("slurm")
    assert cfg["_target_"].endswith("submitit_launcher.SlurmLauncher")
    for key in ("partition", "timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "array_parallelism",
                "signal_delay_s", "max_num_timeout", "additional_parameters"):
        assert key in cfg, key
    assert cfg["signal_delay_s"] > 0 and cfg["max_num_timeout"] > 0
    assert cfg["setup"] == [f"export OMP_NUM_THREADS={cfg['cpus_per_task']}"]
    assert cfg["_callbacks"] == {"sweep_manifest": {"_target_": "rlreg.results.SweepManifest"}}


def test_local_and_joblib_presets() -> None:
    local = launcher_config("local")
    assert local["_target_"].endswith("submitit_launcher.LocalLauncher") and "partition" not in local
    joblib = launcher_config("joblib")
    assert joblib["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert joblib["n_jobs"] == 2


# --------------------------------------------------------------------------------------------------
# Stop signals handed on to the handler that was there before (submitit's), in-process
# --------------------------------------------------------------------------------------------------

OFFLINE = TINY + [
    "trainer.total_steps=40", "trainer.log_every=5", "trainer.eval_every=20", "trainer.checkpoint_every=20"
]  # fmt: skip


def signal_at(monkeypatch: pytest.MonkeyPatch, step: int, sig: int) -> None:
    original = BCRegularizer.after_update

    def after_update(self, s: int) -> None:  # type: ignore[no-untyped-def]
        original(self, s)
        if s == step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(BCRegularizer, "after_update", after_update)


def test_preemption_signal_checkpoints_then_hands_over_to_submitit(
    tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR2 with submitit's handler installed: checkpoint at the next step boundary, leave the loop and
    close the logs, then (rlreg.train) call submitit's handler, which requeues the job and exits."""
    base = pendulum_offline_overrides(pendulum_dataset) + OFFLINE
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)

    run = run_config(base + [f"run_dir={tmp_path / 'part'}"], tmp_path)
    calls: list[tuple[int, int]] = []

    class Requeued(SystemExit):
        pass

    def submitit_like(signum: int, frame: Any) -> None:  # requeue the job, then exit (as submitit does)
        ckpt = latest_checkpoint(tmp_path / "part")
        calls.append((signum, load_checkpoint(ckpt)["step"] if ckpt else -1))
        raise Requeued(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        signal_at(monkeypatch, 27, signal.SIGUSR2)
        with pytest.raises(StopRequested) as stop:
            train(run, announce=False)
        assert calls == [] and stop.value.signum == signal.SIGUSR2 and stop.value.handler is submitit_like
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # our handlers are gone
        assert load_checkpoint(Path(stop.value.checkpoint))["step"] == 27
        with pytest.raises(Requeued):
            stop.value.hand_over()
        assert calls == [(signal.SIGUSR2, 27)]
        monkeypatch.undo()
        train(run, announce=False)  # the requeued job
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert_same_final_state(tmp_path / "full", tmp_path / "part")


def test_stop_signal_without_previous_handler_just_stops(
    tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_config(pendulum_offline_overrides(pendulum_dataset) + OFFLINE, tmp_path)
    signal_at(monkeypatch, 9, signal.SIGUSR2)
    with pytest.raises(StopRequested) as stop:
        train(run, announce=False)
    assert stop.value.signum == signal.SIGUSR2 and stop.value.handler is None
    assert load_checkpoint(Path(stop.value.checkpoint))["step"] == 9
    stop.value.hand_over()  # nothing to hand over to


def test_signal_whose_previous_handler_returns_keeps_training(
    tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit ignores SIGTERM (SLURM sends it before killing or requeueing): checkpoint, go on."""
    base = pendulum_offline_overrides(pendulum_dataset) + OFFLINE + ["trainer.keep_checkpoints=10"]
    train(run_config(base + [f"run_dir={tmp_path / 'full'}"], tmp_path), announce=False)
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        signal_at(monkeypatch, 13, signal.SIGTERM)
        summary = train(run_config(base + [f"run_dir={tmp_path / 'part'}"], tmp_path), announce=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and summary["steps"] == 40
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == [
        "ckpt_0000000013.pt", "ckpt_0000000020.pt", "ckpt_0000000040.pt"
    ]
    assert_same_final_state(tmp_path / "full", tmp_path / "part")


# --------------------------------------------------------------------------------------------------
# A real single-node SLURM
# --------------------------------------------------------------------------------------------------


def _sh(*cmd: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running single-node SLURM cluster; yields the environment for its clients (SLURM_CONF)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("SLURM tests need root on Linux (scripts/slurm/up.sh starts munged, slurmctld and slurmd)")
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip('SLURM tests need hydra-submitit-launcher: pip install -e ".[cluster]"')
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "RLREG_SLURM_DIR": str(state), "WITH_ACCOUNTING": "1"}
    up = _sh("bash", str(ROOT / "scripts/slurm/up.sh"), env=env, timeout=900)
    if up.returncode in (2, 3):
        pytest.skip(f"cannot bring up SLURM here: {up.stderr.strip()}")
    try:
        if up.returncode != 0:
            logs = "\n".join(f"--- {p}\n{Path(p).read_text()[-2000:]}" for p in glob.glob(f"{state}/log/*.log"))
            pytest.fail(f"scripts/slurm/up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n{logs}")
        env["SLURM_CONF"] = str(state / "etc/slurm.conf")
        yield env
    finally:
        down = _sh("bash", str(ROOT / "scripts/slurm/down.sh"), env=env)
        print(down.stdout, down.stderr)


SWEEP_STEPS = 1000
SIGNALLED = 1  # job #1 of the sweep (td3bc, seed 1) receives the pre-timeout signal


@pytest.fixture(scope="module")
def sweep(slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2 x 2 multirun (agents x seeds) as one SLURM job array, wandb offline, with no wandb login; job
    #1 gets SIGUSR2 (SLURM's pre-timeout signal for submitit) once it is training."""
    from conftest import pendulum_dataset

    work = tmp_path_factory.mktemp("sweep")
    data = pendulum_dataset.__wrapped__(work)  # type: ignore[attr-defined]
    home = work / "home"  # no ~/.netrc, no wandb settings: offline mode must not need a login
    home.mkdir()
    env = {k: v for k, v in slurm.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    overrides = (
        pendulum_offline_overrides(data)
        + REFS
        + TINY
        + [
            f"trainer.total_steps={SWEEP_STEPS}",
            "agent.num_critics=2",  # keeps SAC-N's jobs short
            "trainer.log_every=50",
            "trainer.eval_every=500",
            "trainer.checkpoint_every=500",
            "logging.wandb_mode=offline",
            "logging.progress_bar=false",
            f"run_root={work / 'runs'}",
        ]
    )
    cmd = [sys.executable, "-m", "rlreg.train", "--multirun", "hydra/launcher=slurm",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
           *overrides, "agent=td3bc,sacn", "seed=0,1"]  # fmt: skip
    log = open(work / "multirun.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # wait until job #1 trains (it has logged metrics), then send SLURM's pre-timeout signal
        deadline = time.time() + 300
        manifest: dict[str, Any] = {}
        while time.time() < deadline and proc.poll() is None:
            found = glob.glob(str(work / "runs/.sweeps/*" / Path(str(SIGNALLED)) / "rlreg_job.json"))
            if found:
                manifest = json.loads(Path(found[0]).read_text())
                metrics = Path(manifest["run_dir"]) / "metrics.jsonl"
                if metrics.exists() and metrics.read_text().strip():
                    time.sleep(0.3)  # most likely between two log steps: the checkpoint holds device metric sums
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"job #{SIGNALLED} never started training:\n{(work / 'multirun.log').read_text()[-3000:]}")
        # scancel may keep retrying while the job is being requeued, and would then signal the requeued
        # job again: one delivery is enough
        try:
            subprocess.run(["scancel", "--signal=USR2", manifest["slurm_job"]], env=env, timeout=4)
        except subprocess.TimeoutExpired:
            pass
        rc = proc.wait(timeout=400)
    except BaseException:
        proc.kill()
        raise
    finally:
        log.close()
    output = (work / "multirun.log").read_text()
    assert rc == 0, output[-4000:]
    (sweep_dir,) = glob.glob(str(work / "runs/.sweeps/*"))
    # the launcher returns once every result file is written; the jobs end a moment later
    array = manifest["slurm_job"].split("_")[0]
    for _ in range(120):
        if not _sh("squeue", "-h", "-j", array, env=env).stdout.strip():
            break
        time.sleep(0.5)
    return {"work": work, "data": data, "overrides": overrides, "sweep_dir": Path(sweep_dir), "env": env,
            "signalled": manifest, "output": output}


def _jobs(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads((sweep["sweep_dir"] / str(i) / "rlreg_job.json").read_text()) for i in range(4)]


def _job_log(sweep: dict[str, Any], job: str) -> str:
    return (sweep["sweep_dir"] / ".submitit" / job / f"{job}_0_log.out").read_text()


def test_sweep_runs_as_one_job_array(sweep: dict[str, Any]) -> None:
    jobs = _jobs(sweep)
    assert [j["status"] for j in jobs] == ["completed"] * 4
    arrays = {j["slurm_job"].split("_")[0] for j in jobs}
    assert len(arrays) == 1 and sorted(j["slurm_job"].split("_")[1] for j in jobs) == ["0", "1", "2", "3"]
    (array,) = arrays
    sbatch = (sweep["sweep_dir"] / ".submitit" / array).glob("*.sh")
    assert "#SBATCH --array=0-3" in next(sbatch).read_text()
    names = sorted(Path(j["run_dir"]).relative_to(sweep["work"] / "runs").as_posix() for j in jobs)
    assert names == [f"{a}/pendulum-random/seed{s}" for a in ("sacn", "td3bc-bc") for s in (0, 1)]
    for job in jobs:
        run_dir = Path(job["run_dir"])
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in rows if r["kind"] == "eval"] == [500, 1000]
        assert {r["step"] for r in rows if r["kind"] == "train"} == set(range(50, SWEEP_STEPS + 1, 50))
        assert load_checkpoint(latest_checkpoint(run_dir))["step"] == SWEEP_STEPS  # type: ignore[arg-type]
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == SWEEP_STEPS
    acct = _sh("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State", env=sweep["env"])
    assert acct.returncode == 0, acct.stderr
    states = dict(line.split("|") for line in acct.stdout.split())
    assert {states[f"{array}_{i}"] for i in range(4)} == {"COMPLETED"}, acct.stdout


def test_signalled_job_is_requeued_and_ends_like_an_uninterrupted_run(sweep: dict[str, Any], tmp_path: Path) -> None:
    job = sweep["signalled"]["slurm_job"]
    log = _job_log(sweep, job)
    stops = re.findall(r"stop requested \(SIGUSR2\): checkpoint written to (\S+ckpt_(\d+)\.pt)", log)
    assert stops, log
    path, step = stops[0]
    assert 0 < int(step) < SWEEP_STEPS
    assert f"Requeued job {job}" in log
    assert log.count("Starting with JobEnvironment") == len(stops) + 1  # one start per requeue, plus the first
    assert f"[rlreg] resuming from {path}" in log
    manifest = json.loads((sweep["sweep_dir"] / str(SIGNALLED) / "rlreg_job.json").read_text())
    assert manifest["attempt"] == len(stops) and manifest["status"] == "completed"
    acct = _sh("sacct", "-n", "-X", "-P", "--duplicates", "-j", job, "-o", "JobID,State", env=sweep["env"])
    assert acct.stdout.split().count(f"{job}|REQUEUED") == len(stops), acct.stdout
    assert acct.stdout.split()[-1] == f"{job}|COMPLETED", acct.stdout

    # the same config, uninterrupted, in this process
    overrides = [o for o in sweep["overrides"] if not o.startswith(("run_root=", "logging."))]
    baseline = run_config(overrides + ["agent=td3bc", "seed=1", f"run_dir={tmp_path / 'baseline'}"], tmp_path)
    train(baseline, announce=False)
    assert_same_final_state(tmp_path / "baseline", Path(manifest["run_dir"]))


def test_wandb_offline_needs_no_login_and_continues_the_same_run(sweep: dict[str, Any]) -> None:
    for job in _jobs(sweep):
        run_dir = Path(job["run_dir"])
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        attempts = 1 + (job["attempt"] if job["slurm_job"] == sweep["signalled"]["slurm_job"] else 0)
        assert len(offline) == attempts, offline
        assert {p.name.rsplit("-", 1)[1] for p in offline} == {stable_run_id(run_dir)}
        assert all(any(p.glob("*.wandb")) for p in offline)
    logs = "".join(p.read_text() for p in (sweep["sweep_dir"] / ".submitit").glob("*_*/*_log.*"))
    assert "Traceback" not in logs and "wandb: ERROR" not in logs and "api key" not in logs.lower()


def test_results_over_the_sweep(sweep: dict[str, Any], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlreg.results", str(sweep["sweep_dir"]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=sweep["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [(r["agent"], r["dataset"], r["step_budget"], r["seeds"], r["seed_list"]) for r in rows] == [
        ("sacn", "pendulum-random", str(SWEEP_STEPS), "2", "0;1"),
        ("td3bc-bc", "pendulum-random", str(SWEEP_STEPS), "2", "0;1"),
    ]
    for row in rows:
        finals = []
        for seed in (0, 1):
            run_dir = sweep["work"] / "runs" / row["agent"] / "pendulum-random" / f"seed{seed}"
            last = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"][-1]
            assert last["step"] == SWEEP_STEPS
            finals.append(last["eval/normalized_score"])
        mean = sum(finals) / 2
        assert float(row["score_mean"]) == pytest.approx(mean, abs=1e-5)
        assert float(row["score_std"]) == pytest.approx(abs(finals[0] - finals[1]) / 2, abs=1e-5)
        assert row["incomplete"] == row["failed"] == "0"
        shown = display_name(row["agent"])  # tables name agents as people do (SAC-N, TD3+BC)
        assert f"| {shown} | pendulum-random | {SWEEP_STEPS} | 2 | {mean:.1f} ± " in result.stdout
    assert (tmp_path / "out" / "curves_pendulum-random.png").stat().st_size > 0
    assert "Runs not finished" not in (tmp_path / "out" / "results.md").read_text()
