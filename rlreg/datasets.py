"""Benchmark datasets made here: D4RL's locomotion recipe on Gymnasium MuJoCo v5, from behaviour policies
the project ships (``rlreg/assets``), written as local Minari datasets ``rlreg/<env>/<level>-v0``.

    python -m rlreg.datasets make env=hopper level=medium            # one dataset
    python -m rlreg.datasets make env=all level=all                  # all 15
    python -m rlreg.datasets export id=rlreg/hopper/medium-v0 out=hopper-medium.hdf5   # D4RL hdf5 layout
    python -m rlreg.datasets summary                                 # table of what is built
    python -m rlreg.datasets replay run=<sac run dir> step=30000 name=hopper_medium   # ship a medium-replay
    python -m rlreg.datasets replay run=<dir> step=200000 upto=110000 name=hopper_medium  # its first 110k rows

Recipe (D4RL paper, section 5): ``random`` = 1M transitions of a randomly initialised tanh-Gaussian actor;
``expert`` = 1M of the best evaluated policy of the SAC training run; ``medium`` = 1M of the run's checkpoint
closest to 1/3 of the expert's return; ``medium-replay`` = every transition of that run's replay buffer up to
the medium checkpoint (shipped compressed, ``rlreg/assets/<env>_medium_replay.npz``); ``medium-expert`` =
medium followed by expert. Actions are sampled from the stochastic policy (as D4RL's rlkit collection did),
with a torch generator seeded by ``seed``; episodes end at termination or at the v5 time limit of 1000 steps,
terminations and truncations recorded apart. A dataset is a deterministic function of (policy file, seed,
size, env id): the same inputs give identical arrays.

Datasets go to ``$MINARI_DATASETS_PATH`` (Minari's default ``~/.minari/datasets`` when unset) or ``root=``;
an existing dataset is never overwritten unless ``force=true``.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rlreg.config import load_env_config
from rlreg.data.buffers import BUFFER_ROWS
from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError
from rlreg.errors import UserError, user_exit
from rlreg.policies import ASSETS, collect_episodes, load_policy, policy_fn, sha256_file

ENVS = ("hopper", "halfcheetah", "walker2d")  # names of conf/env/<name>.yaml
LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")
DEFAULT_TRANSITIONS = 1_000_000
RANDOM_ACTOR_HIDDEN = (256, 256)  # the architecture of the SAC actors the other levels come from


def dataset_id(env: str, level: str) -> str:
    """Minari id of a generated dataset: ``rlreg/<env>/<level>-v0``."""
    return f"rlreg/{env}/{level}-v0"


def parse_id(ds_id: str) -> tuple[str, str]:
    """``rlreg/<env>/<level>-v0`` -> (env, level), checked against :data:`ENVS` and :data:`LEVELS`."""
    parts = ds_id.split("/")
    if len(parts) != 3 or parts[0] != "rlreg" or not parts[2].endswith("-v0"):
        raise DatasetError(f"dataset id {ds_id!r}: expected rlreg/<env>/<level>-v0 (env in {ENVS}, level in {LEVELS})")
    env, level = parts[1], parts[2][: -len("-v0")]
    _check(env, level)
    return env, level


def _check(env: str, level: str) -> None:
    if env not in ENVS:
        raise DatasetError(f"env={env!r} is unknown; choose one of: {', '.join(ENVS)} (or all)")
    if level not in LEVELS:
        raise DatasetError(f"level={level!r} is unknown; choose one of: {', '.join(LEVELS)} (or all)")


@dataclass(frozen=True)
class Recipe:
    """Everything a generated dataset is a function of (plus the policy file's bytes)."""

    env: str
    level: str
    seed: int = 0
    num_transitions: int = DEFAULT_TRANSITIONS
    # a policy file (.pt with its .json) instead of the shipped rlreg/assets/<env>_<level>.pt (medium/expert),
    # or a replay .npz instead of rlreg/assets/<env>_medium_replay.npz (medium-replay)
    policy: str | None = None
    num_envs: int = 16

    @property
    def id(self) -> str:
        return dataset_id(self.env, self.level)


# ------------------------------------------------------------------------------------------- collection


def random_actor(obs_dim: int, act_dim: int, seed: int) -> torch.nn.Module:
    """A randomly initialised tanh-Gaussian actor (PyTorch default init under ``torch.manual_seed(seed)``)."""
    from rlreg.nets import TanhGaussianActor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = TanhGaussianActor(obs_dim, act_dim, hidden=RANDOM_ACTOR_HIDDEN)
    return actor.eval()


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters (the identity of a policy that exists in no file)."""
    buf = io.BytesIO()
    for k, v in sorted(module.state_dict().items()):
        buf.write(k.encode())
        buf.write(v.detach().cpu().contiguous().numpy().tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def replay_path(env: str) -> Path:
    return ASSETS / f"{env}_medium_replay.npz"


def collect(recipe: Recipe, progress: bool = False) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Episodes of ``random``, ``medium`` or ``expert`` and a record of the generating policy."""
    env_cfg = load_env_config(recipe.env)
    if recipe.level == "random":
        from rlreg.envs import env_spaces

        obs_dim, act_dim, _, _, _ = env_spaces(env_cfg)
        actor = random_actor(obs_dim, act_dim, recipe.seed)
        record = {"policy": f"random init, torch.manual_seed({recipe.seed}), hidden {list(RANDOM_ACTOR_HIDDEN)}",
                  "policy_sha256": state_sha256(actor)}
    else:
        name = recipe.policy or f"{recipe.env}_{recipe.level}"  # rlreg/assets/<env>_<level>.pt
        try:
            actor, meta = load_policy(name)
        except FileNotFoundError as err:
            raise DatasetError(
                f"{recipe.id}: behaviour policy {name!r} not found ({err}); train one with rlreg's SAC and export "
                "it (scripts/export_policy.py), or pass policy=<path.pt>"
            ) from None
        if meta.get("env") not in (None, env_cfg.id):
            raise DatasetError(f"{recipe.id}: policy {name!r} was trained in {meta['env']}, not {env_cfg.id}")
        record = {"policy": name, "policy_sha256": meta["sha256"],
                  "policy_return": meta.get("evaluation", {}).get("return"),
                  "policy_training": meta.get("trained_by", {}).get("command")}
    episodes = collect_episodes(
        policy_fn(actor, stochastic=True, seed=recipe.seed), env_cfg, recipe.num_transitions, recipe.seed,
        num_envs=recipe.num_envs, progress=progress,
    )
    return episodes, record


# -------------------------------------------------------------------------------------- medium-replay


def replay_episodes(buffer_state: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """Episodes of a single-env online run's replay buffer (``ReplayBuffer.state_dict``), oldest first.

    The buffer stores ``(s, a, r, s', not_done)`` in env order; an episode ends where ``not_done`` is 0
    (termination) or where the next row does not start at this row's ``s'`` (a reset after a truncation). The
    newest episode, unfinished at the checkpoint, ends in a truncation.
    """
    size, ptr, cap = int(buffer_state["size"]), int(buffer_state["ptr"]), int(buffer_state["capacity"])
    arrays = {k: np.asarray(buffer_state[k]) for k in ("observations", "actions", "rewards", "next_observations",
                                                       "not_done")}
    if size == cap and ptr:  # a full ring: oldest row at ptr
        arrays = {k: np.roll(v, -ptr, axis=0) for k, v in arrays.items()}
    obs, nxt = arrays["observations"], arrays["next_observations"]
    terminated = arrays["not_done"] == 0
    breaks = np.zeros(size, dtype=bool)
    breaks[:-1] = np.any(nxt[:-1] != obs[1:], axis=1)
    ends = np.flatnonzero(terminated | breaks)
    if size and (ends.size == 0 or ends[-1] != size - 1):
        ends = np.append(ends, size - 1)
    episodes, start = [], 0
    for end in ends:
        sl = slice(start, end + 1)
        term = terminated[sl].copy()
        episodes.append({
            "observations": np.concatenate([obs[sl], nxt[end : end + 1]]),
            "actions": arrays["actions"][sl],
            "rewards": arrays["rewards"][sl].astype(np.float64),
            "terminations": term,
            "truncations": np.eye(1, end + 1 - start, end - start, dtype=bool)[0] & ~term,
        })
        start = end + 1
    return episodes


def buffer_prefix(buffer_state: dict[str, Any], rows: int, added: int, source: Path | str = "buffer") -> dict[str, Any]:
    """The first ``rows`` rows of a replay buffer's state that received ``added`` rows in all (the run's env
    steps): only a buffer that never wrapped around still holds them."""
    size, cap = int(buffer_state["size"]), int(buffer_state["capacity"])
    if added > cap:
        raise DatasetError(f"{source}: the replay buffer has wrapped around ({added} rows into {cap}); upto= needs "
                           "a checkpoint from before the buffer was full")
    if not 0 < rows <= size:
        raise DatasetError(f"{source}: upto={rows} must be in [1, {size}] (rows in the buffer)")
    prefix = {k: np.asarray(buffer_state[k])[:rows] for k in BUFFER_ROWS if k in buffer_state}
    return {**buffer_state, **prefix, "size": rows, "ptr": rows % cap}


def save_replay(episodes: Sequence[dict[str, np.ndarray]], path: Path, meta: dict[str, Any]) -> None:
    """Episodes as one compressed ``.npz`` (flat arrays + episode lengths) and a ``.json`` record."""
    lengths = np.array([len(ep["rewards"]) for ep in episodes], dtype=np.int64)
    flat = {k: np.concatenate([ep[k] for ep in episodes]) for k in ("observations", "actions", "rewards",
                                                                     "terminations", "truncations")}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, lengths=lengths, **flat)
    meta = {**meta, "sha256": sha256_file(path), "transitions": int(lengths.sum()), "episodes": len(episodes)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def load_replay(path: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    if not path.exists():
        raise DatasetError(
            f"medium-replay source {path} not found; ship it with `python -m rlreg.datasets replay run=<sac run dir> "
            "step=<medium step> name=<env>_medium` or pass policy=<replay.npz>"
        )
    with np.load(path) as z:
        lengths = z["lengths"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        obs_bounds = bounds + np.arange(len(bounds))  # each episode stores T+1 observations
        episodes = [
            {
                "observations": z["observations"][obs_bounds[i] : obs_bounds[i + 1]],
                **{k: z[k][bounds[i] : bounds[i + 1]] for k in ("actions", "rewards", "terminations", "truncations")},
            }
            for i in range(len(lengths))
        ]
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return episodes, {"policy": f"replay {path.name}", "policy_sha256": sha256_file(path),
                      "policy_training": meta.get("trained_by", {}).get("command")}


# ------------------------------------------------------------------------------------------- building


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import gymnasium
    import mujoco

    return {"rlreg_version": version("rlreg"), "mujoco_version": mujoco.__version__,
            "gymnasium_version": gymnasium.__version__, "torch_version": torch.__version__,
            "python_version": platform.python_version()}


def _exists(ds_id: str, root: str | None) -> bool:
    from rlreg.data.minari_io import _datasets_path

    from minari.storage.datasets_root_dir import get_dataset_path

    with _datasets_path(root):
        return (Path(get_dataset_path(ds_id)) / "data").exists()


def load_episodes(ds_id: str, root: str | None = None) -> list[dict[str, np.ndarray]]:
    """The episodes of a local Minari dataset, as written."""
    import minari

    from rlreg.data.minari_io import _datasets_path

    with _datasets_path(root):
        ds = minari.load_dataset(ds_id, download=False)
        return [{"observations": np.asarray(ep.observations), "actions": np.asarray(ep.actions),
                 "rewards": np.asarray(ep.rewards), "terminations": np.asarray(ep.terminations),
                 "truncations": np.asarray(ep.truncations)} for ep in ds.iterate_episodes()]


def make(recipe: Recipe, root: str | None = None, force: bool = False, progress: bool = True) -> str:
    """Build the dataset of ``recipe`` (and for medium-expert its two parts, if missing); returns its id."""
    from minari.storage.datasets_root_dir import get_dataset_path

    from rlreg.data.minari_io import _datasets_path, create_minari_dataset

    _check(recipe.env, recipe.level)
    ds_id = recipe.id
    if _exists(ds_id, root):
        if not force:
            print(f"[rlreg] {ds_id} exists; keeping it (force=true rebuilds)", flush=True)
            return ds_id
    env_cfg = load_env_config(recipe.env)
    start = time.perf_counter()
    if recipe.level == "medium-expert":
        # D4RL: the medium and the expert datasets (1M each) one after the other
        parts = [Recipe(recipe.env, lvl, recipe.seed, recipe.num_transitions, None, recipe.num_envs)
                 for lvl in ("medium", "expert")]
        for part in parts:
            make(part, root=root, force=False, progress=progress)
        episodes = [ep for part in parts for ep in load_episodes(part.id, root)]
        record = {"policy": f"{dataset_id(recipe.env, 'medium')} + {dataset_id(recipe.env, 'expert')}",
                  "policy_sha256": ",".join(_metadata(p.id, root).get("policy_sha256", "?") for p in parts)}
    elif recipe.level == "medium-replay":
        episodes, record = load_replay(Path(recipe.policy) if recipe.policy else replay_path(recipe.env))
    else:
        episodes, record = collect(recipe, progress=progress)
    if force and _exists(ds_id, root):
        import shutil

        with _datasets_path(root):
            shutil.rmtree(get_dataset_path(ds_id))
    meta = {
        "ref_min_score": env_cfg.ref_min_score, "ref_max_score": env_cfg.ref_max_score,
        "algorithm_name": "rlreg SAC behaviour policies, D4RL recipe",
        "description": f"{recipe.level} level of {env_cfg.id}, D4RL recipe rebuilt with rlreg (python -m rlreg.datasets)",
        "recipe_level": recipe.level, "recipe_seed": recipe.seed, "recipe_num_transitions": recipe.num_transitions,
        "env_id": env_cfg.id, "command": " ".join(["python -m rlreg.datasets", *sys.argv[1:]]),
        **{k: v for k, v in record.items() if v is not None}, **_versions(),
    }
    create_minari_dataset(ds_id, episodes, env_cfg.id, metadata=meta, data_path=root)
    n = sum(len(ep["rewards"]) for ep in episodes)
    print(f"[rlreg] wrote {ds_id}: {n} transitions, {len(episodes)} episodes in {time.perf_counter() - start:.0f} s",
          flush=True)
    return ds_id


def _metadata(ds_id: str, root: str | None) -> dict[str, Any]:
    import minari

    from rlreg.data.minari_io import _datasets_path

    with _datasets_path(root):
        return dict(minari.load_dataset(ds_id, download=False).storage.metadata)


def ensure(ds_id: str, root: str | None = None) -> None:
    """Build ``ds_id`` with the default recipe if it is not there yet (first use of a ``source: rlreg`` config)."""
    env, level = parse_id(ds_id)
    if not _exists(ds_id, root):
        print(f"[rlreg] {ds_id} is not built yet: building it once (python -m rlreg.datasets make env={env} "
              f"level={level})", flush=True)
        make(Recipe(env, level), root=root)


def export_hdf5(ds_id: str, out: Path, root: str | None = None) -> Path:
    """Write a generated dataset in D4RL's hdf5 layout (flat steps, ``terminals``/``timeouts``,
    ``next_observations``, reference scores and the generation record under ``metadata/``)."""
    from rlreg.data.d4rl import write_d4rl_hdf5

    data = TransitionDataset.from_episodes(load_episodes(ds_id, root), source=ds_id)
    meta = _metadata(ds_id, root)
    extra = {f"metadata/{k}": (np.bytes_(str(v)) if isinstance(v, str) else v)
             for k, v in meta.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    return write_d4rl_hdf5(out, observations=data.observations, actions=data.actions, rewards=data.rewards,
                           terminals=data.terminals, timeouts=data.timeouts,
                           next_observations=data.next_observations, **extra)


def summarize(ds_id: str, root: str | None = None) -> dict[str, Any]:
    """Transitions, episodes, return mean/std and normalized score (D4RL reference values) of a dataset."""
    episodes = load_episodes(ds_id, root)
    meta = _metadata(ds_id, root)
    returns = np.array([float(np.sum(ep["rewards"])) for ep in episodes])
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    norm = (lambda r: 100.0 * (r - lo) / (hi - lo)) if lo is not None and hi is not None else (lambda r: float("nan"))
    return {"id": ds_id, "transitions": int(sum(len(ep["rewards"]) for ep in episodes)), "episodes": len(episodes),
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "normalized_mean": float(norm(returns.mean())), "normalized_std": float(100.0 * returns.std() / (hi - lo))
            if lo is not None and hi is not None else float("nan"),
            "terminations": int(sum(int(np.sum(ep["terminations"])) for ep in episodes)),
            "policy": meta.get("policy"), "policy_sha256": meta.get("policy_sha256")}


# ------------------------------------------------------------------------------------------------ CLI


def _kv(args: Sequence[str], allowed: Sequence[str], required: Sequence[str] = (), usage: str = "",
        command: str = "") -> dict[str, str]:
    """The ``key=value`` arguments of ``command`` as a dict; a UserError for an unknown key or a missing
    ``required`` one (with ``usage``)."""
    out = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in allowed:
            raise UserError(f"rlreg.datasets: argument {a!r}: expected key=value with key in {', '.join(allowed)}",
                            hint="python -m rlreg.datasets --help lists the commands and their arguments")
        out[key] = value
    missing = [k for k in required if k not in out]
    if missing:
        raise UserError(f"rlreg.datasets {command}: needs {' '.join(k + '=...' for k in missing)} ({usage})")
    return out


def _int(kv: dict[str, str], key: str, default: int | None = None) -> int | None:
    """``kv[key]`` as an int, ``default`` when absent (required arguments are checked by :func:`_kv`); a UserError
    naming the argument when it is not an integer."""
    if key not in kv:
        return default
    try:
        return int(kv[key])
    except ValueError:
        raise UserError(f"rlreg.datasets: {key}={kv[key]!r} must be an integer") from None


def _expand(value: str, allowed: Sequence[str]) -> list[str]:
    return list(allowed) if value == "all" else value.split(",")


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "make":
            kv = _kv(rest, ["env", "level", "seed", "transitions", "policy", "root", "force", "num_envs"])
            for env in _expand(kv.get("env", "hopper"), ENVS):
                # medium-expert last: it reuses the medium and expert datasets
                for level in sorted(_expand(kv.get("level", "medium"), LEVELS), key=lambda lv: lv == "medium-expert"):
                    _check(env, level)
                    make(Recipe(env, level, _int(kv, "seed", 0), _int(kv, "transitions", DEFAULT_TRANSITIONS),
                                kv.get("policy"), _int(kv, "num_envs", 16)),
                         root=kv.get("root"), force=_bool(kv.get("force", "false")))
        elif cmd == "export":
            kv = _kv(rest, ["id", "out", "root"], ["id", "out"], "id=rlreg/<env>/<level>-v0 out=<file.hdf5>", cmd)
            print(f"[rlreg] wrote {export_hdf5(kv['id'], Path(kv['out']), kv.get('root'))}")
        elif cmd == "summary":
            kv = _kv(rest, ["env", "level", "root", "json"])
            rows = [summarize(dataset_id(e, lv), kv.get("root")) for e in _expand(kv.get("env", "all"), ENVS)
                    for lv in _expand(kv.get("level", "all"), LEVELS) if _exists(dataset_id(e, lv), kv.get("root"))]
            if "json" in kv:
                Path(kv["json"]).write_text(json.dumps(rows, indent=2) + "\n")
            print("| dataset | transitions | episodes | return (mean ± std) | normalized (mean ± std) |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['id']} | {r['transitions']:,} | {r['episodes']:,} | {r['return_mean']:.1f} ± "
                      f"{r['return_std']:.1f} | {r['normalized_mean']:.1f} ± {r['normalized_std']:.1f} |")
        elif cmd == "replay":
            kv = _kv(rest, ["run", "step", "name", "command", "upto"], ["run", "step", "name"],
                     "run=<run dir> step=<checkpoint step> name=<env>_<level>", cmd)
            replay_from_run(Path(kv["run"]), _int(kv, "step"), kv["name"], kv.get("command"),
                            upto=_int(kv, "upto"))
        else:
            raise UserError(f"rlreg.datasets: unknown command {cmd!r}; use make, export, summary or replay")
    except UserError as err:  # one [rlreg] line and a hint, exit code 2 (README: "Faults and bad input")
        raise user_exit(err) from None


def replay_from_run(
    run_dir: Path, step: int, name: str, command: str | None = None, upto: int | None = None
) -> Path:
    """Ship the replay buffer of an online SAC run's checkpoint at ``step`` as ``rlreg/assets/<name>_replay.npz``.

    ``upto=n`` keeps the buffer's first ``n`` rows: the transitions of env steps ``0..n-1``, i.e. the buffer
    the run had at step ``n``, taken from a later checkpoint (a single-env, 1-step buffer that has not wrapped).
    """
    from rlreg.checkpoint import checkpoint_path, load_checkpoint

    ckpt = checkpoint_path(run_dir, step)
    if not ckpt.exists():
        raise DatasetError(f"{ckpt}: no checkpoint at step {step} in {run_dir}")
    state = load_checkpoint(ckpt)
    config = json.loads((run_dir / "config.json").read_text())
    buffer = state["extra"]["buffer"]
    if upto is not None:
        buffer = buffer_prefix(buffer, upto, step, ckpt)
    episodes = replay_episodes(buffer)
    out = ASSETS / f"{name}_replay.npz"
    save_replay(episodes, out, {"env": config["env"]["id"], "trained_by": {
        "run_dir": str(run_dir), "checkpoint": ckpt.name, "env_steps": step if upto is None else upto,
        "seed": config["seed"],
        "command": command}})
    print(f"[rlreg] wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(episodes)} episodes)")
    return out


if __name__ == "__main__":
    main()
