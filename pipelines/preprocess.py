"""Stage `preprocess`: data/cache/ — the frame store linked from data/frames, each split's rows into it,
and the captions tokenised once."""

from __future__ import annotations

from pathlib import Path

from dgl.cache.write import build_cache
from dgl.cli import StageArguments, entry_point
from dgl.data.adapters import load_annotations
from dgl.files import atomic_dir, check_writable
from dgl.settings import load_params


@entry_point
def main() -> None:
    ap = StageArguments("preprocess", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    annotations = load_annotations(params.data.dataset, args.raw)
    with atomic_dir(args.out) as work:
        summary = build_cache(
            annotations,
            args.frames,
            work,
            backbone=params.backbone.name,
            context_length=params.preprocess.context_length,
        )
    splits = ", ".join(
        f"{name} {split['videos']} videos / {split['captions']} captions" for name, split in summary["splits"].items()
    )
    print(
        f"preprocess: {splits} of {summary['image_size']} px frames (linked), {summary['context_length']} tokens "
        f"(details in {args.out / 'meta.json'})"
    )


if __name__ == "__main__":
    main()
