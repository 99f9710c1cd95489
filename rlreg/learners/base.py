"""The learner interface shared by TD3, SAC (and later DecQN, MBPO).

A learner owns its networks and optimizers and a list of regularizers. ``update`` performs one gradient
step on a batch and returns detached scalar tensors (no host sync); the trainer accumulates them on the
device and syncs every K steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from rlreg.data.buffers import Batch

if TYPE_CHECKING:  # regularizers import learner helpers; keep this module free of that cycle
    from rlreg.regularizers.base import Regularizer


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused CPU/GPU kernel where the build has it (same maths, one kernel)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def add_terms(metrics: dict[str, Tensor], prefix: str, terms: dict[str, Tensor]) -> Tensor | None:
    """Record ``terms`` under ``prefix/`` in ``metrics`` and return their sum (None if empty)."""
    total: Tensor | None = None
    for key, value in terms.items():
        metrics[f"{prefix}/{key}"] = value.detach()
        total = value if total is None else total + value
    return total


class Learner(nn.Module):
    """Base class: networks are submodules; optimizers, regularizers and counters are checkpointed."""

    def __init__(self, regularizers: Sequence["Regularizer"] = ()) -> None:
        super().__init__()
        self.regularizers: list["Regularizer"] = list(regularizers)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- acting ------------------------------------------------------------------------------------
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    # -- learning ----------------------------------------------------------------------------------
    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def _regularizer_terms(self, metrics: dict[str, Tensor], hook: str, *args: Any) -> Tensor | None:
        total: Tensor | None = None
        for reg in self.regularizers:
            part = add_terms(metrics, reg.name, getattr(reg, hook)(*args))
            if part is not None:
                total = part if total is None else total + part
        return total

    # -- checkpointing ---------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, Any]:
        return {
            "networks": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "regularizers": {reg.name: reg.state_dict() for reg in self.regularizers},
        }

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["networks"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for reg in self.regularizers:
            reg.load_state_dict(state["regularizers"][reg.name])
