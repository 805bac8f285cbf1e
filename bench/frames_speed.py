"""Speed of the frames stage: both backends against plain ffmpeg decoding of the same files.

Renders N synthetic videos (ffmpeg's testsrc, H.264) into a temporary folder, then times, in one
run and with the same number of parallel workers:
- `extract_frames` with the ffmpeg backend and with the decord backend (the real stage code,
  writing .npy files), as frames sampled per second;
- `ffmpeg -i x -f null -` on every file (decode only: the physical limit), with one decoder thread
  per process and with ffmpeg's automatic threading; the faster of the two is the limit.
Ratios are videos per second of a backend over videos per second of the limit. Prints JSON.

Run from the repository root: `python -m bench.frames_speed [--videos 200] [--workers 2]`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from dgl.data.annotations import Annotations, Caption
from dgl.ffmpeg import ffmpeg_exe
from dgl.settings import load_group
from dgl.video import extract_frames


def render_videos(folder: Path, count: int, seconds: float, resolution: int, fps: int, workers: int) -> list[Path]:
    paths = [folder / f"video{i}.mp4" for i in range(count)]

    def render(path: Path) -> None:
        subprocess.run([
            ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "lavfi",
            "-i", f"testsrc=size={resolution}x{resolution}:rate={fps}:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads", "1", str(path),
        ], check=True)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(render, paths))
    return paths


def time_plain_decode(paths: list[Path], workers: int, threads: str) -> float:
    def decode(path: Path) -> None:
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", threads, "-i", str(path),
                        "-f", "null", "-"], check=True)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, paths))
    return time.perf_counter() - start


def time_backend(raw_dir: Path, paths: list[Path], cfg: FramesConfig) -> float:
    ids = [p.stem for p in paths]
    annotations = Annotations(videos={v: f"videos/{v}.mp4" for v in ids},
                              train=tuple(Caption(v, "a video") for v in ids), test=())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = extract_frames(raw_dir, annotations, Path(out), cfg, ffmpeg="pinned", progress=False)
        elapsed = time.perf_counter() - start
    if summary["skipped"]:
        raise SystemExit(f"{cfg.backend}: {summary['skipped']} videos skipped; the benchmark is invalid")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--fps", type=int, default=25)
    defaults = load_group("frames")  # params.yaml's
    ap.add_argument("--num-frames", type=int, default=defaults.num_frames)
    ap.add_argument("--size", type=int, default=defaults.size)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp)
        (raw_dir / "videos").mkdir()
        paths = render_videos(raw_dir / "videos", args.videos, args.seconds, args.resolution, args.fps, args.workers)
        plain = {f"threads_{t}": time_plain_decode(paths, args.workers, t) for t in ("1", "auto")}
        backends = {
            b: time_backend(raw_dir, paths, load_group("frames", {"num_frames": args.num_frames, "size": args.size,
                                                                  "backend": b, "workers": args.workers}))
            for b in ("ffmpeg", "decord")
        }

    limit = min(plain.values())
    report = {
        "videos": args.videos, "seconds": args.seconds, "resolution": args.resolution, "fps": args.fps,
        "num_frames": args.num_frames, "size": args.size, "workers": args.workers, "cpu_cores": os.cpu_count(),
        "plain_decode": {k: {"wall_s": round(v, 3), "videos_per_s": round(args.videos / v, 1)}
                         for k, v in plain.items()},
    }  # fmt: skip
    for name, elapsed in backends.items():
        report[name] = {
            "wall_s": round(elapsed, 3),
            "videos_per_s": round(args.videos / elapsed, 1),
            "frames_sampled_per_s": round(args.videos * args.num_frames / elapsed, 1),
            "ratio_to_plain_decode": round(limit / elapsed, 3),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
