"""K seeds of one agent trained in one process: the K copies' parameters stacked along a leading dimension and
every update evaluated once for all of them with ``torch.func.vmap`` (the same idea as the batched ensemble
layers of :mod:`rlreg.nets.layers`, one level up: K independent agents instead of E critics).

Each copy keeps everything a separate run has: its own initialisation (the learner built after seeding with
its seed, exactly as ``rlreg.train`` builds it), its own ``torch.Generator`` (its batches and its target noise,
drawn in the same order as a single run draws them), its own optimizer state (Adam on the stacked tensors is
element-wise, so it is K independent Adams) and its own metrics (``(K,)`` tensors). ``write_back`` copies the
stacked state into the K learner objects, so evaluation, checkpoints and run directories can use them as K
ordinary runs.

Supported: the TD3 learner (TD3+BC, TD3, DDPG settings) with regularizers that only add loss terms computed
from the batch and the learner's outputs (``bc``), and the SAC learner with ``update_order=sequential``, no
critic dropout, no policy prior and no regularizers (SAC, SAC-N). A regularizer with its own networks,
optimizers or search structure (SPOT, PRDC, A2PR, BEER, EDAC's diversity term, RORL), DroQ and
DemoReg-SAC are not supported yet: :func:`check_supported` says so.

Equivalence: copy k after n updates equals the single run with seed k up to float32 rounding, not bit for bit:
under ``vmap`` the per-copy matrix products run as one batched product (``bmm``) whose kernel may sum in another
order than the single run's ``addmm``; ``tests/test_seeds.py`` states the tolerance.

The losses below restate the learners' ``critic_loss``/``actor_loss`` as functions of (parameters, batch,
noise): the learners draw their noise from a generator inside those methods, which ``vmap`` cannot batch per
copy. ``tests/test_seeds.py`` compares the two every step, so a change to a learner that is not mirrored here
fails there.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch, OfflineBuffer
from rlreg.learners.base import adam
from rlreg.learners.sac import SACLearner
from rlreg.learners.td3 import TD3Learner
from rlreg.nets import polyak_update_
from rlreg.regularizers.base import ActorContext, CriticContext

NETS = ("actor", "critic", "actor_target", "critic_target")  # TD3 family; SAC family: no actor_target
# loss terms only, from the batch and the learner's outputs (not the step: the contexts get step 0, so that a
# compiled update is not specialised on it): safe to evaluate under vmap
STATELESS_REGULARIZERS = ("bc",)


def check_supported_config(learner: str, config: Any, regularizers: Sequence[str]) -> None:
    """Raise a :class:`~rlreg.config.ConfigError` naming the option when the stacked update cannot train the
    learner ``learner`` (its registered name) with ``config`` and these regularizers. Checked from the run's
    config before anything is written (:func:`rlreg.trainers.seeds.seed_runs`)."""
    what = "seeds=[...] / compile=true (the stacked update)"
    if learner == "sac":
        if config.update_order != "sequential" or config.critic_dropout > 0:
            raise ConfigError(f"{what} supports SAC with agent.update_order=sequential and agent.critic_dropout=0 "
                              f"(sac, sacn), got update_order={config.update_order}, "
                              f"critic_dropout={config.critic_dropout}")
        if regularizers:
            raise ConfigError(f"{what}: regularizer {regularizers[0]!r} is not supported with SAC-family agents")
        return
    if learner != "td3":
        raise ConfigError(f"{what} supports TD3-family (td3, td3bc) and SAC-family (sac, sacn) agents, not "
                          f"agent.learner={learner}")
    if config.actor_dropout > 0:
        raise ConfigError(f"{what} does not support agent.actor_dropout > 0 (got {config.actor_dropout})")
    for name in regularizers:
        if name not in STATELESS_REGULARIZERS:
            raise ConfigError(f"{what}: regularizer {name!r} is not supported (supported: "
                              f"{', '.join(STATELESS_REGULARIZERS)})")


def check_supported(learner: nn.Module) -> None:
    """:func:`check_supported_config` for a built learner (a :class:`SeedStack` made outside a run); an unknown
    learner is refused before its config is read."""
    check_supported_config(getattr(type(learner), "name", type(learner).__name__), getattr(learner, "config", None),
                           [reg.name for reg in getattr(learner, "regularizers", ())])


def _base(module: nn.Module) -> nn.Module:
    """A parameter-free copy of ``module`` (meta tensors) to call with stacked parameters."""
    return copy.deepcopy(module).to("meta")


class SeedStack:
    """K copies of one TD3-family learner, updated together. ``learners[k]`` must be built exactly as the single
    run with seed ``seeds[k]`` builds it (same config); they are left untouched until :meth:`write_back`."""

    def __init__(
        self, learners: Sequence[TD3Learner | SACLearner], compile: bool = False, fullgraph: bool = True
    ) -> None:
        """``compile``: ``torch.compile`` the vmapped critic and actor losses (forward and backward; no graph
        breaks: the target noise is drawn outside them). The eager path is the oracle (tests/test_seeds.py).
        ``fullgraph=False`` lets a graph break pass instead of raising (``scripts/graph_breaks.py`` counts them)."""
        if not learners:
            raise ValueError("seeds: need at least one learner")
        for learner in learners:
            check_supported(learner)
        first = learners[0]
        if any(learner.config != first.config for learner in learners):
            raise ValueError("seeds: the K copies must share one agent configuration")
        self.learners = list(learners)
        self.k = len(learners)
        self.config = first.config
        self.max_action = first.max_action
        self.target_entropy = getattr(first, "target_entropy", 0.0)
        self.regularizers = first.regularizers  # stateless: the template's objects serve every copy
        self.sac = isinstance(first, SACLearner)
        self.nets = tuple(n for n in NETS if not (self.sac and n == "actor_target"))
        self.bases = {name: _base(getattr(first, name)) for name in self.nets}
        self.params: dict[str, dict[str, Tensor]] = {}
        self.buffers: dict[str, dict[str, Tensor]] = {}
        for name in self.nets:
            params, buffers = stack_module_state([getattr(learner, name) for learner in learners])
            for p in params.values():
                p.requires_grad_(not name.endswith("_target"))
            self.params[name], self.buffers[name] = params, buffers
        self.optimizers = {
            "actor": adam(list(self.params["actor"].values()), self.config.actor_lr),
            "critic": adam(list(self.params["critic"].values()), self.config.critic_lr),
        }
        if self.sac:  # the temperatures, one per copy
            self.params["alpha"] = {"log_alpha": torch.stack([ln.log_alpha.detach() for ln in learners]).requires_grad_()}
            if "alpha" in first.optimizers:
                self.optimizers["alpha"] = adam([self.params["alpha"]["log_alpha"]], self.config.alpha_lr)
        for opt_name, stacked in self.optimizers.items():  # resumed learners: their Adam moments, stacked
            self._read_optimizer(stacked, opt_name)
        if self.sac:
            self._critic_losses = vmap(self._sac_critic_loss, in_dims=(0, 0, 0, 0, 0, 0))
            self._actor_losses = vmap(self._sac_actor_loss, in_dims=(0, 0, 0, 0, 0))
        else:
            self._critic_losses = vmap(self._critic_loss, in_dims=(0, 0, 0, 0, 0, None))
            self._actor_losses = vmap(self._actor_loss, in_dims=(0, 0, 0, None))
        if compile:
            self._critic_losses = torch.compile(self._critic_losses, fullgraph=fullgraph, dynamic=False)
            self._actor_losses = torch.compile(self._actor_losses, fullgraph=fullgraph, dynamic=False)
        self.buffers_one = {name: {k: v[0] for k, v in b.items()} for name, b in self.buffers.items()}
        online, target = (("critic",), ("critic_target",)) if self.sac else (("actor", "critic"),
                                                                              ("actor_target", "critic_target"))
        self._online = [v for n in online for v in self.params[n].values()]
        self._target = [v for n in target for v in self.params[n].values()]

    # -- data --------------------------------------------------------------------------------------
    @staticmethod
    def sample(buffer: OfflineBuffer, batch_size: int, generators: Sequence[torch.Generator]) -> Batch:
        """One batch per copy, each drawn from its own generator as ``buffer.sample`` draws it; ``(K, B, ...)``."""
        idx = torch.stack([torch.randint(0, buffer.size, (batch_size,), device=buffer.device, generator=g)
                           for g in generators])
        return Batch(buffer.observations[idx], buffer.actions[idx], buffer.rewards[idx],
                     buffer.next_observations[idx], buffer.not_done[idx], buffer.discounts[idx])

    # -- one copy's losses (called under vmap) -----------------------------------------------------
    def _call(self, name: str, params: dict[str, Tensor], *args: object, **kwargs: object) -> Tensor:
        return functional_call(self.bases[name], (params, self.buffers_one[name]), args, kwargs)

    def _critic_loss(self, critic: dict[str, Tensor], actor_t: dict[str, Tensor], critic_t: dict[str, Tensor],
                     batch: Batch, noise: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, m = self.config, self.max_action
        next_action = self._call("actor_target", actor_t, batch.next_observations)
        if cfg.target_noise > 0:
            noise = (noise * (cfg.target_noise * m)).clamp(-cfg.noise_clip * m, cfg.noise_clip * m)
            next_action = (next_action + noise).clamp(-m, m)
        next_q = self._call("critic_target", critic_t, batch.next_observations, next_action)
        target = (batch.rewards + batch.discounts * next_q.min(dim=0).values).detach()
        q = self._call("critic", critic, batch.observations, batch.actions)
        loss = (q - target).pow(2).mean(dim=1).sum()
        metrics = {"critic/loss": loss.detach(), "critic/q_mean": q.detach().mean()}
        ctx = CriticContext(q=q, target=target, step=step, next_action=next_action.detach())
        total = loss
        for reg in self.regularizers:
            for key, value in reg.critic_terms(batch, ctx).items():
                metrics[f"{reg.name}/{key}"] = value.detach()
                total = total + value
        return total, metrics

    def _actor_loss(self, actor: dict[str, Tensor], critic: dict[str, Tensor], batch: Batch,
                    step: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        pi = self._call("actor", actor, batch.observations)
        q_pi = self._call("critic", critic, batch.observations, pi, members=0)[0]
        if cfg.q_norm_alpha is not None:
            actor_q = -(cfg.q_norm_alpha / q_pi.abs().mean().detach()) * q_pi.mean()
        else:
            actor_q = -q_pi.mean()
        metrics = {"actor/q_term": actor_q.detach()}
        total = actor_q
        for reg in self.regularizers:
            for key, value in reg.actor_terms(batch, ActorContext(pi, q_pi, step)).items():
                metrics[f"{reg.name}/{key}"] = value.detach()
                total = total + value
        metrics["actor/loss"] = total.detach()
        return total, metrics

    # -- SAC family (SACLearner, update_order=sequential) ------------------------------------------
    def _sample(self, actor: dict[str, Tensor], obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        action, log_prob = self._call("actor", actor, obs, noise=noise)
        return action, log_prob

    def _sac_actor_loss(self, actor: dict[str, Tensor], critic: dict[str, Tensor], alpha: Tensor, batch: Batch,
                        noise: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        action, log_prob = self._sample(actor, batch.observations, noise)
        q = self._call("critic", critic, batch.observations, action)
        q = q.min(dim=0).values if self.config.actor_q_reduce == "min" else q.mean(dim=0)
        loss = (alpha * log_prob - q).mean()
        return loss, {"actor/entropy": -log_prob.detach().mean(), "actor/loss": loss.detach()}, log_prob.detach()

    def _sac_critic_loss(self, critic: dict[str, Tensor], actor: dict[str, Tensor], critic_t: dict[str, Tensor],
                         alpha: Tensor, batch: Batch, noise: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        next_action, next_log_prob = self._sample(actor, batch.next_observations, noise)
        next_q = self._call("critic_target", critic_t, batch.next_observations, next_action).min(dim=0).values
        target = (batch.rewards + batch.discounts * (next_q - alpha * next_log_prob)).detach()
        q = self._call("critic", critic, batch.observations, batch.actions)
        loss = (q - target).pow(2).mean(dim=1).sum()
        return loss, {"critic/loss": loss.detach(), "critic/q_mean": q.detach().mean()}

    def _noise(self, batch: Batch, generators: Sequence[torch.Generator]) -> Tensor:
        """One ``(B, A)`` standard normal draw per copy from its own generator (as the single run draws it)."""
        b, a = batch.actions.shape[1], batch.actions.shape[2]
        return torch.stack([torch.randn((b, a), generator=g, dtype=batch.actions.dtype, device=batch.actions.device)
                            for g in generators])

    def _step(self, name: str, losses: Tensor) -> None:
        params = list(self.params[name].values())
        grads = torch.autograd.grad(losses.sum(), params)
        for param, grad in zip(params, grads):
            param.grad = grad.contiguous()  # fused Adam reads the gradient with the parameter's strides
        self.optimizers[name].step()
        for param in params:
            param.grad = None

    def _update_sac(self, batch: Batch, step: int, generators: Sequence[torch.Generator]) -> dict[str, Tensor]:
        """As SACLearner.update (update_order=sequential): critic, then actor and temperature (on the actor's own
        sample), Polyak; one noise draw per sample, in the single run's order."""
        p = self.params
        log_alpha = p["alpha"]["log_alpha"]
        alpha = log_alpha.detach().exp()
        actor = {k: v.detach() for k, v in p["actor"].items()}
        critic_t = {k: v.detach() for k, v in p["critic_target"].items()}
        losses, metrics = self._critic_losses(p["critic"], actor, critic_t, alpha, batch, self._noise(batch, generators))
        self._step("critic", losses)
        if step % self.config.policy_freq == 0:
            critic = {k: v.detach() for k, v in p["critic"].items()}
            losses, actor_metrics, log_prob = self._actor_losses(p["actor"], critic, alpha, batch,
                                                                 self._noise(batch, generators))
            self._step("actor", losses)
            metrics.update(actor_metrics)
            if "alpha" in self.optimizers:  # -mean(log_alpha * (log pi + H)) per copy
                self._step("alpha", -(log_alpha.unsqueeze(1) * (log_prob + self.target_entropy)).mean(dim=1))
        metrics["alpha"] = log_alpha.detach().exp()
        polyak_update_(self._target, self._online, self.config.tau)
        return metrics

    # -- the update --------------------------------------------------------------------------------
    def update(self, batch: Batch, step: int, generators: Sequence[torch.Generator]) -> dict[str, Tensor]:
        """One update of every copy on its own batch (``(K, B, ...)``, from :meth:`sample`); metrics ``(K,)``."""
        cfg = self.config
        if len(generators) != self.k:
            raise ValueError(f"seeds: {self.k} copies need {self.k} generators, got {len(generators)}")
        if self.sac:
            return self._update_sac(batch, step, generators)
        p = self.params
        act_dim = batch.actions.shape[-1]
        noise = torch.stack([torch.randn((batch.actions.shape[1], act_dim), device=batch.actions.device,
                                         generator=g) for g in generators]) if cfg.target_noise > 0 else \
            torch.zeros(self.k, batch.actions.shape[1], act_dim, device=batch.actions.device)
        frozen = {n: {k: v.detach() for k, v in p[n].items()} for n in ("actor_target", "critic_target")}
        losses, metrics = self._critic_losses(p["critic"], frozen["actor_target"], frozen["critic_target"], batch,
                                              noise, 0)
        critic_params = list(p["critic"].values())
        grads = torch.autograd.grad(losses.sum(), critic_params)
        for param, grad in zip(critic_params, grads):
            param.grad = grad.contiguous()  # fused Adam reads the gradient with the parameter's strides
        self.optimizers["critic"].step()
        for param in critic_params:
            param.grad = None
        if step % cfg.policy_freq == 0:
            critic = {k: v.detach() for k, v in p["critic"].items()}  # no critic weight gradients in the actor step
            losses, actor_metrics = self._actor_losses(p["actor"], critic, batch, 0)
            actor_params = list(p["actor"].values())
            grads = torch.autograd.grad(losses.sum(), actor_params)
            for param, grad in zip(actor_params, grads):
                param.grad = grad.contiguous()  # fused Adam reads the gradient with the parameter's strides
            self.optimizers["actor"].step()
            for param in actor_params:
                param.grad = None
            metrics.update(actor_metrics)
            polyak_update_(self._target, self._online, cfg.tau)
        return metrics

    # -- back to K ordinary learners ---------------------------------------------------------------
    def write_back(self) -> None:
        """Copy copy k's networks and optimizer state into ``learners[k]`` (for evaluation and checkpoints)."""
        with torch.no_grad():
            for k, learner in enumerate(self.learners):
                if self.sac:
                    learner.log_alpha.copy_(self.params["alpha"]["log_alpha"][k])
                for name in self.nets:
                    module = getattr(learner, name)
                    for key, value in module.named_parameters():
                        value.copy_(self.params[name][key][k])
                    for key, value in module.named_buffers():
                        value.copy_(self.buffers[name][key][k])
                for opt_name, stacked in self.optimizers.items():
                    self._write_optimizer(stacked, learner.optimizers[opt_name], opt_name, k)

    def _single_params(self, learner: nn.Module, name: str) -> list[Tensor]:
        return [learner.log_alpha] if name == "alpha" else list(getattr(learner, name).parameters())

    def _read_optimizer(self, stacked: torch.optim.Optimizer, name: str) -> None:
        singles = [learner.optimizers[name] for learner in self.learners]
        nets = [self._single_params(learner, name) for learner in self.learners]
        for j, sp in enumerate(self.params[name].values()):
            states = [opt.state.get(params[j]) for opt, params in zip(singles, nets)]
            if all(st is None or not st for st in states):
                continue
            if any(st is None or not st for st in states):
                raise ValueError("seeds: some copies have optimizer state and some do not (runs at different steps?)")
            stacked.state[sp] = {key: (torch.stack([st[key] for st in states]) if key != "step"
                                       else states[0][key].clone()) for key in states[0]}

    def _write_optimizer(self, stacked: torch.optim.Optimizer, single: torch.optim.Optimizer, name: str,
                         k: int) -> None:
        by_param = dict(zip(self.params[name].values(), self._single_params(self.learners[k], name)))
        for sp, state in stacked.state.items():
            target = by_param[sp]
            single.state[target] = {key: (v[k].clone() if key != "step" else v.clone()) for key, v in state.items()}
