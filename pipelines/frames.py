"""Stage `frames`: data/frames/ — N frames sampled uniformly from every annotated video, cropped to the
backbone's input size and kept once, encoded, in a frame store (dgl/frames/store.py)."""

from __future__ import annotations

from pathlib import Path

from dgl.cli import StageArguments, entry_point, show_progress
from dgl.data.adapters import load_annotations
from dgl.ffmpeg import ffmpeg_exe
from dgl.files import atomic_dir, check_writable
from dgl.frames.extract import extract_frames
from dgl.settings import backbone_image_size, load_params


@entry_point
def main() -> None:
    ap = StageArguments("frames", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    if params.frames.backend == "ffmpeg":
        ffmpeg_exe(params.ffmpeg)  # a missing ffmpeg is one line before any output exists
    annotations = load_annotations(params.data.dataset, args.raw)
    with atomic_dir(args.out) as work:
        summary = extract_frames(
            args.raw,
            annotations,
            work,
            params.frames,
            ffmpeg=params.ffmpeg,
            image_size=backbone_image_size(params.backbone.name),
            progress=show_progress(),
        )
    print(
        f"frames: {summary['sampled']} of {summary['videos']} videos sampled, {summary['num_frames']} frames of "
        f"{summary['image_size']} px each, {summary['codec']} ({summary['backend']}); {summary['skipped']} skipped "
        f"(reasons in {args.out / 'skipped.json'})"
    )


if __name__ == "__main__":
    main()
