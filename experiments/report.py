"""The comparison table, shaped like the papers': one row per experiment, in grid order.

    python -m experiments.report                                  # from `dvc exp show --json`
    python -m experiments.report --mlflow                         # from the MLflow runs instead
    python -m experiments.report --out experiments/results/synthetic.md \
        --save-runs experiments/results/synthetic.runs.json
    python -m experiments.report --runs experiments/results/synthetic.runs.json   # the table again, from the file

Rows are the grid's (experiments/grid.yaml), in its order; other experiments follow by name. The
synthetic benchmark adds per-category t2v R@1 and the time-reversed pair accuracy (chance: 0.5).
A row swept over one key (a learning rate) shows the value with the best validation t2v R@1,
averaged over the seeds every value ran with (seeds added to the chosen value afterwards do not
move the choice; a tie goes to the smaller value); the test numbers play no part in it.
Experiments of one row that differ only in the training seed (`<name>-s<seed>`) are one line:
mean ± std (sample std).

--save-runs writes the experiments the table is made of (name, the params that tell them apart or that
the table shows, every metric) to a JSON file that is small enough to commit beside the table, so the
numbers behind it can be read, diffed and re-tabulated without the DVC experiments (which live in one
clone's .git). --runs reads such files instead of DVC or MLflow; given several, an experiment of a later
file replaces one of the same name in an earlier, so a grid run in parts (machines, sessions) is merged.
Each experiment carries the commit it ran from and the DVC hashes of its data and backbone; a table
whose experiments differ in data or backbone is refused, whatever the source.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.files import atomic_write
from dgl.settings import SAMPLERS
from dgl.typed_yaml import flatten
from experiments.queue import GRID, Row, dvc, expand, load_grid

METRICS_FILE = "metrics.json"
SEED_SUFFIX = re.compile(r"-s(\d+)$")
SELECT_BY = "val_t2v_R1"  # a sweep keeps the value with the best mean of this (validation, not test)
MISSING = "–"
CAPTION = {
    "data.dataset": "dataset",
    "backbone.name": "backbone",
    "frames.num_frames": "frames",
    "train.epochs": "epochs",
}
LEGEND = (
    "Params: trainable parameters (% of all). lr: the rate of what a method adds (prompts, "
    "generators, adapters); clip lr: of CLIP's own weights, where they train; a value in brackets "
    "was chosen on validation R@1 among the others listed. sampler: train.sampler (random batches, or "
    "twins: a video and its time-reversed twin always in one batch). t2v: text-to-video, v2t: "
    "video-to-text; R@K in %, MdR/MnR: median/mean rank. With seeds: mean ± sample std over them; "
    "Δ zeroshot: t2v R@1 minus zero-shot's (same sampler), marked * where it exceeds the two lines' "
    "std summed."
)
TIME_LEGEND = (
    "content R@1: t2v R@1 where the time-reversed twin also counts as a hit (what a method "
    "gets right without the order of frames). pair acc: how often a caption prefers its own "
    "video to the time-reversed twin (0.5 = blind to time); words: captions whose twin's "
    'captions differ in words ("ends on the right" / "ends on the left"), order: only in '
    'word order ("from left to right" / "from right to left"). Δ random: pair acc words '
    "minus the same method's with random batches, * where it exceeds the two lines' std summed."
)
SAMPLER_SUFFIX = re.compile(r"-(" + "|".join(SAMPLERS) + r")$")
INPUTS = ("data/cache", "models/backbone")  # what every method trains and is tested on: one table, one of each


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, object]  # flat: {"model.method": "dgl", ...}
    metrics: dict[str, float]  # metrics.json's keys: t2v_R1, ..., trainable_params, trainable_ratio
    inputs: dict[str, str] = field(default_factory=dict)  # INPUTS' DVC hashes, where known (not from MLflow)
    baseline: str = ""  # the commit the experiment was run from, where known


def from_dvc_show(shown: list[dict]) -> tuple[list[Experiment], list[str]]:
    """`dvc exp show --json` (DVC 3): a list of baseline commits, each with `experiments`, each with
    `revs` whose first entry is the experiment's commit and its `data` (params, metrics). Returns the
    experiments with metrics and the names of those without (queued, running or failed)."""
    found, without = [], []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            name = exp.get("name") or rev["rev"][:7]
            data = rev.get("data") or {}
            metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data")
            state = (exp.get("executor") or {}).get("state", "success")
            if metrics is None or state != "success":  # a running one shows the baseline's metrics.json
                without.append(f"{name} ({state if state != 'success' else 'no metrics'})")
                continue
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            outs = data.get("outs") or {}
            inputs = {path: outs[path]["hash"] for path in INPUTS if (outs.get(path) or {}).get("hash")}
            found.append(Experiment(name, flatten(params), metrics, inputs, baseline.get("rev", "")))
    return found, without


RUN_PARAMS = (
    "train.seed",
    "train.sampler",
    "train.lr",
    "train.clip_lr",
    *CAPTION,
)  # always saved: the table reads them


def save_runs(experiments: list[Experiment], path: Path) -> None:
    """The experiments as JSON: each one's metrics, the params the table reads and every param in which
    any two of them differ."""
    keys = set(RUN_PARAMS) | {
        k
        for k in set().union(*(e.params for e in experiments))
        if len({json.dumps(e.params.get(k)) for e in experiments}) > 1
    }
    runs = [
        {
            "name": e.name,
            "baseline": e.baseline,
            "inputs": e.inputs,
            "params": {k: e.params[k] for k in sorted(keys) if k in e.params},
            "metrics": e.metrics,
        }
        for e in sorted(experiments, key=lambda e: e.name)
    ]
    atomic_write(path, json.dumps({"experiments": runs}, indent=1, sort_keys=False) + "\n")


def load_runs(paths: list[Path]) -> list[Experiment]:
    """Experiments saved by save_runs; a later file's experiment replaces an earlier one of the same name."""
    found: dict[str, Experiment] = {}
    for path in paths:
        if not Path(path).is_file():
            raise UserError(
                f"{path}: no such file; --runs takes a file written by `python -m experiments.report --save-runs`"
            )
        try:
            runs = json.loads(Path(path).read_text())["experiments"]
            for run in runs:
                found[run["name"]] = Experiment(
                    run["name"], dict(run["params"]), dict(run["metrics"]), dict(run["inputs"]), str(run["baseline"])
                )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(
                f"{path}: not a runs file of `python -m experiments.report --save-runs` ({type(e).__name__}: {e})"
            ) from None
    return list(found.values())


def check_one_benchmark(experiments: list[Experiment]) -> None:
    """Refuse a table whose experiments were trained on different data or a different backbone (a grid
    merged from runs of two commits, or a probe with its own backbone): their numbers do not compare."""
    first: dict[str, Experiment] = {}
    for e in experiments:
        for path, digest in e.inputs.items():
            seen = first.setdefault(path, e)
            if seen.inputs[path] != digest:
                raise UserError(
                    f"{seen.name} and {e.name} were trained on a different {path} "
                    f"({seen.inputs[path][:8]} / {digest[:8]}): one table compares methods on one "
                    f"data and backbone; tabulate them apart (--runs with one's files, or "
                    f"`dvc exp remove` the others)"
                )


def from_mlflow(params_file: Path) -> list[Experiment]:
    """The finished runs of the tracking experiment; the newest run of each name (the DVC experiment's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dgl.settings import load_params
    from dgl.tracking.names import COUNT, as_metrics_json
    from dgl.tracking.store import fail_fast, tracking_uri

    tracking = load_params(params_file).tracking
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    fail_fast()
    try:
        runs = mlflow.search_runs(
            experiment_names=[tracking.experiment],
            output_format="list",
            filter_string="attributes.status = 'FINISHED'",
            order_by=["start_time DESC"],
        )
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {str(e).splitlines()[0][:200]}") from None
    newest: dict[str, Experiment] = {}
    for run in runs:
        metrics = as_metrics_json(run.data.metrics, run.data.params)  # any naming, old or new (dgl/tracking.py)
        name = run.data.tags.get("dvc_exp_name") or run.info.run_name
        if "t2v_R1" not in metrics or name in newest:
            continue
        newest[name] = Experiment(name, {k: v for k, v in run.data.params.items() if not k.startswith(COUNT)}, metrics)
    return list(newest.values())


def fmt_recall(value: float) -> str:
    """A recall (R@K, in %) or a rank (MdR, MnR), to one decimal."""
    return f"{value:.1f}"


Column = tuple[str, str, Callable[[float], str]]  # (header, metrics key, format)


def acc(v: float) -> str:
    return f"{v:.3f}"


def columns(experiments: list[Experiment]) -> tuple[list[Column], list[Column]]:
    """The papers' retrieval columns, and the time columns of the synthetic benchmark (those any
    experiment has): content R@1, pair accuracy by twin wording and per category."""
    keys = list(dict.fromkeys(k for e in experiments for k in e.metrics))
    categories = [k.removeprefix("t2v_R1_") for k in keys if k.startswith("t2v_R1_")]
    retrieval = [
        ("Params", "trainable_params", lambda v: f"{int(v):,}"),
        ("Params %", "trainable_ratio", lambda v: f"{100 * v:.3g}"),
        *[(f"t2v {m}", f"t2v_{m.replace('@', '')}", fmt_recall) for m in ("R@1", "R@5", "R@10", "MdR", "MnR")],
        ("v2t R@1", "v2t_R1", fmt_recall),
        *[(f"R@1 {c}", f"t2v_R1_{c}", fmt_recall) for c in categories],
    ]
    time = [
        ("t2v R@1", "t2v_R1", fmt_recall),
        ("content R@1", "content_R1", fmt_recall),
        ("pair acc", "pair_acc", acc),
        ("pair acc words", "pair_acc_words", acc),
        ("pair acc order", "pair_acc_order", acc),
        *[(f"pair acc {c}", f"pair_acc_{c}", acc) for c in categories],
        *[(f"content R@1 {c}", f"content_R1_{c}", fmt_recall) for c in categories],
    ]
    return retrieval, [c for c in time if c[1] in keys]


def caption(experiments: list[Experiment]) -> str:
    parts = []
    for key, label in CAPTION.items():
        values = sorted({str(e.params[key]) for e in experiments if key in e.params})
        if values:
            parts.append(f"{label}: {'/'.join(values)}")
    return " · ".join(parts)


@dataclass(frozen=True)
class Line:
    """One line of the table: a grid row (its chosen sweep value, every seed of it) or another experiment."""

    name: str
    seeds: list[Experiment]  # the experiments averaged: one per seed
    swept: tuple[str, list] | None = None  # (key, values tried) when a sweep chose among values

    @property
    def sampler(self) -> str:
        return str(self.seeds[0].params.get("train.sampler", "random"))


def shared_seeds(by_value: dict[object, list[Experiment]]) -> set:
    """The training seeds every value of a sweep ran with: values are compared on these only, so
    that seeds added to one value after the choice cannot move it."""
    return set.intersection(*({e.params.get("train.seed") for e in runs} for runs in by_value.values()))


def selection_score(runs: list[Experiment], seeds: set) -> float:
    """Mean validation R@1 over the runs of `seeds` (all runs where no seed is shared)."""
    compared = [e for e in runs if e.params.get("train.seed") in seeds] or runs
    return mean([e.metrics.get(SELECT_BY, float("-inf")) for e in compared])


def lines(experiments: list[Experiment], grid: list[Row]) -> list[Line]:
    """One line per grid row and sampler: a swept row keeps the value with the best mean validation
    R@1 for that sampler over the seeds all its values ran with; experiments outside the grid are
    lines of their own."""
    variants = {run.variant: run for run in expand(grid)}
    groups: dict[tuple[str, str], dict[object, list[Experiment]]] = {}
    for e in experiments:
        base = SAMPLER_SUFFIX.sub("", SEED_SUFFIX.sub("", e.name))
        run = variants.get(base)
        row, value = (run.row.name, run.value) if run else (base, None)
        sampler = str(e.params.get("train.sampler", "random"))
        groups.setdefault((row, sampler), {}).setdefault(value, []).append(e)
    rows = {row.name: row for row in grid}
    out = []
    for (name, _), by_value in groups.items():
        row = rows.get(name)
        if row is None or row.sweep_key is None:
            out += [Line(name, seeds) for seeds in by_value.values()]
            continue
        seeds = shared_seeds(by_value)
        values = sorted(by_value)
        # max keeps the first of equals: a tie goes to the smaller value, whatever order the runs came in
        chosen = max(values, key=lambda v: selection_score(by_value[v], seeds))
        out.append(Line(name, by_value[chosen], (row.sweep_key, values)))
    position = {row.name: i for i, row in enumerate(grid)}
    order = {s: i for i, s in enumerate(SAMPLERS)}
    return sorted(out, key=lambda line: (position.get(line.name, len(grid)), line.name, order.get(line.sampler, 9)))


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return MISSING
    if len(set(values)) == 1:  # e.g. parameter counts, which no seed changes
        return fmt(values[0])
    return f"{fmt(mean(values))} ± {fmt(spread(values))}"


def rate_cell(line: Line, key: str, trains: bool) -> str:
    """A learning rate, bracketed when the sweep chose it, with the values it was chosen from."""
    if not trains or key not in line.seeds[0].params:
        return MISSING
    value = float(line.seeds[0].params[key])
    if line.swept and line.swept[0] == key and len(line.swept[1]) > 1:  # one value ran: nothing was chosen here
        return f"[{value:g}] of " + ", ".join(f"{v:g}" for v in line.swept[1])
    return f"{value:g}"


def rates(line: Line) -> list[str]:
    m = line.seeds[0].metrics
    trainable, clip = m.get("trainable_params", 0), m.get("trainable_clip", 0)
    return [rate_cell(line, "train.lr", trainable > clip), rate_cell(line, "train.clip_lr", clip > 0)]


def difference(
    line: Line, other: Line | None, key: str, fmt: Callable[[float], str], *, other_seeded: bool = True
) -> str:
    """`key` of line minus other's, * where it exceeds the two lines' seed std summed: needs seeds
    on this line, and on the other unless `other_seeded` is False (zero-shot trains nothing, so no
    seed changes its test numbers)."""
    if other is None or line is other:
        return MISSING
    ours, theirs = ([e.metrics[key] for e in x.seeds if key in e.metrics] for x in (line, other))
    if not ours or not theirs:
        return MISSING
    diff = mean(ours) - mean(theirs)
    real = len(ours) > 1 and (len(theirs) > 1 or not other_seeded) and abs(diff) > spread(ours) + spread(theirs)
    return f"{'+' if diff >= 0 else ''}{fmt(diff)}{'*' if real else ''}"


def render(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *["| " + " | ".join(cells) + " |" for cells in body],
    ]


def table(experiments: list[Experiment], grid: list[Row]) -> str:
    """Two tables with the same lines: retrieval as the papers report it, then what depends on time."""
    extension = {row.name for row in grid if row.extension}
    retrieval, time = columns(experiments)
    table_lines = lines(experiments, grid)
    seeded = any(len(line.seeds) > 1 for line in table_lines)
    samplers = len({line.sampler for line in table_lines}) > 1
    by_key = {(line.name, line.sampler): line for line in table_lines}

    def label(line: Line) -> list[str]:
        name = f"{line.name} (extension)" if line.name in extension else line.name
        return [name] + ([line.sampler] if samplers else [])

    def cells(line: Line, cols: list[Column]) -> list[str]:
        return [cell([e.metrics[key] for e in line.seeds if key in e.metrics], fmt) for _, key, fmt in cols]

    head = ["Method"] + (["sampler"] if samplers else [])
    extra = ["lr", "clip lr"] + (["seeds", "Δ zeroshot"] if seeded else [])
    first = render(
        head + extra + [h for h, _, _ in retrieval],
        [
            label(line)
            + rates(line)
            + (
                [
                    str(len(line.seeds)),
                    difference(line, by_key.get(("zeroshot", line.sampler)), "t2v_R1", fmt_recall, other_seeded=False),
                ]
                if seeded
                else []
            )
            + cells(line, retrieval)
            for line in table_lines
        ],
    )
    out = [caption(experiments), "", *first, "", LEGEND]
    if time:
        versus = ["Δ random"] if samplers else []
        second = render(
            head + versus + [h for h, _, _ in time],
            [
                label(line)
                + ([difference(line, by_key.get((line.name, "random")), "pair_acc_words", acc)] if samplers else [])
                + cells(line, time)
                for line in table_lines
            ],
        )
        out += ["", *second, "", TIME_LEGEND]
    return "\n".join(out) + "\n"


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlflow", action="store_true", help="read the MLflow runs, not `dvc exp show`")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="for the MLflow store and experiment")
    ap.add_argument("--grid", type=Path, default=GRID)
    ap.add_argument("--out", type=Path, help="also write the table here (e.g. experiments/results/<name>.md)")
    ap.add_argument(
        "--runs",
        type=Path,
        action="append",
        metavar="FILE",
        help="read experiments from a --save-runs file instead (repeatable: later files win by name)",
    )
    ap.add_argument("--save-runs", type=Path, metavar="FILE", help="also write the experiments tabulated, as JSON")
    args = ap.parse_args()
    if args.runs and args.mlflow:
        raise UserError("give --runs or --mlflow, not both: each names where the experiments come from")
    grid = load_grid(args.grid)
    if args.runs:
        experiments = load_runs(args.runs)
    elif args.mlflow:
        experiments = from_mlflow(args.params)
    else:
        experiments, without = from_dvc_show(json.loads(dvc("exp", "show", "--json")))
        if without:
            print(f"left out, no {METRICS_FILE}: {', '.join(without)}", file=sys.stderr)
    if not experiments:
        raise UserError("no experiments with metrics yet; queue some with `python -m experiments.queue`")
    check_one_benchmark(experiments)
    text = table(experiments, grid)
    print(text, end="")
    if args.out:
        atomic_write(args.out, text)
    if args.save_runs:
        save_runs(experiments, args.save_runs)


if __name__ == "__main__":
    main()
