"""Errors the user can fix, and the exit codes of the command-line tools.

Every error a user can fix (a bad option, bad data, a run directory that cannot be resumed, a full disk)
derives from :class:`UserError`. ``python -m rlreg.train`` (and ``rlreg.robustness``) print it as one
``[rlreg]`` line plus a ``[rlreg] hint:`` line and exit with :data:`EXIT_USER_ERROR`; anything else is a
bug and keeps its traceback. The codes are listed in the README ("Faults and bad input").
"""

from __future__ import annotations

import sys

EXIT_OK = 0
#: a Python exception that is not a UserError: a bug in rlreg (traceback printed)
EXIT_BUG = 1
#: bad option, bad data, a run directory that cannot be resumed, disk full: one [rlreg] line and a hint
EXIT_USER_ERROR = 2
#: training stopped because a loss or a parameter became NaN/inf (the last good checkpoint is intact)
EXIT_DIVERGED = 3
#: 128 + N: stopped by signal N after writing a checkpoint (130 for Ctrl-C, 143 for SIGTERM)
EXIT_SIGNAL_BASE = 128


class UserError(Exception):
    """A failure the user can fix. ``hint`` says how (printed on its own line by the CLIs)."""

    hint: str = ""

    def __init__(self, message: str = "", hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class RunDirError(UserError, RuntimeError):
    """A run directory cannot be used: held by another process, written by another configuration or
    other data, or without a loadable checkpoint."""


class NotFoundError(UserError, FileNotFoundError):
    """A run directory, config.json or checkpoint that a command needs does not exist."""


class WriteError(UserError, OSError):
    """A file of a run could not be written (disk full, file size limit, permissions)."""


def report_user_error(err: BaseException, default_hint: str = "") -> None:
    """Print ``err`` as ``[rlreg] <message>`` and ``[rlreg] hint: <hint>`` on stderr."""
    text = str(err).strip() or type(err).__name__
    hint = getattr(err, "hint", "") or default_hint
    print(f"[rlreg] {text}", file=sys.stderr, flush=True)
    if hint:
        print(f"[rlreg] hint: {hint}", file=sys.stderr, flush=True)


def user_exit(err: BaseException, default_hint: str = "") -> SystemExit:
    """Print ``err`` as a user error and return the ``SystemExit`` to raise: exit code
    :data:`EXIT_USER_ERROR`, its text the message (so callers and tests can still read it)."""
    report_user_error(err, default_hint)
    exc = SystemExit(str(err))
    exc.code = EXIT_USER_ERROR
    return exc
