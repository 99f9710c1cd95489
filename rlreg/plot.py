"""Plots from run directories: ``python -m rlreg.plot <run or sweep dirs> [--out DIR] [--keys PATTERN ...]``.

Writes, for every dataset (or online env) found under the given paths,

- ``metrics_<dataset>.png``: one panel per logged metric of ``metrics.jsonl`` (normalized score and return of the
  evaluations, training episode returns, losses, Q values, regularizer terms such as ``prdc/distance``), one
  curve per agent: the mean over seeds with a band of +- one std when there are several seeds;

and, when finished runs carry a normalized score,

- ``aggregate.png``: the D4RL-style bar plot: each agent's last normalized score on every dataset and averaged
  over datasets, mean over seeds with a 95% bootstrap confidence interval (percentile bootstrap over seeds,
  stratified per dataset for the average, as rliable does).

Agents are named as people write them (``TD3+BC``, ``PRDC+SPOT``; :func:`rlreg.names.display_name`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlreg.names import display_name
from rlreg.results import RunRecord, collect_runs

CORE_PREFIXES = ("eval", "train", "critic", "actor", "alpha", "learner")


def read_metrics(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every numeric metric of a run's ``metrics.jsonl`` as ``key -> (steps, values)``, sorted by step."""
    series: dict[str, dict[int, float]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            step = int(row.get("step", 0))
            for key, value in row.items():
                if key in ("step", "kind") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                series.setdefault(key, {})[step] = float(value)  # a resumed run rewrites a step: the last wins
    return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in series.items()}


def panel_rank(key: str) -> tuple[int, str]:
    """Order of the panels: score, return, other evaluation metrics and episode returns, losses, Q values,
    other learner metrics, regularizer terms."""
    prefix, _, leaf = key.partition("/")
    if key == "eval/normalized_score":
        rank = 0
    elif key == "eval/return":
        rank = 1
    elif key.startswith(("eval/", "train/episode_return")):  # best score, episode length, return std, ...
        rank = 2
    elif "loss" in key:
        rank = 3
    elif leaf.startswith("q") or "_q" in leaf or leaf.startswith("target_q"):
        rank = 4
    elif prefix in CORE_PREFIXES or not leaf:
        rank = 5
    else:
        rank = 6  # a regularizer's own terms (<regularizer>/<term>)
    return rank, key


def _mean_std(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds; seeds logged at other steps (online episodes) are interpolated onto a grid
    covering the steps all of them reached."""
    if all(len(s) == len(runs[0][0]) and np.array_equal(s, runs[0][0]) for s, _ in runs):
        values = np.stack([v for _, v in runs])
        return runs[0][0], values.mean(0), values.std(0)
    lo, hi = max(s[0] for s, _ in runs), min(s[-1] for s, _ in runs)
    if hi <= lo:  # no common range: the first seed alone
        return runs[0][0], runs[0][1], np.zeros_like(runs[0][1])
    grid = np.linspace(lo, hi, 200)
    values = np.stack([np.interp(grid, s, v) for s, v in runs])
    return grid, values.mean(0), values.std(0)


def metrics_figure(records: Sequence[RunRecord], title: str = "", keys: Sequence[str] = ()) -> Any:
    """One panel per metric (``keys``: fnmatch patterns to keep, all when empty), one curve per agent."""
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
    for rec in records:
        groups.setdefault(rec.agent, []).append(read_metrics(rec.run_dir))
    names = sorted({k for runs in groups.values() for m in runs for k in m}, key=panel_rank)
    if keys:
        names = [k for k in names if any(fnmatch.fnmatch(k, p) for p in keys)]
    if not names:
        raise ValueError(f"{title}: no metrics to plot" + (f" matching {list(keys)}" if keys else ""))
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.9 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, names):
        for i, (agent, runs) in enumerate(sorted(groups.items())):
            have = [m[key] for m in runs if key in m and len(m[key][0])]
            if not have:
                continue
            steps, mean, std = _mean_std(have)
            color = colors[i % len(colors)]
            ax.plot(steps, mean, color=color, label=f"{display_name(agent)} ({len(have)} seed{'s' * (len(have) > 1)})")
            if len(have) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(4, max(1, len(labels))), fontsize=8,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, y=1.0 + 0.04 / rows, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.08 / rows))
    return fig


def bootstrap_ci(per_dataset: Sequence[Sequence[float]], reps: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean over datasets of the mean over seeds, and its percentile-bootstrap confidence interval: each
    replicate resamples the seeds of every dataset with replacement (stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(v, dtype=float) for v in per_dataset]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("bootstrap_ci needs at least one seed on every dataset")
    point = float(np.mean([a.mean() for a in arrays]))
    boot = np.mean([a[rng.integers(0, a.size, size=(reps, a.size))].mean(1) for a in arrays], axis=0)
    lo, hi = np.percentile(boot, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return point, float(lo), float(hi)


def final_scores(records: Sequence[RunRecord]) -> dict[str, dict[str, list[float]]]:
    """``agent -> dataset -> last normalized scores`` of the finished runs (the largest budget of each pair)."""
    best: dict[tuple[str, str], int] = {}
    for r in records:
        if r.status == "finished" and r.score is not None:
            best[(r.agent, r.dataset)] = max(best.get((r.agent, r.dataset), 0), r.budget or 0)
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r.status == "finished" and r.score is not None and (r.budget or 0) == best[(r.agent, r.dataset)]:
            out.setdefault(r.agent, {}).setdefault(r.dataset, []).append(float(r.score))
    return out


def aggregate_figure(records: Sequence[RunRecord], reps: int = 2000) -> Any | None:
    """Bars of each agent's last normalized score per dataset and, for the agents run on every dataset, averaged
    over the datasets (mean over seeds, 95% bootstrap CI); None when no finished run has a normalized score."""
    import matplotlib.pyplot as plt

    scores = final_scores(records)
    if not scores:
        return None
    datasets = sorted({d for per in scores.values() for d in per})
    groups = datasets + (["mean over datasets"] if len(datasets) > 1 else [])
    agents = sorted(scores)
    width = 0.8 / len(agents)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(agents)) ** 0.5 + 2), 3.8))
    for i, agent in enumerate(agents):
        xs, means, errs = [], [], []
        for g, group in enumerate(groups):
            if group == "mean over datasets":  # only for agents run on every dataset
                per = [scores[agent][d] for d in datasets] if len(scores[agent]) == len(datasets) else []
            else:
                per = [scores[agent][group]] if group in scores[agent] else []
            if not per:
                continue
            mean, lo, hi = bootstrap_ci(per, reps=reps)
            xs.append(g - 0.4 + width * (i + 0.5))
            means.append(mean)
            errs.append((mean - lo, hi - mean))
        ax.bar(xs, means, width=width * 0.95, yerr=np.array(errs).T, capsize=3, label=display_name(agent))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center",
                       fontsize=8)
    ax.set_ylabel("normalized score (last evaluation)")
    ax.set_title("mean over seeds, 95% bootstrap CI", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def plot(paths: Sequence[Path], out: Path, keys: Sequence[str] = (), aggregate: bool = True,
         close: bool = True) -> dict[Path, Any]:
    """Write ``metrics_<dataset>.png`` per dataset and ``aggregate.png`` to ``out``; returns ``{png: figure}``
    (figures closed unless ``close=False``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in collect_runs(paths) if r.dataset != "?"]
    if not records:
        raise FileNotFoundError(f"no run directories (with config.json) under: {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[Path, Any] = {}
    for dataset in sorted({r.dataset for r in records}):
        fig = metrics_figure([r for r in records if r.dataset == dataset], title=dataset, keys=keys)
        figures[out / f"metrics_{_slug(dataset)}.png"] = fig
    if aggregate:
        fig = aggregate_figure(records)
        if fig is not None:
            figures[out / "aggregate.png"] = fig
    for path, fig in figures.items():
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if close:
            plt.close(fig)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlreg.plot",
        description="Learning curves of every logged metric, and the D4RL-style aggregate bar plot, from rlreg runs.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, sweep dirs (<run_root>/.sweeps/<time>) or folders of runs")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default: plots)")
    parser.add_argument("--keys", nargs="*", default=[], help="metrics to draw, fnmatch patterns (e.g. 'eval/*' '*loss')")
    parser.add_argument("--no-aggregate", action="store_true", help="skip aggregate.png")
    args = parser.parse_args(argv)
    try:
        figures = plot(args.paths, args.out, keys=args.keys, aggregate=not args.no_aggregate)
    except (FileNotFoundError, ValueError) as err:
        print(f"[rlreg.plot] {err}", file=sys.stderr)
        return 2
    print("[rlreg.plot] wrote " + ", ".join(str(p) for p in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
