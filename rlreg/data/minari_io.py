"""Load and create local Minari datasets (remote download is never attempted)."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator

import numpy as np

from rlreg.data.dataset import TransitionDataset
from rlreg.data.errors import DatasetError


@contextlib.contextmanager
def _datasets_path(data_path: str | os.PathLike | None) -> Iterator[None]:
    """Temporarily set ``MINARI_DATASETS_PATH`` (no-op when ``data_path`` is None)."""
    if data_path is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(os.path.expanduser(str(data_path)))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _import_minari() -> Any:
    try:
        import minari
    except ImportError as e:  # pragma: no cover - minari is a core dependency
        raise DatasetError(f"the Minari loader needs the 'minari' package ({e}); pip install minari") from e
    return minari


def load_minari(dataset_id: str, data_path: str | os.PathLike | None = None) -> TransitionDataset:
    """Load a locally stored Minari dataset with Box observations as a :class:`TransitionDataset`."""
    minari = _import_minari()
    from minari.storage.datasets_root_dir import get_dataset_path

    with _datasets_path(data_path):
        where = get_dataset_path(dataset_id)
        root_src = "dataset.path" if data_path is not None else (
            "$MINARI_DATASETS_PATH" if "MINARI_DATASETS_PATH" in os.environ else "default ~/.minari/datasets"
        )
        try:
            ds = minari.load_dataset(dataset_id, download=False)
        except FileNotFoundError as e:
            raise DatasetError(
                f"Minari dataset {dataset_id!r} not found locally: looked in {where} (root from {root_src}). "
                "Remote download is disabled. Create it locally (rlreg.data.create_minari_dataset or "
                f"minari.DataCollector), copy it to {where}, or download it on a machine with internet access "
                f"(`minari download {dataset_id}`) and point `dataset.path` (or $MINARI_DATASETS_PATH) at that root."
            ) from e
        except ValueError as e:  # malformed id or unsupported dataset version
            raise DatasetError(f"Minari dataset {dataset_id!r} (looked in {where}) could not be loaded: {e}") from e
        import gymnasium as gym

        source = f"minari:{dataset_id} ({where})"
        if not isinstance(ds.observation_space, gym.spaces.Box):
            raise DatasetError(
                f"{source}: observation space is {type(ds.observation_space).__name__}; expected a Box "
                "(dict/tuple observations are not supported - flatten them when creating the dataset)"
            )
        act_space = ds.action_space
        if not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise DatasetError(
                f"{source}: action space is {type(act_space).__name__}; expected Box or Discrete"
            )
        episodes = [
            {
                "observations": np.asarray(ep.observations),
                "actions": np.asarray(ep.actions),
                "rewards": np.asarray(ep.rewards),
                "terminations": np.asarray(ep.terminations),
                "truncations": np.asarray(ep.truncations),
            }
            for ep in ds.iterate_episodes()
        ]
    out = TransitionDataset.from_episodes(episodes, source=source)
    shape = None if isinstance(act_space, gym.spaces.Discrete) else act_space.shape
    out.validate(observation_shape=ds.observation_space.shape, action_shape=shape)
    return out


def create_minari_dataset(
    dataset_id: str,
    episodes: list[dict],
    env_spec_or_id: Any,
    metadata: dict | None = None,
    data_path: str | os.PathLike | None = None,
    observation_space: Any = None,
    action_space: Any = None,
) -> Any:
    """Write a local Minari dataset from episode dicts (Gymnasium convention, see ``from_episodes``).

    ``env_spec_or_id`` is a Gymnasium id, ``EnvSpec``, ``Env`` or None (then both spaces must
    be given). ``metadata`` may hold ``ref_min_score``/``ref_max_score`` (stored as given),
    ``author``, ``author_email``, ``algorithm_name``, ``code_permalink``, ``description``, and
    any other JSON-serialisable keys. Returns the ``minari.MinariDataset``.
    """
    minari = _import_minari()
    from minari.data_collector import EpisodeBuffer

    meta = dict(metadata or {})
    ref_scores = {k: float(meta.pop(k)) for k in ("ref_min_score", "ref_max_score") if meta.get(k) is not None}
    known = {k: meta.pop(k) for k in ("author", "author_email", "algorithm_name", "code_permalink", "description")
             if k in meta}
    buffers = []
    for i, ep in enumerate(episodes):
        rewards = np.asarray(ep["rewards"], dtype=np.float64).reshape(-1)
        obs = np.asarray(ep["observations"])
        if obs.shape[0] != rewards.shape[0] + 1:
            raise DatasetError(
                f"minari:{dataset_id}: episode {i} key 'observations' has {obs.shape[0]} rows; "
                f"expected T+1 = {rewards.shape[0] + 1}"
            )
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=obs,
                actions=np.asarray(ep["actions"]),
                rewards=rewards,
                terminations=np.asarray(ep["terminations"]).astype(bool).reshape(-1),
                truncations=np.asarray(ep["truncations"]).astype(bool).reshape(-1),
                infos=ep.get("infos"),
            )
        )
    with _datasets_path(data_path), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari nags about missing author/permalink
        try:
            ds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env_spec_or_id,
                observation_space=observation_space,
                action_space=action_space,
                **known,
            )
        except ValueError as e:
            raise DatasetError(f"minari:{dataset_id}: could not create dataset: {e}") from e
        extra = {**meta, **ref_scores}
        if extra:
            ds.storage.update_metadata(extra)
    return ds


def read_minari_metadata(dataset_id: str, data_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``metadata.json`` of a local Minari dataset, read without opening its episodes."""
    minari = _import_minari()  # noqa: F841  (a clear error when minari is missing)
    import json
    from pathlib import Path

    from minari.storage.datasets_root_dir import get_dataset_path

    with _datasets_path(data_path):
        where = Path(get_dataset_path(dataset_id))
    path = where / "data" / "metadata.json"
    if not path.exists():
        raise DatasetError(
            f"Minari dataset {dataset_id!r} not found locally: no {path}. Remote download is disabled; create it "
            f"(minari.DataCollector, python -m rlreg.datasets) or download it elsewhere (`minari download {dataset_id}`) "
            "and point dataset.path / $MINARI_DATASETS_PATH at its root."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return meta


def installed_env_id(env_id: str) -> str | None:
    """``env_id`` if Gymnasium has it registered; else the newest registered version of the same env (a dataset
    recorded in ``Hopper-v4`` evaluates in ``Hopper-v5`` when only that is installed); None when no version is."""
    from gymnasium.envs.registration import parse_env_id, registry

    if env_id in registry:
        return env_id
    try:
        ns, name, _ = parse_env_id(env_id)
    except Exception:  # not a Gymnasium-style id
        return None
    versions = [(spec.version, key) for key, spec in registry.items()
                if spec.namespace == ns and spec.name == name and spec.version is not None]
    return max(versions)[1] if versions else None


def minari_env_spec(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation env a Minari dataset records: ``eval_env_spec`` when present, else ``env_spec`` (the env
    the data was collected in), as a dict with ``id``, ``kwargs`` and ``max_episode_steps``; None when neither."""
    import json

    for key in ("eval_env_spec", "env_spec"):
        raw = meta.get(key)
        if not raw:
            continue
        spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if isinstance(spec, dict) and spec.get("id"):
            return spec
    return None
