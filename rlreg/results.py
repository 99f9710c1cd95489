"""Result tables and learning curves from run directories: ``python -m rlreg.results <dirs> [--out DIR]``.

Each argument is a run directory, a sweep directory (``<run_root>/.sweeps/<time>``, whose jobs are found
through the ``rlreg_job.json`` files :class:`SweepManifest` writes) or any folder holding run directories
(e.g. ``runs/``). Every run's ``config.json`` and ``metrics.jsonl`` are read; the outputs are

- ``results.md``: per agent x dataset (x step budget) the mean +- std over seeds of the **last** evaluation's
  normalized score (and return) of the finished runs, with the seed count and budget, then every run that
  is not finished (in progress, stopped, requeued or failed) with how far it got and why it stopped;
- ``results.csv`` (one row per agent x dataset x budget) and ``runs.csv`` (one row per run);
- ``curves_<dataset>.png``: learning curves (mean +- std over seeds) of each agent on that dataset.

The std is numpy's default population std (ddof=0). Runs are named as :mod:`rlreg.runs` names them: online
runs show their environment id as dataset, fine-tuning runs ``<dataset>-finetune``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from hydra.experimental.callback import Callback

from rlreg.checkpoint import checkpoint_step, latest_checkpoint
from rlreg.runs import derive_run_dir, run_name, task_name
from rlreg.names import display_name  # tables and legends name agents as people do (TD3+BC, PRDC+SPOT)

MANIFEST = "rlreg_job.json"


# --------------------------------------------------------------------------------------------------
# Sweep manifest: which run directory each job of a Hydra multirun trains, and how the job ended.
# --------------------------------------------------------------------------------------------------


class SweepManifest(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml). In a multirun, every job writes
    ``<sweep dir>/<job num>/rlreg_job.json`` with its run directory, overrides and SLURM job id when it
    starts (status ``started``) and its outcome when it returns (``completed`` or ``failed`` with the
    error). A job that is requeued or killed keeps ``started``. Single runs write nothing."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        info: dict[str, Any] = {
            "status": "started",
            "overrides": list(config.hydra.overrides.task),
            "slurm_job": _slurm_job_id(),
            "attempt": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        }
        try:
            run = _run_config_of(config)
            # what the run is, so that a job failing before its run directory exists (bad data) is still counted
            info.update(run_dir=str(derive_run_dir(run).resolve()), run_name=run_name(run), task=task_name(run),
                        seed=run.seed, budget=run.trainer.total_steps)
        except Exception as err:  # a bad config fails again in the task; keep what the job was
            info["run_dir"] = None
            info["error"] = f"{type(err).__name__}: {err}"
        _write_manifest(config, info)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        path = Path(str(config.hydra.runtime.output_dir)) / MANIFEST
        info = json.loads(path.read_text()) if path.exists() else {}
        from hydra.core.utils import JobStatus

        if job_return is not None and job_return.status == JobStatus.COMPLETED:
            info["status"] = "completed"
        else:
            err = getattr(job_return, "_return_value", None)
            info["status"] = "failed"
            from rlreg.train import SweepJobError

            if isinstance(err, SweepJobError):  # rlreg.train: a user error, its message names its class
                info["error"] = str(err)
            else:
                info["error"] = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
        _write_manifest(config, info)


def _is_multirun(config: Any) -> bool:
    from hydra.types import RunMode

    try:
        return config.hydra.mode == RunMode.MULTIRUN
    except Exception:
        return False


def _slurm_job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _run_config_of(config: Any) -> Any:
    from omegaconf import OmegaConf

    from rlreg.config import to_run_config

    # resolved inside the full config, as the task sees it (interpolations may refer to hydra's nodes)
    container: dict[str, Any] = {}
    for key in config:
        if key != "hydra":
            node = config[key]
            container[str(key)] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return to_run_config(container)


def _write_manifest(config: Any, info: dict[str, Any]) -> None:
    from rlreg.checkpoint import atomic_write_text

    atomic_write_text(Path(str(config.hydra.runtime.output_dir)) / MANIFEST, json.dumps(info, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run directory as found on disk."""

    run_dir: Path
    agent: str  # <agent>[-<regularizers>][_<tag>], as in the run directory
    dataset: str  # dataset name (offline) or env id (online)
    seed: int | None
    budget: int | None  # trainer.total_steps
    step: int  # last step with metrics or a checkpoint
    status: str  # finished | incomplete | failed
    score: float | None = None  # last evaluation's normalized score
    ret: float | None = None  # last evaluation's return
    curve: list[tuple[int, float | None, float]] = field(default_factory=list)  # (step, score, return)
    note: str = ""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
    return rows


def _last_checkpoint_step(run_dir: Path) -> int:
    last = latest_checkpoint(run_dir)
    return checkpoint_step(last) if last is not None else 0


def read_run(run_dir: Path, job: dict[str, Any] | None = None) -> RunRecord:
    """Read one run directory; ``job`` is its sweep manifest, if any (tells a failed job apart)."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    budget = (cfg.get("trainer") or {}).get("total_steps")
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    evals = sorted((r for r in rows if r.get("kind") == "eval"), key=lambda r: r["step"])
    curve = [(int(r["step"]), r.get("eval/normalized_score"), float(r["eval/return"])) for r in evals]
    step = max([int(r.get("step", 0)) for r in rows] + [_last_checkpoint_step(run_dir)])
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    finished = summary is not None and budget is not None and int(summary.get("steps", -1)) >= budget
    last = evals[-1] if evals else None
    if finished and (last is None or last["step"] < budget):
        finished = False  # summary of an earlier, shorter budget
    rec = RunRecord(
        run_dir=run_dir,
        agent=run_name(cfg),
        dataset=task_name(cfg),
        seed=cfg.get("seed"),
        budget=budget,
        step=step,
        status="finished" if finished else "incomplete",
        score=None if last is None else last.get("eval/normalized_score"),
        ret=None if last is None else float(last["eval/return"]),
        curve=curve,
    )
    if not finished:
        if job is not None and job.get("status") == "failed":
            rec.status, rec.note = "failed", str(job.get("error", ""))
        elif job is not None and job.get("status") == "completed":
            rec.note = "job completed below the budget"
        else:
            rec.note = "in progress, stopped or waiting to be requeued"
    return rec


def _manifests(root: Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    paths = [root / MANIFEST] if (root / MANIFEST).exists() else sorted(root.rglob(MANIFEST))
    for path in paths:
        try:
            yield path, json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue


def _is_run_dir(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "agent" in cfg and "trainer" in cfg


def collect_runs(paths: Sequence[Path]) -> list[RunRecord]:
    """Every run under ``paths`` (run dirs, sweep dirs, or folders holding either), sorted. Sweep jobs
    that failed before creating their run directory are returned as failed records."""
    jobs: dict[Path, dict[str, Any]] = {}
    orphans: list[RunRecord] = []
    run_dirs: dict[Path, None] = {}
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such directory")
        if _is_run_dir(root):
            run_dirs[root.resolve()] = None
        else:
            for cfg in sorted(root.rglob("config.json")):
                if _is_run_dir(cfg.parent):
                    run_dirs[cfg.parent.resolve()] = None
        for path, info in _manifests(root):
            run_dir = info.get("run_dir")
            if run_dir and Path(run_dir).is_dir() and _is_run_dir(Path(run_dir)):
                key = Path(run_dir).resolve()
                # the newest manifest of a run wins (a relaunched sweep job)
                if key not in jobs or path.stat().st_mtime >= jobs[key]["_mtime"]:
                    jobs[key] = {**info, "_mtime": path.stat().st_mtime}
                run_dirs[key] = None
            else:
                orphans.append(
                    RunRecord(
                        run_dir=Path(run_dir) if run_dir else path.parent,
                        agent=info.get("run_name") or " ".join(info.get("overrides", [])) or "?",
                        dataset=info.get("task") or "?",
                        seed=info.get("seed"),
                        budget=info.get("budget"),
                        step=0,
                        status="failed"
                        if info.get("status") == "failed" or (info.get("status") == "started" and info.get("error"))
                        else "incomplete",
                        note=str(info.get("error", "no run directory was created")),
                    )
                )
    records = [read_run(d, jobs.get(d)) for d in run_dirs]
    records.sort(key=lambda r: (r.dataset, r.agent, r.budget or 0, -1 if r.seed is None else r.seed, str(r.run_dir)))
    return records + orphans


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: an agent on a dataset with one step budget."""

    agent: str
    dataset: str
    budget: int | None
    seeds: list[int] = field(default_factory=list)  # seeds of the finished runs
    scores: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    incomplete: int = 0
    failed: int = 0

    @staticmethod
    def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    @property
    def score(self) -> tuple[float | None, float | None]:
        return self._mean_std(self.scores) if len(self.scores) == len(self.seeds) else (None, None)

    @property
    def ret(self) -> tuple[float | None, float | None]:
        return self._mean_std(self.returns)


def aggregate(records: Sequence[RunRecord]) -> list[Row]:
    """Group runs by (agent, dataset, budget); finished runs give the statistics, the others are counted."""
    rows: dict[tuple[str, str, int | None], Row] = {}
    for rec in records:
        if rec.dataset == "?":  # a sweep job without a run directory: listed with the unfinished runs only
            continue
        row = rows.setdefault((rec.agent, rec.dataset, rec.budget), Row(rec.agent, rec.dataset, rec.budget))
        if rec.status == "finished":
            row.seeds.append(rec.seed if rec.seed is not None else -1)
            if rec.score is not None:
                row.scores.append(float(rec.score))
            if rec.ret is not None:
                row.returns.append(rec.ret)
        elif rec.status == "failed":
            row.failed += 1
        else:
            row.incomplete += 1
    return sorted(rows.values(), key=lambda r: (r.dataset, r.agent, r.budget or 0))


def _fmt(mean: float | None, std: float | None, digits: int = 1) -> str:
    return "n/a" if mean is None or std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows: Sequence[Row], records: Sequence[RunRecord], plots: Sequence[Path] = ()) -> str:
    lines = [
        "# Results",
        "",
        "Last evaluation of each finished run at its step budget: D4RL normalized score and return, mean ± std",
        "over seeds (population std). Runs that are not finished are counted here and listed below.",
        "",
        "| agent | dataset | steps | seeds | normalized score | return | incomplete | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = "?" if r.budget is None else str(r.budget)
        lines.append(
            f"| {display_name(r.agent)} | {r.dataset} | {budget} | {len(r.seeds)} | {_fmt(*r.score)} | {_fmt(*r.ret)} "
            f"| {r.incomplete} | {r.failed} |"
        )
    pending = [rec for rec in records if rec.status != "finished"]
    if pending:
        lines += ["", "## Runs not finished", ""]
        lines += ["| run | status | step | last score | note |", "|---|---|---:|---:|---|"]
        for rec in pending:
            budget = "?" if rec.budget is None else str(rec.budget)
            score = "n/a" if rec.score is None else f"{rec.score:.1f}"
            note = rec.note.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {_display(rec.run_dir)} | {rec.status} | {rec.step}/{budget} | {score} | {note} |")
    if plots:
        lines += ["", "## Learning curves", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _display(path: Path) -> str:
    """A path relative to the working directory when it lies below it (tables meant for results/)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(float(x), 6))


def write_csv(rows: Sequence[Row], records: Sequence[RunRecord], out: Path) -> tuple[Path, Path]:
    table, runs = out / "results.csv", out / "runs.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["agent", "dataset", "step_budget", "seeds", "score_mean", "score_std", "return_mean",
                    "return_std", "incomplete", "failed", "seed_list"])
        for r in rows:
            (sm, ss), (rm, rs) = r.score, r.ret
            w.writerow([r.agent, r.dataset, "" if r.budget is None else r.budget, len(r.seeds), _num(sm), _num(ss),
                        _num(rm), _num(rs), r.incomplete, r.failed, ";".join(map(str, sorted(r.seeds)))])
    with open(runs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run_dir", "agent", "dataset", "seed", "status", "step", "step_budget", "score", "return", "note"])
        for rec in records:
            w.writerow([rec.run_dir, rec.agent, rec.dataset, "" if rec.seed is None else rec.seed, rec.status,
                        rec.step, "" if rec.budget is None else rec.budget, _num(rec.score), _num(rec.ret), rec.note])
    return table, runs


def plot_curves(records: Sequence[RunRecord], out: Path) -> list[Path]:
    """One PNG per dataset: mean +- std over seeds of each agent's evaluations against the step (normalized
    score when the dataset has reference returns, else the return). Unfinished runs count at the steps
    they reached."""
    try:
        import matplotlib
    except ImportError:
        print("[rlreg.results] no learning curves: matplotlib is not installed", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    datasets = sorted({r.dataset for r in records if r.curve and r.dataset != "?"})
    for dataset in datasets:
        runs = [r for r in records if r.dataset == dataset and r.curve]
        use_score = all(s is not None for r in runs for _, s, _ in r.curve)
        groups: dict[tuple[str, int | None], list[RunRecord]] = {}
        for r in runs:
            groups.setdefault((r.agent, r.budget), []).append(r)
        budgets_per_agent: dict[str, set] = {}
        for agent, budget in groups:
            budgets_per_agent.setdefault(agent, set()).add(budget)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (agent, budget), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            by_step: dict[int, list[float]] = {}
            for r in members:
                for step, score, ret in r.curve:
                    by_step.setdefault(step, []).append(float(score) if use_score else ret)  # type: ignore[arg-type]
            steps = np.array(sorted(by_step))
            mean = np.array([np.mean(by_step[s]) for s in steps])
            std = np.array([np.std(by_step[s]) for s in steps])
            unfinished = sum(r.status != "finished" for r in members)
            counts = f"{len(members) - unfinished} seeds" + (f" + {unfinished} unfinished" if unfinished else "")
            label = f"{display_name(agent)} ({counts})"
            if len(budgets_per_agent[agent]) > 1:
                label = f"{display_name(agent)}, {budget} steps ({counts})"
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(dataset)
        ax.set_xlabel("step")
        ax.set_ylabel("normalized score" if use_score else "return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"curves_{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def summarize(paths: Sequence[Path], out: Path, plots: bool = True) -> dict[str, Any]:
    """Read the runs under ``paths`` and write results.md, results.csv, runs.csv and curve PNGs to ``out``."""
    records = collect_runs(paths)
    if not records:
        raise FileNotFoundError(
            f"no run directories (with config.json) or sweep jobs ({MANIFEST}) under: {', '.join(map(str, paths))}"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(records)
    pngs = plot_curves(records, out) if plots else []
    text = markdown(rows, records, pngs)
    (out / "results.md").write_text(text)
    table, runs = write_csv(rows, records, out)
    return {"records": records, "rows": rows, "markdown": text, "files": [out / "results.md", table, runs, *pngs]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlreg.results",
        description="Tables (Markdown, CSV) and learning curves (PNG) from rlreg run or sweep directories.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="run dirs, sweep dirs (<run_root>/.sweeps/<time>) or folders of runs"
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    parser.add_argument("--no-plots", action="store_true", help="skip the learning-curve PNGs")
    parser.add_argument("--plot", action="store_true",
                        help="also every metric's curves and the aggregate bar plot (python -m rlreg.plot) in --out")
    args = parser.parse_args(argv)
    try:
        result = summarize(args.paths, args.out, plots=not args.no_plots)
    except FileNotFoundError as err:
        print(f"[rlreg.results] {err}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print("[rlreg.results] wrote " + ", ".join(str(p) for p in result["files"]))
    if args.plot:
        from rlreg.plot import plot

        print("[rlreg.results] wrote " + ", ".join(str(p) for p in plot(args.paths, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
