"""Demonstration-regularized SAC ("DemoReg-SAC"): rlreg's practical design (docs/agents/demoreg.md) of
Demonstration-Regularized RL (Tiapkin et al., ICLR 2024). The paper is theory only (tabular / linear MDPs,
no experiments, no code); the deep-RL instantiation below is OUR design, labelled as such.

Phase 1, behaviour cloning (this regularizer's pre-training phase): a tanh-Gaussian prior pi_BC, the same
class and size as the actor, is fitted by maximum likelihood on the (s, a) pairs of N expert episodes,

    L_BC = - mean_{(s,a) in D_E} log pi_BC(a|s),    u = atanh(clip(a / max_action, -1 + 1e-6, 1 - 1e-6)),

with the support regularisation of 5.3: ``log sigma_BC >= log std_min`` (std floor in pre-tanh units, the
analogue of the paper's minimum-probability BC). Early stopping on the held-out NLL of ``holdout`` of the
demo transitions; the best prior is kept, frozen, and (``init_actor``) copied into the actor, so that the
warm-up (``trainer.warmup_policy=agent``) acts with pi_BC instead of uniform actions.

Phase 2, online SAC whose entropy bonus is replaced by the KL to pi_BC (the paper's regularised objective
``E[sum_h r_h - lambda KL(pi_h || pi_BC_h)]``, section 5.2). Both policies are tanh push-forwards of diagonal
Gaussians through the same bijection, so the KL equals the closed-form Gaussian KL (no Monte Carlo; 5.3):

    L_pi = mean_s [ lambda KL(N(mu, sigma^2) || N(mu_BC, sigma_BC^2)) - min_j Q_j(s, a~) ]
    y    = r + gamma (1 - d) [ min_j Q'_j(s', a') - lambda KL(pi(.|s') || pi_BC(.|s')) ]

(the SAC learner does this when a regularizer installs itself as ``learner.policy_prior``).
``mode="fixed"``: lambda constant (paper-faithful). ``mode="target"``: SPiRL's target-divergence rule
``L(log lambda) = lambda * (delta - KL).detach()`` with ``delta = target_kl`` (default ``0.5 |A|`` nats), so
lambda grows while the KL exceeds delta.

Demonstrations (docs/agents/demoreg.md): ``source="policy"`` rolls out ``num_episodes`` episodes of a
shipped or saved policy (``rlreg.policies.load_policy``; deterministic ``tanh(mean)`` unless
``stochastic_expert``) in ``env`` (default: the run's env), one env per episode with seeds
``collect_seed + i``; ``source="dataset"`` takes ``num_episodes`` episodes of any dataset the loaders read
(``dataset``; default the run's ``dataset`` config), the best ones by return (``select="best"``) or the first
ones. Only (s, a) is used. The demos are kept in the checkpoint, so a resumed run never re-collects them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rlreg.config import ConfigError, DatasetConfig, EnvConfig, check_choice, check_range
from rlreg.data.buffers import Batch
from rlreg.learners.base import adam
from rlreg.nets import TanhGaussianActor, gaussian_kl
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, Regularizer, SetupContext


@dataclass
class DemoRegConfig:
    lam: float = 0.1  # lambda (mode=fixed) or its initial value (mode=target)
    mode: str = "fixed"  # fixed | target
    target_kl: float | None = None  # delta (nats per state) for mode=target; None: 0.5 * |A|
    lam_lr: float = 3e-4
    std_min: float = 0.1  # std floor of pi_BC in pre-tanh units
    bc_steps: int = 50_000
    bc_lr: float = 3e-4
    bc_batch_size: int = 256
    holdout: float = 0.1  # share of demo transitions held out for early stopping
    eval_every: int = 1000  # BC steps between held-out evaluations
    patience: int = 10  # evaluations without improvement before BC stops
    init_actor: bool = True  # start the actor from pi_BC's weights
    num_episodes: int = 5
    source: str = "policy"  # policy | dataset
    policy: str | None = None  # shipped policy name (rlreg/assets) or path to a .pt file
    stochastic_expert: bool = False
    collect_seed: int = 1_000_000
    env: EnvConfig | None = None  # source=policy: the env to roll out in (conf: the run's env)
    dataset: DatasetConfig | None = None  # source=dataset (conf: the run's dataset config)
    select: str = "best"  # source=dataset: best | first


@torch.no_grad()
def rollout_demos(
    actor: nn.Module, env_config: EnvConfig, episodes: int, seed: int, stochastic: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """``episodes`` complete episodes of ``actor``, one env per episode (reset with ``seed + i``), stepped
    together with one batched policy call; returns per-episode observations, actions and returns."""
    from rlreg.envs import make_env

    gen = torch.Generator().manual_seed(seed)
    envs = [make_env(env_config) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    obs_log: list[list[np.ndarray]] = [[] for _ in envs]
    act_log: list[list[np.ndarray]] = [[] for _ in envs]
    returns = [0.0] * episodes
    active = list(range(episodes))
    low, high = envs[0].action_space.low, envs[0].action_space.high
    while active:
        x = torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32)
        if isinstance(actor, TanhGaussianActor):
            actions = actor(x, deterministic=not stochastic, with_log_prob=False, generator=gen)[0]
        else:
            actions = actor(x)
        actions = np.clip(actions.numpy(), low, high).astype(np.float32)
        still = []
        for j, i in enumerate(active):
            obs_log[i].append(np.asarray(obs[i], dtype=np.float32))
            act_log[i].append(actions[j])
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[j])
            returns[i] += float(reward)
            if not (terminated or truncated):
                still.append(i)
        active = still
    for env in envs:
        env.close()
    return [np.stack(o) for o in obs_log], [np.stack(a) for a in act_log], returns


@register("demoreg", DemoRegConfig, families=("sac",), requires=("policy_prior",))
class DemoRegRegularizer(Regularizer):

    def __init__(self, config: DemoRegConfig) -> None:
        super().__init__()
        if config.init_actor:  # the learner starts its actor from the prior when BC ends
            self.requires = type(self).requires | {"actor_init"}
        check_choice("regularizer.demoreg.mode", config.mode, ("fixed", "target"))
        check_choice("regularizer.demoreg.source", config.source, ("policy", "dataset"))
        check_choice("regularizer.demoreg.select", config.select, ("best", "first"))
        for key in ("bc_steps", "num_episodes", "bc_batch_size", "eval_every", "patience"):
            check_range(f"regularizer.demoreg.{key}", getattr(config, key), 1)
        check_range("regularizer.demoreg.lam", config.lam, 0.0, low_open=True)
        check_range("regularizer.demoreg.std_min", config.std_min, 0.0, low_open=True)
        check_range("regularizer.demoreg.holdout", config.holdout, 0.0, 1.0, high_open=True)
        self.config = config
        self.demos: dict[str, Any] | None = None
        self.best: dict[str, Any] = {"nll": None, "state": None, "bad_evals": 0, "finished": False}
        self._kl: Tensor | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        cfg = self.config
        self.ctx = ctx
        actor = learner.actor
        log_std_min = max(math.log(cfg.std_min), actor.log_std_min)
        if log_std_min >= actor.log_std_max:
            raise ConfigError(f"regularizer.demoreg.std_min={cfg.std_min} is above the actor's largest std")
        self.prior = TanhGaussianActor(
            ctx.obs_dim, ctx.act_dim, hidden=tuple(learner.config.actor_hidden),
            log_std_bounds=(log_std_min, actor.log_std_max), max_action=ctx.max_action,
        )
        self.modules["prior"] = self.prior
        self.log_lam = nn.Parameter(torch.tensor(math.log(cfg.lam)))
        self.modules["lam"] = nn.ParameterDict({"log": self.log_lam})
        self.optimizers["bc"] = adam(self.prior.parameters(), cfg.bc_lr)
        if cfg.mode == "target":
            self.optimizers["lam"] = adam([self.log_lam], cfg.lam_lr)
        self.target_kl = float(cfg.target_kl if cfg.target_kl is not None else 0.5 * ctx.act_dim)

    # -- the PolicyPrior protocol used by the SAC learner ------------------------------------------
    def kl(self, obs: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
        """Closed-form ``KL(pi(.|s) || pi_BC(.|s))`` ``(B,)`` of the pre-tanh Gaussians (= the KL of the
        tanh-squashed policies: KL is invariant under a shared bijection)."""
        with torch.no_grad():
            mean_bc, log_std_bc = self.prior.dist_params(obs)
        return gaussian_kl(mean, log_std, mean_bc, log_std_bc)

    def coef(self) -> Tensor:
        return self.log_lam.detach().exp()

    # -- temperature -------------------------------------------------------------------------------
    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        self._kl = ctx.extras["kl"].detach().mean()
        return {}

    def after_update(self, step: int) -> dict[str, Tensor]:
        kl, self._kl = self._kl, None
        if self.config.mode == "target" and kl is not None:
            # SPiRL: L(log lambda) = lambda * (delta - KL).detach(), on this update's actor-step KL
            opt = self.optimizers["lam"]
            opt.zero_grad(set_to_none=True)
            (self.log_lam.exp() * (self.target_kl - kl)).backward()
            opt.step()
        return {"lambda": self.coef()}

    # -- demonstrations ----------------------------------------------------------------------------
    def _load_demos(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.source == "policy":
            from rlreg.policies import load_policy

            if not cfg.policy:
                raise ConfigError("regularizer.demoreg.source=policy needs regularizer.demoreg.policy (a shipped "
                                  "policy name or a .pt path)")
            if cfg.env is None:
                raise ConfigError("regularizer.demoreg.source=policy needs regularizer.demoreg.env (default: env)")
            expert, meta = load_policy(cfg.policy)
            if meta.get("env") not in (None, cfg.env.id):
                raise ConfigError(f"regularizer.demoreg.policy={cfg.policy!r} was trained on {meta['env']}, "
                                  f"not on {cfg.env.id} (regularizer.demoreg.env)")
            obs, act, returns = rollout_demos(expert, cfg.env, cfg.num_episodes, cfg.collect_seed,
                                              cfg.stochastic_expert)
        else:
            from rlreg.data.sources import load_dataset

            if cfg.dataset is None:
                raise ConfigError("regularizer.demoreg.source=dataset needs regularizer.demoreg.dataset")
            data = load_dataset(cfg.dataset)
            starts, ends = data.episode_starts_ends()
            ep_returns = data.episode_returns()
            if len(starts) < cfg.num_episodes:
                raise ConfigError(f"regularizer.demoreg.num_episodes={cfg.num_episodes}: dataset "
                                  f"{cfg.dataset.name} has only {len(starts)} episodes")
            order = np.argsort(-ep_returns, kind="stable") if cfg.select == "best" else np.arange(len(starts))
            chosen = order[: cfg.num_episodes]
            obs = [data.observations[starts[i]: ends[i] + 1] for i in chosen]
            act = [data.actions[starts[i]: ends[i] + 1] for i in chosen]
            returns = [float(ep_returns[i]) for i in chosen]
        obs_all, act_all = np.concatenate(obs), np.concatenate(act)
        if obs_all.shape[1] != self.ctx.obs_dim or act_all.shape[1] != self.ctx.act_dim:
            raise ConfigError(f"regularizer.demoreg: demonstrations have obs/act dims {obs_all.shape[1]}/"
                              f"{act_all.shape[1]}, the env has {self.ctx.obs_dim}/{self.ctx.act_dim}")
        perm = np.random.default_rng(cfg.collect_seed).permutation(len(obs_all))
        n_hold = int(len(perm) * cfg.holdout)
        device = self.ctx.device
        return {
            "observations": torch.as_tensor(obs_all[perm], dtype=torch.float32, device=device),
            "actions": torch.as_tensor(act_all[perm], dtype=torch.float32, device=device),
            "num_train": len(perm) - n_hold,
            "returns": torch.as_tensor(returns, dtype=torch.float64),
        }

    def _demos(self) -> dict[str, Any]:
        if self.demos is None:
            self.demos = self._load_demos()
        return self.demos

    # -- pre-training: behaviour cloning -----------------------------------------------------------
    @property
    def pretrain_steps(self) -> int:
        return self.config.bc_steps

    def pretrain_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of training demo pairs (the online trainer's source of pre-training data)."""
        d = self._demos()
        obs, act = d["observations"], d["actions"]
        idx = torch.randint(0, d["num_train"], (batch_size,), device=obs.device, generator=generator)
        o = obs[idx]
        zeros = torch.zeros(batch_size, device=obs.device)
        return Batch(o, act[idx], zeros, o, zeros + 1.0, zeros)

    def pretrain_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        cfg = self.config
        if self.best["finished"]:
            return {}
        loss = -self.prior.log_prob(batch.observations, batch.actions).mean()
        opt = self.optimizers["bc"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics = {"nll": loss.detach()}
        if step % cfg.eval_every == 0 or step == cfg.bc_steps:
            d = self._demos()
            metrics["demo_return"] = d["returns"].mean().float()
            held = d["observations"][d["num_train"]:]
            if held.shape[0] > 0:
                with torch.no_grad():
                    nll = -self.prior.log_prob(held, d["actions"][d["num_train"]:]).mean()
                metrics["holdout_nll"] = nll
                value = float(nll)  # one host sync per eval_every BC steps
                if self.best["nll"] is None or value < self.best["nll"]:
                    self.best.update(nll=value, bad_evals=0,
                                     state={k: v.detach().clone() for k, v in self.prior.state_dict().items()})
                else:
                    self.best["bad_evals"] += 1
            if step == cfg.bc_steps or self.best["bad_evals"] >= cfg.patience:
                self._finish_pretraining()
        return metrics

    def _finish_pretraining(self) -> None:
        """Keep the best prior and freeze it (the learner then starts its actor from it: ``actor_init_state``)."""
        if self.best["state"] is not None:
            self.prior.load_state_dict(self.best["state"])
        self.prior.requires_grad_(False)
        self.best["finished"] = True
        self.best["state"] = None  # the prior's own weights are now the best ones

    def actor_init_state(self) -> dict[str, Tensor] | None:
        """The prior's weights, from which the learner starts its actor when pre-training ends (``init_actor``;
        the learner provides ``actor_init``)."""
        return self.prior.state_dict() if self.config.init_actor else None

    # -- checkpointing -----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"demos": self.demos, "best": copy.copy(self.best)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.demos = state.get("demos")
        if self.demos is not None:
            self.demos = {k: (v.to(self.ctx.device) if isinstance(v, Tensor) and k != "returns" else v)
                          for k, v in self.demos.items()}
        self.best = dict(state.get("best", self.best))
        if self.best["finished"]:
            self.prior.requires_grad_(False)
