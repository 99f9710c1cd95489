"""Hydra entry point: ``python -m rlreg.train agent=td3bc dataset=hopper-medium-v2 seed=0``.

The composed config is converted once into a typed :class:`~rlreg.config.RunConfig`; training resumes
from the run directory's newest checkpoint that loads when there is one.

Exit codes (README, "Faults and bad input"): 0 finished; 2 a user error (bad option, bad data, a run
directory that cannot be resumed, disk full), printed as one ``[rlreg]`` line and a ``[rlreg] hint:``
line; 3 training diverged (NaN/inf); 128 + N stopped by signal N after writing a checkpoint (130: Ctrl-C,
143: SIGTERM); 1 with a traceback: a bug in rlreg.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from rlreg.config import CONF_DIR as _CONF_PATH
from rlreg.config import ConfigError, RunConfig, to_run_config
from rlreg.errors import EXIT_DIVERGED, EXIT_SIGNAL_BASE, EXIT_USER_ERROR, UserError, report_user_error

CONF_DIR = str(_CONF_PATH)


def run_from_hydra(cfg: DictConfig) -> RunConfig:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    # the launcher options (seeds, compile: config.LAUNCHER_OPTIONS) are read by hydra_main; to_run_config drops them
    return to_run_config(container)  # type: ignore[arg-type]


def report(summary: dict[str, Any]) -> None:
    score = summary["last_normalized_score"]
    best = summary["best_normalized_score"]
    ret = summary["last_return"]
    print(
        "\n".join(
            [
                "",
                f"[rlreg] finished {summary['steps']} steps in {summary['wall_seconds']} s",
                f"[rlreg] last normalized score: {'n/a' if score is None else f'{score:.1f}'}"
                f" (return {'n/a' if ret is None else f'{ret:.1f}'}; best {'n/a' if best is None else f'{best:.1f}'})",
                f"[rlreg] run dir:    {summary['run_dir']}",
                f"[rlreg] checkpoint: {summary['checkpoint']}",
                f"[rlreg] metrics:    {summary['metrics']}",
            ]
        ),
        flush=True,
    )


class SweepJobError(CompactHydraException):
    """A user error (or divergence) of one job of a multirun: the job is recorded as failed with this message
    (``rlreg_job.json``, ``rlreg.results``), and Hydra reports it at the end as one line, without a traceback."""


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from rlreg.logging import NonFiniteError
    from rlreg.trainers import StopRequested, train

    # In a multirun a failed job raises: Hydra records it (rlreg_job.json, rlreg.results) and reports it at the end.
    multirun = _is_multirun()
    try:
        run = run_from_hydra(cfg)
        seeds, compiled = cfg.get("seeds"), bool(cfg.get("compile", False))
        if seeds or compiled:  # K runs (or one) trained in one process by rlreg.seeds.SeedStack (trainers/seeds.py)
            from rlreg.trainers.seeds import seed_runs, train_seeds

            summaries = train_seeds(seed_runs(run, [int(s) for s in seeds or [run.seed]]), compile=compiled)
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
        raise SystemExit(EXIT_SIGNAL_BASE + (stop.signum or signal.SIGTERM)) from None
    except UserError as err:
        report_user_error(err)
        if multirun:
            raise SweepJobError(f"{type(err).__name__}: {err}") from None
        raise SystemExit(EXIT_USER_ERROR) from None
    except NonFiniteError as err:
        report_user_error(err, "rerunning the same command resumes from that checkpoint and diverges again; change "
                          "a hyperparameter (with tag=<name> for a new run) or check the data")
        if multirun:
            raise SweepJobError(f"{type(err).__name__}: {err}") from None
        raise SystemExit(EXIT_DIVERGED) from None
    except KeyboardInterrupt:
        print("[rlreg] interrupted (Ctrl-C); every checkpoint written so far is intact: rerun the same command to "
              "resume from the newest", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SIGNAL_BASE + signal.SIGINT) from None
    report(summary)
    return summary["last_normalized_score"]


# -- composition errors, reported like every other user error --------------------------------------------


def composition_error(err: Exception) -> ConfigError:
    """A Hydra composition/override error of the command line as a :class:`ConfigError` naming the option."""
    from hydra.errors import MissingConfigException, OverrideParseException

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, name = err.missing_cfg_file.split("/", 1)
        options = err.options or sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        return ConfigError(f"{group}={name}: there is no {group} {name!r} (no conf/{group}/{name}.yaml); valid "
                           f"{group} names: {', '.join(options)}")
    if isinstance(err, OverrideParseException):
        return ConfigError(f"cannot parse the override {err.override!r}: {first}",
                           hint="overrides are key=value; quote values holding spaces, brackets or commas")
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if first.startswith("Could not override") and key and "not in struct" in str(cause):
        return ConfigError(f"{key}: unknown option", hint="python -m rlreg.train --cfg job prints every option")
    detail = (str(cause).strip().splitlines() or [""])[0] if cause is not None else ""
    rest = [line.strip() for line in str(err).strip().splitlines()[1:] if line.strip()]
    return ConfigError(first + (f" ({detail})" if detail else ""),
                       hint=rest[0] if rest else "python -m rlreg.train --cfg job shows the composed config")


def precheck(overrides: Sequence[str]) -> None:
    """Compose the config of a single run from the command line, so that an unknown config group option
    (``agent=ppo``, ``regularizer=[nope]``), an unknown key or an unparsable override is reported as a user
    error (one line, exit 2) rather than by Hydra. Invocations with flags (``--multirun``, ``--cfg``...) or
    ``hydra`` overrides are left to Hydra."""
    if any(o.startswith("-") or o.lstrip("+~").startswith("hydra") for o in overrides):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None


def main() -> None:
    """``python -m rlreg.train <overrides>`` (and the ``rlreg-train`` script): checked, then run by Hydra."""
    try:
        precheck(sys.argv[1:])
    except ConfigError as err:
        report_user_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    hydra_main()


if __name__ == "__main__":
    main()
