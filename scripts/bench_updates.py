"""Gradient updates per second per agent on synthetic data (obs 17, act 6, batch 256, 1M-row dataset).

    python scripts/bench_updates.py                      # all agents, CPU (and CUDA when present)
    python scripts/bench_updates.py --agents td3bc sacn --devices cpu --seconds 20

Sampling from the device-resident buffer is included in the timing, as in
``docs/speed.md``. FLOPs per update are counted with ``FlopCounterMode`` and compared
with this machine's float32 matmul rate (a 256x256x256 matmul loop), giving the share of the CPU limit.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rlreg.agents import build_agent  # noqa: E402
from rlreg.regularizers.base import SetupContext  # noqa: E402
from rlreg.config import to_run_config  # noqa: E402
from rlreg.data.buffers import OfflineBuffer  # noqa: E402
from rlreg.data.dataset import TransitionDataset  # noqa: E402

# every agent config in conf/agent; extra overrides per agent (SAC-N/EDAC at N=10 as in the
# official-speed table)
AGENTS: list[str] = sorted(p.stem for p in (ROOT / "conf" / "agent").glob("*.yaml"))
OVERRIDES: dict[str, list[str]] = {"sacn": ["agent.num_critics=10"], "edac": ["agent.num_critics=10"]}


def synthetic_dataset(rows: int, obs_dim: int = 17, act_dim: int = 6, seed: int = 0) -> TransitionDataset:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((rows, obs_dim), dtype=np.float32)
    return TransitionDataset(
        observations=obs,
        actions=rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(rows, dtype=np.float32),
        next_observations=np.roll(obs, -1, axis=0),
        terminals=rng.random(rows) < 0.001,
        timeouts=np.zeros(rows, dtype=bool),
        episode_ends=np.zeros(rows, dtype=bool),
        source="synthetic",
    )


def matmul_gflops(device: torch.device, seconds: float = 2.0) -> float:
    a = torch.randn(256, 256, device=device)
    b = torch.randn(256, 256, device=device)
    for _ in range(50):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            a @ b
        n += 100
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 256**3 * n / (time.perf_counter() - start) / 1e9


def bench(agent: str, device: torch.device, data: TransitionDataset, seconds: float) -> dict[str, float]:
    from conftest import compose

    run = to_run_config(compose([f"agent={agent}", "dataset=hopper-medium-v2", *OVERRIDES.get(agent, [])]))
    buffer = OfflineBuffer(data, device=device)
    learner = build_agent(run.agent, SetupContext.box(17, 6, 1.0, device, dataset=data, buffer=buffer))
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        learner.update(buffer.sample(256, gen), i, gen)

    try:
        with FlopCounterMode(display=False) as counter:
            step(1)
            step(2)  # one critic-only and one actor step for delayed-actor learners
        flops = counter.get_total_flops() / 2
    except RuntimeError:  # FlopCounterMode cannot follow torch.autograd.grad (EDAC's diversity term)
        step(1)
        step(2)
        flops = float("nan")
    for i in range(3, 23):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, i, start = 0, 23, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step(i)
            i += 1
        n += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
    return {"upd_s": n / (time.perf_counter() - start), "mflop": flops / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS))
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic_dataset(args.rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"# rlreg bench_updates: commit {commit.strip()}, torch {torch.__version__}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, batch 256, {args.rows} rows")
    for dev_name in args.devices:
        device = torch.device(dev_name)
        peak = matmul_gflops(device)
        print(f"\n## {dev_name}: 256^3 float32 matmul {peak:.1f} GFLOP/s\n")
        print("| agent | upd/s | MFLOP/update | limit upd/s | share of limit |")
        print("|---|---|---|---|---|")
        for agent in args.agents:
            r = bench(agent, device, data, args.seconds)
            if r["mflop"] != r["mflop"]:  # not countable
                print(f"| {agent} | {r['upd_s']:.1f} | n/a | n/a | n/a |", flush=True)
                continue
            limit = peak * 1e3 / r["mflop"]
            print(f"| {agent} | {r['upd_s']:.1f} | {r['mflop']:.0f} | {limit:.1f} | {100 * r['upd_s'] / limit:.0f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
