"""Learned environment models for model-based agents (MBPO and the single-model Lipschitz agent)."""
from .dynamics import EnsembleDynamics, gaussian_nll, soft_bound_logvar
from .termination import TERMINATIONS, termination_fn

__all__ = ["EnsembleDynamics", "gaussian_nll", "soft_bound_logvar", "TERMINATIONS", "termination_fn"]
