"""What every command-line entry point shares: one-line errors, atomic outputs, progress bars."""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from dgl.errors import UserError


def entry_point(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`; a UserError becomes one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(main)
    def run() -> None:
        try:
            main()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; outputs were left as they were", file=sys.stderr)
            sys.exit(130)

    return run


def show_progress() -> bool:
    """Progress bars only for a person watching: quiet when the CI variable is set (to anything
    but the empty string) or stderr is not a terminal (a log file, `dvc queue logs`, a pipe)."""
    if os.environ.get("CI"):
        return False
    return sys.stderr is not None and sys.stderr.isatty()


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
    except BaseException:
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)


def atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)
