"""Network building blocks for rlreg agents (see layers / critics / actors / vae)."""
from .actors import ACTOR_INITS, DeterministicActor, TanhGaussianActor, gaussian_kl
from .critics import CRITIC_INITS, DecoupledQEnsemble, EnsembleCritic
from .layers import (
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    EnsembleResidualBlock,
    ObsNormalizer,
    RunningNormalizer,
    hard_update_,
    init_bias_,
    init_last_layer_uniform_,
    init_weight_fan_out_,
    mlp,
    polyak_update_,
)
from .vae import ConditionalVAE

__all__ = [
    "mlp",
    "EnsembleLinear",
    "EnsembleLayerNorm",
    "EnsembleMLP",
    "EnsembleResidualBlock",
    "polyak_update_",
    "hard_update_",
    "init_last_layer_uniform_",
    "init_bias_",
    "init_weight_fan_out_",
    "ObsNormalizer",
    "RunningNormalizer",
    "EnsembleCritic",
    "DecoupledQEnsemble",
    "CRITIC_INITS",
    "DeterministicActor",
    "TanhGaussianActor",
    "gaussian_kl",
    "ACTOR_INITS",
    "ConditionalVAE",
]
