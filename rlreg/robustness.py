"""Robustness evaluation under observation attacks, for any trained agent (docs/robustness.md).

    python -m rlreg.robustness <run_dir> [<run_dir> ...] --eps 0 0.05 0.1 0.15 0.2 \\
        --attack random action_diff min_Q [--episodes 10] [--attacker-run <run_dir>] [--summary <dir>]

The agent is rebuilt from ``<run_dir>/config.json`` and its newest checkpoint that loads (a newer one that
is truncated or corrupt is skipped, saying why; ``--checkpoint`` for another). At every step of an
evaluation episode the observation ``s`` is replaced by ``s + delta`` with ``|delta_k| <= eps * sd_k``
(an L-infinity box of ``eps`` dataset standard deviations, as in YangRui2015/RORL
``attackers/attacker.py``) before the deterministic policy acts; the environment itself is never changed.
Attack modes (``eps`` and the box are the same for all):

* ``random``: one uniform draw in the box per step.
* ``action_diff``: 50 uniform candidates (shared by the parallel episodes), keep the one that changes
  the policy most: symmetric KL of the pre-tanh Gaussians for SAC-family policies, squared action
  distance for deterministic ones.
* ``min_Q``: 50 uniform candidates and ``delta = 0``; keep the one minimising
  ``mean_i Q_i(s, pi(s + delta))`` (the ensemble mean of the agent's own critics, or of the critics of
  ``--attacker-run``).
* ``*_first_order``: one uniform start, 10 projected signed-gradient steps of ``0.1 * eps``.
* ``*_mixed_order``: 20 uniform starts, 10 projected signed-gradient steps each, keep the best.

The zero-order ``action_diff`` and ``min_Q`` are the official code's modes of those names; the
gradient-based attacks (the official ``*_first_order`` / ``*_mixed_order``) take gradients through the
policy and the critics with respect to the perturbation. The official code does each gradient step with a
freshly created Adam of learning rate ``0.1 * eps`` in raw units, which is a signed step of that size;
here the step is ``0.1 * eps`` in the normalised units of the box (i.e. ``0.1 * eps * sd`` raw) so it
matches the box on every dimension. ``--samples``/``--grad-steps``/``--step-size`` override the counts.

Discrete agents (DecQN, REValueD: greedy bins) are attacked the same way: ``action_diff`` measures the squared
distance of the greedy actions' env values, ``min_Q`` uses ``Q(s, a) = mean_i U_i(s, a_i)`` (ensemble mean). An
argmax has no gradient, so the gradient steps of ``*_first_order``/``*_mixed_order`` follow differentiable
stand-ins -- the margin of the best other bin over the clean greedy bin (``action_diff``) and the Q of the greedy
action at the perturbed input (``min_Q``) -- while the final pick among the candidates uses the real objectives.

The scale ``sd`` (``--std``, default ``auto``): the std of the learner's state normaliser, stored with the
checkpoint (agents trained on normalised states: ``sd + 1e-3``, RORL ``sd + 1e-6``), else the std of the
run's dataset (loaded again; e.g. SAC-N, which does not normalise), else,
for online runs, the std of the replay buffer stored in the checkpoint, else 1 (raw units). Fine-tuned
runs (``trainer.mode=finetune``) are evaluated in their dataset's env like offline ones. ``--std``
forces one source; ``--std-file`` gives the std as a ``.npy`` or JSON list. Online agents have no
dataset: their box is in replay-buffer std units (or raw units with ``--std ones``), so their ``eps`` is
not comparable with an offline agent's unless the same ``--std-file`` is given to both.

Output per run dir: ``robustness.csv`` (one row per attack and eps), ``robustness.md`` (table of the
normalised score, mean +- std over episodes) and ``robustness.png`` (normalised score against eps, one
line per attack; the return when the env has no reference scores). With several run dirs,
``--summary DIR`` also writes ``robustness_summary.{csv,md,png}`` in DIR: runs grouped by agent and task,
mean +- std over seeds of the per-seed means. Every episode of every (attack, eps) cell uses the same
environment seeds (``seed + trainer.eval_seed_offset + i``), so differences come from the attacks.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rlreg import runs
from rlreg.agents import build_agent
from rlreg.config import AgentConfig, EnvConfig, RunConfig
from rlreg.envs import env_setup, env_spaces, evaluate, normalized_score
from rlreg.learners.base import Learner
from rlreg.nets import TanhGaussianActor
from rlreg.regularizers.rorl import symmetric_kl
from rlreg.runs import run_name, task_name


@dataclass(frozen=True)
class AttackMode:
    objective: str | None  # None (random), "action_diff" or "min_Q"
    samples: int
    grad_steps: int
    include_zero: bool = False


ATTACKS: dict[str, AttackMode] = {
    "random": AttackMode(None, 1, 0),
    "action_diff": AttackMode("action_diff", 50, 0),
    "min_Q": AttackMode("min_Q", 50, 0, include_zero=True),
    "action_diff_first_order": AttackMode("action_diff", 1, 10),
    "min_Q_first_order": AttackMode("min_Q", 1, 10),
    "action_diff_mixed_order": AttackMode("action_diff", 20, 10),
    "min_Q_mixed_order": AttackMode("min_Q", 20, 10),
}
STD_SOURCES = ("auto", "checkpoint", "dataset", "buffer", "ones")


# --------------------------------------------------------------------------------------------------
# a trained agent from its run dir
# --------------------------------------------------------------------------------------------------


def eval_env(run: RunConfig) -> EnvConfig:
    """The env a run is evaluated in: its dataset's env (offline, fine-tuning) or its training env (online)."""
    if run.dataset is not None and run.trainer.mode != "online":
        return run.dataset.env
    if run.env is None:
        raise ValueError(f"{run.agent.name}: the run config names no environment to evaluate in")
    return run.env


@dataclass
class LoadedRun:
    run_dir: Path
    run: RunConfig
    learner: Learner
    checkpoint: Path
    state: dict[str, Any]
    obs_mean: np.ndarray | None  # the trainer's buffer normalisation (None: the agent sees raw states)
    obs_std: np.ndarray | None

    @property
    def env(self) -> EnvConfig:
        return eval_env(self.run)

    @property
    def name(self) -> str:
        return f"{run_name(self.run)}/{task_name(self.run)}"


def load_run(run_dir: Path | str, device: torch.device | str = "cpu", checkpoint: Path | None = None) -> LoadedRun:
    """Rebuild the learner of a run (without its regularizers: acting and the critics need none) and load
    its networks from the newest checkpoint that loads (or the given one; a newer checkpoint that does not
    load is skipped with a note saying why). All parameters are frozen, eval mode."""
    run_dir = Path(run_dir)
    device = torch.device(device)
    stored = runs.load_run(run_dir, map_location=device, checkpoint=checkpoint)
    for bad in stored.skipped:
        print(f"[rlreg] skipped checkpoint {bad}; using {stored.checkpoint}", file=sys.stderr, flush=True)
    run, ckpt, state = stored.run, stored.checkpoint, stored.state

    def arr(x: Any) -> np.ndarray | None:
        return None if x is None else torch.as_tensor(x).detach().cpu().numpy().astype(np.float32)

    bare = AgentConfig(run.agent.name, run.agent.learner, run.agent.learner_config, regularizers={})
    # the trainer's state normalisation, as stored with the run: the learner's state normaliser applies it
    setup = env_setup(eval_env(run), device, seed=run.seed, obs_mean=arr(state.get("obs_mean")),
                      obs_std=arr(state.get("obs_std")))
    learner = build_agent(bare, setup)
    missing, _ = learner.load_state_dict(state["learner"]["networks"], strict=False)  # extra: regularizers' parts
    if missing:
        raise RuntimeError(f"{ckpt}: the checkpoint lacks {missing[:3]} of the rebuilt {run.agent.name} learner")
    learner.eval()
    learner.requires_grad_(False)
    return LoadedRun(run_dir, run, learner, ckpt, state, arr(state.get("obs_mean")), arr(state.get("obs_std")))


def attack_std(loaded: LoadedRun, source: str = "auto", std_file: Path | None = None) -> tuple[np.ndarray, str]:
    """The per-dimension raw-unit scale of the eps box and where it came from (see module docstring)."""
    obs_dim = int(np.prod(env_spaces(loaded.env)[3].shape))
    if std_file is not None:
        p = Path(std_file)
        std = np.load(p) if p.suffix == ".npy" else np.asarray(json.loads(p.read_text()), dtype=np.float32)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
        if std.shape != (obs_dim,):
            raise ValueError(f"--std-file {p}: expected {obs_dim} values, got {std.shape[0]}")
        return std, f"file:{p}"
    if source not in STD_SOURCES:
        raise ValueError(f"--std {source!r} is unknown; choose from {', '.join(STD_SOURCES)}")

    def from_checkpoint() -> np.ndarray | None:  # what the learner's state normaliser divides by
        norm = loaded.learner.state_normalizer
        return norm.std.detach().cpu().numpy().astype(np.float32) if norm.active else None

    def from_dataset() -> np.ndarray | None:
        if loaded.run.dataset is None or loaded.run.trainer.mode == "online":
            return None
        from rlreg.data.sources import load_dataset

        obs = load_dataset(loaded.run.dataset).observations.astype(np.float64)
        return obs.std(axis=0).astype(np.float32)

    def from_buffer() -> np.ndarray | None:
        buf = (loaded.state.get("extra") or {}).get("buffer")
        if not buf or int(buf.get("size", 0)) < 2:
            return None
        obs = buf["observations"].double()
        std = obs.std(dim=0, unbiased=False).cpu().numpy().astype(np.float32)
        if loaded.obs_std is not None:  # the buffer stores what the agent saw
            std = std * loaded.obs_std
        return std

    finders = {"checkpoint": from_checkpoint, "dataset": from_dataset, "buffer": from_buffer}
    order = ["checkpoint", "dataset", "buffer"] if source == "auto" else [source] if source != "ones" else []
    for name in order:
        std = finders[name]()
        if std is not None:
            return np.asarray(std, dtype=np.float32), name
        if source != "auto":
            raise ValueError(f"--std {source}: {loaded.run_dir} has no such statistics")
    return np.ones(obs_dim, dtype=np.float32), "ones"


# --------------------------------------------------------------------------------------------------
# the attacks
# --------------------------------------------------------------------------------------------------


def is_discrete(learner: Learner) -> bool:
    """A learner acting in discretised bins (DecQN, REValueD): its greedy action is an argmax."""
    spec = getattr(learner, "action_spec", None)
    return bool(spec is not None and spec.is_discrete)


def policy_action(learner: Learner, x: Tensor) -> Tensor:
    """Deterministic action, differentiable with respect to ``x`` (SAC: ``tanh(mean)``; TD3: ``pi(x)``); the
    greedy bins of a discrete learner (piecewise constant in ``x``)."""
    if is_discrete(learner):
        return learner.act(x, deterministic=True)
    actor = getattr(learner, "actor", None)
    if isinstance(actor, TanhGaussianActor):
        return actor(x, deterministic=True, with_log_prob=False)[0]
    if actor is not None:
        return actor(x)
    return learner.act(x, deterministic=True)


def policy_divergence(learner: Learner, x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-row change of the policy from ``x`` to ``x_hat``: symmetric KL of the pre-tanh Gaussians
    (as the official ``action_diff``) or, for deterministic policies, the squared action distance."""
    if is_discrete(learner):
        return discrete_policy_change(learner, x, x_hat)
    actor = getattr(learner, "actor", None)
    if isinstance(actor, TanhGaussianActor):
        m, ls = actor.dist_params(x)
        m_hat, ls_hat = actor.dist_params(x_hat)
        return symmetric_kl(m, ls, m_hat, ls_hat)
    return (policy_action(learner, x) - policy_action(learner, x_hat)).square().sum(-1)


def discrete_policy_change(learner: Learner, x: Tensor, x_hat: Tensor) -> Tensor:
    """How much a discrete learner's greedy action moves from ``x`` to ``x_hat``. Without gradient: the squared
    distance of the two greedy actions' env values (as for deterministic policies). With gradient (the
    gradient-based attacks; an argmax has none): the mean over dimensions of the margin by which the best other
    bin beats the clean greedy bin in the greedy utilities at ``x_hat`` (positive once that dimension's action
    changed), which is differentiable in ``x_hat``."""
    spec = learner.action_spec
    clean = learner.act(x, deterministic=True)
    if not (torch.is_grad_enabled() and x_hat.requires_grad):
        values = spec.values().to(x.device)
        dims = torch.arange(spec.dim, device=x.device)
        moved = values[dims, learner.act(x_hat, deterministic=True)] - values[dims, clean]
        return moved.square().sum(-1)
    u = learner.greedy_utilities(x_hat)  # (B, N, n_max), padded bins -inf
    taken = u.gather(-1, clean.unsqueeze(-1)).squeeze(-1)
    others = u.scatter(-1, clean.unsqueeze(-1), float("-inf")).max(dim=-1).values
    return (others - taken).mean(dim=-1)


class QFunction:
    """``mean_i Q_i(x, a)`` of a run's critics, for states in the *victim's* input space ``x``."""

    def __init__(self, loaded: LoadedRun, victim: LoadedRun | None = None) -> None:
        critic = getattr(loaded.learner, "critic", None)
        if critic is None:
            raise ValueError(f"{loaded.run_dir}: the agent has no critic; min_Q attacks need one")
        self.critic = critic
        self.learner, self.discrete = loaded.learner, is_discrete(loaded.learner)
        device = next(critic.parameters()).device
        t = lambda a: None if a is None else torch.as_tensor(a, device=device)  # noqa: E731
        victim = victim or loaded
        self.v_mean, self.v_std = t(victim.obs_mean), t(victim.obs_std)
        self.a_mean, self.a_std = t(loaded.obs_mean), t(loaded.obs_std)
        self.same = victim is loaded

    def __call__(self, x: Tensor, action: Tensor) -> Tensor:
        if not self.same:
            raw = x if self.v_mean is None else x * self.v_std + self.v_mean
            x = raw if self.a_mean is None else (raw - self.a_mean) / self.a_std
        if self.discrete:  # Q_k(s, a) = mean_i U_{k,i}(s, a_i) of the bins a
            return self.learner.q_values(x, action).mean(dim=0)
        return self.critic(x, action).mean(dim=0)


class ObservationAttack:
    """Perturbs a batch of policy inputs ``x`` ``(M, |S|)`` inside ``|x_hat - x| <= eps * scale``.

    ``scale``: the box half-width per unit eps in the policy's input space (``sd / obs_std`` when the
    agent normalises observations before its networks, else ``sd``)."""

    def __init__(
        self,
        mode: str,
        eps: float,
        learner: Learner,
        scale: Tensor,
        q_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
        samples: int | None = None,
        grad_steps: int | None = None,
        step_size: float = 0.1,
    ) -> None:
        if mode not in ATTACKS:
            raise ValueError(f"--attack {mode!r} is unknown; choose from {', '.join(ATTACKS)}")
        if eps < 0:
            raise ValueError(f"--eps must be >= 0, got {eps}")
        spec = ATTACKS[mode]
        self.mode, self.eps, self.learner, self.scale = mode, float(eps), learner, scale
        self.objective = spec.objective
        # overrides apply to the search attacks only (and the step count to the gradient-based ones only)
        self.samples = samples if samples is not None and spec.objective is not None else spec.samples
        self.grad_steps = grad_steps if grad_steps is not None and spec.grad_steps > 0 else spec.grad_steps
        self.include_zero = spec.include_zero
        self.step = step_size * self.eps
        self.generator = generator
        if self.objective == "min_Q" and q_fn is None:
            raise ValueError(f"attack {mode}: needs a Q function (the agent's critics or --attacker-run)")
        self.q_fn = q_fn

    def _uniform(self, rows: int) -> Tensor:
        u = torch.rand(rows, self.scale.shape[0], generator=self.generator, device=self.scale.device)
        return u.mul_(2.0 * self.eps).sub_(self.eps)  # normalised units

    def _loss(self, x: Tensor, delta: Tensor) -> Tensor:
        """Per-row quantity the attacker minimises; ``delta`` in normalised units."""
        x_hat = x + delta * self.scale
        if self.objective == "min_Q":
            assert self.q_fn is not None
            if delta.requires_grad and is_discrete(self.learner):
                # a greedy (argmax) action has no gradient: the gradient steps descend the Q of the greedy action
                # at the perturbed input; the final pick among the candidates uses Q(s, a*(s + delta)) as above
                return self.q_fn(x_hat, policy_action(self.learner, x_hat))
            return self.q_fn(x, policy_action(self.learner, x_hat))
        return -policy_divergence(self.learner, x, x_hat)

    def __call__(self, x: Tensor) -> Tensor:
        if self.eps == 0.0:
            return x
        m = x.shape[0]
        if self.objective is None:
            return x + self._uniform(m) * self.scale
        k = self.samples
        cand = self._uniform(k)
        if self.include_zero:
            cand = torch.cat([cand, torch.zeros_like(cand[:1])])
        k = cand.shape[0]
        delta = cand.unsqueeze(0).expand(m, k, -1).reshape(m * k, -1)  # the same candidates for every state
        x_rep = x.unsqueeze(1).expand(m, k, -1).reshape(m * k, -1)
        if self.grad_steps > 0:
            with torch.enable_grad():
                for _ in range(self.grad_steps):
                    delta = delta.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self._loss(x_rep, delta).sum(), delta)
                    delta = (delta - self.step * grad.sign()).clamp_(-self.eps, self.eps)
        with torch.no_grad():
            best = self._loss(x_rep, delta.detach()).view(m, k).argmin(dim=1)
            chosen = delta.detach().view(m, k, -1)[torch.arange(m, device=x.device), best]
        return x + chosen * self.scale


# --------------------------------------------------------------------------------------------------
# evaluation over eps and attacks
# --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    attack: str
    eps: float
    returns: np.ndarray
    scores: np.ndarray | None

    def row(self, loaded: LoadedRun, std_source: str) -> dict[str, Any]:
        return {
            "run": loaded.name,
            "run_dir": str(loaded.run_dir),
            "seed": loaded.run.seed,
            "step": int(loaded.state["step"]),
            "attack": self.attack,
            "eps": self.eps,
            "episodes": len(self.returns),
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "score_mean": None if self.scores is None else float(self.scores.mean()),
            "score_std": None if self.scores is None else float(self.scores.std()),
            "std_source": std_source,
        }


@dataclass
class Options:
    eps: Sequence[float] = (0.0, 0.05, 0.1)
    attacks: Sequence[str] = ("random", "action_diff", "min_Q")
    episodes: int | None = None  # None: the run's trainer.eval_episodes
    seed: int = 0
    std: str = "auto"
    std_file: Path | None = None
    samples: int | None = None
    grad_steps: int | None = None
    step_size: float = 0.1


def evaluate_run(loaded: LoadedRun, opts: Options, attacker: LoadedRun | None = None) -> tuple[list[Cell], str]:
    """Every (attack, eps) cell of ``opts`` for one run; returns the cells and the std source."""
    for mode in opts.attacks:
        if mode not in ATTACKS:
            raise ValueError(f"--attack {mode!r} is unknown; choose from {', '.join(ATTACKS)}")
    device = next(loaded.learner.parameters()).device
    std, source = attack_std(loaded, opts.std, opts.std_file)
    scale = torch.as_tensor(std, device=device)
    if loaded.obs_std is not None:  # the agent sees (s - mean) / obs_std
        scale = scale / torch.as_tensor(loaded.obs_std, device=device)
    needs_q = any(ATTACKS[m].objective == "min_Q" for m in opts.attacks)
    q_fn = QFunction(attacker, victim=loaded) if attacker is not None else QFunction(loaded) if needs_q else None
    env, t = loaded.env, loaded.run.trainer
    episodes = opts.episodes or t.eval_episodes
    cells = []
    for a_idx, mode in enumerate(opts.attacks):
        for e_idx, eps in enumerate(opts.eps):
            gen = torch.Generator(device=device)
            gen.manual_seed(opts.seed * 1_000_003 + 1000 * a_idx + e_idx)
            attack = ObservationAttack(mode, eps, loaded.learner, scale, q_fn=q_fn, generator=gen,
                                       samples=opts.samples, grad_steps=opts.grad_steps, step_size=opts.step_size)

            def policy(x: Tensor, attack: ObservationAttack = attack) -> Tensor:
                action = loaded.learner.act(attack(x), deterministic=True)
                return torch.from_numpy(loaded.learner.action_spec.to_env(action))  # stored -> env values (bins)

            res = evaluate(policy, env, episodes=episodes, seed=loaded.run.seed + t.eval_seed_offset, device=device,
                           obs_mean=loaded.obs_mean, obs_std=loaded.obs_std)
            scores = None
            if env.ref_min_score is not None and env.ref_max_score is not None:
                scores = np.array([normalized_score(r, env.ref_min_score, env.ref_max_score) for r in res.returns])
            cells.append(Cell(mode, float(eps), res.returns, scores))
    return cells, source


# --------------------------------------------------------------------------------------------------
# tables and plots
# --------------------------------------------------------------------------------------------------

COLUMNS = ["run", "run_dir", "seed", "step", "attack", "eps", "episodes", "return_mean", "return_std",
           "score_mean", "score_std", "std_source"]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in columns})


def _fmt(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.1f} ± {std:.1f}"


def markdown_table(rows: list[dict[str, Any]], group: str, value: str) -> str:
    """Rows ``eps``, one column per ``group`` value (attack, or run/attack), cells ``mean ± std``."""
    groups = list(dict.fromkeys(r[group] for r in rows))
    eps = sorted({r["eps"] for r in rows})
    cell = {(r[group], r["eps"]): _fmt(r[f"{value}_mean"], r[f"{value}_std"]) for r in rows}
    lines = ["| eps | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for e in eps:
        lines.append(f"| {e:g} | " + " | ".join(cell.get((g, e), "") for g in groups) + " |")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]], group: str, value: str, title: str,
         xlabel: str = "attack budget eps (state std units)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for g in dict.fromkeys(r[group] for r in rows):
        pts = sorted((r["eps"], r[f"{value}_mean"], r[f"{value}_std"]) for r in rows if r[group] == g)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=str(g))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalized score" if value == "score" else "return")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run_outputs(loaded: LoadedRun, rows: list[dict[str, Any]], prefix: str = "robustness") -> list[Path]:
    value = "score" if rows and rows[0]["score_mean"] is not None else "return"
    out = loaded.run_dir
    csv_path, md_path, png_path = (out / f"{prefix}.{ext}" for ext in ("csv", "md", "png"))
    write_csv(csv_path, rows, COLUMNS)
    header = (f"# Robustness of {loaded.name} seed {loaded.run.seed} (checkpoint step {rows[0]['step']})\n\n"
              f"{'Normalized score' if value == 'score' else 'Return'} (mean ± std over {rows[0]['episodes']} "
              f"episodes) under observation attacks of budget eps x state std (std source: "
              f"{rows[0]['std_source']}).\n\n")
    md_path.write_text(header + markdown_table(rows, "attack", value) + "\n")
    plot(png_path, rows, "attack", value, f"{loaded.name} seed {loaded.run.seed}",
         xlabel=f"attack budget eps (x state std, source: {rows[0]['std_source']})")
    return [csv_path, md_path, png_path]


def summarize(all_rows: list[dict[str, Any]], out_dir: Path, prefix: str = "robustness_summary") -> list[Path]:
    """Mean ± std over seeds of the per-seed means, per (run, attack, eps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    value = "score" if all_rows and all_rows[0]["score_mean"] is not None else "return"
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in all_rows:
        groups.setdefault((r["run"], r["attack"], r["eps"]), []).append(r[f"{value}_mean"])
    rows = []
    for (run, attack, eps), vals in groups.items():
        v = np.asarray(vals, dtype=np.float64)
        rows.append({"run": run, "attack": attack, "eps": eps, "seeds": len(v), "curve": f"{run} {attack}",
                     f"{value}_mean": float(v.mean()), f"{value}_std": float(v.std())})
    cols = ["run", "attack", "eps", "seeds", f"{value}_mean", f"{value}_std"]
    paths = [out_dir / f"{prefix}.{ext}" for ext in ("csv", "md", "png")]
    write_csv(paths[0], rows, cols)
    seeds = sorted({r["seeds"] for r in rows})
    paths[1].write_text(
        f"# Robustness summary\n\n{'Normalized score' if value == 'score' else 'Return'}: mean ± std over seeds "
        f"({'/'.join(map(str, seeds))} seeds) of the per-seed mean over episodes.\n\n"
        + markdown_table(rows, "curve", value) + "\n"
    )
    plot(paths[2], rows, "curve", value, "robustness (mean ± std over seeds)")
    return paths


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m rlreg.robustness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (config.json + checkpoints/)")
    parser.add_argument("--eps", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--attack", nargs="+", default=["random", "action_diff", "min_Q"], choices=list(ATTACKS))
    parser.add_argument("--episodes", type=int, default=None, help="episodes per cell (default trainer.eval_episodes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' random draws")
    parser.add_argument("--std", default="auto", choices=STD_SOURCES, help="where the box scale comes from")
    parser.add_argument("--std-file", type=Path, default=None, help=".npy or JSON list: the box scale per dim")
    parser.add_argument("--attacker-run", type=Path, default=None, help="run whose critics min_Q attacks minimise")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (single run dir only)")
    parser.add_argument("--samples", type=int, default=None, help="override the number of candidates/starts")
    parser.add_argument("--grad-steps", type=int, default=None, help="override gradient steps (gradient modes)")
    parser.add_argument("--step-size", type=float, default=0.1, help="gradient step, fraction of eps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--summary", type=Path, default=None, help="write an over-seeds summary into this dir")
    parser.add_argument("--prefix", default="robustness", help="output file name prefix in each run dir")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None and len(args.run_dirs) > 1:
        parser.error("--checkpoint needs exactly one run dir")
    opts = Options(eps=args.eps, attacks=args.attack, episodes=args.episodes, seed=args.seed, std=args.std,
                   std_file=args.std_file, samples=args.samples, grad_steps=args.grad_steps, step_size=args.step_size)
    attacker = load_run(args.attacker_run, args.device) if args.attacker_run else None
    all_rows: list[dict[str, Any]] = []
    for run_dir in args.run_dirs:
        loaded = load_run(run_dir, args.device, args.checkpoint)
        cells, source = evaluate_run(loaded, opts, attacker)
        rows = [c.row(loaded, source) for c in cells]
        paths = write_run_outputs(loaded, rows, args.prefix)
        print(f"[rlreg] {loaded.name} seed {loaded.run.seed}: " + ", ".join(map(str, paths)), flush=True)
        print((loaded.run_dir / f"{args.prefix}.md").read_text(), flush=True)
        all_rows += rows
    if args.summary is not None:
        paths = summarize(all_rows, args.summary)
        print("[rlreg] summary: " + ", ".join(map(str, paths)), flush=True)
        print(paths[1].read_text(), flush=True)
    return all_rows


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` with the exit codes of the README: a user error is one ``[rlreg]`` line and a hint, exit 2."""
    from rlreg.errors import EXIT_USER_ERROR, UserError, report_user_error

    try:
        main(argv)
    except UserError as err:
        report_user_error(err)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
