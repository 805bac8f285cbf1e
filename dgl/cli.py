"""What every command-line entry point shares: one-line errors, a stage's arguments, progress lines
and bars. Writing the outputs (atomically, refusing an unwritable one first) is dgl/files.py's."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable

from dgl.errors import DISK_FULL, USER_ERROR, UserError


def entry_point(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`; a UserError becomes one line on stderr and exit code 2, with no traceback, and so
    does a full disk wherever it strikes (the writers of dgl/files.py remove their partial output first)."""

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
            print(
                f"error: {e.filename or 'an output'}: {os.strerror(e.errno)}; free some space and run again",
                file=sys.stderr,
            )
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
        self.exit(
            2,
            f"error: {message}; dvc.yaml gives stage {self.stage} its paths: run it with "
            f"`dvc repro -s {self.stage}` (`dvc repro` runs the whole chain)\n",
        )


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

    def __init__(
        self,
        iterable=None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        unit_scale: bool = False,
        every: float = LOG_EVERY,
        stream=None,
        **_ignored,
    ):
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

    def __enter__(self) -> LogLines:
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
        eta = (
            f"  ETA {duration(took / done * (self.total - self.n))}"
            if self.total and done > 0 and self.n < self.total
            else ""
        )
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
        val = (
            f"  val R@1 {record['val_t2v_R1']:.1f} t2v / {record['val_v2t_R1']:.1f} v2t"
            if "val_t2v_R1" in record and "val_v2t_R1" in record
            else ""
        )
        print(
            f"epoch {epoch}/{self.epochs}  loss {record['train_loss']:.4f}{val}  {duration(took)}  ETA {duration(eta)}",
            file=self.stream or sys.stderr,
            flush=True,
        )
