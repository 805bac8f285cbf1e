"""The experiments at a glance, in the terminal's width: the params that differ between them and the
headline numbers.

    python -m experiments.show                     # every DVC experiment with metrics, and its baseline commit
    python -m experiments.show upt local8          # only these (and the baseline)
    python -m experiments.show --runs experiments/results/synthetic.runs.json --only 'dgl-.*'

`dvc exp show` lists every param and metric (over 160 columns) and `--only-changed` hides a param
that one experiment changed; here a column is a param whose value differs between the rows shown
(its shortest unambiguous name: `generator` for model.dgl.generator), beside t2v R@1, content R@1
(the time-reversed twin also counts as a hit), pair acc (a caption prefers its video to the twin;
0.5 = blind to frame order) and the trainable parameters. When that is wider than the terminal
($COLUMNS), the table turns: one column per experiment, in as many blocks as the width needs.
The paper-shaped comparison of a whole grid is `python -m experiments.report`."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.typed_yaml import flatten
from experiments.queue import dvc
from experiments.report import METRICS_FILE, Experiment, from_dvc_show, load_runs

HEADLINE = (
    ("t2v R@1", "t2v_R1", "{:.1f}"),
    ("content R@1", "content_R1", "{:.1f}"),
    ("pair acc", "pair_acc", "{:.3f}"),
    ("trainable", "trainable_params", "{:,.0f}"),
)
GAP = "  "
MISSING = "-"


def baselines(shown: list[dict], names: set[str]) -> list[Experiment]:
    """The commits the experiments `names` branched from, as rows, where `dvc exp show` has their metrics."""
    rows = []
    for baseline in shown:
        mine = {e.get("name") for e in baseline.get("experiments") or []} & names
        data = baseline.get("data") or {}
        metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data")
        if baseline.get("rev") == "workspace" or not mine or not metrics:
            continue
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        rows.append(Experiment(baseline.get("name") or baseline["rev"][:7], flatten(params), metrics))
    return rows


def value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return MISSING if v is None else str(v)


def differing(experiments: list[Experiment]) -> list[str]:
    """The params (flat keys) whose value is not the same in every experiment, in params.yaml's order."""
    keys = list(dict.fromkeys(k for e in experiments for k in e.params))
    return [k for k in keys if len({json.dumps(e.params.get(k), sort_keys=True) for e in experiments}) > 1]


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest tail that no other key ends in (`model.dgl.generator` -> `generator`)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        names[key] = tail
    return names


def columns(experiments: list[Experiment]) -> list[tuple[str, list[str]]]:
    """(header, one cell per experiment): the name, the differing params, the headline metrics."""
    keys = differing(experiments)
    names = short_names(keys)
    cols = [("experiment", [e.name for e in experiments])]
    cols += [(names[k], [value(e.params.get(k)) for e in experiments]) for k in keys]
    cols += [
        (
            header,
            [
                fmt.format(e.metrics[key]) if isinstance(e.metrics.get(key), (int, float)) else MISSING
                for e in experiments
            ],
        )
        for header, key, fmt in HEADLINE
    ]
    return cols


def aligned(rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows of cells padded to each column's width; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        GAP.join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def render(experiments: list[Experiment], width: int) -> str:
    """One row per experiment if that fits in `width`; else one column per experiment, in blocks that fit."""
    cols = columns(experiments)
    wide = aligned(
        [[header for header, _ in cols]] + [[cells[i] for _, cells in cols] for i in range(len(experiments))]
    )
    if max(map(len, wide)) <= width:
        return "\n".join(wide) + "\n"
    label = [header for header, _ in cols]
    blocks, start = [], 0
    while start < len(experiments):  # as many experiments per block as fit (at least one)
        end = start + 1
        while end < len(experiments) and max(map(len, _turned(cols, label, start, end + 1))) <= width:
            end += 1
        blocks.append("\n".join(_turned(cols, label, start, end)))
        start = end
    return "\n\n".join(blocks) + "\n"


def _turned(cols: list[tuple[str, list[str]]], label: list[str], start: int, end: int) -> list[str]:
    return aligned([[label[r]] + cells[start:end] for r, (_, cells) in enumerate(cols)])


def select(experiments: list[Experiment], names: list[str], pattern: str | None) -> list[Experiment]:
    known = {e.name for e in experiments}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"no experiment {unknown[0]!r} with metrics; known: {', '.join(sorted(known)) or 'none'}")
    chosen = [
        e for e in experiments if (not names or e.name in names) and (pattern is None or re.fullmatch(pattern, e.name))
    ]
    if not chosen:
        raise UserError(
            "no experiments with metrics to show; run one with `dvc exp run --temp -S key=value`, "
            "or queue the grid with `python -m experiments.queue`"
        )
    return chosen


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiments to show (default: all with metrics)")
    ap.add_argument("--only", metavar="REGEX", help="only experiments whose whole name matches")
    ap.add_argument(
        "--runs",
        type=Path,
        action="append",
        metavar="FILE",
        help="read a --save-runs file of experiments.report instead of `dvc exp show`",
    )
    args = ap.parse_args()
    if args.runs:
        experiments = select(load_runs(args.runs), args.names, args.only)
    else:
        shown = json.loads(dvc("exp", "show", "--json"))
        found, without = from_dvc_show(shown)
        if without:
            print(f"left out, no {METRICS_FILE}: {', '.join(without)}", file=sys.stderr)
        chosen = select(found, args.names, args.only)
        experiments = baselines(shown, {e.name for e in chosen}) + chosen
    print(render(experiments, shutil.get_terminal_size().columns), end="")


if __name__ == "__main__":
    main()
