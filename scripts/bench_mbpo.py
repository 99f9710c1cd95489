"""The cost of MBPO's 7-member probabilistic ensemble vs the single model of the Lipschitz agent, per 1,000 env steps:
model training, model rollouts and SAC updates, side by side in one run (the claim of Zheng et al., ICLR 2023, that
the single model is much cheaper; docs/agents/mbpo_lipschitz.md).

    python scripts/bench_mbpo.py --env hopper --threads 1
    python scripts/bench_mbpo.py --env hopper --device cuda --rollout-batch 100000

Each variant is built from its Hydra config (``agent=mbpo``, ``agent=mbpo_lipschitz``, and the single deterministic
model without the Lipschitz regularisers), on a real buffer of ``--real-steps`` uniform-random env transitions.
Timed, then scaled to 1,000 env steps with the env's settings (``model_train_freq``, ``trainer.utd_ratio``):

* model training: one :meth:`fit` call on the real buffer, capped at ``--model-epochs`` epochs so that both models
  do the same number of passes (early stopping would otherwise decide), times ``1000 / model_train_freq``;
* rollouts: one rollout of ``--rollout-batch`` start states for ``--k`` steps, times ``1000 / model_train_freq``;
* SAC updates: ``--updates`` updates on mixed real/model batches, times ``utd_ratio * 1000 / --updates``.

CPU time is reported next to wall-clock time: on a shared machine the CPU-time figure is the one that transfers.
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
sys.path.insert(0, str(ROOT))  # this checkout's rlreg, not an installed one

from rlreg.agents import build_agent  # noqa: E402
from rlreg.config import to_run_config  # noqa: E402
from rlreg.data.buffers import ReplayBuffer  # noqa: E402
from rlreg.envs import env_setup, make_env  # noqa: E402
from provenance import git_commit, machine  # noqa: E402

VARIANTS = {
    "mbpo (7 Gaussian, 5 elites)": ["agent=mbpo"],
    "single deterministic": ["agent=mbpo_lipschitz", "agent.critic_spectral_norm=none", "regularizer=[]"],
    "single det. + SN + adversarial": ["agent=mbpo_lipschitz"],
}


def _timed(fn, device: torch.device) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def real_buffer(run, setup, steps: int, device: torch.device) -> ReplayBuffer:
    env = make_env(run.env)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(steps, setup.obs_dim, setup.action_spec.dim, device=device, gamma=0.99)
    obs, _ = env.reset(seed=0)
    for _ in range(steps):
        act = rng.uniform(setup.action_spec.low, setup.action_spec.high).astype(np.float32)
        nxt, rew, term, trunc, _ = env.step(act)
        buf.add(obs, act, rew, nxt, term, trunc)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return buf


def bench(name: str, overrides: list[str], args: argparse.Namespace, device: torch.device) -> dict:
    from conftest import compose

    run = to_run_config(compose([f"env={args.env}", *overrides, f"agent.model.max_epochs={args.model_epochs}",
                                 f"agent.model.patience={args.model_epochs}",  # no early stop before the cap
                                 f"agent.rollout_batch_size={args.rollout_batch}", *args.overrides]))
    assert run.env is not None
    setup = env_setup(run.env, device, seed=0)
    learner = build_agent(run.agent, setup)
    learner.train()
    c = learner.config  # type: ignore[attr-defined]
    real = real_buffer(run, setup, args.real_steps, device)
    gen = torch.Generator(device=device).manual_seed(0)
    per_train = 1000 / c.model_train_freq
    out: dict = {"name": name, "utd": run.trainer.utd_ratio}
    fit: dict = {}
    wall, cpu = _timed(lambda: fit.update(learner.train_model(real, gen)), device)  # type: ignore[attr-defined]
    out["epochs"] = int(fit["model/epochs"].item())
    out["train"] = (wall * per_train, cpu * per_train)
    learner.set_rollout_length(args.k)  # type: ignore[attr-defined]
    wall, cpu = _timed(lambda: learner.rollout(real, gen), device)  # type: ignore[attr-defined]
    out["rollout"] = (wall * per_train, cpu * per_train)
    sampler = learner.sampler(real)
    learner.update(sampler.sample(run.trainer.batch_size, gen), 1, gen)  # warm-up (allocations)

    def updates() -> None:
        for i in range(args.updates):
            learner.update(sampler.sample(run.trainer.batch_size, gen), i + 2, gen)

    wall, cpu = _timed(updates, device)
    scale = run.trainer.utd_ratio * 1000 / args.updates
    out["sac"] = (wall * scale, cpu * scale)
    out["total"] = tuple(out["train"][i] + out["rollout"][i] + out["sac"][i] for i in range(2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="hopper", help="a conf/env name with conf/tuned/mbpo/<env>.yaml")
    parser.add_argument("--real-steps", type=int, default=5000, help="real transitions the model trains on")
    parser.add_argument("--model-epochs", type=int, default=10, help="model epochs per training (same for all)")
    parser.add_argument("--rollout-batch", type=int, default=100_000, help="rollout start states (MBPO: 100k)")
    parser.add_argument("--k", type=int, default=1, help="rollout length")
    parser.add_argument("--updates", type=int, default=200, help="timed SAC updates")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# bench_mbpo: env={args.env} device={device} threads={args.threads} commit={git_commit()}, {machine()}")
    print(f"# real data {args.real_steps} transitions, model training capped at {args.model_epochs} epochs, "
          f"rollouts {args.rollout_batch} x k={args.k}, {args.updates} timed SAC updates")
    rows = [bench(name, ov, args, device) for name, ov in VARIANTS.items()]
    print("\nseconds per 1,000 env steps (wall / CPU):\n")
    print("| variant | model training | rollouts | SAC updates (UTD) | total |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k][0]:.1f} / {r[k][1]:.1f}" for k in ("train", "rollout", "sac", "total")]
        cells[2] += f" ({r['utd']})"
        print(f"| {r['name']} | " + " | ".join(cells) + " |")
    base = rows[0]["total"][1]
    print("\nCPU-time ratio to MBPO: " + ", ".join(f"{r['name']}: {r['total'][1] / base:.2f}" for r in rows))


if __name__ == "__main__":
    main()
