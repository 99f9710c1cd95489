"""K offline runs that differ only in their seed, trained in one process (``seeds=[0,1,2,3]``).

Each run is an ordinary :class:`~rlreg.trainers.offline.OfflineTrainer`: its own run directory
(``.../seed<k>``), config, lock, generator, metrics, evaluations, checkpoints and summary, written exactly as
a single run writes them, so that ``rlreg.results`` and resume see K separate runs (a K-seed run can be resumed
one seed at a time, and K single runs at the same step can be resumed together). Only the gradient updates are
shared: :class:`rlreg.seeds.SeedStack` updates the K learners as one batched computation, and writes them back
into the K learner objects before anything reads them (metrics flush, evaluation, checkpoint, snapshot).

Supported: offline training of TD3-family agents whose regularizers only add loss terms (td3, td3bc) and of
SAC-family agents with the sequential update order and no regularizers (sacn); :func:`rlreg.seeds.check_supported`
names what is not.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

from rlreg.config import ConfigError, RunConfig
from rlreg.logging import progress_bar
from rlreg.seeds import SeedStack, check_supported_config
from rlreg.trainers.offline import OfflineTrainer


class _NoBar:
    """Progress bar stand-in for every copy but the first (one bar per process)."""

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def seed_runs(run: RunConfig, seeds: list[int]) -> list[RunConfig]:
    """The K single-seed run configurations (``run`` with ``seed=k``), validated for K-seed training."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} must be a non-empty list of distinct integers")
    if run.trainer.mode != "offline":
        raise ConfigError(f"seeds=[...] and compile=true (the stacked update, rlreg.seeds.SeedStack) support "
                          f"trainer=offline, not {run.trainer.mode}")
    if run.run_dir and len(seeds) > 1:
        raise ConfigError("seeds=[...] with more than one seed needs the derived run directories (one per seed): "
                          "do not set run_dir")
    check_supported_config(run.agent.learner, run.agent.learner_config, list(run.agent.regularizers))
    return [dataclasses.replace(run, seed=int(s)) for s in seeds]


def _due(trainer: OfflineTrainer) -> bool:
    """Whether this step reads the learner (metrics flush checks parameters, evaluation, checkpoint, snapshot)."""
    t, step = trainer.run.trainer, trainer.step
    return (step % t.log_every == 0 or step % t.eval_every == 0 or step % t.checkpoint_every == 0
            or step == t.total_steps or bool(t.snapshot_every and step % t.snapshot_every == 0) or trainer._stop)


def train_seeds(runs: list[RunConfig], announce: bool = True, compile: bool = False) -> list[dict[str, Any]]:
    """Train (or resume) the K runs ``runs`` (from :func:`seed_runs`) together; return their summaries.
    ``compile``: ``torch.compile`` the stacked update (:class:`rlreg.seeds.SeedStack`), eager being its oracle."""
    trainers = [OfflineTrainer(r, announce=announce) for r in runs]
    first = trainers[0]
    locked: list[OfflineTrainer] = []
    try:
        for i, tr in enumerate(trainers):
            tr._seed()  # as a single run: seed, data, run dir, then build the learner (the same initialisation)
            if i == 0:
                tr._load_data()
            else:  # the runs differ only in their seed: one copy of the dataset and its device buffer for all
                tr._use_data(first.data)
            state = tr._prepare_run_dir()
            locked.append(tr)
            tr._begin(state)
        steps = {tr.step for tr in trainers}
        if len(steps) > 1:
            raise ConfigError("seeds=[...]: the runs are at different steps ("
                              + ", ".join(f"seed {tr.run.seed}: {tr.step}" for tr in trainers)
                              + "); resume them one seed at a time")
        return _train_together(trainers, compile)
    finally:
        for tr in locked:
            tr._unlock_run_dir()


def _train_together(trainers: list[OfflineTrainer], compile: bool = False) -> list[dict[str, Any]]:
    first = trainers[0]
    t = first.run.trainer
    stack = SeedStack([tr.learner for tr in trainers], compile=compile)  # checks support; takes over optimizer states
    loggers = [tr._logger() for tr in trainers]
    previous = first._install_signal_handlers()  # a stop signal stops (and checkpoints) every copy
    bars: list[Any] = [progress_bar(t.total_steps, first.step, first.run.logging.progress_bar,
                                    f"{first.run.agent.name} x{len(trainers)} seeds")]
    bars += [_NoBar() for _ in trainers[1:]]
    gens = [tr.generator for tr in trainers]
    start_step = first.step
    for tr in trainers:
        tr._session_start = time.time()
    try:
        for tr in trainers:
            tr.learner.train()
        while first.step < t.total_steps:
            batch = SeedStack.sample(first.buffer, t.batch_size, gens)
            metrics = stack.update(batch, first.step + 1, gens)
            for k, tr in enumerate(trainers):
                tr.step += 1
                tr.metrics.add({key: value[k] for key, value in metrics.items()}, tr.step)
            if _due(first):
                stack.write_back()
            stopping = first._stop  # on a stop signal every copy writes its checkpoint; the first one (last
            for tr, logger, bar in reversed(list(zip(trainers, loggers, bars))):  # here) raises StopRequested
                tr._after_step(logger, bar)
                if stopping and tr is not first:
                    tr.save()
    finally:
        for bar in bars:
            bar.close()
        for logger in loggers:
            logger.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [tr.write_summary(start_step) for tr in trainers]
