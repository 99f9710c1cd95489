"""CPU cost of one RORL gradient step as a multiple of one SAC-10 step, against the ratio of their FLOPs.

    python scripts/bench_rorl.py --threads 1 --seconds 30
    python scripts/bench_rorl.py --dataset walker2d-medium-v2 --terms      # also each RORL term alone

Both agents are built from the project configs on synthetic data shaped like the official-speed table
(obs 17, act 6, 1M rows, batch 256): ``sac10`` = ``agent=sacn agent.num_critics=10
agent.update_order=simultaneous`` (RORL's core), ``rorl`` = ``agent=rorl`` with the per-dataset values of
``--dataset`` (hopper-medium-v2: n = 20, all three terms on). FLOPs per update are counted with
``FlopCounterMode``. The variants are timed round-robin, one update each in turn (so that the load of a
shared machine affects all alike), and the figure of merit is this process's CPU time per update (user +
sys; with one thread, the compute it took). If the CPU-time ratio is well above the FLOP ratio the extra
work is overhead (small kernels, allocator churn), which the ``sys`` column (kernel CPU time, e.g. page
faults of freshly mapped memory) helps to tell apart. The "share of CPU limit" compares with the 256^3
matmul rate per CPU second measured at start-up. Reference (docs/speed.md): the official
RORL costs 93.9 GFLOP per update, 18x its SAC-10 core, and spends ~40% of its CPU time in the kernel.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_updates import synthetic_dataset  # noqa: E402

from rlreg.agents import build_agent  # noqa: E402
from rlreg.regularizers.base import SetupContext  # noqa: E402
from rlreg.config import to_run_config  # noqa: E402
from rlreg.data.buffers import OfflineBuffer  # noqa: E402

OFF = {
    "rorl_policy": "regularizer.rorl_policy.weight=0",
    "rorl_q": "regularizer.rorl_q.weight=0",
    "rorl_ood": "regularizer.rorl_ood.weight=0",
}


def variants(dataset: str, terms: bool, extra: list[str]) -> dict[str, list[str]]:
    """Overrides per variant; ``extra`` (e.g. a reduced width) applies to every variant that has the key:
    ``regularizer.*`` overrides go to the RORL variants only."""
    out = {
        "sac10": ["agent=sacn", f"dataset={dataset}", "agent.num_critics=10", "agent.update_order=simultaneous"],
        "rorl": ["agent=rorl", f"dataset={dataset}"],
    }
    if terms:
        for keep in OFF:
            out[f"rorl ({keep} only)"] = ["agent=rorl", f"dataset={dataset}", *(v for k, v in OFF.items() if k != keep)]
    return {
        name: [*ov, *(e for e in extra if name != "sac10" or not e.startswith("regularizer."))]
        for name, ov in out.items()
    }


def matmul_gflops_cpu(seconds: float = 2.0) -> float:
    """256^3 float32 matmul rate per second of this process's CPU time (robust to a loaded machine)."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    for _ in range(50):
        a @ b
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(100):
            a @ b
        n += 100
    return 2 * 256**3 * n / (time.process_time() - start) / 1e9


def sys_time() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def build(overrides: list[str], data, buffer):  # type: ignore[no-untyped-def]
    from conftest import compose

    run = to_run_config(compose(overrides))
    return build_agent(run.agent, SetupContext.box(17, 6, 1.0, "cpu", dataset=data, buffer=buffer))


def flops_per_update(learner, buffer, gen) -> float:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        learner.update(buffer.sample(256, gen), 1, gen)
        learner.update(buffer.sample(256, gen), 2, gen)
    return counter.get_total_flops() / 2


def time_round_robin(learners: dict, buffer, gen, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    """Interleave the variants step by step so that a shared machine's load affects all of them alike;
    CPU time (user + sys of this process) per update is the figure of merit, wall time is shown too."""
    totals = {k: {"cpu": 0.0, "sys": 0.0, "wall": 0.0, "n": 0} for k in learners}
    step = {k: 3 for k in learners}
    for name, learner in learners.items():  # warm-up
        for _ in range(3):
            learner.update(buffer.sample(256, gen), step[name], gen)
            step[name] += 1
    start = time.perf_counter()
    while time.perf_counter() - start < seconds * len(learners) or min(t["n"] for t in totals.values()) < 3:
        for name, learner in learners.items():
            batch = buffer.sample(256, gen)
            s0, c0, w0 = sys_time(), time.process_time(), time.perf_counter()
            learner.update(batch, step[name], gen)
            w1, c1, s1 = time.perf_counter(), time.process_time(), sys_time()
            step[name] += 1
            tot = totals[name]
            tot["cpu"] += c1 - c0  # precise (CLOCK_PROCESS_CPUTIME_ID)
            tot["sys"] += s1 - s0  # kernel share (getrusage, tick resolution)
            tot["wall"] += w1 - w0
            tot["n"] += 1
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="hopper-medium-v2", help="per-dataset RORL values to use")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant (wall)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--terms", action="store_true", help="also time each RORL term alone")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant, e.g. agent.critic_hidden=[128,128,128]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic_dataset(args.rows)
    # the buffer holds raw states; RORL normalises inside its networks (dataset.normalize_states=false)
    buffer = OfflineBuffer(data, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    peak = matmul_gflops_cpu()
    learners = {name: build(ov, data, buffer) for name, ov in variants(args.dataset, args.terms, args.overrides).items()}
    flops = {name: flops_per_update(learner, buffer, gen) for name, learner in learners.items()}
    totals = time_round_robin(learners, buffer, gen, args.seconds)
    print(f"# bench_rorl: torch {torch.__version__}, {args.threads} thread(s), RORL values of {args.dataset}, "
          f"batch 256, obs 17, act 6, overrides {args.overrides}; 256^3 matmul {peak:.1f} GFLOP per CPU second; {args.seconds:g} s per variant, "
          "round-robin\n")
    print("| variant | updates timed | CPU ms/update | wall ms/update | GFLOP/update | share of CPU limit | sys share "
          "| x SAC-10 CPU time | x SAC-10 FLOPs |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = totals["sac10"]
    base_cpu = base["cpu"] / base["n"]
    for name, tot in totals.items():
        cpu = tot["cpu"] / tot["n"]
        gflop = flops[name] / 1e9
        print(f"| {name} | {tot['n']} | {1e3 * cpu:.1f} | {1e3 * tot['wall'] / tot['n']:.1f} | {gflop:.2f} | "
              f"{100 * gflop / peak / cpu:.0f}% | {100 * tot['sys'] / tot['cpu']:.0f}% | "
              f"{cpu / base_cpu:.1f} | {flops[name] / flops['sac10']:.1f} |", flush=True)
    print("\nofficial RORL (docs/speed.md): 93.9 GFLOP/update = 18x its SAC-10 core, 35% of the CPU limit")


if __name__ == "__main__":
    main()
