"""RORL: robust offline RL via conservative smoothing (Yang et al., NeurIPS 2022; docs/agents/rorl.md).

Three regularizers on a SAC-N learner (``conf/agent/rorl.yaml``: N = 10, simultaneous update order), each
registered on its own so they can be stacked or ablated (``regularizer=[rorl_policy,rorl_ood]``):

* ``rorl_policy`` (6.4 step 2), added to the actor loss:
      L_P  = mean_b max_j [ KL(N_b || N_hat_bj) + KL(N_hat_bj || N_b) ]          (pre-tanh Gaussians)
* ``rorl_q`` (6.4 step 3, post-publication fix 5e8fda9), added to the critic loss:
      diff_ibj = Q_i(s_hat_bj, a_b) - Q_i(s_b, a_b)
      L_Qs = mean_b max_j mean_i [ (1 - tau) max(diff, 0)^2 + tau min(diff, 0)^2 ]
* ``rorl_ood`` (6.4 step 3 and 4), added to the critic loss:
      a_hat ~ pi(.|s_hat),  t_i = sg[ Q_i(s_hat, a_hat) - lambda_t std_k Q_k(s_hat, a_hat) ]
      L_ood = mean_{i,b,j} (Q_i(s_hat, a_hat) - t_i)^2,   lambda_t = max(lambda_0 - (t - 1) decay, lambda_min)

each multiplied by its ``weight`` (beta_P, beta_Q, beta_ood). ``s_hat`` comes from the shared
:class:`PerturbationSampler`: ``Perturb(s, eps, n)`` draws ``n`` offsets ``delta_j ~ U[-eps, eps]^|S|`` in
normalised units (``eps * sd_D`` in raw units, 6.3), the same ``n`` offsets for every state of the batch,
fresh for every term and step. All ``B * n`` perturbed states go through the actor or the critic ensemble
as one batched pass.

Input normalisation (``--norm_input``): ``(s - mu_D) / (sd_D + 1e-6)``, done once by the trainer
(``conf/agent/rorl.yaml``: ``dataset.normalize_states=true``, ``dataset.state_std_eps=1e-6``) like for every
agent, so the perturbation box is exactly ``eps`` wide in the networks' input units (``eps * sd_D`` in raw
units). With ``dataset.normalize_states=false`` the box is ``eps`` in raw units.

Deviations from YangRui2015/RORL @ c604043, none of which changes the update:

* ``max_j`` terms: the official code back-propagates through all ``B * n`` perturbed rows although only
  the arg-max row of each state receives gradient. Here the ``B * n`` rows are evaluated without a graph,
  the arg-max row of each state is selected and only those ``B`` rows are evaluated again with a graph.
  Value and gradient are the same (up to float rounding and ties); it saves about 60% of the Q-smoothing
  FLOPs (see ``scripts/bench_rorl.py``).
* For plain ReLU ensembles (RORL's) the two ``(N, B * n)`` critic passes (Q smoothing without graph, OOD
  with graph) run with activation and gradient buffers reused across steps (:class:`Workspace`, a small
  autograd function with the same maths as autograd through :class:`EnsembleMLP`): on CPU, fresh 52 MB
  tensors every step cost a third of the official code's CPU time in page faults.
* ``lambda_t`` is computed in closed form from the step counter instead of by repeated subtraction (exact
  resume; no accumulated rounding). ``lambda_min <= lambda_0`` is required.
* The perturbation offsets come from a generator owned by each regularizer (seeded from the run seed and
  the regularizer's name, checkpointed) instead of torch's global RNG.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlreg.config import ConfigError
from rlreg.data.buffers import Batch
from rlreg.nets import EnsembleMLP, TanhGaussianActor, gaussian_kl
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext

# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------


def _check(cond: bool, option: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"regularizer.{option}: {msg}")


@dataclass
class RORLPolicyConfig:
    """Policy smoothing (docs/agents/rorl.md); defaults: hopper-medium-v2 (the per-dataset table of docs/agents/rorl.md)."""

    eps: float = 0.005  # eps_P, normalised units
    weight: float = 0.1  # beta_P
    num_samples: int = 20  # n

    def __post_init__(self) -> None:
        _check(self.eps >= 0, "rorl_policy.eps", f"must be >= 0, got {self.eps}")
        _check(self.weight >= 0, "rorl_policy.weight", f"must be >= 0, got {self.weight}")
        _check(self.num_samples >= 1, "rorl_policy.num_samples", f"must be >= 1, got {self.num_samples}")


@dataclass
class RORLQConfig:
    """Asymmetric Q smoothing (docs/agents/rorl.md); defaults: hopper-medium-v2 (the per-dataset table of docs/agents/rorl.md)."""

    eps: float = 0.005  # eps_Q
    weight: float = 1e-4  # beta_Q
    tau: float = 0.2  # weight of decreases; increases get 1 - tau
    num_samples: int = 20

    def __post_init__(self) -> None:
        _check(self.eps >= 0, "rorl_q.eps", f"must be >= 0, got {self.eps}")
        _check(self.weight >= 0, "rorl_q.weight", f"must be >= 0, got {self.weight}")
        _check(0.0 <= self.tau <= 1.0, "rorl_q.tau", f"must be in [0, 1], got {self.tau}")
        _check(self.num_samples >= 1, "rorl_q.num_samples", f"must be >= 1, got {self.num_samples}")


@dataclass
class RORLOODConfig:
    """OOD pessimism on perturbed states (docs/agents/rorl.md); defaults: hopper-medium-v2."""

    eps: float = 0.01  # eps_ood (0: PBRL's OOD term on dataset states)
    weight: float = 0.5  # beta_ood
    num_samples: int = 20
    lambda_init: float = 2.0  # lam0 (q_ood_uncertainty_reg)
    lambda_min: float = 0.1  # floor
    lambda_decay: float = 1e-6  # per gradient step

    def __post_init__(self) -> None:
        _check(self.eps >= 0, "rorl_ood.eps", f"must be >= 0, got {self.eps}")
        _check(self.weight >= 0, "rorl_ood.weight", f"must be >= 0, got {self.weight}")
        _check(self.num_samples >= 1, "rorl_ood.num_samples", f"must be >= 1, got {self.num_samples}")
        _check(self.lambda_decay >= 0, "rorl_ood.lambda_decay", f"must be >= 0, got {self.lambda_decay}")
        _check(
            0.0 <= self.lambda_min <= self.lambda_init,
            "rorl_ood.lambda_min",
            f"need 0 <= lambda_min <= lambda_init, got lambda_min={self.lambda_min}, lambda_init={self.lambda_init}",
        )


# --------------------------------------------------------------------------------------------------
# the paper's quantities as functions of tensors
# --------------------------------------------------------------------------------------------------


def symmetric_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q) + KL(q || p)`` of diagonal Gaussians, summed over the last dim (broadcasts)."""
    return gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) + gaussian_kl(mean_q, log_std_q, mean_p, log_std_p)


def policy_smoothing_loss(mean: Tensor, log_std: Tensor, mean_hat: Tensor, log_std_hat: Tensor) -> Tensor:
    """``L_P``: ``mean``/``log_std`` ``(B, A)`` at clean states, ``*_hat`` ``(B, n, A)`` at perturbed ones."""
    kl = symmetric_kl(mean.unsqueeze(1), log_std.unsqueeze(1), mean_hat, log_std_hat)  # (B, n)
    return kl.max(dim=1).values.mean()


def asymmetric_sq(diff: Tensor, tau: float) -> Tensor:
    """``(1 - tau) max(diff, 0)^2 + tau min(diff, 0)^2`` elementwise (Q increases cost ``(1 - tau) / tau`` more)."""
    return torch.where(diff > 0, 1.0 - tau, tau) * diff.square()


def q_smoothing_loss(q: Tensor, q_hat: Tensor, tau: float) -> Tensor:
    """``L_Qs``: ``q`` ``(E, B)`` = ``Q_i(s_b, a_b)``, ``q_hat`` ``(E, B, n)`` = ``Q_i(s_hat_bj, a_b)``."""
    per_sample = asymmetric_sq(q_hat - q.unsqueeze(-1), tau).mean(dim=0)  # (B, n): mean over members
    return per_sample.max(dim=1).values.mean()


def ood_loss(q_hat: Tensor, lam: float) -> Tensor:
    """``L_ood``: ``q_hat`` ``(E, R)`` = ``Q_i(s_hat, a_hat)``; pull of ``lam * std_k`` (unbiased) on every member."""
    target = (q_hat - lam * q_hat.std(dim=0)).detach()
    return (q_hat - target).square().mean()


def ood_lambda(step: int, init: float, minimum: float, decay: float) -> float:
    """``lambda_t`` used at (1-indexed) gradient step ``step``: ``max(init - (step - 1) decay, minimum)``;
    0 when ``init`` is 0 (the term is then off)."""
    if init <= 0.0:
        return 0.0
    return max(init - (step - 1) * decay, minimum)


# --------------------------------------------------------------------------------------------------
# the perturbation sampler and input normalisation
# --------------------------------------------------------------------------------------------------


class PerturbationSampler:
    """``Perturb(s, eps, n)`` of docs/agents/rorl.md: ``n`` offsets ``U[-eps, eps]^|S|`` in normalised units,
    shared by every state of the batch, returned as ``(B * n, |S|)`` raw states, row ``b * n + j`` =
    ``s_b + scale * delta_j``. ``scale``: the networks' input std (``sd_D + 1e-6``) or ones."""

    def __init__(self, scale: Tensor, generator: torch.Generator) -> None:
        self.scale = scale
        self.generator = generator

    def offsets(self, eps: float, n: int) -> Tensor:
        """``(n, |S|)`` offsets in normalised units, uniform in ``[-eps, eps]``."""
        u = torch.rand(n, self.scale.shape[0], generator=self.generator, device=self.scale.device)
        return u.mul_(2.0 * eps).sub_(eps)

    def perturb(self, obs: Tensor, eps: float, n: int) -> Tensor:
        delta = self.offsets(eps, n).mul_(self.scale)  # raw units
        return (obs.unsqueeze(1) + delta).reshape(obs.shape[0] * n, obs.shape[1])


# --------------------------------------------------------------------------------------------------
# the big ensemble passes with reused buffers (docs/agents/rorl.md; docs/speed.md: allocator churn)
# --------------------------------------------------------------------------------------------------


class Workspace:
    """Named buffers that persist across steps; a request larger than the stored buffer grows it.

    On CPU every fresh ``(E, B * n, 256)`` activation (52 MB at N = 10, B * n = 5120) is a new ``mmap`` whose
    pages fault in on first touch (glibc never serves blocks above 32 MB from its heap); reusing the
    buffers removes that kernel time (about a third of the official RORL's CPU time)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self.generation = 0  # bumped by every pass that keeps activations for a backward

    def get(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = int(np.prod(shape))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel or buf.device != like.device or buf.dtype != like.dtype:
            buf = self._buffers[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
        return buf[:numel].view(shape)


def plain_ensemble(critic: Any) -> bool:
    """True for an :class:`EnsembleCritic` whose members are plain ReLU MLPs (no LayerNorm, dropout or
    spectral norm): the ones the workspace passes below implement."""
    net = getattr(critic, "net", None)
    return (
        isinstance(net, EnsembleMLP)
        and net.norms is None
        and net.dropout == 0.0
        and net._relu
        and not any(lin.spectral_norm for lin in net.linears)
        and all(lin.bias is not None for lin in net.linears)
    )


def _critic_inputs(critic: Any, obs: Tensor, action: Tensor) -> Tensor:
    return torch.cat([critic.obs_normalizer(obs), action], dim=-1)


@torch.no_grad()
def ensemble_q_nograd(critic: Any, obs: Tensor, action: Tensor, ws: Workspace) -> Tensor:
    """``critic(obs, action)`` ``(E, R)`` without a graph, hidden activations in two reused buffers."""
    lins = critic.net.linears
    x = _critic_inputs(critic, obs, action)
    e, r = lins[0].weight.shape[0], x.shape[0]
    h = x.expand(e, r, x.shape[1])
    for i, lin in enumerate(lins):
        if i == len(lins) - 1:
            return torch.baddbmm(lin.bias, h, lin.weight).squeeze(-1)
        out = ws.get(f"h{i % 2}", (e, r, lin.out_features), x)
        h = torch.baddbmm(lin.bias, h, lin.weight, out=out).relu_()
    raise AssertionError("unreachable")


class _WorkspaceEnsembleMLP(torch.autograd.Function):
    """Forward and backward of a plain ReLU ensemble MLP on a shared 2-D input ``x`` (no gradient to
    ``x``), with the activations and their gradients in ``Workspace`` buffers. Same maths as autograd
    through :class:`EnsembleMLP` (``ReLU`` backward = ``threshold_backward`` on the output)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ws: Workspace, *params: Tensor) -> Tensor:  # type: ignore[override]
        weights, biases = params[0::2], params[1::2]
        e, r = weights[0].shape[0], x.shape[0]
        h = x.expand(e, r, x.shape[1])
        acts = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            if i == len(weights) - 1:
                h = torch.baddbmm(b, h, w)
            else:
                h = torch.baddbmm(b, h, w, out=ws.get(f"act{i}", (e, r, w.shape[2]), x)).relu_()
                acts.append(h)
        ws.generation += 1
        ctx.ws, ctx.generation, ctx.acts = ws, ws.generation, acts
        ctx.save_for_backward(x, *weights)
        return h

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, *weights = ctx.saved_tensors
        ws, acts = ctx.ws, ctx.acts
        if ws.generation != ctx.generation:
            raise RuntimeError("RORL workspace reused by another pass before this pass's backward")
        e, r = weights[0].shape[0], x.shape[0]
        g = grad.contiguous()
        grads: list[Tensor | None] = []
        for i in reversed(range(len(weights))):
            inp = acts[i - 1] if i > 0 else x.expand(e, r, x.shape[1])
            grads += [g.sum(dim=1, keepdim=True), torch.bmm(inp.transpose(1, 2), g)]  # d bias, d weight
            if i > 0:
                buf = ws.get(f"grad{i % 2}", (e, r, weights[i].shape[1]), x)
                g = torch.bmm(g, weights[i].transpose(1, 2), out=buf)
                torch.ops.aten.threshold_backward.grad_input(g, acts[i - 1], 0.0, grad_input=g)
        return (None, None, *reversed(grads))


def ensemble_q(critic: Any, obs: Tensor, action: Tensor, ws: Workspace) -> Tensor:
    """``critic(obs, action)`` ``(E, R)`` with a graph to the critic's parameters (not to the inputs)."""
    params = [p for lin in critic.net.linears for p in (lin.weight, lin.bias)]
    x = _critic_inputs(critic, obs, action).detach()
    return _WorkspaceEnsembleMLP.apply(x, ws, *params).squeeze(-1)


def _generator(ctx: SetupContext, name: str) -> torch.Generator:
    """A generator seeded from the run seed (``torch.initial_seed()``) and the regularizer's name."""
    seed = int(np.random.SeedSequence([torch.initial_seed(), zlib.crc32(name.encode())]).generate_state(1)[0])
    gen = torch.Generator(device=ctx.device)
    gen.manual_seed(seed)
    return gen


class _PerturbingRegularizer(Regularizer):
    """Shared wiring: networks, input normalisation, the sampler and its checkpointed generator."""

    def bind(self, learner: Any, ctx: SetupContext) -> None:
        super().bind(learner, ctx)
        self.device = ctx.device
        # the box is eps wide in the units of the states the learner trains on (normalised by the trainer for RORL)
        self.sampler = PerturbationSampler(torch.ones(ctx.obs_dim, device=ctx.device), _generator(ctx, self.name))
        self.workspace = Workspace()
        # the reused-buffer passes for plain ReLU ensembles; autograd through the module otherwise
        self.use_workspace = plain_ensemble(getattr(learner, "critic", None))

    def _need(self, learner: Any, attr: str, what: str) -> Any:
        net = getattr(learner, attr, None)
        if net is None:
            raise ValueError(f"regularizer={self.name} needs a learner with {what} (learner has no '{attr}')")
        return net

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.sampler.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.sampler.generator.set_state(state["generator"].cpu())


def _pick(rows: Tensor, index: Tensor, batch: int, n: int) -> Tensor:
    """Row ``index[b]`` of group ``b`` from ``rows`` ``(batch * n, D)``: ``(batch, D)``."""
    grouped = rows.view(batch, n, rows.shape[-1])
    return grouped.gather(1, index.view(batch, 1, 1).expand(batch, 1, rows.shape[-1])).squeeze(1)


# --------------------------------------------------------------------------------------------------
# the three regularizers
# --------------------------------------------------------------------------------------------------


@register("rorl_policy", RORLPolicyConfig, families=("sac",))
class RORLPolicySmoothing(_PerturbingRegularizer):
    """``weight * L_P`` on the actor loss (see module docstring)."""

    def __init__(self, config: RORLPolicyConfig) -> None:
        super().__init__()
        self.cfg = config

    def bind(self, learner: Any, ctx: SetupContext) -> None:
        super().bind(learner, ctx)
        self.actor = self._need(learner, "actor", "a Gaussian policy")
        if not isinstance(self.actor, TanhGaussianActor):
            raise ValueError("regularizer=rorl_policy needs a tanh-Gaussian policy (agent.learner=sac)")

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        cfg = self.cfg
        if cfg.eps <= 0 or cfg.weight <= 0:
            return {}
        s = batch.observations
        b, n = s.shape[0], cfg.num_samples
        s_hat = self.sampler.perturb(s, cfg.eps, n)
        with torch.no_grad():  # which perturbation is the worst for each state (B * n rows, no graph)
            mean, log_std = self.actor.dist_params(torch.cat([s, s_hat]))
            kl = symmetric_kl(
                mean[:b].unsqueeze(1), log_std[:b].unsqueeze(1),
                mean[b:].view(b, n, -1), log_std[b:].view(b, n, -1),
            )
            worst = kl.argmax(dim=1)
        # gradient through both sides, at the clean and the selected states only
        mean, log_std = self.actor.dist_params(torch.cat([s, _pick(s_hat, worst, b, n)]))
        loss = symmetric_kl(mean[:b], log_std[:b], mean[b:], log_std[b:]).mean()
        return {"loss": cfg.weight * loss}


@register("rorl_q", RORLQConfig, families=("sac",))
class RORLQSmoothing(_PerturbingRegularizer):
    """``weight * L_Qs`` on the critic loss (see module docstring)."""

    def __init__(self, config: RORLQConfig) -> None:
        super().__init__()
        self.cfg = config

    def bind(self, learner: Any, ctx: SetupContext) -> None:
        super().bind(learner, ctx)
        self.critic = self._need(learner, "critic", "a Q ensemble")

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        cfg = self.cfg
        if cfg.eps <= 0 or cfg.weight <= 0:
            return {}
        s, a = batch.observations, batch.actions
        b, n = s.shape[0], cfg.num_samples
        s_hat = self.sampler.perturb(s, cfg.eps, n)
        with torch.no_grad():  # (E, B * n) in one batched pass, no graph
            a_rep = a.unsqueeze(1).expand(b, n, a.shape[-1]).reshape(b * n, a.shape[-1])
            if self.use_workspace:
                q_hat = ensemble_q_nograd(self.critic, s_hat, a_rep, self.workspace)
            else:
                q_hat = self.critic(s_hat, a_rep)
            q_hat = q_hat.view(-1, b, n)
            per_sample = asymmetric_sq(q_hat - ctx.q.detach().unsqueeze(-1), cfg.tau).mean(dim=0)
            worst = per_sample.argmax(dim=1)
        q_sel = self.critic(_pick(s_hat, worst, b, n), a)  # (E, B), with graph
        loss = asymmetric_sq(q_sel - ctx.q, cfg.tau).mean()
        return {"loss": cfg.weight * loss}


@register("rorl_ood", RORLOODConfig, families=("sac",))
class RORLOODPessimism(_PerturbingRegularizer):
    """``weight * L_ood`` on the critic loss with the decaying ``lambda_t`` (see module docstring)."""

    def __init__(self, config: RORLOODConfig) -> None:
        super().__init__()
        self.cfg = config

    def bind(self, learner: Any, ctx: SetupContext) -> None:
        super().bind(learner, ctx)
        self.actor = self._need(learner, "actor", "a policy")
        self.critic = self._need(learner, "critic", "a Q ensemble")
        if getattr(self.critic, "num_members", 2) < 2:
            raise ValueError("regularizer=rorl_ood needs the ensemble std: agent.num_critics must be >= 2")

    def lam(self, step: int) -> float:
        c = self.cfg
        return ood_lambda(step, c.lambda_init, c.lambda_min, c.lambda_decay)

    def critic_terms(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        lam = self.lam(ctx.step)
        if self.cfg.weight <= 0 or lam <= 0:
            return {}
        s = batch.observations
        s_hat = self.sampler.perturb(s, self.cfg.eps, self.cfg.num_samples)
        with torch.no_grad():  # a_hat ~ pi(.|s_hat), no gradient to the policy
            if isinstance(self.actor, TanhGaussianActor):
                a_hat, _ = self.actor(s_hat, with_log_prob=False, generator=self.sampler.generator)
            else:
                a_hat = self.actor(s_hat)
        if self.use_workspace:  # (E, B * n), one batched pass
            q_hat = ensemble_q(self.critic, s_hat, a_hat, self.workspace)
        else:
            q_hat = self.critic(s_hat, a_hat)
        return {"loss": self.cfg.weight * ood_loss(q_hat, lam)}

    def after_critic_step(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        return {"lambda": torch.full((), self.lam(ctx.step), device=self.device)}
