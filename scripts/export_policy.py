"""Export the actor of a training run's checkpoint as a shipped behaviour policy (rlreg/assets).

    python scripts/export_policy.py runs/sac/Hopper-v5/seed0 --step 60000 --name hopper_medium \
        --command "python -m rlreg.train agent=sac env=hopper seed=0 ..."

Writes ``<name>.pt`` (actor state_dict, plain tensors) and ``<name>.json`` (architecture, env, how it was
trained, its evaluation return and normalized score from the run's metrics).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from rlreg.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint
from rlreg.logging import read_metrics
from rlreg.policies import ASSETS, save_policy
from provenance import git_commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the exact training command, recorded in the metadata")
    parser.add_argument("--commit", default=None,
                        help="commit of the code that trained it (a worktree's; default: this checkout's HEAD)")
    args = parser.parse_args()

    ckpt = checkpoint_path(args.run_dir, args.step) if args.step else latest_checkpoint(args.run_dir)
    if args.step and not ckpt.exists():  # a run with trainer.snapshot_every keeps the networks of every snapshot
        ckpt = args.run_dir / "snapshots" / f"step_{args.step:010d}.pt"
    state = load_checkpoint(ckpt)
    if "learner" not in state:
        state = {"step": state["step"], "learner": {"networks": state["networks"]}}
    config = json.loads((args.run_dir / "config.json").read_text())
    lc = config["agent"]["learner_config"]
    networks = state["learner"]["networks"]
    actor_state = {k[len("actor."):]: v for k, v in networks.items() if k.startswith("actor.")}
    evals = {r["step"]: r for r in read_metrics(args.run_dir / "metrics.jsonl") if r["kind"] == "eval"}
    ev = evals.get(state["step"], {})
    env = config["env"]
    obs_dim = actor_state["trunk.0.weight"].shape[1]
    act_dim = actor_state["mean_head.weight"].shape[0]
    meta = {
        "architecture": {"kind": "tanh_gaussian", "obs_dim": obs_dim, "act_dim": act_dim,
                         "hidden": list(lc["actor_hidden"]), "log_std_bounds": list(lc["log_std_bounds"])},
        "env": env["id"],
        "trained_by": {"command": args.command, "seed": config["seed"], "env_steps": state["step"],
                       "checkpoint": ckpt.name,
                       "commit": args.commit or git_commit(),
                       "machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}"},
        "evaluation": {"episodes": config["trainer"]["eval_episodes"], "return": ev.get("eval/return"),
                       "return_std": ev.get("eval/return_std"),
                       "normalized_score": ev.get("eval/normalized_score"),
                       "reference": [env["ref_min_score"], env["ref_max_score"]]},
    }
    from rlreg.nets import TanhGaussianActor

    actor = TanhGaussianActor(obs_dim, act_dim, hidden=tuple(lc["actor_hidden"]),
                              log_std_bounds=tuple(lc["log_std_bounds"]))
    actor.load_state_dict(actor_state)
    save_policy(actor, ASSETS / f"{args.name}.pt", meta)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
