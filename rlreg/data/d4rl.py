"""Read, verify and write D4RL hdf5 files without needing the ``d4rl`` package."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError

_TABLE_PATH = Path(__file__).with_name("d4rl_checksums.json")
with open(_TABLE_PATH, encoding="utf-8") as _f:
    _TABLE = json.load(_f)

#: Official D4RL files keyed by D4RL id: {"id", "filename", "bytes", "sha256", "version"}.
OFFICIAL_FILES: dict[str, dict[str, Any]] = {row["id"]: dict(row) for row in _TABLE["files"]}
#: D4RL reference (min, max) returns per domain, for normalised scores.
REF_SCORES: dict[str, tuple[float, float]] = {k: (float(v[0]), float(v[1])) for k, v in _TABLE["ref_scores"].items()}
_DOWNLOAD_URL: str = _TABLE["download_url"]
_DOWNLOAD_DIRS: dict[str, str] = _TABLE["download_dirs"]

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
HASH_CHUNK = 8 * 1024 * 1024
VERIFY_MODES = ("error", "warn", "off")


def dataset_dir() -> Path:
    """``$D4RL_DATASET_DIR`` (default ``~/.d4rl/datasets``)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def official_file_info(name_or_filename: str | os.PathLike) -> dict[str, Any] | None:
    """Official table row for a D4RL id (``hopper-medium-v2``), file name or path; None if unknown."""
    name = str(name_or_filename)
    if name in OFFICIAL_FILES:
        return dict(OFFICIAL_FILES[name])
    base = Path(name).name
    for row in OFFICIAL_FILES.values():
        if row["filename"] == base:
            return dict(row)
    return None


def reference_scores(domain: str) -> tuple[float, float]:
    """D4RL (ref_min, ref_max) for a domain (``hopper``) or a dataset id (``hopper-medium-v2``)."""
    key = domain.split("-")[0]
    if key not in REF_SCORES:
        raise DatasetError(
            f"no D4RL reference scores for {domain!r} (domain {key!r}); known domains: {', '.join(sorted(REF_SCORES))}"
        )
    return REF_SCORES[key]


def d4rl_filename(name: str) -> str:
    """File name D4RL stores dataset ``name`` under (official table first, else the v1/v2 naming rule)."""
    if name.endswith(".hdf5"):
        return Path(name).name
    info = official_file_info(name)
    if info is not None:
        return info["filename"]
    parts = name.split("-")
    if len(parts) >= 3 and parts[-1].startswith("v") and parts[-1][1:].isdigit():
        return f"{parts[0]}_{'_'.join(parts[1:-1])}-{parts[-1]}.hdf5"
    return f"{name}.hdf5"


def _download_hint(name: str, filename: str, directory: Path) -> str:
    info = official_file_info(name) or official_file_info(filename)
    url = ""
    if info is not None:
        url = " from " + _DOWNLOAD_URL.format(dir=_DOWNLOAD_DIRS[info["version"]], filename=filename)
    return (
        "To obtain the data:\n"
        f"  1. pip install 'rlreg[d4rl]' and use the d4rl package loader (calls d4rl.qlearning_dataset), or\n"
        f"  2. download the official file{url} and place it at {directory / filename} "
        f"(set $D4RL_DATASET_DIR to use another directory), or\n"
        f"  3. point the option `dataset.path` at your copy of the file."
    )


def find_d4rl_file(name: str, path: str | os.PathLike | None = None) -> Path:
    """Locate the hdf5 file of D4RL dataset ``name`` (or use ``path`` if given)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DatasetError(
                f"{name}: option `dataset.path` = {str(path)!r} does not exist or is not a file; "
                "expected the path of a D4RL hdf5 file"
            )
        return p
    directory = dataset_dir()
    filename = d4rl_filename(name)
    candidates = [directory / filename]
    if not name.endswith(".hdf5") and filename != f"{name}.hdf5":
        candidates.append(directory / f"{name}.hdf5")
    for c in candidates:
        if c.is_file():
            return c
    looked = "\n".join(f"  - {c}" for c in candidates)
    env_note = "$D4RL_DATASET_DIR" if "D4RL_DATASET_DIR" in os.environ else "default ~/.d4rl/datasets; $D4RL_DATASET_DIR unset"
    raise DatasetError(
        f"D4RL dataset {name!r} not found. Looked in ({env_note}):\n{looked}\n"
        + _download_hint(name, filename, directory)
    )


# ------------------------------------------------------------------ checksums
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256ok")


def _cached_sha(path: Path, st: os.stat_result) -> str | None:
    try:
        data = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if data["size"] == st.st_size and data["mtime_ns"] == st.st_mtime_ns:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_sidecar(path: Path, st: os.stat_result, sha: str) -> None:
    try:
        if os.access(path.parent, os.W_OK):
            _sidecar(path).write_text(
                json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}), encoding="utf-8"
            )
    except OSError:
        pass


def verify_d4rl_file(path: str | os.PathLike, name: str | None = None, mode: str = "error") -> bool:
    """Check an official D4RL file's byte size and sha256 against the table.

    The official row is looked up by the file's name, else by ``name`` (the dataset id: a file given
    by ``dataset.path`` for an official id is checked too). Files with unknown names pass unchecked. ``mode``: ``error`` raises, ``warn`` warns and
    returns False, ``off`` skips. A successful hash is cached in ``<path>.sha256ok``.
    """
    if mode not in VERIFY_MODES:
        raise DatasetError(f"option `dataset.verify` = {mode!r} is unknown; expected one of {', '.join(VERIFY_MODES)}")
    if mode == "off":
        return True
    p = Path(path)
    info = official_file_info(p.name) or (official_file_info(name) if name else None)
    if info is None:
        return True
    st = p.stat()
    problem = None
    if st.st_size != info["bytes"]:
        problem = f"size {st.st_size} bytes, expected {info['bytes']} bytes"
        if st.st_size < 1024:
            problem += " (a file this small is probably a Git-LFS pointer or a failed download)"
    else:
        cached = _cached_sha(p, st)
        if cached == info["sha256"]:
            return True
        sha = _sha256_file(p)
        if sha == info["sha256"]:
            _write_sidecar(p, st, sha)
            return True
        problem = f"sha256 {sha}, expected sha256 {info['sha256']}"
    msg = (
        f"{p}: checksum check failed against the official D4RL file {info['filename']} ({info['id']}): found {problem}. "
        "The copy is corrupt, truncated or not the official file. Re-download it, or set "
        "`dataset.verify=warn` (continue with a warning) or `dataset.verify=off` (skip the check)."
    )
    if official_file_info(p.name) is None:  # checked because of the dataset id, not the file name
        msg += (
            f" If {p.name} is your own data, train on it with {info['id']}'s env and reference scores under a name "
            f"of its own: dataset={info['id']} dataset.path={p} dataset.verify=off dataset.name=<your name>."
        )
    if mode == "warn":
        warnings.warn(msg, stacklevel=2)
        return False
    raise DatasetError(msg)


# ----------------------------------------------------------------- reading
def _synth_timeouts(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """D4RL's fallback: an episode times out after ``max_episode_steps`` steps (counter resets on terminals)."""
    n = terminals.shape[0]
    idx = np.arange(n)
    is_start = np.zeros(n, dtype=bool)
    is_start[0] = True
    is_start[1:] = terminals[:-1]
    last_start = np.maximum.accumulate(np.where(is_start, idx, 0))
    return (idx - last_start) % max_episode_steps == max_episode_steps - 1


def read_d4rl_hdf5(path: str | os.PathLike, max_episode_steps: int = 1000) -> dict[str, Any]:
    """Read every dataset of a D4RL-layout hdf5 file into a flat dict (group paths joined by '/').

    Requires observations, actions, rewards, terminals. (N, 1) rewards/terminals/timeouts are
    squeezed, floats cast to float32, flags to bool. Without ``timeouts`` episodes end every
    ``max_episode_steps`` steps, as D4RL does (with a warning).
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file does not exist; expected a D4RL hdf5 file")
    data: dict[str, Any] = {}
    try:
        with h5py.File(p, "r") as f:
            def visit(key: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    data[key] = obj[()] if obj.shape == () else obj[:]

            f.visititems(visit)
    except OSError as e:
        raise DatasetError(f"{p}: not a readable HDF5 file ({e}); expected a D4RL hdf5 file") from e
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DatasetError(
            f"{p}: missing required key(s) {', '.join(repr(k) for k in missing)}; expected keys "
            f"{', '.join(REQUIRED_KEYS)} (found: {', '.join(sorted(data)) or 'none'})"
        )
    for key, value in data.items():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            data[key] = value.astype(np.float32, copy=False)
    for key in ("rewards", "terminals", "timeouts"):
        if key in data:
            arr = np.asarray(data[key])
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 1:
                raise DatasetError(f"{p}: key '{key}' has shape {arr.shape}; expected (N,) or (N, 1)")
            if key != "rewards" and arr.dtype != bool:
                bad = np.flatnonzero((arr != 0) & (arr != 1))
                if bad.size:
                    raise DatasetError(
                        f"{p}: key '{key}' has {bad.size} value(s) other than 0/1 (first at row {int(bad[0])}: "
                        f"{arr[bad[0]]!r}); expected flags"
                    )
            data[key] = arr.astype(bool) if key != "rewards" else arr
    if "timeouts" not in data:
        data["timeouts"] = _synth_timeouts(data["terminals"], max_episode_steps)
        warnings.warn(
            f"{p}: no 'timeouts' key; assuming episodes end every {max_episode_steps} steps as D4RL does",
            stacklevel=2,
        )
    return data


def _check_lengths(raw: dict[str, Any], keys: list[str], source: str) -> int:
    n = None
    first = None
    for key in keys:
        arr = np.asarray(raw[key])
        if arr.ndim == 0:
            raise DatasetError(f"{source}: key '{key}' is a scalar; expected an array with one row per step")
        if n is None:
            n, first = arr.shape[0], key
        elif arr.shape[0] != n:
            raise DatasetError(
                f"{source}: length mismatch: key '{key}' has {arr.shape[0]} rows but key '{first}' has {n}"
            )
    assert n is not None
    return int(n)


def qlearning_transitions(
    raw: dict[str, Any], source: str, use_next_observations: bool = False
) -> TransitionDataset:
    """Build transitions with D4RL ``qlearning_dataset`` semantics (vectorised).

    Default: for rows ``i < N-1``, ``s' = observations[i+1]``; rows with ``timeouts[i]`` are
    dropped; terminal rows are kept. With ``use_next_observations`` and a
    ``next_observations`` key, every row is kept, using the stored ``s'``, and time-out rows
    become transitions with ``timeouts=True``.
    """
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DatasetError(f"{source}: missing required key '{key}'")
    raw = dict(raw)
    if "timeouts" not in raw:
        raw["timeouts"] = np.zeros(np.asarray(raw["terminals"]).shape[0], dtype=bool)
    keys = ["observations", "actions", "rewards", "terminals", "timeouts"]
    has_next = "next_observations" in raw
    if use_next_observations and not has_next:
        warnings.warn(
            f"{source}: use_next_observations=True but the file has no 'next_observations' key; "
            "taking the next observation from the next row (D4RL qlearning_dataset semantics)",
            stacklevel=2,
        )
    use_next = use_next_observations and has_next
    if use_next:
        keys.append("next_observations")
    n = _check_lengths(raw, keys, source)
    obs = np.asarray(raw["observations"])
    if obs.ndim != 2:
        raise DatasetError(f"{source}: key 'observations' has shape {obs.shape}; expected (N, obs_dim)")
    for key in ("rewards", "terminals", "timeouts"):
        arr = np.asarray(raw[key])
        if arr.ndim == 2 and arr.shape[1] == 1:
            raw[key] = arr[:, 0]
        elif arr.ndim != 1:
            raise DatasetError(f"{source}: key '{key}' has shape {arr.shape}; expected (N,) or (N, 1)")
    actions = np.asarray(raw["actions"])
    rewards = np.asarray(raw["rewards"])
    terminals = np.asarray(raw["terminals"]).astype(bool)
    timeouts = np.asarray(raw["timeouts"]).astype(bool)

    if use_next:
        ends = terminals | timeouts
        if n:
            ends[-1] = True
        return TransitionDataset(
            observations=obs, actions=actions, rewards=rewards,
            next_observations=np.asarray(raw["next_observations"]),
            terminals=terminals, timeouts=timeouts, episode_ends=ends, source=source,
        )

    m = max(n - 1, 0)
    ends_full = terminals[:m].copy()
    ends_full |= timeouts[1 : m + 1]  # the row just before a dropped time-out row
    idx = np.flatnonzero(~timeouts[:m])
    ends = ends_full[idx]
    if ends.size:
        ends[-1] = True
    return TransitionDataset(
        observations=obs[idx], actions=actions[idx], rewards=rewards[idx],
        next_observations=obs[idx + 1], terminals=terminals[idx],
        timeouts=np.zeros(idx.size, dtype=bool), episode_ends=ends, source=source,
    )


# ----------------------------------------------------------------- writing
def _write_items(group: Any, items: dict[str, Any]) -> None:
    for key, value in items.items():
        if isinstance(value, dict):
            _write_items(group.require_group(key), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value)
        else:
            group.create_dataset(key, data=np.asarray(value))


def write_d4rl_hdf5(
    path: str | os.PathLike,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    next_observations: np.ndarray | None = None,
    **extra: Any,
) -> Path:
    """Atomically write a D4RL-layout hdf5 file (temp file + rename).

    ``extra`` entries are written as further datasets; a key like ``"infos/qpos"`` or a
    dict value creates groups. Arrays are stored with the dtype given.
    """
    import h5py

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    items: dict[str, Any] = {
        "observations": observations, "actions": actions, "rewards": rewards,
        "terminals": np.asarray(terminals).astype(bool), "timeouts": np.asarray(timeouts).astype(bool),
    }
    if next_observations is not None:
        items["next_observations"] = next_observations
    items.update(extra)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            _write_items(f, items)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


# ----------------------------------------------------------------- loaders
def load_d4rl(
    name: str,
    path: str | os.PathLike | None = None,
    verify: str = "error",
    use_next_observations: bool = False,
) -> TransitionDataset:
    """Find, verify, read and convert a D4RL hdf5 file into a validated :class:`TransitionDataset`."""
    if verify not in VERIFY_MODES:
        raise DatasetError(f"option `dataset.verify` = {verify!r} is unknown; expected one of {', '.join(VERIFY_MODES)}")
    p = find_d4rl_file(name, path)
    verify_d4rl_file(p, name=name, mode=verify)
    raw = read_d4rl_hdf5(p)
    ds = qlearning_transitions(raw, str(p), use_next_observations=use_next_observations)
    ds.validate()
    return ds


def load_d4rl_package(env_id: str) -> TransitionDataset:
    """Load ``env_id`` through the optional ``d4rl`` package (``d4rl.qlearning_dataset``)."""
    try:
        import d4rl  # type: ignore[import-not-found]  # noqa: F401
        import gym  # type: ignore[import-not-found]
    except ImportError as e:
        raise DatasetError(
            f"{env_id}: the d4rl package loader needs the optional packages 'd4rl' and 'gym' ({e}). "
            "Install them with pip install 'rlreg[d4rl]', or use source=d4rl_hdf5 to read the official "
            "hdf5 file directly (no d4rl package needed)."
        ) from e
    raw = d4rl.qlearning_dataset(gym.make(env_id))
    obs = np.asarray(raw["observations"], dtype=np.float32)
    next_obs = np.asarray(raw["next_observations"], dtype=np.float32)
    terminals = np.asarray(raw["terminals"]).reshape(-1).astype(bool)
    ends = terminals.copy()
    if obs.shape[0] > 1:
        ends[:-1] |= np.any(next_obs[:-1] != obs[1:], axis=tuple(range(1, obs.ndim)))
    if ends.size:
        ends[-1] = True
    ds = TransitionDataset(
        observations=obs, actions=raw["actions"], rewards=np.asarray(raw["rewards"]).reshape(-1),
        next_observations=next_obs, terminals=terminals, timeouts=np.zeros_like(terminals),
        episode_ends=ends, source=env_id,
    )
    ds.validate()
    return ds
