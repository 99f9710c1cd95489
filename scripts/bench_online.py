"""Online throughput per agent: env steps per second after the warm-up (policy action, env step, replay add,
``utd_ratio`` updates), the loop of ``rlreg.trainers.online`` without logging, evaluation or checkpoints.

    python scripts/bench_online.py --agents droq sac --env hopper --threads 1 --steps 300
    python scripts/bench_online.py --agents beer ddpg --env dmc-walker-walk --threads 1

Wall-clock and CPU-time rates are both printed: on a shared machine the CPU-time rate is the one that
transfers (with one torch thread it is the wall-clock rate of an idle core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rlreg.agents import build_agent  # noqa: E402
from rlreg.config import to_run_config  # noqa: E402
from rlreg.data.buffers import ReplayBuffer  # noqa: E402
from rlreg.envs import env_setup, env_spaces, make_env  # noqa: E402
from provenance import git_commit, machine  # noqa: E402


def bench(agent: str, env_name: str, steps: int, warmup: int, device: torch.device, extra: list[str]) -> dict:
    from conftest import compose

    run = to_run_config(compose([f"agent={agent}", f"env={env_name}", *extra]))
    assert run.env is not None
    obs_dim, act_dim, max_action, _, act_space = env_spaces(run.env)
    env = make_env(run.env)
    learner = build_agent(run.agent, env_setup(run.env, device))
    learner.train()
    buffer = ReplayBuffer(warmup + steps + 1, obs_dim, act_dim, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    updates = 0

    def env_step(action: np.ndarray) -> None:
        nonlocal obs
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs

    for _ in range(warmup):
        env_step(rng.uniform(act_space.low, act_space.high).astype(np.float32))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)
        env_step(learner.act(x, deterministic=False, generator=gen).cpu().numpy())
        for _ in range(run.trainer.utd_ratio):
            updates += 1
            learner.update(buffer.sample(run.trainer.batch_size, gen), updates, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    return {"utd": run.trainer.utd_ratio, "wall": steps / wall, "cpu": steps / cpu, "upd_cpu": updates / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["droq", "sac"])
    parser.add_argument("--env", default="hopper", help="a conf/env name")
    parser.add_argument("--steps", type=int, default=200, help="timed env steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=1000, help="uniform-random env steps before timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every agent")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# rlreg bench_online: commit {git_commit()}, {machine()}, {args.threads} threads, "
          f"env {args.env}, {args.steps} timed steps after "
          f"{args.warmup} random ones\n")
    print("| agent | UTD | env steps/s (wall) | env steps/s (CPU time) | updates/s (CPU time) |")
    print("|---|---|---|---|---|")
    for agent in args.agents:
        r = bench(agent, args.env, args.steps, args.warmup, torch.device(args.device), args.overrides)
        print(f"| {agent} | {r['utd']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['upd_cpu']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
