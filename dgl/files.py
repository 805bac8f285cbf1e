"""Writing outputs: refuse an unwritable one before any work, write files and folders atomically (a
sibling `.partial` renamed at the end), and report a full disk as such, with the partial output removed."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from dgl.errors import UserError, disk_full


def check_writable(*paths: Path) -> None:
    """Refuse, in one line and before any work, an output that could not be written: the folder that
    will hold each path (its nearest existing ancestor) must be a writable folder, and so must the
    path itself where it is a folder already there (the stage replaces it)."""
    for path in map(Path, paths):
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"{path}: cannot be written, {parent} is a file, not a folder; move it away")
        for folder in (parent, path):
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(
                    f"{path}: cannot be written, {folder} is not writable; "
                    f"make it writable (chmod u+w {folder}) and run again"
                )


@contextlib.contextmanager
def atomic_dir(target: Path, keep_partial: bool = False) -> Iterator[Path]:
    """Yield a sibling work folder; on success it replaces `target` in one rename, so an
    interrupted stage never leaves a half-written output. `keep_partial` keeps the work folder
    after a failure so the next run can resume from it."""
    target = Path(target)
    work = target.with_name(target.name + ".partial")
    if work.exists() and not keep_partial:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException as e:
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        full = isinstance(e, OSError) and disk_full(
            e,
            target,
            f"{work} is kept for the next run to resume from"
            if keep_partial
            else f"the partial output was removed and {target} left as it was",
        )
        if full:
            raise full from None
        raise
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)


class _KeepsWriteErrors:
    """A binary file that remembers the OSError of a failed write or flush."""

    def __init__(self, file):
        self._file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as e:
            self.error = self.error or e
            raise


@contextlib.contextmanager
def binary_output(path: Path) -> Iterator[_KeepsWriteErrors]:
    """`path` opened for writing. An OSError a write raised (a full disk) leaves the block as that
    OSError even where the writer swallowed it: torch.save reports ENOSPC as "RuntimeError: unexpected pos"."""
    with open(path, "wb") as f:
        sink = _KeepsWriteErrors(f)
        try:
            yield sink
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise


def atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(text)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = disk_full(e, path, f"{path} was left as it was")
        if full:
            raise full from None
        raise
    tmp.replace(path)
