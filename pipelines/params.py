"""Stage `params`: the whole params.yaml checked, before any other stage runs.

It depends on the whole file and every other stage on its mark (params.ok), so whenever params.yaml
changes DVC runs this check first: a bad value (`dvc exp run -S train.lr=-1`) or an unknown key
(`trian:`) fails here in one line, before DVC deletes the outputs of a stage it would rerun. The
mark never changes, so passing the check reruns nothing downstream.

It also settles what a killed `train` left behind that these params will not resume: the checkpoint
is removed and its MLflow run, still RUNNING, ends as KILLED (dgl/checkpoint.py). DVC may restore
`train` from its run cache instead of running it; then this is the only code that runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dgl.cli import atomic_write, check_writable, entry_point
from dgl.settings import load_params

MARK = "params.yaml passed the checks of dgl/settings.py (stage `params` in dvc.yaml)\n"


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    if args.checkpoint.exists():  # torch and MLflow are imported only then: the check stays cheap
        from dgl.checkpoint import abandoned_by
        from dgl.tracking import end_abandoned_run

        abandoned, run_id = abandoned_by(args.checkpoint, params)
        if abandoned:
            end_abandoned_run(params.tracking, run_id)
            args.checkpoint.unlink(missing_ok=True)
            print(f"{args.checkpoint}: left by a killed training that these params will not resume; removed",
                  file=sys.stderr)
    atomic_write(args.out, MARK)


if __name__ == "__main__":
    main()
