"""Gradient updates per second per agent on synthetic data (obs 17, act 6, batch 256, 1M-row dataset; DecQN and
REValueD: the same rows with random bin indices as actions, at their default bins per dimension).

    python scripts/bench_updates.py                      # all agents, CPU (and CUDA when present)
    python scripts/bench_updates.py --agents td3bc sacn --devices cpu --seconds 20
    python scripts/bench_updates.py --agents td3bc --seeds 1 2 4 8 16     # K seeds in one process
    python scripts/bench_updates.py --compile --corl /tmp/corl             # eager vs compiled vs CORL td3_bc
    python scripts/bench_updates.py --agents td3bc sacn --overhead         # per-update floor: 8-unit nets

Sampling from the device-resident buffer is included in the timing, as in
``docs/speed.md``. FLOPs per update are counted with ``FlopCounterMode`` and compared
with this machine's float32 matmul rate (a 256x256x256 matmul loop), giving the share of the CPU limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rlreg, not an installed one
sys.path.insert(0, str(ROOT / "tests"))

from rlreg.agents import build_agent  # noqa: E402
from rlreg.regularizers.base import SetupContext  # noqa: E402
from rlreg.config import to_run_config  # noqa: E402
from rlreg.data.buffers import OfflineBuffer  # noqa: E402
from rlreg.data.dataset import TransitionDataset  # noqa: E402
from provenance import git_commit, machine  # noqa: E402

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


def device_heading(dev_name: str, extra: str = "") -> tuple[torch.device, float]:
    """Print the table heading of ``dev_name`` with its matmul limit; returns the device and the limit (GFLOP/s)."""
    device = torch.device(dev_name)
    peak = matmul_gflops(device)
    print(f"\n## {dev_name}: 256^3 float32 matmul {peak:.1f} GFLOP/s{extra}\n")
    return device, peak


def timed_rate(step: Callable[[int], None], device: torch.device, seconds: float, first: int, warmup: int = 20) -> float:
    """Calls of ``step(i)`` per second: ``warmup`` untimed calls from update ``first``, then batches of 10 for
    ``seconds`` (CUDA synchronised at each batch boundary)."""
    for i in range(first, first + warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, i, start = 0, first + warmup, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step(i)
            i += 1
        n += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def width_overrides(agent: str, width: int) -> list[str]:
    """Overrides setting every hidden layer of ``agent``'s config to ``width`` units (same depth): the agent's
    ``agent.*hidden`` (a list of widths, or one width) and its regularizers' ``regularizer.<name>.*hidden`` (SPOT's
    and A2PR's VAEs)."""
    from conftest import compose

    cfg = compose([f"agent={agent}"])
    nodes = {"agent": cfg["agent"], **{f"regularizer.{name}": node for name, node in cfg.get("regularizer", {}).items()}}
    sized = {list: lambda value: f"[{','.join([str(width)] * len(value))}]", int: lambda value: str(width)}
    return [f"{prefix}.{key}={sized[type(value)](value)}" for prefix, node in nodes.items()
            for key, value in node.items() if key.endswith("hidden") and type(value) in sized]


def bench_setup(agent: str, device: torch.device, data: TransitionDataset,
                width: int | None = None) -> tuple[torch.nn.Module, OfflineBuffer]:
    """The learner of ``agent`` (defaults + :data:`OVERRIDES`, hidden layers of ``width`` units if given) and a
    device buffer of ``data`` to update it from."""
    from conftest import compose

    resize = width_overrides(agent, width) if width is not None else []
    run = to_run_config(compose([f"agent={agent}", "dataset=hopper-medium-v2", *OVERRIDES.get(agent, []), *resize]))
    if run.agent.learner == "decqn":  # DecQN / REValueD: the same rows with bin indices as actions
        learner = build_agent(run.agent, SetupContext.box(17, 6, 1.0, device))
        bins = np.asarray(learner.action_spec.bins)
        actions = np.random.default_rng(1).integers(0, bins, (len(data), bins.size))
        buffer = OfflineBuffer(dataclasses.replace(data, actions=actions), device=device,
                               gamma=run.agent.learner_config.gamma ** run.agent.learner_config.n_step)
    else:
        buffer = OfflineBuffer(data, device=device)
        learner = build_agent(run.agent, SetupContext.box(17, 6, 1.0, device, dataset=data, buffer=buffer))
    return learner, buffer


def bench(agent: str, device: torch.device, data: TransitionDataset, seconds: float,
          width: int | None = None) -> dict[str, float]:
    """Updates/s and MFLOP per update of ``agent``; ``width`` sets every hidden layer of its networks to that
    many units (same depth), e.g. 8 for the update's per-op floor."""
    learner, buffer = bench_setup(agent, device, data, width)
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
    return {"upd_s": timed_rate(step, device, seconds, first=3), "mflop": flops / 1e6}


def bench_seeds(agent: str, device: torch.device, data: TransitionDataset, seconds: float, k: int) -> float:
    """Seed-updates per second of ``k`` copies trained as one :class:`rlreg.seeds.SeedStack` (sampling included)."""
    from conftest import compose

    from rlreg.seeds import SeedStack

    run = to_run_config(compose([f"agent={agent}", "dataset=hopper-medium-v2", *OVERRIDES.get(agent, [])]))
    buffer = OfflineBuffer(data, device=device)
    learners = []
    for seed in range(k):
        torch.manual_seed(seed)
        learners.append(build_agent(run.agent, SetupContext.box(17, 6, 1.0, device, dataset=data, buffer=buffer,
                                                                seed=seed)))
    stack = SeedStack(learners)
    gens = [torch.Generator(device=device).manual_seed(seed) for seed in range(k)]

    def step(i: int) -> None:
        stack.update(SeedStack.sample(buffer, 256, gens), i, gens)

    return k * timed_rate(step, device, seconds, first=1)


def overhead_table(args: argparse.Namespace, data: TransitionDataset) -> None:
    """Per-update floor: each agent at its widths and with 8-unit hidden layers (same ops, ~no FLOPs), taking
    turns (``--rounds``, median). ``full - floor`` bounds the time the update's FLOPs need at the current kernel
    rates; the last column is the share of the matmul limit the update would reach with a zero floor."""
    for dev_name in args.devices:
        device, peak = device_heading(dev_name, f"; median of {args.rounds} interleaved rounds of {args.seconds:g} s")
        print("| agent | upd/s | ms/update | 8-unit ms/update (floor) | floor share | share of limit | "
              "share with a zero floor |")
        print("|---|---|---|---|---|---|---|")
        for agent in args.agents:
            full: list[dict[str, float]] = []
            floor: list[float] = []
            for _ in range(args.rounds):
                full.append(bench(agent, device, data, args.seconds))
                floor.append(1e3 / bench(agent, device, data, args.seconds, width=8)["upd_s"])
            ms = 1e3 / statistics.median(r["upd_s"] for r in full)
            floor_ms = statistics.median(floor)
            mflop = full[0]["mflop"]
            share = mflop / (ms * peak)  # GFLOP/s x ms = MFLOP
            bound = mflop / ((ms - floor_ms) * peak)
            print(f"| {agent} | {1e3 / ms:.1f} | {ms:.2f} | {floor_ms:.2f} | {100 * floor_ms / ms:.0f}% | "
                  f"{100 * share:.0f}% | {100 * bound:.0f}% |", flush=True)


def seeds_table(args: argparse.Namespace, data: TransitionDataset) -> None:
    """K-seed scaling: seed-updates/s of one K-copy stack vs K x one seed's updates/s, the K values taking turns
    (``--rounds`` rounds, median) so that a change of load on a shared machine hits all of them."""
    for dev_name in args.devices:
        device = torch.device(dev_name)
        for agent in args.agents:
            rates: dict[int, list[float]] = {k: [] for k in args.seeds}
            single: list[float] = []
            for _ in range(args.rounds):
                single.append(bench(agent, device, data, args.seconds)["upd_s"])
                for k in args.seeds:
                    rates[k].append(bench_seeds(agent, device, data, args.seconds, k))
            one = statistics.median(single)
            print(f"\n## {agent} on {dev_name}: K seeds in one process (rlreg.seeds.SeedStack), median of "
                  f"{args.rounds} interleaved rounds of {args.seconds:g} s\n")
            print(f"one seed, plain learner: {one:.1f} upd/s\n")
            print("| K | seed-updates/s | per seed upd/s | vs K x one seed |")
            print("|---|---|---|---|")
            for k in args.seeds:
                r = statistics.median(rates[k])
                print(f"| {k} | {r:.1f} | {r / k:.1f} | {r / (k * one):.2f} |", flush=True)


def corl_td3bc_step(checkout: Path, data: TransitionDataset, device: torch.device) -> Callable[[], object]:
    """One training step of CORL's td3_bc.py (sampling included), loaded from a checkout of corl-team/CORL
    (never copied here). Its module-level imports of d4rl, gym, pyrallis and wandb are not used by the classes we
    call: empty stand-ins are put in ``sys.modules`` for the import only."""
    import importlib.util
    import types

    class StandIn(types.ModuleType):  # any attribute, any call: annotations (gym.Env), decorators (pyrallis.wrap)
        def __getattr__(self, name: str) -> "StandIn":
            if name.startswith("__"):  # module machinery (__file__, __path__, ...) must see a plain module
                raise AttributeError(name)
            return StandIn(name)

        def __call__(self, *args: object, **kwargs: object) -> "StandIn":
            return StandIn("call")

    for name in ("d4rl", "gym", "pyrallis", "wandb"):
        sys.modules.setdefault(name, StandIn(name))
    spec = importlib.util.spec_from_file_location("corl_td3_bc", checkout / "algorithms" / "offline" / "td3_bc.py")
    assert spec is not None and spec.loader is not None
    corl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corl)
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    buffer = corl.ReplayBuffer(obs_dim, act_dim, len(data), device=str(device))
    buffer.load_d4rl_dataset({"observations": data.observations, "actions": data.actions, "rewards": data.rewards,
                              "next_observations": data.next_observations,
                              "terminals": data.terminals.astype(np.float32)})
    torch.manual_seed(0)
    np.random.seed(0)
    # as CORL's train(): Adam(lr=3e-4) per network, TrainConfig defaults (policy_noise 0.2, noise_clip 0.5, ...)
    actor = corl.Actor(obs_dim, act_dim, 1.0).to(device)
    critic_1, critic_2 = corl.Critic(obs_dim, act_dim).to(device), corl.Critic(obs_dim, act_dim).to(device)
    trainer = corl.TD3_BC(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(critic_1.parameters(), lr=3e-4),
        critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(critic_2.parameters(), lr=3e-4),
        discount=0.99, tau=0.005, device=str(device), policy_noise=0.2, noise_clip=0.5, policy_freq=2, alpha=2.5,
    )
    return lambda: trainer.train(buffer.sample(256))


def rate(step: Callable[[], object], seconds: float, device: torch.device) -> float:
    """Calls of ``step`` per second over ``seconds`` (after the caller's warm-up)."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        n += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def compile_table(args: argparse.Namespace, data: TransitionDataset) -> None:
    """TD3+BC updates/s: rlreg eager, rlreg compiled (the vmapped functional update of rlreg.seeds with K = 1,
    ``compile=True``) and, with ``--corl``, CORL's official td3_bc step, taking turns in the same process."""
    from conftest import compose

    from rlreg.seeds import SeedStack

    for dev_name in args.devices:
        device = torch.device(dev_name)
        run = to_run_config(compose(["agent=td3bc", "dataset=hopper-medium-v2"]))
        buffer = OfflineBuffer(data, device=device)
        steps: dict[str, Callable[[], object]] = {}
        torch.manual_seed(0)
        learner = build_agent(run.agent, SetupContext.box(17, 6, 1.0, device, dataset=data, buffer=buffer))
        counters = {"eager": 0, "stack": 0, "compiled": 0}
        gens = {name: torch.Generator(device=device).manual_seed(0) for name in counters}

        def eager() -> None:
            counters["eager"] += 1
            learner.update(buffer.sample(256, gens["eager"]), counters["eager"], gens["eager"])

        steps["rlreg eager"] = eager
        for name, compiled in (("stack", False), ("compiled", True)):
            torch.manual_seed(0)
            stack = SeedStack([build_agent(run.agent, SetupContext.box(17, 6, 1.0, device, dataset=data,
                                                                       buffer=buffer))],
                              compile=compiled)

            def step(stack: SeedStack = stack, name: str = name) -> None:
                counters[name] += 1
                stack.update(SeedStack.sample(buffer, 256, [gens[name]]), counters[name], [gens[name]])

            steps["rlreg functional (SeedStack K=1), eager" if not compiled else
                  "rlreg functional (SeedStack K=1), compiled"] = step
        if args.corl:
            steps["CORL td3_bc (official)"] = corl_td3bc_step(Path(args.corl), data, device)
        start = time.perf_counter()
        for step in steps.values():
            for _ in range(20):  # warm-up; compiles the compiled path
                step()
        warm = time.perf_counter() - start
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name].append(rate(step, args.seconds, device))
        med = {name: statistics.median(r) for name, r in rates.items()}
        ref = med.get("CORL td3_bc (official)")
        print(f"\n## TD3+BC on {dev_name}: median of {args.rounds} interleaved rounds of {args.seconds:g} s "
              f"(warm-up incl. compilation {warm:.0f} s)\n")
        print("| implementation | upd/s | vs rlreg eager | vs official |")
        print("|---|---|---|---|")
        for name, r in med.items():
            print(f"| {name} | {r:.1f} | {r / med['rlreg eager']:.2f} | {'-' if ref is None else f'{r / ref:.2f}'} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS))
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="K",
                        help="K-seed scaling instead: seed-updates/s of K copies in one process (td3bc, td3, sacn)")
    parser.add_argument("--rounds", type=int, default=3, help="--seeds: interleaved rounds (median)")
    parser.add_argument("--compile", action="store_true",
                        help="TD3+BC eager vs compiled (vs --corl), interleaved, instead of the agent table")
    parser.add_argument("--corl", default=None, metavar="CHECKOUT",
                        help="--compile: also time CORL's td3_bc.py step from this checkout of corl-team/CORL")
    parser.add_argument("--overhead", action="store_true",
                        help="per-update floor: each agent vs the same agent with 8-unit hidden layers, interleaved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic_dataset(args.rows)
    tables = {"compile": compile_table, "seeds": seeds_table, "overhead": overhead_table}
    mode = next((m for m in tables if getattr(args, m)), None)
    print(f"# rlreg bench_updates{f' --{mode}' if mode else ''}: commit {git_commit()}, {machine()}, "
          f"{args.threads} threads, batch 256, {args.rows} rows")
    if mode is not None:
        tables[mode](args, data)
        return
    for dev_name in args.devices:
        device, peak = device_heading(dev_name)
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
