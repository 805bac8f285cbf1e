"""The comparison table, shaped like the papers': one row per experiment, in grid order.

    python -m experiments.report                                  # from `dvc exp show --json`
    python -m experiments.report --mlflow                         # from the MLflow runs instead
    python -m experiments.report --out experiments/results/synthetic.md

Rows are the grid's (experiments/grid.yaml), in its order; other experiments follow by name. The
synthetic benchmark adds per-category t2v R@1 and the time-reversed pair accuracy (chance: 0.5).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgl.cli import atomic_write, entry_point
from dgl.errors import UserError
from experiments.queue import GRID, Row, dvc, load_grid

METRICS_FILE = "metrics.json"
MISSING = "–"
# metrics.json's parameter counts as the train stage logs them to MLflow (test metrics: `test_<key>`)
MLFLOW_COUNTS = {"trainable_params": "params_trainable", "trainable_ratio": "params_trainable_ratio"}
CAPTION = {"data.dataset": "dataset", "backbone.name": "backbone", "frames.num_frames": "frames",
           "train.epochs": "epochs"}
LEGEND = ("Params: trainable parameters (% of all). t2v: text-to-video, v2t: video-to-text; R@K in %, "
          "MdR/MnR: median/mean rank. pair acc: how often a caption prefers its video to the "
          "time-reversed twin (0.5 = blind to time).")


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, object]  # flat: {"model.method": "dgl", ...}
    metrics: dict[str, float]  # metrics.json's keys: t2v_R1, ..., trainable_params, trainable_ratio


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


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
            if metrics is None:
                without.append(f"{name} ({(exp.get('executor') or {}).get('state', 'no metrics')})")
                continue
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            found.append(Experiment(name, flat(params), metrics))
    return found, without


def from_mlflow(params_file: Path) -> list[Experiment]:
    """The finished runs of the tracking experiment; the newest run of each name (the DVC experiment's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dgl.settings import load_params
    from dgl.tracking import tracking_uri

    tracking = load_params(params_file).tracking
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[tracking.experiment], output_format="list",
                                  filter_string="attributes.status = 'FINISHED'", order_by=["start_time DESC"])
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {str(e).splitlines()[0][:200]}") from None
    newest: dict[str, Experiment] = {}
    for run in runs:
        logged = run.data.metrics
        name = run.data.tags.get("dvc_exp_name") or run.info.run_name
        if "test_t2v_R1" not in logged or name in newest:
            continue
        metrics = {k.removeprefix("test_"): v for k, v in logged.items() if k.startswith("test_")}
        metrics |= {key: logged[logged_key] for key, logged_key in MLFLOW_COUNTS.items() if logged_key in logged}
        newest[name] = Experiment(name, dict(run.data.params), metrics)
    return list(newest.values())


def ordered(experiments: list[Experiment], grid: list[Row]) -> list[Experiment]:
    position = {row.name: i for i, row in enumerate(grid)}
    return sorted(experiments, key=lambda e: (position.get(e.name, len(grid)), e.name))


def rate(value: float) -> str:
    return f"{value:.1f}"


def columns(experiments: list[Experiment]) -> list[tuple[str, str, Callable[[float], str]]]:
    """(header, metrics key, format): the papers' columns, then those of the synthetic benchmark that
    any experiment has."""
    keys = list(dict.fromkeys(k for e in experiments for k in e.metrics))
    categories = [k.removeprefix("t2v_R1_") for k in keys if k.startswith("t2v_R1_")]
    cols = [("Params", "trainable_params", lambda v: f"{int(v):,}"),
            ("Params %", "trainable_ratio", lambda v: f"{100 * v:.3g}"),
            *[(f"t2v {m}", f"t2v_{m.replace('@', '')}", rate) for m in ("R@1", "R@5", "R@10", "MdR", "MnR")],
            ("v2t R@1", "v2t_R1", rate),
            *[(f"R@1 {c}", f"t2v_R1_{c}", rate) for c in categories]]
    pair = [k for k in keys if k == "pair_acc" or k.startswith("pair_acc_")]
    cols += [(k.replace("pair_acc", "pair acc").replace("_", " "), k, lambda v: f"{v:.3f}") for k in pair]
    return cols


def caption(experiments: list[Experiment]) -> str:
    parts = []
    for key, label in CAPTION.items():
        values = sorted({str(e.params[key]) for e in experiments if key in e.params})
        if values:
            parts.append(f"{label}: {'/'.join(values)}")
    return " · ".join(parts)


def table(experiments: list[Experiment], grid: list[Row]) -> str:
    extension = {row.name for row in grid if row.extension}
    cols = columns(experiments)
    lines = [caption(experiments), "",
             "| Method | " + " | ".join(header for header, _, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for e in ordered(experiments, grid):
        name = f"{e.name} (extension)" if e.name in extension else e.name
        cells = [fmt(e.metrics[key]) if key in e.metrics else MISSING for _, key, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", LEGEND]) + "\n"


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlflow", action="store_true", help="read the MLflow runs, not `dvc exp show`")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="for the MLflow store and experiment")
    ap.add_argument("--grid", type=Path, default=GRID)
    ap.add_argument("--out", type=Path, help="also write the table here (e.g. experiments/results/<name>.md)")
    args = ap.parse_args()
    grid = load_grid(args.grid)
    if args.mlflow:
        experiments = from_mlflow(args.params)
    else:
        experiments, without = from_dvc_show(json.loads(dvc("exp", "show", "--json")))
        if without:
            print(f"left out, no {METRICS_FILE}: {', '.join(without)}", file=sys.stderr)
    if not experiments:
        raise UserError("no experiments with metrics yet; queue some with `python -m experiments.queue`")
    text = table(experiments, grid)
    print(text, end="")
    if args.out:
        atomic_write(args.out, text)


if __name__ == "__main__":
    main()
