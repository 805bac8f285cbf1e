"""`python -m dgl.tracking relocate`: point the MLflow store's experiment at the artifacts beside it."""

from __future__ import annotations

import argparse

from dgl.cli import entry_point
from dgl.settings import load_params
from dgl.tracking.store import relocate


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m dgl.tracking",
        description="Point the MLflow store's experiment at the artifacts "
        "beside it, after moving or copying the project.",
    )
    ap.add_argument("command", choices=["relocate"])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    print(relocate(load_params(args.params).tracking))


if __name__ == "__main__":
    main()
