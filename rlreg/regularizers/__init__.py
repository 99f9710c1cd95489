"""Regularizers: objects that add loss terms to a learner. One file per method.

Every module in this package that defines a regularizer registers it with :func:`register`; modules
are discovered automatically, so adding a method means adding one file (plus its Hydra config in
``conf/regularizer/``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from rlreg.config import register_regularizer_config
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext

REGULARIZERS: dict[str, Callable[[Any], Regularizer]] = {}


def register(
    name: str, config_cls: type, families: tuple[str, ...] | None = None, requires: tuple[str, ...] = ()
) -> Callable[[type[Regularizer]], type[Regularizer]]:
    """Class decorator: make ``name`` selectable as ``regularizer=[name]`` with config ``config_cls``.

    ``families``: the learner families it fits (e.g. ``("td3",)``; None: any learner); ``requires``: what it
    needs its learner to provide (e.g. ``("critic_features",)``). Both are checked when the agent is built."""

    def wrap(cls: type[Regularizer]) -> type[Regularizer]:
        cls.name = name
        cls.families = None if families is None else frozenset(families)
        cls.requires = frozenset(requires)
        REGULARIZERS[name] = cls
        register_regularizer_config(name, config_cls)
        return cls

    return wrap


def build_regularizer(name: str, config: Any) -> Regularizer:
    """Instantiate the regularizer registered under ``name`` with its typed config."""
    if name not in REGULARIZERS:
        raise KeyError(f"regularizer={name!r} is unknown; choose from {sorted(REGULARIZERS)}")
    return REGULARIZERS[name](config)


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ActorContext", "CriticContext", "REGULARIZERS", "Regularizer", "SetupContext", "build_regularizer", "register"]
