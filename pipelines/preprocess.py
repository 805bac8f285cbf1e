"""Stage `preprocess`: data/cache/ — the frame store linked from data/frames, each split's rows into it,
and the captions tokenised once."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dgl.cache import build_cache
from dgl.cli import atomic_dir, check_writable, entry_point
from dgl.data.adapters import load_annotations
from dgl.settings import load_params


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    annotations = load_annotations(params.data.dataset, args.raw)
    with atomic_dir(args.out) as work:
        summary = build_cache(annotations, args.frames, work, backbone=params.backbone.name,
                              context_length=params.preprocess.context_length)
    print(json.dumps(summary["splits"]))


if __name__ == "__main__":
    main()
