"""Faults and bad input (issue 16): every failure is one clear [rlreg] line, a fixed relaunch always works, and
nothing half-written is left behind. Bad files are written by the tests; kill -9 and a full disk happen in
subprocesses."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import pendulum_offline_overrides, run_config

from rlreg.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from rlreg.config import ConfigError, DatasetConfig, EnvConfig, OptionError, TrainerConfig
from rlreg.data.d4rl import write_d4rl_hdf5
from rlreg.data.errors import DatasetError
from rlreg.errors import RunDirError
from rlreg.regularizers.bc import BCRegularizer
from rlreg.runs import check_same_run, config_to_dict, data_fingerprint, derive_run_dir, load_run, option_name
from rlreg.trainers import StopRequested, train

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "trainer.total_steps=20",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=10",
    "trainer.batch_size=16",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
]
CLI = ["logging.wandb_mode=disabled", "logging.progress_bar=false", "threads=1"]


def offline(path: Path, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_config(pendulum_offline_overrides(path) + TINY + list(extra), tmp_path)


def cli(args: list[str], tmp_path: Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rlreg.train`` of this checkout in a subprocess (optionally with a file size limit)."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "rlreg.train", *args, *CLI, f"run_root={tmp_path / 'runs'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)


def rlreg_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[rlreg]")]


def corrupt(path: Path, key: str, row: int, value: float) -> None:
    with h5py.File(path, "r+") as f:
        data = f[key][:]
        data[row] = value
        f[key][...] = data


# -- 1 + 8: bad data fails before the run directory exists; the fixed relaunch works; one line, exit 2 ---------


def test_bad_data_leaves_no_run_dir_and_the_fix_trains(tmp_path: Path, pendulum_dataset: Path) -> None:
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(pendulum_dataset.read_bytes())
    corrupt(bad, "rewards", 7, np.nan)
    base = [o for o in pendulum_offline_overrides(pendulum_dataset) if not o.startswith("dataset.path=")] + TINY

    def launch(*extra: str) -> tuple[int, str, str]:
        # a subprocess: Hydra's in-process logging would hold pytest's captured (later closed) streams
        done = cli(base + list(extra), tmp_path)
        return done.returncode, done.stdout, done.stderr

    code, _, err = launch(f"dataset.path={bad}")
    assert code == 2 and "Traceback" not in err
    first, hint = rlreg_lines(err)
    assert "bad.hdf5" in first and "'rewards'" in first and "NaN" in first and hint.startswith("[rlreg] hint:")
    assert not (tmp_path / "runs").exists()  # nothing written: the fix cannot be refused

    # a run directory left by an older failed launch (config.json of another configuration, no checkpoint)
    run = offline(pendulum_dataset, tmp_path)
    run_dir = derive_run_dir(run)
    run_dir.mkdir(parents=True)
    other = config_to_dict(offline(bad, tmp_path, "agent.actor_lr=0.1"))
    (run_dir / "config.json").write_text(json.dumps(other))
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "kind": "train", "pretrain/x": 1}\n')
    code, out, err = launch(f"dataset.path={pendulum_dataset}")
    assert code == 0, err
    assert "[rlreg] finished 20 steps" in out
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 20  # type: ignore[arg-type]
    assert json.loads((run_dir / "config.json").read_text())["agent"]["learner_config"]["actor_lr"] != 0.1
    assert "pretrain/x" not in (run_dir / "metrics.jsonl").read_text()

    # the refusals: another configuration (names the option as typed) and a run held by another process
    code, _, err = launch(f"dataset.path={pendulum_dataset}", "agent.actor_lr=0.1")
    assert code == 2 and "Traceback" not in err
    first, hint = rlreg_lines(err)
    assert "agent.actor_lr: 0.0003 -> 0.1" in first and "learner_config" not in err and "tag=" in hint
    import fcntl

    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = launch(f"dataset.path={pendulum_dataset}", "trainer.total_steps=30")
    assert code == 2 and "Traceback" not in err and "another process" in rlreg_lines(err)[0]
    code, _, err = launch(f"dataset.path={pendulum_dataset}", "trainer.eval_episodes=0")
    assert (code, rlreg_lines(err)[0]) == (2, "[rlreg] trainer.eval_episodes must be >= 1, got 0")


# -- 2: errors name options that exist -------------------------------------------------------------------


def test_errors_name_the_options_as_typed(tmp_path: Path) -> None:
    assert option_name("agent.learner_config.actor_lr") == "agent.actor_lr"
    assert option_name("agent.regularizers.bc.weight") == "regularizer.bc.weight"
    assert option_name("agent.name") == "agent" and option_name("trainer.batch_size") == "trainer.batch_size"
    a = config_to_dict(run_config([], tmp_path))
    b = config_to_dict(run_config(["agent.actor_lr=1e-3", "regularizer.bc.weight=2.0"], tmp_path))
    with pytest.raises(ConfigError) as err:
        check_same_run(a, b, tmp_path)
    assert "agent.actor_lr: 0.0003 -> 0.001" in str(err.value) and "regularizer.bc.weight" in str(err.value)
    assert "learner_config" not in str(err.value)

    from rlreg.data.minari_io import load_minari
    from rlreg.train import precheck

    with pytest.raises(DatasetError) as missing:
        load_minari("rlregtest/missing-v0", data_path=tmp_path)
    assert "dataset.path" in str(missing.value) and "data_path" not in str(missing.value)

    with pytest.raises(ConfigError) as reg:
        precheck(["regularizer=[bc,nope]"])
    assert "regularizer=nope" in str(reg.value) and "bc, beer, demoreg, edac" in str(reg.value)
    with pytest.raises(ConfigError, match="agent.gama: unknown option"):
        precheck(["agent.gama=0.9"])
    with pytest.raises(ConfigError, match="device='nope'"):
        run_config(["device=nope"], tmp_path)
    with pytest.raises(ConfigError, match="dataset.env.id='Hoper-v5'.*Did you mean"):
        train(run_config(["dataset.env.id=Hoper-v5"], tmp_path), announce=False)
    with pytest.raises(ConfigError, match="env.id='Pendulum-v9'"):
        train(run_config(["agent=sac", "env=pendulum", "env.id=Pendulum-v9"], tmp_path), announce=False)
    assert not (tmp_path / "runs").exists()


# -- 3: a custom file under an official dataset name ----------------------------------------------------


def test_own_file_with_a_d4rl_datasets_env(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    mine = tmp_path / "my_hopper.hdf5"
    write_d4rl_hdf5(mine, observations=rng.normal(size=(n, 11)).astype(np.float32),
                    actions=rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
                    rewards=rng.normal(size=n).astype(np.float32), terminals=np.zeros(n, bool),
                    timeouts=(np.arange(n) % 100 == 99))
    with pytest.raises(DatasetError) as err:  # the id names an official file: checked, refused, and how to go on
        train(run_config(["dataset=hopper-medium-v2", f"dataset.path={mine}"] + TINY, tmp_path), announce=False)
    assert "dataset.verify=off dataset.name=<your name>" in str(err.value)
    assert not (tmp_path / "runs").exists()
    run = run_config(["dataset=hopper-medium-v2", f"dataset.path={mine}", "dataset.verify=off",
                      "dataset.name=my-hopper"] + TINY, tmp_path)
    summary = train(run, announce=False)
    assert Path(summary["run_dir"]) == tmp_path / "runs" / "td3bc-bc" / "my-hopper" / "seed0"
    assert run.dataset is not None and run.dataset.env.ref_max_score == 3234.3  # hopper's reference scores
    assert summary["last_normalized_score"] is not None


# -- 4: half-written temp files after kill -9 --------------------------------------------------------------

KILL_DURING_SAVE = """
import os, signal, sys
import rlreg.checkpoint as ck
real = ck.torch.save
def save(obj, fh, *a, **k):
    if obj.get("step") == 20:  # the second checkpoint: write part of it, then die like kill -9
        fh.write(b"PK\\x03\\x04 half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, fh, *a, **k)
ck.torch.save = save
from rlreg.train import main
sys.argv = ["rlreg.train"] + sys.argv[1:]
main()
"""


def test_temp_files_of_a_killed_run_are_removed_on_its_next_start(tmp_path: Path, pendulum_dataset: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_SAVE)
    run = offline(pendulum_dataset, tmp_path)
    run_dir = derive_run_dir(run)
    other = tmp_path / "runs" / "other" / "pendulum-random" / "seed0" / "checkpoints"  # another run's file
    other.mkdir(parents=True)
    (other / ".ckpt_0000000010.pt.tmp1").write_bytes(b"not mine")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), *pendulum_offline_overrides(pendulum_dataset), *TINY, *CLI,
                           f"run_root={tmp_path / 'runs'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = (run_dir / "checkpoints").glob(".ckpt_*.tmp*")
    assert left.name.startswith(".ckpt_0000000020.pt.tmp")
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt_0000000010.pt"]

    train(run, announce=False)
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))
    assert (other / ".ckpt_0000000010.pt.tmp1").exists()
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 20  # type: ignore[arg-type]


# -- 5: a corrupt newest checkpoint is skipped, saying why (training and robustness) --------------------


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_resume_skips_checkpoints_that_do_not_load(
    tmp_path: Path, pendulum_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = offline(pendulum_dataset, tmp_path, "trainer.total_steps=30", "trainer.keep_checkpoints=5")
    run_dir = derive_run_dir(run)
    train(run, announce=False)
    ck10, ck20, ck30 = list_checkpoints(run_dir)
    ck30.write_bytes(ck30.read_bytes()[: ck30.stat().st_size // 2])  # truncated
    torch.save({"step": 20, "payload": Evil()}, ck20)  # pickled code
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ck30)
    assert str(ck30) in str(err.value) and "weights_only" not in str(err.value)

    from rlreg.robustness import load_run as load_for_attacks

    loaded = load_for_attacks(run_dir)
    assert loaded.checkpoint == ck10
    err_out = capsys.readouterr().err
    assert f"skipped checkpoint {ck30}: unreadable, truncated or corrupt" in err_out
    assert f"skipped checkpoint {ck20}: holds pickled objects" in err_out and "could run code" in err_out
    assert load_run(run_dir).skipped[0].path == ck30

    train(offline(pendulum_dataset, tmp_path, "trainer.total_steps=40", "trainer.keep_checkpoints=5"))
    out = capsys.readouterr().out
    assert f"skipped checkpoint {ck30}" in out and f"skipped checkpoint {ck20}" in out
    assert f"resuming from {ck10}" in out
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 40  # type: ignore[arg-type]
    assert load_checkpoint(ck30)["step"] == 30  # rewritten by the resumed run
    # the unloadable files were moved aside, so the rotation never counted them against keep_checkpoints
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.corrupt")) == [
        "ckpt_0000000020.pt.corrupt", "ckpt_0000000030.pt.corrupt"]

    for ckpt in list_checkpoints(run_dir):
        ckpt.write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="none of its 4 checkpoint"):
        train(offline(pendulum_dataset, tmp_path, "trainer.total_steps=50", "trainer.keep_checkpoints=5"),
              announce=False)


def test_unloadable_newer_checkpoints_never_push_good_ones_out(tmp_path: Path, pendulum_dataset: Path) -> None:
    run = offline(pendulum_dataset, tmp_path, "trainer.keep_checkpoints=2")
    run_dir = derive_run_dir(run)
    train(run, announce=False)
    for step in (50, 60):  # garbage under newer step numbers than any good checkpoint
        (run_dir / "checkpoints" / f"ckpt_{step:010d}.pt").write_bytes(b"garbage")
    train(offline(pendulum_dataset, tmp_path, "trainer.keep_checkpoints=2", "trainer.total_steps=25"), announce=False)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(run_dir)] == [20, 25]


# -- 6: disk full -----------------------------------------------------------------------------------------


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(tmp_path: Path, pendulum_dataset: Path) -> None:
    train(offline(pendulum_dataset, tmp_path), announce=False)
    run_dir = derive_run_dir(offline(pendulum_dataset, tmp_path))
    ck20 = latest_checkpoint(run_dir)
    assert ck20 is not None
    size = ck20.stat().st_size
    base = pendulum_offline_overrides(pendulum_dataset) + TINY
    proc = cli(base + ["trainer.total_steps=30"], tmp_path, limit_bytes=size // 2)  # no room for a checkpoint
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first, hint = rlreg_lines(proc.stderr)
    assert f"could not write {run_dir / 'checkpoints' / 'ckpt_0000000030.pt'}" in first
    assert "file size limit" in first and f"the previous checkpoint {ck20} is intact" in first
    assert "rerun the same command" in hint
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))
    assert load_checkpoint(ck20)["step"] == 20
    train(offline(pendulum_dataset, tmp_path, "trainer.total_steps=30"), announce=False)  # room again: it resumes
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 30  # type: ignore[arg-type]


# -- 7: numeric ranges at parse time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.eval_episodes=0", "trainer.eval_episodes must be >= 1, got 0"),
        ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints must be >= 1"),
        ("agent=sac env=pendulum trainer.warmup_steps=-1", "trainer.warmup_steps must be >= 0"),
        ("agent=sac env=pendulum trainer.buffer_size=0", "trainer.buffer_size must be >= 1"),
        ("+trainer.warmup_policy=greedy", "trainer.warmup_policy='greedy' is unknown"),
        ("dataset.state_std_eps=-1", "dataset.state_std_eps must be >= 0"),
        ("dataset.reward_scale=nan", "dataset.reward_scale must be a finite number"),
        ("dataset.reward_transform=log", "dataset.reward_transform='log' is unknown"),
        ("dataset.env.max_episode_steps=0", "dataset.env.max_episode_steps must be >= 1"),
        ("dataset.env.ref_max_score=-100", "dataset.env.ref_max_score (-100.0) must be greater than"),
        ("logging.wandb_mode=sometimes", "logging.wandb_mode='sometimes' is unknown"),
        ("seed=-1", "seed must be in [0, 4294967295], got -1"),
        ("threads=-2", "threads must be >= 0"),
    ],
)
def test_ranges_are_checked_at_parse_time(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        run_config(override.split(), tmp_path)
    assert message in str(err.value)


def test_config_dataclasses_check_their_ranges() -> None:
    with pytest.raises(OptionError, match="eval_episodes must be >= 1"):
        TrainerConfig(eval_episodes=0)
    with pytest.raises(OptionError, match=r"checkpoint_every \(7\) must be a multiple of log_every \(5\)"):
        TrainerConfig(checkpoint_every=7, log_every=5)
    with pytest.raises(OptionError, match="action_noise must be >= 0"):
        DatasetConfig(action_noise=-0.1)
    with pytest.raises(OptionError, match=r"ref_max_score \(1.0\) must be greater than ref_min_score \(2.0\)"):
        EnvConfig(ref_min_score=2.0, ref_max_score=1.0)
    with pytest.raises(OptionError, match="max_episode_steps must be >= 1"):
        EnvConfig(max_episode_steps=0)


# -- 9: data identity by content --------------------------------------------------------------------------


def test_resume_refuses_other_data_and_accepts_a_moved_copy(tmp_path: Path, pendulum_dataset: Path) -> None:
    from rlreg.data.sources import load_dataset

    run = offline(pendulum_dataset, tmp_path)
    train(run, announce=False)
    run_dir = derive_run_dir(run)
    assert run.dataset is not None
    fingerprint = data_fingerprint(load_dataset(run.dataset))
    assert load_checkpoint(latest_checkpoint(run_dir))["data_fingerprint"] == fingerprint  # type: ignore[arg-type]
    assert json.loads((run_dir / "data.json").read_text())["fingerprint"] == fingerprint

    moved = tmp_path / "elsewhere" / "copy.hdf5"
    moved.parent.mkdir()
    moved.write_bytes(pendulum_dataset.read_bytes())
    original = pendulum_dataset.read_bytes()
    corrupt(pendulum_dataset, "rewards", 3, 0.125)  # same path, one value changed
    with pytest.raises(RunDirError, match="trained on other data"):
        train(offline(pendulum_dataset, tmp_path, "trainer.total_steps=30"), announce=False)
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 20  # type: ignore[arg-type]

    pendulum_dataset.unlink()
    summary = train(offline(moved, tmp_path, "trainer.total_steps=30"), announce=False)  # same data, new path
    assert summary["steps"] == 30
    pendulum_dataset.write_bytes(original)


def test_flags_that_are_not_flags_are_refused(tmp_path: Path, pendulum_dataset: Path) -> None:
    with h5py.File(pendulum_dataset, "r+") as f:  # a corrupted row of a custom file: terminals stored as floats
        terminals = f["terminals"][:].astype(np.float32)
        terminals[11] = 0.37
        del f["terminals"]
        f["terminals"] = terminals
    with pytest.raises(DatasetError, match=r"pendulum_random\.hdf5: key 'terminals' has 1 value\(s\) other than "
                       r"0/1 \(first at row 11"):
        train(offline(pendulum_dataset, tmp_path), announce=False)
    assert not (tmp_path / "runs").exists()


# -- 10: Ctrl-C checkpoints like SIGTERM; a finished run keeps its wall time --------------------------------


def test_ctrl_c_writes_a_checkpoint_and_a_second_quits_at_once(
    tmp_path: Path, pendulum_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = offline(pendulum_dataset, tmp_path)
    run_dir = derive_run_dir(run)
    original = BCRegularizer.after_update
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c(self, s: int) -> None:  # type: ignore[no-untyped-def]
        original(self, s)
        if s == 7:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(BCRegularizer, "after_update", ctrl_c)
    with pytest.raises(StopRequested) as stop:
        train(run, announce=False)
    assert stop.value.signum == signal.SIGINT and stop.value.handler is None
    assert load_checkpoint(Path(stop.value.checkpoint))["step"] == 7
    assert signal.getsignal(signal.SIGINT) is before  # restored

    def twice(self, s: int) -> None:  # type: ignore[no-untyped-def]
        original(self, s)
        if s == 12:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the Python handler runs at the next bytecode boundaries
                pass
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(BCRegularizer, "after_update", twice)
    with pytest.raises(KeyboardInterrupt):
        train(run, announce=False)
    assert [int(p.name[5:15]) for p in list_checkpoints(run_dir)] == [7, 10]  # none written at step 12
    monkeypatch.undo()


def test_ctrl_c_in_the_cli_exits_130_and_the_finished_run_keeps_its_wall_time(
    tmp_path: Path, pendulum_dataset: Path
) -> None:
    base = pendulum_offline_overrides(pendulum_dataset) + TINY
    run_dir = derive_run_dir(offline(pendulum_dataset, tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlreg.train", *base, "trainer.total_steps=1000000", *CLI,
                             f"run_root={tmp_path / 'runs'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while latest_checkpoint(run_dir) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun the same command to resume" in out
    stopped = latest_checkpoint(run_dir)
    assert stopped is not None and load_checkpoint(stopped)["step"] >= 10

    step = load_checkpoint(stopped)["step"]
    wall = load_checkpoint(stopped)["wall_seconds"]
    assert wall > 0
    summary = train(offline(pendulum_dataset, tmp_path, f"trainer.total_steps={step}"), announce=False)
    assert summary["steps"] == step and summary["wall_seconds"] == wall  # the real time, not 0.0
    again = train(offline(pendulum_dataset, tmp_path, f"trainer.total_steps={step}"), announce=False)
    assert again["wall_seconds"] == wall
    assert json.loads((run_dir / "summary.json").read_text())["wall_seconds"] == wall
