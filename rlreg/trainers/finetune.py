"""Online fine-tuning from an offline checkpoint (SPOT ``main_finetune.py``; docs/agents/spot.md).

``python -m rlreg.train agent=spot dataset=<name> trainer=finetune`` continues the finished offline run of the
same agent, dataset, seed and tag (or ``trainer.init_from``) in the dataset's evaluation env:

* the learner (networks, targets, optimisers, regularizer state such as SPOT's frozen VAE) is loaded from the
  offline checkpoint, then every regularizer's ``start_finetune()`` is called (SPOT: annealed lambda);
* the replay buffer (``trainer.buffer_size``, official 2M) is pre-filled with the offline data exactly as the
  offline run saw it (normalised states, transformed rewards) and must hold it plus every online step
  (the official code asserts this too); sampling is uniform over all of it;
* the loop is :class:`~rlreg.trainers.online.OnlineTrainer`'s: with ``trainer.warmup_steps=0`` (official
  ``start_times`` 0) every env step acts with the policy plus Gaussian noise and is followed by
  ``utd_ratio`` updates; the update counter restarts at 1 (the official ``total_it`` is not restored either).

Observations are normalised with the offline dataset's statistics, which stay fixed (an env wrapper, so the
buffer, the actor and the evaluation see the same inputs); online rewards go through the dataset's reward
transform (so ``train/episode_return`` is in transformed units; evaluation uses the raw env). Deviation: the
official script only supports un-normalised states (it asserts so for
locomotion; its AntMaze configs turn normalisation off); fixed dataset statistics are the natural extension.
Checkpoints store only the online rows of the buffer: the pre-filled rows are rebuilt from the dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlreg.agents import build_agent
from rlreg.checkpoint import load_checkpoint
from rlreg.config import ConfigError, RunConfig
from rlreg.data.buffers import BUFFER_ROWS
from rlreg.envs import env_setup, make_env
from rlreg.errors import NotFoundError, RunDirError
from rlreg.runs import derive_run_dir, load_newest_checkpoint, no_loadable_checkpoint
from rlreg.trainers.offline import load_run_data
from rlreg.trainers.online import OnlineTrainer, episode_seed



def offline_run_dir(run: RunConfig) -> Path:
    """The derived run directory of the offline run this fine-tuning run starts from (same agent, dataset, seed,
    tag and run_root; an explicit ``run_dir`` of the fine-tuning run does not move it)."""
    offline = dataclasses.replace(run.trainer, mode="offline")
    return derive_run_dir(dataclasses.replace(run, trainer=offline, run_dir=None))


class FinetuneTrainer(OnlineTrainer):
    def __init__(self, run: RunConfig, announce: bool = True) -> None:
        if run.dataset is None:
            raise ConfigError("trainer.mode=finetune needs the dataset of the offline run: add dataset=<name>")
        if run.env is None:  # the env is the dataset's evaluation env
            run = dataclasses.replace(run, env=run.dataset.env)
        super().__init__(run, announce=announce)

    def _load_data(self) -> None:
        t = self.run.trainer
        self._use_data(load_run_data(self))
        n = len(self.data.buffer)
        if t.buffer_size < n + t.total_steps:
            raise ConfigError(
                f"trainer.buffer_size={t.buffer_size} cannot hold the {n} offline transitions plus "
                f"trainer.total_steps={t.total_steps} online ones; set trainer.buffer_size >= {n + t.total_steps}"
            )

    def _setup(self) -> None:
        dcfg, t, data = self.run.dataset, self.run.trainer, self.data
        assert dcfg is not None
        self.eval_env = dcfg.env
        self.obs_mean, self.obs_std = data.obs_mean, data.obs_std
        offline = data.buffer
        setup = env_setup(dcfg.env, self.device, seed=self.run.seed, dataset=data.dataset, buffer=offline,
                          obs_mean=self.obs_mean, obs_std=self.obs_std)
        self.learner = build_agent(self.run.agent, setup)
        self.buffer = self._replay_buffer(setup.obs_dim, t.buffer_size)
        self.buffer.add(offline.observations, offline.actions, offline.rewards, offline.next_observations,
                        1.0 - offline.not_done)
        self.sampler = self.learner.sampler(self.buffer)
        self.prefill = len(offline)
        self.env = self._wrap_env(make_env(dcfg.env), data.reward_fn)
        self.updates = 0
        self.episode = 0
        self.episode_actions: list[np.ndarray] = []
        self.episode_return = 0.0
        self.obs, _ = self.env.reset(seed=episode_seed(self.run.seed, 0))
        # pre-training phases (SPOT's VAE) belong to the offline run; _load_offline checks they finished there
        self.pretrain_done = {reg.name: reg.pretrain_steps for reg in self.learner.regularizers}
        if not self.resuming:  # a fresh fine-tuning run; otherwise _restore follows
            self._load_offline()

    def _wrap_env(self, env: gym.Env, reward_fn: Any) -> gym.Env:
        """The offline run's state normalisation and reward transform, applied to the online env."""
        if self.obs_mean is not None and self.obs_std is not None:
            mean, std = self.obs_mean, self.obs_std
            env = gym.wrappers.TransformObservation(
                env, lambda o: ((np.asarray(o, dtype=np.float32) - mean) / std).astype(np.float32),
                gym.spaces.Box(-np.inf, np.inf, shape=mean.shape, dtype=np.float32),
            )
        return gym.wrappers.TransformReward(env, lambda r: float(reward_fn(np.asarray([r], dtype=np.float32))[0]))

    def _load_offline(self) -> None:
        t = self.run.trainer
        source = Path(t.init_from) if t.init_from else offline_run_dir(self.run)
        if source.is_file():
            ckpt, state = source, load_checkpoint(source, map_location=self.device)
        else:
            ckpt, state, skipped = load_newest_checkpoint(source, map_location=self.device)
            for bad in skipped:
                self._say(f"skipped offline checkpoint {bad}")
            if skipped and ckpt is None:
                raise no_loadable_checkpoint(source, skipped)
        if ckpt is None or state is None:
            raise NotFoundError(
                f"trainer.init_from: no offline checkpoint under {source}",
                hint="train the offline run first (same agent, dataset, seed and tag with trainer=offline) or "
                "point trainer.init_from at a run directory or checkpoint file",
            )
        self._check_same_data(state, ckpt, hint="fine-tune on the dataset the offline run was trained on")
        stored_mean = state.get("obs_mean")
        if (stored_mean is None) != (self.obs_mean is None) or (
            stored_mean is not None and not np.allclose(stored_mean.cpu().numpy(), self.obs_mean, atol=1e-5)
        ):
            raise ConfigError(
                f"{ckpt} was trained with different state normalisation than dataset.normalize_states="
                f"{self.run.dataset.normalize_states} on {self.run.dataset.name} gives"  # type: ignore[union-attr]
            )
        done = state.get("extra", {}).get("pretrain_done", {})
        for reg in self.learner.regularizers:
            if int(done.get(reg.name, 0)) < reg.pretrain_steps:
                raise RunDirError(
                    f"{ckpt} is still in {reg.name}'s pre-training phase ({int(done.get(reg.name, 0))} of "
                    f"{reg.pretrain_steps} steps); finish the offline run before fine-tuning"
                )
        self.learner.load_full_state_dict(state["learner"])
        for reg in self.learner.regularizers:
            reg.start_finetune()
        self._say(f"fine-tuning from {ckpt} (offline step {int(state['step'])})")

    # -- checkpoints: only the online rows of the buffer ------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state = super()._extra_state()
        buf = dict(state["buffer"])
        for key in BUFFER_ROWS:
            buf[key] = buf[key][self.prefill:].clone()
        buf["prefill"] = self.prefill
        state["buffer"] = buf
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        buf = dict(state["buffer"])
        prefill = int(buf.pop("prefill"))
        if prefill != self.prefill:
            raise ValueError(f"checkpoint was written with {prefill} pre-filled offline rows; the dataset now "
                             f"gives {self.prefill}")
        base = self.buffer.state_dict()  # at this point: the pre-filled rows only
        for key in BUFFER_ROWS:
            rows = buf[key]
            assert isinstance(rows, torch.Tensor)
            buf[key] = torch.cat([base[key], rows])  # type: ignore[list-item]
        super()._load_extra_state({**state, "buffer": buf})
