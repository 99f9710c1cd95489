"""A2PR: Adaptive Advantage-Guided Policy Regularization (Liu et al., ICML 2024; ltlhuuu/A2PR @ f92a2a4;
docs/agents/a2pr.md).

TD3+BC whose behaviour-cloning target is chosen per sample by advantage. A state-value net ``V`` and a
conditional VAE (the "augmented behaviour policy", trained from scratch alongside the RL losses) are updated
right after the learner's critic step; the actor term uses ``v = V(s)`` from *before* the value step
(docs/agents/a2pr.md):

    2. value:  y_cur = r + gamma (1 - d) min_i Q_i(s', a')      (just-updated critic, the critic's own a')
               L_V   = mean_B (V(s) - min(y_cur, y_tgt))^2
    3. VAE:    g = 1[Q1(s, a) > v]
               L_VAE = mean_{B,dims}(vae_weight * g * (Dec(s, z) - a)^2) + 0.5 * mean_{B,latent} KL_elem
    4. actor:  a_gen = Dec(s, z), z ~ Enc(s, pi(s))              (differentiable in pi(s))
               A_data = Q1(s, a) - v,   A_gen = Q1(s, a_gen) - v
               a*  = a_gen if A_gen >= A_data else a
               w   = mask * 1[Q1(s, a_gen) >= v  or  Q1(s, a) > v]
               L_BC = mean_{B,dims} w * (pi(s) - a*)^2

The weight is ``mask`` or 0, never ``2 mask``: the official actor step (ltlhuuu/A2PR @ f92a2a4, A2PR.py lines
182-184) multiplies ``mask`` by the sum of two *bool* tensors, and PyTorch's bool + bool is a logical OR.

The Q term ``-alpha / mean|Q1(s, pi(s))| * mean Q1(s, pi(s))`` is the TD3 learner's ``q_norm_alpha`` (alpha),
and the per-dataset discount is ``agent.gamma``. Step 1 (critic) and the Polyak updates are the learner's.

Deviations from the official code (and why), none of which changes an update:

* ``Q1(s, a)`` is evaluated once after the critic step and reused by the VAE gate and the actor step (the
  official code evaluates it twice with the same critic parameters); ``Q1(s, a_gen)`` and ``Q1(s, a)`` in the
  actor step are computed without autograd (they only enter comparisons).
* The actor step builds no graph for VAE weights (``requires_grad`` is switched off around that forward), and
  the unused ``V(s')`` forward of the official code is dropped (docs/speed.md).
* Dead code is not ported: ``Value.loss`` (expectile), ``compute_advantage``, ``add_data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlreg.data.buffers import Batch
from rlreg.learners.base import adam
from rlreg.nets import ConditionalVAE, mlp
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, CriticContext, Regularizer, SetupContext


@dataclass
class A2PRConfig:
    mask: float = 0.5  # weight of the gated BC term (official CLI default; per dataset in conf/tuned/a2pr/)
    vae_weight: float = 1.0  # weight of the gated VAE reconstruction
    vae_kl_weight: float = 0.5
    vae_lr: float = 1e-3  # official: torch.optim.Adam default lr
    value_lr: float = 3e-4
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    vae_hidden: tuple[int, ...] = (750, 750)
    latent_dim: int | None = None  # None: 2 |A|


def _check(config: A2PRConfig) -> None:
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"regularizer.a2pr.{key}={getattr(config, key)!r}: {why}")

    for key in ("mask", "vae_weight", "vae_kl_weight"):
        if getattr(config, key) < 0:
            raise bad(key, "must be >= 0")
    for key in ("vae_lr", "value_lr"):
        if not getattr(config, key) > 0:
            raise bad(key, "must be > 0")
    for key in ("value_hidden", "vae_hidden"):
        widths = getattr(config, key)
        if not widths or min(widths) < 1:
            raise bad(key, "needs at least one positive layer width")
    if config.latent_dim is not None and config.latent_dim < 1:
        raise bad("latent_dim", "must be >= 1 (or null for 2 |A|)")


def bc_target_and_weight(
    q_data: Tensor, q_gen: Tensor, v: Tensor, data_actions: Tensor, gen_actions: Tensor, mask: float
) -> tuple[Tensor, Tensor]:
    """Per-sample BC target ``a*`` ``(B, A)`` and weight ``w`` ``(B,)`` of the actor step (ties: ``>=`` picks
    the generated action, the dataset action's gate is strict). Gradients flow through ``gen_actions``.

    ``w = mask`` where either gate holds and 0 elsewhere (the official bool-OR, see the module docstring)."""
    use_gen = (q_gen - v) >= (q_data - v)
    target = torch.where(use_gen.unsqueeze(-1), gen_actions, data_actions)
    weight = mask * torch.logical_or(q_gen >= v, q_data > v).to(q_gen.dtype)
    return target, weight


@register("a2pr", A2PRConfig, families=("td3",))
class A2PRRegularizer(Regularizer):

    def __init__(self, config: A2PRConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        self._v: Tensor | None = None  # V(s) before this step's value update
        self._q_data: Tensor | None = None  # Q1(s, a) after this step's critic update

    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        cfg = self.config
        self.critic = learner.critic
        self.value = mlp(ctx.obs_dim, cfg.value_hidden, 1)
        self.vae = ConditionalVAE(ctx.obs_dim, ctx.act_dim, latent_dim=cfg.latent_dim, hidden=cfg.vae_hidden,
                                  max_action=ctx.max_action)
        self.modules["value"] = self.value
        self.modules["vae"] = self.vae
        self.optimizers["value"] = adam(self.value.parameters(), cfg.value_lr)
        self.optimizers["vae"] = adam(self.vae.parameters(), cfg.vae_lr)

    @staticmethod
    def _step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def after_critic_step(self, batch: Batch, ctx: CriticContext) -> dict[str, Tensor]:
        if ctx.next_action is None:
            raise ValueError("regularizer a2pr needs CriticContext.next_action (the TD target's a') from the learner")
        cfg = self.config
        obs, actions = batch.observations, batch.actions
        with torch.no_grad():
            q_next = self.critic(batch.next_observations, ctx.next_action).min(dim=0).values  # updated critic
            y_cur = batch.rewards + batch.discounts * q_next
            value_target = torch.minimum(y_cur, ctx.target)
            q_data = self.critic(obs, actions, members=0)[0]
        # 2. value
        v = self.value(obs).squeeze(-1)
        value_loss = (v - value_target).square().mean()
        self._step(self.optimizers["value"], value_loss)
        v = v.detach()
        # 3. VAE on dataset actions with positive advantage (the KL term is not gated)
        gate = (q_data > v).to(v.dtype)
        rec, kl = self.vae.elbo_terms(obs, actions)
        recon = (cfg.vae_weight * gate * rec).mean()
        kl_mean = kl.mean()
        vae_loss = recon + cfg.vae_kl_weight * kl_mean
        self._step(self.optimizers["vae"], vae_loss)
        self._v, self._q_data = v, q_data
        return {"value_loss": value_loss.detach(), "vae_loss": vae_loss.detach(), "vae_recon": recon.detach(),
                "vae_kl": kl_mean.detach(), "gate": gate.mean(), "v_mean": v.mean()}

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        if self._v is None or self._q_data is None:
            raise RuntimeError("regularizer a2pr: actor_terms called before after_critic_step in the same update")
        pi = ctx.actions
        self.vae.requires_grad_(False)  # gradient to pi(s) only, none to the VAE weights
        try:
            gen, _, _ = self.vae(batch.observations, pi)
        finally:
            self.vae.requires_grad_(True)
        with torch.no_grad():
            q_gen = self.critic(batch.observations, gen, members=0)[0]
        target, weight = bc_target_and_weight(self._q_data, q_gen, self._v, batch.actions, gen, self.config.mask)
        return {"bc": (weight.unsqueeze(-1) * (pi - target).square()).mean()}
