"""Offline trainer: optional regularizer pre-training, then gradient steps on a fixed dataset with
evaluation every K steps."""

from __future__ import annotations

from typing import Any


from rlreg.agents import build_agent
from rlreg.data.buffers import OfflineBuffer
from rlreg.data.dataset import make_reward_fn
from rlreg.data.sources import load_dataset
from rlreg.envs import env_setup, env_spaces, normalized_score
from rlreg.logging import RunLogger, progress_bar
from rlreg.trainers.common import TrainerBase


class OfflineTrainer(TrainerBase):
    def _setup(self) -> None:
        dcfg = self.run.dataset
        assert dcfg is not None
        self.eval_env = dcfg.env
        _, _, _, obs_space, act_space = env_spaces(dcfg.env)
        dataset = load_dataset(dcfg)
        dataset.validate(
            observation_shape=obs_space.shape,
            action_shape=act_space.shape,
            action_low=act_space.low,
            action_high=act_space.high,
        )
        returns = dataset.episode_returns()
        self.dataset_score = normalized_score(float(returns.mean()), dcfg.env.ref_min_score, dcfg.env.ref_max_score)
        self._say(
            f"dataset {dcfg.name}: {len(dataset)} transitions, {len(returns)} episodes, "
            f"mean return {returns.mean():.1f}"
            + ("" if self.dataset_score is None else f" (normalized {self.dataset_score:.1f})")
        )
        if dcfg.normalize_states:
            self.obs_mean, self.obs_std = dataset.state_stats(eps=dcfg.state_std_eps)
        reward_fn = make_reward_fn(dcfg.reward_transform, dcfg.reward_scale, dcfg.reward_shift, dataset)
        self.buffer = OfflineBuffer(
            dataset, device=self.device, obs_mean=self.obs_mean, obs_std=self.obs_std, reward_fn=reward_fn,
            gamma=self.run.agent.learner_config.gamma,
        )
        setup = env_setup(dcfg.env, self.device, seed=self.run.seed, dataset=dataset, buffer=self.buffer,
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
