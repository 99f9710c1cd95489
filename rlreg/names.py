"""Agent names as people write them (``TD3+BC``, ``PRDC+SPOT``) from run-directory names (``td3bc-bc``,
``prdc-prdc+spot``), for tables and plot legends.

A run directory is named ``<agent>[-<regularizers joined by +>][_<tag>]``. The agent's own regularizers (the
ones its ``conf/agent/<agent>.yaml`` selects) are part of its name; any other regularizer stacked on it is
appended with ``+``; a tag goes in parentheses. Names this module does not know are returned unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rlreg.config import CONF_DIR

AGENT_NAMES = {
    "td3": "TD3",
    "ddpg": "DDPG",
    "sac": "SAC",
    "td3bc": "TD3+BC",
    "sacn": "SAC-N",
    "edac": "EDAC",
    "spot": "SPOT",
    "prdc": "PRDC",
    "a2pr": "A2PR",
    "rorl": "RORL",
    "droq": "DroQ",
    "beer": "BEER",
    "demoreg_sac": "DemoReg-SAC",
    "decqn": "DecQN",
    "revalued": "REValueD",
    "mbpo": "MBPO",
    "mbpo_lipschitz": "MBPO+Lipschitz",
}

REGULARIZER_NAMES = {
    "bc": "BC",
    "edac": "EDAC",
    "spot": "SPOT",
    "prdc": "PRDC",
    "a2pr": "A2PR",
    "rorl_policy": "RORL-policy",
    "rorl_q": "RORL-Q",
    "rorl_ood": "RORL-OOD",
    "beer": "BEER",
    "demoreg": "DemoReg",
}


@functools.lru_cache(maxsize=None)
def agent_regularizers(agent: str, conf_dir: str = str(CONF_DIR)) -> tuple[str, ...]:
    """The regularizers ``conf/agent/<agent>.yaml`` selects (following its ``defaults`` parents); () if none."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / "agent" / f"{agent}.yaml"
    if not path.exists():
        return ()
    raw = OmegaConf.to_container(OmegaConf.load(path))
    regs: tuple[str, ...] = ()
    for entry in (raw or {}).get("defaults", []) if isinstance(raw, dict) else []:
        if isinstance(entry, str) and entry != "_self_":
            regs = agent_regularizers(entry, conf_dir) or regs
        elif isinstance(entry, dict):
            for key, value in entry.items():
                if key.split()[-1].lstrip("/") == "regularizer":
                    regs = tuple(value) if isinstance(value, list) else (() if value is None else (str(value),))
    return regs


def _known_regularizers(conf_dir: str) -> set[str]:
    return set(REGULARIZER_NAMES) | {p.stem for p in (Path(conf_dir) / "regularizer").glob("*.yaml")}


def split_run_name(run_name: str, conf_dir: str = str(CONF_DIR)) -> tuple[str, tuple[str, ...], str]:
    """``prdc-prdc+spot_long`` -> ``("prdc", ("prdc", "spot"), "long")`` (agent, regularizers, tag). Agent and
    regularizer names may hold ``_`` (``demoreg_sac``, ``rorl_q``), so known names are matched first."""
    agents = set(AGENT_NAMES) | {p.stem for p in (Path(conf_dir) / "agent").glob("*.yaml")}
    agent = max((a for a in agents if run_name == a or run_name.startswith((a + "-", a + "_"))), key=len, default=None)
    if agent is None:
        agent, _, tag = run_name.partition("_")
        agent, _, regs = agent.partition("-")
        return agent, tuple(r for r in regs.split("+") if r), tag
    rest = run_name[len(agent):]
    if not rest.startswith("-"):
        return agent, (), rest[1:]
    pieces = rest[1:].split("+")
    last, tag = pieces[-1], ""
    known = _known_regularizers(conf_dir)
    if last not in known:
        reg = max((r for r in known if last.startswith(r + "_")), key=len, default=None)
        last, tag = (reg, last[len(reg) + 1:]) if reg else last.partition("_")[::2]
    return agent, tuple(pieces[:-1] + [last]), tag


def display_name(run_name: str, conf_dir: str = str(CONF_DIR)) -> str:
    """The name people write for the agent of a run directory name: ``td3bc-bc`` -> ``TD3+BC``,
    ``prdc-prdc+spot`` -> ``PRDC+SPOT``, ``sacn-edac`` -> ``SAC-N+EDAC``, ``td3bc-bc_long`` -> ``TD3+BC (long)``."""
    agent, regs, tag = split_run_name(run_name, conf_dir)
    if agent not in AGENT_NAMES:
        return run_name
    own = agent_regularizers(agent, conf_dir)
    name = "+".join([AGENT_NAMES[agent]] + [REGULARIZER_NAMES.get(r, r) for r in regs if r not in own])
    missing = [REGULARIZER_NAMES.get(r, r) for r in own if r not in regs]
    if missing:  # the agent with one of its own regularizers switched off
        name += " without " + ", ".join(missing)
    return f"{name} ({tag})" if tag else name
