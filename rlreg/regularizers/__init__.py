"""Regularizers: objects that add loss terms to a learner. One file per method."""

from __future__ import annotations

from typing import Any, Callable

from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext
from rlreg.regularizers.bc import BCConfig, BCRegularizer
from rlreg.regularizers.edac import EDACConfig, EDACRegularizer

REGULARIZERS: dict[str, Callable[[Any], Regularizer]] = {"bc": BCRegularizer, "edac": EDACRegularizer}


def build_regularizer(name: str, config: Any) -> Regularizer:
    """Instantiate the regularizer registered under ``name`` with its typed config."""
    if name not in REGULARIZERS:
        raise KeyError(f"regularizer={name!r} is unknown; choose from {sorted(REGULARIZERS)}")
    return REGULARIZERS[name](config)


__all__ = [
    "ActorContext",
    "BCConfig",
    "BCRegularizer",
    "EDACConfig",
    "EDACRegularizer",
    "CriticContext",
    "REGULARIZERS",
    "Regularizer",
    "SetupContext",
    "build_regularizer",
]
