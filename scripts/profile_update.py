"""Where one agent's gradient update spends its time: ``torch.profiler`` over N updates on the synthetic data of
``scripts/bench_updates.py`` (obs 17, act 6, batch 256, sampling included), the top operators and the share of
time in matrix multiplies (GEMMs). A high GEMM share means the update is bound by arithmetic, not by Python or
per-op overhead (docs/speed.md).

    python scripts/profile_update.py --agent td3bc --threads 1
    python scripts/profile_update.py --agent revalued --updates 20 --rows 100000
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_updates import bench_setup, synthetic_dataset

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default="td3bc")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    learner, buffer = bench_setup(args.agent, device, synthetic_dataset(args.rows))
    gen = torch.Generator(device=device).manual_seed(0)
    for step in range(1, 21):  # warm-up (allocator, first-call costs); steps count from 1, as in training
        learner.update(buffer.sample(256, gen), step, gen)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for step in range(21, 21 + args.updates):
            learner.update(buffer.sample(256, gen), step, gen)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    # on CUDA the kernels' device time is what the update waits for; on the CPU the operators' own CPU time
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events)
    gemm = sum(getattr(e, attr) for e in events if e.key in GEMMS)
    print(events.table(sort_by=attr, row_limit=args.top))
    print(f"{args.agent} on {args.device}, {args.threads} thread(s), {args.updates} updates: "
          f"{total / 1e3 / args.updates:.2f} ms of {'device' if cuda else 'CPU'} time per update, "
          f"{100 * gemm / max(total, 1e-9):.0f}% of it in GEMMs ({', '.join(GEMMS)})")


if __name__ == "__main__":
    main()
