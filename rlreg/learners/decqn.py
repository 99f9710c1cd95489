"""DecQN and REValueD: value decomposition over a discretised (factorised) action space.

Each action dimension ``i`` is discretised into ``n_i`` bins (the learner's action spec) and every critic member
``k`` outputs one utility per bin, ``U_{k,i}(s, b)``; the joint action value is their mean (docs/agents/revalued.md)

    Q_k(s, a) = (1/N) sum_i U_{k,i}(s, a_i)

and the greedy joint action is the per-dimension argmax. With ``d = batch.discounts`` (gamma^k (1 - terminated)
for the k rewards of an n-step row) the TD target of member k is ``y_k = R + d * V_k(s')`` with ``V_k`` one of:

    double_mean  V_k = (1/N) sum_i  Ubar_i(s', argmax_b U_{k,i}(s', b)),  Ubar = (1/K) sum_m Ubar_m
                 (DecQN: two critics, each selecting with its own online net and evaluated on the average of
                 the two target nets; tseyde/decqn@2309e0b ``agents/dqn/learning.py``)
    decqn        V_k = (1/N) sum_i  Ubar_{k,i}(s', argmax_b U_{k,i}(s', b))      (independent double-Q members)
    mean         V   = (1/N) sum_i max_b (1/K) sum_k Ubar_{k,i}(s', b)           (REValueD's class default)
    redq         V   = min_{m in {m1, m2}} (1/N) sum_i max_b Ubar_{m,i}(s', b),  m1 != m2 drawn per update
                 (the REValueD training script; the three are davidireland3/REValueD@2e811a5
                 ``revalued/algorithms/revalued.py``)

    L_TD = reduce_k mean_B Huber_delta(y_k - Q_k(s, a))    (reduce: sum for DecQN's two critics, mean for
                                                              REValueD's ensemble, whose HuberLoss averages B x K)

followed by one Adam step with the global gradient norm clipped (40). Padded bins of dimensions with fewer bins
are -inf in every argmax, max and mean above (as REValueD's ``_create_action_mask``). The target network is a hard copy
every ``target_update_period`` updates (DecQN) or a Polyak average (REValueD, tau 0.005).

Exploration (``act(deterministic=False)``) is epsilon-greedy, all on the device:

* ``epsilon_mode=per_dim`` (DecQN): every dimension independently takes a uniformly random bin with probability
  ``(eps/N) / (eps/N + 1 - eps)``, else its greedy bin -- the per-dimension categorical of DecQN's
  ``epsilon_greedy`` (probabilities ``eps/(N n) + (1 - eps) onehot``, renormalised per dimension);
* ``epsilon_mode=joint`` (REValueD): with probability eps the whole action is uniformly random.

After every random action eps becomes ``max(eps * epsilon_decay, epsilon_min)`` (REValueD: 0.999 down to 0.05,
so eps decays per random action, not per step; DecQN: decay 1, a fixed 0.1). The greedy part uses the
elementwise max of the members' utilities (DecQN, ``explore_member=ensemble``, ``greedy_reduce=max``) or the
utilities of one member drawn at every step (REValueD, ``explore_member=random``); evaluation
(``deterministic=True``) is greedy w.r.t. the members' max (DecQN) or mean (REValueD, ``greedy_reduce=mean``).
Prioritised replay (DecQN's Reverb table) is not implemented: the REValueD code also samples uniformly.

The ``revalued`` regularizer (rlreg/regularizers/revalued.py) adds the paper's utility penalty; it needs the
target network's utilities at the taken action, which this learner then returns in the critic context.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.config import ConfigError, check_range
from rlreg.data.buffers import Batch
from rlreg.learners.base import ActionSpec, Learner, adam, register_learner, set_requires_grad
from rlreg.nets import DecoupledQEnsemble, hard_update_, polyak_update_
from rlreg.regularizers.base import CriticContext, Regularizer, SetupContext

TargetKind = Literal["double_mean", "decqn", "mean", "redq"]


@dataclass
class DecQNConfig:
    """DecQN defaults (tseyde/decqn@2309e0b ``config_default.py``); REValueD's are in
    ``conf/agent/revalued.yaml`` (docs/agents/revalued.md)."""

    gamma: float = 0.99
    n_step: int = 3
    bins: Any = 2  # bins per action dimension: one int for all, or a list with one int per dimension
    hidden: int = 512
    arch: Literal["acme", "revalued"] = "acme"
    ensemble_size: int = 2
    shared_layer_norm: bool = False  # one LayerNorm for all members (REValueD)
    lr: float = 1e-4
    huber_delta: float = 1.0
    grad_clip: float = 40.0  # global gradient norm; 0 turns clipping off
    target: TargetKind = "double_mean"
    redq_subset: int = 2
    member_loss: Literal["sum", "mean"] = "sum"
    target_update: Literal["hard", "polyak"] = "hard"
    target_update_period: int = 100
    tau: float = 0.005
    epsilon_mode: Literal["per_dim", "joint"] = "per_dim"
    epsilon: float = 0.1
    epsilon_decay: float = 1.0
    epsilon_min: float = 0.0
    explore_member: Literal["ensemble", "random"] = "ensemble"
    greedy_reduce: Literal["max", "mean"] = "max"

    def __post_init__(self) -> None:
        check_range("agent.gamma", self.gamma, 0.0, 1.0, low_open=True)
        check_range("agent.n_step", self.n_step, 1)
        bins = (self.bins,) if isinstance(self.bins, int) else tuple(self.bins) if isinstance(self.bins, (list, tuple)) else None
        if bins is None or not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in bins):
            raise ConfigError(f"agent.bins must be an integer >= 2 or a list of them (one per action dimension), got {self.bins!r}")
        self.bins = bins[0] if isinstance(self.bins, int) else bins
        for key in ("hidden", "ensemble_size", "target_update_period"):
            check_range(f"agent.{key}", getattr(self, key), 1)
        if self.target == "redq" and not 2 <= self.redq_subset <= self.ensemble_size:
            raise ConfigError(f"agent.redq_subset must be in [2, agent.ensemble_size={self.ensemble_size}] for "
                              f"agent.target=redq, got {self.redq_subset}")
        if not 0.0 <= self.epsilon_min <= self.epsilon <= 1.0:
            raise ConfigError(f"agent.epsilon ({self.epsilon}) and agent.epsilon_min ({self.epsilon_min}) must satisfy "
                              "0 <= epsilon_min <= epsilon <= 1")
        check_range("agent.epsilon_decay", self.epsilon_decay, 0.0, 1.0, low_open=True)
        check_range("agent.tau", self.tau, 0.0, 1.0, low_open=True)
        check_range("agent.lr", self.lr, 0.0, low_open=True)
        check_range("agent.huber_delta", self.huber_delta, 0.0, low_open=True)
        check_range("agent.grad_clip", self.grad_clip, 0.0)

    def bins_per_dim(self, num_dims: int) -> tuple[int, ...]:
        """The bins of each of ``num_dims`` action dimensions (checks a list's length)."""
        if isinstance(self.bins, int):
            return (self.bins,) * num_dims
        if len(self.bins) != num_dims:
            raise ConfigError(f"agent.bins has {len(self.bins)} entries but the env has {num_dims} action dimensions")
        return tuple(self.bins)


# ------------------------------------------------------------------------------------------------
# the maths, on plain tensors (tested against hand computations)
# ------------------------------------------------------------------------------------------------
def selected_utilities(u: Tensor, actions: Tensor) -> Tensor:
    """``U_{k,i}(s, a_i)``: ``u`` ``(K, B, N, n)``, ``actions`` ``(B, N)`` int -> ``(K, B, N)``."""
    idx = actions.long().unsqueeze(0).expand(u.shape[0], *actions.shape).unsqueeze(-1)
    return u.gather(-1, idx).squeeze(-1)


def next_values(
    kind: str, target_next: Tensor, online_next: Tensor | None = None, subset: Tensor | None = None
) -> Tensor:
    """``V_k(s')`` of the module docstring, shape ``(K, B)``; inputs ``(K, B, N, n)`` already masked (-inf on
    padded bins). ``online_next`` selects the argmax for ``double_mean``/``decqn``; ``subset`` holds the member
    indices of ``redq``."""
    k = target_next.shape[0]
    if kind in ("double_mean", "decqn"):
        if online_next is None:
            raise ValueError(f"target {kind} needs the online utilities at s'")
        best = online_next.argmax(dim=-1, keepdim=True)  # (K, B, N, 1)
        values = target_next.mean(dim=0, keepdim=True).expand_as(target_next) if kind == "double_mean" else target_next
        return values.gather(-1, best).squeeze(-1).mean(dim=-1)
    if kind == "mean":
        v = target_next.mean(dim=0).max(dim=-1).values.mean(dim=-1)  # (B,)
        return v.unsqueeze(0).expand(k, -1)
    if kind == "redq":
        if subset is None:
            raise ValueError("target redq needs the drawn member subset")
        v = target_next[subset].max(dim=-1).values.mean(dim=-1).min(dim=0).values  # (B,)
        return v.unsqueeze(0).expand(k, -1)
    raise ValueError(f"unknown target {kind!r}")


def td_loss(q: Tensor, target: Tensor, delta: float, member_loss: str) -> Tensor:
    """``reduce_k mean_B Huber_delta(y_k - Q_k)``; ``q``, ``target`` ``(K, B)``."""
    per_member = F.huber_loss(q, target, reduction="none", delta=delta).mean(dim=1)
    return per_member.sum() if member_loss == "sum" else per_member.mean()


# ------------------------------------------------------------------------------------------------
# the learner
# ------------------------------------------------------------------------------------------------
@register_learner("decqn", DecQNConfig, family="decqn")
class DecQNLearner(Learner):
    """DecQN (``agent=decqn``) and REValueD (``agent=revalued``) on a discretised action space."""

    provides = frozenset({"target_utilities"})
    trainer_modes = ("online",)  # its n-step replay of discrete bins; the offline buffers hold continuous actions

    def __init__(self, setup: SetupContext, config: DecQNConfig, regularizers: Sequence[Regularizer] = ()) -> None:
        super().__init__(setup, regularizers)
        box = setup.action_spec
        self.config = config
        # the learner owns its action spec: the env's Box discretised into agent.bins per dimension
        self._spec = ActionSpec.discretise(box.low, box.high, config.bins_per_dim(box.dim))
        self.num_dims, self.max_bins = self._spec.dim, self._spec.max_bins
        self.critic = DecoupledQEnsemble(setup.obs_dim, self.num_dims, self.max_bins, config.ensemble_size,
                                         config.hidden, arch=config.arch, shared_layer_norm=config.shared_layer_norm)
        self.critic_target = copy.deepcopy(self.critic)
        set_requires_grad(self.critic_target, False)
        # (N, n_max): 0 on valid bins, -inf on the padding of dimensions with fewer bins
        self.register_buffer("mask", torch.where(self._spec.valid_mask(), 0.0, float("-inf")), persistent=False)
        self.optimizers = {"critic": adam(self.critic.parameters(), config.lr)}
        self.target_utilities = "target_utilities" in self.needs
        self._epsilon: Tensor | None = None  # float64 scalar on the device, created on first use

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    # -- exploration state ------------------------------------------------------------------------
    @property
    def epsilon(self) -> Tensor:
        if self._epsilon is None or self._epsilon.device != self.mask.device:
            value = self.config.epsilon if self._epsilon is None else self._epsilon
            self._epsilon = torch.as_tensor(value, dtype=torch.float64).to(self.mask.device)
        return self._epsilon

    def extra_state(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon.detach().to("cpu", copy=True)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "epsilon" in state:
            self._epsilon = torch.as_tensor(state["epsilon"], dtype=torch.float64).to(self.mask.device)

    # -- acting -------------------------------------------------------------------------------------
    def utilities(self, obs: Tensor, target: bool = False) -> Tensor:
        """Masked utilities ``(K, B, N, n_max)`` of the online (or target) critic."""
        net = self.critic_target if target else self.critic
        return net(obs) + self.mask

    def greedy_utilities(self, obs: Tensor) -> Tensor:
        """The utilities the greedy action maximises, ``(B, N, n_max)``: the members' elementwise max (DecQN)
        or mean (REValueD); differentiable w.r.t. ``obs``."""
        u = self.utilities(obs)
        return u.max(dim=0).values if self.config.greedy_reduce == "max" else u.mean(dim=0)

    def greedy(self, obs: Tensor) -> Tensor:
        """Greedy bins ``(B, N)`` (the evaluation action)."""
        return self.greedy_utilities(obs).argmax(dim=-1)

    def q_values(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``Q_k(s, a) = mean_i U_{k,i}(s, a_i)``, shape ``(K, B)`` (differentiable w.r.t. ``obs``)."""
        return selected_utilities(self.utilities(obs), actions).mean(dim=-1)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        single = obs.dim() == 1
        x = obs.unsqueeze(0) if single else obs
        if deterministic:
            action = self.greedy(x)
            return action[0] if single else action
        cfg = self.config
        b = x.shape[0]
        u = self.utilities(x)
        if cfg.explore_member == "random":
            member = torch.randint(0, u.shape[0], (), generator=generator, device=u.device)
            u = u[member]
        else:
            u = u.max(dim=0).values if cfg.greedy_reduce == "max" else u.mean(dim=0)
        greedy = u.argmax(dim=-1)  # (B, N)
        rand = self._spec.uniform((b,), generator, x.device)
        eps = self.epsilon
        draw = torch.rand(b, 1 if cfg.epsilon_mode == "joint" else self.num_dims, generator=generator,
                          device=x.device, dtype=torch.float64)
        if cfg.epsilon_mode == "joint":
            explore = draw < eps  # (B, 1)
        else:
            n = float(self.num_dims)
            explore = draw < (eps / n) / (eps / n + 1.0 - eps)  # (B, N)
        action = torch.where(explore, rand, greedy)
        if cfg.epsilon_decay < 1.0:
            count = explore.any(dim=-1).sum()  # random actions taken (per_dim: any dimension random)
            decay = torch.tensor(cfg.epsilon_decay, dtype=torch.float64, device=x.device).pow(count)
            self._epsilon = torch.clamp(eps * decay, min=cfg.epsilon_min)
        return action[0] if single else action

    # -- learning -----------------------------------------------------------------------------------
    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator, metrics: dict[str, Tensor]):
        cfg = self.config
        with torch.no_grad():
            target_next = self.utilities(batch.next_observations, target=True)
            online_next = self.utilities(batch.next_observations) if cfg.target in ("double_mean", "decqn") else None
            subset = None
            if cfg.target == "redq":
                subset = torch.randperm(cfg.ensemble_size, generator=generator, device=self.mask.device)[: cfg.redq_subset]
            target = batch.rewards + batch.discounts * next_values(cfg.target, target_next, online_next, subset)
        chosen = selected_utilities(self.utilities(batch.observations), batch.actions)  # (K, B, N)
        q = chosen.mean(dim=-1)
        loss = td_loss(q, target, cfg.huber_delta, cfg.member_loss)
        metrics["critic/loss"] = loss.detach()
        metrics["critic/q_mean"] = q.detach().mean()
        metrics["explore/epsilon"] = self.epsilon.detach().float()
        extras = {"utilities": chosen}
        if self.target_utilities:
            with torch.no_grad():
                extras["target_utilities"] = selected_utilities(self.utilities(batch.observations, target=True),
                                                                batch.actions)
        return loss, CriticContext(q=q, target=target, step=step, extras=extras)

    def critic_step(self, loss: Tensor, metrics: dict[str, Tensor]) -> None:
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.grad_clip, foreach=True)
            metrics["critic/grad_norm"] = norm.detach()
        opt.step()

    def end_update(self, step: int, metrics: dict[str, Tensor]) -> None:
        cfg = self.config
        if cfg.target_update == "polyak":
            polyak_update_(self.critic_target.parameters(), self.critic.parameters(), cfg.tau)
        elif (step - 1) % cfg.target_update_period == 0:  # DecQN copies after updates 1, 1 + P, 1 + 2P, ...
            hard_update_(self.critic_target.parameters(), self.critic.parameters())
