"""Benchmark: how fast the synthetic benchmark renders and encodes (default size, 2 workers).

Run from the repository root: `python -m bench.render_speed [--workers W]`.
Prints JSON: {"videos_per_second": ..., "videos": N, "workers": W, "seconds": ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from dgl.data.synthetic import generate
from dgl.settings import load_group


def main() -> None:
    defaults = load_group("data.synthetic")  # params.yaml's benchmark size
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-videos", type=int, default=defaults.train_videos)
    ap.add_argument("--test-videos", type=int, default=defaults.test_videos)
    ap.add_argument("--resolution", type=int, default=defaults.resolution)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cfg = dataclasses.replace(
        defaults, train_videos=args.train_videos, test_videos=args.test_videos, resolution=args.resolution
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(Path(tmp) / "synthetic", cfg, ffmpeg="pinned", workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
    videos = cfg.train_videos + cfg.test_videos
    report = {"videos_per_second": round(videos / seconds, 1), "videos": videos, "workers": args.workers}
    print(json.dumps(report | {"seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
