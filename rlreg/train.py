"""Hydra entry point: ``python -m rlreg.train agent=td3bc dataset=hopper-medium-v2 seed=0``.

The composed config is converted once into a typed :class:`~rlreg.config.RunConfig`; training resumes
from the run directory's latest checkpoint when there is one.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from rlreg.config import CONF_DIR as _CONF_PATH
from rlreg.config import ConfigError, RunConfig, to_run_config

CONF_DIR = str(_CONF_PATH)


def run_from_hydra(cfg: DictConfig) -> RunConfig:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("seeds", None)  # a launcher option (K seeds in one process), not part of any one run
    return to_run_config(container)  # type: ignore[arg-type]


def report(summary: dict[str, Any]) -> None:
    score = summary["last_normalized_score"]
    best = summary["best_normalized_score"]
    print(
        "\n".join(
            [
                "",
                f"[rlreg] finished {summary['steps']} steps in {summary['wall_seconds']} s",
                f"[rlreg] last normalized score: {'n/a' if score is None else f'{score:.1f}'}"
                f" (return {summary['last_return']:.1f}; best {'n/a' if best is None else f'{best:.1f}'})",
                f"[rlreg] run dir:    {summary['run_dir']}",
                f"[rlreg] checkpoint: {summary['checkpoint']}",
                f"[rlreg] metrics:    {summary['metrics']}",
            ]
        ),
        flush=True,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from rlreg.trainers import StopRequested, train

    try:
        run = run_from_hydra(cfg)
    except ConfigError as err:
        print(f"[rlreg] configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        seeds = cfg.get("seeds")
        if seeds:  # K runs, one per seed, trained in one process (rlreg/trainers/seeds.py)
            from rlreg.trainers.seeds import seed_runs, train_seeds

            try:
                runs = seed_runs(run, [int(s) for s in seeds])
            except ConfigError as err:
                print(f"[rlreg] configuration error: {err}", file=sys.stderr)
                raise SystemExit(2) from None
            summaries = train_seeds(runs)
            for summary in summaries[:-1]:
                report(summary)
            summary = summaries[-1]
        else:
            summary = train(run)
    except StopRequested as stop:
        # The checkpoint is written and the logs (wandb) are closed. Under submitit the stop signal's previous
        # handler requeues this job and exits; the requeued job resumes from that checkpoint. wandb's service
        # process is stopped first: SLURM sends SIGTERM to every process of a job it requeues.
        if stop.handler is not None and "wandb" in sys.modules:
            sys.modules["wandb"].teardown()
        if stop.handler is not None:
            stop.hand_over()
            stop.handler = None  # the exception may be pickled (submitit returns it); the handler need not be
            raise
        # Not under submitit: stop the whole process (a local multirun must not go on to its next job).
        print(f"[rlreg] stopped by a signal; rerun the same command to resume from {stop.checkpoint}", flush=True)
        raise SystemExit(128 + (stop.signum or signal.SIGTERM)) from None
    report(summary)
    return summary["last_normalized_score"]


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
