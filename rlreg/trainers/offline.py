"""Offline trainer: optional regularizer pre-training, then gradient steps on a fixed dataset with
evaluation every K steps. :func:`load_offline_data` is the data setup it shares with the fine-tuning trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from rlreg.agents import build_agent
from rlreg.config import DatasetConfig
from rlreg.data.buffers import OfflineBuffer
from rlreg.data.dataset import TransitionDataset, make_reward_fn
from rlreg.data.sources import load_dataset
from rlreg.envs import env_setup, env_spaces, normalized_score
from rlreg.logging import RunLogger, progress_bar
from rlreg.runs import data_fingerprint
from rlreg.trainers.common import TrainerBase, check_env


@dataclass
class OfflineData:
    """A dataset loaded and checked against its env, with what the trainers derive from it."""

    dataset: TransitionDataset
    obs_mean: np.ndarray | None  # state normalisation (dataset.normalize_states), else None
    obs_std: np.ndarray | None
    reward_fn: Callable[[np.ndarray], np.ndarray]
    buffer: OfflineBuffer  # normalised states, transformed rewards, discounts, on the device
    fingerprint: str  # rlreg.runs.data_fingerprint of the arrays as loaded


def load_offline_data(dcfg: DatasetConfig, device: torch.device, gamma: float) -> OfflineData:
    """Load the dataset of ``dcfg``, check it against the spaces of its evaluation env (DatasetError naming the
    file and key otherwise), and build the state statistics, reward transform and device buffer (discounts
    ``gamma * not_done``). The offline and the fine-tuning trainers call it before creating the run dir."""
    check_env(dcfg.env, "dataset.env.id")
    _, _, _, obs_space, act_space = env_spaces(dcfg.env)
    dataset = load_dataset(dcfg)
    dataset.validate(
        observation_shape=obs_space.shape,
        action_shape=act_space.shape,
        action_low=act_space.low,
        action_high=act_space.high,
    )
    obs_mean = obs_std = None
    if dcfg.normalize_states:
        obs_mean, obs_std = dataset.state_stats(eps=dcfg.state_std_eps)
    reward_fn = make_reward_fn(dcfg.reward_transform, dcfg.reward_scale, dcfg.reward_shift, dataset)
    buffer = OfflineBuffer(dataset, device=device, obs_mean=obs_mean, obs_std=obs_std, reward_fn=reward_fn,
                           gamma=gamma)
    return OfflineData(dataset, obs_mean, obs_std, reward_fn, buffer, data_fingerprint(dataset))


def load_run_data(trainer: TrainerBase) -> OfflineData:
    """:func:`load_offline_data` for the dataset and discount of ``trainer``'s run."""
    dcfg = trainer.run.dataset
    assert dcfg is not None
    return load_offline_data(dcfg, trainer.device, gamma=trainer.run.agent.learner_config.gamma)


class OfflineTrainer(TrainerBase):
    def _load_data(self) -> None:
        self._use_data(load_run_data(self))

    def _setup(self) -> None:
        dcfg, data = self.run.dataset, self.data
        assert dcfg is not None
        self.eval_env = dcfg.env
        returns = data.dataset.episode_returns()
        self.dataset_score = normalized_score(float(returns.mean()), dcfg.env.ref_min_score, dcfg.env.ref_max_score)
        self._say(
            f"dataset {dcfg.name}: {len(data.dataset)} transitions, {len(returns)} episodes, "
            f"mean return {returns.mean():.1f}"
            + ("" if self.dataset_score is None else f" (normalized {self.dataset_score:.1f})")
        )
        self.obs_mean, self.obs_std = data.obs_mean, data.obs_std
        self.buffer = data.buffer
        setup = env_setup(dcfg.env, self.device, seed=self.run.seed, dataset=data.dataset, buffer=self.buffer,
                          obs_mean=self.obs_mean, obs_std=self.obs_std)
        self.learner = build_agent(self.run.agent, setup)
        self.pretrain_done: dict[str, int] = {reg.name: 0 for reg in self.learner.regularizers}

    def _extra_state(self) -> dict[str, Any]:
        return {"pretrain_done": dict(self.pretrain_done)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.pretrain_done = {k: int(v) for k, v in state["pretrain_done"].items()}

    def _pretrain_batch(self, reg: Any, batch_size: int) -> Any:
        return self.buffer.sample(batch_size, self.generator)

    def _train(self, logger: RunLogger) -> None:
        t = self.run.trainer
        self._pretrain(logger)
        bar = progress_bar(t.total_steps, self.step, self.run.logging.progress_bar, self.run.agent.name)
        self.learner.train()
        while self.step < t.total_steps:
            self.step += 1
            batch = self.buffer.sample(t.batch_size, self.generator)
            self.metrics.add(self.learner.update(batch, self.step, self.generator), self.step)
            self._after_step(logger, bar)
        bar.close()
