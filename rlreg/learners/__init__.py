"""Base learners (TD3, SAC, ...): plugins registered with :func:`rlreg.learners.base.register_learner`.

Every module of this package is imported on first use, so adding a learner means adding one file (plus its
agent config in ``conf/agent/``). See ``docs/guides/writing-a-learner.md``.
"""

from __future__ import annotations

import importlib
import pkgutil

from rlreg.learners.base import LEARNERS, ActionSpec, Learner, register_learner

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LEARNERS", "ActionSpec", "Learner", "register_learner"]
