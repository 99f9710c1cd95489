"""SPOT: Supported Policy Optimization (Wu et al., NeurIPS 2022; thuml/SPOT @ 4be91cc; docs/agents/spot.md).

The support constraint ``log pi_beta(pi(s) | s) > log eps`` becomes a fixed-multiplier penalty on the
behaviour density of the policy action, with ``-log pi_beta`` replaced by the negative ELBO of a conditional
VAE that is pre-trained on the dataset and then frozen (docs/agents/spot.md):

    stage 1 (pretrain_steps):  min_VAE  mean_B [ mean_dims (Dec(s, z) - a)^2 + beta * mean_latent KL_elem ]
    stage 2 (actor term):      lambda * mean_B nlb(s),
                               nlb(s) = mean_dims (Dec(s, z) - p)^2 + beta * mean_latent KL_elem(Enc(s, p)),
                               p = pi(s),  z = mu_z + sigma_z * eps  (VAE frozen, gradient flows into p)

The Q term ``-mean Q1(s, p) / mean|Q1(s, p)|`` is the TD3 learner's ``q_norm_alpha = 1`` (``agent=spot``), which
is the official ``actor_loss = -Q.mean() / Q.abs().mean().detach() + lambd * neg_log_beta.mean()`` exactly;
``q_norm_alpha = null`` is the official ``without_Q_norm``. Because the penalty is only an added actor term it
stacks with any other regularizer (e.g. ``regularizer=[prdc,spot]``), and the learner's own Q scaling applies.

Online fine-tuning (docs/agents/spot.md, ``trainer=finetune``): the VAE stays frozen and
``lambda_t = lambda * max(lambda_end, 1 - t / anneal_steps)`` with ``t`` the fine-tuning update count.

Deviations from the official code (and why):

* The VAE is frozen with ``requires_grad_(False)`` (plus ``eval()``) instead of only being left out of every
  optimiser: the official actor step also computes VAE weight gradients nobody uses (docs/speed.md);
  the actor update is identical.
* Divergence guard: the official code calls ``exit(0)`` (a *successful* exit) on the first actor step with
  ``mean Q1(s, pi(s)) > 1e4``. Here the first such update is recorded on the device (no host sync per step)
  and checked every ``divergence_check_every`` updates (one host sync), raising :class:`QDivergenceError` that
  names that update, the value and the option. So a run stops up to ``divergence_check_every - 1`` updates
  after the divergence (no checkpoint is written in between when ``trainer.checkpoint_every`` is a multiple of
  it, as with the defaults), and a divergence within the last, unchecked updates of a budget goes
  unreported. As in the official code the guard is off during online fine-tuning.
* An RL stage that starts before the VAE pre-training finished (only possible outside the offline trainer,
  e.g. in ``scripts/bench_updates.py``) warns instead of failing.
* Where the VAE comes from. The official code pre-trains one VAE per dataset in a separate script
  (``train_vae.py``, ``--seed 0``) and every RL seed loads that file (``main.py --vae_model_path``).
  ``regularizer.spot.vae_cache=<dir>`` (the default of ``agent=spot``) does the same: the VAE is pre-trained
  once per (dataset as the VAE sees it, ``vae_seed`` and VAE settings) and stored in ``<dir>``; every later
  run on that data with those settings loads it, whatever its RL seed, so no seed pays the pre-training again.
  The cached VAE depends on nothing but the data and ``vae_seed`` (own initialisation, batch sampler and latent
  noise, run inside a forked RNG, so a run that trains the VAE and one that loads it continue identically).
  Each entry records the fingerprint of the data it was trained on (SHA-256 of the normalised states and the
  actions) and its settings, and is refused for any other data. To the trainer the cached pre-training is one
  step (``pretrain_steps`` is 1), checkpointed like any other. ``vae_cache=null`` pre-trains a VAE per run
  instead, with the run's batch sampler and random state, resumable mid-way.
* Both modes run exactly ``pretrain_steps`` VAE iterations (batch ``trainer.batch_size``); the official loop
  runs ``num_iters + 1`` (``range(args.num_iters + 1)``, thuml/SPOT @ 4be91cc ``train_vae.py``): set
  ``pretrain_steps=100001`` for the official count.
* The VAE's optimiser state is kept (never stepped) after pre-training so every checkpoint has the same
  layout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlreg.checkpoint import atomic_torch_save
from rlreg.data.buffers import Batch
from rlreg.learners.base import adam
from rlreg.nets import ConditionalVAE
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, Regularizer, SetupContext

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class QDivergenceError(RuntimeError):
    """SPOT's divergence guard fired: mean Q1(s, pi(s)) exceeded the threshold (docs/agents/spot.md)."""


@dataclass
class SPOTConfig:
    lambd: float = 1.0  # lambda, the density-penalty weight (official CLI default; per dataset in conf/tuned/spot/)
    beta: float = 0.5  # KL weight of the VAE loss and of the density estimate
    pretrain_steps: int = 100_000  # VAE pre-training iterations (train_vae.py --num_iters)
    # directory of VAEs pre-trained once per dataset and reused by every RL seed (official train_vae.py + main.py
    # --vae_model_path); None: each run pre-trains its own with its own seed
    vae_cache: str | None = None
    vae_seed: int = 0  # seed of a cached VAE's initialisation, batches and noise (official train_vae.py: 0)
    vae_lr: float = 1e-3
    vae_hidden: tuple[int, ...] = (750, 750)
    latent_dim: int | None = None  # None: 2 |A|
    num_samples: int = 1  # latent samples per state in the density estimate
    iwae: bool = False  # importance-weighted -log density instead of the ELBO surrogate (not used by the configs)
    q_divergence_threshold: float | None = 1e4  # None: no guard
    divergence_check_every: int = 1000  # updates between host-side checks of the guard
    lambda_end: float = 0.2  # fine-tuning: lambda_t = lambd * max(lambda_end, 1 - t / anneal_steps)
    anneal_steps: int = 1_000_000


def _check(config: SPOTConfig) -> None:
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"regularizer.spot.{key}={getattr(config, key)!r}: {why}")

    if config.lambd < 0:
        raise bad("lambd", "must be >= 0")
    if not config.beta > 0:
        raise bad("beta", "must be > 0")
    if config.pretrain_steps < 0:
        raise bad("pretrain_steps", "must be >= 0")
    if config.vae_cache is not None and not config.vae_cache:
        raise bad("vae_cache", "must be a directory (or null to pre-train a VAE per run)")
    if not config.vae_lr > 0:
        raise bad("vae_lr", "must be > 0")
    if not config.vae_hidden or min(config.vae_hidden) < 1:
        raise bad("vae_hidden", "needs at least one positive layer width")
    if config.latent_dim is not None and config.latent_dim < 1:
        raise bad("latent_dim", "must be >= 1 (or null for 2 |A|)")
    if config.num_samples < 1:
        raise bad("num_samples", "must be >= 1")
    if config.divergence_check_every < 1:
        raise bad("divergence_check_every", "must be >= 1")
    if not 0.0 <= config.lambda_end <= 1.0:
        raise bad("lambda_end", "must be in [0, 1]")
    if config.anneal_steps < 1:
        raise bad("anneal_steps", "must be >= 1")


def neg_log_density(
    vae: ConditionalVAE, obs: Tensor, actions: Tensor, beta: float, num_samples: int = 1, iwae: bool = False
) -> Tensor:
    """``-log pi_beta(a | s)`` estimate per state, shape ``(B,)`` (official ``vae.elbo_loss`` / ``iwae_loss``).

    ELBO surrogate: ``mean_{samples, dims} (Dec(s, z) - a)^2 + beta * mean_latent KL_elem``. IWAE: ``-(logsumexp_l
    w_l - log L)`` with ``w_l = log N(a; Dec(s, z_l), beta/4) + log N(z_l; 0, I) - log q(z_l | s, a)``, sums over dims.
    """
    if num_samples == 1 and not iwae:
        return vae.negative_elbo(obs, actions, kl_weight=beta)
    mean, std = vae.encode(obs, actions)  # (B, D)
    eps = torch.randn((num_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
    z = mean + std * eps  # (L, B, D)
    recon = vae.decode(obs.expand(num_samples, *obs.shape), z)  # (L, B, A)
    if not iwae:
        rec = (recon - actions).square().mean(dim=(0, 2))
        kl = (-0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square())).mean(-1)
        return rec + beta * kl
    log_std_dec = 0.5 * math.log(beta / 4.0)
    log_pxz = (-0.5 * (recon - actions).square() * (4.0 / beta) - log_std_dec - _HALF_LOG_2PI).sum(-1)
    log_pz = (-0.5 * z.square() - _HALF_LOG_2PI).sum(-1)
    log_qzx = (-0.5 * eps.square() - torch.log(std) - _HALF_LOG_2PI).sum(-1)
    w = log_pxz + log_pz - log_qzx  # (L, B)
    return -(torch.logsumexp(w, dim=0) - math.log(num_samples))


def vae_loss(vae: ConditionalVAE, batch: Batch, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-training loss ``mean (Dec(s, z) - a)^2 + beta * mean KL_elem`` (train_vae.py), its two parts."""
    rec, kl = vae.elbo_terms(batch.observations, batch.actions)
    recon, kl_mean = rec.mean(), kl.mean()
    return recon + beta * kl_mean, recon, kl_mean


def data_fingerprint(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes (the data exactly as a network sees it)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class VAECacheError(ValueError):
    """A cached SPOT VAE does not belong to this run's data or settings."""


def cached_vae_state(
    cache_dir: Path, buffer: Any, settings: dict[str, Any], build: Any, batch_size: int, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, float], bool]:
    """The pre-trained VAE for ``buffer``'s data and ``settings`` from ``cache_dir``, training and storing it first
    on a miss. Returns ``(state_dict, final metrics, hit)``. ``build()`` makes a fresh :class:`ConditionalVAE`.

    Concurrent runs (seeds launched together) take a file lock, so one trains and the others wait and load.
    An entry whose recorded data fingerprint or settings differ from this run's raises :class:`VAECacheError`."""
    fingerprint = data_fingerprint(buffer.observations, buffer.actions)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"spot_vae-{fingerprint[:16]}-seed{settings['vae_seed']}-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists():
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("data_fingerprint") != fingerprint:
                raise VAECacheError(
                    f"{path}: this SPOT VAE was pre-trained on other data (fingerprint "
                    f"{str(entry.get('data_fingerprint'))[:16]}..., this run's data {fingerprint[:16]}...); refusing to "
                    "use it. Delete the file or point regularizer.spot.vae_cache at another directory."
                )
            if entry.get("settings") != settings:
                raise VAECacheError(
                    f"{path}: this SPOT VAE was pre-trained with other settings ({entry.get('settings')}, this run "
                    f"{settings}); refusing to use it. Delete the file or point regularizer.spot.vae_cache elsewhere."
                )
            return entry["state_dict"], entry["metrics"], True
        # a miss: pre-train from vae_seed alone (init, batches, latent noise), leaving the run's RNG untouched
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(settings["vae_seed"])
            vae = build().to(device)
            opt = adam(vae.parameters(), settings["vae_lr"])
            gen = torch.Generator(device=buffer.observations.device).manual_seed(settings["vae_seed"])
            parts: tuple[Tensor, Tensor, Tensor] | None = None
            for _ in range(settings["pretrain_steps"]):
                parts = vae_loss(vae, buffer.sample(batch_size, gen), settings["beta"])
                opt.zero_grad(set_to_none=True)
                parts[0].backward()
                opt.step()
        metrics = {} if parts is None else {k: float(v.detach()) for k, v in zip(("loss", "recon", "kl"), parts)}
        state = {k: v.detach().to("cpu") for k, v in vae.state_dict().items()}
        atomic_torch_save({"data_fingerprint": fingerprint, "settings": settings, "state_dict": state,
                           "metrics": metrics}, path)
        return state, metrics, False


@register("spot", SPOTConfig)
class SPOTRegularizer(Regularizer):

    def __init__(self, config: SPOTConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        self.pretrained = 0  # VAE pre-training iterations done
        self.finetuning = False
        self._frozen = False

    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        cfg = self.config
        self.vae = self._build_vae(ctx)
        self._ctx = ctx  # the cached pre-training reads ctx.buffer and ctx.device
        self.cache_hit: bool | None = None  # cached mode: whether the VAE came from the cache (None: not yet)
        self.modules["vae"] = self.vae
        self.optimizers["vae"] = adam(self.vae.parameters(), cfg.vae_lr)
        # divergence guard: first update with mean Q1(s, pi(s)) > threshold (-1: none yet) and that mean
        self._div_step = torch.full((), -1, dtype=torch.long, device=ctx.device)
        self._div_q = torch.zeros((), device=ctx.device)

    def _build_vae(self, ctx: SetupContext) -> ConditionalVAE:
        cfg = self.config
        return ConditionalVAE(ctx.obs_dim, ctx.act_dim, latent_dim=cfg.latent_dim, hidden=cfg.vae_hidden,
                              max_action=ctx.max_action)

    # -- stage 1: VAE pre-training (docs/agents/spot.md) -------------------------------------------------
    @property
    def pretrain_steps(self) -> int:
        """Pre-training calls the trainer makes: ``pretrain_steps`` VAE steps, or one call that loads (or trains
        once and stores) the cached VAE."""
        if self.config.vae_cache is not None:
            return 1 if self.config.pretrain_steps > 0 else 0
        return self.config.pretrain_steps

    def _load_cached(self, batch_size: int) -> dict[str, Tensor]:
        cfg, ctx = self.config, self._ctx
        if ctx.buffer is None:
            raise ValueError("regularizer.spot.vae_cache needs the offline dataset to pre-train on (offline trainer); "
                             "set regularizer.spot.vae_cache=null to pre-train without it")
        vae = self.vae
        settings = {"vae_seed": cfg.vae_seed, "pretrain_steps": cfg.pretrain_steps, "batch_size": batch_size,
                    "beta": cfg.beta, "vae_lr": cfg.vae_lr, "vae_hidden": list(cfg.vae_hidden),
                    "latent_dim": vae.latent_dim, "max_action": float(ctx.max_action)}
        state, metrics, self.cache_hit = cached_vae_state(
            Path(cfg.vae_cache), ctx.buffer, settings, lambda: self._build_vae(ctx), batch_size, ctx.device)  # type: ignore[arg-type]
        vae.load_state_dict(state)
        self.pretrained = cfg.pretrain_steps
        return {k: torch.tensor(v, device=ctx.device) for k, v in metrics.items()}

    def pretrain_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        if self._frozen:
            raise RuntimeError("SPOT: the VAE is frozen; pre-training must come before the RL stage")
        if self.config.vae_cache is not None:
            return self._load_cached(batch.observations.shape[0])
        loss, recon, kl_mean = vae_loss(self.vae, batch, self.config.beta)
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.pretrained = step
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl_mean.detach()}

    def _freeze(self) -> None:
        if self.pretrained < self.config.pretrain_steps:
            # a warning, not an error: benchmarks time the RL stage on an untrained VAE on purpose
            warnings.warn(
                f"SPOT: the RL stage starts with {self.pretrained} of regularizer.spot.pretrain_steps="
                f"{self.config.pretrain_steps} VAE pre-training steps done, so the density penalty is meaningless. "
                "SPOT runs with the offline trainer (which pre-trains the VAE first) or fine-tunes from a finished "
                "offline SPOT checkpoint (trainer=finetune).",
                RuntimeWarning,
                stacklevel=3,
            )
        self.optimizers["vae"].zero_grad(set_to_none=True)  # drop the last pre-training gradients
        self.vae.requires_grad_(False)  # frozen, but not under no_grad: gradients reach pi(s) through it
        self.vae.eval()
        self._frozen = True

    # -- stage 2: density penalty on the actor (docs/agents/spot.md) ---------------------------------
    def current_lambda(self, step: int) -> float:
        """``lambd`` offline; ``lambd * max(lambda_end, 1 - step / anneal_steps)`` while fine-tuning."""
        cfg = self.config
        if not self.finetuning:
            return cfg.lambd
        return cfg.lambd * max(cfg.lambda_end, 1.0 - step / cfg.anneal_steps)

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        if not self._frozen:
            self._freeze()
        cfg = self.config
        nlb = neg_log_density(self.vae, batch.observations, ctx.actions, cfg.beta, cfg.num_samples, cfg.iwae)
        if cfg.q_divergence_threshold is not None and not self.finetuning:
            q_mean = ctx.q.detach().mean()
            hit = (q_mean > cfg.q_divergence_threshold) & (self._div_step < 0)
            self._div_q = torch.where(hit, q_mean, self._div_q)
            self._div_step.masked_fill_(hit, ctx.step)
        return {"density": self.current_lambda(ctx.step) * nlb.mean()}

    def after_update(self, step: int) -> None:
        cfg = self.config
        if cfg.q_divergence_threshold is None or step % cfg.divergence_check_every:
            return
        first = int(self._div_step)  # one host sync every divergence_check_every updates
        if first >= 0:
            raise QDivergenceError(
                f"SPOT: mean Q1(s, pi(s)) = {float(self._div_q):.4g} exceeded "
                f"regularizer.spot.q_divergence_threshold={cfg.q_divergence_threshold:g} at update {first} "
                "(the official code stops such a run, docs/agents/spot.md). Raise regularizer.spot.lambd or lower "
                "the learning rates, or set regularizer.spot.q_divergence_threshold=null to disable the guard."
            )

    def start_finetune(self) -> None:
        self.finetuning = True

    # -- checkpointing ---------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"pretrained": self.pretrained, "finetuning": self.finetuning,
                "div_step": self._div_step.clone(), "div_q": self._div_q.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pretrained = int(state["pretrained"])
        self.finetuning = bool(state["finetuning"])
        self._div_step.copy_(state["div_step"])
        self._div_q.copy_(state["div_q"])
