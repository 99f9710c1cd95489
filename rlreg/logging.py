"""Metrics: accumulated on the device, synced every K steps, written to ``metrics.jsonl`` and wandb.

``metrics.jsonl`` holds one JSON object per logging step (``{"step": ..., "kind": "train"|"eval", ...}``).
wandb runs offline by default and never needs a login; its run id is derived from the run directory so
a relaunched (or requeued) job continues the same wandb run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A loss term or parameter became NaN/inf; the message names the term and the step."""


class MetricAccumulator:
    """Running sums of per-step scalar metrics kept on the device (no host sync per step).

    Steps that report the same keys form a group whose values are stacked into one vector, so adding a
    step costs a handful of small kernels whatever the number of metrics. The first step at which each
    metric was non-finite is tracked on the device too.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, ...], dict[str, Any]] = {}

    def add(self, metrics: dict[str, Tensor], step: int) -> None:
        if not metrics:
            return
        keys = tuple(metrics)
        values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()])
        group = self._groups.get(keys)
        if group is None:
            group = self._groups[keys] = {
                "sum": torch.zeros_like(values),
                "count": 0,
                "first_bad": torch.full_like(values, -1.0),
            }
        group["sum"] += values
        group["count"] += 1
        bad = ~torch.isfinite(values) & (group["first_bad"] < 0)
        group["first_bad"] = torch.where(bad, float(step), group["first_bad"])

    def flush(self) -> tuple[dict[str, float], dict[str, int]]:
        """Means over the window and ``{metric: first non-finite step}``; one host sync; resets."""
        if not self._groups:
            return {}, {}
        groups = list(self._groups.items())
        packed = torch.cat([torch.cat([g["sum"] / g["count"], g["first_bad"]]) for _, g in groups]).tolist()
        means: dict[str, float] = {}
        bad: dict[str, int] = {}
        offset = 0
        for keys, _ in groups:
            n = len(keys)
            for i, key in enumerate(keys):
                means[key] = packed[offset + i]
                first = packed[offset + n + i]
                if first >= 0:
                    bad[key] = min(bad.get(key, int(first)), int(first))
            offset += 2 * n
        self._groups.clear()
        return means, bad

    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": [
                {"keys": list(k), "sum": g["sum"], "count": g["count"], "first_bad": g["first_bad"]}
                for k, g in self._groups.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._groups = {
            tuple(g["keys"]): {"sum": g["sum"], "count": int(g["count"]), "first_bad": g["first_bad"]}
            for g in state["groups"]
        }


def check_finite_parameters(named: dict[str, Tensor]) -> str | None:
    """Name of the first parameter holding NaN/inf, or None (one host sync)."""
    names = list(named)
    if not names:
        return None
    finite = torch.stack([torch.isfinite(t).all() for t in named.values()]).tolist()
    for name, ok in zip(names, finite):
        if not ok:
            return name
    return None


def stable_run_id(run_dir: Path) -> str:
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class RunLogger:
    """Writes ``metrics.jsonl`` (truncated to the resume step on resume) and mirrors rows to wandb."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        wandb_mode: str = "offline",
        project: str = "rlreg",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        resume_step: int = 0,
        drop: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._truncate(resume_step, drop)
        self._file = open(self.path, "a")
        self._wandb = None
        if wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb = wandb.init(
                project=project,
                entity=entity,
                group=group,
                name=name,
                id=stable_run_id(self.run_dir),
                resume="allow",
                dir=str(self.run_dir),
                mode=wandb_mode,
                config=config,
            )

    def _truncate(self, resume_step: int, drop: Callable[[dict[str, Any]], bool] | None) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again), and rows at
        that step for which ``drop`` is true (an end-of-budget evaluation of a run being extended)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            step = row.get("step", 0)
            if step < resume_step or (step == resume_step and not (drop and drop(row))):
                keep.append(line)
        from rlreg.checkpoint import atomic_write_text

        atomic_write_text(self.path, "".join(f"{line}\n" for line in keep))

    def log(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            try:
                self._wandb.log(
                    {k: v for k, v in row.items() if k not in ("step", "kind") and v is not None}, step=row["step"]
                )
            except Exception as err:  # wandb's service died (e.g. SIGTERM to the job): keep training
                self._wandb_failed(err)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as err:
                self._wandb_failed(err)
            self._wandb = None

    def _wandb_failed(self, err: Exception) -> None:
        import warnings

        warnings.warn(f"wandb stopped working ({err!r}); metrics continue in {self.path}", stacklevel=3)
        self._wandb = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    import sys

    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30.0,  # logs (SLURM, CI) get a line every 30 s
    )
