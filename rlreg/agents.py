"""Build an agent (a learner plus its regularizers) from the typed config."""

from __future__ import annotations

from typing import Any

import torch

from rlreg.config import AgentConfig, SACConfig, TD3Config
from rlreg.learners.base import Learner
from rlreg.learners.sac import SACLearner
from rlreg.learners.td3 import TD3Learner
from rlreg.regularizers import SetupContext, build_regularizer


def build_agent(
    config: AgentConfig,
    obs_dim: int,
    act_dim: int,
    max_action: float,
    device: torch.device,
    dataset: Any = None,
    buffer: Any = None,
) -> Learner:
    """Instantiate the learner, bind each regularizer (in config order) and move everything to ``device``."""
    regularizers = [build_regularizer(name, cfg) for name, cfg in config.regularizers.items()]
    lc = config.learner_config
    learner: Learner
    if isinstance(lc, TD3Config):
        learner = TD3Learner(obs_dim, act_dim, lc, max_action=max_action, regularizers=regularizers)
    elif isinstance(lc, SACConfig):
        learner = SACLearner(obs_dim, act_dim, lc, max_action=max_action, regularizers=regularizers)
    else:  # pragma: no cover - config validation rejects unknown learners first
        raise TypeError(f"no learner for config {type(lc).__name__}")
    learner.to(device)
    ctx = SetupContext(obs_dim=obs_dim, act_dim=act_dim, max_action=max_action, device=device, dataset=dataset, buffer=buffer)
    for reg in regularizers:
        reg.bind(learner, ctx)
        reg.modules.to(device)
    return learner
