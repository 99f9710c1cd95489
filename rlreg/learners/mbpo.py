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
     when it changes the buffer is reallocated keeping its newest rows (old short rollouts must not dominate);
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

The single-model agent (``agent=mbpo_lipschitz``, docs/agents/mbpo_lipschitz.md: a reconstruction): one deterministic model
(``agent.model.type=gaussian`` for a probabilistic one), spectral normalisation on every critic layer
(``agent.critic_spectral_norm=all``) and the ``lipschitz`` regularizer (adversarial value loss,
``rlreg/regularizers/lipschitz.py``). Both agents log ``model/q_lipschitz``: the mean over critics and 1,024
rollout states of ``||grad_s Q_j(s, a)||_2`` (the paper's key diagnostic), after every model rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch, ReplayBuffer
from rlreg.learners.base import adam, register_learner
from rlreg.learners.sac import SACConfig, SACLearner
from rlreg.models.dynamics import MBPO_WEIGHT_DECAYS, EnsembleDynamics
from rlreg.models.termination import TerminationFn, termination_fn
from rlreg.regularizers.base import Regularizer, SetupContext


def rollout_length(epoch: int, schedule: tuple[int, int, int, int]) -> int:
    """MBPO's rollout length ``k`` in ``epoch`` for ``schedule = [e0, e1, k0, k1]`` (linear from k0 to k1)."""
    e0, e1, k0, k1 = schedule
    if epoch <= e0:
        return int(k0)
    return int(min((epoch - e0) / (e1 - e0), 1.0) * (k1 - k0) + k0)


def model_buffer_capacity(k: int, rollout_batch_size: int, epoch_length: int, train_freq: int,
                          retain_epochs: int) -> int:
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


class _ModelMixSampler:
    """``int(B * real_ratio)`` real rows and ``B - int(B * real_ratio)`` rows of the learner's *current* model
    buffer (it may be reallocated between calls), concatenated (MBPO ``_training_batch``)."""

    def __init__(self, learner: "MBPOLearner", real: Any) -> None:
        self.learner, self.real = learner, real

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n_real = int(batch_size * self.learner.config.real_ratio)
        if n_real >= batch_size:
            return self.real.sample(batch_size, generator)
        model = self.learner.model_buffer
        if model is None or len(model) == 0:
            raise RuntimeError(
                "MBPO: the model buffer is empty at a gradient update; agent.warmup_steps "
                f"({self.learner.config.warmup_steps}) must equal trainer.warmup_steps (the model is first trained "
                "and rolled out right after the warm-up)"
            )
        fake = model.sample(batch_size - n_real, generator)
        if n_real == 0:
            return fake
        real = self.real.sample(n_real, generator)
        return Batch(*(torch.cat([x, y], dim=0) for x, y in zip(real, fake)))


@dataclass
class MBPOConfig(SACConfig):
    """SAC's options (``agent.*``) plus the model-based ones (MBPO ``examples/config``, docs/agents/mbpo.md)."""

    model: DynamicsConfig = field(default_factory=DynamicsConfig)
    real_ratio: float = 0.05  # share of real transitions in each SAC batch
    model_train_freq: int = 250  # env steps between model trainings (and rollouts)
    epoch_length: int = 1000  # env steps per epoch (the rollout schedule's unit)
    rollout_batch_size: int = 100_000  # start states per rollout
    rollout_schedule: tuple[int, int, int, int] = (20, 100, 1, 1)  # [e0, e1, k0, k1]
    model_retain_epochs: int = 1
    warmup_steps: int = 5000  # = trainer.warmup_steps: the model phase starts after it
    termination: str = "auto"  # auto (from env.id) | hopper | walker2d | ant | humanoid | inverted_pendulum | ...
    lipschitz_probe: int = 1024  # rollout states for the model/q_lipschitz diagnostic (0: off)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ConfigError(f"agent.real_ratio must be in [0, 1], got {self.real_ratio}")
        for key in ("model_train_freq", "epoch_length", "rollout_batch_size", "model_retain_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"agent.{key} must be >= 1, got {getattr(self, key)}")
        e0, e1, k0, k1 = self.rollout_schedule
        if e1 <= e0 or k0 < 1 or k1 < 1:
            raise ConfigError(f"agent.rollout_schedule [e0, e1, k0, k1] needs e1 > e0 and k >= 1, got "
                              f"{list(self.rollout_schedule)}")
        if self.warmup_steps < 0 or self.lipschitz_probe < 0:
            raise ConfigError("agent.warmup_steps and agent.lipschitz_probe must be >= 0")
        if getattr(self, "n_step", 1) != 1:
            raise ConfigError(f"agent.n_step must be 1 for MBPO (model rollouts are one-step), got {self.n_step}")


@register_learner("mbpo", MBPOConfig, family="sac")
class MBPOLearner(SACLearner):
    """SAC (:class:`rlreg.learners.sac.SACLearner`) whose batches mix real and model transitions; the dynamics
    model, its optimiser (``optimizers["model"]``), the model buffer and the rollout length are checkpointed."""

    config: MBPOConfig
    provides = SACLearner.provides | {"state_std"}
    progress_keys = ("model/holdout_mse",)  # shown in the progress bar next to env steps and updates
    trainer_modes = ("online",)  # the model is trained and rolled out from the online trainer's env-step hook

    def __init__(self, setup: SetupContext, config: MBPOConfig, regularizers: Sequence[Regularizer] = ()) -> None:
        super().__init__(setup, config, regularizers)
        self.obs_dim = int(setup.obs_dim)
        self.act_dim = int(setup.action_spec.dim)
        self.device = torch.device(setup.device)
        env = setup.env
        try:
            self.termination: TerminationFn = termination_fn(
                config.termination, env.id if env is not None else None, env.kwargs if env is not None else None)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.dynamics = config.model.build(self.obs_dim, self.act_dim)
        self.optimizers["model"] = adam(self.dynamics.parameters(), config.model.lr)
        self.model_buffer: ReplayBuffer | None = None
        self.rollout_k = 0

    # -- the contract's data hooks -----------------------------------------------------------------
    def sampler(self, real_buffer: Any) -> _ModelMixSampler:
        return _ModelMixSampler(self, real_buffer)

    def on_env_step(self, step: int, real_buffer: Any, generator: torch.Generator) -> dict[str, Tensor]:
        c = self.config
        t = step - c.warmup_steps - 1
        if t < 0 or t % c.model_train_freq != 0 or c.real_ratio >= 1.0:
            return {}
        metrics = self.train_model(real_buffer, generator)
        self.set_rollout_length(rollout_length(t // c.epoch_length, c.rollout_schedule))
        metrics.update(self.rollout(real_buffer, generator))
        if c.lipschitz_probe > 0:
            metrics["model/q_lipschitz"] = self.q_lipschitz(c.lipschitz_probe, generator)
        return metrics

    def state_std(self) -> Tensor:
        """Per-dimension std of the real states (the model's input scaler, refit at every model training)."""
        return self.dynamics.in_std[: self.obs_dim]

    # -- model training and rollouts ---------------------------------------------------------------
    def train_model(self, real_buffer: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """Fit the dynamics model on every real transition (holdout early stopping, elites)."""
        m = self.config.model
        n = len(real_buffer)
        obs, nxt = real_buffer.observations[:n], real_buffer.next_observations[:n]
        inputs = torch.cat([obs, real_buffer.actions[:n].to(obs.dtype)], dim=-1)
        targets = self.dynamics.targets_of(obs, real_buffer.rewards[:n], nxt)
        with torch.enable_grad():
            res = self.dynamics.fit(inputs, targets, self.optimizers["model"], generator, batch_size=m.batch_size,
                                    holdout_ratio=m.holdout_ratio, max_holdout=m.max_holdout, patience=m.patience,
                                    min_improvement=m.min_improvement, max_epochs=m.max_epochs)
        return {"model/holdout_mse": res.holdout_mse, "model/train_loss": res.train_loss,
                "model/epochs": self._scalar(res.epochs)}

    def set_rollout_length(self, k: int) -> None:
        """Set ``k`` and (re)allocate the model buffer for it, keeping the newest rows."""
        c = self.config
        capacity = model_buffer_capacity(k, c.rollout_batch_size, c.epoch_length, c.model_train_freq,
                                         c.model_retain_epochs)
        self.rollout_k = int(k)
        if self.model_buffer is None:
            self.model_buffer = self._new_model_buffer(capacity)
        elif self.model_buffer.capacity != capacity:
            self.model_buffer = self.model_buffer.resized(capacity)

    def _new_model_buffer(self, capacity: int) -> ReplayBuffer:
        return ReplayBuffer(capacity, self.obs_dim, self.act_dim, device=self.device, gamma=self.config.gamma)

    @torch.no_grad()
    def _policy(self, obs: Tensor, generator: torch.Generator, chunk: int = 25_000) -> Tensor:
        return torch.cat([self.actor(obs[i:i + chunk], deterministic=False, with_log_prob=False, generator=generator)[0]
                          for i in range(0, obs.shape[0], chunk)])

    @torch.no_grad()
    def rollout(self, real_buffer: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """``rollout_batch_size`` model rollouts of length ``rollout_k`` from real start states into the model
        buffer."""
        assert self.model_buffer is not None
        n0 = self.config.rollout_batch_size
        obs = real_buffer.sample(n0, generator).observations
        added = 0
        for _ in range(self.rollout_k):
            act = self._policy(obs, generator)
            nxt, rew = self.dynamics.step(obs, act, generator)
            term = self.termination(nxt)
            self.model_buffer.add(obs, act, rew, nxt, term, torch.zeros_like(term))
            added += obs.shape[0]
            keep = ~term
            if not bool(keep.any()):
                break
            obs = nxt[keep]
        return {"model/rollout_length": self._scalar(self.rollout_k),
                "model/mean_rollout_length": self._scalar(added / n0),
                "model/buffer_size": self._scalar(len(self.model_buffer))}

    def _scalar(self, value: float) -> Tensor:
        """A metric as a tensor on the learner's device (the trainer stacks metrics on the device)."""
        return torch.tensor(float(value), device=self.device)

    def q_lipschitz(self, n: int, generator: torch.Generator) -> Tensor:
        """Mean over critics and ``n`` model-buffer states of ``||grad_s Q_j(s, a)||_2`` (a held fixed)."""
        assert self.model_buffer is not None
        batch = self.model_buffer.sample(n, generator)
        e = self.critic.num_members
        with torch.enable_grad():
            s = batch.observations.expand(e, *batch.observations.shape).clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.critic(s, batch.actions).sum(), s)
        return grad.norm(dim=-1).mean().detach()

    # -- checkpointing -----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        state = dict(super().extra_state())
        state["rollout_k"] = self.rollout_k
        state["model_buffer"] = None if self.model_buffer is None else self.model_buffer.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.rollout_k = int(state["rollout_k"])
        saved = state["model_buffer"]
        self.model_buffer = None
        if saved is not None:
            self.model_buffer = self._new_model_buffer(int(saved["capacity"]))
            self.model_buffer.load_state_dict(saved)

