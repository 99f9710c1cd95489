"""Run directories in one place: their names, where they live, their ``config.json`` and checkpoints.

Used by the trainers, ``rlreg.results`` and ``rlreg.robustness``, so a run is named, found and loaded the
same way everywhere:

* :func:`run_name` (``<agent>[-<regularizers>][_<tag>]``) and :func:`task_name` (the dataset, the dataset
  plus ``-finetune``, or the env id) accept a :class:`~rlreg.config.RunConfig` or the dict stored in
  ``config.json``;
* :func:`derive_run_dir`: ``<run_root>/<run name>/<task name>/seed<k>`` (or ``run_dir``);
* :func:`check_same_run`: a relaunch may only change the options in :data:`RESUMABLE_CHANGES`; the
  refusal names options as they are typed on the command line (:func:`option_name`);
* :func:`load_newest_checkpoint` / :func:`load_run`: the newest checkpoint that loads, with the files
  skipped and why;
* :func:`clean_temp_files`: half-written temp files of a run (left by kill -9 or a full disk);
* :func:`data_fingerprint`: a hash of the arrays of a dataset as loaded, stored with every checkpoint so
  that a run never resumes on other data (a moved but identical file is the same data).

A run directory without a checkpoint has not started: the trainer replaces its ``config.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from rlreg.checkpoint import CheckpointError, checkpoint_dir, list_checkpoints, load_checkpoint
from rlreg.config import ConfigError
from rlreg.errors import NotFoundError, RunDirError

if TYPE_CHECKING:
    import torch

    from rlreg.config import RunConfig
    from rlreg.data.dataset import TransitionDataset

# Options that may change between launches of the same run without making it a different run.
RESUMABLE_CHANGES = ("trainer.total_steps", "trainer.snapshot_every", "logging", "device", "threads", "run_root", "run_dir")


# -- names -----------------------------------------------------------------------------------------


def _as_dict(run: RunConfig | Mapping[str, Any]) -> Mapping[str, Any]:
    return run if isinstance(run, Mapping) else config_to_dict(run)


def run_name(run: RunConfig | Mapping[str, Any]) -> str:
    """``<agent>[-<reg1>+<reg2>...][_<tag>]`` of a run config or of a stored ``config.json`` dict."""
    cfg = _as_dict(run)
    agent = cfg.get("agent") or {}
    regs = "+".join(agent.get("regularizers") or {})
    name = str(agent.get("name", "?")) + (f"-{regs}" if regs else "")
    return name + (f"_{cfg['tag']}" if cfg.get("tag") else "")


def task_name(run: RunConfig | Mapping[str, Any]) -> str:
    """What a run trains on: the dataset name (offline), ``<dataset>-finetune`` (fine-tuning from an offline
    run) or the env id (online)."""
    cfg = _as_dict(run)
    mode = (cfg.get("trainer") or {}).get("mode", "offline")
    dataset = cfg.get("dataset") or {}
    if mode == "offline" and dataset:
        return str(dataset["name"])
    if mode == "finetune" and dataset:
        return f"{dataset['name']}-finetune"
    return str((cfg.get("env") or {}).get("id", "?"))


def derive_run_dir(run: RunConfig) -> Path:
    """``<run_root>/<agent>[-<regularizers>][_<tag>]/<dataset or env>/seed<k>``: a relaunched job finds it."""
    if run.run_dir:
        return Path(run.run_dir)
    task = task_name(run).replace("/", "_")
    return Path(run.run_root) / run_name(run) / task / f"seed{run.seed}"


# -- config.json -------------------------------------------------------------------------------------


def config_to_dict(run: RunConfig) -> dict[str, Any]:
    """The JSON form of a run config, as stored in ``config.json``."""
    d = dataclasses.asdict(run)
    return json.loads(json.dumps(d, default=str))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def option_name(key: str) -> str:
    """The command-line name of a flattened ``config.json`` key: ``agent.learner_config.actor_lr`` ->
    ``agent.actor_lr``, ``agent.regularizers.bc.alpha`` -> ``regularizer.bc.alpha``, ``agent.name`` -> ``agent``."""
    for stored, typed in (("agent.learner_config.", "agent."), ("agent.regularizers.", "regularizer.")):
        if key.startswith(stored):
            return typed + key[len(stored):]
    return "agent" if key == "agent.name" else key


def check_same_run(
    stored: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path, also_resumable: tuple[str, ...] = ()
) -> None:
    """Refuse to resume a run directory written by a different configuration (options in
    :data:`RESUMABLE_CHANGES` and ``also_resumable`` may differ)."""
    a, b = flatten(stored), flatten(current)
    free = RESUMABLE_CHANGES + tuple(also_resumable)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not any(k.startswith(p) for p in free))
    if diff:
        details = ", ".join(f"{option_name(k)}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:5])
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise ConfigError(
            f"{run_dir} holds a run with a different configuration ({details}{more})",
            hint="rerun with the stored values to resume it, set tag=<name> (or run_dir=<path>) to start a "
            "separate run, or delete that directory",
        )


def read_config(run_dir: Path) -> dict[str, Any]:
    """``<run_dir>/config.json`` as a dict (:class:`RunDirError` naming the file if missing or unreadable)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise NotFoundError(f"{run_dir}: no config.json; is this a run directory written by rlreg.train?")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path}: not readable as JSON ({err})", hint="restore the file or delete the run "
                          "directory to start over") from None
    if not isinstance(cfg, dict) or "agent" not in cfg or "trainer" not in cfg:
        raise RunDirError(f"{path}: not an rlreg run configuration (no agent/trainer)")
    return cfg


def run_config_from_dir(run_dir: Path) -> RunConfig:
    """The :class:`~rlreg.config.RunConfig` stored in ``<run_dir>/config.json`` (written by the trainer)."""
    from rlreg.config import to_run_config

    raw = read_config(run_dir)
    agent = raw.pop("agent")
    raw["agent"] = {"name": agent["name"], "learner": agent["learner"], **agent["learner_config"]}
    raw["regularizer"] = agent["regularizers"]
    try:
        return to_run_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: {err}") from None


# -- checkpoints -------------------------------------------------------------------------------------


@dataclass
class Skipped:
    """A checkpoint that did not load, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def load_newest_checkpoint(
    run_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[Path | None, dict[str, Any] | None, list[Skipped]]:
    """The newest checkpoint of ``run_dir`` that loads, its state, and the newer ones skipped (newest first).
    ``(None, None, skipped)`` when none loads (``skipped`` empty: the run has no checkpoint)."""
    skipped: list[Skipped] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location=map_location)
        except CheckpointError as err:
            skipped.append(Skipped(path, err.reason))
            continue
        if "step" not in state or "learner" not in state:
            skipped.append(Skipped(path, "not a training checkpoint (no 'step' or 'learner' entry)"))
            continue
        return path, state, skipped
    return None, None, skipped


def no_loadable_checkpoint(run_dir: Path, skipped: list[Skipped]) -> RunDirError:
    """The error for a run whose checkpoints all fail to load."""
    listed = "; ".join(map(str, skipped))
    return RunDirError(
        f"{run_dir}: none of its {len(skipped)} checkpoint(s) loads ({listed})",
        hint=f"restore a copy of {checkpoint_dir(run_dir)}, or delete that folder (or the run directory) to "
        "start the run over",
    )


@dataclass
class StoredRun:
    """A run directory as found on disk: its config and the checkpoint chosen to load."""

    run_dir: Path
    run: RunConfig
    checkpoint: Path
    state: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)


def load_run(
    run_dir: Path | str, map_location: str | torch.device = "cpu", checkpoint: Path | str | None = None
) -> StoredRun:
    """``config.json`` and a checkpoint of a finished or running run: the given ``checkpoint``, else the newest
    that loads (the newer ones that do not are listed in ``skipped``)."""
    run_dir = Path(run_dir)
    run = run_config_from_dir(run_dir)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise NotFoundError(f"{path}: no such checkpoint file")
        return StoredRun(run_dir, run, path, load_checkpoint(path, map_location=map_location))
    path, state, skipped = load_newest_checkpoint(run_dir, map_location)
    if path is None or state is None:
        if not skipped:
            raise NotFoundError(f"{run_dir}: no checkpoint under {checkpoint_dir(run_dir)}; the run has not "
                              "written one yet", hint="train it first (rerun its rlreg.train command)")
        raise no_loadable_checkpoint(run_dir, skipped)
    return StoredRun(run_dir, run, path, state, skipped)


def clean_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that atomic writes of this run left behind when the process was killed
    (``.<name>.tmp<pid>`` in the run directory, its ``checkpoints/`` and ``snapshots/``). Call it only while
    holding the run's lock: no other process writes there then. Other runs' files are never touched."""
    removed = []
    run_dir = Path(run_dir)
    for folder in (run_dir, checkpoint_dir(run_dir), run_dir / "snapshots"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and ".tmp" in path.name and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return sorted(removed)


# -- data identity -----------------------------------------------------------------------------------

FINGERPRINT_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_ends")


def data_fingerprint(dataset: TransitionDataset) -> str:
    """A hash of the arrays of ``dataset`` as loaded (dtype, shape and bytes of each): equal for the same
    data wherever the file lies, different as soon as one value differs."""
    h = hashlib.blake2b(digest_size=16)
    for key in FINGERPRINT_KEYS:
        arr = np.ascontiguousarray(getattr(dataset, key))
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(memoryview(arr).cast("B"))
    return "blake2b:" + h.hexdigest()


__all__ = [
    "RESUMABLE_CHANGES",
    "Skipped",
    "StoredRun",
    "check_same_run",
    "clean_temp_files",
    "config_to_dict",
    "data_fingerprint",
    "derive_run_dir",
    "flatten",
    "load_newest_checkpoint",
    "load_run",
    "option_name",
    "read_config",
    "run_config_from_dir",
    "run_name",
    "task_name",
]
