"""Stage `download`: data/raw/ — the synthetic benchmark rendered here, or a real dataset fetched."""

from __future__ import annotations

import json
from pathlib import Path

from dgl.cli import StageArguments, entry_point, show_progress
from dgl.data.sources import prepare_raw
from dgl.data.synthetic import generate
from dgl.ffmpeg import ffmpeg_exe
from dgl.files import atomic_dir, check_writable
from dgl.settings import load_params


@entry_point
def main() -> None:
    ap = StageArguments("download", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    synthetic = params.data.dataset == "synthetic"
    if synthetic:
        ffmpeg_exe(params.ffmpeg)  # a missing ffmpeg is one line before any output exists
    with atomic_dir(args.out) as work:
        if synthetic:
            generate(
                work,
                params.data.synthetic,
                ffmpeg=params.ffmpeg,
                workers=params.frames.workers,
                progress=show_progress(),
            )
        else:
            prepare_raw(
                params.data.dataset,
                work,
                progress=show_progress(),
                max_extract_bytes=round(params.data.max_extract_gb * 1e9),
                vatex_split=params.data.vatex_split,
                keep_archives=params.data.keep_archives,
            )
    files = len(json.loads((args.out / "manifest.json").read_text())["files"])
    print(
        f"download: {params.data.dataset} {'rendered' if synthetic else 'in place'} in {args.out}, {files} files "
        f"with their sha256 in {args.out / 'manifest.json'}"
    )


if __name__ == "__main__":
    main()
