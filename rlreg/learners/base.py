"""The learner contract shared by every base learner (TD3, SAC, DecQN, MBPO).

A learner owns its networks, optimizers, schedules and (model-based) extra data, and a list of
regularizers. Learners are plugins: ``@register_learner("name", NameConfig, family=...)`` beside the class
makes ``agent.learner=name`` selectable; modules of this package are discovered automatically.

What a trainer may call: :meth:`Learner.act`, :meth:`Learner.random_action`, :meth:`Learner.update`,
:meth:`Learner.sampler`, :meth:`Learner.on_env_step`, the ``action_spec`` and the checkpoint methods.

**The one hook order** (:meth:`Learner.update`, written once here; every learner goes through it)::

    critic loss + regularizers' critic_terms  ->  critic step  ->  regularizers' after_critic_step
    -> (if the actor is due) actor loss + regularizers' actor_terms  ->  actor step
    -> end_update (targets)  ->  regularizers' after_update

A learner implements the pieces (``critic_loss``, ``actor_loss``, ``end_update``, optionally
``critic_step``/``actor_step``/``actor_due``). ``update`` returns detached scalar tensors (no host sync);
the trainer accumulates them on the device and syncs every K steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rlreg.data.buffers import Batch, Sampler
from rlreg.nets.layers import ObsNormalizer

if TYPE_CHECKING:  # regularizers import learner helpers; keep this module free of that cycle
    from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext


def adam(params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused CPU/GPU kernel where the build has it (same maths, one kernel)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


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


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# --------------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActionSpec:
    """What a learner acts in: a continuous Box ``[low, high]^A`` (``bins == ()``), or factorised discrete
    actions with ``bins[i]`` values ``linspace(low_i, high_i, bins[i])`` in dimension ``i``.

    Buffers store actions in the learner's format (:attr:`stored_dtype`, shape ``(A,)``: Box values, or bin
    indices); :meth:`to_env` maps a stored action to the env's action."""

    low: np.ndarray
    high: np.ndarray
    bins: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float32).reshape(-1)
        high = np.asarray(self.high, dtype=np.float32).reshape(-1)
        if low.shape != high.shape or not np.all(high >= low):
            raise ValueError(f"ActionSpec: low {low} and high {high} must have one shape and low <= high")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        bins = tuple(int(b) for b in self.bins)
        if bins and (len(bins) != low.shape[0] or min(bins) < 2):
            raise ValueError(f"ActionSpec: bins {bins} must give >= 2 bins for each of the {low.shape[0]} dims")
        object.__setattr__(self, "bins", bins)

    @classmethod
    def discretise(cls, low: np.ndarray, high: np.ndarray, bins: int | Sequence[int]) -> "ActionSpec":
        """Discrete bins over a Box: one int for every dimension, or one per dimension."""
        dim = int(np.asarray(low).reshape(-1).shape[0])
        per_dim = (int(bins),) * dim if isinstance(bins, (int, np.integer)) else tuple(int(b) for b in bins)
        return cls(low, high, per_dim)

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def is_discrete(self) -> bool:
        return bool(self.bins)

    @property
    def max_bins(self) -> int:
        return max(self.bins) if self.bins else 0

    @property
    def max_action(self) -> float:
        """The largest bound (the scale of a symmetric Box)."""
        return float(np.max(np.abs(np.concatenate([self.low, self.high]))))

    @property
    def stored_dtype(self) -> torch.dtype:
        return torch.int64 if self.bins else torch.float32

    def values(self) -> Tensor:
        """``(A, max_bins)`` env value of every bin (padded bins repeat the high bound)."""
        out = np.empty((self.dim, self.max_bins), dtype=np.float32)
        for i, n in enumerate(self.bins):
            out[i, :n] = np.linspace(self.low[i], self.high[i], n, dtype=np.float32)
            out[i, n:] = self.high[i]
        return torch.from_numpy(out)

    def valid_mask(self) -> Tensor:
        """``(A, max_bins)`` True where a bin exists (dimensions with fewer bins are padded)."""
        counts = torch.tensor(self.bins)
        return torch.arange(self.max_bins).unsqueeze(0) < counts.unsqueeze(1)

    def to_env(self, action: np.ndarray | Tensor) -> np.ndarray:
        """Stored action(s) ``(..., A)`` -> env action(s) ``(..., A)`` as float32 numpy."""
        if isinstance(action, Tensor):
            action = action.detach().cpu().numpy()
        if not self.bins:
            return np.asarray(action, dtype=np.float32)
        idx = np.asarray(action, dtype=np.int64)
        table = self.values().numpy()
        return table[np.arange(self.dim), idx]

    def uniform(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> Tensor:
        """Uniform random stored actions of shape ``shape + (A,)`` (Box: uniform values; discrete: a uniform
        bin per dimension)."""
        u = torch.rand((*shape, self.dim), generator=generator, device=device)
        if not self.bins:
            low = torch.as_tensor(self.low, device=device)
            high = torch.as_tensor(self.high, device=device)
            return low + u * (high - low)
        counts = torch.tensor(self.bins, device=device, dtype=torch.float32)
        return (u * counts).long().clamp_max(counts.long() - 1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

LEARNERS: dict[str, type["Learner"]] = {}


def register_learner(name: str, config_cls: type, family: str | None = None) -> Callable[[type], type]:
    """Class decorator: make ``agent.learner=name`` build this learner from ``config_cls``.

    ``family`` names the learner family regularizers can declare they need (``"td3"``, ``"sac"``...);
    default: ``name``."""
    from rlreg.config import register_learner_config

    def wrap(cls: type) -> type:
        cls.name = name
        cls.family = family or name
        LEARNERS[name] = cls
        register_learner_config(name, config_cls)
        return cls

    return wrap


# --------------------------------------------------------------------------------------------------
# The learner base
# --------------------------------------------------------------------------------------------------


class Learner(nn.Module):
    """Base class: networks are submodules; optimizers, regularizers, ``extra_state`` are checkpointed."""

    name: str = "learner"
    family: str = "learner"
    # What this learner can provide to a regularizer that ``requires`` it (e.g. "critic_features").
    provides: frozenset[str] = frozenset()
    # Metrics of this learner the progress bar shows (last log window), e.g. MBPO's "model/holdout_mse".
    progress_keys: tuple[str, ...] = ()
    # The trainer modes (trainer.mode) it can train with; rlreg.config.validate refuses the others.
    trainer_modes: tuple[str, ...] = ("offline", "online", "finetune")

    def __init__(self, setup: "SetupContext", regularizers: Sequence["Regularizer"] = ()) -> None:
        super().__init__()
        self.setup = setup
        self.regularizers: list["Regularizer"] = list(regularizers)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for reg in self.regularizers:
            check_compatible(reg, self)
        self.needs: frozenset[str] = frozenset().union(*(reg.requires for reg in self.regularizers))
        # the one place env observations are normalised (checkpointed with the networks)
        self.state_normalizer = ObsNormalizer(setup.obs_mean, setup.obs_std)

    # -- actions ----------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        """The actions this learner emits and its buffers store (default: the env's Box)."""
        return self.setup.action_spec

    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Action(s) in stored format for observation(s) ``obs`` as the learner trains on them (normalised
        like its batches; :meth:`act_env` takes env observations)."""
        raise NotImplementedError

    @torch.no_grad()
    def act_env(self, obs: np.ndarray | Tensor, deterministic: bool = True,
                generator: torch.Generator | None = None) -> np.ndarray:
        """Env action(s) for env observation(s): the state normaliser, :meth:`act`, then ``action_spec.to_env``."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device_of())
        return self.action_spec.to_env(self.act(self.state_normalizer(x), deterministic, generator))

    def random_action(self, generator: torch.Generator) -> Tensor:
        """The warm-up action: uniform over the action spec (one action, on the learner's device)."""
        return self.action_spec.uniform((), generator, self.device_of())

    def device_of(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return self.setup.device

    # -- data (model-based learners own extra data) -----------------------------------------------
    def sampler(self, real_buffer: Sampler) -> Sampler:
        """Where training batches come from (default: the real buffer)."""
        return real_buffer

    def on_env_step(self, step: int, real_buffer: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """Called by the online trainer after each env step's transition is stored, before that step's
        updates (model training and rollouts live here)."""
        return {}

    def on_pretrain_finished(self, reg: "Regularizer") -> None:
        """Called once when ``reg``'s pre-training phase ends (e.g. start the actor from a prior it provides)."""
        return None

    # -- the update: one hook order for every learner -----------------------------------------------
    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        metrics: dict[str, Tensor] = {}
        loss, cctx = self.critic_loss(batch, step, generator, metrics)
        extra = self._regularizer_terms(metrics, "critic_terms", batch, cctx)
        self.critic_step(loss if extra is None else loss + extra, metrics)
        cctx = dataclasses.replace(cctx, q=cctx.q.detach())
        for reg in self.regularizers:
            for key, value in reg.after_critic_step(batch, cctx).items():
                metrics[f"{reg.name}/{key}"] = value.detach()
        if self.actor_due(step):
            loss, actx = self.actor_loss(batch, step, generator, metrics)
            extra = self._regularizer_terms(metrics, "actor_terms", batch, actx)
            total = loss if extra is None else loss + extra
            metrics["actor/loss"] = total.detach()
            self.actor_step(total, actx, metrics)
        self.end_update(step, metrics)
        for reg in self.regularizers:
            for key, value in (reg.after_update(step) or {}).items():
                metrics[f"{reg.name}/{key}"] = value.detach()
        return metrics

    def critic_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, "CriticContext"]:
        """The learner's own critic (TD) loss and what critic regularizers see."""
        raise NotImplementedError

    def critic_step(self, loss: Tensor, metrics: dict[str, Tensor]) -> None:
        optimizer_step(self.optimizers["critic"], loss)

    def actor_due(self, step: int) -> bool:
        """Whether this update also steps the actor (learners without an actor: never)."""
        return False

    def actor_loss(
        self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]
    ) -> tuple[Tensor, "ActorContext"]:
        raise NotImplementedError

    def actor_step(self, loss: Tensor, ctx: "ActorContext", metrics: dict[str, Tensor]) -> None:
        optimizer_step(self.optimizers["actor"], loss)

    def end_update(self, step: int, metrics: dict[str, Tensor]) -> None:
        """After the optimizer steps: target networks (Polyak or hard copies), schedules."""
        return None

    def _regularizer_terms(self, metrics: dict[str, Tensor], hook: str, *args: Any) -> Tensor | None:
        total: Tensor | None = None
        for reg in self.regularizers:
            part = add_terms(metrics, reg.name, getattr(reg, hook)(*args))
            if part is not None:
                total = part if total is None else total + part
        return total

    # -- checkpointing ---------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """The learner's own schedules and data beyond networks and optimizers (tensors, numbers, strings,
        lists, dicts; loadable with ``weights_only=True``)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def full_state_dict(self) -> dict[str, Any]:
        return {
            "networks": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "regularizers": {reg.name: reg.state_dict() for reg in self.regularizers},
            "extra": self.extra_state(),
        }

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["networks"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for reg in self.regularizers:
            reg.load_state_dict(state["regularizers"][reg.name])
        self.load_extra_state(state.get("extra", {}))


def check_actor_critic_config(cfg: Any, positive: tuple[str, ...] = ("actor_lr", "critic_lr")) -> None:
    """Ranges every actor-critic config shares (TD3, SAC and their descendants), named as ``agent.<option>``."""
    from rlreg.config import ConfigError, check_range

    for key in ("num_critics", "n_step", "policy_freq"):
        check_range(f"agent.{key}", getattr(cfg, key), low=1)
    for key in positive:
        check_range(f"agent.{key}", getattr(cfg, key), low=0.0, low_open=True)
    check_range("agent.gamma", cfg.gamma, low=0.0, high=1.0)
    check_range("agent.tau", cfg.tau, low=0.0, high=1.0)
    if any(h < 1 for h in (*cfg.actor_hidden, *cfg.critic_hidden)):
        raise ConfigError("agent.actor_hidden / agent.critic_hidden: layer widths must be >= 1")


def symmetric_box_bound(spec: ActionSpec, learner: str) -> float:
    """``m`` of a continuous ``[-m, m]^A`` action space (what TD3 and SAC act in), else a clear error."""
    from rlreg.config import ConfigError

    m = float(spec.high[0]) if spec.dim else 1.0
    if spec.is_discrete or not (np.allclose(spec.low, -spec.high) and np.allclose(spec.high, m)):
        raise ConfigError(f"agent.learner={learner} needs a symmetric continuous action space [-m, m]^A; "
                          f"the env's is [{spec.low.tolist()}, {spec.high.tolist()}]")
    return m


def check_compatible(reg: "Regularizer", learner: Learner) -> None:
    """A regularizer's declared learner families and requirements against what ``learner`` is and provides."""
    from rlreg.config import ConfigError

    if reg.families is not None and learner.family not in reg.families:
        kinds = " or ".join(f"{f.upper()}-family" for f in sorted(reg.families))
        raise ConfigError(
            f"regularizer={reg.name} needs a {kinds} learner; this agent's learner is {learner.name} "
            f"(agent.learner={learner.name})"
        )
    missing = sorted(set(reg.requires) - set(learner.provides))
    if missing:
        raise ConfigError(
            f"regularizer={reg.name} needs {', '.join(missing)} from its learner, which agent.learner="
            f"{learner.name} does not provide (it provides: {', '.join(sorted(learner.provides)) or 'nothing'})"
        )
