"""Hydra composition -> typed config: selection, stacking, per-dataset overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose, run_config

from rlreg.config import ConfigError, to_run_config
from rlreg.learners.sac import SACConfig
from rlreg.learners.td3 import TD3Config
from rlreg.regularizers.bc import BCConfig
from rlreg.runs import check_same_run, config_to_dict, derive_run_dir


def test_default_is_td3bc_on_embedded_hopper(tmp_path: Path) -> None:
    run = run_config([], tmp_path)
    assert run.agent.name == "td3bc"
    assert isinstance(run.agent.learner_config, TD3Config)
    assert run.agent.learner_config.q_norm_alpha == 2.5
    assert list(run.agent.regularizers) == ["bc"]
    assert isinstance(run.agent.regularizers["bc"], BCConfig)
    assert run.dataset is not None and run.dataset.name == "hopper-embedded"
    assert run.trainer.mode == "offline"


def test_online_agents_select_online_trainer_and_env(tmp_path: Path) -> None:
    run = run_config(["agent=sac", "env=pendulum"], tmp_path)
    assert isinstance(run.agent.learner_config, SACConfig)
    assert run.trainer.mode == "online" and run.env is not None and run.env.id == "Pendulum-v1"
    assert run.agent.regularizers == {}


def test_sacn_uses_paper_setting(tmp_path: Path) -> None:
    run = run_config(["agent=sacn", "dataset=halfcheetah-medium-v2"], tmp_path)
    lc = run.agent.learner_config
    assert lc.num_critics == 10 and lc.init == "sacn" and run.trainer.total_steps == 3_000_000
    assert run.dataset is not None and run.dataset.normalize_states is False
    hopper = run_config(["agent=sacn", "dataset=hopper-medium-v2"], tmp_path)
    assert hopper.agent.learner_config.num_critics == 500  # CORL per-dataset N (docs/agents/sacn.md)


def test_regularizers_stack_from_the_command_line(tmp_path: Path) -> None:
    run = run_config(["agent=sacn", "regularizer=[bc,edac]"], tmp_path)
    assert list(run.agent.regularizers) == ["bc", "edac"]


def test_run_dir_is_derived_from_agent_regularizers_dataset_seed(tmp_path: Path) -> None:
    run = run_config(["seed=3"], tmp_path)
    assert derive_run_dir(run) == tmp_path / "runs" / "td3bc-bc" / "hopper-embedded" / "seed3"
    tagged = run_config(["seed=3", "tag=lowlr"], tmp_path)
    assert derive_run_dir(tagged).parent.parent.name == "td3bc-bc_lowlr"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+agent.gama=0.9"], "agent.gama"),
        (["++agent.learner=ppo"], "agent.learner='ppo' is unknown"),
        (["trainer.log_every=300", "trainer.checkpoint_every=1000"], "trainer.checkpoint_every"),
        (["agent.actor_lr=fast"], "agent.actor_lr: expected a number"),
        (["dataset.source=s3"], "dataset.source='s3' is unknown"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        run_config(overrides, tmp_path)


def test_unknown_regularizer_is_refused() -> None:
    raw = compose([])
    raw["regularizer"] = {"nope": {}}
    with pytest.raises(ConfigError, match="regularizer='nope' is unknown"):
        to_run_config(raw)


def test_unknown_agent_fails_in_hydra() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="agent"):
        compose(["agent=ppo"])


def test_relaunch_with_other_hyperparameters_is_refused(tmp_path: Path) -> None:
    a = config_to_dict(run_config([], tmp_path))
    b = config_to_dict(run_config(["agent.actor_lr=1e-3"], tmp_path))
    c = config_to_dict(run_config(["trainer.total_steps=5"], tmp_path))
    check_same_run(a, c, tmp_path)  # a longer budget continues the same run
    with pytest.raises(ConfigError, match="actor_lr"):
        check_same_run(a, b, tmp_path)


def test_range_and_choice_checks_name_the_option_and_reject_nan() -> None:
    from rlreg.config import check_choice, check_range

    check_range("agent.tau", 0.5, 0.0, 1.0, low_open=True)  # in range: no error
    for value, message in [(float("nan"), "agent.tau must be a finite number, got nan"),
                           (0.0, r"agent.tau must be in \(0, 1\], got 0.0"),
                           (1.5, r"agent.tau must be in \(0, 1\], got 1.5")]:
        with pytest.raises(ConfigError, match=message):
            check_range("agent.tau", value, 0.0, 1.0, low_open=True)
    with pytest.raises(ConfigError, match="agent.lr must be > 0, got -1"):
        check_range("agent.lr", -1, 0.0, low_open=True)
    assert check_choice("agent.mode", "fixed", ("fixed", "target")) == "fixed"
    with pytest.raises(ConfigError, match=r"agent.mode='x' is unknown; choose one of: fixed, target"):
        check_choice("agent.mode", "x", ("fixed", "target"))
