"""Graph breaks of the compiled update (``compile=true``, :class:`rlreg.seeds.SeedStack`) per agent: compiles the
stacked critic and actor losses with ``fullgraph=False`` (a break is counted instead of raised), runs a few
updates on synthetic data and lists every break with its reason. The goal is zero for the TD3 and SAC families;
``compile=true`` itself compiles with ``fullgraph=True``, so a break there is an error.

    python scripts/graph_breaks.py                     # td3bc, td3, sacn with K = 2 copies
    python scripts/graph_breaks.py --agents sacn --seeds 1
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from bench_updates import bench_setup, synthetic_dataset

SUPPORTED = ("td3bc", "td3", "sacn")


def graph_breaks(agent: str, k: int, updates: int, rows: int) -> dict[str, int]:
    """``{reason: count}`` of the graph breaks met while compiling and running ``updates`` stacked updates."""
    from rlreg.seeds import SeedStack

    data = synthetic_dataset(rows)
    learners, buffer = [], None
    for seed in range(k):
        torch.manual_seed(seed)
        learner, buffer = bench_setup(agent, torch.device("cpu"), data)
        learners.append(learner)
    stack = SeedStack(learners, compile=True, fullgraph=False)
    gens = [torch.Generator().manual_seed(seed) for seed in range(k)]
    torch._dynamo.reset()
    counters.clear()
    for step in range(1, updates + 1):
        stack.update(SeedStack.sample(buffer, 64, gens), step, gens)
    return dict(counters["graph_break"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(SUPPORTED))
    parser.add_argument("--seeds", type=int, default=2, help="K copies in the stack")
    parser.add_argument("--updates", type=int, default=4, help="updates run (both actor and critic steps)")
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    total = 0
    print("| agent | K | graph breaks | reasons |\n|---|---:|---:|---|")
    for agent in args.agents:
        breaks = graph_breaks(agent, args.seeds, args.updates, args.rows)
        count = sum(breaks.values())
        total += count
        reasons = "; ".join(f"{n} x {reason.splitlines()[0]}" for reason, n in breaks.items()) or "-"
        print(f"| {agent} | {args.seeds} | {count} | {reasons} |", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
