"""PRDC's exact nearest-neighbour search (rlreg/data/knn.py) on 1M-row datasets: build time, time per query
of 256 keys for each path, and the per-step overhead relative to one TD3+BC update.

    python scripts/bench_knn.py                                   # hopper and walker dims, both data kinds
    python scripts/bench_knn.py --rows 200000 --dims walker --kinds walk --seconds 2 --no-td3bc

Data (keys ``[beta * s, a]``, ``beta = 2``, states normalised as PRDC's buffer):

* ``walk``: structured-ish: 1000-step random-walk trajectories in state space (step std 0.1, then
  normalised), actions ``clip(tanh(W s) + N(0, 0.3^2))`` with a fixed random ``W`` (a noisy state-dependent
  behaviour policy, like D4RL's medium datasets);
* ``iid``: Gaussian states, uniform actions, independent (the synthetic data of ``bench_updates.py``).

Query keys ``(beta s_b, p)`` for 256 dataset states ``s_b``: ``near`` ``p = a_b + N(0, 0.1^2)``, ``mid``
``p = a_b + N(0, 0.3^2)`` (a policy close to the data, as PRDC's constraint keeps it), ``far`` ``p`` uniform
in ``[-1, 1]`` (an untrained policy, or one that left the data). The tree gets PRDC's hint ``|p - a_b|``.
Only actor steps query (every ``policy_freq = 2``-th update), so the overhead per update is query / 2.
Every query's answer is cross-checked between the paths that ran (they must agree exactly).

``--embedded STEPS`` instead trains PRDC for STEPS updates on rlreg's hopper-embedded dataset (real Hopper-v5
data, 100k rows) and reports, per window, the query time per actor step (the policy's own keys as it
trains) beside the time of a TD3+BC update on the same buffer.

``official / this``: the official KDTree's median query time over this path's, the paths taking turns call by
call in the same run (> 1: faster than
the official search). ``auto (tree n, brute m)``: how many timed calls each path served.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rlreg, not an installed one
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from rlreg.data.knn import AutoIndex, build_index  # noqa: E402
from provenance import git_commit, machine  # noqa: E402

DIMS = {"hopper": (11, 3), "walker": (17, 6)}
REGIMES = {"near": 0.1, "mid": 0.3, "far": None}
# kdtree-official: what LAMDA-RL/PRDC does (scipy.spatial.KDTree with default build, query(key, k=[1])), for
# reference; auto (rlreg's CPU default: the faster of tree and brute-cpu, chosen while running) / tree / brute-*:
# rlreg.data.knn (exact, lowest-index tie-break)
PATHS = ("kdtree-official", "auto", "tree", "brute-cpu", "brute-cuda")


class OfficialKDTree:
    def __init__(self, keys: torch.Tensor, workers: int) -> None:
        from scipy.spatial import KDTree

        self.tree, self.workers = KDTree(keys.numpy()), workers

    def query(self, q: torch.Tensor, upper_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        d, i = self.tree.query(q.numpy(), k=[1], workers=self.workers)
        return torch.from_numpy(i[:, 0].astype(np.int64)), torch.from_numpy(d[:, 0] ** 2)


def make_data(kind: str, rows: int, obs_dim: int, act_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return rng.standard_normal((rows, obs_dim), dtype=np.float32), rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32)
    length = 1000
    n_traj = -(-rows // length)
    steps = rng.standard_normal((n_traj, length, obs_dim), dtype=np.float32) * 0.1
    s = steps.cumsum(1).reshape(-1, obs_dim)[:rows]
    s = (s - s.mean(0)) / (s.std(0) + 1e-3)
    w = rng.standard_normal((obs_dim, act_dim)).astype(np.float32) / np.sqrt(obs_dim)
    a = np.clip(np.tanh(s @ w) + 0.3 * rng.standard_normal((rows, act_dim), dtype=np.float32), -1, 1)
    return s.astype(np.float32), a.astype(np.float32)


def timed(fn, seconds: float, max_reps: int = 50) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Median wall time of ``fn()`` over repeats within ``seconds`` (at least one), and its last result."""
    times, out, start = [], None, time.perf_counter()
    while not times or (time.perf_counter() - start < seconds and len(times) < max_reps):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def td3bc_update_ms(seconds: float) -> float:
    from bench_updates import bench, synthetic_dataset

    return 1e3 / bench("td3bc", torch.device("cpu"), synthetic_dataset(100_000), seconds)["upd_s"]


def embedded(steps: int, window: int) -> None:
    """PRDC training on hopper-embedded: query time per actor step as the policy trains, vs TD3+BC updates."""
    from conftest import compose

    from rlreg.agents import build_agent
    from rlreg.regularizers.base import SetupContext
    from rlreg.config import to_run_config
    from rlreg.data.buffers import OfflineBuffer
    from rlreg.data.sources import load_dataset

    learners, buffer, data = {}, None, None
    for agent in ("td3bc", "prdc"):
        run = to_run_config(compose([f"agent={agent}", "dataset=hopper-embedded", "device=cpu"]))
        assert run.dataset is not None
        if buffer is None:
            data = load_dataset(run.dataset)
            mean, std = data.state_stats(run.dataset.state_std_eps)
            buffer = OfflineBuffer(data, obs_mean=mean, obs_std=std)
        start = time.perf_counter()
        learners[agent] = build_agent(run.agent, SetupContext.box(11, 3, 1.0, "cpu", dataset=data, buffer=buffer))
        print(f"{agent}: built in {time.perf_counter() - start:.2f} s ({len(buffer)} rows)")
    reg = learners["prdc"].regularizers[0]
    index = reg.index
    assert index is not None
    spent, dist = [0.0], []
    original = index.query

    def query(*args, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = original(*args, **kw)
        spent[0] += time.perf_counter() - t
        dist.append(out[1].sqrt().mean().item())
        return out

    index.query = query  # type: ignore[method-assign]
    gens = {agent: torch.Generator().manual_seed(0) for agent in learners}
    print("\n| updates | PRDC upd/s | query ms / actor step | mean NN dist | TD3+BC upd/s | overhead / update | x TD3+BC update |")
    print("|---|---|---|---|---|---|---|")
    for first in range(1, steps + 1, window):
        rates = {}
        for agent, learner in learners.items():
            spent[0], dist[:] = 0.0, []
            start = time.perf_counter()
            for step in range(first, first + window):
                learner.update(buffer.sample(256, gens[agent]), step, gens[agent])
            rates[agent] = window / (time.perf_counter() - start)
        per_query = spent[0] * 1e3 / (window // 2)
        overhead = 1e3 / rates["prdc"] - 1e3 / rates["td3bc"]
        print(f"| {first - 1}-{first + window - 1} | {rates['prdc']:.1f} | {per_query:.1f} | {np.mean(dist):.3f} | "
              f"{rates['td3bc']:.1f} | {overhead:.1f} ms | {overhead * rates['td3bc'] / 1e3:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", nargs="+", default=list(DIMS), choices=list(DIMS))
    parser.add_argument("--kinds", nargs="+", default=["walk", "iid"], choices=["walk", "iid"])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads = tree query workers")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per (case, path), at least 3 rounds")
    parser.add_argument("--rounds", type=int, default=15, help="at most this many interleaved calls per path")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS),
                        default=["kdtree-official", "auto", "tree", "brute-cpu"]
                        + (["brute-cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--no-td3bc", action="store_true", help="skip the TD3+BC reference update")
    parser.add_argument("--td3bc-seconds", type=float, default=5.0)
    parser.add_argument("--embedded", type=int, default=0, metavar="STEPS", help="train on hopper-embedded instead")
    parser.add_argument("--window", type=int, default=500, help="--embedded: updates per reported window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# rlreg bench_knn: commit {git_commit()}, {machine()}, {args.threads} thread(s), "
          + ("hopper-embedded training" if args.embedded else f"{args.rows} rows, B = {args.batch}, beta = {args.beta}"))
    if args.embedded:
        embedded(args.embedded, args.window)
        return
    ref = None if args.no_td3bc else td3bc_update_ms(args.td3bc_seconds)
    if ref is not None:
        print(f"\nTD3+BC update (bench_updates.bench, obs 17, act 6, batch 256, CPU): {ref:.1f} ms")
    print("\n| data | dims | policy | mean NN dist | path | build s | query ms / 256 keys | official / this | "
          "overhead / update | x TD3+BC update |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for dims in args.dims:
        obs_dim, act_dim = DIMS[dims]
        for kind in args.kinds:
            s, a = make_data(kind, args.rows, obs_dim, act_dim)
            keys = torch.from_numpy(np.concatenate([s * np.float32(args.beta), a], 1))
            indexes, builds = {}, {}
            for path in args.paths:
                device = "cuda" if path == "brute-cuda" else "cpu"
                start = time.perf_counter()
                if path == "kdtree-official":
                    indexes[path] = OfficialKDTree(keys, args.threads)
                else:
                    backend = {"auto": "auto", "tree": "tree"}.get(path, "brute")
                    indexes[path] = build_index(keys, backend=backend, device=device)
                if device == "cuda":
                    torch.cuda.synchronize()
                builds[path] = time.perf_counter() - start
            for regime in args.regimes:
                rows = rng.integers(0, args.rows, args.batch)
                sigma = REGIMES[regime]
                if sigma is None:
                    p = rng.uniform(-1, 1, (args.batch, act_dim)).astype(np.float32)
                else:
                    p = np.clip(a[rows] + sigma * rng.standard_normal((args.batch, act_dim)), -1, 1).astype(np.float32)
                query = torch.from_numpy(np.concatenate([s[rows] * np.float32(args.beta), p], 1))
                hint = torch.from_numpy(np.linalg.norm(p.astype(np.float64) - a[rows], axis=1))
                answers, official = {}, None
                calls = {}
                for path, index in indexes.items():
                    q = query.to("cuda") if path == "brute-cuda" else query

                    def call(index=index, q=q):  # type: ignore[no-untyped-def]
                        return index.query(q, upper_bound=hint)

                    calls[path] = call
                    if isinstance(index, AutoIndex):  # steady state for this kind of query: let it settle first
                        for _ in range(6):
                            call()
                        index.served = {"tree": 0, "brute": 0}
                # the paths take turns, one call each per round: a load change on a shared machine hits all of them
                times: dict[str, list[float]] = {path: [] for path in calls}
                start = time.perf_counter()
                while len(times[args.paths[0]]) < args.rounds and (
                        len(times[args.paths[0]]) < 3 or time.perf_counter() - start < args.seconds * len(calls)):
                    for path, call in calls.items():
                        secs, out = timed(call, 0.0)
                        times[path].append(secs)
                        answers[path] = out
                for path, index in indexes.items():
                    secs = statistics.median(times[path])
                    idx, sq = answers[path]  # type: ignore[misc]
                    answers[path] = idx.cpu()
                    official = secs if path == "kdtree-official" else official
                    per_update = secs * 1e3 / 2
                    rel = "-" if ref is None else f"{per_update / ref:.2f}"
                    name = path
                    if isinstance(index, AutoIndex):
                        name += " (" + ", ".join(f"{k} {v}" for k, v in index.served.items() if v) + ")"
                    vs = "-" if official is None else f"{official / secs:.2f}"
                    print(f"| {kind} | {dims} {obs_dim}+{act_dim} | {regime} | {sq.sqrt().mean().item():.3f} | {name} | "
                          f"{builds[path]:.2f} | {secs * 1e3:.1f} | {vs} | {per_update:.1f} ms | {rel} |", flush=True)
                ours = [answers[p] for p in answers if p != "kdtree-official"]
                if not all(torch.equal(ours[0], other) for other in ours):
                    raise SystemExit(f"rlreg's paths disagree on {kind}/{dims}/{regime}: this is a bug")
                if ours and "kdtree-official" in answers and not torch.equal(ours[0], answers["kdtree-official"]):
                    diff = int((ours[0] != answers["kdtree-official"]).sum())
                    print(f"(note: {diff} keys with another neighbour than KDTree: exact ties, see rlreg/data/knn.py)")


if __name__ == "__main__":
    main()
