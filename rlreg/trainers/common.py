"""What the offline and online trainers share: the run directory, seeding, the agent, metrics,
evaluation, NaN guards, stop signals and checkpoints with exact resume.

Order of a launch (:meth:`TrainerBase.train`): options are already checked (``rlreg.config``); the data
(and env) are loaded and checked; only then is the run directory created and locked, its half-written temp
files removed, its config and data fingerprint compared with the newest checkpoint that loads; then the
agent is built and restored. Names, run directories and checkpoint lookup live in :mod:`rlreg.runs`."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from rlreg.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    restore_rng,
    save_checkpoint,
    write_failure,
)
from rlreg.config import ConfigError, EnvConfig, RunConfig
from rlreg.envs import evaluate, normalized_score
from rlreg.errors import RunDirError, WriteError
from rlreg.learners.base import Learner
from rlreg.logging import MetricAccumulator, NonFiniteError, RunLogger, check_finite_parameters, progress_bar
from rlreg.runs import (
    check_same_run,
    clean_temp_files,
    config_to_dict,
    derive_run_dir,
    load_newest_checkpoint,
    no_loadable_checkpoint,
    read_config,
    run_name,
    task_name,
)

if TYPE_CHECKING:
    from rlreg.trainers.offline import OfflineData

# errno values of a write that failed for lack of room
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def resolve_device(name: str) -> torch.device:
    """The torch device of the ``device`` option; a device this machine lacks is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name!r}: this machine has no CUDA device usable by torch {torch.__version__}",
                              hint="use device=cpu (or device=auto, which picks CUDA when there is one)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r}: MPS is not available on this machine", hint="use device=cpu")
    return device


def check_env(config: EnvConfig, option: str) -> None:
    """Create the env of ``config`` (:func:`rlreg.envs.box_spaces`, which keeps its spaces for the launch): an
    unknown id (or a missing extra such as ``dmc``) is a :class:`ConfigError` naming ``option`` (``env.id``,
    ``dataset.env.id``), raised before the run dir exists."""
    import gymnasium as gym

    from rlreg.envs import box_spaces

    try:
        box_spaces(config)
    except (gym.error.Error, ImportError) as err:
        raise ConfigError(f"{option}={config.id!r}: {err}",
                          hint="see conf/env/ for the envs rlreg knows; any registered Gymnasium id works") from None


class StopRequested(Exception):
    """Raised after a checkpoint was written because the process was asked to stop (SIGTERM, SIGUSR1 or
    the submitit signal SIGUSR2).

    ``handler`` is the Python handler that the signal ``signum`` had before the trainer's (submitit's, which
    requeues the job); :meth:`hand_over` calls it, once the trainer has closed its logs (rlreg.train does)."""

    def __init__(self, checkpoint: str, signum: int | None = None, handler: Any = None) -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint
        self.signum = signum
        self.handler = handler

    def hand_over(self) -> None:
        """Pass the signal on to the previous handler, if it had one (submitit: requeue and exit)."""
        if self.signum is not None and callable(self.handler):
            self.handler(self.signum, None)


def _stop_signals() -> tuple[int, ...]:
    """SIGTERM, SIGUSR1, the signal submitit sends before a time limit or on preemption, and SIGINT (Ctrl-C)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    extra = getattr(signal, "SIG" + name, signal.SIGUSR2)
    return tuple(dict.fromkeys((signal.SIGTERM, signal.SIGUSR1, extra, signal.SIGINT)))


class TrainerBase:
    """Shared machinery; subclasses implement ``_setup`` and ``_train``."""

    def __init__(self, run: RunConfig, announce: bool = True) -> None:
        self.run = run
        self.announce = announce
        self.run_dir = derive_run_dir(run)
        self.device = resolve_device(run.device)
        if run.threads > 0:
            torch.set_num_threads(run.threads)
        self.metrics = MetricAccumulator()
        self.best_score: float | None = None
        self.last_eval: dict[str, Any] | None = None
        self.step = 0
        self._stop = False
        self._final_eval: tuple[Any, Any] | None = None
        self.obs_mean: np.ndarray | None = None
        self.obs_std: np.ndarray | None = None
        self.learner: Learner
        self.eval_env: EnvConfig
        self.pretrain_done: dict[str, int] = {}
        self.data_fingerprint: str | None = None  # hash of the dataset's arrays (offline data), see rlreg.runs
        self.data_source: str | None = None  # where those arrays came from (a file, a recipe)
        self.resuming = False
        self.wall_before = 0.0  # training seconds of earlier launches of this run (from the checkpoint)
        self._session_start: float | None = None
        self._lock: IO[str] | None = None  # the open .lock file while training (flock)
        self._stop_signals: list[int] = []  # signals received since the last check
        self._previous_handlers: dict[int, Any] = {}  # the handlers the trainer's replaced (submitit's, ...)
        self._bar_items: dict[str, Any] = {}  # what the progress bar shows after the step count

    # -- seeding -----------------------------------------------------------------------------------
    def _seed(self) -> None:
        seed = self.run.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # -- data and run directory -------------------------------------------------------------------
    def _load_data(self) -> None:
        """Load and check whatever data the run needs, before its run directory is created (offline and
        fine-tuning: the dataset). A bad file then leaves nothing behind that could block the fixed relaunch."""
        if self.run.env is not None:
            check_env(self.run.env, "env.id")

    def _prepare_run_dir(self) -> dict[str, Any] | None:
        """Create/lock the run dir and return the state of its newest loadable checkpoint, if any.

        A directory without a checkpoint has not started (an earlier launch failed before its first
        checkpoint): its config.json is replaced. With checkpoints, the configuration must be the stored one
        (up to :data:`~rlreg.runs.RESUMABLE_CHANGES`) and the data must have the stored fingerprint."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failure(self.run_dir, err) from None
        self._lock_run_dir()
        try:
            return self._open_run_dir()
        except BaseException:
            self._unlock_run_dir()
            raise

    def _open_run_dir(self) -> dict[str, Any] | None:
        removed = clean_temp_files(self.run_dir)
        if removed:
            self._say(f"removed {len(removed)} half-written temp file(s) of an interrupted launch: "
                      + ", ".join(p.name for p in removed))
        current = config_to_dict(self.run)
        state: dict[str, Any] | None = None
        if list_checkpoints(self.run_dir):
            stored = read_config(self.run_dir)
            ckpt, state, skipped = load_newest_checkpoint(self.run_dir, map_location=self.device)
            # the data is identified by its fingerprint when the checkpoint has one: a moved file is the same data
            moved = ("dataset.path",) if state is not None and state.get("data_fingerprint") else ()
            check_same_run(stored, current, self.run_dir, also_resumable=moved)
            if ckpt is None or state is None:
                raise no_loadable_checkpoint(self.run_dir, skipped)
            self._check_same_data(state, ckpt)
            for bad in skipped:
                # moved aside: left in place, newer unloadable files would count against trainer.keep_checkpoints
                # and could make the rotation delete the good checkpoints written after the resume
                aside = bad.path.with_name(bad.path.name + ".corrupt")
                bad.path.replace(aside)
                self._say(f"skipped checkpoint {bad} (moved aside to {aside.name})")
            self._say(f"resuming from {ckpt}" + (f" (skipped {len(skipped)} newer checkpoint(s) that do not load)"
                                                  if skipped else ""))
        else:
            for stale in ("metrics.jsonl", "summary.json"):  # from a launch that failed before its first checkpoint
                (self.run_dir / stale).unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(current, indent=2) + "\n")
        if self.data_fingerprint is not None:
            data = {"fingerprint": self.data_fingerprint, "source": self.data_source}
            atomic_write_text(self.run_dir / "data.json", json.dumps(data, indent=2) + "\n")
        return state

    def _check_same_data(self, state: dict[str, Any], ckpt: Path,
                         hint: str = "point dataset.path at the file the run was trained on, or set tag=<name> (or "
                                     "run_dir=<path>) to train a separate run on the new data") -> None:
        """A checkpoint (this run's, or the offline run a fine-tuning starts from) must come from the data loaded
        now: a :class:`RunDirError` naming both fingerprints otherwise."""
        stored = state.get("data_fingerprint")
        if stored is not None and self.data_fingerprint is not None and stored != self.data_fingerprint:
            raise RunDirError(
                f"{ckpt} was trained on other data: it records dataset fingerprint {stored}, the data loaded now "
                f"({self.data_source}) has {self.data_fingerprint}", hint=hint)

    def _lock_run_dir(self) -> None:
        """Hold an exclusive lock on ``<run_dir>/.lock`` while training: two processes must never write one run."""
        import fcntl

        try:
            self._lock = open(self.run_dir / ".lock", "w")
        except OSError as err:
            raise write_failure(self.run_dir / ".lock", err) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise RunDirError(
                f"{self.run_dir} is being trained by another process (lock {self.run_dir / '.lock'})",
                hint="wait for it or stop it, or set tag=<name> (or run_dir=<path>) to start a separate run",
            ) from None

    def _unlock_run_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _say(self, msg: str) -> None:
        if self.announce:
            print(f"[rlreg] {msg}", flush=True)

    # -- checkpoint --------------------------------------------------------------------------------
    def _base_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "learner": self.learner.full_state_dict(),
            "rng": capture_rng({"train": self.generator}, self.np_rng),
            "metrics": self.metrics.state_dict(),
            "best_score": self.best_score,
            "last_eval": json.dumps(self.last_eval),
            "obs_mean": None if self.obs_mean is None else torch.as_tensor(self.obs_mean),
            "obs_std": None if self.obs_std is None else torch.as_tensor(self.obs_std),
            "data_fingerprint": self.data_fingerprint,
            "wall_seconds": self._wall_seconds(),
        }

    def _wall_seconds(self) -> float:
        """Training seconds of this run over all its launches so far (to the ms: a checkpoint written within
        the first 50 ms of a launch still records that time)."""
        now = 0.0 if self._session_start is None else time.time() - self._session_start
        return round(self.wall_before + now, 3)

    def _intact(self, which: str = "previous") -> str:
        ckpt = latest_checkpoint(self.run_dir)
        return f"the {which} checkpoint {ckpt} is intact" if ckpt else "no checkpoint had been written yet"

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def save(self) -> Path:
        state = self._base_state()
        state["extra"] = self._extra_state()
        try:
            return save_checkpoint(self.run_dir, self.step, state, keep=self.run.trainer.keep_checkpoints)
        except WriteError as err:
            raise WriteError(f"{err}; {self._intact()}", hint=err.hint) from None

    def save_snapshot(self) -> Path:
        """The learner's networks alone (``snapshots/step_<k>.pt``): small, loadable with ``weights_only``."""
        path = self.run_dir / "snapshots" / f"step_{self.step:010d}.pt"
        try:
            atomic_torch_save({"step": self.step, "networks": self.learner.state_dict()}, path)
        except WriteError as err:
            raise WriteError(f"{err}; {self._intact()}", hint=err.hint) from None
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.learner.load_full_state_dict(state["learner"])
        restore_rng(state["rng"], {"train": self.generator}, self.np_rng)
        self.metrics.load_state_dict(state["metrics"])
        self.best_score = state["best_score"]
        self.last_eval = json.loads(state["last_eval"])
        self.wall_before = float(state.get("wall_seconds", 0.0))
        self._load_extra_state(state["extra"])

    # -- logging and guards ------------------------------------------------------------------------
    def _flush_metrics(self, logger: RunLogger, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        means, bad = self.metrics.flush()
        if bad:
            key, first = min(bad.items(), key=lambda kv: kv[1])
            self._diverged(f"loss term '{key}' became NaN/inf at step {first}")
        param = check_finite_parameters(dict(self.learner.named_parameters()))
        if param is not None:
            self._diverged(f"parameter '{param}' became NaN/inf by step {self.step}")
        row = {"step": self.step, "kind": "train", **means, **(extra or {})}
        logger.log(row)
        return row

    def _diverged(self, what: str) -> None:
        raise NonFiniteError(f"training stopped: {what}; {self._intact('last good')}.")

    def _evaluate(self, logger: RunLogger) -> dict[str, Any]:
        t = self.run.trainer
        result = evaluate(
            lambda obs: torch.from_numpy(self.learner.act_env(obs, deterministic=True)),
            self.eval_env,
            episodes=t.eval_episodes,
            seed=self.run.seed + t.eval_seed_offset,
            device=self.device,
        )
        ret = result.mean_return
        score = normalized_score(ret, self.eval_env.ref_min_score, self.eval_env.ref_max_score)
        row = {
            "step": self.step,
            "kind": "eval",
            "eval/return": ret,
            "eval/return_std": float(result.returns.std()),
            "eval/normalized_score": score,
            "eval/episode_length": float(result.lengths.mean()),
        }
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score = score
        row["eval/best_normalized_score"] = self.best_score
        self.last_eval = row
        logger.log(row)
        return row

    def _after_step(self, logger: RunLogger, bar: Any, extra: dict[str, Any] | None = None) -> None:
        """Log every ``log_every`` steps, evaluate every ``eval_every``, checkpoint every
        ``checkpoint_every`` and at the end of the budget. An evaluation at the end of a budget that is
        off the ``eval_every`` schedule is reported but kept out of the checkpoint (and dropped from the
        metrics if the run is later extended), so extending a run equals running it uninterrupted."""
        t = self.run.trainer
        final = self.step == t.total_steps
        if self.step % t.log_every == 0 or final:
            row = self._flush_metrics(logger, extra)
            # the progress bar also shows the trainer's counters (e.g. updates) and the learner's progress_keys
            # metrics (e.g. MBPO's model/holdout_mse) of the last window
            keys = self.learner.progress_keys
            self._postfix(bar, **(extra or {}), **{k.split("/")[-1]: round(row[k], 4) for k in keys if k in row})
        on_schedule = self.step % t.eval_every == 0
        if on_schedule:
            self._show(bar, self._evaluate(logger))
        if self.step % t.checkpoint_every == 0 or final:
            self.save()
        if t.snapshot_every and self.step % t.snapshot_every == 0:
            self.save_snapshot()
        if final and not on_schedule:
            saved = (self.best_score, self.last_eval)
            self._show(bar, self._evaluate(logger))
            self._final_eval = (self.best_score, self.last_eval)
            self.best_score, self.last_eval = saved
        bar.update(1)
        self._check_stop()

    # -- regularizer pre-training -----------------------------------------------------------------
    def _pretrain_batch(self, reg: Any, batch_size: int) -> Any:
        """A batch for ``reg``'s pre-training phase (the offline buffer, or data the regularizer owns)."""
        raise NotImplementedError

    def _pretrain(self, logger: RunLogger) -> None:
        """Pre-training phases of regularizers (e.g. SPOT's VAE, DemoReg's BC prior), resumable like the
        main loop: progress is counted per regularizer in ``self.pretrain_done`` and checkpointed."""
        t = self.run.trainer
        for reg in self.learner.regularizers:
            total = reg.pretrain_steps
            done = self.pretrain_done[reg.name]
            if done >= total:
                continue
            bar = progress_bar(total, done, self.run.logging.progress_bar, f"pretrain {reg.name}")
            for i in range(done + 1, total + 1):
                batch = self._pretrain_batch(reg, t.batch_size)
                self.metrics.add({f"pretrain/{reg.name}/{k}": v for k, v in reg.pretrain_step(batch, i).items()}, i)
                self.pretrain_done[reg.name] = i
                if i >= reg.pretrain_steps:  # finished (possibly early): before the checkpoint below
                    self.learner.on_pretrain_finished(reg)
                if i % t.log_every == 0 or i == total:
                    self._flush_metrics(logger, {"pretrain_step": i})
                if i % t.checkpoint_every == 0 or i == total:
                    self.save()
                bar.update(1)
                self._check_stop()
            bar.close()

    def _show(self, bar: Any, row: dict[str, Any]) -> None:
        score = row["eval/normalized_score"]
        self._postfix(bar, ret=round(row["eval/return"], 1), **({} if score is None else {"score": round(score, 1)}))

    def _postfix(self, bar: Any, **items: Any) -> None:
        """Update the progress bar's postfix, keeping the items shown before (eval return, counters, metrics)."""
        self._bar_items = {**self._bar_items, **items}
        bar.set_postfix(**self._bar_items)

    # -- stop signals ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """Catch SIGTERM, SIGUSR1, the submitit preemption signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL``
        names another) and SIGINT (Ctrl-C): each only sets a flag, acted on at the next step boundary by
        :meth:`_check_stop`. A second Ctrl-C before that raises KeyboardInterrupt at once. Returns the
        previous handlers (restored when training ends)."""
        previous: dict[int, Any] = {}
        self._stop_signals = []

        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                if signal.SIGINT in self._stop_signals:
                    raise KeyboardInterrupt
                self._say("Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to quit at once)")
            self._stop = True
            if signum not in self._stop_signals:
                self._stop_signals.append(signum)

        for sig in _stop_signals():
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        # handlers the stop is handed over to (submitit's); Python's Ctrl-C handler would only raise
        self._previous_handlers = {k: v for k, v in previous.items() if k != signal.SIGINT}
        return previous

    def _check_stop(self) -> None:
        """At a step boundary after a stop signal, write a checkpoint. SIGTERM with a Python handler installed
        before ours (submitit ignores it: SLURM sends it before it kills or requeues a job) is passed to that
        handler and training goes on. Any other signal stops training with :class:`StopRequested`, which
        carries the signal's previous handler so that it can be called once the logs are closed."""
        if not self._stop:
            return
        self._stop = False
        received, self._stop_signals = self._stop_signals, []
        path = self.save()
        previous = self._previous_handlers
        stopping = []
        for sig in received:
            if sig == signal.SIGTERM and callable(previous.get(sig)):
                self._say(f"SIGTERM: checkpoint written to {path}")
                previous[sig](sig, None)
            else:
                stopping.append(sig)
        if stopping or not received:
            sig = next((s for s in stopping if callable(previous.get(s))), stopping[0] if stopping else None)
            name = "" if sig is None else f" ({signal.Signals(sig).name})"
            self._say(f"stop requested{name}: checkpoint written to {path}")
            handler = previous.get(sig) if sig is not None and callable(previous.get(sig)) else None
            raise StopRequested(str(path), sig, handler)

    # -- main --------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run (or resume) training to ``trainer.total_steps``; return the summary."""
        self._seed()
        self._load_data()  # bad data fails here, before anything is written
        state = self._prepare_run_dir()
        try:
            return self._train_locked(state)
        finally:
            self._unlock_run_dir()

    def _use_data(self, data: "OfflineData") -> None:
        """Train on the offline ``data``: its fingerprint and source are recorded for the resume and fine-tuning
        checks (one dataset may serve several trainers, e.g. the K runs of ``seeds=[...]``)."""
        self.data = data
        self.data_fingerprint, self.data_source = data.fingerprint, data.dataset.source

    def _begin(self, state: dict[str, Any] | None) -> None:
        """Build the learner (:meth:`_setup`) and restore ``state``: a checkpoint, or None for a fresh run."""
        self.resuming = state is not None
        self._setup()
        if state is not None:
            self._restore(state)

    def _logger(self) -> RunLogger:
        """The run's metrics log (and wandb run), continuing at the current step."""
        log, eval_every = self.run.logging, self.run.trainer.eval_every
        return RunLogger(
            self.run_dir, config_to_dict(self.run), wandb_mode=log.wandb_mode, project=log.project, entity=log.entity,
            group=log.group, name=f"{run_name(self.run)}/{task_name(self.run)}/seed{self.run.seed}",
            resume_step=self.step,
            # an evaluation off the schedule (at a stop signal) is reported but not kept in the log
            drop=lambda row: row.get("kind") == "eval" and row["step"] % eval_every != 0,
        )

    def _train_locked(self, state: dict[str, Any] | None) -> dict[str, Any]:
        self._begin(state)
        start_step = self.step
        logger = self._logger()
        previous = self._install_signal_handlers()
        self._session_start = time.time()
        failed = True
        try:
            self._train(logger)
            failed = False
        except OSError as err:
            if isinstance(err, WriteError) or err.errno not in _FULL:
                raise
            # a log file (metrics.jsonl, wandb's files) could not be written
            where = Path(err.filename) if err.filename else logger.path
            raise WriteError(f"{write_failure(where, err)}; {self._intact()}", hint="free space (or raise the "
                             "limit) and rerun the same command to resume") from None
        finally:
            try:
                logger.close()
            except OSError:
                if not failed:
                    raise
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.write_summary(start_step)

    def write_summary(self, start_step: int) -> dict[str, Any]:
        """Write and return ``summary.json`` (a finished run relaunched keeps its real ``wall_seconds``)."""
        if self._final_eval is not None:
            self.best_score, self.last_eval = self._final_eval
        summary = {
            "run_dir": str(self.run_dir),
            "checkpoint": str(latest_checkpoint(self.run_dir)),
            "metrics": str(self.run_dir / "metrics.jsonl"),
            "steps": self.step,
            "last_return": None if self.last_eval is None else self.last_eval["eval/return"],
            "last_normalized_score": None if self.last_eval is None else self.last_eval["eval/normalized_score"],
            "best_normalized_score": self.best_score,
            # a launch that trained nothing (a finished run relaunched) adds no time
            "wall_seconds": self.wall_before if self.step == start_step else self._wall_seconds(),
        }
        summary_path = self.run_dir / "summary.json"
        if self.step == start_step and summary_path.exists():  # a finished run relaunched: nothing was trained
            try:
                old = json.loads(summary_path.read_text())
                if old.get("steps") == self.step and old.get("wall_seconds") is not None:
                    summary["wall_seconds"] = old["wall_seconds"]
            except (OSError, json.JSONDecodeError):
                pass
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
        return summary

    def _setup(self) -> None:
        raise NotImplementedError

    def _train(self, logger: RunLogger) -> None:
        raise NotImplementedError
