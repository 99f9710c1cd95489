"""Typed run configuration.

Hydra composes a ``DictConfig``; :func:`to_run_config` converts it once, at the boundary, into the
dataclasses below. Nothing under ``rlreg`` reads a raw ``DictConfig``. Unknown keys, unknown agents or
regularizers and wrongly typed values raise :class:`ConfigError` naming the offending option.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from rlreg.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(UserError, ValueError):
    """A configuration value is unknown, missing or of the wrong type (the message names the option)."""

    hint = "fix the option named above (python -m rlreg.train --cfg job shows the composed config)"


class OptionError(ConfigError):
    """Raised by a config dataclass's ``__post_init__``: ``template`` names options as ``{field}``;
    :func:`from_dict` turns them into the names typed on the command line (``trainer.eval_episodes``)."""

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.render(""))

    def render(self, path: str) -> str:
        return self.template.format(**{f: f"{path}.{f}" if path else f for f in self.fields})


def _esc(value: Any) -> str:
    """``value`` for an :class:`OptionError` template (braces doubled)."""
    return str(value).replace("{", "{{").replace("}", "}}")


def _out_of_range(value: Any, low: float | None, high: float | None, low_open: bool = False,
                  high_open: bool = False) -> str | None:
    """What is wrong with ``value`` for the interval (closed unless ``low_open``/``high_open``), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return None

    def num(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:  # one-sided: ">= 1" reads better than "[1, inf)"
        return f"must be {'>' if low_open else '>='} {num(low)}, got {value!r}"  # type: ignore[arg-type]
    if low is None:
        return f"must be {'<' if high_open else '<='} {num(high)}, got {value!r}"
    lo, hi = num(low), num(high)
    return f"must be in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}, got {value!r}"


def _unknown_choice(value: Any, allowed: Iterable[str]) -> str | None:
    """The message for a ``value`` outside ``allowed``, or None."""
    return None if value in allowed else f"={value!r} is unknown; choose one of: {', '.join(allowed)}"


def check_range(option: str, value: float | int, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``option`` unless ``value`` is finite and lies in the interval (closed
    unless ``low_open``/``high_open``)."""
    problem = _out_of_range(value, low, high, low_open, high_open)
    if problem:
        raise ConfigError(f"{option} {problem}")


def check_choice(option: str, value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else a :class:`ConfigError` naming ``option`` and the choices."""
    problem = _unknown_choice(value, sorted(allowed) if isinstance(allowed, Mapping) else tuple(allowed))
    if problem:
        raise ConfigError(f"{option}{problem}")
    return value


def _check_range(obj: Any, name: str, low: float | None = None, high: float | None = None,
                 optional: bool = False) -> None:
    """:func:`check_range` for the field ``name`` of a config dataclass (None only if ``optional``); the
    :class:`OptionError` gets the field's full name from :func:`from_dict`."""
    value = getattr(obj, name)
    if value is None:
        if optional:
            return
        raise OptionError(f"{{{name}}} must be set, got null", name)
    problem = _out_of_range(value, low, high)
    if problem:
        raise OptionError(f"{{{name}}} {_esc(problem)}", name)


def _check_choice(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    """:func:`check_choice` for the field ``name`` of a config dataclass."""
    problem = _unknown_choice(getattr(obj, name), allowed)
    if problem:
        raise OptionError(f"{{{name}}}{_esc(problem)}", name)


# --------------------------------------------------------------------------------------------------
# Learners and regularizers register their config dataclasses here (``rlreg.learners.base.register_learner``
# and ``rlreg.regularizers.register``); each dataclass validates itself in ``__post_init__``.
# --------------------------------------------------------------------------------------------------

LEARNER_CONFIGS: dict[str, type] = {}


def register_learner_config(name: str, config_cls: type) -> None:
    LEARNER_CONFIGS[name] = config_cls


# --------------------------------------------------------------------------------------------------
# Regularizers register their config dataclass here (rlreg.regularizers.* call register_regularizer).
# --------------------------------------------------------------------------------------------------

REGULARIZER_CONFIGS: dict[str, type] = {}


def register_regularizer_config(name: str, config_cls: type) -> None:
    REGULARIZER_CONFIGS[name] = config_cls


@dataclass
class AgentConfig:
    name: str
    learner: str
    learner_config: Any
    regularizers: dict[str, Any]


@dataclass
class EnvConfig:
    """A Gymnasium environment: evaluation env of a dataset, or the training env of an online run."""

    # null in a dataset config (conf/dataset/minari.yaml): the env the Minari dataset records
    id: str | None = "Hopper-v5"
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None

    def __post_init__(self) -> None:
        _check_range(self, "max_episode_steps", 1, optional=True)
        _check_range(self, "ref_min_score", optional=True)
        _check_range(self, "ref_max_score", optional=True)
        # one of the two may stay null (a Minari dataset's metadata may fill it); no normalized score without both
        low, high = self.ref_min_score, self.ref_max_score
        if low is not None and high is not None and high <= low:
            raise OptionError(f"{{ref_max_score}} ({self.ref_max_score}) must be greater than {{ref_min_score}} "
                              f"({self.ref_min_score})", "ref_min_score", "ref_max_score")


DATASET_SOURCES = ("d4rl_hdf5", "d4rl", "minari", "embedded", "rlreg")


@dataclass
class DatasetConfig:
    """Where the offline data comes from and how it is pre-processed (docs/datasets.md)."""

    name: str = "hopper-embedded"
    # "d4rl_hdf5" (a D4RL-layout file), "d4rl" (the d4rl package), "minari" (local Minari id),
    # "embedded" (collected on this machine by a policy the project ships), "rlreg" (a D4RL-recipe Minari
    # dataset rlreg/<env>/<level>-v0 made by `python -m rlreg.datasets`, built on first use; path = Minari root).
    source: str = "embedded"
    id: str | None = None
    path: str | None = None
    verify: str = "error"  # checksum of official D4RL files: error | warn | off
    env: EnvConfig = field(default_factory=EnvConfig)
    normalize_states: bool = True
    state_std_eps: float = 1e-3
    reward_transform: str = "identity"  # identity | affine | minus_one | return_range
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    # embedded source only
    policy: str | None = None
    num_transitions: int = 0
    action_noise: float = 0.0
    collect_seed: int = 0

    def __post_init__(self) -> None:
        _check_choice(self, "source", DATASET_SOURCES)
        _check_choice(self, "verify", ("error", "warn", "off"))
        _check_choice(self, "reward_transform", ("identity", "affine", "minus_one", "return_range"))
        _check_range(self, "state_std_eps", 0.0)
        _check_range(self, "reward_scale")
        _check_range(self, "reward_shift")
        _check_range(self, "num_transitions", 0)
        _check_range(self, "action_noise", 0.0)
        _check_range(self, "collect_seed", 0, 2**32 - 1)


@dataclass
class TrainerConfig:
    mode: str = "offline"  # offline | online | finetune (online fine-tuning from an offline checkpoint)
    total_steps: int = 1_000_000  # gradient steps (offline) or env steps (online)
    batch_size: int = 256
    eval_every: int = 5000
    eval_episodes: int = 10
    eval_seed_offset: int = 100
    log_every: int = 1000  # metrics are synced from the device every log_every steps
    checkpoint_every: int = 50_000
    keep_checkpoints: int = 3
    # every snapshot_every steps also write the learner's networks alone to snapshots/step_<k>.pt (a few MB,
    # no buffer or optimizer), e.g. to pick behaviour policies from a long run; 0: off
    snapshot_every: int = 0
    # online only
    warmup_steps: int = 5000
    # "uniform": uniform random actions during warm-up; "agent": the agent's own stochastic policy (e.g.
    # DemoReg-SAC acting with the behaviour-cloned prior, docs/agents/demoreg.md). No updates either way.
    warmup_policy: str = "uniform"
    utd_ratio: int = 1
    # online only: the utd_ratio updates happen on every update_every-th env step (DecQN 8, REValueD 5)
    update_every: int = 1
    buffer_size: int = 1_000_000
    # finetune only: the offline run directory (or checkpoint file) to start from; None: the offline run of the
    # same agent, dataset, seed and tag under run_root
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_choice(self, "mode", ("offline", "online", "finetune"))
        _check_choice(self, "warmup_policy", ("uniform", "agent"))
        for name in ("total_steps", "batch_size", "eval_every", "eval_episodes", "log_every", "checkpoint_every",
                     "keep_checkpoints", "utd_ratio", "update_every", "buffer_size"):
            _check_range(self, name, 1)
        for name in ("eval_seed_offset", "snapshot_every", "warmup_steps"):
            _check_range(self, name, 0)
        if self.checkpoint_every % self.log_every:
            raise OptionError(f"{{checkpoint_every}} ({self.checkpoint_every}) must be a multiple of {{log_every}} "
                              f"({self.log_every})", "checkpoint_every", "log_every")


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "rlreg"
    entity: str | None = None
    group: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _check_choice(self, "wandb_mode", ("offline", "online", "disabled"))


@dataclass
class RunConfig:
    agent: AgentConfig
    trainer: TrainerConfig
    logging: LoggingConfig
    dataset: DatasetConfig | None = None
    env: EnvConfig | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    run_root: str = "runs"
    run_dir: str | None = None  # explicit override of the derived run directory
    tag: str = ""

    def __post_init__(self) -> None:
        _check_range(self, "seed", 0, 2**32 - 1)  # numpy seeds are unsigned 32-bit
        _check_range(self, "threads", 0)
        check_device_name(self.device)


def check_device_name(name: str) -> None:
    """``device`` must be ``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        return
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise OptionError(f"{{device}}={_esc(repr(name))} is not a device; use auto, cpu, cuda, cuda:<index> or mps",
                          "device") from None


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check/convert ``value`` against a (simple) type annotation, naming ``path`` on failure."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}={value!r} is unknown; choose one of: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                last = err
        raise last or ConfigError(f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != 2:
                raise ConfigError(f"{path}: expected 2 values, got {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return list(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming ``path.key``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown option for {cls.__name__}; valid options: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except OptionError as err:  # a range or choice checked by the dataclass itself
        raise ConfigError(err.render(path)) from None
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{path}: {err}") from None


def load_env_config(name: str) -> EnvConfig:
    """The ``env`` config group entry ``conf/env/<name>.yaml`` as an :class:`EnvConfig` (outside Hydra)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "env" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
        raise ConfigError(f"env={name!r}: no {path}; known envs: {', '.join(known)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(raw, dict)
    return from_dict(EnvConfig, raw, f"env ({path})")


# Top-level options of the launcher (rlreg.train: K seeds in one process, compiled updates), not part of any run.
LAUNCHER_OPTIONS = ("seeds", "compile")


def to_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Convert the plain container of a composed Hydra config (``OmegaConf.to_container(cfg,
    resolve=True)``) into a :class:`RunConfig`, validating every option."""
    import rlreg.learners  # noqa: F401  (registers the learner configs)
    import rlreg.regularizers  # noqa: F401  (registers the regularizer configs)

    raw = dict(raw)
    agent_raw = dict(raw.pop("agent", None) or {})
    if not agent_raw:
        raise ConfigError("agent: missing; choose one with agent=<name> (see conf/agent/)")
    name = agent_raw.pop("name", None)
    learner = agent_raw.pop("learner", None)
    if not isinstance(name, str) or not isinstance(learner, str):
        raise ConfigError("agent: needs 'name' and 'learner' keys (see conf/agent/*.yaml)")
    check_choice("agent.learner", learner, LEARNER_CONFIGS)
    learner_cfg = from_dict(LEARNER_CONFIGS[learner], agent_raw, "agent")

    regs_raw = raw.pop("regularizer", None) or {}
    regularizers: dict[str, Any] = {}
    for reg_name, reg_cfg in regs_raw.items():
        check_choice("regularizer", reg_name, REGULARIZER_CONFIGS)
        regularizers[reg_name] = from_dict(REGULARIZER_CONFIGS[reg_name], reg_cfg or {}, f"regularizer.{reg_name}")
    agent = AgentConfig(name=name, learner=learner, learner_config=learner_cfg, regularizers=regularizers)

    trainer = from_dict(TrainerConfig, raw.pop("trainer", {}) or {}, "trainer")
    logging = from_dict(LoggingConfig, raw.pop("logging", {}) or {}, "logging")
    dataset_raw = raw.pop("dataset", None)
    env_raw = raw.pop("env", None)
    dataset = from_dict(DatasetConfig, dataset_raw, "dataset") if dataset_raw else None
    if dataset is not None:
        from rlreg.data.errors import DatasetError
        from rlreg.data.sources import configure_from_metadata

        try:  # a Minari dataset's own env and reference scores fill what the config leaves null
            dataset = configure_from_metadata(dataset)
        except DatasetError as err:
            raise ConfigError(str(err)) from None
    env = from_dict(EnvConfig, env_raw, "env") if env_raw else None
    raw.pop("tuned", None)
    for option in LAUNCHER_OPTIONS:
        raw.pop(option, None)
    scalars = {f.name for f in dataclasses.fields(RunConfig)} - {"agent", "trainer", "logging", "dataset", "env"}
    unknown = sorted(set(raw) - scalars)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level option; valid: {', '.join(sorted(scalars))}")
    hints = typing.get_type_hints(RunConfig)
    top = {k: _coerce(v, hints[k], k) for k, v in raw.items()}
    try:
        run = RunConfig(agent=agent, trainer=trainer, logging=logging, dataset=dataset, env=env, **top)
    except OptionError as err:
        raise ConfigError(err.render("")) from None
    validate(run)
    return run


def validate(run: RunConfig) -> None:
    """Cross-option checks, each naming the options involved."""
    t = run.trainer
    if t.mode == "offline" and run.dataset is None:
        raise ConfigError("trainer.mode=offline needs a dataset: add dataset=<name> (see conf/dataset/)")
    if t.mode == "finetune" and run.dataset is None:
        raise ConfigError("trainer.mode=finetune needs the dataset of the offline run: add dataset=<name>")
    if t.mode == "online" and run.env is None:
        raise ConfigError("trainer.mode=online needs an environment: add env=<name> (see conf/env/)")
    from rlreg.learners import LEARNERS  # the package: every learner registered

    modes = LEARNERS[run.agent.learner].trainer_modes
    if t.mode not in modes:
        raise ConfigError(f"agent={run.agent.name} (learner {run.agent.learner}) trains with trainer="
                          f"{' or '.join(modes)} only, not trainer.mode={t.mode}")
    # numeric ranges and string choices of the trainer, dataset, env, logging and run options are checked by
    # their dataclasses (__post_init__) as they are built; the learners' and regularizers' configs check theirs
    if run.env is not None and run.env.id is None:
        raise ConfigError("env.id: missing; set the Gymnasium id (e.g. env.id=Hopper-v5)")
    if run.dataset is not None and run.dataset.env.id is None:
        raise ConfigError(f"dataset.env.id: missing for dataset {run.dataset.name!r}; set its evaluation env "
                          "(e.g. dataset.env.id=Hopper-v5)")
