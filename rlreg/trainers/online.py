"""Online trainer: random warm-up, then one env step followed by ``utd_ratio`` gradient steps (on every
``update_every``-th env step only: DecQN updates every 8th, REValueD every 5th).

Bootstrapping stops on termination only, never on truncation (docs/environments.md). Exact resume: every
episode is reset with a seed derived from (run seed, episode index) and the checkpoint stores the
actions taken so far in the current episode, so the env is restored by replaying them (MuJoCo is
deterministic) and the restored observation is checked against the stored one.

Regularizers with a pre-training phase (DemoReg-SAC's behaviour cloning, docs/agents/demoreg.md) are pre-trained
before the first env step, resumably, as in the offline trainer; in an online run the data comes from the
regularizer itself (``reg.pretrain_batch(batch_size, generator)``). ``trainer.warmup_policy=agent`` makes the
warm-up act with the agent's own stochastic policy instead of uniform actions (still no updates).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlreg.agents import build_agent
from rlreg.config import ConfigError
from rlreg.data.buffers import ReplayBuffer
from rlreg.envs import env_setup, make_env
from rlreg.logging import RunLogger, progress_bar
from rlreg.trainers.common import TrainerBase


def episode_seed(run_seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([run_seed, episode]).generate_state(1)[0])


class OnlineTrainer(TrainerBase):
    def _setup(self) -> None:
        assert self.run.env is not None
        self.eval_env = self.run.env
        setup = env_setup(self.run.env, self.device, seed=self.run.seed)
        self.env = make_env(self.run.env)
        self.learner = build_agent(self.run.agent, setup)
        self.buffer = self._replay_buffer(setup.obs_dim, self.run.trainer.buffer_size)
        self.sampler = self.learner.sampler(self.buffer)
        self.updates = 0
        self.episode = 0
        self.episode_actions: list[np.ndarray] = []
        self.episode_return = 0.0
        self.obs, _ = self.env.reset(seed=episode_seed(self.run.seed, 0))
        self.pretrain_done: dict[str, int] = {reg.name: 0 for reg in self.learner.regularizers}

    def _replay_buffer(self, obs_dim: int, capacity: int) -> ReplayBuffer:
        """The online buffer in the learner's action format, with its discount and n-step writer."""
        spec, lc = self.learner.action_spec, self.run.agent.learner_config
        return ReplayBuffer(capacity, obs_dim, spec.dim, device=self.device, action_dtype=spec.stored_dtype,
                            gamma=lc.gamma, n_step=getattr(lc, "n_step", 1))

    def _extra_state(self) -> dict[str, Any]:
        spec = self.learner.action_spec
        actions = np.asarray(self.episode_actions, dtype=np.float32).reshape(-1, spec.dim)
        return {
            "buffer": self.buffer.state_dict(),
            "updates": self.updates,
            "episode": self.episode,
            "episode_actions": torch.from_numpy(actions),
            "episode_return": self.episode_return,
            "obs": torch.from_numpy(np.asarray(self.obs, dtype=np.float64)),
            "pretrain_done": dict(self.pretrain_done),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.updates = int(state["updates"])
        self.episode = int(state["episode"])
        self.episode_return = float(state["episode_return"])
        self.pretrain_done.update({k: int(v) for k, v in state.get("pretrain_done", {}).items()})
        actions = state["episode_actions"].cpu().numpy()  # env actions, as stepped
        self.obs, _ = self.env.reset(seed=episode_seed(self.run.seed, self.episode))
        for action in actions:
            self.obs, *_ = self.env.step(action)
        self.episode_actions = list(actions)
        expected = state["obs"].cpu().numpy()
        if not np.array_equal(np.asarray(self.obs, dtype=np.float64), expected):
            raise RuntimeError(
                f"{self.run.env.id}: replaying {len(actions)} actions of episode {self.episode} did not restore "
                "the checkpointed observation; the environment is not deterministic under reset(seed)"
            )

    def _pretrain_batch(self, reg: Any, batch_size: int) -> Any:
        if not hasattr(reg, "pretrain_batch"):
            raise ConfigError(f"regularizer {reg.name} needs pre-training data, which an online run does not "
                              "have (it must provide pretrain_batch)")
        return reg.pretrain_batch(batch_size, self.generator)

    def _train(self, logger: RunLogger) -> None:
        t = self.run.trainer
        self._pretrain(logger)
        bar = progress_bar(t.total_steps, self.step, self.run.logging.progress_bar, self.run.agent.name)
        self.learner.train()
        while self.step < t.total_steps:
            self.step += 1
            if self.step <= t.warmup_steps and t.warmup_policy == "uniform":
                action = self.learner.random_action(self.generator)
            else:
                obs = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device)
                action = self.learner.act(obs, deterministic=False, generator=self.generator)
            env_action = self.learner.action_spec.to_env(action)
            next_obs, reward, terminated, truncated, info = self.env.step(env_action)
            if "physics_error" in info:  # a diverged simulation: no transition, the episode ends (rlreg.envs)
                self.buffer.end_episode(self.obs)  # pending n-step rows bootstrap from the last valid observation
                self._say(f"step {self.step}: {info['physics_error']}; episode ended as a truncation")
            else:
                self.buffer.add(self.obs, action, reward, next_obs, terminated, truncated)
            self.episode_actions.append(env_action)
            self.episode_return += float(reward)
            self.obs = next_obs
            if terminated or truncated:
                logger.log({"step": self.step, "kind": "episode", "train/episode_return": self.episode_return,
                            "train/episode_length": len(self.episode_actions)})
                self.episode += 1
                self.episode_actions, self.episode_return = [], 0.0
                self.obs, _ = self.env.reset(seed=episode_seed(self.run.seed, self.episode))
            self.metrics.add(self.learner.on_env_step(self.step, self.buffer, self.generator), self.step)
            if self.step > t.warmup_steps and self.step % t.update_every == 0:
                for _ in range(t.utd_ratio):
                    self.updates += 1
                    batch = self.sampler.sample(t.batch_size, self.generator)
                    self.metrics.add(self.learner.update(batch, self.updates, self.generator), self.step)
            self._after_step(logger, bar, {"updates": self.updates})
        bar.close()
        self.env.close()
