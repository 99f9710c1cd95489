"""Atomic checkpoints that load without executing pickled code, and RNG capture for exact resume.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts written with ``torch.save`` to a
temporary file, fsynced, then renamed into place; ``torch.load(..., weights_only=True)`` reads it back.
Only the last ``keep`` checkpoints are kept; a failed write never touches the previous ones.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlreg.errors import RunDirError, WriteError

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

_NAME = re.compile(r"^ckpt_(\d{10})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """The file of checkpoint ``step`` in ``run_dir`` (``checkpoints/ckpt_0000012000.pt`` for 12000)."""
    return checkpoint_dir(run_dir) / f"ckpt_{step:010d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (``ckpt_0000012000.pt`` -> 12000)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint file name (ckpt_<10 digits>.pt)")
    return int(m.group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


class CheckpointError(RunDirError):
    """A checkpoint file does not load; ``reason`` says why without torch's advice to unpickle it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holds pickled objects that rlreg never writes; it is not loaded (that could run code)."""


def write_failure(path: Path, err: BaseException) -> WriteError:
    """A :class:`WriteError` for ``path`` saying why the write failed, as far as can be told."""
    code = getattr(err, "errno", None)
    why = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit reached (ulimit -f)", errno.EACCES: "permission denied",
           errno.EROFS: "read-only file system"}.get(code or -1)
    if why is None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
        if free is not None and free < 64 * 1024 * 1024:
            why = f"the disk is full ({free} bytes free; {first})"
        elif limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)):
            why = f"the file size limit (ulimit -f) is {limit} bytes ({first})"
        else:
            why = first
    return WriteError(f"could not write {path}: {why}", hint="free space (or raise the limit) and rerun the same "
                      "command to resume")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temp file in the same folder, fsync and rename. A failed write
    (disk full...) raises :class:`~rlreg.errors.WriteError` naming ``path`` and leaves no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise write_failure(path, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename (:class:`~rlreg.errors.WriteError` on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise write_failure(path, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    atomic_torch_save(state, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling arbitrary objects.

    A file that is truncated, corrupt, not a checkpoint or holds pickled code raises
    :class:`CheckpointError` naming it (:class:`UnsafeCheckpointError` for pickled objects)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(path, "holds pickled objects other than tensors, numbers and strings, which "
                                    "rlreg never writes; not loaded, since loading it could run code") from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(path, f"unreadable, truncated or corrupt ({type(err).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not an rlreg checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


# -- RNG state -----------------------------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator], np_rng: np.random.Generator) -> dict[str, Any]:
    """Every random state a run uses: torch (global and CUDA), the run's own generators, numpy, python."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
        "numpy_generator": json.dumps(np_rng.bit_generator.state),
        "numpy_global": json.dumps(_np_global_state()),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator], np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for key, gen in generators.items():
        gen.set_state(state["generators"][key])
    np_rng.bit_generator.state = json.loads(state["numpy_generator"])
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy_global"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _np_global_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
