"""User-facing errors: one line that names the thing and what to do, no traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
USER_ERROR = 2  # the exit code of a process that reported a UserError (dgl.cli.entry_point)


class UserError(Exception):
    """Bad input from the user (params, files, data). The CLI prints it as one line."""


def disk_full(e: OSError, path: Path, what_remains: str) -> UserError | None:
    """The one-line error for an OSError that says the disk is full (None for any other): names the
    file being written and what of it remains."""
    if e.errno not in DISK_FULL:
        return None
    return UserError(f"{path}: {os.strerror(e.errno)} while writing it; {what_remains}. Free some space and run again")
