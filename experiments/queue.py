"""Queue the comparison grid (experiments/grid.yaml) as DVC experiments and start the queue.

    python -m experiments.queue                          # every row, one worker
    python -m experiments.queue --rows zeroshot,dgl_ulp --jobs 2 --wait
    python -m experiments.queue --seeds 0,1,2            # every row with each training seed
    python -m experiments.queue --samplers random,twins  # every row with each batch sampler
    python -m experiments.queue --set train.threads=1 -j 2   # one more override for every experiment
    python -m experiments.queue --dry-run                # print the dvc commands only

Each row becomes `dvc exp run --queue -n <row> -S ...`. A row with a `sweep` (one key, a few values)
becomes one experiment per value, `<row>-<key><value>`; the report keeps the value with the best
validation R@1 (never test). `--samplers` repeats every experiment per train.sampler,
`<name>-<sampler>`; `--seeds` per training seed, `<name>-s<seed>`; the report shows mean ± std over
seeds, one line per sampler. Stages whose inputs a row shares with an earlier
run (download .. backbone, usually) are restored from DVC's run cache, not recomputed. A row whose name
is already an experiment of this commit is refused unless --force, which overwrites it and, being
`dvc exp run -f`, reruns every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.settings import SAMPLERS

GRID = Path(__file__).with_name("grid.yaml")
POLL_SECONDS = 5
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]  # `key=value`, as for `dvc exp run -S`
    extension: bool = False  # our own option, not a row of the papers
    sweep_key: str | None = None  # one params key tried at each of sweep_values (chosen on validation)
    sweep_values: tuple = ()


@dataclass(frozen=True)
class Run:
    """One DVC experiment of a row: a sweep value (or None), a batch sampler and a training seed (None:
    params.yaml's)."""

    row: Row
    value: object = None
    seed: int | None = None
    sampler: str | None = None

    @property
    def variant(self) -> str:
        if self.row.sweep_key is None:
            return self.row.name
        return f"{self.row.name}-{self.row.sweep_key.rsplit('.', 1)[-1]}{self.value:g}"

    @property
    def name(self) -> str:
        name = self.variant if self.sampler is None else f"{self.variant}-{self.sampler}"
        return name if self.seed is None else f"{name}-s{self.seed}"

    @property
    def overrides(self) -> tuple[str, ...]:
        extra = [f"{self.row.sweep_key}={yaml_value(self.value)}"] if self.row.sweep_key else []
        extra += [f"train.sampler={self.sampler}"] if self.sampler is not None else []
        return (*self.row.overrides, *extra, *([f"train.seed={self.seed}"] if self.seed is not None else []))


def yaml_value(value: object) -> str:
    """`value` as a `-S key=value` needs it: YAML, so that 1e-05 stays a number (1.0e-05)."""
    return yaml.safe_dump(value).strip().removesuffix("...").strip()


def expand(rows: list[Row], seeds: list[int] | None = None, samplers: list[str] | None = None) -> list[Run]:
    """Every experiment of `rows`: each sweep value, each sampler, each seed."""
    return [
        Run(row, value, seed, sampler)
        for row in rows
        for value in (row.sweep_values or (None,))
        for sampler in (samplers or [None])
        for seed in (seeds or [None])
    ]


def load_grid(path: Path = GRID) -> list[Row]:
    try:
        rows = yaml.safe_load(Path(path).read_text())["rows"]
        grid = []
        for r in rows:
            ((key, values),) = (r.get("sweep") or {None: ()}).items()
            grid.append(Row(r["name"], tuple(r["set"]), bool(r.get("extension", False)), key, tuple(values)))
        return grid
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a grid file ({type(e).__name__}: {e}); see experiments/grid.yaml") from None


def select(grid: list[Row], names: str | None) -> list[Row]:
    """The rows named, in grid order; a sweep variant's name (`full-clip_lr0.001`) keeps that row
    with that one value."""
    if names is None:
        return grid
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    variants = {run.variant: run for run in expand(grid)}
    unknown = [n for n in wanted if n not in {r.name for r in grid} and n not in variants]
    if unknown:
        raise UserError(
            f"unknown grid row(s): {', '.join(unknown)}; the grid has: {', '.join(r.name for r in grid)}"
            " (or a sweep value of one, e.g. full-clip_lr0.001)"
        )
    chosen = []
    for row in grid:
        values = [variants[n].value for n in wanted if n in variants and variants[n].row is row]
        if row.name in wanted:
            chosen.append(row)
        elif values:
            chosen.append(dataclasses.replace(row, sweep_values=tuple(values)))
    return chosen


def queue_command(run: Run, force: bool) -> list[str]:
    sets = [arg for override in run.overrides for arg in ("-S", override)]
    return ["dvc", "exp", "run", "--queue", *(["-f"] if force else []), "-n", run.name, *sets]


def dvc(*args: str) -> str:
    try:
        out = subprocess.run(["dvc", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("dvc is not on PATH; activate the project's virtualenv (.venv/bin)") from None
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR")] or out.stderr.splitlines()
        raise UserError(f"`dvc {' '.join(args)}` failed: {errors[0] if errors else f'exit code {out.returncode}'}")
    return out.stdout


def queue_tasks() -> dict[str, tuple[str, str]]:
    """`dvc queue status` as {task id: (experiment name, status)}; status is Queued, Running, Success
    or Failed."""
    tasks = {}
    for line in dvc("queue", "status").splitlines()[1:]:
        if not line.strip() or line.startswith("Worker status"):
            continue
        task, name, *_, status = line.split()
        tasks[task] = (name, status)
    return tasks


def wait_for(ours: set[str]) -> None:
    """Poll until our tasks are done; print each one's outcome and the log tails of the failures."""
    pending = set(ours)
    failed = []
    while pending:
        time.sleep(POLL_SECONDS)
        tasks = queue_tasks()
        for task in sorted(pending):
            name, status = tasks.get(task, ("?", "Unknown"))
            if status in ("Queued", "Running"):
                continue
            pending.discard(task)
            print(f"{name}: {status}", flush=True)
            if status != "Success":
                failed.append((task, name))
    for task, name in failed:
        tail = subprocess.run(["dvc", "queue", "logs", task], capture_output=True, text=True).stdout
        lines = [line for line in tail.splitlines() if line.strip()][-LOG_TAIL_LINES:]
        print(f"--- {name}: last lines of `dvc queue logs {task}`", *lines, sep="\n", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} of {len(ours)} experiments failed: {', '.join(n for _, n in failed)}")


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=GRID)
    ap.add_argument("--rows", help="comma-separated row names (default: every row)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (dvc queue start -j)")
    ap.add_argument("--wait", action="store_true", help="wait for the experiments; exit 2 if any failed")
    ap.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="overwrite experiments of the same name (dvc exp run -f: every stage reruns)",
    )
    ap.add_argument("--seeds", help="comma-separated training seeds: every experiment once per seed")
    ap.add_argument(
        "--samplers", help="comma-separated train.sampler values (random, twins): every experiment once per sampler"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override added to every experiment (repeatable), as dvc exp run -S",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the dvc commands, run nothing")
    args = ap.parse_args()
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    samplers = [s.strip() for s in args.samplers.split(",")] if args.samplers else None
    unknown = sorted(set(samplers or []) - set(SAMPLERS))
    if unknown:
        raise UserError(f"--samplers: unknown {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    bad = [o for o in args.set if "=" not in o]
    if bad:
        raise UserError(f"--set {bad[0]!r}: give KEY=VALUE, e.g. --set train.threads=1")
    chosen = [
        dataclasses.replace(r, overrides=r.overrides + tuple(args.set)) for r in select(load_grid(args.grid), args.rows)
    ]
    rows = expand(chosen, seeds, samplers)
    commands = [queue_command(run, args.force) for run in rows] + [["dvc", "queue", "start", "-j", str(args.jobs)]]
    if args.dry_run:
        print(*map(shlex.join, commands), sep="\n")
        return
    if not args.force:
        existing = set(dvc("exp", "ls", "--name-only").split())
        taken = [r.name for r in rows if r.name in existing]
        if taken:
            raise UserError(
                f"experiments already exist: {', '.join(taken)}; pass --force to rerun them "
                f"or `dvc exp remove {' '.join(taken)}` first"
            )
    before = set(queue_tasks())
    for command in commands[:-1]:
        print(dvc(*command[1:]).strip(), flush=True)
    ours = set(queue_tasks()) - before
    print(dvc(*commands[-1][1:]).strip(), flush=True)
    if args.wait:
        wait_for(ours)
        print("done; tabulate them with `python -m experiments.report`")


if __name__ == "__main__":
    main()
