"""Speed of the frames stage: both backends against plain ffmpeg decoding of the same files.

Renders N synthetic videos (ffmpeg's testsrc, H.264) into a temporary folder, then times, in one
run and with the same number of parallel workers:
- `extract_frames` with the ffmpeg backend and with the decord backend (the real stage code,
  writing its frame store, params.yaml's `frames.codec`), as frames sampled per second;
- `ffmpeg -i x -f null -` on every file (decode only: the physical limit), with one decoder thread
  per process and with ffmpeg's automatic threading; the faster of the two is the limit.
Ratios are videos per second of a backend over videos per second of the limit; CPU seconds
(this process and its ffmpeg runs) beside wall seconds, as a busy machine stretches only the
latter; and the ffmpeg backend's seconds over decord's, beside the limit (2). Prints JSON.

With `--long-minutes`, the long-video case instead: one video per length given (minutes long, at
`--resolution`), sampled by each backend for each `--long-frames` count at `--size`, each time in a
fresh Python process, which reports its seconds, wall and CPU (the fastest of `--long-repeats`
runs), and peak resident memory (the Python process and, for the ffmpeg backend, the largest
ffmpeg it ran). Beside them: the ffmpeg backend's seconds over decord's (the limit: 2), its peak
memory per video length (flat: it does not grow), and plain decoding of each whole video (CPU).

Run from the repository root: `python -m bench.frames_speed [--videos 200] [--workers 2]`, or
`python -m bench.frames_speed --long-minutes 1 5 --size 224`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dgl.data.annotations import Annotations, Caption
from dgl.ffmpeg import ffmpeg_exe
from dgl.frames.extract import extract_frames, sample_frames
from dgl.settings import FramesConfig, load_group

ROOT = Path(__file__).resolve().parents[1]


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


def time_plain_decode(paths: list[Path], workers: int, threads: str) -> tuple[float, float]:
    """Wall and CPU seconds of `ffmpeg -i x -f null -` on every file."""

    def decode(path: Path) -> None:
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", threads, "-i", str(path), "-f", "null", "-"],
            check=True,
        )

    start, cpu = time.perf_counter(), _cpu_seconds()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, paths))
    return time.perf_counter() - start, _cpu_seconds() - cpu


def time_backend(raw_dir: Path, paths: list[Path], cfg: FramesConfig) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its ffmpeg runs) of the frames stage's code (frames
    cropped to `cfg.size` and stored with `cfg.codec`)."""
    ids = [p.stem for p in paths]
    annotations = Annotations(
        videos={v: f"videos/{v}.mp4" for v in ids}, train=tuple(Caption(v, "a video") for v in ids), test=()
    )
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), _cpu_seconds()
        summary = extract_frames(
            raw_dir, annotations, Path(out), cfg, ffmpeg="pinned", image_size=cfg.size, progress=False
        )
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if summary["skipped"]:
        raise SystemExit(f"{cfg.backend}: {summary['skipped']} videos skipped; the benchmark is invalid")
    return elapsed, cpu


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the ffmpeg runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_here(path: str, backend: str, num_frames: int, size: int) -> dict:
    """Sample one video in this process: seconds (wall and CPU: the latter does not count waiting for
    a busy machine), and peak resident memory of this process and of its largest child (the ffmpeg
    runs), in MiB. Meant for a fresh process (`measure`)."""
    if backend == "decord":
        import decord  # noqa: F401  (loaded before the clock starts, as in the frames stage)
    start, cpu = time.perf_counter(), _cpu_seconds()
    frames = sample_frames(Path(path), num_frames, size, backend=backend)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "frames": list(frames.shape),
        "python_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ffmpeg_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def measure(path: Path, backend: str, num_frames: int, size: int) -> dict:
    """`measure_here` in a fresh Python process, so that each peak is this one sampling's."""
    code = (
        "import json; from bench.frames_speed import measure_here; "
        f"print(json.dumps(measure_here({str(path)!r}, {backend!r}, {num_frames}, {size})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{backend} on {path.name}: the measuring process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def plain_decode_cpu(path: Path) -> float:
    """CPU seconds of `ffmpeg -threads 1 -i x -f null -`: decoding every frame, nothing else."""
    start = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"], check=True
    )
    end = resource.getrusage(resource.RUSAGE_CHILDREN)
    return end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime


def long_videos(args: argparse.Namespace) -> dict:
    """The long-video case: seconds and peak memory per backend, per length and frame count; then the
    ffmpeg backend's time over decord's beside the limit (2), and its peak memory per length."""
    report: dict = {
        "resolution": args.resolution,
        "fps": args.fps,
        "size": args.size,
        "cpu_cores": os.cpu_count(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.long_minutes:
            (path,) = render_videos(Path(tmp), 1, minutes * 60, args.resolution, args.fps, 1)
            report.setdefault("plain_decode_cpu_seconds", {})[str(minutes)] = round(plain_decode_cpu(path), 3)
            for num_frames in args.long_frames:
                for backend in ("ffmpeg", "decord"):
                    # the least time of a few runs (the others waited on a busy machine), the largest peaks
                    runs = [measure(path, backend, num_frames, args.size) for _ in range(args.long_repeats)]
                    best = {
                        key: (min if key.endswith("seconds") else max)(run[key] for run in runs)
                        for key in runs[0]
                        if key != "frames"
                    }
                    report["runs"].append(
                        {
                            "minutes": minutes,
                            "num_frames": num_frames,
                            "backend": backend,
                            "frames": runs[0]["frames"],
                            **best,
                        }
                    )
            path.unlink()
    by = {(r["minutes"], r["num_frames"], r["backend"]): r for r in report["runs"]}
    report["ffmpeg_over_decord"] = [
        {
            "minutes": m,
            "num_frames": n,
            "limit": 2.0,
            **{key: round(by[m, n, "ffmpeg"][key] / by[m, n, "decord"][key], 2) for key in ("cpu_seconds", "seconds")},
        }
        for m in args.long_minutes
        for n in args.long_frames
    ]
    report["ffmpeg_peak_mib_by_minutes"] = {  # the larger of Python's and ffmpeg's: flat if it does not grow
        str(n): {
            str(m): max(by[m, n, "ffmpeg"]["python_peak_mib"], by[m, n, "ffmpeg"]["ffmpeg_peak_mib"])
            for m in args.long_minutes
        }
        for n in args.long_frames
    }
    return report


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
    ap.add_argument("--long-minutes", type=float, nargs="+", help="run the long-video case: video lengths")
    ap.add_argument("--long-frames", type=int, nargs="+", default=[12, 64], help="frame counts, long-video case")
    ap.add_argument("--long-repeats", type=int, default=3, help="long-video case: runs of each, the fastest kept")
    args = ap.parse_args()
    if args.long_minutes:
        print(json.dumps(long_videos(args), indent=1))
        return

    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp)
        (raw_dir / "videos").mkdir()
        paths = render_videos(raw_dir / "videos", args.videos, args.seconds, args.resolution, args.fps, args.workers)
        plain = {f"threads_{t}": time_plain_decode(paths, args.workers, t) for t in ("1", "auto")}
        backends = {
            b: time_backend(
                raw_dir,
                paths,
                load_group(
                    "frames", {"num_frames": args.num_frames, "size": args.size, "backend": b, "workers": args.workers}
                ),
            )
            for b in ("ffmpeg", "decord")
        }

    limit = min(wall for wall, _ in plain.values())
    report = {
        "videos": args.videos, "seconds": args.seconds, "resolution": args.resolution, "fps": args.fps,
        "num_frames": args.num_frames, "size": args.size, "workers": args.workers, "cpu_cores": os.cpu_count(),
        "plain_decode": {k: {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                             "videos_per_s": round(args.videos / wall, 1)} for k, (wall, cpu) in plain.items()},
    }  # fmt: skip
    for name, (elapsed, cpu) in backends.items():
        report[name] = {
            "wall_s": round(elapsed, 3),
            "cpu_s": round(cpu, 3),
            "videos_per_s": round(args.videos / elapsed, 1),
            "frames_sampled_per_s": round(args.videos * args.num_frames / elapsed, 1),
            "ratio_to_plain_decode": round(limit / elapsed, 3),
        }
    report["ffmpeg_over_decord"] = {
        "wall": round(backends["ffmpeg"][0] / backends["decord"][0], 2),
        "cpu": round(backends["ffmpeg"][1] / backends["decord"][1], 2),
        "limit": 2.0,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
