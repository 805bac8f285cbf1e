"""What every command-line entry point shares: one-line errors, atomic outputs, progress bars."""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from dgl.errors import DISK_FULL, USER_ERROR, UserError, disk_full


def entry_point(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`; a UserError becomes one line on stderr and exit code 2, with no traceback, and so
    does a full disk wherever it strikes (the writers below remove their partial output first)."""

    @functools.wraps(main)
    def run() -> None:
        try:
            main()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(USER_ERROR)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            print(f"error: {e.filename or 'an output'}: {os.strerror(e.errno)}; free some space and run again",
                  file=sys.stderr)
            sys.exit(USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted; outputs were left as they were", file=sys.stderr)
            sys.exit(130)

    return run


class StageArguments(argparse.ArgumentParser):
    """A stage's arguments: a usage error (`python -m pipelines.train` alone) also says how DVC runs
    the stage, with the paths dvc.yaml gives it."""

    def __init__(self, stage: str, description: str | None):
        super().__init__(prog=f"python -m pipelines.{stage}", description=description)
        self.stage = stage

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}; dvc.yaml gives stage {self.stage} its paths: run it with "
                     f"`dvc repro -s {self.stage}` (`dvc repro` runs the whole chain)\n")


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
                raise UserError(f"{path}: cannot be written, {folder} is not writable; "
                                f"make it writable (chmod u+w {folder}) and run again")


def show_progress() -> bool:
    """Progress bars only for a person watching: quiet when the CI variable is set (to anything
    but the empty string) or stderr is not a terminal (a log file, `dvc queue logs`, a pipe)."""
    if os.environ.get("CI"):
        return False
    return sys.stderr is not None and sys.stderr.isatty()


LOG_EVERY = 30.0  # seconds between two progress lines where no bar shows


class LogLines:
    """tqdm's face (iterate, update, set_postfix, close, `with`) where no bar can show (a log file,
    `dvc queue logs`): a line on stderr every LOG_EVERY seconds, and a last one at the end of a loop
    that printed any, e.g. `pretrain backbone: 120/390 step (31%)  1m02s  ETA 2m17s  loss=1.234`.
    A loop shorter than LOG_EVERY prints nothing."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, unit_scale: bool = False, every: float = LOG_EVERY, stream=None, **_ignored):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        if total is None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.n = self.first = initial
        self.scale, self.every, self.stream = unit_scale, every, stream
        self.start = self.last = time.monotonic()
        self.printed, self.postfix = False, ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> "LogLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = "  " + " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.printed and self.n != self.shown:
            self._line(time.monotonic())

    def _count(self, n: float) -> str:
        return f"{n / 2**20:.1f} MiB" if self.scale and self.unit == "B" else f"{n:,.0f}"

    def _line(self, now: float) -> None:
        took, done = now - self.start, self.n - self.first
        unit = "" if self.scale and self.unit == "B" else f" {self.unit}"  # "MiB" says it
        where = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "") + unit
        if self.total:
            where += f" ({100 * self.n / self.total:.0f}%)"
        eta = (f"  ETA {duration(took / done * (self.total - self.n))}"
               if self.total and done > 0 and self.n < self.total else "")
        print(f"{self.desc}: {where}  {duration(took)}{eta}{self.postfix}", file=self.stream or sys.stderr, flush=True)
        self.printed, self.shown = True, self.n


def progress_bar(show: bool, iterable=None, **kwargs):
    """A tqdm bar for a person watching (`show`: show_progress()), else LogLines: progress that a log
    file can hold. Takes tqdm's arguments (total, desc, unit, initial, unit_scale, ...)."""
    if show:
        from tqdm import tqdm

        return tqdm(iterable, **kwargs)
    return LogLines(iterable, **kwargs)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class EpochLog:
    """Progress where no bar shows (show_progress() is False: a log file, `dvc queue logs`, a
    scheduler): one line per epoch on stderr, e.g.
    `epoch 3/10  loss 1.2345  val R@1 45.0 t2v / 40.0 v2t  12s  ETA 1m26s`.
    ETA: the mean time of the epochs this process ran, times the epochs left."""

    def __init__(self, epochs: int, first: int = 1, stream=None):
        self.epochs, self.first, self.stream = epochs, first, stream
        self.start = self.last = time.monotonic()

    def __call__(self, epoch: int, record: dict[str, float]) -> None:
        now = time.monotonic()
        took, self.last = now - self.last, now
        eta = (now - self.start) / (epoch - self.first + 1) * (self.epochs - epoch)
        val = (f"  val R@1 {record['val_t2v_R1']:.1f} t2v / {record['val_v2t_R1']:.1f} v2t"
               if "val_t2v_R1" in record and "val_v2t_R1" in record else "")
        print(f"epoch {epoch}/{self.epochs}  loss {record['train_loss']:.4f}{val}  {duration(took)}  ETA {duration(eta)}",
              file=self.stream or sys.stderr, flush=True)


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
            e, target, f"{work} is kept for the next run to resume from" if keep_partial
            else f"the partial output was removed and {target} left as it was")
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
