"""MBPO (Janner et al., NeurIPS 2019) and the single-model Lipschitz agent (Zheng et al., ICLR 2023) as SAC plus a
learned model that fills a second replay buffer with short rollouts.

Per env step (the online trainer calls :meth:`MBPOLearner.on_env_step` after adding the real transition and
before that step's gradient updates), with ``t = step - warmup_steps - 1`` the step count of the model phase:

* every ``model_train_freq`` steps (``t % model_train_freq == 0``), in epoch ``e = t // epoch_length``:
  1. train the dynamics model on *all* real transitions (:meth:`rlreg.models.EnsembleDynamics.fit`: input
     scaler refit, 20% holdout capped at 5,000, early stopping, elites);
  2. rollout length ``k(e) = k0`` for ``e <= e0``, else ``int(min((e - e0) / (e1 - e0), 1) (k1 - k0) + k0)``
     (``rollout_schedule = [e0, e1, k0, k1]``);
  3. model buffer capacity ``retain_epochs * int(k * rollout_batch_size * epoch_length / model_train_freq)``;
     when it changes the buffer is reallocated keeping its newest rows (online_mb.md 6.7 pitfall 4);
  4. ``rollout_batch_size`` start states drawn uniformly from the real buffer are rolled out for ``k`` steps with
     the current *stochastic* policy, a uniformly random elite and a Gaussian sample per row; every model
     transition is stored (``done`` from the task's termination function on the predicted next state) and
     terminated rows stop;
* SAC trains on batches of ``int(B * real_ratio)`` real and ``B - int(B * real_ratio)`` model transitions
  (:meth:`sampler`), ``trainer.utd_ratio`` updates per env step.

Official code followed (in our own words): jannerm/mbpo @ ac694ff9f1ebb789cc5b3f164d9d67f93ed8f129,
``mbpo/algorithms/mbpo.py`` (``_train``, ``_set_rollout_length``, ``_reallocate_model_pool``,
``_rollout_model``, ``_training_batch``), ``examples/config/<env>/0.py`` (per-env settings, here
``conf/tuned/mbpo/<env>.yaml``). MBPO's epochs start after the random warm-up; here ``agent.warmup_steps``
(interpolated from ``trainer.warmup_steps``) marks that point, and the first model training happens right after
the first post-warm-up env step instead of right before it.

The single-model agent (``agent=mbpo_lipschitz``, docs: online_mb.md 6.3 reconstruction): one deterministic model
(``agent.model.type=gaussian`` for a probabilistic one), spectral normalisation on every critic layer
(``agent.critic_spectral_norm=all``) and the ``lipschitz`` regularizer (adversarial value loss,
``rlreg/regularizers/lipschitz.py``). Both agents log ``model/q_lipschitz``: the mean over critics and 1,024
rollout states of ``||grad_s Q_j(s, a)||_2`` (the paper's key diagnostic), after every model rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch, ReplayBuffer
from rlreg.learners.base import adam
from rlreg.models.dynamics import MBPO_WEIGHT_DECAYS, EnsembleDynamics
from rlreg.models.termination import TerminationFn, termination_fn


def rollout_length(epoch: int, schedule: tuple[int, int, int, int]) -> int:
    """MBPO's rollout length ``k`` in ``epoch`` for ``schedule = [e0, e1, k0, k1]`` (linear from k0 to k1)."""
    e0, e1, k0, k1 = schedule
    if epoch <= e0:
        return int(k0)
    return int(min((epoch - e0) / (e1 - e0), 1.0) * (k1 - k0) + k0)


def model_buffer_capacity(k: int, rollout_batch_size: int, epoch_length: int, train_freq: int, retain_epochs: int) -> int:
    """Model transitions kept: ``retain_epochs`` epochs of rollouts of length ``k``."""
    return int(retain_epochs) * int(k * rollout_batch_size * epoch_length / train_freq)


@dataclass
class DynamicsConfig:
    """The learned model (``agent.model.*``); defaults are MBPO's probabilistic ensemble."""

    type: Literal["gaussian", "deterministic"] = "gaussian"
    num_members: int = 7
    num_elites: int = 5
    hidden: tuple[int, ...] = (200, 200, 200, 200)
    weight_decays: tuple[float, ...] = MBPO_WEIGHT_DECAYS
    lr: float = 1e-3
    batch_size: int = 256
    holdout_ratio: float = 0.2
    max_holdout: int = 5000
    patience: int = 5  # stop after more than `patience` epochs without a > min_improvement gain
    min_improvement: float = 0.01
    max_epochs: int | None = None  # cap per training call (None: early stopping only, as MBPO)
    standardize_targets: bool | None = None  # None: true for deterministic models, false for Gaussian ones

    def __post_init__(self) -> None:
        if not 1 <= self.num_elites <= self.num_members:
            raise ConfigError(f"agent.model.num_elites ({self.num_elites}) must be between 1 and "
                              f"agent.model.num_members ({self.num_members})")
        if len(self.weight_decays) != len(self.hidden) + 1:
            raise ConfigError(f"agent.model.weight_decays needs {len(self.hidden) + 1} values (one per layer of "
                              f"agent.model.hidden={list(self.hidden)}), got {len(self.weight_decays)}")
        if not 0.0 <= self.holdout_ratio < 1.0:
            raise ConfigError(f"agent.model.holdout_ratio must be in [0, 1), got {self.holdout_ratio}")

    def build(self, obs_dim: int, act_dim: int) -> EnsembleDynamics:
        return EnsembleDynamics(obs_dim, act_dim, num_members=self.num_members, num_elites=self.num_elites,
                                hidden=self.hidden, model_type=self.type, weight_decays=self.weight_decays,
                                standardize_targets=self.standardize_targets)


