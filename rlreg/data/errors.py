"""Error type raised for every bad dataset input."""

from __future__ import annotations

from rlreg.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset file, id or option is missing, malformed or inconsistent.

    Messages name the file (or dataset id), the key or option concerned, and what was
    expected versus what was found.
    """

    hint = "fix the file or the dataset option named above, then rerun the same command"
