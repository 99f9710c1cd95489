"""Offline and online training loops."""

from __future__ import annotations

from typing import Any

from rlreg.config import RunConfig
from rlreg.runs import derive_run_dir
from rlreg.trainers.common import StopRequested, TrainerBase
from rlreg.trainers.offline import OfflineTrainer
from rlreg.trainers.online import OnlineTrainer


def make_trainer(run: RunConfig, announce: bool = True) -> TrainerBase:
    if run.trainer.mode == "finetune":
        from rlreg.trainers.finetune import FinetuneTrainer

        return FinetuneTrainer(run, announce=announce)
    return (OfflineTrainer if run.trainer.mode == "offline" else OnlineTrainer)(run, announce=announce)


def train(run: RunConfig, announce: bool = True) -> dict[str, Any]:
    """Train (or resume) the run described by ``run`` and return its summary."""
    return make_trainer(run, announce=announce).train()


__all__ = ["OfflineTrainer", "OnlineTrainer", "StopRequested", "derive_run_dir", "make_trainer", "train"]
