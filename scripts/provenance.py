"""Where a benchmark figure came from, for the header line every script under ``scripts/`` prints."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The short commit of this checkout ("unknown" outside a git checkout)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def machine() -> str:
    """The CPU, its core count, the 1-minute load (a shared machine's figures drift with it) and torch's version."""
    load = f", 1-min load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{load}, torch {torch.__version__}"
