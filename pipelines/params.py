"""Stage `params`: the whole params.yaml checked, before any other stage runs.

It depends on the whole file and every other stage on its mark (params.ok), so whenever params.yaml
changes DVC runs this check first: a bad value (`dvc exp run -S train.lr=-1`) or an unknown key
(`trian:`) fails here in one line, before DVC deletes the outputs of a stage it would rerun. The
mark never changes, so passing the check reruns nothing downstream.

It also settles what a killed `train` left behind that these params will not resume: the checkpoint
is removed and its MLflow run, still RUNNING, ends as KILLED (dgl/checkpoint.py). DVC may restore
`train` from its run cache instead of running it; then this is the only code that runs.

`dvc exp run -S key=value` writes the value into the workspace's params.yaml before any stage runs
and leaves it there when the run fails (DVC has no option to undo it; `--temp` and `--queue` runs
leave the workspace alone). So under a workspace `dvc exp run` the error also says which values
differ from the experiment's baseline commit, what they were, and how to put them back: with `git show`,
not `git checkout`. DVC rewrites the file within the second in which git last refreshed its index, and
where the new value has the old one's width (the aligned comments keep the line's length) git's stat
cache still calls the file clean: `git status` shows nothing and `git checkout` restores nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dgl.cli import StageArguments, entry_point
from dgl.errors import UserError
from dgl.files import atomic_write, check_writable
from dgl.settings import load_params
from dgl.tracking.provenance import ABSENT, changed_params, committed_params
from dgl.typed_yaml import read_yaml

MARK = "params.yaml passed the checks of dgl/settings.py (stage `params` in dvc.yaml)\n"
SHOWN = 3  # changed values a restore hint names


def restore_command(path: str) -> str:
    """The shell line that puts the committed `path` back byte for byte, whatever git's stat cache says."""
    return f"git show HEAD:./{path} > {path}"


def restore_hint(path: str) -> str:
    """What a failed workspace `dvc exp run` left in params file `path` and how to undo it; "" elsewhere."""
    baseline, root = os.environ.get("DVC_EXP_BASELINE_REV"), os.environ.get("DVC_ROOT")
    if not baseline or root is None or Path(root).resolve() != Path.cwd().resolve():
        return ""  # not `dvc exp run`, or one in a temporary copy (--temp, --queue)
    restore = f"`{restore_command(path)}` restores the committed file"
    committed = committed_params(Path.cwd(), path)  # the baseline's (DVC_EXP_BASELINE_REV)
    current = read_yaml(Path(path))
    if not (isinstance(committed, dict) and isinstance(current, dict)):  # nothing to compare key by key
        return f"; `dvc exp run` left the value in {path}: {restore}"
    changed = changed_params(current, committed)
    if not changed:
        return ""
    was = ", ".join(f"no {key}" if old is ABSENT else f"{key}: {old!r}" for key, old, _ in changed[:SHOWN])
    more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
    return f"; `dvc exp run` left the new value in {path} (the last commit has {was}{more}): {restore}"


@entry_point
def main() -> None:
    ap = StageArguments("params", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    args = ap.parse_args()
    try:
        params = load_params(args.params)
    except UserError as e:
        raise UserError(f"{e}{restore_hint(args.params)}") from None
    check_writable(args.out)
    marker = args.checkpoint.with_name(args.checkpoint.name + ".run")  # dgl.checkpoint.run_marker
    if args.checkpoint.exists() or marker.exists():  # torch and MLflow are imported only then: the check stays cheap
        from dgl.checkpoint import abandoned_by
        from dgl.tracking.runs import end_abandoned_run

        abandoned, run_id = abandoned_by(args.checkpoint, params)
        if abandoned:
            end_abandoned_run(params.tracking, run_id)
            marker.unlink(missing_ok=True)
            if args.checkpoint.exists():
                args.checkpoint.unlink()
                print(
                    f"{args.checkpoint}: left by a killed training that these params will not resume; removed",
                    file=sys.stderr,
                )
    atomic_write(args.out, MARK)


if __name__ == "__main__":
    main()
