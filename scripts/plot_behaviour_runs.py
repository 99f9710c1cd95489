"""Learning curves of the SAC runs that trained the shipped behaviour policies (results/behaviour_policies.md):
evaluation normalized score against env steps, one panel per env, with the issue's expert target and the
snapshots shipped as ``<env>_expert`` / ``<env>_medium`` (read from the JSON beside each policy in rlreg/assets).

    python scripts/plot_behaviour_runs.py /work/bp-runs/sac --out results/behaviour_sac_runs.png \
        --csv results/behaviour_sac_evals.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rlreg

from rlreg.logging import read_metrics  # noqa: E402
from rlreg.policies import ASSETS  # noqa: E402

# env id -> (asset prefix, expert target in D4RL-normalized score, issue 15)
ENVS = {"Hopper-v5": ("hopper", 90.0), "HalfCheetah-v5": ("halfcheetah", 70.0), "Walker2d-v5": ("walker2d", 80.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the runs' folder: <root>/<Env>-v5/seed0/metrics.jsonl")
    parser.add_argument("--out", type=Path, default=Path("behaviour_sac_runs.png"))
    parser.add_argument("--csv", type=Path, default=None, help="also write every evaluation to this CSV")
    args = parser.parse_args()
    runs = [(env, args.root / env / "seed0") for env in ENVS if (args.root / env / "seed0" / "metrics.jsonl").exists()]
    if not runs:
        raise SystemExit(f"no run under {args.root} (<Env>-v5/seed0/metrics.jsonl)")
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    table = []
    for ax, (env, run_dir) in zip(axes[0], runs):
        prefix, target = ENVS[env]
        rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "eval"}
        table += [(env, step, f"{r['eval/return']:.1f}", f"{r['eval/return_std']:.1f}",
                   f"{r['eval/normalized_score']:.2f}") for step, r in sorted(rows.items())]
        evals = [(step, r["eval/normalized_score"]) for step, r in sorted(rows.items())]
        ax.plot([s / 1e3 for s, _ in evals], [v for _, v in evals], lw=1.2, color="tab:blue", label="evaluation")
        ax.axhline(target, ls="--", lw=0.8, color="gray", label=f"expert target {target:g}")
        for level, marker in (("expert", "*"), ("medium", "o")):
            meta_path = ASSETS / f"{prefix}_{level}.json"
            if meta_path.exists():
                meta = json.loads(meta_path.read_text())
                step, score = meta["trained_by"]["env_steps"], meta["evaluation"]["normalized_score"]
                # only a policy from this run: its recorded evaluation is this run's at that step
                if meta.get("env") == env and any(s == step and abs(v - score) < 1e-9 for s, v in evals):
                    ax.plot(step / 1e3, score, marker, ms=9, color="tab:red",
                            label=f"{prefix}_{level} ({step // 1000}k)")
        ax.set_title(f"{env} (SAC, seed 0)")
        ax.set_xlabel("env steps (thousands)")
        ax.set_ylabel("normalized score (10 episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["env", "env_steps", "return", "return_std", "normalized_score"])
            writer.writerows(table)
        print(f"wrote {args.csv} ({len(table)} evaluations)")


if __name__ == "__main__":
    main()
