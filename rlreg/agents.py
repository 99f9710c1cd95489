"""Build an agent (a learner plus its regularizers) from the typed config."""

from __future__ import annotations

from rlreg.config import AgentConfig, check_choice
from rlreg.learners import LEARNERS, Learner
from rlreg.regularizers import SetupContext, build_regularizer


def build_agent(config: AgentConfig, setup: SetupContext) -> Learner:
    """Instantiate the registered learner ``config.learner``, bind each regularizer (in config order) and move
    everything to ``setup.device``. A regularizer that does not fit the learner fails here, naming both."""
    check_choice("agent.learner", config.learner, LEARNERS)
    regularizers = [build_regularizer(name, cfg) for name, cfg in config.regularizers.items()]
    learner = LEARNERS[config.learner](setup, config.learner_config, regularizers)
    learner.to(setup.device)
    for reg in regularizers:
        reg.bind(learner, setup)
        reg.modules.to(setup.device)
    return learner
